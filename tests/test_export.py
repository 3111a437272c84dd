"""Tests for core.export and its default quantizer (plugins.quant_int8, the baseline int8 rule): quantizer
precedence, codecs, the artifact format."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import core.run
from core import export as ex
from core.run import write_atomic
from pgolf.size import size_report
from plugins.lib import codecs, quant
from plugins.lib.decoders import read_artifact
from plugins.quant_int8 import INT8_CLIP_Q, int8_quantize, quantile_flat

Q64 = 99.99984 / 100.0  # the baseline's INT8_CLIP_PERCENTILE, written out independently
Q32 = np.float32(Q64)  # torch.quantile computes the rank in the input dtype (float32)


def _matrix(dtype: torch.dtype, rows: int = 300, cols: int = 1000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    row_std = torch.logspace(-3, 0.5, rows)[:, None]  # small rows hit the 1/127 scale floor
    w = torch.randn(rows, cols, generator=g) * row_std
    w[7] = 0.0
    w[11, 3] = 50.0  # an outlier far above the percentile clip
    return w.to(dtype)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


# --- the int8 rule against an independent numpy implementation ------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_per_row_matches_numpy_reference(dtype: torch.dtype) -> None:
    w = _matrix(dtype)
    q = int8_quantize("blocks.0.mlp.fc.weight", w)
    assert q.scheme == "int8_per_row" and q.data.dtype == torch.int8 and q.scale.dtype == torch.float16
    assert q.dtype == str(dtype).removeprefix("torch.") and q.shape == tuple(w.shape)

    a = w.float().numpy()
    clip = np.quantile(np.abs(a), Q32, axis=1, method="linear")
    assert clip.dtype == np.float32
    scale = np.maximum(clip / np.float32(127.0), np.float32(1.0 / 127.0))
    codes = np.clip(np.round(np.clip(a, -clip[:, None], clip[:, None]) / scale[:, None]), -127, 127)
    assert (np.abs(a) > clip[:, None]).any() and (scale == np.float32(1.0 / 127.0)).any()
    np.testing.assert_array_equal(q.data.numpy(), codes.astype(np.int8))
    np.testing.assert_array_equal(q.scale.numpy(), scale.astype(np.float16))

    deq = codes.astype(np.int8).astype(np.float32) * scale.astype(np.float16).astype(np.float32)[:, None]
    expected = torch.from_numpy(deq).to(dtype)
    out = q.dequantize()
    assert out.dtype == dtype and out.shape == w.shape
    np.testing.assert_array_equal(_bits(out), _bits(expected))

    # The same rule in float64 (numpy's default percentile) agrees up to rare one-step rounding flips.
    a64 = a.astype(np.float64)
    clip64 = np.quantile(np.abs(a64), Q64, axis=1, method="linear")
    np.testing.assert_allclose(clip64, clip, rtol=1e-4)
    s64 = np.maximum(clip64 / 127.0, 1.0 / 127.0)
    codes64 = np.clip(np.round(np.clip(a64, -clip64[:, None], clip64[:, None]) / s64[:, None]), -127, 127)
    diff = np.abs(codes64 - q.data.numpy().astype(np.float64))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("shape", [(70_000,), (3, 120, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_per_tensor_matches_numpy_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    w = (torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    q = int8_quantize("some.vector", w)
    assert q.scheme == "int8_per_tensor" and q.scale is not None and q.scale.ndim == 0
    a = w.float().numpy().reshape(-1)
    clip = float(np.quantile(np.abs(a), Q32, method="linear"))
    scale = np.float32(clip / 127.0)
    codes = np.clip(np.round(np.clip(a, -clip, clip) / scale), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(q.data.numpy().reshape(-1), codes)
    assert float(q.scale) == float(scale)
    expected = torch.from_numpy((codes.astype(np.float32) * scale).reshape(shape)).to(dtype)
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(expected))


def test_per_tensor_zero_tensor_uses_unit_scale() -> None:
    q = int8_quantize("zeros", torch.zeros(70_000))
    assert float(q.scale) == 1.0 and not q.data.any() and torch.equal(q.dequantize(), torch.zeros(70_000))


@pytest.mark.parametrize("n", [65_537, 200_001, 1_000_003])
def test_manual_quantile_equals_torch_quantile(n: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    want = float(torch.quantile(x, INT8_CLIP_Q).item())
    assert quantile_flat(x, INT8_CLIP_Q, force_manual=True) == want


def test_small_float_tensors_pass_through() -> None:
    g = torch.Generator().manual_seed(3)
    w32 = torch.randn(256, 256, generator=g)  # exactly 65,536 elements: still passthrough
    q = int8_quantize("blocks.0.attn.c_q.weight", w32)
    assert q.scheme == "passthrough" and q.data.dtype == torch.float16 and q.scale is None
    out = q.dequantize()
    assert out.dtype == torch.float32 and torch.equal(out, w32.half().float())

    wbf = torch.randn(64, generator=g).bfloat16()
    q = int8_quantize("blocks.0.norm.weight", wbf)
    assert q.data.dtype == torch.float16 and q.dequantize().dtype == torch.bfloat16
    assert torch.equal(q.dequantize(), wbf.half().bfloat16())

    w16 = torch.randn(64, generator=g).half()
    assert torch.equal(int8_quantize("x", w16).dequantize(), w16)

    assert int8_quantize("big", torch.randn(65_537, generator=g)).scheme == "int8_per_tensor"


CONTROL_NAMES = ["blocks.3.attn_scale", "blocks.0.attn.q_gain", "skip_weights", "blocks.1.resid_mix"]


@pytest.mark.parametrize("name", CONTROL_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_control_tensors_kept_fp32_and_restored(name: str, dtype: torch.dtype) -> None:
    t = (torch.randn(2, 512, generator=torch.Generator().manual_seed(4)) * 1e-4 + 1.0).to(dtype)
    q = int8_quantize(name, t)
    assert q.scheme == "passthrough" and q.data.dtype == torch.float32
    out = q.dequantize()
    assert out.dtype == dtype and torch.equal(out, t)
    assert int8_quantize(name, t, keep_fp32_patterns=()).data.dtype == torch.float16


@pytest.mark.parametrize("t", [torch.arange(-5, 100_000, dtype=torch.int64), torch.tensor([True, False]),
                               torch.randint(0, 255, (300, 300), dtype=torch.uint8)])
def test_non_float_passthrough_exact(t: torch.Tensor) -> None:
    q = int8_quantize("buf", t)
    assert q.scheme == "passthrough" and q.data.dtype == t.dtype
    out = q.dequantize()
    assert out.dtype == t.dtype and torch.equal(out, t)


# --- quantizer precedence and stats ----------------------------------------------------------------
def _negate(name: str, t: torch.Tensor) -> ex.QTensor:
    return ex.QTensor("test_negated", -t.float(), None, str(t.dtype).removeprefix("torch."), tuple(t.shape),
                      {"by": "test"})


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"tok_emb.weight": torch.randn(600, 128, generator=g),
            "blocks.0.mlp.fc.weight": torch.randn(512, 256, generator=g),
            "blocks.0.attn.c_q.weight": torch.randn(300, 256, generator=g),
            "blocks.0.attn_scale": torch.ones(256), "step": torch.tensor(7)}


NEGATED_SCHEMES = {**ex.SCHEMES, "test_negated": lambda q: (-q.data).to(q.torch_dtype())}
ZLIB = {"zlib": codecs.ZlibCodec()}  # the decoders of a default (zlib) artifact


def test_quantizer_precedence() -> None:
    calls: list[str] = []

    def mlp_only(name: str, t: torch.Tensor) -> ex.QTensor | None:
        calls.append(name)
        return _negate(name, t) if ".mlp." in name else None

    def never(name: str, t: torch.Tensor) -> ex.QTensor | None:
        raise AssertionError("the first quantizer answered; the second must not be asked")

    def declines(name: str, t: torch.Tensor) -> None:
        return None

    sd = _state()
    qstate = ex.quantize_state_dict(sd, [declines, mlp_only, int8_quantize], NEGATED_SCHEMES)
    assert qstate["blocks.0.mlp.fc.weight"].scheme == "test_negated"
    assert qstate["blocks.0.attn.c_q.weight"].scheme == "int8_per_row"
    assert qstate["blocks.0.attn_scale"].scheme == "passthrough" and qstate["step"].scheme == "passthrough"
    assert calls == list(sd)
    with pytest.raises(AssertionError):
        ex.quantize_state_dict(sd, [never])
    with pytest.raises(ValueError, match="tensor 'blocks.0.attn.c_q.weight': no quantizer returned a QTensor"):
        ex.quantize_state_dict({"blocks.0.attn.c_q.weight": sd["blocks.0.attn.c_q.weight"]}, [declines, mlp_only])
    mlp = {"blocks.0.mlp.fc.weight": sd["blocks.0.mlp.fc.weight"]}
    qstate_mlp = ex.quantize_state_dict(mlp, [mlp_only, never], NEGATED_SCHEMES)
    assert torch.equal(qstate_mlp["blocks.0.mlp.fc.weight"].dequantize(NEGATED_SCHEMES),
                       sd["blocks.0.mlp.fc.weight"])
    assert sorted(q.scheme for q in qstate.values()) == ["int8_per_row"] * 2 + ["passthrough"] * 2 + ["test_negated"]


def test_quantizer_contract_errors() -> None:
    sd = {"w": torch.randn(300, 300)}
    with pytest.raises(TypeError, match="'w'"):
        ex.quantize_state_dict(sd, [lambda n, t: t])
    with pytest.raises(ValueError, match="has no dequantizer"):
        ex.quantize_state_dict(sd, [_negate])


def test_payload_bytes() -> None:
    result = ex.export_state_dict(_state(), [int8_quantize], codecs.ZlibCodec())
    assert len(result.qstate) == 5
    # int8 codes + one fp16 scale per row for the matrices, fp32 for the control vector, int64 step
    matrices = 600 * (128 + 2) + 512 * (256 + 2) + 300 * (256 + 2)
    assert result.payload_bytes == matrices + 256 * 4 + 8
    assert {n: quant.tensor_family(n) for n in result.qstate} == {
        "tok_emb.weight": "embed", "blocks.0.mlp.fc.weight": "mlp", "blocks.0.attn.c_q.weight": "attn",
        "blocks.0.attn_scale": "control", "step": "other"}


# --- codecs ----------------------------------------------------------------------------------------
def _codec(name: str) -> ex.Codec:
    if name in ("zstd", "brotli"):
        pytest.importorskip("zstandard" if name == "zstd" else "brotli")
    return codecs.CODECS[name]()


CODEC_NAMES = ["zlib", "lzma", "zstd", "brotli"]
SAMPLE = bytes(range(256)) * 50 + random.Random(0).randbytes(3000) + b"\x00" * 20_000


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_round_trip(name: str) -> None:
    codec = _codec(name)
    assert codec.name == name
    blob = codec.compress(SAMPLE)
    assert len(blob) < len(SAMPLE)
    assert codec.decompress(blob) == SAMPLE
    assert codec.decompress(blob, max_size=len(SAMPLE)) == SAMPLE
    assert codec.decompress(codec.compress(b"")) == b""


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_bomb_guard(name: str) -> None:
    codec = _codec(name)
    bomb = codec.compress(b"\x00" * (4 << 20))
    assert len(bomb) < 20_000
    with pytest.raises(ex.ArtifactError, match="size cap exceeded"):
        codec.decompress(bomb, max_size=1 << 20)
    with pytest.raises(ex.ArtifactError, match="size cap exceeded"):
        codec.decompress(codec.compress(SAMPLE), max_size=len(SAMPLE) - 1)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_truncated_input_fails(name: str) -> None:
    codec = _codec(name)
    blob = codec.compress(SAMPLE)
    for cut in (len(blob) // 2, len(blob) - 1):
        with pytest.raises(ex.ArtifactError, match="truncated"):
            codec.decompress(blob[:cut])
    with pytest.raises(ex.ArtifactError, match="trailing|corrupt"):
        codec.decompress(blob + codec.compress(b"more"))
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0xFF
    flipped[len(blob) // 2] ^= 0xFF
    if name == "brotli":  # no checksum in the format: either the decoder fails or the output differs
        try:                 # (and then the artifact's raw_sha256 catches it)
            assert codec.decompress(bytes(flipped)) != SAMPLE
        except ex.ArtifactError as exc:
            assert "corrupt" in str(exc)
        return
    with pytest.raises(ex.ArtifactError, match="corrupt"):
        codec.decompress(bytes(flipped))


def test_artifact_checksum_catches_silent_corruption() -> None:
    codec = _codec("brotli")
    blob = ex.export_state_dict(_state(), [int8_quantize], codec).blob
    _, offset = ex.parse_header(blob)
    flipped = bytearray(blob)
    flipped[offset + (len(blob) - offset) // 2] ^= 0x01
    msg = _error(bytes(flipped))
    assert "checksum mismatch" in msg or "brotli" in msg


def test_zstd_bomb_without_declared_size() -> None:
    zstandard = pytest.importorskip("zstandard")
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=False)
    with io.BytesIO() as sink:
        with cctx.stream_writer(sink, closefd=False) as writer:
            writer.write(b"\x00" * (4 << 20))
        bomb = sink.getvalue()
    assert zstandard.get_frame_parameters(bomb).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(ex.ArtifactError, match="size cap exceeded"):
        codecs.ZstdCodec().decompress(bomb, max_size=1 << 20)
    assert codecs.ZstdCodec().decompress(bomb) == b"\x00" * (4 << 20)


def test_brotli_fallback_is_capped() -> None:
    brotli = pytest.importorskip("brotli")
    blob = brotli.compress(b"\x00" * (4 << 20))
    assert codecs._brotli_chunked(brotli.Decompressor(), brotli.compress(SAMPLE), len(SAMPLE)) == SAMPLE
    with pytest.raises(ex.ArtifactError, match="size cap"):
        codecs._brotli_chunked(brotli.Decompressor(), blob, 1 << 20)


# --- the artifact ----------------------------------------------------------------------------------
class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(1000, 80)
        self.proj = nn.Linear(80, 80)
        self.lm_head = nn.Linear(80, 1000, bias=False)
        self.attn_scale = nn.Parameter(torch.rand(80))
        self.register_buffer("counter", torch.arange(10))


def _model() -> TinyModel:
    torch.manual_seed(0)
    m = TinyModel()
    m.tok_emb.to(torch.bfloat16)
    return m


@pytest.mark.parametrize("name", ["zlib", "lzma", "zstd", "brotli"])
def test_artifact_round_trip(name: str, tmp_path: Path) -> None:
    codec = _codec(name)
    model = _model()
    sd = model.state_dict()
    result = ex.export_state_dict(sd, [int8_quantize], codec, quantizer_name="int8")
    assert result.blob.startswith(ex.MAGIC)
    assert result.codec_name == name
    header, offset = ex.parse_header(result.blob)
    assert header["format"] == 2 and header["codec"] == name and header["quantizer"] == "int8"
    assert header["layout"] == "torch" and [s["codec"] for s in header["streams"]] == [name]
    assert header["payload_bytes"] == len(result.blob) - offset and header["raw_bytes"] == result.raw_bytes

    path = tmp_path / "final_model.ptz"
    assert write_atomic(path, result.blob) == len(result.blob) == path.stat().st_size
    records, header2 = read_artifact(path, {name: codec})
    assert header2 == header
    restored = ex.verify_round_trip(result, {name: codec})
    from_file = ex.dequantize_state_dict(records)
    expected = ex.dequantize_state_dict(ex.quantize_state_dict(sd, [int8_quantize]))
    assert set(restored) == set(from_file) == set(sd)
    for k, t in expected.items():
        assert restored[k].dtype == sd[k].dtype == from_file[k].dtype
        np.testing.assert_array_equal(_bits(restored[k]), _bits(t))
        np.testing.assert_array_equal(_bits(from_file[k]), _bits(t))
    assert torch.equal(restored["counter"], sd["counter"])
    assert torch.equal(restored["attn_scale"], sd["attn_scale"])
    assert (restored["lm_head.weight"] - sd["lm_head.weight"]).abs().max() < 0.02

    fresh = TinyModel()
    fresh.tok_emb.to(torch.bfloat16)
    fresh.load_state_dict(restored, strict=True)

    raw = codec.decompress(result.blob[offset:])
    obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    assert obj[ex.ARTIFACT_KEY] == 1 and obj["lm_head.weight"]["scheme"] == "int8_per_row"


def test_zlib_artifact_close_to_baseline_size() -> None:
    sd = _model().state_dict()
    result = ex.export_state_dict(sd, [int8_quantize], codecs.ZlibCodec())
    quant = {n: q for n, q in result.qstate.items() if q.scheme != "passthrough"}
    baseline_layout = {  # the official script's int8 object, built from the same codes
        "__quant_format__": "int8_clean_per_row_v1",
        "quantized": {n: q.data for n, q in quant.items()}, "scales": {n: q.scale for n, q in quant.items()},
        "dtypes": {n: q.dtype for n, q in quant.items()},
        "passthrough": {n: q.data for n, q in result.qstate.items() if q.scheme == "passthrough"},
        "qmeta": {n: {"scheme": "per_row", "axis": 0} for n in quant},
        "passthrough_orig_dtypes": {"proj.weight": "float32", "proj.bias": "float32"},
    }
    buf = io.BytesIO()
    torch.save(baseline_layout, buf)
    assert len(result.blob) < len(zlib.compress(buf.getvalue(), 9)) + 400


def test_plugin_scheme_survives_the_artifact() -> None:
    sd = {"blocks.0.mlp.fc.weight": torch.randn(300, 300)}
    with pytest.raises(ValueError, match="scheme 'test_negated' has no dequantizer"):
        ex.export_state_dict(sd, [_negate], codecs.ZlibCodec(), quantizer_name="negated")
    result = ex.export_state_dict(sd, [_negate], codecs.ZlibCodec(), quantizer_name="negated", schemes=NEGATED_SCHEMES)
    restored = ex.verify_round_trip(result, ZLIB, schemes=NEGATED_SCHEMES)
    assert torch.equal(restored["blocks.0.mlp.fc.weight"], sd["blocks.0.mlp.fc.weight"])
    records, header = ex.decode_artifact(result.blob, ZLIB)
    assert header["quantizer"] == "negated" and records["blocks.0.mlp.fc.weight"].meta == {"by": "test"}


def _blob(header: dict, payload: bytes, version: int = 2) -> bytes:
    head = json.dumps(header).encode()
    return ex.MAGIC + struct.pack("<HI", version, len(head)) + head + payload


def _raw_header(raw: bytes, payload: bytes, codec: str = "zlib") -> dict:
    stream = {"label": "state", "codec": codec, "raw_bytes": len(raw), "payload_bytes": len(payload),
              "raw_sha256": hashlib.sha256(raw).hexdigest()}
    return {"format": 2, "layout": "torch", "codec": codec, "quantizer": "int8", "payload_bytes": len(payload),
            "raw_bytes": len(raw), "streams": [stream]}


def _error(blob: bytes, codecs: dict | None = None, **kw: object) -> str:
    with pytest.raises(ex.ArtifactError) as info:
        ex.decode_artifact(blob, ZLIB if codecs is None else codecs, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


class Evil:
    pass


def test_artifact_errors() -> None:
    blob = ex.export_state_dict(_model().state_dict(), [int8_quantize], codecs.ZlibCodec()).blob
    header, offset = ex.parse_header(blob)
    payload = blob[offset:]

    assert "not a pgolf artifact" in _error(b"PK\x03\x04" + blob[4:])
    assert "not a pgolf artifact" in _error(zlib.compress(b"x"))
    assert "truncated header" in _error(blob[:8])
    assert "truncated header" in _error(blob[: offset - 5])
    assert "truncated payload" in _error(blob[:-10])
    assert "unexpected bytes" in _error(blob + b"\x00")
    assert "unsupported artifact version 3" in _error(_blob(header, payload, version=3))
    assert "unsupported artifact version 1" in _error(_blob(header, payload, version=1))
    assert "corrupt header (no format 2 object)" in _error(_blob({**header, "format": 1}, payload))
    bad_stream = [{**header["streams"][0], "codec": "nope"}]
    assert "stream 'state': unknown codec 'nope'" in _error(_blob({**header, "streams": bad_stream}, payload, 2))
    assert "unknown layout 'weird'" in _error(_blob({**header, "layout": "weird"}, payload, 2))
    odd = [{**header["streams"][0], "raw_bytes": header["raw_bytes"] + 1}]
    assert "do not add up" in _error(_blob({**header, "streams": odd}, payload, 2))
    assert "corrupt header" in _error(blob[:offset - 3] + b"###" + payload)

    flipped = bytearray(blob)
    for i in range(offset + 200, len(flipped), 997):
        flipped[i] ^= 0x5A
    assert "zlib" in _error(bytes(flipped)) or "checksum" in _error(bytes(flipped))

    assert "size cap" in _error(blob, max_size=header["raw_bytes"] - 1)

    raw = b"definitely not a torch file"
    junk = zlib.compress(raw)
    assert "torch.load failed" in _error(_blob(_raw_header(raw, junk), junk))

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    raw = buf.getvalue()
    unmarked = zlib.compress(raw)
    assert "not a pgolf state" in _error(_blob(_raw_header(raw, unmarked), unmarked))

    buf = io.BytesIO()
    torch.save({ex.ARTIFACT_KEY: 1, "w": Evil()}, buf)
    raw = buf.getvalue()
    evil = zlib.compress(raw)
    assert "torch.load failed" in _error(_blob(_raw_header(raw, evil), evil))

    buf = io.BytesIO()
    torch.save({ex.ARTIFACT_KEY: 1, "w": {"scheme": "passthrough"}}, buf)
    raw = buf.getvalue()
    bad = zlib.compress(raw)
    assert "tensor 'w'" in _error(_blob(_raw_header(raw, bad), bad))


def test_minimal_header_without_checksum_decodes() -> None:
    result = ex.export_state_dict(_state(), [int8_quantize], codecs.ZlibCodec())
    header, offset = ex.parse_header(result.blob)
    del header["streams"][0]["raw_sha256"]
    records, got = ex.decode_artifact(_blob(header, result.blob[offset:]), ZLIB)
    assert got == header and torch.equal(records["step"].dequantize(), torch.tensor(7))


def test_codec_mapping_overrides_registry() -> None:
    class Reverse:
        name = "reverse"

        def compress(self, data: bytes) -> bytes:
            return data[::-1]

        def decompress(self, data: bytes, max_size: int = ex.MAX_DECOMPRESSED) -> bytes:
            return data[::-1]

    result = ex.export_state_dict(_state(), [int8_quantize], Reverse())
    assert "unknown codec 'reverse' (known: zlib)" in _error(result.blob)
    restored = ex.verify_round_trip(result, {"reverse": Reverse()})
    assert torch.equal(restored["step"], torch.tensor(7))


def test_verify_round_trip_detects_mismatch() -> None:
    result = ex.export_state_dict(_state(), [int8_quantize], codecs.ZlibCodec())
    result.qstate["blocks.0.attn.c_q.weight"].data[0, 0] += 1
    with pytest.raises(ex.ArtifactError, match="mismatch for tensor 'blocks.0.attn.c_q.weight'"):
        ex.verify_round_trip(result, ZLIB)


def test_read_artifact_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ptz"
    with pytest.raises(ex.ArtifactError, match="nope.ptz"):
        read_artifact(missing)
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ex.ArtifactError, match=r"bad\.ptz: not a pgolf artifact"):
        read_artifact(bad)


def test_write_atomic_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.ptz"
    assert write_atomic(path, b"first") == 5
    assert write_atomic(path, "second!") == 7
    assert path.read_bytes() == b"second!" and os.listdir(tmp_path) == ["model.ptz"]

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(core.run.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"third")
    assert path.read_bytes() == b"second!" and os.listdir(tmp_path) == ["model.ptz"]


def test_size_report() -> None:
    assert size_report(50_000, 15_950_000) == {"code_bytes": 50_000, "model_bytes": 15_950_000,
                                                  "total": 16_000_000, "cap": 16_000_000, "headroom": 0,
                                                  "fits": True}
    over = size_report(50_001, 15_950_000)
    assert over["fits"] is False and over["headroom"] == -1
