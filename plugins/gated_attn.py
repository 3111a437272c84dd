"""Gated attention, dense (arXiv:2505.06708 G1; PR #1736, record 2026-04-19_SP8192_CaseOps_GatedAttn_QuantGate_…):
each head's attention output is multiplied by a sigmoid gate of the attention input x (the normed block
input), y_h <- y_h · σ(x · W_gᵀ)_h, before the output projection. W_g is `attn_gate_w` (heads × dim),
N(0, 0.005) as the record ran it (GATED_ATTN_INIT_STD), so g ≈ 0.5 at init; trained with the scalars
(the record's control-tensor patterns route `attn_gate` there). One of three head gates (role
"attn_head_gate": enable at most one, as the record's constructor check); `quant_gate` exports W_g int8.
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
class GatedAttnConfig:
    init_std: float = field(default=0.005, metadata={"help": "std of W_g's normal init (PR #1736 run: 0.005)"})

    def __post_init__(self) -> None:
        if not self.init_std >= 0.0:
            raise ValueError(f"gated_attn.init_std: expected a std >= 0, got {self.init_std}")


class DenseHeadGate(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.attn_gate_w = join_group(nn.Parameter(torch.zeros(heads, dim, dtype=torch.float32)), "scalar")

    def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        g = torch.sigmoid(F.linear(x.contiguous(), self.attn_gate_w.to(x.dtype)))
        return y * g[..., None]


class GatedAttn(Plugin):
    name = "gated_attn"
    family = "model"
    summary = "Dense per-head sigmoid gate on the attention output, from the attention input (Qwen G1)."
    sources = ("openai/parameter-golf#1736", "arXiv:2505.06708")
    config = GatedAttnConfig
    provides = ("attn_head_gate",)
    after = ("xsa",)  # the record gates XSA's output
    test_settings = {"gated_attn": {"init_std": 0.5}}

    @classmethod
    def check_config(cls, cfg: GatedAttnConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, init_std=(0.0, INIT))

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        return DenseHeadGate(spec.num_heads, spec.model_dim) if slot == "attn_out" and layer is not None else None

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, DenseHeadGate):
                    nn.init.normal_(m.attn_gate_w, mean=0.0, std=self.cfg.init_std)
