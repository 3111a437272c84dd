"""Codecs the codec plugins share: xz (lzma), Zstandard, Brotli, and "auto" (smallest of several).

The core knows only zlib (the baseline's); a run decodes an artifact with the codecs its plugins supply
(`pg_codec`, and `decoders()` of an auto codec). Each decoder caps the decompressed size and rejects
truncated or trailing data (`core.export` helpers).
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence
from typing import Any

from core.export import MAX_DECOMPRESSED, ArtifactError, Codec, ZlibCodec, capped_decompress, corrupt, too_big


class LzmaCodec:
    """xz (stdlib lzma), preset 9 | extreme by default."""

    name = "lzma"

    def __init__(self, preset: int = 9 | lzma.PRESET_EXTREME) -> None:
        self.preset = preset

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(data, preset=self.preset)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        try:
            return capped_decompress(self.name, lzma.LZMADecompressor(), data, max_size)
        except lzma.LZMAError as exc:
            raise corrupt(self.name, exc) from exc


class ZstdCodec:
    """Zstandard (imported lazily), level 22, with a content checksum."""

    name = "zstd"

    def __init__(self, level: int = 22) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(data)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        import zstandard

        try:
            return self._decompress(zstandard, data, max_size)
        except zstandard.ZstdError as exc:
            raise corrupt(self.name, exc) from exc

    def _decompress(self, zstandard: Any, data: bytes, max_size: int) -> bytes:
        declared = zstandard.get_frame_parameters(data).content_size
        if 0 <= declared < zstandard.CONTENTSIZE_UNKNOWN and declared > max_size:
            raise too_big(self.name, max_size)
        # Small input steps bound the overshoot past max_size when the frame does not declare its size.
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out, pos = bytearray(), 0
        while pos < len(data) and not dobj.eof:
            out += dobj.decompress(data[pos:pos + 256])
            pos += 256
            if len(out) > max_size:
                raise too_big(self.name, max_size)
        if not dobj.eof:
            raise ArtifactError("zstd payload is truncated")
        if dobj.unused_data or pos < len(data):
            raise ArtifactError("zstd payload has trailing bytes")
        return bytes(out)


def _brotli_chunked(dec: Any, data: bytes, max_size: int, step: int = 64) -> bytes:
    """Fallback for brotli without output_buffer_limit: feed small input chunks, checking the output size."""
    out = bytearray()
    for i in range(0, len(data), step):
        out += dec.process(data[i:i + step])
        if len(out) > max_size:
            raise too_big("brotli", max_size)
    return bytes(out)


class BrotliCodec:
    """Brotli (imported lazily), quality 11."""

    name = "brotli"

    def __init__(self, quality: int = 11) -> None:
        self.quality = quality

    def compress(self, data: bytes) -> bytes:
        import brotli

        return brotli.compress(data, quality=self.quality)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        import brotli

        dec = brotli.Decompressor()
        try:
            try:
                out = dec.process(data, output_buffer_limit=max_size + 1)
            except TypeError:  # brotli < 1.2 has no output_buffer_limit
                out = _brotli_chunked(dec, data, max_size)
        except brotli.error as exc:
            raise corrupt(self.name, exc) from exc
        if len(out) > max_size:
            raise too_big(self.name, max_size)
        if not dec.is_finished():
            raise ArtifactError("brotli payload is truncated")
        return out


class AutoCodec:
    """Compress with every candidate codec and keep the smallest output (ties: the earlier candidate).

    `compress_named` returns the winner's name with its bytes, so the artifact header names the real
    codec and decoding needs no "auto" codec; `chosen` records the last winner, `sizes` every candidate's.
    """

    name = "auto"

    def __init__(self, candidates: Sequence[Codec]) -> None:
        if not candidates:
            raise ValueError("AutoCodec needs at least one candidate codec")
        self.candidates = list(candidates)
        self.chosen: Codec | None = None
        self.sizes: dict[str, int] = {}

    def compress_named(self, data: bytes) -> tuple[str, bytes]:
        best: tuple[Codec, bytes] | None = None
        self.sizes = {}
        for codec in self.candidates:
            out = codec.compress(data)
            self.sizes[codec.name] = len(out)
            if best is None or len(out) < len(best[1]):
                best = (codec, out)
        assert best is not None
        self.chosen = best[0]
        return best[0].name, best[1]

    def compress(self, data: bytes) -> bytes:
        return self.compress_named(data)[1]

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        if self.chosen is None:
            raise ArtifactError("auto codec: nothing compressed yet; decode with the codec the header names")
        return self.chosen.decompress(data, max_size)

    def decoders(self) -> dict[str, Codec]:
        """name -> codec for every candidate (what `decode_artifact` needs for any winner)."""
        return {c.name: c for c in self.candidates}


CODECS: dict[str, type] = {"zlib": ZlibCodec, "lzma": LzmaCodec, "zstd": ZstdCodec, "brotli": BrotliCodec}


def all_decoders() -> dict[str, Codec]:
    """name -> a decoder for every codec pgolf ships (for reading an artifact outside its run: `pgolf size`)."""
    return {name: cls() for name, cls in CODECS.items()}
