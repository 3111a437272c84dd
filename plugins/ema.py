"""EMA: keep a float32 exponential moving average of every weight and evaluate/export it (PR #287).

After every optimizer step ema <- d * ema + (1 - d) * theta over the whole state dict; at the end of
training the averaged weights replace the live ones, before quantization and evaluation (as in the
PR #287 / #315 records, EMA_DECAY 0.997).

It provides the role "weight_averaging" (two plugins that each replace the final weights are an error).
SWA is not a rival by declaration but by setting: `swa`/`tight_swa` with apply=true and `ema` is a
configuration error (PR #287 ran SWA only with EMA off), while `tight_swa.apply=false` next to `ema` is the
PRs #414–#1204 stack (SWA collected, only the EMA loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class EMAConfig:
    decay: float = field(default=0.997, metadata={"help": "EMA decay per step (0.9965 from PR #1445 on)"})


class EMA(Plugin):
    name = "ema"
    family = "training"
    summary = "Exponential moving average of the weights, applied at the end of training."
    sources = ("openai/parameter-golf#287", "openai/parameter-golf#315")
    config = EMAConfig
    provides = ("weight_averaging",)
    test_settings = {"ema": {"decay": 0.5}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, decay=(0.0, 1.0))

    def __init__(self, cfg: EMAConfig | None = None):
        super().__init__(cfg)
        self.names: list[str] = []
        self.live: list[torch.Tensor] = []
        self.shadow: list[torch.Tensor] = []

    @hookimpl
    def pg_train_start(self, run) -> None:
        if not 0.0 <= self.cfg.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.cfg.decay}")
        state = run.model.state_dict()
        self.names = list(state)
        self.live = [t for t in state.values()]
        self.shadow = [t.detach().float().clone() for t in self.live]

    @hookimpl
    def pg_after_step(self, run, step: int) -> None:
        d = self.cfg.decay
        with torch.no_grad():
            torch._foreach_mul_(self.shadow, d)
            torch._foreach_add_(self.shadow, [t.float() for t in self.live], alpha=1.0 - d)

    @hookimpl
    def pg_train_end(self, run, model) -> None:
        if not self.shadow:
            return
        current = model.state_dict()
        model.load_state_dict({n: s.to(current[n].dtype) for n, s in zip(self.names, self.shadow, strict=True)})
        run.log(f"ema:applied decay:{self.cfg.decay}")
        self.shadow = []

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["ema_decay"] = self.cfg.decay
