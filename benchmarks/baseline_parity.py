"""Baseline parity benchmark: the official train_gpt.py vs `pgolf train` on the same data, seed and env.

Runs both for ITERATIONS steps (default 200) with the challenge's environment variables, parses their
logs and prints the train loss at chosen steps and the mean ms/step of each. Needs CUDA (the official
script requires it). Usage:

    python benchmarks/baseline_parity.py --official /path/to/train_gpt.py --data DIR --tokenizer TOK.model \
        [--iterations 200] [--attention flash] [--steps 1,50,100] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STEP_RE = re.compile(r"^step:(\d+)/\d+ train_loss:([\d.]+) train_time:(\d+)ms step_avg:([\d.]+)ms", re.M)
FINAL_RE = re.compile(r"^final_int8_zlib_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)


def parse(log: str) -> dict:
    steps = {int(m.group(1)): (float(m.group(2)), float(m.group(3)), float(m.group(4))) for m in STEP_RE.finditer(log)}
    final = FINAL_RE.search(log)
    return {"steps": steps, "final": (float(final.group(1)), float(final.group(2))) if final else None}


def run(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed ({proc.returncode}); see {log_path}\n{(proc.stdout + proc.stderr)[-3000:]}")
    print(f"ran {' '.join(cmd[:4])} in {time.perf_counter() - t0:.0f}s", flush=True)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--attention", default="flash", help="pgolf attention backend (official uses flash SDPA)")
    ap.add_argument("--steps", default="1,50,100")
    ap.add_argument("--out", type=Path, default=Path("parity_out"))
    ap.add_argument("--skip-official", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env.update(DATA_PATH=str(args.data.resolve()), TOKENIZER_PATH=str(args.tokenizer.resolve()),
               ITERATIONS=str(args.iterations), VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="50", SEED="1337",
               MAX_WALLCLOCK_SECONDS="0", RUN_ID="parity", PYTHONUNBUFFERED="1")
    results = {}
    if not args.skip_official:
        run([sys.executable, str(args.official.resolve())], env, args.out, args.out / "official.log")
        results["official"] = parse((args.out / "logs" / "parity.txt").read_text())
    penv = dict(env, PGOLF_ATTENTION=args.attention, PGOLF_OUT_DIR=str(args.out.resolve() / "runs"),
                RUN_ID=f"pgolf-{args.attention}", PYTHONPATH=str(repo))
    run([sys.executable, "-m", "pgolf.cli", "train"], penv, repo, args.out / f"pgolf-{args.attention}.log")
    results["pgolf"] = parse((args.out / "runs" / f"pgolf-{args.attention}" / "train.log").read_text())
    want = [int(s) for s in args.steps.split(",")]
    last = args.iterations
    summary = {}
    for name, r in results.items():
        row = {f"loss@{s}": r["steps"].get(s, (None,))[0] for s in want}
        row["step_avg_ms"] = r["steps"].get(last, (None, None, None))[2]
        row["final_val_bpb"] = r["final"][1] if r["final"] else None
        summary[name] = row
        print(f"{name:>9}: " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if "official" in summary and summary["official"]["step_avg_ms"]:
        ratio = summary["pgolf"]["step_avg_ms"] / summary["official"]["step_avg_ms"]
        print(f"pgolf/official step time: {ratio:.4f}")
        summary["ratio"] = ratio
    (args.out / "parity.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
