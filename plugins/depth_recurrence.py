"""Depth recurrence (PR #1493; loop schedule from PR #1394, mini recurrence in PR #1204): blocks
`loop_start..loop_end` run `num_loops + 1` times once the training fraction reaches `enable_at`.

The virtual order is `[0..start-1] + [start..end] × (num_loops+1) + [end+1..L-1]`, split in half for the
U-Net (encoder keeps skips, decoder takes them back); the model has as many skip weights as the looped
layout uses. Looping is a graph mode: the schedule's `looping` attribute is a Python branch, so the core
compiles both layouts in the warm-up and switches between cached graphs in the timed loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.hookspecs import hookimpl
from core.model import LayerSchedule, Mode
from core.registry import Plugin
from plugins.lib.settings import PASSES, range_errors

MODE = "recurrence"


@dataclass
class DepthRecurrenceConfig:
    loop_start: int = field(default=3, metadata={"help": "first looped block (PR #1493: 3)"})
    loop_end: int = field(default=5, metadata={"help": "last looped block, inclusive (PR #1493: 5)"})
    num_loops: int = field(default=2, metadata={"help": "extra passes over the loop (PR #1493: 2 -> 17 virtual)"})
    enable_at: float = field(default=0.35, metadata={"help": "training fraction that turns looping on (PR #1493)"})

    def __post_init__(self) -> None:
        if not 0 <= self.loop_start <= self.loop_end:
            raise ValueError(f"depth_recurrence: need 0 <= loop_start <= loop_end, got {self.loop_start}, "
                             f"{self.loop_end}")
        if self.num_loops < 1:
            raise ValueError(f"depth_recurrence.num_loops must be >= 1, got {self.num_loops}")
        if not 0.0 <= self.enable_at <= 1.0:
            raise ValueError(f"depth_recurrence.enable_at must be in [0, 1], got {self.enable_at}")


def looped_order(num_layers: int, start: int, end: int, num_loops: int) -> list[int]:
    segment = list(range(start, end + 1))
    return list(range(start)) + segment * (num_loops + 1) + list(range(end + 1, num_layers))


class RecurrentSchedule(LayerSchedule):
    """The U-Net schedule, or (with `looping`) the U-Net over the looped virtual order."""

    def __init__(self, num_layers: int, start: int, end: int, num_loops: int):
        super().__init__(num_layers)
        order = looped_order(num_layers, start, end, num_loops)
        half = len(order) // 2
        self.looped = (order[:half], order[half:])
        self.looping = False

    def layout(self) -> tuple[list[int], list[int]]:
        return self.looped if self.looping else super().layout()

    def skip_count(self) -> int:
        return min(len(self.looped[0]), len(self.looped[1]))


class DepthRecurrence(Plugin):
    name = "depth_recurrence"
    family = "routing"
    summary = "Loop blocks 3-5 three times (17 virtual layers) from 35% of training: a pre-compiled graph mode."
    sources = ("openai/parameter-golf#1493", "openai/parameter-golf#1394", "openai/parameter-golf#1204")
    config = DepthRecurrenceConfig
    provides = ("layer_schedule",)
    test_settings = {"core": {"num_layers": 4}, "depth_recurrence": {"loop_start": 1, "loop_end": 2,
                                                                     "num_loops": 1, "enable_at": 0.0}}

    @classmethod
    def check_config(cls, cfg: DepthRecurrenceConfig, core) -> list[str]:
        if cfg.loop_end >= core.num_layers:
            return [f"depth_recurrence.loop_end={cfg.loop_end} must be < core.num_layers={core.num_layers}"]
        return range_errors(cls.name, cfg, num_loops=(1, PASSES))

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot != "schedule":
            return None
        c = self.cfg
        return RecurrentSchedule(spec.num_layers, c.loop_start, c.loop_end, c.num_loops)

    @hookimpl
    def pg_modes(self, config) -> list[Mode]:
        return [Mode(MODE, self.cfg.enable_at)]

    @hookimpl
    def pg_enter_mode(self, model, active: tuple[str, ...]) -> None:
        model.schedule.looping = MODE in active

    @hookimpl
    def pg_report(self, run, fields) -> None:
        enc, dec = run.model.schedule.looped
        fields["depth_recurrence"] = {"encoder": enc, "decoder": dec, "enable_at": self.cfg.enable_at}
