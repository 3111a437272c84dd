"""PR #1493's own train_gpt.py vs recipes/pr1493.toml, step by step on CPU in fp32 (reduced model).

Both run on the same SP8192 shards and tokenizer with the same seed, steps and reduced shape (6 layers × 64,
loop blocks 1-2 ×2 from 35 %, parallel residuals from block 4), uncapped (the schedule and the loop switch
follow step/ITERATIONS), no compile warm-up, no TTT; the train loss of every step is printed side by side.
The record is decoded from its LZMA wrapper and patched only where CPU needs it (FA3 -> SDPA, CUDA calls ->
no-ops, no bf16 model cast, no compile, fp32 matmuls, no fused Adam, Python 3.11 f-strings); every patch
must match. pgolf's side drops score_first_ttt (plain evaluation) and needs the routing plugins
(depth_recurrence, parallel_residuals, skip_gates).

    python benchmarks/pr1493_parity_cpu.py --data DIR_WITH_SP8192_SHARDS --tokenizer fineweb_8192_bpe.model \
        [--record train_gpt.py] [--iterations 20] [--out /tmp/pr1493_parity]

Measured (2 CPU cores, 20 steps, shards from `pgolf data build <generated corpus> --vocab 8192`): identical
train losses to 4 decimals for steps 1-6, loop switched on at step 7 in both, then float-rounding drift of at
most 4e-4 by step 20 (NS5 runs in bf16 in both, which amplifies 1-ulp differences); end-of-training val_loss
4.5270 (record) vs 4.5271 (pgolf).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD_DIR = "records/track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"
from record_parity_cpu import PRELUDE, SDPA_SHIM  # noqa: E402 (benchmarks/ is this script's path)

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


def record_source(path: str | None) -> str:
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
    for old, new in PATCHES:
        if old not in text:
            raise SystemExit(f"patch target not found in the record: {old[:60]!r}")
        text = text.replace(old, new)
    return PRELUDE + text


PGOLF_MAIN = '''
import sys
from core.config import load_recipe, resolve
from core.registry import Registry
from core.train import setup, train
reg = Registry()
data = load_recipe(sys.argv[1])
data["source"] = sys.argv[1]
data["plugins"] = [p for p in data["plugins"] if p != "score_first_ttt"]
data.pop("score_first_ttt", None)
cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=data, sets=sys.argv[2:], check_plugins=reg.check)
train(setup(cfg, reg))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory with fineweb_{train,val}_*.bin of vocab 8192")
    ap.add_argument("--tokenizer", required=True, help="the SentencePiece model of those shards")
    ap.add_argument("--record", help="the record's train_gpt.py (wrapped or decoded); default: the git mirror")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", default="/tmp/pr1493_parity")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    datasets = out / "data" / "datasets" / "fineweb10B_sp8192"
    datasets.mkdir(parents=True)
    (out / "data" / "tokenizers").mkdir()
    for f in Path(args.data).glob("fineweb_*_*.bin"):
        shutil.copy(f, datasets / f.name)
    shutil.copy(args.tokenizer, out / "data" / "tokenizers" / "fineweb_8192_bpe.model")
    (out / "record.py").write_text(record_source(args.record), encoding="utf-8")
    env = {**os.environ, **{k: str(v) for k, v in SHAPE.items()}, "ITERATIONS": str(args.iterations),
           "DATA_DIR": str(out / "data") + "/", "RUN_ID": "record"}
    rec = subprocess.run([sys.executable, "record.py"], cwd=out, env=env, capture_output=True, text=True)
    (out / "record.log").write_text(rec.stdout + rec.stderr)
    sets = [*PGOLF_SETS, f"core.iterations={args.iterations}", f"core.data_path={datasets}",
            f"core.out_dir={out / 'runs'}", "core.run_id=pgolf"]
    pg = subprocess.run([sys.executable, "-c", PGOLF_MAIN, str(REPO / "recipes" / "pr1493.toml"), *sets], cwd=REPO,
                        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    (out / "pgolf.log").write_text(pg.stdout + pg.stderr)
    a = {int(s): float(v) for s, v in RECORD_STEP.findall(rec.stdout)}
    b = {int(s): float(v) for s, v in PGOLF_STEP.findall(pg.stdout)}
    if not a or not b:
        print(f"no train losses parsed; see {out}/record.log and {out}/pgolf.log")
        return 1
    print("step  record   pgolf    diff")
    for s in sorted(set(a) | set(b)):
        ra, pb = a.get(s, float("nan")), b.get(s, float("nan"))
        print(f"{s:4d}  {ra:.4f}  {pb:.4f}  {pb - ra:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
