"""Soft-round QAT: late int6 QAT whose rounding is a sigmoid with a sharpening temperature (PR #1179).

PR #1179's CastedLinear (record 2026-03-31_SplitLR_Dim160_FullGPTQ_Brotli, decoded l.260-263, l.668-670): in
training mode, once on, the weight used in the matmul is

    u = w / s,  s = rowmax(|w|)/31 (floor 1/31),  w_soft = clamp(floor(u) + sigmoid(alpha·(frac(u) - 0.5)), -31, 31)·s

with no straight-through detach: the gradient flows through the sigmoid (and the scale), so weights near a
bin edge feel it. It switches on the first time the LR multiplier is below `threshold` (0.15) at or after
`min_step` (2000); alpha then ramps linearly from 1 to `alpha_max` (16) over `ramp_steps` (500) steps.
The record kept both the switch and alpha in class attributes, which torch.compile may fold (techniques
§8.3/§8.4); here both are `plugins.lib.switch.Switch` buffers (graph inputs): the forward is
w + on·(w_soft - w), so flipping `on` or moving alpha changes the compiled model with no recompile. Like
`late_qat`, the host-side update runs in `pg_before_step`, from the step after the crossing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from core.hookspecs import hookimpl
from core.model import CastedLinear
from core.registry import Plugin
from plugins.lib.settings import INIT, STEPS, range_errors
from plugins.lib.switch import Switch


@dataclass
class SoftRoundQATConfig:
    threshold: float = field(default=0.15, metadata={"help": "on once lr_mul < this (LATE_QAT_THRESHOLD)"})
    min_step: int = field(default=2000, metadata={"help": "never on before this step (PR #1179: 2000)"})
    alpha_max: float = field(default=16.0, metadata={"help": "final sigmoid sharpness (alpha ramps 1 -> this)"})
    ramp_steps: int = field(default=500, metadata={"help": "steps of the linear alpha ramp after activation"})
    bits: int = field(default=6, metadata={"help": "codes in [-(2^(b-1)-1), 2^(b-1)-1], scale rowmax/(2^(b-1)-1)"})


def soft_round_rows(w: Tensor, alpha: Tensor | float, bits: int = 6) -> Tensor:
    """PR #1179's soft-rounded weight (float32, differentiable in w): per-row scale rowmax/qmax."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.float()
    scale = (w32.abs().amax(dim=1) / qmax).clamp_min(1.0 / qmax)[:, None]
    u = w32 / scale
    base = u.floor()
    soft = base + torch.sigmoid(alpha * (u - base - 0.5))
    return torch.clamp(soft, -qmax, qmax) * scale


def alpha_at(step: int, start: int, alpha_max: float, ramp_steps: int) -> float:
    """1 at the activation step, linear to alpha_max after ramp_steps (the record's 1 + 15·progress)."""
    progress = min((step - start) / max(ramp_steps, 1), 1.0)
    return 1.0 + (alpha_max - 1.0) * progress


class SoftRoundLinear(CastedLinear):
    """A CastedLinear whose training-mode weight is soft-rounded while `qat` is on (class swap, params kept)."""

    qat: Switch
    qat_alpha: Switch
    qat_bits: int

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.training:
            w_soft = soft_round_rows(w, self.qat_alpha.value, self.qat_bits)
            w = w + self.qat.value * (w_soft - w)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w.to(x.dtype), bias)


def install_soft_round(model: torch.nn.Module, on: Switch, alpha: Switch, bits: int) -> int:
    n = 0
    for module in list(model.modules()):
        if isinstance(module, CastedLinear) and not isinstance(module, SoftRoundLinear):
            module.__class__ = SoftRoundLinear
            module.qat, module.qat_alpha, module.qat_bits = on, alpha, bits
            n += 1
    return n


class SoftRoundQAT(Plugin):
    name = "soft_round_qat"
    family = "training"
    summary = "Late int6 QAT with sigmoid soft rounding, alpha 1 -> 16 over 500 steps (real gradients, PR #1179)."
    sources = ("openai/parameter-golf#1179",)
    config = SoftRoundQATConfig
    conflicts = ("late_qat",)  # both replace every CastedLinear's training weight
    test_settings = {"soft_round_qat": {"threshold": 2.0, "min_step": 0, "ramp_steps": 2, "bits": 2}}

    def __init__(self, cfg: SoftRoundQATConfig | None = None):
        super().__init__(cfg)
        self.switch = Switch(False)
        self.alpha = Switch(False)
        self.alpha.set(1.0)
        self.start: int | None = None

    @classmethod
    def check_config(cls, cfg: SoftRoundQATConfig, core) -> list[str]:
        errors = range_errors(cls.name, cfg, threshold=(0.0, INIT), min_step=(None, STEPS), ramp_steps=(None, STEPS),
                              alpha_max=(None, 1000.0))  # threshold > 1: always on; the records' alpha_max: 16
        if not 2 <= cfg.bits <= 8:
            errors.append(f"soft_round_qat.bits: expected 2..8, got {cfg.bits}")
        if cfg.alpha_max < 1.0 or cfg.ramp_steps < 0 or cfg.min_step < 0:
            errors.append("soft_round_qat: expected alpha_max >= 1, ramp_steps >= 0 and min_step >= 0")
        return errors

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        install_soft_round(model, self.switch, self.alpha, self.cfg.bits)

    @hookimpl
    def pg_train_start(self, run) -> None:
        self.switch.set(False)
        self.alpha.set(1.0)
        self.start = None

    @hookimpl
    def pg_before_step(self, run, step: int, clock) -> None:
        if self.start is None:
            if step < self.cfg.min_step or not clock.lr_mul < self.cfg.threshold:
                return
            self.start = step
            self.switch.set(True)
            run.log(f"late_qat:enabled step:{step} scale:{clock.lr_mul:.4f} soft_round:1")
            run.event("soft_round_qat", step=step, lr_mul=clock.lr_mul)
        self.alpha.set(alpha_at(step, self.start, self.cfg.alpha_max, self.cfg.ramp_steps))

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["soft_round_qat_threshold"] = self.cfg.threshold
