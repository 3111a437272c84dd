"""Zstandard level 22 artifact codec, as in the PR #315 record (zstd from PR #63 on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs
from plugins.lib.settings import range_errors


@dataclass
class ZstdConfig:
    level: int = field(default=22, metadata={"help": "zstd level (1..22; records use 22)"})


class Zstd(Plugin):
    name = "zstd"
    family = "export"
    summary = "Zstandard level 22 for the artifact payload."
    sources = ("openai/parameter-golf#63", "openai/parameter-golf#315")
    config = ZstdConfig
    provides = ("codec",)
    test_settings = {"zstd": {"level": 22}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, level=(1, 22))

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        return codecs.ZstdCodec(level=self.cfg.level)
