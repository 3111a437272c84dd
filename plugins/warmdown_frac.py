"""Warmdown as a fraction of training with an LR floor (PR #1394 → #1493; MIN_LR from PR #1787).

The LR multiplier is 1 until the training fraction reaches 1 − frac, then falls linearly to zero at the end,
never below `min_lr`: lr_mul = max((1 − f)/frac, min_lr) for f >= 1 − frac (PR #1493 `lr_mul`,
WARMDOWN_FRAC 0.72, MIN_LR 0). The fraction f is the core's `clock.frac`: elapsed time over the loop's
wall-clock budget (MAX_WALLCLOCK_SECONDS less the calibration reserve, as the record's
`max_wallclock_ms - gptq_reserve`), or step/ITERATIONS when uncapped. Replaces the core's
iteration-count warmdown (WARMDOWN_ITERS) while enabled; frac = 0 keeps the multiplier at 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.hookspecs import hookimpl
from core.registry import Plugin


@dataclass
class WarmdownFracConfig:
    frac: float = field(default=0.72, metadata={
        "help": "last fraction of training spent decaying the LR (PR #1394 0.667, #1493 0.72, #1855 0.85)"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the LR multiplier (PR #1493 0; #1787 0.10)"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.frac <= 1.0 or not 0.0 <= self.min_lr <= 1.0:
            raise ValueError(f"warmdown_frac: expected frac and min_lr in [0, 1], got frac={self.frac} "
                             f"min_lr={self.min_lr}")


def lr_multiplier(f: float, frac: float, min_lr: float) -> float:
    """The record's schedule at training fraction f."""
    if frac <= 0:
        return 1.0
    if f >= 1.0 - frac:
        return max((1.0 - f) / frac, min_lr)
    return 1.0


class WarmdownFrac(Plugin):
    name = "warmdown_frac"
    family = "training"
    summary = "LR warmdown over the last fraction of training (time-based), floored at min_lr (0.72 in PR #1493)."
    sources = ("openai/parameter-golf#1394", "openai/parameter-golf#1493", "openai/parameter-golf#1787")
    config = WarmdownFracConfig
    provides = ("lr_schedule",)
    test_settings = {"warmdown_frac": {"frac": 0.9, "min_lr": 0.05}}

    @hookimpl(tryfirst=True)  # every other pg_before_step (e.g. late_qat's threshold) sees this multiplier
    def pg_before_step(self, run, step: int, clock) -> None:
        clock.lr_mul = lr_multiplier(clock.frac, self.cfg.frac, self.cfg.min_lr)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update(warmdown_frac=self.cfg.frac, min_lr=self.cfg.min_lr)
