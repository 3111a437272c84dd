"""compress_auto: try every configured codec and keep the smallest payload (techniques §9.8; PR #1179
found brotli beat lzma, PR #549 lzma beat zlib: the winner depends on the weights, so measure).

The artifact header names the winning codec (`core.export.AutoCodec.compress_named`), so decoding needs
only that codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs


@dataclass
class CompressAutoConfig:
    codecs: str = field(default="zlib,zstd,brotli,lzma", metadata={
        "help": "comma-separated candidates, each at its strongest setting; the smallest output wins"})


def make_codecs(names: str) -> list[ex.Codec]:
    out: list[ex.Codec] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name not in codecs.CODECS:
            raise ValueError(f"compress_auto.codecs: unknown codec {name!r} (known: {', '.join(codecs.CODECS)})")
        out.append(codecs.CODECS[name]())
    if not out:
        raise ValueError("compress_auto.codecs is empty")
    return out


class CompressAuto(Plugin):
    name = "compress_auto"
    family = "export"
    summary = "Try every configured codec (zlib, zstd, brotli, lzma) and keep the smallest artifact."
    sources = ("openai/parameter-golf#1179", "openai/parameter-golf#1855")
    config = CompressAutoConfig
    provides = ("codec",)
    test_settings = {"compress_auto": {"codecs": "zlib,zstd,brotli,lzma"}}

    def __init__(self, cfg: CompressAutoConfig | None = None):
        super().__init__(cfg or CompressAutoConfig())

    @hookimpl
    def pg_codec(self, config) -> ex.Codec:
        return codecs.AutoCodec(make_codecs(self.cfg.codecs))
