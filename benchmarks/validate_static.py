"""Time the static `pgolf validate` of records folders (cold, in a fresh process, and warm repeats).

Usage:
    python benchmarks/validate_static.py FOLDER [FOLDER ...] [--repeat 5]

For each folder: one cold run in a new interpreter (imports included, as `python -m validator` pays them)
and --repeat warm in-process runs (median reported). Target: < 1 s per folder.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cold_seconds(folder: Path) -> float:
    """Wall time of `python -m validator FOLDER --json` in a fresh process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "validator", str(folder), "--json"], cwd=ROOT, capture_output=True,
                   check=False)
    return time.perf_counter() - t0


def warm_seconds(folder: Path, repeat: int) -> list[float]:
    """In-process validation times (fresh FolderContext each run)."""
    from validator.cli import validate_folder

    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        validate_folder(folder)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'folder':<60} {'files':>5} {'MB':>6} {'cold s':>7} {'warm s':>7}")
    for folder in args.folders:
        files = [p for p in folder.rglob("*") if p.is_file()]
        mb = sum(p.stat().st_size for p in files) / 1e6
        cold = cold_seconds(folder)
        warm = statistics.median(warm_seconds(folder, args.repeat))
        print(f"{folder.name[:60]:<60} {len(files):>5} {mb:>6.2f} {cold:>7.3f} {warm:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
