"""Late QAT: int6 straight-through fake quantization of every CastedLinear weight, switched on when the
LR multiplier drops below a threshold (PR #286/#297 → PR #315, LATE_QAT=1 QAT_THRESHOLD=0.1).

In training mode the weight used in the matmul is w + on·(q(w) - w).detach(), q(w) = clamp(round(w/s),
-32, 31)·s with s = rowmax/31 (floor 1/31), as PR #315's CastedLinear. PR #315 kept the switch in a
class attribute that torch.compile constant-folded, so its QAT never ran (README, credit @152334H); here
`on` is a `core.model.Switch` buffer, so flipping it changes the compiled model with no recompile, and
this plugin therefore trains a *different* model than the record. The switch is flipped host-side in
`pg_before_step`, i.e. from the optimizer step after the one whose LR multiplier crossed the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from core.hookspecs import hookimpl
from core.model import CastedLinear, Switch
from core.registry import Plugin


@dataclass
class LateQATConfig:
    threshold: float = field(default=0.1, metadata={"help": "QAT on once lr_mul < this (PR #315: 0.1; > 1 = always)"})
    bits: int = field(default=6, metadata={"help": "codes in [-2^(b-1), 2^(b-1)-1], scale rowmax/(2^(b-1)-1)"})


def fake_quantize_rows(w: Tensor, bits: int) -> Tensor:
    """Per-row symmetric fake quantization in float32 (PR #315's QAT math, bits=6)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.float()
    scale = (w32.abs().amax(dim=1) / qmax).clamp_min(1.0 / qmax)[:, None]
    return torch.clamp(torch.round(w32 / scale), -qmax - 1, qmax) * scale


class FakeQuantLinear(CastedLinear):
    """A CastedLinear whose training-mode weight is straight-through fake-quantized while `qat` is on.

    Installed by class swap on existing modules (parameters, names and init are untouched); `qat` is a
    Switch shared by all of them and `qat_bits` a Python constant.
    """

    qat: Switch
    qat_bits: int

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype)
        if self.training:
            w_q = fake_quantize_rows(self.weight.detach(), self.qat_bits).to(x.dtype)
            w = w + self.qat.value.to(x.dtype) * (w_q - w).detach()
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, bias)


def install_fake_quant(model: torch.nn.Module, switch: Switch, bits: int) -> int:
    """Turn every CastedLinear of `model` into a FakeQuantLinear driven by `switch`; returns how many."""
    n = 0
    for module in list(model.modules()):
        if isinstance(module, CastedLinear) and not isinstance(module, FakeQuantLinear):
            module.__class__ = FakeQuantLinear
            module.qat_bits = bits
            module.qat = switch
            n += 1
    return n


class LateQAT(Plugin):
    name = "late_qat"
    family = "training"
    summary = "STE int6 fake-quant of linear weights once lr_mul < threshold (a real switch, unlike PR #315's)."
    sources = ("openai/parameter-golf#286", "openai/parameter-golf#297", "openai/parameter-golf#315")
    config = LateQATConfig
    test_settings = {"late_qat": {"threshold": 2.0, "bits": 2}}

    def __init__(self, cfg: LateQATConfig | None = None):
        super().__init__(cfg)
        self.switch = Switch(False)
        self.active = False

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        if not 2 <= self.cfg.bits <= 8:
            raise ValueError(f"late_qat.bits: expected 2..8, got {self.cfg.bits}")
        install_fake_quant(model, self.switch, self.cfg.bits)

    @hookimpl
    def pg_train_start(self, run) -> None:
        self.switch.set(False)
        self.active = False

    @hookimpl
    def pg_before_step(self, run, step: int, clock) -> None:
        if not self.active and clock.lr_mul < self.cfg.threshold:
            self.switch.set(True)
            self.active = True
            run.log(f"late_qat:enabled step:{step} scale:{clock.lr_mul:.4f}")
            run.event("late_qat", step=step, lr_mul=clock.lr_mul)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["late_qat_threshold"] = self.cfg.threshold
