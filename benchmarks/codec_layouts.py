"""Artifact bytes of one trained tiny model under each codec / byte shuffle / layout (CPU, a few minutes).

    PYTHONPATH=. python benchmarks/codec_layouts.py [--dim 128 --layers 3 --iterations 30]
    PYTHONPATH=. python benchmarks/codec_layouts.py --recipe recipes/pr315.toml --set core.max_wallclock_seconds=120

Trains once (the generated corpus, vocab 320), keeps the float weights, then quantizes them with the run's
quantizer (quant_mixed, every matrix int6/int8) and encodes the same records with brotli (stride-2 shuffle
or none), lzma, zstd, and the per-group layout; every artifact's round trip is verified bit for bit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from core import export as ex
from core.config import resolve
from core.registry import Registry
from core.train import Budget, Stepper, finish_and_calibrate, setup, timed_loop, warmup_and_restore
from plugins.lib import codecs
from plugins.lib.pergroup import PerGroupStateCodec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--recipe", help="train this recipe on the embedded default corpus instead of the tiny model")
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides for --recipe")
    ap.add_argument("--quick", action="store_true", help="only brotli, brotli+shuffle and pergroup(auto)")
    args = ap.parse_args()
    from dataprep.build import build_dataset
    from dataprep.corpus import generate_documents

    root = Path(tempfile.mkdtemp(prefix="pgolf_codecs_"))
    reg = Registry()
    if args.recipe:
        import tomllib

        from dataprep.build import ensure_default_data

        vocab = tomllib.loads(Path(args.recipe).read_text()).get("core", {}).get("vocab_size", 1024)
        data = ensure_default_data(vocab, cache_dir=root)
        cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=args.recipe, check_plugins=reg.check,
                      sets=[f"core.data_path={data}", f"core.out_dir={root / 'runs'}", "core.val_loss_every=0",
                            *args.set])
        return measure(cfg, reg, args.quick)
    (root / "text").mkdir()
    for i, doc in enumerate(generate_documents(400, seed=7)):
        (root / "text" / f"d{i:04d}.txt").write_text(doc, encoding="utf-8")
    build_dataset(root / "text", root / "data", vocab_size=320, val_docs=30)
    sets = [f"core.num_layers={args.layers}", f"core.model_dim={args.dim}", "core.num_heads=4", "core.num_kv_heads=2",
            "core.train_seq_len=128", "core.train_batch_tokens=4096", "core.grad_accum_steps=1",
            f"core.iterations={args.iterations}", "core.warmdown_iters=10", "core.warmup_steps=0",
            "core.val_loss_every=0", "core.max_wallclock_seconds=0", "core.device=cpu", "core.vocab_size=320",
            "core.compile=false", f"core.data_path={root / 'data'}", f"core.out_dir={root / 'runs'}",
            "quant_mixed.keep_float_max_numel=0"]
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["quant_mixed"], sets=sets,
                  check_plugins=reg.check)
    measure(cfg, reg, args.quick)


def measure(cfg, reg, quick: bool = False) -> None:
    run = setup(cfg, reg)
    budget = Budget.of(run)
    stepper = Stepper(run)
    warmup_and_restore(run, stepper)
    loop = timed_loop(run, stepper, budget)
    finish_and_calibrate(run, loop, budget)
    state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}

    def quantize(name, t):
        return run.hook.pg_quantize_tensor(name=name, tensor=t, config=cfg)

    variants = {
        "brotli-11": (codecs.BrotliCodec(11), None),
        "brotli-11 + byte shuffle 2 (PR #1493)": (codecs.BrotliCodec(11, shuffle=2), None),
        "lzma-9e": (codecs.LzmaCodec(), None),
        "zstd-22": (codecs.ZstdCodec(), None),
        "pergroup (lzma groups, brotli rest)": (codecs.ZlibCodec(), PerGroupStateCodec(
            group_codec=codecs.LzmaCodec(), rest_codec=codecs.BrotliCodec(lgwin=24), perm_codec=codecs.BrotliCodec())),
        "pergroup (auto groups, brotli+shuffle rest)": (codecs.BrotliCodec(11, shuffle=2), PerGroupStateCodec(
            group_codec=codecs.AutoCodec([c() for c in codecs.CODECS.values()]), perm_codec=codecs.BrotliCodec())),
    }
    if quick:
        variants = {k: v for k, v in variants.items() if k.startswith("brotli") or "auto" in k}
    params = sum(t.numel() for t in state.values())
    print(f"model: {cfg.core.num_layers} layers x {cfg.core.model_dim}, {params:,} parameters, {loop.steps} steps, "
          f"plugins {','.join(cfg.plugins)}")
    for label, (codec, layout) in variants.items():
        t0 = time.perf_counter()
        result = ex.export_state_dict(state, [quantize], codec, quantizer_name=None, schemes=run.schemes,
                                      state_codec=layout)
        ex.verify_round_trip(result, ex.decoders_of(codec, layout), schemes=run.schemes)
        print(f"{label:45s} {len(result.blob):>9,} bytes  ({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
