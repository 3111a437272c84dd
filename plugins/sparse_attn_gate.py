"""Sparse attention (head-output) gate (PR #1787; on in PR #1851 and the best stack PR #1855, record
2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611): the dense gate's input narrowed to the first
`window` dims of the attention input, y_h <- y_h · σ(scale · W_g · x[:window])_h, W_g `attn_gate_w`
(heads × window, zero-init: g = 0.5). PR #1855 runs SPARSE_ATTN_GATE_SCALE=0.5 (the code default is 1.0).
Shares the dense gate's parameter name, so `quant_gate` exports it as int8 rows. Role "attn_head_gate".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import join_group
from core.registry import Plugin
from plugins.lib.settings import INIT, range_errors


@dataclass
class SparseAttnGateConfig:
    window: int = field(default=12, metadata={"help": "leading input dims that drive the gate (GATE_WINDOW)"})
    scale: float = field(default=0.5, metadata={"help": "logit scale (PR #1855: 0.5; PR #1787/#1851: 1.0)"})
    init_std: float = field(default=0.0, metadata={"help": "std of W_g's normal init; 0 = zeros (record)"})

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"sparse_attn_gate.window: expected a positive width, got {self.window}")
        if not self.init_std >= 0.0:
            raise ValueError(f"sparse_attn_gate.init_std: expected a std >= 0, got {self.init_std}")


class SparseHeadGate(nn.Module):
    def __init__(self, heads: int, window: int, scale: float):
        super().__init__()
        self.window, self.scale = window, scale
        self.attn_gate_w = join_group(nn.Parameter(torch.zeros(heads, window, dtype=torch.float32)), "scalar")

    def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        gate_in = x[..., : self.window].contiguous()
        g = torch.sigmoid(self.scale * F.linear(gate_in, self.attn_gate_w.to(x.dtype)))
        return y * g[..., None]

    def extra_repr(self) -> str:
        return f"window={self.window}, scale={self.scale}"


class SparseAttnGate(Plugin):
    name = "sparse_attn_gate"
    family = "model"
    summary = "Per-head sigmoid gate on the attention output from the first 12 input dims (narrow gated attn)."
    sources = ("openai/parameter-golf#1787", "openai/parameter-golf#1851", "openai/parameter-golf#1855")
    config = SparseAttnGateConfig
    provides = ("attn_head_gate",)
    after = ("xsa",)
    test_settings = {"sparse_attn_gate": {"window": 8, "init_std": 0.5}}

    @classmethod
    def check_config(cls, cfg: SparseAttnGateConfig, core) -> list[str]:
        if cfg.window > core.model_dim:
            return [f"sparse_attn_gate.window={cfg.window} must be <= core.model_dim={core.model_dim}"]
        return range_errors(cls.name, cfg, scale=(-INIT, INIT), init_std=(0.0, INIT))

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        if slot != "attn_out" or layer is None:
            return None
        return SparseHeadGate(spec.num_heads, self.cfg.window, self.cfg.scale)

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        if self.cfg.init_std == 0.0:
            return
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, SparseHeadGate):
                    nn.init.normal_(m.attn_gate_w, mean=0.0, std=self.cfg.init_std)
