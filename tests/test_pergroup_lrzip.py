"""PR #1855's per-group layout with its lrzip group codec (issue #15): the layout against an independent
decoder written from the record, the similarity sort's effect, lrzip through the binary (a stand-in script
when lrzip is not installed, the real one when it is) and the fallback that decodes without it."""

from __future__ import annotations

import os
import stat
import sys
import textwrap

import numpy as np
import pytest
import torch

from core import export as ex
from core.config import ConfigError, resolve
from core.registry import Registry
from plugins.lib import codecs, decoders
from plugins.lib.pergroup import PerGroupStateCodec

pytest.importorskip("brotli")

REG = Registry()


def _int8(t: torch.Tensor) -> ex.QTensor:
    scale = t.abs().amax(dim=-1).clamp_min(1e-6) / 127
    codes = torch.round(t / (scale[..., None] if t.ndim == 2 else scale)).clamp(-127, 127).to(torch.int8)
    return ex.QTensor("int8_per_row" if t.ndim == 2 else "int8_per_tensor", codes,
                      scale.half() if t.ndim == 2 else scale.float(), "float32", tuple(t.shape))


def correlated_state(layers: int = 2, rows: int = 192, cols: int = 64, seed: int = 0) -> dict[str, ex.QTensor]:
    """Rows drawn from 6 prototypes with small noise, shuffled: a row order that sorting can undo."""
    gen = torch.Generator().manual_seed(seed)
    state = {"tok_emb.weight": _int8(torch.randn(rows, cols, generator=gen)),
             "blocks.0.attn_scale": _int8(torch.rand(cols, generator=gen))}
    for i in range(layers):
        protos = torch.randn(6, cols, generator=gen)
        fc = protos[torch.randint(0, 6, (rows,), generator=gen)] + 0.01 * torch.randn(rows, cols, generator=gen)
        state[f"blocks.{i}.mlp.fc.weight"] = _int8(fc)
        state[f"blocks.{i}.attn.c_k.weight"] = _int8(torch.randn(cols // 2, cols, generator=gen))
    return state


def _streams(blob: bytes) -> tuple[dict, dict[str, bytes]]:
    header, off = ex.parse_header(blob)
    out = {}
    for st in header["streams"]:
        codec = decoders.all_decoders()[st["codec"]]
        out[st["label"]] = codec.decompress(blob[off:off + st["payload_bytes"]])
        off += st["payload_bytes"]
    return header, out


def record_decode(header: dict, streams: dict[str, bytes]) -> dict[str, np.ndarray]:
    """Codes per tensor, decoded as PR #1855's `_deserialize_pergroup` does (reshape (cols, rows), transpose,
    index by the inverse of the stored uint16 order), independently of `PerGroupStateCodec.decode`."""
    perms = np.frombuffer(streams.get("perms", b""), dtype=np.uint16)
    off, out = 0, {}
    for group in header["manifest"]["groups"]:
        data = np.frombuffer(streams[f"group:{group['key']}"], dtype=np.int8)
        pos = 0
        for layer, shape in zip(group["layers"], group["shapes"], strict=True):
            name = group["key"] if layer is None else f"blocks.{layer}.{group['key']}"
            n = int(np.prod(shape))
            chunk = data[pos:pos + n].copy()
            pos += n
            if len(shape) == 2:
                rows, cols = shape
                chunk = chunk.reshape(cols, rows).T
                if group["sort"]:
                    perm = perms[off:off + rows]
                    off += rows
                    inv = np.empty_like(perm)
                    inv[perm] = np.arange(rows, dtype=np.uint16)
                    chunk = chunk[inv]
            out[name] = chunk
    return out


def test_grouped_sorted_transposed_layout_decodes_as_the_record_decodes():
    state = correlated_state(layers=3)
    layout = PerGroupStateCodec(group_codec=codecs.LzmaCodec(), rest_codec=codecs.BrotliCodec(lgwin=24),
                                perm_codec=codecs.BrotliCodec())
    blob = ex.encode_artifact(state, codecs.ZlibCodec(), "int8", layout)
    header, streams = _streams(blob)
    grouped = record_decode(header, streams)
    assert set(grouped) == {"tok_emb.weight", *(f"blocks.{i}.{k}" for i in range(3)
                                               for k in ("mlp.fc.weight", "attn.c_k.weight"))}
    for name, codes in grouped.items():
        assert np.array_equal(codes, state[name].data.numpy()), name
    records, _ = ex.decode_artifact(blob, ex.decoders_of(codecs.ZlibCodec(), layout))
    for name, q in state.items():
        assert torch.equal(records[name].data, q.data) and records[name].scheme == q.scheme, name
        assert (q.scale is None and records[name].scale is None) or torch.equal(records[name].scale, q.scale)


def test_similarity_sort_is_applied_and_shrinks_a_correlated_group():
    state = correlated_state(layers=2, rows=256)
    sizes = {}
    for simsort in (("mlp.fc.weight",), ()):
        layout = PerGroupStateCodec(groups=("mlp.fc.weight",), simsort=simsort, group_codec=codecs.LzmaCodec(),
                                    rest_codec=codecs.LzmaCodec(), perm_codec=codecs.LzmaCodec())
        blob = ex.encode_artifact(state, codecs.ZlibCodec(), "int8", layout)
        header, streams = _streams(blob)
        group = next(s for s in header["streams"] if s["label"] == "group:mlp.fc.weight")
        sizes[bool(simsort)] = group["payload_bytes"] + sum(
            s["payload_bytes"] for s in header["streams"] if s["label"] == "perms")
        if simsort:
            order = np.frombuffer(streams["perms"], dtype=np.uint16)[:256]
            assert not np.array_equal(order, np.arange(256)) and sorted(order.tolist()) == list(range(256))
            codes = state["blocks.0.mlp.fc.weight"].data.numpy().astype(int)

            def neighbour_l1(m):
                return np.abs(np.diff(m, axis=0)).sum(axis=1).mean()

            # sorted, neighbouring rows are near-copies (the same prototype), shuffled they are not
            assert neighbour_l1(codes[order.astype(np.int64)]) < 0.2 * neighbour_l1(codes)
    assert sizes[True] < 0.8 * sizes[False], sizes  # the permutation costs less than sorting saves


FAKE_LRZIP = textwrap.dedent("""\
    #!{python}
    # A stand-in for lrzip's command line (-z -L n / -d, -q -f -o OUT IN): the LRZI header, zlib inside.
    import struct, sys, zlib
    args = sys.argv[1:]
    out, inp = args[args.index("-o") + 1], args[-1]
    data = open(inp, "rb").read()
    if "-z" in args:
        blob = b"LRZI\\x00\\x06" + struct.pack("<Q", len(data)) + zlib.compress(data, 9)
    else:
        blob = zlib.decompress(data[14:])
    open(out, "wb").write(blob)
    """)


@pytest.fixture
def fake_lrzip(tmp_path, monkeypatch):
    exe = tmp_path / "bin" / "lrzip"
    exe.parent.mkdir()
    exe.write_text(FAKE_LRZIP.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


def _plugin_layout(**settings):
    plugin = REG.plugins["compress_pergroup"]
    return plugin(plugin.config(**settings)).pg_state_codec(config=None)


def test_lrzip_groups_go_through_the_binary_and_the_header_says_so(fake_lrzip, monkeypatch):
    state = correlated_state()
    layout = _plugin_layout(group_codec="lrzip")
    blob = ex.encode_artifact(state, codecs.ZlibCodec(), "int8", layout)
    header, _ = ex.parse_header(blob)
    assert {s["codec"] for s in header["streams"] if s["label"].startswith("group:")} == {"lrzip"}
    records, _ = ex.decode_artifact(blob, ex.decoders_of(codecs.ZlibCodec(), layout))
    assert all(torch.equal(records[n].data, q.data) for n, q in state.items())
    # the cap is checked from the LRZI header before the binary runs
    payload = codecs.LrzipCodec().compress(b"x" * 1000)
    with pytest.raises(ex.ArtifactError, match="size cap"):
        codecs.LrzipCodec().decompress(payload, max_size=999)
    with pytest.raises(ex.ArtifactError, match="no LRZI header"):
        codecs.LrzipCodec().decompress(b"BZh9" + payload[4:])
    monkeypatch.setenv("PATH", str(fake_lrzip.parent.parent))  # lrzip gone: decoding says what is missing
    with pytest.raises(ex.ArtifactError) as info:
        ex.decode_artifact(blob, decoders.all_decoders())
    assert "'lrzip' binary is not on PATH" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(not codecs.LrzipCodec().available(), reason="no lrzip binary on PATH")
def test_real_lrzip_round_trips():
    data = np.random.default_rng(0).integers(-31, 32, 50_000).astype(np.int8).tobytes()
    blob = codecs.LrzipCodec().compress(data)
    assert blob[:4] == b"LRZI" and codecs.LrzipCodec().decompress(blob) == data


@pytest.mark.parametrize("fallback, names", [("lzma", {"lzma"}), ("auto", {"zlib", "zstd", "brotli", "lzma"})])
def test_without_lrzip_the_fallback_writes_groups_that_decode_anywhere(tmp_path, monkeypatch, fallback, names):
    monkeypatch.setenv("PATH", str(tmp_path))  # no lrzip here
    state = correlated_state()
    layout = _plugin_layout(group_codec="lrzip", lrzip_fallback=fallback)
    blob = ex.encode_artifact(state, codecs.ZlibCodec(), "int8", layout)
    header, _ = ex.parse_header(blob)
    group_codecs = {s["codec"] for s in header["streams"] if s["label"].startswith("group:")}
    assert group_codecs and group_codecs <= names
    no_lrzip = {k: v for k, v in decoders.all_decoders().items() if k != "lrzip"}
    records, _ = ex.decode_artifact(blob, no_lrzip)
    assert all(torch.equal(records[n].data, q.data) for n, q in state.items())


@pytest.mark.parametrize("setting, expect", [
    ("group_codec=zpaq", "compress_pergroup.group_codec: unknown codec 'zpaq'"),
    ("lrzip_fallback=lrzip", "compress_pergroup.lrzip_fallback: unknown codec 'lrzip'"),
    ("rest_codec=lrzip", "compress_pergroup.rest_codec: unknown codec 'lrzip'"),
    ("groups=,", "compress_pergroup.groups is empty"),
])
def test_bad_settings_fail_at_configuration_time(setting, expect):
    with pytest.raises(ConfigError) as info:
        resolve(plugin_config_classes=REG.config_classes(), plugins=["compress_pergroup"], check_plugins=REG.check,
                sets=[f"compress_pergroup.{setting}"])
    (line,) = info.value.errors
    assert expect in line and "\n" not in line
