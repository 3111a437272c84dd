"""WD taper: the Muon weight decay multiplied by 1 until a training fraction, then linearly down to a final
multiplier at the end (PR #1729, `R:2026-04-18_PR1626_CaseOps_Taper` `wd_mul`: WD_TAPER_START_FRAC=0.70,
WD_TAPER_FINAL_MULT=0.50; not carried into PR #1736 on).

Each step, before the optimizer step, every Muon param group's "weight_decay" is set to its value at train
start times wd_mul(f) = 1 + (final − 1)·clamp((f − start)/(1 − start), 0, 1) for f > start (1 otherwise), f
the core's training fraction (`clock.frac`). The Adam groups keep their decay, as in the record. Needs a
Muon weight decay to taper: `weight_decay` (required; muon > 0) or `muon_eq_r` (weight_decay > 0), checked at
configuration time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.hookspecs import hookimpl
from core.optim import Muon
from core.registry import Plugin
from plugins.lib.settings import INIT, range_errors


@dataclass
class WDTaperConfig:
    start_frac: float = field(default=0.70, metadata={"help": "training fraction where the taper starts"})
    final_mult: float = field(default=0.50, metadata={"help": "WD multiplier reached at the end of training"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_frac < 1.0:
            raise ValueError(f"wd_taper.start_frac: expected a fraction in [0, 1), got {self.start_frac}")
        if self.final_mult < 0:
            raise ValueError(f"wd_taper.final_mult: expected a multiplier >= 0, got {self.final_mult}")


def wd_multiplier(f: float, start: float, final: float) -> float:
    """The record's `wd_mul` at training fraction f."""
    if f <= start:
        return 1.0
    progress = min(max((f - start) / max(1.0 - start, 1e-9), 0.0), 1.0)
    return 1.0 + (final - 1.0) * progress


class WDTaper(Plugin):
    name = "wd_taper"
    family = "training"
    summary = "Muon WD x1 until 70% of training, then linear to x0.5 at the end (PR #1729)."
    sources = ("openai/parameter-golf#1729",)
    config = WDTaperConfig
    requires = ("weight_decay",)  # the records pair it with the AdamW groups' decay; muon_eq_r may own the Muon WD
    test_settings = {"wd_taper": {"start_frac": 0.0, "final_mult": 0.0},
                     "weight_decay": {"muon": 0.5}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, final_mult=(0.0, INIT))

    def __init__(self, cfg: WDTaperConfig | None = None):
        super().__init__(cfg)
        self.base: list[tuple[dict, float]] = []

    @classmethod
    def check_peers(cls, cfg: Any, peers: dict[str, Any]) -> list[str]:
        wd, eq = peers.get("weight_decay"), peers.get("muon_eq_r")
        muon_wd = eq.weight_decay if eq is not None else wd.muon if wd is not None else 0.0
        if muon_wd > 0:
            return []
        owner = "muon_eq_r.weight_decay" if eq is not None else "weight_decay.muon"
        return [f"wd_taper: no Muon weight decay to taper ({owner} is {muon_wd}): set it > 0"]

    @hookimpl
    def pg_train_start(self, run) -> None:
        self.base = [(g, float(g.get("weight_decay", 0.0)))
                     for opt in run.optimizers if isinstance(opt, Muon) for g in opt.param_groups]

    @hookimpl
    def pg_before_step(self, run, step: int, clock) -> None:
        mul = wd_multiplier(clock.frac, self.cfg.start_frac, self.cfg.final_mult)
        for group, wd in self.base:
            group["weight_decay"] = wd * mul

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update(wd_taper_start_frac=self.cfg.start_frac, wd_taper_final_mult=self.cfg.final_mult)
