"""Brotli quality 11 artifact codec (PR #1089 / PR #1179 use brotli-11 for the payload)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs


@dataclass
class BrotliConfig:
    quality: int = field(default=11, metadata={"help": "brotli quality (0..11)"})


class Brotli(Plugin):
    name = "brotli"
    summary = "Brotli quality 11 for the artifact payload."
    sources = ("openai/parameter-golf#1089", "openai/parameter-golf#1179")
    config = BrotliConfig
    provides = ("codec",)
    test_settings = {"brotli": {"quality": 5}}  # quality 11 is the default; 5 keeps the matrix fast

    def __init__(self, cfg: BrotliConfig | None = None):
        super().__init__(cfg or BrotliConfig())

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        return codecs.BrotliCodec(quality=self.cfg.quality)
