"""Brotli quality 11 artifact codec with the records' byte shuffle (PR #1089 / PR #1179 / PR #1493).

PR #1493's `_compress` always byte-shuffles (stride 2, `_byte_shuffle`) before brotli-11, so that is the
default here (`byte_shuffle = 2`); `byte_shuffle = 0` gives plain brotli. The stride is recorded in the
artifact header (`codec_params`), so any pgolf decoder undoes it without this plugin's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs
from plugins.lib.settings import range_errors


@dataclass
class BrotliConfig:
    quality: int = field(default=11, metadata={"help": "brotli quality (0..11)"})
    byte_shuffle: int = field(default=2, metadata={
        "help": "byte-shuffle stride before brotli (PR #1493: 2; 0 or 1: no shuffle)"})


class Brotli(Plugin):
    name = "brotli"
    family = "export"
    summary = "Brotli quality 11 for the artifact payload, after PR #1493's stride-2 byte shuffle."
    sources = ("openai/parameter-golf#1089", "openai/parameter-golf#1179", "openai/parameter-golf#1493")
    config = BrotliConfig
    provides = ("codec",)
    test_settings = {"brotli": {"quality": 5}}  # quality 11 is the default; 5 keeps the matrix fast

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, quality=(0, 11), byte_shuffle=(0, 255))

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        if not (self.cfg.byte_shuffle in (0, 1) or 2 <= self.cfg.byte_shuffle <= 255):
            raise ValueError(f"brotli.byte_shuffle: expected 0, 1 or a stride in 2..255, got {self.cfg.byte_shuffle}")
        return codecs.BrotliCodec(quality=self.cfg.quality, shuffle=self.cfg.byte_shuffle)
