"""Export: quantize -> serialize -> compress -> verify the round trip, in a versioned artifact.

The core default is the official baseline's int8 rule (per-row int8 with a 99.99984th-percentile clip
and fp16 scales for matrices, per-tensor for other floats, fp16/fp32 passthrough for tensors of at most
65,536 elements) and zlib-9. Plugins supply other quantizers (`pg_quantize_tensor`) and codecs
(`pg_codec`). Artifacts load with `torch.load(weights_only=True)` and decompression is size-capped.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

BASELINE_CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)
KEEP_FLOAT_MAX_NUMEL = 65_536
INT8_CLIP_Q = 99.99984 / 100.0
SIZE_CAP = 16_000_000
MAX_DECOMPRESSED = 512 * 1024 * 1024
MAGIC = b"PGOLF\x00"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An artifact that cannot be read back: one line naming what is wrong."""


@dataclass
class QTensor:
    """One quantized state-dict entry and how to restore it."""

    scheme: str
    data: Tensor
    dtype: str
    scale: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def dequantize(self) -> Tensor:
        dtype = getattr(torch, self.dtype)
        if self.scheme == "passthrough":
            return self.data.to(dtype).contiguous()
        assert self.scale is not None
        if self.scheme == "int8_per_row":
            s = self.scale.to(torch.float32)
            view = s.view(self.data.shape[0], *([1] * (self.data.ndim - 1)))
            return (self.data.float() * view).to(dtype).contiguous()
        if self.scheme == "int8_per_tensor":
            return (self.data.float() * float(self.scale.item())).to(dtype).contiguous()
        raise ArtifactError(f"unknown quantization scheme {self.scheme!r}")

    def nbytes(self) -> int:
        n = self.data.numel() * self.data.element_size()
        return n + (0 if self.scale is None else self.scale.numel() * self.scale.element_size())

    def to_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme, "data": self.data, "dtype": self.dtype, "meta": dict(self.meta)}
        if self.scale is not None:
            out["scale"] = self.scale
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> QTensor:
        return cls(scheme=state["scheme"], data=state["data"], dtype=state["dtype"], scale=state.get("scale"),
                   meta=dict(state.get("meta", {})))


QuantizeFn = Callable[[str, Tensor], "QTensor | None"]


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def int8_quantize(name: str, t: Tensor, keep_fp32_patterns: Sequence[str] = BASELINE_CONTROL_PATTERNS) -> QTensor:
    """The baseline's int8 rule for one tensor (bit-identical to train_gpt.py's dequantized values)."""
    t = t.detach().to("cpu").contiguous()
    if not t.is_floating_point():
        return QTensor("passthrough", t, _dtype_name(t))
    if t.numel() <= KEEP_FLOAT_MAX_NUMEL:
        if any(p in name for p in keep_fp32_patterns):
            return QTensor("passthrough", t.float().contiguous(), _dtype_name(t))
        if t.dtype in (torch.float32, torch.bfloat16):
            return QTensor("passthrough", t.to(torch.float16).contiguous(), _dtype_name(t))
        return QTensor("passthrough", t, _dtype_name(t))
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), INT8_CLIP_Q, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8).contiguous()
        return QTensor("int8_per_row", q, _dtype_name(t), scale.to(torch.float16).contiguous())
    clip_abs = float(torch.quantile(t32.abs().flatten(), INT8_CLIP_Q).item())
    scale = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale), -127, 127).to(torch.int8)
    return QTensor("int8_per_tensor", q.contiguous(), _dtype_name(t), scale)


def tensor_family(name: str) -> str:
    """A coarse family for size breakdowns: embed, attn, mlp, head, control, other."""
    if "tok_emb" in name or "emb" in name.split(".")[0]:
        return "embed"
    if "lm_head" in name:
        return "head"
    if ".attn." in name and name.endswith("weight"):
        return "attn"
    if ".mlp." in name:
        return "mlp"
    if any(p in name for p in BASELINE_CONTROL_PATTERNS):
        return "control"
    return "other"


@dataclass
class QuantStats:
    param_count: int = 0
    num_tensors: int = 0
    baseline_tensor_bytes: int = 0
    payload_bytes: int = 0
    families: dict[str, dict[str, int]] = field(default_factory=dict)


def quantize_state_dict(state_dict: Mapping[str, Tensor], quantizers: Sequence[QuantizeFn]
                        ) -> tuple[dict[str, QTensor], QuantStats]:
    """First quantizer that answers wins for each tensor; the baseline int8 rule answers last."""
    out: dict[str, QTensor] = {}
    stats = QuantStats()
    for name, tensor in state_dict.items():
        q = None
        for fn in quantizers:
            q = fn(name, tensor)
            if q is not None:
                break
        if q is None:
            q = int8_quantize(name, tensor)
        out[name] = q
        raw = tensor.numel() * tensor.element_size()
        stats.param_count += tensor.numel()
        stats.num_tensors += 1
        stats.baseline_tensor_bytes += raw
        stats.payload_bytes += q.nbytes()
        fam = stats.families.setdefault(tensor_family(name), {"raw_bytes": 0, "payload_bytes": 0})
        fam["raw_bytes"] += raw
        fam["payload_bytes"] += q.nbytes()
    return out, stats


def dequantize_state_dict(qstate: Mapping[str, QTensor]) -> dict[str, Tensor]:
    return {name: q.dequantize() for name, q in qstate.items()}


# --- codecs ----------------------------------------------------------------------------------------
class Codec(Protocol):
    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes: ...


def _too_big(name: str, max_size: int) -> ArtifactError:
    return ArtifactError(f"{name} payload decompresses to more than {max_size} bytes (refused: possible bomb)")


def _stream(name: str, obj: Any, data: bytes, max_size: int) -> bytes:
    """Incremental decompression with an output cap (zlib/lzma decompressobj protocol)."""
    out = obj.decompress(data, max_size + 1)
    if len(out) > max_size:
        raise _too_big(name, max_size)
    return out


class ZlibCodec:
    name = "zlib"

    def __init__(self, level: int = 9):
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, level=self.level)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        obj = zlib.decompressobj()
        out = _stream(self.name, obj, data, max_size)
        if not obj.eof:
            raise ArtifactError("zlib payload is truncated")
        return out


class LzmaCodec:
    name = "lzma"

    def __init__(self, preset: int = 9 | lzma.PRESET_EXTREME):
        self.preset = preset

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(data, preset=self.preset)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        obj = lzma.LZMADecompressor()
        out = obj.decompress(data, max_length=max_size + 1)
        if len(out) > max_size:
            raise _too_big(self.name, max_size)
        if not obj.eof:
            raise ArtifactError("lzma payload is truncated")
        return out


class ZstdCodec:
    name = "zstd"

    def __init__(self, level: int = 22):
        self.level = level

    def compress(self, data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        out = reader.read(max_size + 1)
        if len(out) > max_size:
            raise _too_big(self.name, max_size)
        return out


class BrotliCodec:
    name = "brotli"

    def __init__(self, quality: int = 11):
        self.quality = quality

    def compress(self, data: bytes) -> bytes:
        import brotli

        return brotli.compress(data, quality=self.quality)

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes:
        import brotli

        obj = brotli.Decompressor()
        out = obj.process(data, output_buffer_limit=max_size + 1)
        if len(out) > max_size:
            raise _too_big(self.name, max_size)
        if not obj.is_finished():
            raise ArtifactError("brotli payload is truncated")
        return out


CODECS: dict[str, Callable[[], Codec]] = {
    "zlib": ZlibCodec, "lzma": LzmaCodec, "zstd": ZstdCodec, "brotli": BrotliCodec,
}


# --- artifact --------------------------------------------------------------------------------------
def encode_artifact(qstate: Mapping[str, QTensor], codec: Codec, quantizer_name: str) -> tuple[bytes, int]:
    """(artifact bytes, raw serialized bytes): MAGIC | u16 version | u32 header len | JSON header | payload."""
    buf = io.BytesIO()
    torch.save({"__pgolf_artifact__": 1, "tensors": {n: q.to_state() for n, q in qstate.items()}}, buf)
    raw = buf.getvalue()
    payload = codec.compress(raw)
    header = json.dumps({"format": FORMAT_VERSION, "codec": codec.name, "quantizer": quantizer_name,
                         "payload_bytes": len(payload), "raw_bytes": len(raw)}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<HI", FORMAT_VERSION, len(header)) + header + payload, len(raw)


def decode_artifact(blob: bytes, codecs: Mapping[str, Codec] | None = None, max_size: int = MAX_DECOMPRESSED,
                    where: str = "artifact") -> tuple[dict[str, QTensor], dict[str, Any]]:
    if not blob.startswith(MAGIC):
        raise ArtifactError(f"{where}: not a pgolf artifact (bad magic)")
    fixed = len(MAGIC) + 6
    if len(blob) < fixed:
        raise ArtifactError(f"{where}: truncated header")
    version, hlen = struct.unpack("<HI", blob[len(MAGIC):fixed])
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{where}: unsupported artifact version {version} (expected {FORMAT_VERSION})")
    if len(blob) < fixed + hlen:
        raise ArtifactError(f"{where}: truncated header")
    try:
        header = json.loads(blob[fixed:fixed + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: corrupt header ({exc})") from exc
    payload = blob[fixed + hlen:]
    if len(payload) != header.get("payload_bytes"):
        expected = header.get("payload_bytes")
        raise ArtifactError(f"{where}: truncated payload: {len(payload)} bytes, header says {expected}")
    name = header.get("codec")
    codec = (codecs or {}).get(name)
    if codec is None and name in CODECS:
        codec = CODECS[name]()
    if codec is None:
        raise ArtifactError(f"{where}: unknown codec {name!r} (known: {', '.join(CODECS)})")
    try:
        raw = codec.decompress(payload, max_size=max_size)
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise ArtifactError(f"{where}: {name} decompression failed: {exc}") from exc
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        tensors = {n: QTensor.from_state(s) for n, s in obj["tensors"].items()}
    except Exception as exc:
        raise ArtifactError(f"{where}: payload is not a pgolf state ({type(exc).__name__}: {exc})") from exc
    return tensors, header


def write_artifact(path: str | Path, blob: bytes) -> int:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(blob)


def read_artifact(path: str | Path, codecs: Mapping[str, Codec] | None = None,
                  max_size: int = MAX_DECOMPRESSED) -> tuple[dict[str, QTensor], dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: artifact not found")
    return decode_artifact(p.read_bytes(), codecs, max_size, where=str(p))


@dataclass
class ExportResult:
    blob: bytes
    qstate: dict[str, QTensor]
    stats: QuantStats
    raw_bytes: int
    quantizer_name: str

    @property
    def compressed_bytes(self) -> int:
        return len(self.blob)


def export_state_dict(state_dict: Mapping[str, Tensor], quantizers: Sequence[QuantizeFn], codec: Codec,
                      quantizer_name: str = "int8") -> ExportResult:
    qstate, stats = quantize_state_dict(state_dict, quantizers)
    blob, raw = encode_artifact(qstate, codec, quantizer_name)
    return ExportResult(blob=blob, qstate=qstate, stats=stats, raw_bytes=raw, quantizer_name=quantizer_name)


def verify_round_trip(result: ExportResult, codecs: Mapping[str, Codec] | None = None) -> dict[str, Tensor]:
    """Decode the artifact bytes and check they restore exactly the weights that were quantized."""
    decoded, _ = decode_artifact(result.blob, codecs)
    restored = dequantize_state_dict(decoded)
    expected = dequantize_state_dict(result.qstate)
    for name, t in expected.items():
        if name not in restored or restored[name].dtype != t.dtype or not torch.equal(restored[name], t):
            raise ArtifactError(f"round trip mismatch for tensor {name!r}")
    return restored


def size_report(code_bytes: int, model_bytes: int, cap: int = SIZE_CAP) -> dict[str, Any]:
    total = code_bytes + model_bytes
    return {"code_bytes": code_bytes, "model_bytes": model_bytes, "total_bytes": total, "cap": cap,
            "headroom": cap - total, "fits": total <= cap}
