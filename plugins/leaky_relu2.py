"""LeakyReLU(0.5)² MLP activation: proj(leaky_relu(fc(x), slope)²) instead of relu² (PR #493, PR #549 on).

PR #493 introduced it and PR #549 carried it into the record lineage (#549 ablation −0.0021 bpb); every
stack from there to PR #1493 keeps it (`F.leaky_relu(self.fc(x), negative_slope=.5).square()`). Negative
pre-activations keep a gradient (0.5² = 0.25 of their square). Hidden width is the model's
`mlp_mult · dim` (`int(...)`, as the records), so the core's `mlp_mult` still sets it; the parameters keep
the core MLP's names (`fc`, `proj`) and `proj` stays zero-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from core.hookspecs import hookimpl
from core.model import MLP
from core.registry import Plugin


@dataclass
class LeakyReLU2Config:
    slope: float = field(default=0.5, metadata={"help": "negative slope before squaring (PR #493/#549/#1493: 0.5)"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"leaky_relu2.slope: expected a slope in [0, 1), got {self.slope}")


class LeakyReLU2MLP(MLP):
    """The core MLP's parameters (fc, proj; proj zero-init) with leaky_relu(·, slope)² as the activation."""

    def __init__(self, spec, slope: float):
        # The slot is filled after the core model drew its initial weights: building these linears must not
        # move the global RNG, or every later init (orthoinit, plugin parts) would differ from the record's.
        with torch.random.fork_rng(devices=[]):
            super().__init__(spec)
        with torch.no_grad():  # the core zeroed its own MLP's proj before this slot replaced it
            self.proj.weight.zero_()
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.leaky_relu(self.fc(x), negative_slope=self.slope).square())

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


class LeakyReLU2(Plugin):
    name = "leaky_relu2"
    family = "model"
    summary = "MLP activation leaky_relu(x, 0.5)² instead of relu² (hidden = mlp_mult·dim)."
    sources = ("openai/parameter-golf#493", "openai/parameter-golf#549", "openai/parameter-golf#1493")
    config = LeakyReLU2Config
    provides = ("mlp",)  # the per-layer mlp slot has one provider
    test_settings = {"leaky_relu2": {"slope": 0.5}}

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot != "mlp" or layer is None:
            return None
        return LeakyReLU2MLP(spec, self.cfg.slope)
