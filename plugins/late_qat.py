"""Late QAT: int6 straight-through fake quantization of every CastedLinear weight, switched on when the
LR multiplier drops below a threshold (PR #286/#297 → PR #315, LATE_QAT=1 QAT_THRESHOLD=0.1; PR #534).

In training mode the weight used in the matmul is w + on·(q(w) - w).detach(), q(w) = clamp(round(w/s),
-32, 31)·s with s = max(rowmax, 1)/31, as PR #315's CastedLinear (defaults). PR #534's `fake_quantize`
floors the row max at 1e-8 instead (`rowmax_floor`; a floor of 1 makes the step of every row with max < 1 —
nearly all — 1/31), and at activation halves every optimizer group's base LR for the rest of the run
(`lr_scale_on_enable = 0.5`). Two other differences need no setting: its clamp to [-31, 31] rather than
[-32, 31] never binds (|w|/s <= 31 by construction), and its substitution on the fp32 weight before the
bf16 cast gives the same bf16 weight as this one in bf16 (bf16(q) either way; 0 of 4M entries differed).

PR #315 kept the switch in a class attribute that torch.compile constant-folded, so its QAT never ran
(README, credit @152334H); here `on` is a `plugins.lib.switch.Switch` buffer, so flipping it changes the
compiled model with no recompile. The switch is flipped host-side in `pg_before_step` of the step whose LR
multiplier is below the threshold, so the first fake-quantized forward is the next step's: PR #534's
timing (its check follows the optimizer step, with that step's multiplier); PR #315 checked before the
forward, one step earlier. The base-LR scale is applied in `pg_after_step` of that same step, so it
starts with the next step's LR, as PR #534's `group["base_lr"] *= 0.5`. The log's `late_qat:enabled
step:N` is N steps done before the first fake-quantized forward (PR #534's `activated at step N`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from core.hookspecs import hookimpl
from core.model import CastedLinear
from core.registry import Plugin
from plugins.lib.settings import INIT, range_errors
from plugins.lib.switch import Switch


@dataclass
class LateQATConfig:
    threshold: float = field(default=0.1, metadata={"help": "QAT on once lr_mul < this (PR #315: 0.1; > 1 = always)"})
    bits: int = field(default=6, metadata={"help": "codes in [-2^(b-1), 2^(b-1)-1], scale rowmax/(2^(b-1)-1)"})
    rowmax_floor: float = field(default=1.0, metadata={
        "help": "the row max is floored at this before scale = rowmax/(2^(b-1)-1) (PR #315: 1.0; PR #534: 1e-8)"})
    lr_scale_on_enable: float = field(default=1.0, metadata={
        "help": "every optimizer group's base LR is multiplied by this from the step after activation (PR #534: 0.5)"})


def fake_quantize_rows(w: Tensor, bits: int, rowmax_floor: float = 1.0) -> Tensor:
    """Per-row fake quantization in float32: PR #315's QAT math by default (bits=6); PR #534's with
    `rowmax_floor=1e-8`."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.float()
    scale = (w32.abs().amax(dim=1).clamp_min(rowmax_floor) / qmax)[:, None]
    return torch.clamp(torch.round(w32 / scale), -qmax - 1, qmax) * scale


class FakeQuantLinear(CastedLinear):
    """A CastedLinear whose training-mode weight is straight-through fake-quantized while `qat` is on.

    Installed by class swap on existing modules (parameters, names and init are untouched); `qat` is a
    Switch shared by all of them and `qat_cfg` (a LateQATConfig) holds Python constants.
    """

    qat: Switch
    qat_cfg: LateQATConfig

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype)
        if self.training:
            c = self.qat_cfg
            w_q = fake_quantize_rows(self.weight.detach(), c.bits, c.rowmax_floor).to(x.dtype)
            w = w + self.qat.value.to(x.dtype) * (w_q - w).detach()
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, bias)


def install_fake_quant(model: torch.nn.Module, switch: Switch, cfg: LateQATConfig) -> int:
    """Turn every CastedLinear of `model` into a FakeQuantLinear driven by `switch`; returns how many."""
    n = 0
    for module in list(model.modules()):
        if isinstance(module, CastedLinear) and not isinstance(module, FakeQuantLinear):
            module.__class__ = FakeQuantLinear
            module.qat_cfg = cfg
            module.qat = switch
            n += 1
    return n


class LateQAT(Plugin):
    name = "late_qat"
    family = "training"
    summary = "STE int6 fake-quant of linear weights once lr_mul < threshold (a real switch, unlike PR #315's)."
    sources = ("openai/parameter-golf#286", "openai/parameter-golf#297", "openai/parameter-golf#315",
               "openai/parameter-golf#534")
    config = LateQATConfig
    test_settings = {"late_qat": {"threshold": 2.0, "bits": 2}}

    def __init__(self, cfg: LateQATConfig | None = None):
        super().__init__(cfg)
        self.switch = Switch(False)
        self.active = False
        self.lr_scale_pending = False

    @classmethod
    def check_config(cls, cfg: LateQATConfig, core: Any) -> list[str]:
        errors = range_errors(cls.name, cfg, threshold=(0.0, INIT), rowmax_floor=(None, INIT),  # > 1: always on
                              lr_scale_on_enable=(None, INIT))  # positive: below
        if not 2 <= cfg.bits <= 8:
            errors.append(f"late_qat.bits: expected 2..8, got {cfg.bits}")
        if not cfg.rowmax_floor > 0:
            errors.append(f"late_qat.rowmax_floor: expected a positive row-max floor, got {cfg.rowmax_floor}")
        if not cfg.lr_scale_on_enable > 0:
            errors.append(f"late_qat.lr_scale_on_enable: expected a positive LR factor, got {cfg.lr_scale_on_enable}")
        return errors

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        if not 2 <= self.cfg.bits <= 8:
            raise ValueError(f"late_qat.bits: expected 2..8, got {self.cfg.bits}")
        install_fake_quant(model, self.switch, self.cfg)

    @hookimpl
    def pg_train_start(self, run) -> None:
        self.switch.set(False)
        self.active = self.lr_scale_pending = False

    @hookimpl
    def pg_before_step(self, run, step: int, clock) -> None:
        if not self.active and clock.lr_mul < self.cfg.threshold:
            self.switch.set(True)  # read by the next forward: step + 1 steps are done by then
            self.active = True
            self.lr_scale_pending = self.cfg.lr_scale_on_enable != 1.0
            run.log(f"late_qat:enabled step:{step + 1} scale:{clock.lr_mul:.4f}")
            run.event("late_qat", step=step + 1, lr_mul=clock.lr_mul)

    @hookimpl
    def pg_after_step(self, run, step: int) -> None:
        if self.lr_scale_pending:  # after this step's optimizer step: the next step's LR is the first scaled
            self.lr_scale_pending = False
            for opt in run.optimizers:
                for group in opt.param_groups:
                    group["base_lr"] *= self.cfg.lr_scale_on_enable
            run.log(f"late_qat:base_lr x{self.cfg.lr_scale_on_enable:g} step:{step}")

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["late_qat_threshold"] = self.cfg.threshold
        if self.cfg.lr_scale_on_enable != 1.0:
            fields["late_qat_lr_scale_on_enable"] = self.cfg.lr_scale_on_enable
