"""Time the static `pgolf validate` of records folders (cold, in a fresh process, and warm repeats).

Usage:
    python benchmarks/validate_static.py FOLDER [FOLDER ...] [--repeat 5] [--pgolf]
    python benchmarks/validate_static.py --records RECORDS_DIR [--pgolf]   (every track_*/<folder>, medians)

For each folder: one cold run in a new interpreter (imports included, as `python -m validator` pays them)
and --repeat warm in-process runs (median reported). --pgolf also times the `pgolf validate` entry point
(`python -m pgolf.cli validate`, or `core.cli` before the refactor; static validation imports neither torch
nor the plugins). Target: < 1 s per folder. The 1-minute load average is printed: the
machine is shared.
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


def cold_seconds(folder: Path, pgolf: bool = False) -> float:
    """Wall time of `python -m validator FOLDER --json` (or of the pgolf CLI) in a fresh process."""
    import os

    if pgolf:
        # this checkout's CLI (core/cli.py before the refactor, pgolf/cli.py after), not an installed one
        mod = "core.cli" if (ROOT / "core" / "cli.py").is_file() else "pgolf.cli"
        cmd = [sys.executable, "-m", mod, "validate", str(folder), "--json"]
    else:
        cmd = [sys.executable, "-m", "validator", str(folder), "--json"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
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
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--records", type=Path, default=None)
    ap.add_argument("--pgolf", action="store_true")
    args = ap.parse_args()
    import os

    if args.records is not None:
        folders = [f for f in sorted(args.records.glob("track_*/*")) if f.is_dir()]
        cold = [cold_seconds(f) for f in folders]
        print(f"python -m validator, {len(folders)} folders, fresh process each: median "
              f"{statistics.median(cold):.3f} s, max {max(cold):.3f} s (load {os.getloadavg()[0]:.1f})")
        if args.pgolf:
            cold = [cold_seconds(f, pgolf=True) for f in folders]
            print(f"pgolf validate, {len(folders)} folders: median {statistics.median(cold):.3f} s, max "
                  f"{max(cold):.3f} s (load {os.getloadavg()[0]:.1f})")
        return 0
    print(f"{'folder':<60} {'files':>5} {'MB':>6} {'cold s':>7} {'warm s':>7}")
    for folder in args.folders:
        files = [p for p in folder.rglob("*") if p.is_file()]
        mb = sum(p.stat().st_size for p in files) / 1e6
        cold = cold_seconds(folder, pgolf=args.pgolf)
        warm = statistics.median(warm_seconds(folder, args.repeat))
        print(f"{folder.name[:60]:<60} {len(files):>5} {mb:>6.2f} {cold:>7.3f} {warm:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
