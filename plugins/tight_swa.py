"""Tight SWA: SWA every 50 steps while the LR multiplier is below 0.2, ~12 checkpoints (PR #374; carried,
collected but never applied, in PRs #414–#1204).

The same averaging as `swa` (plugins/swa.py) with PR #374's defaults. The records from PR #414 to #1204
(e.g. 2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233, `scale < 0.2 and step % swa_every == 0`)
collect it next to EMA but only ever load the EMA: `ema` + `tight_swa.apply=false` reproduces them;
`apply = true` (the default) does what SWA means and cannot be combined with `ema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plugins.swa import SWA


@dataclass
class TightSWAConfig:
    every: int = field(default=50, metadata={"help": "collect a checkpoint every this many steps (SWA_EVERY)"})
    threshold: float = field(default=0.2, metadata={"help": "collect only while the LR multiplier is below this"})
    apply: bool = field(default=True, metadata={
        "help": "load the average at the end; false = collect only, as PRs #414-#1204 (with ema)"})
    min_checkpoints: int = field(default=2, metadata={
        "help": "load the average only when at least this many were collected (#162-#287: 2; PR #534: 1)"})


class TightSWA(SWA):
    name = "tight_swa"
    summary = "SWA every 50 steps while lr_mul < 0.2 (PR #374); apply=false = PRs #414-#1204 (never loaded)."
    sources = ("openai/parameter-golf#374", "openai/parameter-golf#414")
    config = TightSWAConfig
    conflicts = ("swa",)
    test_settings = {"tight_swa": {"every": 2, "threshold": 2.0}}
