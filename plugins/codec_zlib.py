"""zlib level 9, the official baseline's artifact codec (openai/parameter-golf `train_gpt.py`; the records' until
PR #63 brought zstd): the run's codec when no enabled plugin provides one (`default = True`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs


@dataclass
class ZlibConfig:
    level: int = field(default=9, metadata={"help": "zlib level (0..9; the baseline: 9)"})

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 9:
            raise ValueError(f"zlib.level: expected 0..9, got {self.level}")


class Zlib(Plugin):
    name = "zlib"
    family = "export"
    summary = "zlib level 9 for the artifact payload (the baseline's); the default codec."
    sources = ("openai/parameter-golf train_gpt.py (baseline)",)
    config = ZlibConfig
    provides = ("codec",)
    default = True
    test_settings = {"zlib": {"level": 9}}

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        return codecs.ZlibCodec(level=self.cfg.level)
