"""XSA, exclusive self-attention (arXiv:2603.09078; PR #265, last 4 layers in PR #287/#315).

On the last `last_n` blocks, remove from each head's attention output its component along the token's
own value vector: y_h <- y_h - <y_h, v̂> v̂ with v̂ = v/||v|| of the KV head that h reads. GQA-aware:
y is viewed as (B, T, Hkv, group, D) and v̂ broadcast as (B, T, Hkv, 1, D), no repeat_interleave.
Zero parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class XSAConfig:
    last_n: int = field(default=4, metadata={"help": "apply to the last N blocks (PR #315: 4; 11 = all from PR #478)"})


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """y (B, T, H, D) minus its projection on the normalised own value v (B, T, Hkv, D)."""
    b, t, h, d = y.shape
    hkv = v.size(-2)
    y_g = y.reshape(b, t, hkv, h // hkv, d)
    vn = F.normalize(v, dim=-1).unsqueeze(-2)
    return (y_g - (y_g * vn).sum(dim=-1, keepdim=True) * vn).reshape(b, t, h, d)


class ExclusiveSelfAttention(nn.Module):
    def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        return exclusive_self_attention(y, v)


class XSA(Plugin):
    name = "xsa"
    family = "model"
    summary = "Exclusive self-attention: drop each head output's component along its own value (last N layers)."
    sources = ("openai/parameter-golf#265", "openai/parameter-golf#287", "openai/parameter-golf#315",
               "arXiv:2603.09078")
    config = XSAConfig
    test_settings = {"xsa": {"last_n": 1}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, last_n=(0, 1024))  # more than the model has: every block

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        if slot != "attn_out" or layer is None:
            return None
        if self.cfg.last_n < 0:
            raise ValueError(f"xsa.last_n: expected a number of layers >= 0, got {self.cfg.last_n}")
        return ExclusiveSelfAttention() if layer >= spec.num_layers - self.cfg.last_n else None
