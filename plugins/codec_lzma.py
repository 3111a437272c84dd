"""xz/lzma artifact codec, preset 9 as in PR #1019 (preset 6 in PR #549)."""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs


@dataclass
class LzmaConfig:
    preset: int = field(default=9, metadata={"help": "xz preset (0..9; PR #549: 6, PR #1019: 9)"})
    extreme: bool = field(default=True, metadata={"help": "add PRESET_EXTREME"})


class Lzma(Plugin):
    name = "lzma"
    summary = "xz/lzma preset 9 (extreme) for the artifact payload."
    sources = ("openai/parameter-golf#549", "openai/parameter-golf#1019")
    config = LzmaConfig
    provides = ("codec",)
    test_settings = {"lzma": {"preset": 9}}

    def __init__(self, cfg: LzmaConfig | None = None):
        super().__init__(cfg or LzmaConfig())

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        return codecs.LzmaCodec(preset=self.cfg.preset | (lzma.PRESET_EXTREME if self.cfg.extreme else 0))
