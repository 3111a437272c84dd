"""compress_pergroup: per-group artifact layout (PR #1855; from PR #1586 via #1667/#1729), techniques §9.8.

The int8 code matrices are grouped by role across layers, rows of tok_emb / c_q / mlp.fc similarity-
sorted (the row order is stored), matrices transposed, and each group compressed on its own
(`plugins.lib.pergroup`); the rest (scales, small tensors) is one brotli stream. The record runs
`lrzip -z -L 9` (ZPAQ) on each group: `group_codec = "lrzip"` does the same when the `lrzip` binary is on
PATH, else `lrzip_fallback` ("auto": the smallest of zlib, zstd-22, brotli-11 and xz 9e per group). The
header names the codec that really wrote each group, so an artifact written by the fallback decodes
anywhere and one written by lrzip needs lrzip. Compression is slow on full-size models (the L1 similarity
walk is quadratic in the rows: PR #1855 logs ~100 s; lrzip -L 9 adds minutes on few cores), so avoid
combining it with prune_to_fit's repeated size probes on a real run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib import codecs
from plugins.lib.pergroup import RECORD_GROUPS, RECORD_SIMSORT, PerGroupStateCodec

CODEC_CHOICES = ("run", "auto", *codecs.CODECS)
GROUP_CODEC_CHOICES = (*CODEC_CHOICES, "lrzip")


@dataclass
class PerGroupConfig:
    groups: str = field(default=",".join(RECORD_GROUPS), metadata={
        "help": "tensor roles (name without 'blocks.<i>.') whose int8 codes get their own stream, in order"})
    simsort: str = field(default=",".join(RECORD_SIMSORT), metadata={
        "help": "roles whose rows are reordered by the greedy L1 nearest-neighbour walk before compression"})
    group_codec: str = field(default="lrzip", metadata={
        "help": "codec of each group stream (record: lrzip -z -L 9, used when the lrzip binary is on PATH, "
                "else lrzip_fallback; auto: the smallest of zlib/zstd/brotli/lzma per group; run: the run's "
                "codec)"})
    lrzip_fallback: str = field(default="auto", metadata={
        "help": "group codec when group_codec = lrzip and no lrzip binary is on PATH"})
    rest_codec: str = field(default="brotli", metadata={
        "help": "codec of the remaining records (record: brotli-11, window 2^24)"})

    def __post_init__(self) -> None:
        for key, choices in (("group_codec", GROUP_CODEC_CHOICES), ("lrzip_fallback", CODEC_CHOICES),
                             ("rest_codec", CODEC_CHOICES)):
            if getattr(self, key) not in choices:
                raise ValueError(f"compress_pergroup.{key}: unknown codec {getattr(self, key)!r} (expected one "
                                 f"of {', '.join(choices)})")
        if not _names(self.groups):
            raise ValueError("compress_pergroup.groups is empty (expected comma-separated tensor roles)")


def make_codec(name: str, field_name: str, fallback: str = "auto") -> ex.Codec | None:
    if name == "lrzip":
        lrzip = codecs.LrzipCodec(level=9)
        return lrzip if lrzip.available() else make_codec(fallback, "lrzip_fallback")
    if name == "run":
        return None
    if name == "auto":
        return codecs.AutoCodec([cls() for cls in codecs.CODECS.values()])
    if name == "brotli":
        return codecs.BrotliCodec(quality=11, lgwin=24)
    if name not in codecs.CODECS:
        raise ValueError(f"compress_pergroup.{field_name}: unknown codec {name!r} (expected one of "
                         f"{', '.join(CODEC_CHOICES)})")
    return codecs.CODECS[name]()


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


class CompressPerGroup(Plugin):
    name = "compress_pergroup"
    family = "export"
    summary = ("Per-group artifact layout: int8 codes grouped by role across layers, similarity-sorted, "
               "compressed per group.")
    sources = ("openai/parameter-golf#1855", "openai/parameter-golf#1586")
    config = PerGroupConfig
    test_settings = {"compress_pergroup": {"group_codec": "lzma"}}

    @hookimpl
    def pg_state_codec(self, config) -> ex.StateCodec:
        cfg = self.cfg
        group_codec = make_codec(cfg.group_codec, "group_codec", cfg.lrzip_fallback)
        return PerGroupStateCodec(_names(cfg.groups), _names(cfg.simsort), group_codec,
                                  make_codec(cfg.rest_codec, "rest_codec"), codecs.BrotliCodec(quality=11),
                                  also_decodes=[codecs.LrzipCodec()])
