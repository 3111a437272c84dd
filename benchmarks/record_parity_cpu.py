"""Step-by-step parity of a record's own train_gpt.py and its pgolf recipe, on CPU in fp32.

On a GPU two runs of one script already differ (bf16, non-deterministic kernels), so a small gap between
the record and pgolf there cannot be told from noise. On CPU, in fp32, with torch.compile off, both are
deterministic: any train-loss difference beyond float rounding is a real difference in the computation
(data order, init, optimizer, schedule). This runs both on the same data, seed, steps and reduced model
size, and prints the train loss of every step side by side and the first step where they part.

The record is patched only where CPU needs it (FA3 -> SDPA, CUDA calls -> no-ops, no bf16 cast of the
model, no compile, a validation prefix as PGOLF_VAL_MAX_TOKENS); every patch must match exactly once.
It also prints each side's mode lines (late QAT, SWA) and, with `--weights`, compares the weights after
training (after SWA, before quantization): the record's final_model.pt against pgolf's state dict saved
right after `pg_train_end` (names mapped as tests/test_record_init.py does for PR #534).

    python benchmarks/record_parity_cpu.py --record /tmp/pr315_record.py --recipe recipes/pr315.toml \
        --data ~/.cache/pgolf/default-v1-sp1024 --iterations 30 \
        --env RECORD NUM_LAYERS=11 BIGRAM_VOCAB_SIZE=2048 XSA_LAST_N=4 ... (the record's README command line)
    python benchmarks/record_parity_cpu.py --record pr534_train_gpt.py --recipe recipes/pr534.toml \
        --data ~/.cache/pgolf/default-v1-sp1024 --iterations 36 --warmdown 12 --weights --ns-fp32 \
        --shape MODEL_DIM=64 NUM_HEADS=4 NUM_KV_HEADS=2 MLP_HIDDEN=128 TRAIN_SEQ_LEN=128 EVAL_SEQ_LEN=128 \
        TRAIN_BATCH_TOKENS=2048 VAL_BATCH_SIZE=4096 --record-env QAT_LATE_THRESHOLD=0.45 SWA_EVERY=5 \
        SWA_THRESHOLD=0.6 --pgolf-set late_qat.threshold=0.45 tight_swa.every=5 tight_swa.threshold=0.6 \
        value_embeddings.frozen=true   (QAT from step 32, 2 SWA checkpoints: max |dloss| 1e-4, weights 4e-5)

`--bf16` runs both with the GPU's dtype policy (bf16 body, fp32 CastedLinear/control tensors, bf16 autocast; eager)
and `--dump` saves post-clip gradients, parameters and optimizer states after every step and names the first that
differ (code shared with pr1493_parity_cpu.py). PR #534, the command above with `--iterations 6 --warmdown 2 --bf16
--dump` and `value_embeddings.frozen_grads=accumulate`: every state bitwise equal after steps 1-3; from step 4 every
gradient differs by <= 1 fp32 ulp (the clip coefficient: the record's ve_scales come before its blocks in
clip_grad_norm_'s total norm, pgolf's VE layer scales inside blocks 9/10), then bf16 Newton-Schulz amplifies it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEP_RE = re.compile(r"^step:(\d+)/\d+ train_loss:([\d.]+)", re.M)
EVENT_RE = re.compile(r"^(?:\S+ )?((?:late_qat|swa|tight_swa):.*)$", re.M)
# pgolf's CLI; PARITY_NS_FP32: core.optim with fp32 Newton-Schulz and update buffer (as the record with
# NS_FP32); PARITY_WEIGHTS: the state dict saved right after pg_train_end (averaged, not yet quantized)
PGOLF_RUNNER = '''import os, sys, importlib.util
from pathlib import Path
import torch
if os.environ.get("PARITY_NS_FP32"):
    import core
    spec = importlib.util.spec_from_file_location("core.optim", Path(core.__file__).with_name("optim.py"))
    mod, src = importlib.util.module_from_spec(spec), Path(spec.origin).read_text()
    for old, new in PGOLF_NS_FP32:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    sys.modules["core.optim"] = mod
    exec(compile(src, spec.origin, "exec"), mod.__dict__)
import core.train as T
PGOLF_PARITY
_path, _finish = os.environ.get("PARITY_WEIGHTS"), T.finish_and_calibrate
def _saving(run, loop, budget):
    run.hook.pg_train_end(run=run, model=run.model)
    torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, _path)
    run.hook.pg_train_end = lambda **kw: None  # already called
    return _finish(run, loop, budget)
if _path:
    T.finish_and_calibrate = _saving
from pgolf.cli import main
sys.exit(main(sys.argv[1:]))
'''
PGOLF_NS_FP32 = [("dtype: torch.dtype = torch.bfloat16) -> Tensor:", "dtype: torch.dtype = torch.float32) -> Tensor:"),
                 ("flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.bfloat16)",
                  "flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.float32)")]
# --dump / --bf16 on pgolf's side (also benchmarks/pr1493_parity_cpu.py's): run after `import core.train as T`.
# PARITY_DUMP: the post-clip gradients, parameters and optimizer states after every timed-loop step (the warm-up's
# steps are not dumped); PARITY_BF16: the CUDA dtype policy (core.model.cast_for_training) and bf16 autocast on
# CPU; PARITY_COMPILE: Newton-Schulz compiled as on CUDA.
PGOLF_PARITY = """
DUMP = os.environ.get("PARITY_DUMP")
if DUMP:
    import torch
    _loop, _opt_step, _n = T.timed_loop, T.Stepper.optimizer_step, [0, False]
    def timed_loop(run, stepper, budget):
        _n[1] = True
        return _loop(run, stepper, budget)
    def optimizer_step(self):
        model = self.run.model
        names = {id(p): n for n, p in model.named_parameters()}
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        _opt_step(self)
        if not _n[1]:
            return
        _n[0] += 1
        opt = {}
        for o in self.run.optimizers:
            for p, st in o.state.items():
                opt.update({f"{names[id(p)]}:{k}": v.detach().clone() for k, v in st.items()
                            if torch.is_tensor(v) and k != "step"})
        torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}, "opt": opt,
                    "grad": grads}, f"{DUMP}/pgolf_{_n[0]}.pt")
    T.timed_loop, T.Stepper.optimizer_step = timed_loop, optimizer_step
_setup0 = T.setup
def _setup(cfg, reg, **kw):
    run = _setup0(cfg, reg, **kw)
    if os.environ.get("PARITY_BF16"):
        run.autocast_dtype = T.torch.bfloat16
    if os.environ.get("PARITY_COMPILE"):
        for opt in run.optimizers:
            if isinstance(opt, T.Muon):
                opt.zeropower = T._compiled_zeropower()
    return run
T.setup = _setup
if os.environ.get("PARITY_BF16"):
    _cast = T.cast_for_training
    T.cast_for_training = lambda model, device: _cast(model, device, bf16=True)
"""
# --dump on the record's side: `_parity_grads(model)` before its optimizer steps, `_dump_state(...)` after
RECORD_DUMP_FN = """
def _parity_grads(model):  # record_parity_cpu.py --dump
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _dump_state(step, model, optimizers, grads=None):  # record_parity_cpu.py --dump
    import os as _os
    d = _os.environ.get("PARITY_DUMP")
    if not d:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    opt = {}
    for o in optimizers:
        for p, st in o.state.items():
            opt.update({f"{names[id(p)]}:{k}": v.detach().clone() for k, v in st.items()
                        if torch.is_tensor(v) and k != "step"})
    torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}, "opt": opt,
                "grad": grads or {}}, f"{d}/record_{step}.pt")
"""
NS_FP32 = [  # --ns-fp32, the record: Newton-Schulz and the flat Muon update buffer in fp32 (bf16 in the record)
    (r"^(\s*X = G)\.bfloat16\(\)", r"\1.float()", 1),
    (r"^(\s*updates_flat = torch\.zeros\(total_params, device=params\[0\]\.device, dtype=torch)\.bfloat16\)",
     r"\1.float32)", (0, 1)),  # #609's parallel Muon has no flat buffer
]
RECORD_NAMES = ((r"^smear_gate\.gate_weight$", "embed_mix_post.0.smear_gate"), (r"^ve\.", "ve_shared."),
                (r"^ve_scales\.(\d+)$", r"blocks.\1.attn.value_parts.0.ve_layer_scale"))
PRELUDE = '''import torch as _t
_t.cuda.is_available = lambda: True
for _n in ("set_device", "synchronize", "manual_seed_all", "reset_peak_memory_stats", "empty_cache"):
    setattr(_t.cuda, _n, lambda *a, **k: None)
_t.cuda.max_memory_allocated = _t.cuda.max_memory_reserved = lambda *a, **k: 0
import torch.backends.cuda as _bc
for _n in ("enable_cudnn_sdp", "enable_flash_sdp", "enable_mem_efficient_sdp", "enable_math_sdp"):
    setattr(_bc, _n, lambda *a, **k: None)
_t.compile = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
'''
SDPA_SHIM = '''
import torch.nn.functional as _F


def flash_attn_3_func(q, k, v, causal=True):  # record_parity_cpu.py: FA3 layout (B, T, H, D) through SDPA
    y = _F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)
'''
# (pattern, replacement, how many times it must match: an int, a tuple of allowed counts, None = at least once)
PATCHES = [
    (r"^from flash_attn_interface import flash_attn_func as flash_attn_3_func\n", SDPA_SHIM, (0, 1)),  # #534: SDPA
    (r'torch\.device\("cuda", local_rank\)', 'torch.device("cpu")', 1),
    (r'\["nvidia-smi"\]', '["true"]', 1),
    (r"\)\.to\(device\)\.bfloat16\(\)", ").to(device)", None),
    (r"fused=True", "fused=False", None),
    (r'torch\.autocast\(device_type="cuda"[^)]*\)', 'torch.autocast(device_type="cpu", enabled=False)', None),
    (r"^(    val_tokens = load_validation_tokens\(args\.val_files, ([\w.]+)\)\n)",  # #534: args.train_seq_len
     r'\1    _cap = int(os.environ.get("PGOLF_VAL_MAX_TOKENS", "0"))\n'
     r"    if _cap > 0:\n"
     r"        val_tokens = val_tokens[: min(val_tokens.numel() - 1, (_cap // \2) * \2) + 1]\n", 1),
    # #534's SWA snapshot: .float().cpu() of an fp32 CPU tensor is the tensor itself, so the "snapshot" would
    # alias the live weights (and `+=` would add into them); on the GPU .cpu() copies
    (r"train_loss:\{train_loss\.item\(\):\.4f\}", "train_loss:{train_loss.item():.8f}", (0, 1)),  # all digits
    (r"(sd = \{k: v\.detach\(\)\.float\(\)\.cpu\(\))( for k, v in base_model\.state_dict\(\)\.items\(\)\})",
     r"\1.clone()\2", (0, 1)),
]


BF16_KEEP = (r"\)\.to\(device\)\.bfloat16\(\)", r'torch\.autocast\(device_type="cuda"[^)]*\)')  # --bf16: kept
BF16 = [(r'torch\.autocast\(device_type="cuda"', 'torch.autocast(device_type="cpu"', None),  # bf16 autocast on CPU
        # #534's bf16 VE times an fp32 0-dim scale: CUDA's kernel reads the scale cast to bf16 (as pgolf's explicit
        # .to(dtype)), CPU's reads the fp32 value; made CUDA's here
        (r"ve_base \* self\.ve_scales\[(\w+)\]", r"ve_base * self.ve_scales[\1].to(ve_base.dtype)", (0, 2)),
        # the rotary table as the GPU's compiled graph fills it (positions and angles in fp32, the table rounded to the
        # buffer's bf16 once; measured on an H200: equal to that bitwise, the eager bf16 arange off by up to 2.0)
        (r"^( +)t = torch\.arange\(seq_len, device=device, dtype=(self\.)?inv_freq\.dtype\)\n"
         r"( +)freqs = torch\.outer\(t, ((self\.)?inv_freq(\.to\(device\))?)\)\n",
         r"\1_dt = \4.dtype\n\1t = torch.arange(seq_len, device=device, dtype=torch.float32)\n"
         r"\3freqs = torch.outer(t, \4.float())\n", 1),
        (r"(self\._(?:cos|sin)_cached = freqs\.(?:cos|sin)\(\))", r"\1.to(_dt)", 2)]
DUMP = [  # --dump: post-clip gradients before the timed loop's optimizer steps, the states after them
    (r"(clip_grad_norm_\(base_model\.parameters\(\), args\.grad_clip_norm\)\n)( +)"
     r"(for opt in optimizers:\n +opt\.step\(\)\n +zero_grad_all\(\)\n)",
     r"\1\2_g = _parity_grads(base_model)\n\2\3\2_dump_state(step + 1, base_model, optimizers, _g)\n", 1),
]


def patched(src: Path, out: Path, ns_fp32: bool = False, bf16: bool = False, dump: bool = False) -> Path:
    text = src.read_text(encoding="utf-8")
    patches = [x for x in PATCHES if not (bf16 and x[0] in BF16_KEEP)] + (BF16 if bf16 else [])
    for pattern, repl, count in patches + (NS_FP32 if ns_fp32 else []) + (DUMP if dump else []):
        text, n = re.subn(pattern, repl, text, flags=re.M)
        allowed = count if isinstance(count, tuple) else (count,)
        if (count is not None and n not in allowed) or (count is None and n == 0):
            sys.exit(f"--record {src}: patch {pattern!r} matched {n} times (expected {count or '>= 1'})")
    future = re.search(r"^from __future__ import [^\n]*\n", text, re.M)  # must stay the first statement
    at = future.end() if future else 0
    out.write_text(text[:at] + PRELUDE + (RECORD_DUMP_FN if dump else "") + text[at:], encoding="utf-8")
    return out


def losses(log: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in STEP_RE.finditer(log)}


def pgolf_losses(out: Path, log: str) -> dict[int, float]:
    """Every digit from pgolf's events.jsonl (the log prints 4 decimals), else the log."""
    events = out / "runs" / "pgolf" / "events.jsonl"
    if not events.is_file():
        return losses(log)
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    return {e["step"]: e["train_loss"] for e in rows if e.get("event") == "step"}


def compare_weights(record: dict, ours: dict) -> tuple[float, list[str]]:
    """Max |difference| over the record's tensors found in pgolf's state dict (PR #534's names mapped), and
    the record names with no pgolf tensor."""
    worst, missing = 0.0, []
    for name, t in record.items():
        mapped = record_to_pgolf(name)
        if mapped not in ours or ours[mapped].numel() != t.numel():
            missing.append(name)
            continue
        worst = max(worst, (ours[mapped].reshape(t.shape).float() - t.float()).abs().max().item())
    return worst, missing


def record_to_pgolf(name: str) -> str:
    """A PR #534 record parameter name as pgolf's."""
    for pattern, repl in RECORD_NAMES:
        name = re.sub(pattern, repl, name)
    return name


def first_difference(out: Path, steps: int, rename_record=None, rename_pgolf=None, top: int = 8) -> str:
    """The first step after which the dumped states (--dump) differ — post-clip gradients, parameters, optimizer
    states — its largest differences first, with each side's dtype; names one side lacks and dtypes that differ
    are listed, not compared."""
    import torch

    def renamed(d: dict, fn) -> dict:
        return {(fn(k.split(":")[0]) + k[len(k.split(":")[0]):]) if fn else k: v for k, v in d.items()}

    notes: set[str] = set()
    for step in range(1, steps + 1):
        a, b = (torch.load(out / f"{side}_{step}.pt", weights_only=True) for side in ("record", "pgolf"))
        diffs = []
        for kind in ("grad", "model", "opt"):
            ra, rb = renamed(a.get(kind, {}), rename_record), renamed(b.get(kind, {}), rename_pgolf)
            for k in sorted(set(ra) | set(rb)):
                if k not in ra or k not in rb:
                    notes.add(f"{kind} {k}: only in {'pgolf' if k in rb else 'record'}")
                    continue
                x, y = ra[k], rb[k]
                if x.dtype != y.dtype:
                    notes.add(f"{kind} {k}: record {x.dtype} {tuple(x.shape)}, pgolf {y.dtype} {tuple(y.shape)}")
                d = ((x.reshape(-1).float() - y.reshape(-1).float()).abs().max().item() if x.numel() == y.numel()
                     else float("inf"))
                if d > 0:
                    diffs.append((d, f"{kind} {k}: max|diff| {d:.3e} ({x.dtype} / {y.dtype})"))
        if diffs:
            diffs.sort(reverse=True)
            head = f"first differing state after step {step} ({len(diffs)} tensors):\n  "
            return head + "\n  ".join(x for _, x in diffs[:top]) + "".join(f"\n  note: {n}" for n in sorted(notes))
    return f"all dumped states identical over {steps} steps" + "".join(f"\n  note: {n}" for n in sorted(notes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", type=Path, required=True)
    ap.add_argument("--recipe", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, help="default: the first <data>/tokenizer/*.model")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("/tmp/record_parity"))
    ap.add_argument("--shape", nargs="*", default=[
        "MODEL_DIM=128", "NUM_HEADS=4", "NUM_KV_HEADS=2", "TRAIN_SEQ_LEN=256", "EVAL_SEQ_LEN=256",
        "TRAIN_BATCH_TOKENS=4096", "VAL_BATCH_SIZE=8192"],
        help="size overrides both sides read (environment names)")
    ap.add_argument("--record-env", nargs="*", default=[], help="the record's own settings (its README command)")
    ap.add_argument("--pgolf-set", nargs="*", default=[], help="extra --set for pgolf (plugin-only settings)")
    ap.add_argument("--warmdown", type=int, help="WARMDOWN_ITERS (default: iterations // 3)")
    ap.add_argument("--weights", action="store_true", help="compare the weights after training (after SWA)")
    ap.add_argument("--ns-fp32", action="store_true", help="Newton-Schulz in fp32 on both sides (bf16 in both: "
                    "their batching differs, so bf16 rounding makes the weights drift apart by ~1e-2 in 16 steps; "
                    "#609's parallel-Muon buffers stay bf16)")
    ap.add_argument("--bf16", action="store_true", help="both sides with the GPU's dtype policy (bf16 body, fp32 "
                    "CastedLinear/control tensors) and bf16 autocast, on CPU, eager")
    ap.add_argument("--dump", action="store_true", help="save both states after every step (post-clip gradients, "
                    "parameters, optimizer states); report the first step and tensors that differ")
    args = ap.parse_args()
    out = args.out.resolve()
    if out.exists():
        sys.exit(f"--out {out}: exists; choose a new folder (runs are never overwritten)")
    out.mkdir(parents=True)
    tok = args.tokenizer or next(args.data.glob("tokenizer/*.model"))
    env = dict(os.environ, DATA_PATH=str(args.data.resolve()), TOKENIZER_PATH=str(Path(tok).resolve()),
               ITERATIONS=str(args.iterations), WARMDOWN_ITERS=str(args.warmdown or max(1, args.iterations // 3)),
               MAX_WALLCLOCK_SECONDS="0", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="1", SEED="1337", WARMUP_STEPS="2",
               PGOLF_VAL_MAX_TOKENS="8192", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    env.update(kv.split("=", 1) for kv in args.shape)
    env.update({"PARITY_DUMP": str(out)} if args.dump else {}, **({"PARITY_BF16": "1"} if args.bf16 else {}))
    rec_env = dict(env, **dict(kv.split("=", 1) for kv in args.record_env), RUN_ID="record")
    script = patched(args.record, out / "train_gpt_cpu.py", args.ns_fp32, args.bf16, args.dump)
    rec = subprocess.run([sys.executable, str(script)], cwd=out, env=rec_env, capture_output=True, text=True)
    (out / "record.out").write_text(rec.stdout + rec.stderr)
    pg_env = dict(env, PGOLF_DEVICE="cpu", PGOLF_COMPILE="false", PGOLF_OUT_DIR=str(out / "runs"), RUN_ID="pgolf",
                  PYTHONPATH=str(REPO), PARITY_WEIGHTS=str(out / "pgolf_final.pt") if args.weights else "",
                  PARITY_NS_FP32="1" if args.ns_fp32 else "")
    runner = PGOLF_RUNNER.replace("PGOLF_NS_FP32", repr(PGOLF_NS_FP32)).replace("\nPGOLF_PARITY\n", PGOLF_PARITY)
    cmd = [sys.executable, "-c", runner, "train", "--recipe", str(args.recipe.resolve()),
           *[a for s in args.pgolf_set for a in ("--set", s)]]
    pg = subprocess.run(cmd, cwd=REPO, env=pg_env, capture_output=True, text=True)
    (out / "pgolf.out").write_text(pg.stdout + pg.stderr)
    if rec.returncode or pg.returncode:
        sys.exit(f"record exit {rec.returncode}, pgolf exit {pg.returncode}: see {out}/record.out, {out}/pgolf.out")
    a, b = losses((out / "logs" / "record.txt").read_text()), pgolf_losses(out, pg.stdout)
    rows, first = [], None
    for step in sorted(set(a) & set(b)):
        diff = b[step] - a[step]
        rows.append({"step": step, "record": a[step], "pgolf": b[step], "diff": diff})
        if first is None and abs(diff) > 2e-4:
            first = step
        print(f"step {step:4d}  record {a[step]:.6f}  pgolf {b[step]:.6f}  diff {diff:+.2e}")
    worst = max((abs(r["diff"]) for r in rows), default=float("nan"))
    print(f"first step differing by > 2e-4 nats: {first}; max |diff| {worst:.2e} over {len(rows)} steps")
    result = {"rows": rows, "first_divergent_step": first, "max_abs_diff": worst}
    for side, log in (("record", (out / "logs" / "record.txt").read_text()), ("pgolf", pg.stdout)):
        result[f"{side}_events"] = EVENT_RE.findall(log)
        print(f"{side}: " + " | ".join(result[f"{side}_events"]))
    if args.weights:
        import torch

        w_diff, missing = compare_weights(torch.load(out / "final_model.pt", map_location="cpu", weights_only=True),
                                          torch.load(out / "pgolf_final.pt", map_location="cpu", weights_only=True))
        result.update(weights_max_abs_diff=w_diff, weights_unmatched=missing)
        print(f"weights after training: max |diff| {w_diff:.3g}; record tensors not compared: {missing}")
    if args.dump:
        result["first_difference"] = first_difference(out, max(a), rename_record=record_to_pgolf)
        print(result["first_difference"])
    (out / "parity.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
