"""Value residual learning, VRL (arXiv:2410.17897, ResFormer; PR #549's `VALUE_RESIDUAL` flag, PR #569):
block 0's attention values are kept as v0; every later block attends with `λ0·v0 + λ1·v`, λ learned per
block (init [0.5, 0.5], scalar group). A value-injection part: it reads and writes `ctx["v0"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import join_group
from core.registry import Plugin
from plugins.lib.settings import INIT, range_errors


@dataclass
class ValueResidualConfig:
    init: float = field(default=0.5, metadata={"help": "initial λ0 and λ1 (PR #549: 0.5, 0.5)"})


class KeepFirstValues(nn.Module):
    def forward(self, v: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        ctx["v0"] = v
        return v


class MixFirstValues(nn.Module):
    def __init__(self, init: float):
        super().__init__()
        self.vr_lambdas = join_group(nn.Parameter(torch.full((2,), init, dtype=torch.float32)), "scalar")

    def forward(self, v: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        lam = self.vr_lambdas.to(dtype=v.dtype)
        return lam[0] * ctx["v0"] + lam[1] * v


class ValueResidual(Plugin):
    name = "value_residual"
    family = "model"
    summary = "Later blocks attend with a learned mix of block 0's values and their own (VRL)."
    sources = ("openai/parameter-golf#549", "openai/parameter-golf#569", "arXiv:2410.17897")
    config = ValueResidualConfig
    test_settings = {"value_residual": {"init": 0.3}}

    @classmethod
    def check_config(cls, cfg: ValueResidualConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, init=(-INIT, INIT))

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        if slot != "value" or layer is None:
            return None
        return KeepFirstValues() if layer == 0 else MixFirstValues(self.cfg.init)
