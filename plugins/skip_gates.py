"""Sigmoid-gated U-Net skips (PR #1089 -> #1179; on in PR #1394 and #1493): skip i re-enters as
`lerp(w_i·skip, x, σ(g_i))` instead of `x + w_i·skip`, with g (skips × dim) zero-initialised (a half-half
mix at init) and trained in the scalar group, fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import join_group
from core.registry import Plugin


class GatedSkip(nn.Module):
    def __init__(self, count: int, dim: int):
        super().__init__()
        self.skip_gates = join_group(nn.Parameter(torch.zeros(count, dim, dtype=torch.float32)), "scalar")

    def forward(self, x: Tensor, scaled_skip: Tensor, i: int) -> Tensor:
        gate = torch.sigmoid(self.skip_gates[i].to(dtype=x.dtype))[None, None, :]
        return torch.lerp(scaled_skip, x, gate)


class SkipGates(Plugin):
    name = "skip_gates"
    family = "routing"
    summary = "U-Net skips re-enter through a learned sigmoid gate: lerp(w*skip, x, sigmoid(g))."
    sources = ("openai/parameter-golf#1089", "openai/parameter-golf#1179", "openai/parameter-golf#1493")
    provides = ("skip_merge",)
    test_settings = {"skip_gates": {}}

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        return GatedSkip(spec.skip_count, spec.model_dim) if slot == "skip_merge" else None
