"""Export: quantize -> serialize -> compress -> verify the round trip, as one versioned artifact.

The core reads the int8/int-k/passthrough schemes; plugins bring quantizers, codecs and state codecs (the defaults:
`plugins.quant_int8` and `plugins.codec_zlib`, the baseline's int8 + zlib-9). An artifact is `MAGIC | u16 version |
u32 header length | JSON header | streams`; decoding checks every size against a cap and every SHA-256, and loads
tensors only with `torch.load(weights_only=True)`."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import Tensor

MAX_DECOMPRESSED = 512 * 1024 * 1024
MAGIC = b"PGOLF\x00"
FORMAT_VERSION = 2
ARTIFACT_KEY = "__pgolf_artifact__"
_PREFIX = struct.Struct("<HI")  # version, header length


class ArtifactError(ValueError):
    """An artifact (or a tensor record in it) that cannot be read back; the message is one line."""


# --- quantized tensor records ----------------------------------------------------------------------
@dataclass
class QTensor:
    """One quantized state-dict entry: the payload, its scale, and what to restore it to."""

    scheme: str
    data: Tensor
    scale: Tensor | None
    dtype: str
    shape: tuple[int, ...]
    meta: dict[str, int | float | str] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)  # more tensors a scheme needs (e.g. LQER factors)

    @property
    def payload_bytes(self) -> int:
        return sum(int(t.numel()) * t.element_size() for t in (self.data, self.scale, *self.extra.values())
                   if t is not None)

    def torch_dtype(self) -> torch.dtype:
        dt = getattr(torch, self.dtype, None)
        if not isinstance(dt, torch.dtype):
            raise ArtifactError(f"unknown dtype {self.dtype!r} in a {self.scheme!r} tensor record")
        return dt

    def dequantize(self, schemes: Mapping[str, DequantizeFn] | None = None) -> Tensor:
        """The restored tensor, in the original dtype and shape (`schemes`: the run's, core's by default)."""
        schemes = SCHEMES if schemes is None else schemes
        fn = schemes.get(self.scheme)
        if fn is None:
            raise ArtifactError(f"unknown quantization scheme {self.scheme!r} (known: {', '.join(schemes)})")
        out = fn(self)
        if tuple(out.shape) != tuple(self.shape):
            raise ArtifactError(f"scheme {self.scheme!r} restored shape {tuple(out.shape)}, expected {self.shape}")
        return out

    def to_state(self) -> dict[str, Any]:
        """Plain dict of tensors/str/ints/lists that `torch.load(weights_only=True)` accepts."""
        return {"scheme": self.scheme, "data": self.data, "scale": self.scale, "dtype": self.dtype,
                "shape": [int(s) for s in self.shape], "meta": dict(self.meta),
                **({"extra": dict(self.extra)} if self.extra else {})}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> QTensor:
        try:
            scheme, data, scale = state["scheme"], state["data"], state.get("scale")
            dtype, shape, meta = state["dtype"], state["shape"], state.get("meta", {})
            extra = state.get("extra", {})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"malformed tensor record (missing {exc})") from exc
        ok = (isinstance(scheme, str) and isinstance(data, Tensor) and isinstance(dtype, str)
              and (scale is None or isinstance(scale, Tensor)) and isinstance(shape, (list, tuple))
              and all(isinstance(s, int) for s in shape) and isinstance(meta, dict)
              and isinstance(extra, dict) and all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in extra.items()))
        if not ok:
            raise ArtifactError("malformed tensor record (wrong field types)")
        return cls(scheme, data, scale, dtype, tuple(shape), dict(meta), dict(extra))


QuantizeFn = Callable[[str, Tensor], QTensor | None]
DequantizeFn = Callable[[QTensor], Tensor]


def _deq_passthrough(q: QTensor) -> Tensor:
    return q.data.to(q.torch_dtype()).contiguous()


def _deq_scaled(q: QTensor) -> Tensor:
    """Codes times the scale: one per row ("*_per_row", along the first dimension) or one per tensor."""
    if q.scale is None:
        raise ArtifactError(f"{q.scheme} tensor record has no scale")
    per_row = q.scheme.endswith("_per_row")
    scale = q.scale.to(torch.float32)
    scale = scale.view(q.data.shape[0], *([1] * (q.data.ndim - 1))) if per_row else scale.reshape(())
    return (q.data.float() * scale).to(q.torch_dtype()).contiguous()


# The core's schemes (read-only: a plugin adds its own through `pg_dequantizers`, per run).
# intk: sub-int8 codes (int2..int7, meta "bits") in int8 containers, dequantized as int8.
SCHEMES: Mapping[str, DequantizeFn] = MappingProxyType({"passthrough": _deq_passthrough, **dict.fromkeys(
    ("int8_per_row", "int8_per_tensor", "intk_per_row", "intk_per_tensor"), _deq_scaled)})


def quantize_state_dict(state_dict: Mapping[str, Tensor], quantizers: Sequence[QuantizeFn],
                        schemes: Mapping[str, DequantizeFn] | None = None) -> dict[str, QTensor]:
    """For each tensor the first quantizer that returns a QTensor wins (none: a ValueError naming the tensor).
    Every record's scheme must have a dequantizer in `schemes` (the run's; the core's by default)."""
    schemes = SCHEMES if schemes is None else schemes
    out: dict[str, QTensor] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        q = next((q for q in (fn(name, t) for fn in quantizers) if q is not None), None)
        if q is None:
            raise ValueError(f"tensor {name!r}: no quantizer returned a QTensor")
        if not isinstance(q, QTensor):
            raise TypeError(f"quantizer returned {type(q).__name__} for {name!r}, expected QTensor or None")
        if q.scheme not in schemes:
            raise ValueError(f"tensor {name!r}: scheme {q.scheme!r} has no dequantizer (a plugin supplies its "
                             f"own through pg_dequantizers)")
        out[name] = q
    return out


def dequantize_state_dict(qstate: Mapping[str, QTensor],
                          schemes: Mapping[str, DequantizeFn] | None = None) -> dict[str, Tensor]:
    return {name: q.dequantize(schemes) for name, q in qstate.items()}


# --- codecs ----------------------------------------------------------------------------------------
class Codec(Protocol):
    """Compresses one byte stream. `name` (and the optional `params`, a JSON dict the decoder needs, e.g.
    {"byte_shuffle": 2}) go to the header and are read after `compress`, so a codec that picks among others
    names its choice. With `params`, `configured(params) -> Codec` is the decoder for those params (an
    ArtifactError for params it does not know). Optional `codecs()`: the codecs whose names it may write."""

    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, max_size: int = MAX_DECOMPRESSED) -> bytes: ...


def decoders_of(*writers: Any) -> dict[str, Any]:
    """name -> decoder for everything the run's codec and state codec may write: each writer under its name
    (a state codec's is the header's "layout"), and the codecs each lists in an optional `codecs()`."""
    out: dict[str, Any] = {}
    todo = [w for w in writers if w is not None]
    while todo:
        writer = todo.pop()
        out[writer.name] = writer
        todo += getattr(writer, "codecs", list)()
    return out


# --- state codecs: the quantized state <-> byte streams ----------------------------------------------
@dataclass
class Stream:
    """One part of an artifact payload: its raw bytes and the codec that compresses them (None: the
    run's codec from `pg_codec`). `label` names it in the header and in errors."""

    label: str
    data: bytes
    codec: Codec | None = None


class StateCodec(Protocol):
    """Writes the quantized state as byte streams plus a JSON manifest, and back (the contract:
    `core.hookspecs.pg_state_codec`). Optional `codecs()` lists the codecs its streams use (`decoders_of`)."""

    name: str

    def encode(self, qstate: Mapping[str, QTensor]) -> tuple[list[Stream], dict[str, Any]]: ...

    def decode(self, raws: Sequence[bytes], manifest: Mapping[str, Any]) -> dict[str, QTensor]: ...


def save_records(qstate: Mapping[str, QTensor]) -> bytes:
    """torch.save of {ARTIFACT_KEY: version, name: record state}, largest payloads first."""
    if ARTIFACT_KEY in qstate:
        raise ValueError(f"tensor name {ARTIFACT_KEY!r} is reserved")
    # Largest payloads first: keeps the small passthrough tensors out from between the int8 blocks,
    # which measurably helps zlib (the state-dict order costs ~15 KB on the baseline model).
    order = sorted(qstate, key=lambda n: -qstate[n].payload_bytes)
    obj = {ARTIFACT_KEY: 1, **{name: qstate[name].to_state() for name in order}}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_records(raw: bytes, where: str = "artifact") -> dict[str, QTensor]:
    """The inverse of `save_records`, with `torch.load(weights_only=True)`; errors are one line."""
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ArtifactError(f"{where}: torch.load failed ({type(exc).__name__}: {msg})") from exc
    if not isinstance(obj, dict) or obj.get(ARTIFACT_KEY) != 1:
        raise ArtifactError(f"{where}: payload is not a pgolf state (no {ARTIFACT_KEY} marker)")
    records: dict[str, QTensor] = {}
    for tname, state in ((k, v) for k, v in obj.items() if k != ARTIFACT_KEY):
        try:
            records[tname] = QTensor.from_state(state)
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: tensor {tname!r}: {exc}") from exc
    return records


# --- artifact --------------------------------------------------------------------------------------
def encode_artifact(qstate: Mapping[str, QTensor], codec: Codec, quantizer_name: str,
                    state_codec: StateCodec | None = None) -> bytes:
    """MAGIC | u16 version | u32 header length | JSON header | the compressed streams, concatenated.
    `state_codec` splits `qstate` into streams, each compressed with its own codec or `codec` (none: the "torch"
    layout, one `save_records` stream). The header's "codec" is the stream's codec for the torch layout, else
    the layout's name; "raw_bytes"/"payload_bytes" are totals over the streams."""
    if state_codec is None:
        layout, (streams, manifest) = "torch", ([Stream("state", save_records(qstate))], {})
    else:
        layout, (streams, manifest) = state_codec.name, state_codec.encode(qstate)
    entries, payloads = [], []
    for st in streams:
        use = codec if st.codec is None else st.codec
        payload = use.compress(st.data)
        entry: dict[str, Any] = {"label": st.label, "codec": use.name, "raw_bytes": len(st.data),
                                 "payload_bytes": len(payload), "raw_sha256": hashlib.sha256(st.data).hexdigest()}
        if params := getattr(use, "params", None):
            entry["codec_params"] = dict(params)
        entries.append(entry)
        payloads.append(payload)
    label = entries[0]["codec"] if layout == "torch" else layout
    header = {"format": FORMAT_VERSION, "layout": layout, "codec": label, "quantizer": quantizer_name,
              "payload_bytes": sum(len(p) for p in payloads), "raw_bytes": sum(e["raw_bytes"] for e in entries),
              "streams": entries, "manifest": manifest}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return MAGIC + _PREFIX.pack(FORMAT_VERSION, len(head)) + head + b"".join(payloads)


def _streams_of(header: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The header's stream entries, each field type-checked, their sizes adding up to the totals."""
    streams = header.get("streams")
    if not isinstance(streams, list) or not streams:
        raise ArtifactError(f"{where}: corrupt header (no streams list)")
    for i, st in enumerate(streams):
        ok = (isinstance(st, dict) and isinstance(st.get("codec"), str) and isinstance(st.get("label"), str)
              and isinstance(st.get("raw_bytes"), int) and isinstance(st.get("payload_bytes"), int)
              and st["raw_bytes"] >= 0 and st["payload_bytes"] >= 0
              and isinstance(st.get("codec_params", {}), dict) and isinstance(st.get("raw_sha256", ""), str))
        if not ok:
            raise ArtifactError(f"{where}: corrupt header (stream {i}: expected label, codec, raw_bytes, "
                                f"payload_bytes, raw_sha256)")
    for key in ("payload_bytes", "raw_bytes"):
        if sum(st[key] for st in streams) != header[key]:
            raise ArtifactError(f"{where}: corrupt header (stream sizes do not add up to {key})")
    return streams


def parse_header(blob: bytes, where: str = "artifact") -> tuple[dict[str, Any], int]:
    """(header, payload offset), checking magic, version, header and payload length."""
    if not blob.startswith(MAGIC):
        raise ArtifactError(f"{where}: not a pgolf artifact (bad magic)")
    start = len(MAGIC) + _PREFIX.size
    if len(blob) < start:
        raise ArtifactError(f"{where}: truncated header ({len(blob)} bytes)")
    version, hlen = _PREFIX.unpack_from(blob, len(MAGIC))
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{where}: unsupported artifact version {version} (expected {FORMAT_VERSION})")
    if len(blob) < start + hlen:
        raise ArtifactError(f"{where}: truncated header ({len(blob) - start} of {hlen} header bytes)")
    try:
        header = json.loads(blob[start:start + hlen].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a huge integer, nesting past the stack
        raise ArtifactError(f"{where}: corrupt header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{where}: corrupt header (no format {FORMAT_VERSION} object)")
    if not isinstance(header.get("payload_bytes"), int) or not isinstance(header.get("raw_bytes"), int):
        raise ArtifactError(f"{where}: corrupt header (payload_bytes/raw_bytes missing)")
    got, want = len(blob) - start - hlen, header["payload_bytes"]
    if got < want:
        raise ArtifactError(f"{where}: truncated payload ({got} of {want} bytes)")
    if got > want:
        raise ArtifactError(f"{where}: {got - want} unexpected bytes after the payload")
    return header, start + hlen


def _resolve_codec(name: str, codecs: Mapping[str, Any] | None, where: str,
                   params: Mapping[str, Any] | None = None) -> Codec:
    table = {k: v for k, v in (codecs or {}).items() if hasattr(v, "decompress")}
    if name not in table:
        raise ArtifactError(f"{where}: unknown codec {name!r} (known: {', '.join(sorted(table))})")
    codec = table[name]
    configured = getattr(codec, "configured", None)  # the header's parameters decide, none included
    if not callable(configured):
        if params:
            raise ArtifactError(f"{where}: codec {name!r} takes no parameters, header has {dict(params)}")
        return codec
    try:
        return configured(dict(params or {}))
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from exc


def decode_artifact(blob: bytes, codecs: Mapping[str, Any] | None = None, max_size: int = MAX_DECOMPRESSED,
                    where: str = "artifact") -> tuple[dict[str, QTensor], dict[str, Any]]:
    """(records, header) from artifact bytes; every failure is a one-line ArtifactError. `codecs` maps
    names to decoders: codecs by the streams' names, state codecs by the header's "layout" (`decoders_of`);
    `max_size` caps the decompressed bytes of all streams together."""
    header, offset = parse_header(blob, where)
    layouts = {k: v for k, v in (codecs or {}).items() if hasattr(v, "decode")}
    name = header.get("layout", "torch")
    if name != "torch" and (not isinstance(name, str) or name not in layouts):
        known = ", ".join(["torch", *layouts])
        raise ArtifactError(f"{where}: unknown layout {name!r} (this run decodes: {known})")
    streams = _streams_of(header, where)
    if header["raw_bytes"] > max_size:
        raise ArtifactError(f"{where}: declared raw size {header['raw_bytes']} exceeds the size cap "
                            f"of {max_size} bytes")
    raws: list[bytes] = []
    for st in streams:
        here = f"{where}: stream {st['label']!r}"
        codec = _resolve_codec(st["codec"], codecs, here, st.get("codec_params"))
        chunk = blob[offset:offset + st["payload_bytes"]]
        offset += st["payload_bytes"]
        try:
            raw = codec.decompress(chunk, max_size=st["raw_bytes"])
        except ArtifactError as exc:
            raise ArtifactError(f"{here}: {exc}") from exc
        except Exception as exc:
            raise ArtifactError(f"{here}: {st['codec']} decompression failed ({type(exc).__name__}: {exc})") from exc
        if len(raw) != st["raw_bytes"]:
            raise ArtifactError(f"{here}: payload decompressed to {len(raw)} bytes, header says {st['raw_bytes']}")
        digest = st.get("raw_sha256")
        if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
            raise ArtifactError(f"{here}: payload checksum mismatch (corrupt artifact)")
        raws.append(raw)
    manifest = header.get("manifest", {})
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: corrupt header (manifest is not an object)")
    if name == "torch":
        if len(raws) != 1:
            raise ArtifactError(f"{where}: layout 'torch' expects 1 stream, header lists {len(raws)}")
        return load_records(raws[0], f"{where}: layout 'torch': stream 'state'"), header
    try:
        return layouts[name].decode(raws, manifest), header
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: layout {name!r}: {exc}") from exc


@dataclass
class ExportResult:
    """The artifact bytes, the records in them, their serialized size before compression and their labels."""

    blob: bytes
    qstate: dict[str, QTensor]
    raw_bytes: int
    quantizer_name: str = "int8"
    codec_name: str = "zlib"

    @property
    def payload_bytes(self) -> int:
        return sum(q.payload_bytes for q in self.qstate.values())


@dataclass
class RefineContext:
    """What `pg_refine_quantized` may use: `size_of(qstate)`, the artifact's bytes (header included) with the
    run's codec; the counted `code_bytes`; the run's `config` and the `float_state` that was quantized."""

    size_of: Callable[[Mapping[str, QTensor]], int]
    code_bytes: int
    config: Any = None
    float_state: Mapping[str, Tensor] | None = None


def artifact_sizer(codec: Codec, quantizer_name: str = "int8",
                   state_codec: StateCodec | None = None) -> Callable[[Mapping[str, QTensor]], int]:
    """size_of for RefineContext: the encoded artifact's length with `codec` (and `state_codec`)."""
    return lambda qstate: len(encode_artifact(qstate, codec, quantizer_name, state_codec))


def quantizer_label(qstate: Mapping[str, QTensor]) -> str:
    """"intK" for the narrowest int-k width that holds the most parameters (PR #315 logs say "int6"), else int8."""
    params: dict[int, int] = {}
    for q in qstate.values():
        bits = q.meta.get("bits")
        if isinstance(bits, int) and bits < 8:
            params[bits] = params.get(bits, 0) + int(q.data.numel())
    return f"int{max(params, key=lambda b: (params[b], -b))}" if params else "int8"


def export_state_dict(state_dict: Mapping[str, Tensor], quantizers: Sequence[QuantizeFn], codec: Codec,
                      quantizer_name: str | None = "int8", refine: Callable[[dict[str, QTensor]], None] | None = None,
                      schemes: Mapping[str, DequantizeFn] | None = None,
                      state_codec: StateCodec | None = None) -> ExportResult:
    """Quantize, refine in place (optional, e.g. pruning), serialize (`state_codec`, default torch.save) and
    compress into artifact bytes. `quantizer_name=None` names it by `quantizer_label`."""
    qstate = quantize_state_dict(state_dict, quantizers, schemes)
    if refine is not None:
        refine(qstate)
    if quantizer_name is None:
        quantizer_name = quantizer_label(qstate)
    blob = encode_artifact(qstate, codec, quantizer_name, state_codec)
    header, _ = parse_header(blob)
    return ExportResult(blob=blob, qstate=qstate, raw_bytes=header["raw_bytes"],
                        quantizer_name=quantizer_name, codec_name=header["codec"])


def _records_equal(a: QTensor, b: QTensor) -> bool:
    """Same scheme, dtype, shape and metadata, and every tensor (codes, scale, extras) bit-identical."""
    key = lambda q: (q.scheme, q.dtype, tuple(q.shape), q.meta, q.scale is None, q.extra.keys())
    if key(a) != key(b):
        return False
    pairs = [(a.data, b.data), *([(a.scale, b.scale)] if a.scale is not None else []),
             *((a.extra[k], b.extra[k]) for k in a.extra)]
    bits = lambda t: t.contiguous().reshape(-1).view(torch.uint8)
    return all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(bits(x), bits(y)) for x, y in pairs)


def verify_round_trip(result: ExportResult, codecs: Mapping[str, Codec] | None = None, max_size: int = MAX_DECOMPRESSED,
                      schemes: Mapping[str, DequantizeFn] | None = None) -> dict[str, Tensor]:
    """Decode the artifact bytes, require every record bit-identical (codes, scales, extras, metadata) to the
    in-memory quantization, and return the dequantized weights."""
    decoded, _ = decode_artifact(result.blob, codecs, max_size)
    if decoded.keys() != result.qstate.keys():
        diff = sorted(set(decoded) ^ set(result.qstate))
        raise ArtifactError(f"round trip changed the tensor names: {diff[:5]}")
    for name, want in result.qstate.items():
        if not _records_equal(decoded[name], want):
            raise ArtifactError(f"round trip mismatch for tensor {name!r} (the decoded record differs)")
    return dequantize_state_dict(decoded, schemes)
