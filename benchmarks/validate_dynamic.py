"""Time `pgolf validate --run` (the dynamic harness) on a pgolf run directory, on CPU.

Usage:
    python benchmarks/validate_dynamic.py                   # trains a tiny run (vocab 320, 12 steps) first
    python benchmarks/validate_dynamic.py --run-dir runs/X  # an existing run directory
    python benchmarks/validate_dynamic.py --jobs 1 --no-train-audit

Reports the wall time of the whole `pgolf validate RUN --run --json` process (static rules, the §10 harness on
every evaluator the registry knows — plain, sliding_window, score_first_ttt, lora_ttt, phased_ttt, … — in
sandboxed children, the TOK.BPB byte audit and the audited tiny re-training with the val-swap test), and the
status of every dynamic finding. Target: < 60 s on CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = ["core.num_layers=2", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2", "core.train_seq_len=64",
        "core.train_batch_tokens=1024", "core.grad_accum_steps=1", "core.iterations=12", "core.warmdown_iters=4",
        "core.warmup_steps=0", "core.val_loss_every=0", "core.train_log_every=4", "core.val_batch_size=2048",
        "core.val_max_tokens=4096", "core.max_wallclock_seconds=0", "core.muon_momentum_warmup_steps=4",
        "core.device=cpu", "core.vocab_size=320", "core.compile=false"]


def tiny_run(root: Path, plugins: str) -> Path:
    """Build a tiny dataset (the generated corpus, vocab 320) and train a 12-step run on it."""
    from dataprep.build import build_dataset
    from dataprep.corpus import generate_documents

    text = root / "text"
    text.mkdir(parents=True)
    for i, doc in enumerate(generate_documents(240, seed=7)):
        (text / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
    build_dataset(text, root / "data", vocab_size=320, val_docs=30)
    cmd = [sys.executable, "-m", "pgolf.cli", "train"]
    for s in [*TINY, f"core.data_path={root / 'data'}", f"core.out_dir={root / 'runs'}", "core.run_id=bench"]:
        cmd += ["--set", s]
    if plugins:
        cmd += ["--plugins", plugins]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return root / "runs" / "bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--plugins", default="", help="plugins of the tiny run (when no --run-dir)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-train-audit", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgolf_bench_dyn_") as tmp:
        run_dir = args.run_dir
        if run_dir is None:
            t0 = time.perf_counter()
            run_dir = tiny_run(Path(tmp), args.plugins)
            print(f"tiny run trained in {time.perf_counter() - t0:.1f} s: {run_dir}")
        cmd = [sys.executable, "-m", "pgolf.cli", "validate", str(run_dir), "--run", "--json", "--jobs", str(args.jobs)]
        if args.no_train_audit:
            cmd.append("--no-train-audit")
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError:
        print(res.stdout[-2000:], res.stderr[-2000:])
        return 1
    dyn = [f for f in doc["findings"] if f["message"].startswith("dynamic:")]
    for f in dyn:
        print(f"  {f['rule']:<22} {f['severity']:<5} {f['status']:<5} {f['message'][9:110]}")
    counts = Counter(f["status"] for f in dyn)
    print(f"pgolf validate --run: exit {res.returncode}, {len(dyn)} dynamic findings {dict(counts)}, "
          f"wall {wall:.1f} s (target < 60 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
