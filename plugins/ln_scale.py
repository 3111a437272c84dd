"""LN scale (PR #315): the outputs of both pre-norms of block i are multiplied by 1/sqrt(i + 1).

A constant per layer, baked into the graph; zero parameters. Replaces the per-layer `attn_norm` and
`mlp_norm` slots with an RMSNorm followed by the constant factor, as the record's Block does.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.registry import Plugin


class ScaledRMSNorm(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),)) * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.6f}"


class LNScale(Plugin):
    name = "ln_scale"
    family = "model"
    summary = "Scale block i's pre-norm outputs by 1/sqrt(i+1) (damps deeper layers)."
    sources = ("openai/parameter-golf#315",)
    test_settings = {"ln_scale": {}}

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot in ("attn_norm", "mlp_norm") and layer is not None:
            return ScaledRMSNorm(1.0 / math.sqrt(layer + 1))
        return None
