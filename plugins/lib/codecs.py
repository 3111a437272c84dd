"""Codecs the codec plugins share: zlib (the baseline's), xz (lzma), Zstandard, Brotli (+ byte shuffle), "auto"
(smallest), and lrzip (the external `lrzip` binary, PR #1855's per-group codec).

Byte shuffle (PR #1089 -> #1179 -> #1493 `_byte_shuffle`): before compression, all bytes at offsets
0 mod s, then 1 mod s, ... (stride s = 2 in the records), behind the 5-byte prefix `BSHF` + stride; the
low and high bytes of fp16 scales and of neighbouring codes land in separate runs, which brotli models
better. A brotli or lzma codec with a shuffle records `{"byte_shuffle": s}` as its params in the header.

The core knows no codec; a run decodes an artifact with the codecs its plugins supply (`pg_codec`, and an
auto codec's candidates). Each decoder caps the decompressed size and rejects truncated or trailing data.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.export import MAX_DECOMPRESSED, ArtifactError, Codec

BSHF_MAGIC = b"BSHF"


def too_big(name: str, max_size: int) -> ArtifactError:
    return ArtifactError(f"{name} payload decompresses to more than {max_size} bytes (size cap exceeded)")


def corrupt(name: str, exc: Exception) -> ArtifactError:
    return ArtifactError(f"{name} payload is corrupt ({exc})")


def capped_decompress(name: str, obj: Any, data: bytes, max_size: int) -> bytes:
    """zlib/lzma decompressobj protocol: output capped at max_size, then eof and trailing-data checks."""
    out = obj.decompress(data, max_size + 1)
    if len(out) > max_size:
        raise too_big(name, max_size)
    if not obj.eof:
        raise ArtifactError(f"{name} payload is truncated")
    if obj.unused_data:
        raise ArtifactError(f"{name} payload has {len(obj.unused_data)} trailing bytes")
    return out


def byte_shuffle(data: bytes, stride: int = 2) -> bytes:
    """`BSHF` + stride byte + the bytes at offsets 0 mod stride, then 1 mod stride, ... (PR #1493).

    Unlike the record, short inputs get the prefix too, so the decoder never guesses from the content."""
    if not 2 <= stride <= 255:
        raise ValueError(f"byte_shuffle stride must be in 2..255, got {stride}")
    src = np.frombuffer(data, dtype=np.uint8)
    return BSHF_MAGIC + bytes([stride]) + b"".join(src[pos::stride].tobytes() for pos in range(stride))


def byte_unshuffle(data: bytes, stride: int) -> bytes:
    """The inverse of `byte_shuffle(…, stride)`; an ArtifactError when the prefix does not match."""
    if len(data) < 5 or data[:4] != BSHF_MAGIC or data[4] != stride:
        raise ArtifactError(f"byte shuffle prefix missing or not stride {stride} (corrupt payload)")
    payload = np.frombuffer(data, dtype=np.uint8, offset=5)
    n = payload.size
    out = np.empty(n, dtype=np.uint8)
    off = 0
    for pos in range(stride):
        count = n // stride + (1 if pos < n % stride else 0)
        out[pos::stride] = payload[off:off + count]
        off += count
    return out.tobytes()


def _check_shuffle_params(name: str, params: Mapping[str, Any]) -> int:
    """The stride in header `codec_params` ({"byte_shuffle": 0 or 2..255}); an ArtifactError otherwise."""
    stride = params.get("byte_shuffle", 0)
    if set(params) - {"byte_shuffle"} or not isinstance(stride, int) or not (stride == 0 or 2 <= stride <= 255):
        raise ArtifactError(f"{name} codec_params {dict(params)}: expected {{'byte_shuffle': 2..255}}")
    return stride


def _stride(shuffle: int) -> int:
    if shuffle > 1:
        byte_shuffle(b"", shuffle)  # validates the stride now, not at export
    return shuffle if shuffle > 1 else 0


class ZlibCodec:
    """zlib, the baseline's codec (level 9)."""

    name = "zlib"

    def __init__(self, level: int = 9) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, level=self.level)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        try:
            return capped_decompress(self.name, zlib.decompressobj(), data, max_size)
        except zlib.error as exc:
            raise corrupt(self.name, exc) from exc


class LzmaCodec:
    """xz (stdlib lzma), preset 9 | extreme by default, optionally after a byte shuffle of stride `shuffle`
    (PR #1493's `_compress` shuffles before lzma too, with preset 6)."""

    name = "lzma"

    def __init__(self, preset: int = 9 | lzma.PRESET_EXTREME, shuffle: int = 0) -> None:
        self.preset = preset
        self.shuffle = _stride(shuffle)

    @property
    def params(self) -> dict[str, Any]:
        return {"byte_shuffle": self.shuffle} if self.shuffle else {}

    def configured(self, params: Mapping[str, Any]) -> LzmaCodec:
        return LzmaCodec(self.preset, _check_shuffle_params(self.name, params))

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(byte_shuffle(data, self.shuffle) if self.shuffle else data, preset=self.preset)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        limit = max_size + (5 if self.shuffle else 0)  # the shuffle prefix is not part of the output
        try:
            out = capped_decompress(self.name, lzma.LZMADecompressor(), data, limit)
        except lzma.LZMAError as exc:
            raise corrupt(self.name, exc) from exc
        return byte_unshuffle(out, self.shuffle) if self.shuffle else out


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
    """Brotli (imported lazily), quality 11, optionally after a byte shuffle of stride `shuffle`
    (0/1: none). `lgwin` (window bits, brotli's default 22) only affects compression."""

    name = "brotli"

    def __init__(self, quality: int = 11, shuffle: int = 0, lgwin: int | None = None) -> None:
        self.quality = quality
        self.shuffle = _stride(shuffle)
        self.lgwin = lgwin

    @property
    def params(self) -> dict[str, Any]:
        return {"byte_shuffle": self.shuffle} if self.shuffle else {}

    def configured(self, params: Mapping[str, Any]) -> BrotliCodec:
        return BrotliCodec(self.quality, _check_shuffle_params(self.name, params), self.lgwin)

    def compress(self, data: bytes) -> bytes:
        import brotli

        if self.shuffle:
            data = byte_shuffle(data, self.shuffle)
        kw = {} if self.lgwin is None else {"lgwin": self.lgwin}
        return brotli.compress(data, quality=self.quality, **kw)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        import brotli

        limit = max_size + (5 if self.shuffle else 0)  # the shuffle prefix is not part of the output
        dec = brotli.Decompressor()
        try:
            try:
                out = dec.process(data, output_buffer_limit=limit + 1)
            except TypeError:  # brotli < 1.2 has no output_buffer_limit
                out = _brotli_chunked(dec, data, limit)
        except brotli.error as exc:
            raise corrupt(self.name, exc) from exc
        if len(out) > limit:
            raise too_big(self.name, max_size)
        if not dec.is_finished():
            raise ArtifactError("brotli payload is truncated")
        return byte_unshuffle(out, self.shuffle) if self.shuffle else out


class AutoCodec:
    """Compress with every candidate codec and keep the smallest output (ties: the earlier candidate).

    `name` and `params` are the last winner's ("auto" before any), and the core reads them after each
    `compress`, so the artifact header names the real codec and decoding needs no auto codec (`codecs()`
    lists the candidates for `core.export.decoders_of`). `sizes`: every candidate's last output size.
    """

    def __init__(self, candidates: Sequence[Codec]) -> None:
        if not candidates:
            raise ValueError("AutoCodec needs at least one candidate codec")
        self.candidates = list(candidates)
        self.chosen: Codec | None = None
        self.sizes: dict[str, int] = {}

    @property
    def name(self) -> str:
        return "auto" if self.chosen is None else self.chosen.name

    @property
    def params(self) -> dict[str, Any]:
        return dict(getattr(self.chosen, "params", None) or {})

    def compress(self, data: bytes) -> bytes:
        best: tuple[Codec, bytes] | None = None
        self.sizes = {}
        for codec in self.candidates:
            out = codec.compress(data)
            self.sizes[codec.name] = len(out)
            if best is None or len(out) < len(best[1]):
                best = (codec, out)
        assert best is not None
        self.chosen = best[0]
        return best[1]

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        if self.chosen is None:
            raise ArtifactError("auto codec: nothing compressed yet; decode with the codec the header names")
        return self.chosen.decompress(data, max_size)

    def codecs(self) -> list[Codec]:
        return list(self.candidates)


LRZIP_MAGIC = b"LRZI"


class LrzipCodec:
    """`lrzip -z -L <level>` (rzip long-range matching, then ZPAQ context mixing; PR #1855 runs `-z -L 9` on
    each tensor group) through the `lrzip` binary on PATH, one temporary file each way, as the record.

    Not a Python package: `available()` says whether this machine can encode or decode it. Decoding reads
    the expanded size from the lrzip header (`LRZI`, version, little-endian u64 at offset 6) before running
    the binary, so the size cap holds without writing the output first."""

    name = "lrzip"

    def __init__(self, level: int = 9, binary: str = "lrzip") -> None:
        if not 1 <= level <= 9:
            raise ValueError(f"lrzip level must be in 1..9, got {level}")
        self.level = level
        self.binary = binary

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def _run(self, args: list[str], src: bytes, what: str) -> bytes:
        exe = shutil.which(self.binary)
        if exe is None:
            raise ArtifactError(f"lrzip: the {self.binary!r} binary is not on PATH (needed to {what}; "
                                f"apt install lrzip)")
        with tempfile.TemporaryDirectory(prefix="pgolf_lrzip_") as tmp:
            inp, out = Path(tmp) / "in", Path(tmp) / "out"
            inp.write_bytes(src)
            proc = subprocess.run([exe, *args, "-q", "-f", "-o", str(out), str(inp)], capture_output=True)
            if proc.returncode != 0 or not out.exists():
                msg = proc.stderr.decode(errors="replace").strip().splitlines()
                raise ArtifactError(f"lrzip {what} failed (exit {proc.returncode}: {msg[-1] if msg else 'no output'})")
            return out.read_bytes()

    def compress(self, data: bytes) -> bytes:
        return self._run(["-z", "-L", str(self.level)], data, "compress")

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        if len(data) < 14 or data[:4] != LRZIP_MAGIC:
            raise ArtifactError("lrzip payload has no LRZI header (corrupt payload)")
        (expanded,) = struct.unpack_from("<Q", data, 6)
        if expanded > max_size:
            raise too_big(self.name, max_size)
        out = self._run(["-d"], data, "decompress")
        if len(out) != expanded:
            raise ArtifactError(f"lrzip payload expanded to {len(out)} bytes, its header says {expanded}")
        return out


CODECS: dict[str, type] = {"zlib": ZlibCodec, "lzma": LzmaCodec, "zstd": ZstdCodec, "brotli": BrotliCodec}


def all_decoders() -> dict[str, Codec]:
    """name -> a decoder for every codec pgolf ships (codec parameters come from the artifact header);
    `plugins.lib.decoders.all_decoders` adds the state codecs (layouts)."""
    return {**{name: cls() for name, cls in CODECS.items()}, LrzipCodec.name: LrzipCodec()}
