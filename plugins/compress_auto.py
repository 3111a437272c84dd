"""compress_auto: compress the serialized state with every configured codec and keep the smallest output.

A pgolf convenience, not a record's technique: no record picks its codec by measurement. The records choose
one by hand (zlib-9 in the baseline, zstd-22 from PR #63, lzma from PR #549, brotli-11 + byte shuffle from
PR #1089/#1179); PR #1855's script offers COMPRESSOR=brotli|lzma|pergroup and ran "pergroup" (per-role
lrzip/brotli streams: the `compress_pergroup` plugin), which this plugin does not try. Which single codec
wins depends on the weights (techniques §9.8), hence the measurement. The artifact header names the
winning codec (`plugins.lib.codecs.AutoCodec`), so decoding needs only that codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs


@dataclass
class CompressAutoConfig:
    codecs: str = field(default="zlib,zstd,brotli,lzma", metadata={
        "help": "comma-separated candidates, each at its strongest setting; the smallest output wins"})


def codec_names(names: str) -> list[str]:
    """The codecs `compress_auto.codecs` names (ValueError: an unknown one, or none)."""
    out = [n.strip() for n in names.split(",") if n.strip()]
    if unknown := [n for n in out if n not in codecs.CODECS]:
        raise ValueError(f"compress_auto.codecs: unknown codec {unknown[0]!r} (known: {', '.join(codecs.CODECS)})")
    if not out:
        raise ValueError("compress_auto.codecs is empty")
    return out


def make_codecs(names: str) -> list[ex.Codec]:
    return [codecs.CODECS[name]() for name in codec_names(names)]


class CompressAuto(Plugin):
    name = "compress_auto"
    family = "export"
    summary = "Try every configured codec (zlib, zstd, brotli, lzma) and keep the smallest (pgolf's, no record's)."
    sources = ("openai/parameter-golf#63", "openai/parameter-golf#549", "openai/parameter-golf#1179")
    config = CompressAutoConfig
    provides = ("codec",)
    test_settings = {"compress_auto": {"codecs": "zlib,zstd,brotli,lzma"}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        try:
            codec_names(cfg.codecs)
        except ValueError as exc:
            return [str(exc)]
        return []

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        return codecs.AutoCodec(make_codecs(self.cfg.codecs))
