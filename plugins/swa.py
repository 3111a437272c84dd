"""SWA: a uniform average of checkpoints taken every `every` steps while the LR multiplier is below
`threshold`, loaded into the model at the end of training (PR #162 → #180 `SWA_START_FRAC=0.4
SWA_EVERY=50`; #265 every 200 at scale < 0.5).

After optimizer step n (n counted from 1) the floating-point state-dict entries are added to a float32 sum
when `lr_mul(step n−1) < threshold and n % every == 0`, as the records' `scale < swa_start_frac and step %
swa_every == 0`; at `pg_train_end` the mean replaces the live weights when at least `min_checkpoints` were
collected (the records' `swa_count > 1`: 2; PR #534's `swa_count > 0`: 1). The sum stays on the device in
float32 (#180 summed on the CPU in the weights' dtype; #287 in float32).

`apply = false` collects and logs but never loads the average: that is what PRs #414–#1204 did (their
`swa_state` is never read after the loop; only the EMA is loaded) — use it with `ema` to reproduce those
records. With `apply = true` SWA and `ema` both load averaged weights, so enabling both is a configuration
error (#287 ran SWA only when EMA was off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import INIT, STEPS, range_errors

AVERAGERS = ("ema",)  # plugins that also load averaged weights at pg_train_end


@dataclass
class SWAConfig:
    every: int = field(default=50, metadata={"help": "collect a checkpoint every this many steps (SWA_EVERY)"})
    threshold: float = field(default=0.4, metadata={
        "help": "collect only while the LR multiplier is below this (#180 SWA_START_FRAC 0.4; #265 0.5)"})
    apply: bool = field(default=True, metadata={
        "help": "load the average at the end; false = collect only, as PRs #414-#1204 (with ema)"})
    min_checkpoints: int = field(default=2, metadata={
        "help": "load the average only when at least this many were collected (#162-#287: 2; PR #534: 1)"})


def check_fields(name: str, cfg: Any) -> list[str]:
    errors = range_errors(name, cfg, every=(None, STEPS), threshold=(None, INIT),
                          min_checkpoints=(None, STEPS))  # the lower bounds: below
    if cfg.every < 1:
        errors.append(f"{name}.every: expected an integer >= 1, got {cfg.every}")
    if not cfg.threshold > 0:
        errors.append(f"{name}.threshold: expected a positive LR-multiplier threshold, got {cfg.threshold}")
    if cfg.min_checkpoints < 1:
        errors.append(f"{name}.min_checkpoints: expected an integer >= 1, got {cfg.min_checkpoints}")
    return errors


def check_averagers(name: str, cfg: Any, peers: dict[str, Any]) -> list[str]:
    errors = []
    for other in AVERAGERS:
        if cfg.apply and other in peers:
            errors.append(f"plugins {name!r} and {other!r} both load averaged weights at the end of training: set "
                          f"{name}.apply=false (collect only, as PRs #414-#1204) or enable only one of them")
    return errors


class SWA(Plugin):
    name = "swa"
    family = "training"
    summary = "Uniform average of checkpoints every k steps once lr_mul < threshold, loaded before export."
    sources = ("openai/parameter-golf#162", "openai/parameter-golf#180", "openai/parameter-golf#265")
    config = SWAConfig
    conflicts = ("tight_swa",)
    test_settings = {"swa": {"every": 2, "threshold": 2.0}}

    def __init__(self, cfg: Any = None):
        super().__init__(cfg)
        self.sum: list[torch.Tensor] = []
        self.names: list[str] = []
        self.count = 0
        self.lr_mul = 1.0

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return check_fields(cls.name, cfg)

    @classmethod
    def check_peers(cls, cfg: Any, peers: dict[str, Any]) -> list[str]:
        return check_averagers(cls.name, cfg, peers)

    @hookimpl
    def pg_train_start(self, run) -> None:
        self.sum, self.names, self.count = [], [], 0

    @hookimpl(trylast=True)  # after every plugin that sets the multiplier (warmdown_frac is tryfirst)
    def pg_before_step(self, run, step: int, clock) -> None:
        self.lr_mul = clock.lr_mul

    @hookimpl
    def pg_after_step(self, run, step: int) -> None:
        if not (self.lr_mul < self.cfg.threshold and step % self.cfg.every == 0):
            return
        state = run.model.state_dict()
        live = [t.detach() for t in state.values() if t.is_floating_point()]
        with torch.no_grad():
            if not self.sum:
                self.names = [n for n, t in state.items() if t.is_floating_point()]
                self.sum = [t.float().clone() for t in live]
                run.log(f"{self.name}:start step:{step}")
            else:
                torch._foreach_add_(self.sum, [t.float() for t in live])
        self.count += 1

    @hookimpl
    def pg_train_end(self, run, model) -> None:
        applied = self.cfg.apply and self.count >= self.cfg.min_checkpoints
        if not self.cfg.apply:
            run.log(f"{self.name}:collected {self.count} checkpoints, not applied ({self.name}.apply=false)")
        elif applied:
            run.log(f"{self.name}:applying averaged {self.count} checkpoints")
            current = model.state_dict()
            avg = {n: (s / self.count).to(current[n].dtype) for n, s in zip(self.names, self.sum, strict=True)}
            model.load_state_dict(avg, strict=False)
        else:
            run.log(f"{self.name}:not applied ({self.count} checkpoints collected; needs {self.cfg.min_checkpoints})")
        run.event(self.name, checkpoints=self.count, applied=bool(applied))
        self.sum = []

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update({f"{self.name}_every": self.cfg.every, f"{self.name}_threshold": self.cfg.threshold,
                       f"{self.name}_applied": self.cfg.apply})
