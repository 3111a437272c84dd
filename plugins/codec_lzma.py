"""xz/lzma artifact codec, preset 9 as in PR #1019 (preset 6 in PR #549).

`byte_shuffle = 2` gives PR #1493's COMPRESSOR=lzma path (its `_byte_shuffle` before lzma, preset 6);
the default 0 is PR #549 / #1019's plain lzma. The stride is recorded in the artifact header.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from typing import Any

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs
from plugins.lib.settings import range_errors


@dataclass
class LzmaConfig:
    preset: int = field(default=9, metadata={"help": "xz preset (0..9; PR #549: 6, PR #1019: 9)"})
    extreme: bool = field(default=True, metadata={"help": "add PRESET_EXTREME"})
    byte_shuffle: int = field(default=0, metadata={
        "help": "byte-shuffle stride before lzma (PR #1493's lzma path: 2; 0 or 1: none)"})


class Lzma(Plugin):
    name = "lzma"
    family = "export"
    summary = "xz/lzma preset 9 (extreme) for the artifact payload."
    sources = ("openai/parameter-golf#549", "openai/parameter-golf#1019", "openai/parameter-golf#1493")
    config = LzmaConfig
    provides = ("codec",)
    test_settings = {"lzma": {"preset": 9}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, preset=(0, 9), byte_shuffle=(0, 255))

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        if not (self.cfg.byte_shuffle in (0, 1) or 2 <= self.cfg.byte_shuffle <= 255):
            raise ValueError(f"lzma.byte_shuffle: expected 0, 1 or a stride in 2..255, got {self.cfg.byte_shuffle}")
        return codecs.LzmaCodec(preset=self.cfg.preset | (lzma.PRESET_EXTREME if self.cfg.extreme else 0),
                                shuffle=self.cfg.byte_shuffle)
