"""PR #315 parity benchmark: the record's train_gpt.py vs `pgolf train --recipe recipes/pr315.toml`.

Both run ITERATIONS steps on the same data, seed and schedule; the script parses their logs and prints
train loss at chosen steps, ms/step, parameter count, the last-step (pre-quant, plain) val_bpb, the
final int6 sliding-window val_bpb and the artifact bytes, and writes pr315_compare.json. Needs CUDA.

The record's script is not in this repository. On a machine with the parameter-golf git mirror, write
a copy first (then carry it to the GPU machine with the working tree):

    python benchmarks/pr315_compare.py --extract-record shared/pr315_train_gpt.py

On the GPU machine (one H100; each side takes about 3-5 min at the defaults, so a 10-minute command
limit may need --skip-pgolf / --skip-record and two calls):

    python benchmarks/pr315_compare.py --record shared/pr315_train_gpt.py \
        --data ./data/datasets/fineweb10B_sp1024 --tokenizer ./data/tokenizers/fineweb_1024_bpe.model \
        [--iterations 200] [--nproc 1] [--val-max-tokens 1048576] [--out pr315_out]

Fairness: if `flash_attn_interface` (FA3) imports, the record runs as published and pgolf uses fa3;
otherwise the record is patched to call SDPA (flash backend, GQA via enable_gqa, as its own SDP flags
select) and pgolf runs with PGOLF_ATTENTION=flash. MAX_WALLCLOCK_SECONDS=0 makes both schedules
iteration-based (warmdown = --warmdown-frac of the run). The record's LATE_QAT is set to 0: in the
published run its QAT never activated (PR #315 README), and on some torch versions the class flag
would recompile and really switch on. The validation set is cut to --val-max-tokens for both (the
record through a one-line patch mirroring PGOLF_VAL_MAX_TOKENS). The sliding-window numbers differ by
construction in the last window: the record re-scores the tail (PR #50 window list), pgolf does not
(PR #1218's); the last-step plain val_bpb is the exact like-for-like number.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

RECORD_PATH = "records/track_10min_16mb/2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248/train_gpt.py"
DEFAULT_MIRROR = "/work/.mirror/openai+parameter-golf/repo"
FA3_IMPORT = "from flash_attn_interface import flash_attn_func as flash_attn_3_func\n"
SDPA_SHIM = '''

def flash_attn_3_func(q, k, v, causal=True):  # pr315_compare.py: FA3 layout (B, T, H, D) through SDPA
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)
'''
VAL_LOAD = "    val_tokens = load_validation_tokens(args.val_files, val_seq_len)\n"
VAL_CUT = '''    _cap = int(os.environ.get("PGOLF_VAL_MAX_TOKENS", "0"))  # pr315_compare.py: same val prefix as pgolf
    if _cap > 0:
        val_tokens = val_tokens[: min(val_tokens.numel() - 1, (_cap // val_seq_len) * val_seq_len) + 1]
'''
# The record's settings that differ from its script defaults (its README command line, LATE_QAT off).
RECORD_ENV = dict(
    NUM_LAYERS="11", BIGRAM_VOCAB_SIZE="2048", XSA_LAST_N="4", EMA_ENABLED="1", EMA_DECAY="0.997",
    SWA_ENABLED="0", ROPE_DIMS="16", LN_SCALE="1", LATE_QAT="0", MUON_WD="0.04", ADAM_WD="0.04",
    MATRIX_LR="0.025", SCALAR_LR="0.025", TIED_EMBED_LR="0.035", MUON_MOMENTUM="0.99",
    MUON_MOMENTUM_WARMUP_START="0.92", MUON_MOMENTUM_WARMUP_STEPS="1500", EVAL_STRIDE="64",
)

STEP_RE = re.compile(r"^step:(\d+)/\d+ train_loss:([\d.]+) train_time:(\d+)ms step_avg:([\d.]+)ms", re.M)
VAL_RE = re.compile(r"^step:(\d+)/(\d+) val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)
PARAMS_RE = re.compile(r"^model_params:(\d+)", re.M)
SLIDING_RE = re.compile(r"^final_int6_sliding_window_exact val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)
PGOLF_FINAL_RE = re.compile(r"^final_(\S+)_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)
BYTES_RE = re.compile(r"^Serialized model int\S*: (\d+) bytes", re.M)


def extract_record(out: Path, mirror: str) -> None:
    proc = subprocess.run(["git", "-C", mirror, "show", f"HEAD:{RECORD_PATH}"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"--extract-record: cannot read {RECORD_PATH} from git mirror {mirror}: {proc.stderr.strip()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(proc.stdout, encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out} ({len(proc.stdout):,} bytes)")


def patched_record(src: Path, out_dir: Path, use_fa3: bool) -> Path:
    """The record with the val-prefix cut (and FA3 -> SDPA when FA3 is missing); fails loudly if it drifted."""
    text = src.read_text(encoding="utf-8")
    for needle in (FA3_IMPORT, VAL_LOAD):
        if text.count(needle) != 1:
            sys.exit(f"--record {src}: expected exactly one line {needle.strip()!r} (is it PR #315's train_gpt.py?)")
    if not use_fa3:
        text = text.replace(FA3_IMPORT, SDPA_SHIM)
    text = text.replace(VAL_LOAD, VAL_LOAD + VAL_CUT)
    out = out_dir / "train_gpt_pr315.py"
    out.write_text(text, encoding="utf-8")
    return out


def launcher(nproc: int) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [sys.executable]


def run(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        sys.exit(f"{' '.join(cmd[:4])} failed ({proc.returncode}); see {log_path}\n{tail}")
    print(f"ran {' '.join(cmd[-3:])} in {time.perf_counter() - t0:.0f}s", flush=True)


def parse(log: str, pgolf: bool) -> dict:
    steps = {int(m.group(1)): (float(m.group(2)), float(m.group(4))) for m in STEP_RE.finditer(log)}
    vals = [(int(m.group(1)), int(m.group(2)), float(m.group(4))) for m in VAL_RE.finditer(log)]
    last_val = next((bpb for s, total, bpb in reversed(vals) if s > 0), None)
    final = PGOLF_FINAL_RE.search(log) if pgolf else SLIDING_RE.search(log)
    params, nbytes = PARAMS_RE.search(log), BYTES_RE.search(log)
    return {
        "steps": steps,
        "model_params": int(params.group(1)) if params else None,
        "last_step_val_bpb": last_val,
        "final_sliding_val_bpb": float(final.groups()[-1]) if final else None,
        "artifact_model_bytes": int(nbytes.group(1)) if nbytes else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extract-record", type=Path, metavar="OUT", help="write the record's train_gpt.py and exit")
    ap.add_argument("--mirror", default=os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", DEFAULT_MIRROR))
    ap.add_argument("--record", type=Path, help="PR #315's train_gpt.py (see --extract-record)")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--iterations", type=int, default=int(os.environ.get("ITERATIONS", "200")))
    ap.add_argument("--warmdown-frac", type=float, default=0.4, help="WARMDOWN_ITERS = frac × iterations")
    ap.add_argument("--seed", default="1337")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--val-max-tokens", type=int, default=1_048_576)
    ap.add_argument("--steps", default="1,10,50,100,200")
    ap.add_argument("--out", type=Path, default=Path("pr315_out"))
    ap.add_argument("--skip-record", action="store_true")
    ap.add_argument("--skip-pgolf", action="store_true")
    args = ap.parse_args()
    if args.extract_record:
        extract_record(args.extract_record, args.mirror)
        return
    missing = [f"--{n}" for n in ("data", "tokenizer") if getattr(args, n) is None]
    if not args.skip_record and args.record is None:
        missing.append("--record")
    if missing:
        ap.error("missing " + ", ".join(missing))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    use_fa3 = importlib.util.find_spec("flash_attn_interface") is not None
    common = dict(os.environ)
    common.update(
        DATA_PATH=str(args.data.resolve()), TOKENIZER_PATH=str(args.tokenizer.resolve()),
        ITERATIONS=str(args.iterations), WARMDOWN_ITERS=str(max(1, round(args.warmdown_frac * args.iterations))),
        MAX_WALLCLOCK_SECONDS="0", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="10", SEED=args.seed,
        PGOLF_VAL_MAX_TOKENS=str(args.val_max_tokens), PYTHONUNBUFFERED="1",
    )
    results = {}
    if not args.skip_record:
        rec_dir = out / "record"
        rec_dir.mkdir(exist_ok=True)
        script = patched_record(args.record.resolve(), rec_dir, use_fa3)
        run([*launcher(args.nproc), str(script)], dict(common, **RECORD_ENV, RUN_ID="pr315"), rec_dir,
            out / "record.log")
        results["record"] = parse((rec_dir / "logs" / "pr315.txt").read_text(), pgolf=False)
    if not args.skip_pgolf:
        attention = "fa3" if use_fa3 else "flash"
        penv = dict(common, PGOLF_ATTENTION=attention, PGOLF_OUT_DIR=str(out / "runs"), RUN_ID="pgolf-pr315",
                    PYTHONPATH=os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p))
        cmd = [*launcher(args.nproc), "-m", "pgolf.cli", "train", "--recipe", str(repo / "recipes" / "pr315.toml")]
        run(cmd, penv, repo, out / "pgolf.log")
        results["pgolf"] = parse((out / "runs" / "pgolf-pr315" / "train.log").read_text(), pgolf=True)
    want = [int(s) for s in args.steps.split(",") if int(s) <= args.iterations]
    summary: dict = {"iterations": args.iterations, "attention": "fa3" if use_fa3 else "sdpa-flash",
                     "nproc": args.nproc, "val_max_tokens": args.val_max_tokens}
    for name, r in results.items():
        row = {f"loss@{s}": r["steps"].get(s, (None,))[0] for s in want}
        row["step_avg_ms"] = r["steps"].get(args.iterations, (None, None))[1]
        row.update({k: r[k] for k in ("model_params", "last_step_val_bpb", "final_sliding_val_bpb",
                                      "artifact_model_bytes")})
        summary[name] = row
        print(f"{name:>7}: " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if "record" in summary and "pgolf" in summary and summary["record"]["step_avg_ms"]:
        ratio = summary["pgolf"]["step_avg_ms"] / summary["record"]["step_avg_ms"]
        summary["step_time_ratio_pgolf_over_record"] = ratio
        print(f"pgolf/record step time: {ratio:.4f}")
    tmp = out / ".pr315_compare.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "pr315_compare.json")


if __name__ == "__main__":
    main()
