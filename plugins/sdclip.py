"""SDClip: per-row clip at k standard deviations instead of a search (PR #1394; per-family k from PR #1586).

scale = k·std(row)/qmax in fp16 (floored at 1e-10), codes = clamp(round(w/scale), -qmax, qmax). PR #1394:
int6 matrices with k = 12.85 (MATRIX_CLIP_SIGMAS) and an int8 embedding with k = 20 (EMBED_CLIP_SIGMAS).
The record pairs this clip with full-Hessian GPTQ; here the codes are plain round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from core.export import QTensor
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.quant import MixedBitsConfig, policy_quantize, tensor_family
from plugins.lib.settings import MAX_NUMEL, SIGMAS, range_errors

MIN_SCALE = 1e-10


@dataclass
class SDClipConfig(MixedBitsConfig):
    matrix_clip_sigmas: float = field(default=12.85, metadata={"help": "k for attn/MLP/other matrices"})
    embed_clip_sigmas: float = field(default=20.0, metadata={"help": "k for the embedding and lm_head"})
    mlp_clip_sigmas: float = field(default=0.0, metadata={"help": "k for MLP matrices (0 = matrix_clip_sigmas)"})
    attn_clip_sigmas: float = field(default=0.0, metadata={"help": "k for attention (0 = matrix_clip_sigmas)"})


def sigmas_for(cfg: SDClipConfig, name: str) -> float:
    family = tensor_family(name)
    if family in ("embed", "head"):
        k = cfg.embed_clip_sigmas
    elif family == "mlp" and cfg.mlp_clip_sigmas > 0:
        k = cfg.mlp_clip_sigmas
    elif family == "attn" and cfg.attn_clip_sigmas > 0:
        k = cfg.attn_clip_sigmas
    else:
        k = cfg.matrix_clip_sigmas
    if not k > 0:
        raise ValueError(f"sdclip: clip sigmas for {name!r} must be > 0, got {k}")
    return float(k)


def std_clip(t32: Tensor, k: float) -> Tensor:
    """k times each row's (unbiased) standard deviation, as PR #1394's `W.std(dim=1)`."""
    return k * t32.std(dim=1)


class SDClip(Plugin):
    name = "sdclip"
    family = "export"
    summary = "Per-row clip at k·std(row): int6 matrices (k 12.85), int8 embedding (k 20)."
    sources = ("openai/parameter-golf#1394", "openai/parameter-golf#1586")
    config = SDClipConfig
    provides = ("quantizer",)
    test_settings = {"sdclip": {"keep_float_max_numel": 0, "matrix_clip_sigmas": 3.0}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, keep_float_max_numel=(0, MAX_NUMEL), matrix_clip_sigmas=(0.01, SIGMAS),
                            embed_clip_sigmas=(0.01, SIGMAS), mlp_clip_sigmas=(0.0, SIGMAS), attn_clip_sigmas=(0.0,
                            SIGMAS))  # a clip of 0 sigmas is no clip range (mlp/attn: 0 = matrix_clip_sigmas)

    @hookimpl
    def pg_quantize_tensor(self, name: str, tensor, config) -> QTensor:
        k = sigmas_for(self.cfg, name)

        def clip(t32: Tensor, qmax: int) -> Tensor:
            return std_clip(t32, k)

        q = policy_quantize(name, tensor, self.cfg, clip, extra_negative=False, method="sdclip",
                            min_scale=MIN_SCALE, baseline_int8=False)
        if q.scheme == "intk_per_row":
            q.meta["clip_sigmas"] = k
        return q
