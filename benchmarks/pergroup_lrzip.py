"""Artifact bytes of a synthetic PR #1855-shaped int6 state: one brotli stream vs the per-group layout with
each group codec (lrzip needs the binary on PATH; zpaq the optional PyPI package). CPU; minutes at full size.

    PYTHONPATH=. python benchmarks/pergroup_lrzip.py [--layers 11 --vocab 8192 --dim 512 --mlp-mult 4]

The float weights are heavy-tailed (Student t, 5 degrees of freedom) with a rank-16 component and per-row
gains; the `sdclip` quantizer codes them as the recipe does (int6 matrices, int7 embedding, SDClip 13 / 11.5 /
14). The per-group streams are laid out once (the similarity sort is the slow part) and each codec compresses
the same group bytes; `--verify` also round-trips the fallback artifact through encode/decode.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from core import export as ex
from plugins.lib import codecs
from plugins.lib.pergroup import PerGroupStateCodec
from plugins.sdclip import SDClip, SDClipConfig


def synthetic_state(layers: int, vocab: int, dim: int, mlp_mult: int, kv_dim: int, seed: int = 0
                    ) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> torch.Tensor:
        low_rank = rng.standard_normal((rows, 16)) @ rng.standard_normal((16, cols))
        w = rng.standard_t(5.0, (rows, cols)) + 0.3 * low_rank
        return torch.from_numpy(w * rng.uniform(0.5, 1.5, (rows, 1)) * 0.02).float()

    state = {"tok_emb.weight": mat(vocab, dim)}
    for i in range(layers):
        state |= {f"blocks.{i}.attn.c_q.weight": mat(dim, dim), f"blocks.{i}.attn.c_k.weight": mat(kv_dim, dim),
                  f"blocks.{i}.attn.c_v.weight": mat(kv_dim, dim), f"blocks.{i}.attn.proj.weight": mat(dim, dim),
                  f"blocks.{i}.mlp.fc.weight": mat(mlp_mult * dim, dim),
                  f"blocks.{i}.mlp.proj.weight": mat(dim, mlp_mult * dim),
                  f"blocks.{i}.attn_scale": torch.ones(dim)}
    return state


def zpaq_codec():
    """The optional PyPI `zpaq` binding (libzpaq, method 5, one thread), or None where it is not installed."""
    try:
        import zpaq
    except ImportError:
        return None

    class Zpaq:
        name = "zpaq-5"

        def compress(self, data: bytes) -> bytes:
            return zpaq.compress(data, level=5, threads=1)

    return Zpaq()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kv-dim", type=int, default=256)
    ap.add_argument("--mlp-mult", type=int, default=4)
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()
    state = synthetic_state(args.layers, args.vocab, args.dim, args.mlp_mult, args.kv_dim)
    quant = SDClip(SDClipConfig(attn_bits=6, mlp_bits=6, other_bits=6, embed_bits=7, attn_clip_sigmas=13.0,
                                mlp_clip_sigmas=11.5, embed_clip_sigmas=14.0))
    qstate = ex.quantize_state_dict(state, [lambda n, t: quant.pg_quantize_tensor(n, t, None)])
    codes = sum(q.data.numel() for q in qstate.values() if q.data.dtype == torch.int8)
    print(f"synthetic state: {args.layers} layers x {args.dim}, vocab {args.vocab}, {codes:,} int codes")

    t0 = time.perf_counter()
    flat = codecs.BrotliCodec(11, shuffle=2).compress(ex.save_records(qstate))
    print(f"{'one stream, brotli-11 + byte shuffle':48s} {len(flat):>11,} bytes ({time.perf_counter() - t0:.0f}s)")

    t0 = time.perf_counter()
    layout = PerGroupStateCodec()
    streams, _ = layout.encode(qstate)
    print(f"per-group layout (sort + transpose) in {time.perf_counter() - t0:.0f}s")
    groups = [s for s in streams if s.label.startswith("group:")]
    side = [s for s in streams if not s.label.startswith("group:")]
    side_bytes = len(codecs.BrotliCodec(11, lgwin=24).compress(side[0].data)) + sum(
        len(codecs.BrotliCodec(11).compress(s.data)) for s in side[1:])
    variants: dict[str, ex.Codec] = {"auto (min of zlib/zstd/brotli/lzma; the fallback)": codecs.AutoCodec(
        [cls() for cls in codecs.CODECS.values()])}
    if codecs.LrzipCodec().available():
        variants["lrzip -z -L 9 (the record)"] = codecs.LrzipCodec()
    if (zp := zpaq_codec()) is not None:
        variants["zpaq method 5 (PyPI zpaq, optional)"] = zp
    for label, codec in variants.items():
        t0 = time.perf_counter()
        per_codec: dict[str, int] = {}

        def size(stream, codec=codec, per_codec=per_codec) -> int:  # an auto codec keeps state: one per group
            if not isinstance(codec, codecs.AutoCodec):
                return len(codec.compress(stream.data))
            fresh = codecs.AutoCodec(codec.candidates)
            out = len(fresh.compress(stream.data))
            for name, n in fresh.sizes.items():
                per_codec[name] = per_codec.get(name, 0) + n
            return out

        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            sizes = list(pool.map(size, groups))
        print(f"{'per-group, groups ' + label:48s} {sum(sizes) + side_bytes:>11,} bytes "
              f"(groups {sum(sizes):,}, rest+perms {side_bytes:,}; {time.perf_counter() - t0:.0f}s)")
        for name, n in per_codec.items():
            print(f"{'per-group, every group ' + name:48s} {n + side_bytes:>11,} bytes")
    if args.verify:
        fallback = PerGroupStateCodec(group_codec=codecs.LzmaCodec(), rest_codec=codecs.BrotliCodec(11, lgwin=24),
                                      perm_codec=codecs.BrotliCodec(11))
        result = ex.export_state_dict(state, [lambda n, t: quant.pg_quantize_tensor(n, t, None)], codecs.ZlibCodec(),
                                      state_codec=fallback)
        ex.verify_round_trip(result, ex.decoders_of(codecs.ZlibCodec(), fallback))
        print(f"verified: lzma-9e groups artifact {len(result.blob):,} bytes decodes bit for bit")


if __name__ == "__main__":
    main()
