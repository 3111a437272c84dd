"""Mixed int6/int5/int8 export: per-row int-k for attention/MLP matrices (PR #315, int5 MLP from PR #180).

PR #315's rule: attention and MLP matrices get per-row int6 codes with scale = rowmax/31 (fp16, floored
at 1/31) and codes in [-32, 31]; the embedding keeps the baseline's int8 percentile rule; small and
control tensors pass through as floats. Codes live in int8 containers; the codec squeezes the unused bits.
`bits_overrides` sets bits per tensor by name glob over the family's (e.g. PR #534's int8 first/last block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.export import QTensor
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.quant import MixedBitsConfig, policy_quantize, rowmax_clip
from plugins.lib.settings import MAX_NUMEL, range_errors


@dataclass
class QuantMixedConfig(MixedBitsConfig):
    """PR #315 defaults: attn 6, mlp 6, embed/head 8; PR #180 sets mlp_bits=5."""


class QuantMixed(Plugin):
    name = "quant_mixed"
    family = "export"
    summary = ("Per-family bit widths (per-tensor overrides by name glob): int6 per-row (rowmax/31, [-32, 31]) "
               "for attn/MLP, int8 embedding.")
    sources = ("openai/parameter-golf#315", "openai/parameter-golf#180", "openai/parameter-golf#534")
    config = QuantMixedConfig
    provides = ("quantizer",)
    test_settings = {"quant_mixed": {"keep_float_max_numel": 0}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, keep_float_max_numel=(0, MAX_NUMEL))

    @hookimpl
    def pg_quantize_tensor(self, name: str, tensor, config) -> QTensor:
        return policy_quantize(name, tensor, self.cfg, rowmax_clip, extra_negative=True, method="rowmax")
