"""Export PR #315's own trained weights through pgolf's export pipeline and compare with the record's export.

Input: the `final_model.pt` the record's train_gpt.py saved (float state dict) and its log. The weights are
renamed to pgolf's names (bigram.* -> embed_add.0.*, smear.gate -> embed_mix_post.0.smear_gate), loaded into
pgolf's recipes/pr315.toml model, and then:

1. float val_bpb with pgolf's plain evaluator (must equal the record's last-step val_bpb: same weights, same
   non-overlapping eval — an end-to-end equivalence check of model + byte accounting);
2. pgolf's export (quant_mixed int6/int8 + zstd-22, as the recipe) -> artifact bytes and round-trip
   val_bpb, against the record's `Serialized model int6+zstd` bytes and `final_int6_roundtrip_exact`;
3. the same quantized model under every codec (zlib-9, zstd-22, brotli-11, lzma-9e): bytes and seconds.

    python benchmarks/pr315_cross_export.py --weights REC_DIR/final_model.pt --record-log REC_DIR/logs/X.txt \
        --data DATA_DIR [--tokenizer TOK.model] [--val-max-tokens N] [--out cross.json]

Runs on CUDA (compiled) or CPU (`--device cpu`, slow; cut the val set with --val-max-tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import export as ex  # noqa: E402
from core.config import resolve  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.scoring import evaluate, synthetic_warmup  # noqa: E402
from core.train import export_artifact, final_eval, setup, should_compile, shutdown  # noqa: E402
from plugins.lib import codecs  # noqa: E402
from submissions.bundle import bundle_size  # noqa: E402

REC_BYTES_RE = re.compile(r"^Serialized model int6\+(\w+): (\d+) bytes", re.M)
REC_RT_RE = re.compile(r"^final_int6_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)
REC_VAL_RE = re.compile(r"^step:(\d+)/(\d+) val_loss:([\d.]+) val_bpb:([\d.]+)", re.M)


def pgolf_name(record_name: str) -> str:
    if record_name.startswith("bigram."):
        return "embed_add.0." + record_name.removeprefix("bigram.")
    if record_name == "smear.gate":
        return "embed_mix_post.0.smear_gate"
    return record_name


def record_numbers(log: str) -> dict:
    out: dict = {}
    if m := REC_BYTES_RE.search(log):
        out["record_codec"], out["record_model_bytes"] = m.group(1), int(m.group(2))
    if m := REC_RT_RE.search(log):
        out["record_roundtrip_val_bpb"] = float(m.group(2))
    vals = [(int(m.group(1)), float(m.group(4))) for m in REC_VAL_RE.finditer(log)]
    if vals:
        out["record_float_val_bpb"] = vals[-1][1]
    if "record_float_val_bpb" in out and "record_roundtrip_val_bpb" in out:
        out["record_gap"] = out["record_roundtrip_val_bpb"] - out["record_float_val_bpb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="the record's final_model.pt")
    ap.add_argument("--record-log", type=Path, help="the record's logs/<run_id>.txt")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--val-max-tokens", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("pr315_cross_export.json"))
    args = ap.parse_args()

    registry = Registry()
    import tomllib

    dropped = ("ema", "sliding_window")  # plain eval (the record's round-trip metric), weights as given
    recipe = tomllib.loads((REPO / "recipes" / "pr315.toml").read_text(encoding="utf-8"))
    recipe = {k: v for k, v in recipe.items() if k not in dropped}
    recipe["plugins"] = [p for p in recipe["plugins"] if p not in dropped]
    sets = [f"core.data_path={args.data}", f"core.device={args.device}", f"core.val_max_tokens={args.val_max_tokens}",
            f"core.out_dir={args.out.parent.resolve() / 'runs'}", "core.run_id=pr315-cross-export"]
    if args.tokenizer:
        sets.append(f"core.tokenizer_path={args.tokenizer}")
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=recipe, sets=sets,
                  check_plugins=registry.check)
    run = setup(cfg, registry, code_size=bundle_size)
    try:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        mapped = {pgolf_name(k): v for k, v in state.items()}
        run.model.load_state_dict(mapped, strict=True)
        evaluator = run.hook.pg_evaluator(run=run)  # plain: sliding_window is not enabled
        if should_compile(run):
            synthetic_warmup(run, run.eval_model, evaluator)
        res = evaluate(run, run.eval_model, evaluator, run.val_tokens)
        out: dict = {"val_tokens": int(run.val_tokens.numel() - 1), "pgolf_float_val_bpb": res.val_bpb,
                     "float_eval_ms": res.eval_time_ms}
        print(f"float: val_bpb {res.val_bpb:.6f} ({res.eval_time_ms:.0f} ms)", flush=True)

        fields = final_eval(run, *export_artifact(run))
        out.update(pgolf_model_bytes=fields["model_bytes"], pgolf_code_bytes=fields["code_bytes"],
                   pgolf_label=fields["artifact_label"], pgolf_roundtrip_val_bpb=fields["val_bpb"],
                   roundtrip_eval_ms=fields["eval_time_ms"])
        out["pgolf_gap"] = fields["val_bpb"] - res.val_bpb
        print(f"export {fields['artifact_label']}: {fields['model_bytes']} bytes, round trip val_bpb "
              f"{fields['val_bpb']:.6f}", flush=True)

        # Every codec on the same quantized model.
        cpu_state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
        cpu_state.update({k: v.cpu() for k, v in mapped.items()})  # the float weights, not the round-tripped ones
        qfns = [lambda n, t: run.hook.pg_quantize_tensor(name=n, tensor=t, config=cfg)]
        t0 = time.perf_counter()
        qstate = ex.quantize_state_dict(cpu_state, qfns)
        out["quantize_s"] = time.perf_counter() - t0
        candidates = {"zlib-9": codecs.ZlibCodec(9), "zstd-22": codecs.ZstdCodec(22),
                      "brotli-11": codecs.BrotliCodec(11), "lzma-9e": codecs.LzmaCodec()}
        out["codecs"] = {}
        for label, codec in candidates.items():
            t0 = time.perf_counter()
            blob = ex.encode_artifact(qstate, codec, "int6")
            t1 = time.perf_counter()
            ex.decode_artifact(blob, {codec.name: codec})
            t2 = time.perf_counter()
            out["codecs"][label] = {"bytes": len(blob), "encode_s": t1 - t0, "decode_s": t2 - t1}
            print(f"  {label:>9}: {len(blob):>10,} bytes  encode {t1 - t0:6.2f}s  decode {t2 - t1:5.2f}s", flush=True)
        if args.record_log and args.record_log.is_file():
            out.update(record_numbers(args.record_log.read_text(errors="replace")))
        if "record_model_bytes" in out:
            out["bytes_ratio_pgolf_over_record"] = out["pgolf_model_bytes"] / out["record_model_bytes"]
        print(json.dumps(out, indent=2), flush=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        os.replace(tmp, args.out)
    finally:
        shutdown(run)


if __name__ == "__main__":
    main()
