"""Export pipeline benchmark on a PR #315-size model (recipes/pr315.toml: 11L × 512, MLP 3x, vocab 1024,
26.8M parameters), randomly initialised then perturbed (so no tensor is a zero/orthogonal init).

Measures, on CPU or CUDA:
1. per quantizer (quant_mixed, gptq_lite, sdclip, gptq RTN fallback, lqer on top of quant_mixed): seconds;
2. GPTQ: Hessian collection (calibration) seconds for --calib-tokens tokens (random token ids, or training
   shards with --data), then GPTQ quantization seconds (clip search and SDClip);
3. per compressor on quant_mixed's artifact: bytes and seconds (zlib-9, zstd-22, brotli-11, lzma-9e);
4. the PR #315 container (torch.save({"w": result, "m": meta}) of the same codes + zstd-22) against
   pgolf's artifact (the issue's 2% acceptance is on the same trained model; here on random weights).

    python benchmarks/export_bench.py [--device cpu|cuda] [--calib-tokens 16384] [--out export_bench.json]
    python benchmarks/export_bench.py --device cuda --calib-tokens 6291456 --data DATA_DIR   # H100

Numbers go in the issue note, not in tests.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import export as ex  # noqa: E402
from core.config import resolve  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.run import create_run  # noqa: E402
from core.train import CoreDefaults, build_model  # noqa: E402
from plugins.gptq import GPTQ, GPTQConfig, HessianCollector, hessian_targets  # noqa: E402
from plugins.gptq_lite import GPTQLite  # noqa: E402
from plugins.lib import codecs  # noqa: E402
from plugins.lqer import LQERConfig, add_lqer  # noqa: E402
from plugins.quant_mixed import QuantMixed  # noqa: E402
from plugins.sdclip import SDClip  # noqa: E402

RECIPE = REPO / "recipes" / "pr315.toml"
CODECS = {"zlib-9": lambda: codecs.ZlibCodec(9), "zstd-22": lambda: codecs.ZstdCodec(22),
          "brotli-11": lambda: codecs.BrotliCodec(11), "lzma-9e": lambda: codecs.LzmaCodec()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Any, *args: Any) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - t0


def build(device: str) -> Any:
    registry = Registry()
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=RECIPE,
                  sets=[f"core.device={device}", "core.compile=false"], check_plugins=registry.check)
    run = create_run(cfg, registry, CoreDefaults(), make_dir=False)
    torch.manual_seed(0)
    model = build_model(run)
    with torch.no_grad():  # perturb: every float tensor gets noise on the scale of its own spread
        for p in model.parameters():
            spread = float(p.float().std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn_like(p) * (spread + 0.02) * 0.5)
    return run, model


def quantize_with(plugin: Any, state: dict[str, torch.Tensor]) -> dict[str, ex.QTensor]:
    qstate = ex.quantize_state_dict(state, [lambda n, t: plugin.pg_quantize_tensor(n, t, None)])
    return qstate


def pr315_container(qstate: dict[str, ex.QTensor]) -> bytes:
    """The record's layout of the same codes: flat {name(.q/.scale): tensor} + a meta dict, torch.save."""
    result: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, q in qstate.items():
        if q.scheme == "passthrough":
            result[name], meta[name] = q.data, "passthrough"
        else:
            result[name + ".q"], result[name + ".scale"] = q.data, q.scale
            meta[name] = {"type": "int6" if q.meta.get("bits") == 6 else "int8"}
    buf = io.BytesIO()
    torch.save({"w": result, "m": meta}, buf)
    return buf.getvalue()


def calibration_batches(run: Any, tokens: int, seq_len: int, data: Path | None) -> list[torch.Tensor]:
    n = max(tokens // seq_len, 1)
    if data is None:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, run.core.vocab_size, (n, seq_len), generator=g)
        return [ids[i:i + 8].to(run.device) for i in range(0, n, 8)]
    from core.data import DistributedTokenLoader, shard_files

    loader = DistributedTokenLoader(shard_files(data, "train"), 0, 1, run.device)
    return [loader.next_batch(min(8, n - i) * seq_len, seq_len, 1)[0] for i in range(0, n, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--calib-tokens", type=int, default=16384, help="GPTQ calibration tokens")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--data", type=Path, help="challenge-format data dir for calibration (default: random ids)")
    ap.add_argument("--codecs", default=",".join(CODECS), help="comma-separated subset of " + ",".join(CODECS))
    ap.add_argument("--out", type=Path, default=Path("export_bench.json"))
    args = ap.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    run, model = build(device)
    dev = run.device
    state = {k: v.detach() for k, v in model.state_dict().items()}
    n_params = sum(int(v.numel()) for v in state.values())
    out: dict[str, Any] = {"device": str(dev), "params": n_params, "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "quantizers": {}, "codecs": {}}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    print(f"device {dev}  params {n_params:,}  threads {torch.get_num_threads()}")

    quantized: dict[str, dict[str, ex.QTensor]] = {}
    for name, plugin in (("quant_mixed", QuantMixed()), ("gptq_lite", GPTQLite()), ("sdclip", SDClip()),
                         ("gptq_rtn_fallback", GPTQ())):
        qstate, sec = timed(dev, quantize_with, plugin, state)
        quantized[name] = qstate
        out["quantizers"][name] = {"seconds": round(sec, 3), "payload_bytes": sum(q.payload_bytes
                                                                                  for q in qstate.values())}
        print(f"quantize {name:<18} {sec:8.2f}s")
    lqer_state = dict(quantized["quant_mixed"])
    _, sec = timed(dev, add_lqer, lqer_state, state, LQERConfig())
    out["quantizers"]["lqer_on_quant_mixed"] = {"seconds": round(sec, 3)}
    print(f"lqer (top 3, rank 4)      {sec:8.2f}s")

    # GPTQ: calibration (Hessians from forward hooks), then quantization.
    cfg = GPTQConfig()
    batches = calibration_batches(run, args.calib_tokens, args.seq_len, args.data)
    targets = hessian_targets(model, cfg)

    def calibrate() -> dict[str, torch.Tensor]:
        model.eval()
        with HessianCollector(model, targets) as col, torch.no_grad():
            for x in batches:
                with run.autocast():
                    model(x)
        return col.finish()

    hessians, calib_s = timed(dev, calibrate)
    tokens = sum(int(x.numel()) for x in batches)
    out["gptq"] = {"calib_tokens": tokens, "hessians": len(hessians), "calibration_seconds": round(calib_s, 3)}
    print(f"gptq calibration          {calib_s:8.2f}s  ({tokens:,} tokens, {len(hessians)} Hessians)")
    for clip in ("search", "sdclip"):
        plugin = GPTQ(GPTQConfig(clip=clip))
        plugin.hessians = hessians
        qstate, sec = timed(dev, quantize_with, plugin, state)
        quantized[f"gptq_{clip}"] = qstate
        out["gptq"][f"quantize_{clip}_seconds"] = round(sec, 3)
        print(f"gptq quantize ({clip:<6})    {sec:8.2f}s")

    # Compressors on quant_mixed's artifact, and the record's container with the same codes.
    qstate = quantized["quant_mixed"]
    for key in (c.strip() for c in args.codecs.split(",") if c.strip()):
        codec = CODECS[key]()
        blob, sec = timed(dev, ex.encode_artifact, qstate, codec, "int6")
        _, dsec = timed(dev, ex.decode_artifact, blob, codecs.all_decoders())
        out["codecs"][key] = {"bytes": len(blob), "seconds": round(sec, 3), "decode_seconds": round(dsec, 3)}
        print(f"codec {key:<10} {len(blob):>12,} bytes  {sec:7.2f}s  (decode {dsec:.2f}s)")
    if "zstd-22" in out["codecs"]:
        raw = pr315_container(qstate)
        theirs = len(codecs.ZstdCodec(22).compress(raw))
        ours = out["codecs"]["zstd-22"]["bytes"]
        out["pr315_container"] = {"raw_bytes": len(raw), "zstd22_bytes": theirs, "pgolf_zstd22_bytes": ours,
                                  "relative_diff": round((ours - theirs) / theirs, 5)}
        print(f"PR #315 container + zstd-22: {theirs:,} bytes; pgolf artifact {ours:,} "
              f"({100 * (ours - theirs) / theirs:+.3f}%)")
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
