"""Attention output gate (PR #1667, record 2026-04-16_SmearGate_AttentionOutputGate_ScoreFirstTTT; from
modded-nanogpt): y_h <- y_h · 2σ(W · x[:window])_h with W `attn_gate_proj` (a window → heads linear,
zero-init, so the gate is exactly 1 at init), x the attention input (the record's ATTN_OUT_GATE_SRC=proj;
its `q` source is not ported). 96 parameters per layer at window 12, trained with the scalars (the
record's control-tensor patterns). Role "attn_head_gate": exclusive with `gated_attn` and `sparse_attn_gate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CastedLinear, join_group
from core.registry import Plugin


@dataclass
class AttnOutputGateConfig:
    window: int = field(default=12, metadata={"help": "leading input dims that drive the gate (GATE_WINDOW)"})

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"attn_output_gate.window: expected a positive width, got {self.window}")


class OutputGate(nn.Module):
    def __init__(self, heads: int, window: int):
        super().__init__()
        self.window = window
        with torch.random.fork_rng(devices=[]):  # zero-init: building it must not move the global RNG
            self.attn_gate_proj = CastedLinear(window, heads, bias=False)
        self.attn_gate_proj._zero_init = True
        nn.init.zeros_(self.attn_gate_proj.weight)
        join_group(self.attn_gate_proj.weight, "scalar")

    def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        g = 2.0 * torch.sigmoid(self.attn_gate_proj(x[..., : self.window].contiguous()))
        return y * g[..., None]


class AttnOutputGate(Plugin):
    name = "attn_output_gate"
    family = "model"
    summary = "Per-head gate 2·sigmoid(W·x[:12]) on the attention output, identity at init."
    sources = ("openai/parameter-golf#1667",)
    config = AttnOutputGateConfig
    provides = ("attn_head_gate",)
    after = ("xsa",)
    test_settings = {"attn_output_gate": {"window": 8}}

    @classmethod
    def check_config(cls, cfg: AttnOutputGateConfig, core) -> list[str]:
        if cfg.window > core.model_dim:
            return [f"attn_output_gate.window={cfg.window} must be <= core.model_dim={core.model_dim}"]
        return []

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        return OutputGate(spec.num_heads, self.cfg.window) if slot == "attn_out" and layer is not None else None
