"""PR #1493's own train_gpt.py vs recipes/pr1493.toml, step by step on CPU in fp32 (reduced model).

Both run on the same SP8192 shards and tokenizer with the same seed, steps and reduced shape (6 layers × 64,
loop blocks 1-2 ×2 from 35 %, parallel residuals from block 4; `--layers 11` uses the record's routing),
uncapped (the schedule and the loop switch follow step/ITERATIONS), no TTT, training only (no export); the
train loss of every step is printed side by side (8 decimals) with max |dloss|. The record is decoded from
its LZMA wrapper and patched only where CPU needs it (FA3 -> SDPA, CUDA calls -> no-ops, no bf16 model cast,
no compile, fp32 matmuls, no fused Adam, Python 3.11 f-strings); every patch must match. pgolf's side drops
score_first_ttt and needs the routing plugins (depth_recurrence, parallel_residuals, skip_gates).

    python benchmarks/pr1493_parity_cpu.py --data DIR_WITH_SP8192_SHARDS --tokenizer fineweb_8192_bpe.model \
        [--record train_gpt.py] [--iterations 60] [--train-tokens 20000] [--ns-fp32] [--dump] [--noise-floor]

`--train-tokens N` keeps a train prefix so the shuffled loader's epochs wrap (the GPU check runs ~17 epochs);
`--ns-fp32` runs Newton-Schulz and Muon's update buffer in fp32 on both sides (bf16 in both otherwise: bf16
rounding turns 1-ulp input differences into visible ones); `--dump` saves both states after every step and
names the first differing tensors; `--noise-floor` runs the record against itself with a rounding-level change
(NS5's normalisation in fp32): how far two runs of the same math drift apart in this regime.

Measured (2 shared CPU cores, 6 × 64, seq 128, 2048 tokens/step, 20,000 train tokens = 9.8 steps per epoch,
loop on at 35 %), issue #11's GPU gap:
- `--ns-fp32 --iterations 40 --dump`: max |dloss| 4.8e-7 over 40 steps (4 epoch wraps, loop on at step 14 in
  both); losses equal to 1e-8 through step 14; the first state difference (after step 7) is 1 ulp (1.2e-7) in
  scalar-group tensors. Same math: data order, warm-up-free schedule, WD, MuonEq-R, clipping, routing.
- default (bf16 NS5), 60 steps: record vs pgolf max |dloss| 2.1e-3 (1.9e-6 at step 3, 1e-3 by step 38);
  `--noise-floor`, same settings: record vs record max |dloss| 2.5e-3 with the same growth. The record is
  bitwise reproducible run to run on CPU, so that drift is rounding amplified by bf16 NS5 and overfitting.
- `--bf16 --dump --iterations 30 --warmup 3 --train-tokens 20000` (the GPU's dtype policy, eager): every
  parameter and optimizer state bitwise equal after each of 30 steps (warm-up, 3 epoch wraps, loop switch).
- `--bf16 --compile --dump --iterations 12` (inductor on both sides): states differ from step 1 at the bf16
  ulp level (tok_emb 1 ulp, projections 4e-4), max |dloss| 5.7e-4 over 12 steps with both signs; for scale,
  the same side compiled vs eager differs by 1.1e-3 at step 8. The compiled graphs round differently (fusion),
  the math is the same: the GPU gap is rounding, amplified by training, not a different computation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RECORD_DIR = "records/track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"
from record_parity_cpu import (  # noqa: E402 (benchmarks/ is this script's path)
    PGOLF_NS_FP32,
    PGOLF_PARITY,
    PRELUDE,
    RECORD_DUMP_FN,
    SDPA_SHIM,
    first_difference,
)

PATCHES = [  # (text, replacement): each must occur at least once
    ("from flash_attn_interface import flash_attn_func as flash_attn_3_func\n", SDPA_SHIM),
    ("device=torch.device('cuda',local_rank)", "device=torch.device('cpu')"),
    ("device=torch.device('cuda',h.local_rank)", "device=torch.device('cpu')"),
    ("['nvidia-smi']", "['true']"),
    (".to(device).bfloat16()", ".to(device)"),
    ("fused=True", "fused=False"),
    ("torch.autocast(device_type='cuda',dtype=torch.bfloat16,enabled=True)",
     "torch.autocast(device_type='cpu',enabled=False)"),
    ("torch.autocast(device_type='cuda',dtype=torch.bfloat16)", "torch.autocast(device_type='cpu',enabled=False)"),
    ("torch.set_float32_matmul_precision('high')", "torch.set_float32_matmul_precision('highest')"),
    ('{", ".join(', "{', '.join("),
    ('glob("fineweb_train_*.bin")', "glob('fineweb_train_*.bin')"),
    ("train_loss: {train_loss.item():.4f}", "train_loss: {train_loss.item():.8f}"),
    ("base_model,compiled_model=train_model(h,device,val_data);",  # training only: no GPTQ/TTT/sliding eval
     "base_model,compiled_model=train_model(h,device,val_data);raise SystemExit(0);"),
]
NS_FP32 = [  # --ns-fp32: Newton-Schulz and the flat Muon update buffer in fp32 (bf16 in the record)
    ("X=G.bfloat16()", "X=G.float()"),
    ("updates_flat=torch.zeros(total_params,device=params[0].device,dtype=torch.bfloat16)",
     "updates_flat=torch.zeros(total_params,device=params[0].device,dtype=torch.float32)"),
]
NOISE = [  # --noise-floor: a rounding-level change (NS5's Frobenius normalisation in fp32, then bf16)
    ("X=G.bfloat16();X/=X.norm()+eps", "X=G.float();X=(X/(X.norm()+eps)).bfloat16()"),
]
DUMP = [  # --dump: the state after every optimizer step (model + optimizer states), for a per-tensor bisection
    ("train_loss=step_fn(step,scale)\n",
     "train_loss=step_fn(step,scale)\n\t\t_dump_state(step+1,base_model,optimizers)\n"),
]
SHAPE = dict(VOCAB_SIZE=8192, NUM_LAYERS=6, MODEL_DIM=64, EMBEDDING_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2,
             LOOP_START=1, LOOP_END=2, NUM_LOOPS=2, PARALLEL_RESIDUAL_START=4, XSA_LAST_N=6, ROPE_DIMS=8,
             ROPE_TRAIN_SEQ_LEN=128, TRAIN_SEQ_LEN=128, EVAL_SEQ_LEN=128, QK_GAIN_INIT=5.25, SEED=42,
             WARMUP_STEPS=0, VAL_LOSS_EVERY=0, TRAIN_LOG_EVERY=1, TRAIN_BATCH_TOKENS=2048, VAL_BATCH_TOKENS=16384,
             MAX_WALLCLOCK_SECONDS=0, TTT_ENABLED=0, GPTQ_CALIBRATION_BATCHES=2)
PGOLF_SETS = ["core.vocab_size=8192", "core.num_layers=6", "core.model_dim=64", "core.num_heads=4",
              "core.num_kv_heads=2", "core.train_seq_len=128", "core.eval_seq_len=128", "core.seed=42",
              "core.warmup_steps=0", "core.val_loss_every=0", "core.train_log_every=1",
              "core.train_batch_tokens=2048", "core.val_batch_size=16384", "core.max_wallclock_seconds=0",
              "core.device=cpu", "core.compile=false", "depth_recurrence.loop_start=1",
              "depth_recurrence.loop_end=2", "parallel_residuals.start=4", "xsa.last_n=6", "partial_rope.dims=8",
              "partial_rope.ntk_train_seq_len=128", "gptq.calib_batches=2"]
RECORD_STEP = re.compile(r"^(\d+)/\d+ train_loss: ([\d.]+)", re.M)
PGOLF_STEP = re.compile(r"^step:(\d+)/\d+ train_loss:([\d.]+)", re.M)


COMPILE_OFF = "_t.compile = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)\n"  # in PRELUDE
COMPILE_ON = ("_t.cuda.get_rng_state = lambda *a, **k: _t.empty(0, dtype=_t.uint8)\n"  # dynamo saves the CUDA RNG
              "_t.cuda.set_rng_state = lambda *a, **k: None\n")  # when `cuda.is_available()`, faked True here
BF16_KEEP = (".to(device).bfloat16()", "torch.autocast(device_type='cuda',dtype=torch.bfloat16,enabled=True)",
             "torch.autocast(device_type='cuda',dtype=torch.bfloat16)")  # --bf16: these stay, autocast on CPU


# --bf16: the rotary table as the GPU's compiled graph fills it (positions and angles in fp32, rounded to the buffer's
# bf16 once; measured on an H200: equal to that bitwise, the eager bf16 arange off by up to 2.0)
COMPILED_ROTARY = ("t=torch.arange(seq_len,device=device,dtype=inv_freq.dtype);freqs=torch.outer(t,inv_freq);"
                   "self._cos_cached=freqs.cos()[None,:,None,:];self._sin_cached=freqs.sin()[None,:,None,:]",
                   "t=torch.arange(seq_len,device=device,dtype=torch.float32);freqs=torch.outer(t,inv_freq.float());"
                   "self._cos_cached=freqs.cos().to(inv_freq.dtype)[None,:,None,:];"
                   "self._sin_cached=freqs.sin().to(inv_freq.dtype)[None,:,None,:]")


def record_source(path: str | None, ns_fp32: bool = False, dump: bool = False, noise: bool = False,
                  bf16: bool = False, compiled: bool = False) -> str:
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        mirror = os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo")
        text = subprocess.run(["git", "-C", mirror, "show", f"HEAD:{RECORD_DIR}/train_gpt.py"], capture_output=True,
                              text=True, check=True).stdout
    if text.lstrip().startswith("import lzma"):
        ns: dict = {}
        exec(text.replace("exec(", "_decoded=(", 1), ns)
        text = ns["_decoded"].decode() if isinstance(ns["_decoded"], bytes) else ns["_decoded"]
    patches = [(old, new) for old, new in PATCHES if not (bf16 and old in BF16_KEEP)]
    if bf16:  # the GPU's dtype policy on CPU: bf16 model body, fp32 CastedLinear/control tensors, bf16 autocast
        patches += [(old, old.replace("'cuda'", "'cpu'")) for old in BF16_KEEP[1:]] + [COMPILED_ROTARY]
    for old, new in patches + (NOISE if noise else []) + (NS_FP32 if ns_fp32 else []) + (DUMP if dump else []):
        if old not in text:
            raise SystemExit(f"patch target not found in the record: {old[:60]!r}")
        text = text.replace(old, new)
    prelude = PRELUDE.replace(COMPILE_OFF, COMPILE_ON) if compiled else PRELUDE
    return prelude + (RECORD_DUMP_FN if dump else "") + text


PGOLF_MAIN = """
import os, sys
from pathlib import Path
if os.environ.get("PARITY_NS_FP32"):  # --ns-fp32: core.optim with fp32 Newton-Schulz and update buffer
    import importlib.util
    import core
    spec = importlib.util.spec_from_file_location("core.optim", Path(core.__file__).with_name("optim.py"))
    mod = importlib.util.module_from_spec(spec)
    src = Path(spec.origin).read_text()
    for old, new in PATCHES:
        assert old in src, old
        src = src.replace(old, new)
    sys.modules["core.optim"] = mod
    exec(compile(src, spec.origin, "exec"), mod.__dict__)
import torch
import core.train as T
from core.config import load_recipe, resolve
from core.registry import Registry
_loop0 = T.timed_loop
def _train_only(run, stepper, budget):  # no export / final evaluation: the training steps are compared
    _loop0(run, stepper, budget)
    raise SystemExit(0)
T.timed_loop = _train_only
PGOLF_PARITY
reg = Registry()
data = load_recipe(sys.argv[1])
data["source"] = sys.argv[1]
data["plugins"] = [p for p in data["plugins"] if p != "score_first_ttt"]
data.pop("score_first_ttt", None)
cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=data, sets=sys.argv[2:], check_plugins=reg.check)
T.train(T.setup(cfg, reg))
"""
NAME_MAP = {"skip_merge.skip_gates": "skip_gates"}  # pgolf state name -> the record's


def write_shard(src: Path, dst: Path, max_tokens: int) -> int:
    """Copy a shard, keeping only its first `max_tokens` tokens (0: all); returns the token count."""
    header = np.fromfile(src, dtype="<i4", count=256)
    n = int(header[2]) if max_tokens <= 0 else min(int(header[2]), max_tokens)
    tokens = np.fromfile(src, dtype="<u2", count=n, offset=1024)
    header = header.copy()
    header[2] = n
    with open(dst, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    return n


def shape_for(layers: int, dim: int, seq: int, batch_tokens: int) -> tuple[dict, list[str]]:
    """Environment for the record and --set for pgolf at a reduced shape. 6 layers: loop blocks 1-2, parallel
    from 4; 11 layers: the record's own routing (loop 3-5, parallel from 7). Heads: dim/16, 4 at least."""
    heads = max(4, dim // 32)
    rope = (dim // heads) // 4
    loop = (1, 2, 4) if layers < 11 else (3, 5, 7)
    env = {**SHAPE, "NUM_LAYERS": layers, "MODEL_DIM": dim, "EMBEDDING_DIM": dim, "NUM_HEADS": heads,
           "NUM_KV_HEADS": heads // 2, "LOOP_START": loop[0], "LOOP_END": loop[1], "PARALLEL_RESIDUAL_START": loop[2],
           "XSA_LAST_N": layers, "ROPE_DIMS": rope, "ROPE_TRAIN_SEQ_LEN": seq, "TRAIN_SEQ_LEN": seq,
           "EVAL_SEQ_LEN": seq, "TRAIN_BATCH_TOKENS": batch_tokens}
    sets = [*PGOLF_SETS, f"core.num_layers={layers}", f"core.model_dim={dim}", f"core.num_heads={heads}",
            f"core.num_kv_heads={heads // 2}", f"core.train_seq_len={seq}", f"core.eval_seq_len={seq}",
            f"core.train_batch_tokens={batch_tokens}", f"depth_recurrence.loop_start={loop[0]}",
            f"depth_recurrence.loop_end={loop[1]}", f"parallel_residuals.start={loop[2]}", f"xsa.last_n={layers}",
            f"partial_rope.dims={rope}", f"partial_rope.ntk_train_seq_len={seq}"]
    return env, sets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory with fineweb_{train,val}_*.bin of vocab 8192")
    ap.add_argument("--tokenizer", required=True, help="the SentencePiece model of those shards")
    ap.add_argument("--record", help="the record's train_gpt.py (wrapped or decoded); default: the git mirror")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=0, help="WARMUP_STEPS on both sides (weights restored after)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--train-tokens", type=int, default=0,
                    help="keep only the first N train tokens, so the loader's epochs wrap (0: the whole shard)")
    ap.add_argument("--val-tokens", type=int, default=32768, help="validation prefix kept (0: all)")
    ap.add_argument("--ns-fp32", action="store_true",
                    help="Newton-Schulz and the Muon update buffer in fp32 on both sides (bf16 in both otherwise)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="instead of pgolf, run the record again with a rounding-level change (NS5 normalised in "
                         "fp32): how far two runs of the same math drift apart in this regime")
    ap.add_argument("--bf16", action="store_true",
                    help="both sides with the GPU's dtype policy (bf16 body, fp32 CastedLinear/control tensors) and "
                         "bf16 autocast, on CPU: a precision difference the fp32 run cannot see shows here")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile on both sides as on the GPU (inductor on CPU): the model (fullgraph) and NS5")
    ap.add_argument("--dump", action="store_true", help="save both states after every step; report the first diff")
    ap.add_argument("--out", default="/tmp/pr1493_parity")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    datasets = out / "data" / "datasets" / "fineweb10B_sp8192"
    datasets.mkdir(parents=True)
    (out / "data" / "tokenizers").mkdir()
    for f in Path(args.data).glob("fineweb_*_*.bin"):
        n = write_shard(f, datasets / f.name, args.train_tokens if "_train_" in f.name else args.val_tokens)
        if "_train_" in f.name:
            rows = args.batch_tokens // args.seq
            print(f"train tokens {n}: ~{(n - 1) // args.seq / rows:.1f} steps per epoch")
    shutil.copy(args.tokenizer, out / "data" / "tokenizers" / "fineweb_8192_bpe.model")
    (out / "record.py").write_text(record_source(args.record, args.ns_fp32, args.dump, bf16=args.bf16,
                                                 compiled=args.compile),
                                   encoding="utf-8")
    shape, sets = shape_for(args.layers, args.dim, args.seq, args.batch_tokens)
    common = {**os.environ, "OMP_NUM_THREADS": "2", **({"PARITY_DUMP": str(out)} if args.dump else {}),
              **({"PARITY_NS_FP32": "1"} if args.ns_fp32 else {}), **({"PARITY_BF16": "1"} if args.bf16 else {}),
              **({"PARITY_COMPILE": "1"} if args.compile else {})}
    env = {**common, **{k: str(v) for k, v in shape.items()}, "ITERATIONS": str(args.iterations),
           "WARMUP_STEPS": str(args.warmup), "DATA_DIR": str(out / "data") + "/", "RUN_ID": "record"}
    rec = subprocess.run([sys.executable, "record.py"], cwd=out, env=env, capture_output=True, text=True)
    (out / "record.log").write_text(rec.stdout + rec.stderr)
    if args.compile:
        sets = [x.replace("core.compile=false", "core.compile=true") for x in sets]
    sets += [f"core.iterations={args.iterations}", f"core.warmup_steps={args.warmup}", f"core.data_path={datasets}",
             f"core.out_dir={out / 'runs'}", "core.run_id=pgolf"]
    if args.noise_floor:
        (out / "noise").mkdir()
        noise_src = record_source(args.record, args.ns_fp32, noise=True, bf16=args.bf16,
                                  compiled=args.compile)
        (out / "noise" / "record.py").write_text(noise_src, encoding="utf-8")
        pg = subprocess.run([sys.executable, "record.py"], cwd=out / "noise", env=env, capture_output=True, text=True)
        (out / "noise.log").write_text(pg.stdout + pg.stderr)
        b = {int(s): float(v) for s, v in RECORD_STEP.findall(pg.stdout)}
        return report(out, args, rec.stdout, pg.stdout, a_name="record", b_name="noise", b=b)
    main_src = PGOLF_MAIN.replace("for old, new in PATCHES:", f"for old, new in {PGOLF_NS_FP32!r}:")
    main_src = main_src.replace("\nPGOLF_PARITY\n", PGOLF_PARITY)
    pg = subprocess.run([sys.executable, "-c", main_src, str(REPO / "recipes" / "pr1493.toml"), *sets], cwd=REPO,
                        env={**common, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    (out / "pgolf.log").write_text(pg.stdout + pg.stderr)
    events = out / "runs" / "pgolf" / "events.jsonl"
    lines = events.read_text().splitlines() if events.is_file() else []
    b = {e["step"]: e["train_loss"] for e in map(json.loads, lines) if e.get("event") == "step"}
    return report(out, args, rec.stdout, pg.stdout, a_name="record", b_name="pgolf", b=b)


def report(out: Path, args, log_a: str, log_b: str, a_name: str, b_name: str, b: dict[int, float]) -> int:
    """Per-step losses side by side, the loop switch of each side, max |dloss|."""
    a = {int(s): float(v) for s, v in RECORD_STEP.findall(log_a)}
    if not a or not b:
        print(f"no train losses parsed; see the logs in {out}")
        return 1
    loop = r"layer_loop:enabled step:(\d+)|mode:recurrence on step:(\d+)"
    for name, log in ((a_name, log_a), (b_name, log_b)):
        m = re.search(loop, log)
        print(f"{name}: loop on at step {next(g for g in m.groups() if g) if m else '-'}")
    print(f"step  {a_name:<11}  {b_name:<11}  diff")
    worst = 0.0
    for s in sorted(set(a) | set(b)):
        ra, pb = a.get(s, float("nan")), b.get(s, float("nan"))
        worst = max(worst, abs(pb - ra)) if s in a and s in b else worst
        print(f"{s:4d}  {ra:.8f}  {pb:.8f}  {pb - ra:+.2e}")
    print(f"max |dloss| over {len(set(a) & set(b))} steps: {worst:.3e}")
    if args.dump and b_name == "pgolf":
        print(first_difference(out, min(max(a), max(b)), rename_pgolf=lambda n: NAME_MAP.get(n, n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
