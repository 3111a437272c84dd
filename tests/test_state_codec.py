"""Artifact format 2: state codecs (pg_state_codec) that see the quantized state, per-stream codecs with
header-recorded parameters (brotli's byte shuffle), and the per-group layout of PR #1855."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import torch

from core import export as ex
from core.config import resolve
from core.registry import Registry
from core.train import export_artifact, final_eval, setup, train
from plugins.lib import codecs, decoders
from plugins.lib.pergroup import PerGroupStateCodec, similarity_order
from plugins.quant_int8 import int8_quantize

pytest.importorskip("brotli")

REG = Registry()


def _reference_shuffle(data: bytes, stride: int) -> bytes:
    """PR #1493's `_byte_shuffle`, written out independently: even offsets, then odd (stride 2)."""
    return b"BSHF" + bytes([stride]) + b"".join(data[i::stride] for i in range(stride))


def _qstate(layers: int = 3, seed: int = 0) -> dict[str, ex.QTensor]:
    """A small quantized model with the record's tensor names: int8 codes with structure to sort."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"tok_emb.weight": torch.randn(96, 32, generator=gen),
                                   "skip_weights": torch.ones(2, 32)}
    for i in range(layers):
        base = torch.randn(8, 32, generator=gen)
        sd[f"blocks.{i}.attn.c_q.weight"] = base.repeat(6, 1)[torch.randperm(48, generator=gen)] * (i + 1)
        sd[f"blocks.{i}.attn.c_k.weight"] = torch.randn(24, 32, generator=gen)
        sd[f"blocks.{i}.mlp.fc.weight"] = torch.randn(64, 32, generator=gen)
        sd[f"blocks.{i}.attn_scale"] = torch.rand(32, generator=gen)
    return {name: int8_quantize(name, t) if name == "skip_weights" else _force_int8(name, t)
            for name, t in sd.items()}


def _force_int8(name: str, t: torch.Tensor) -> ex.QTensor:
    if t.ndim < 2:
        return int8_quantize(name, t)
    scale = t.abs().amax(dim=1).clamp_min(1e-6) / 127
    codes = torch.round(t / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return ex.QTensor("int8_per_row", codes, scale.half(), "float32", tuple(t.shape))


def _streams(blob: bytes, codec_for: dict[str, ex.Codec] | None = None) -> dict[str, bytes]:
    """label -> decompressed stream, decoded here stream by stream from the header (not by decode_artifact)."""
    header, off = ex.parse_header(blob)
    out = {}
    for st in header["streams"]:
        codec = (codec_for or decoders.all_decoders())[st["codec"]]
        if st.get("codec_params"):
            codec = codec.configured(st["codec_params"])
        chunk = blob[off:off + st["payload_bytes"]]
        off += st["payload_bytes"]
        out[st["label"]] = codec.decompress(chunk)
    return out


# --- byte shuffle ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 1001])
def test_byte_shuffle_matches_the_record_and_inverts(stride, n):
    data = bytes(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8))
    shuffled = codecs.byte_shuffle(data, stride)
    assert shuffled == _reference_shuffle(data, stride)
    assert codecs.byte_unshuffle(shuffled, stride) == data


def test_byte_unshuffle_rejects_a_wrong_prefix():
    shuffled = codecs.byte_shuffle(b"abcdef", 2)
    with pytest.raises(ex.ArtifactError, match="not stride 3"):
        codecs.byte_unshuffle(shuffled, 3)
    with pytest.raises(ex.ArtifactError, match="prefix missing"):
        codecs.byte_unshuffle(b"XXXX\x02abc", 2)
    with pytest.raises(ValueError, match="stride must be in 2..255"):
        codecs.BrotliCodec(shuffle=300)


def test_brotli_plugin_shuffles_by_default_and_the_header_says_so():
    qstate = _qstate()
    plugin = REG.plugins["brotli"]
    shuffled_codec = plugin(plugin.config()).pg_codec(config=None)
    plain_codec = plugin(plugin.config(byte_shuffle=0)).pg_codec(config=None)
    blob = ex.encode_artifact(qstate, shuffled_codec, "int8")
    plain = ex.encode_artifact(qstate, plain_codec, "int8")
    header, _ = ex.parse_header(blob)
    assert header["streams"][0]["codec_params"] == {"byte_shuffle": 2}
    assert "codec_params" not in ex.parse_header(plain)[0]["streams"][0]
    raw_plain = _streams(plain)["state"]
    raw_shuffled = _streams(blob, {"brotli": codecs.BrotliCodec()})["state"]  # decoder configured by the header
    assert raw_shuffled == raw_plain == ex.save_records(qstate)
    # the bytes brotli compressed are the record's shuffle of the torch.save stream
    import brotli
    _, off = ex.parse_header(blob)
    assert brotli.decompress(blob[off:]) == _reference_shuffle(raw_plain, 2)
    # any pgolf decoder reads it (the stride comes from the header, not from the run's settings)
    records, _ = ex.decode_artifact(blob, decoders.all_decoders())
    assert all(torch.equal(records[n].data, q.data) for n, q in qstate.items())
    with pytest.raises(ValueError, match="brotli.byte_shuffle"):
        plugin(plugin.config(byte_shuffle=256)).pg_codec(config=None)


def test_lzma_plugin_shuffle_is_pr1493s_lzma_path():
    import lzma

    qstate = _qstate()
    plugin = REG.plugins["lzma"]
    assert plugin(plugin.config()).pg_codec(config=None).params == {}  # PR #549 / #1019: no shuffle
    codec = plugin(plugin.config(preset=6, extreme=False, byte_shuffle=2)).pg_codec(config=None)
    blob = ex.encode_artifact(qstate, codec, "int8")
    header, off = ex.parse_header(blob)
    assert header["streams"][0]["codec_params"] == {"byte_shuffle": 2}
    assert lzma.decompress(blob[off:]) == _reference_shuffle(ex.save_records(qstate), 2)
    records, _ = ex.decode_artifact(blob, decoders.all_decoders())
    assert all(torch.equal(records[n].data, q.data) for n, q in qstate.items())


def test_tampered_codec_params_fail_in_one_line():
    blob = ex.encode_artifact(_qstate(), codecs.BrotliCodec(shuffle=2), "int8")
    header, off = ex.parse_header(blob)

    def with_params(params):
        h = {**header, "streams": [{**header["streams"][0], "codec_params": params}]}
        head = json.dumps(h).encode()
        return ex.MAGIC + struct.pack("<HI", 2, len(head)) + head + blob[off:]

    for params, msg in (({"byte_shuffle": 3}, "not stride 3"), ({"level": 9}, "expected {'byte_shuffle'"),
                        ({}, "size cap exceeded")):  # the shuffle prefix makes it 5 bytes longer
        with pytest.raises(ex.ArtifactError, match=msg) as info:
            ex.decode_artifact(with_params(params), decoders.all_decoders())
        assert "\n" not in str(info.value) and "stream 'state'" in str(info.value)
    h = {**header, "streams": [{**header["streams"][0], "codec": "zlib"}]}
    head = json.dumps(h).encode()
    with pytest.raises(ex.ArtifactError, match="codec 'zlib' takes no parameters"):
        ex.decode_artifact(ex.MAGIC + struct.pack("<HI", 2, len(head)) + head + blob[off:], decoders.all_decoders())


# --- per-group layout ------------------------------------------------------------------------------
def _brute_force_order(m: np.ndarray) -> list[int]:
    """The greedy L1 walk, one Python loop per candidate (an independent check of `similarity_order`)."""
    rows = [list(map(int, r)) for r in m]
    order, left = [0], set(range(1, len(rows)))
    while left:
        cur = rows[order[-1]]
        best = min(left, key=lambda j: (sum(abs(a - b) for a, b in zip(rows[j], cur, strict=True)), j))
        order.append(best)
        left.remove(best)
    return order


def test_similarity_order_is_the_greedy_l1_walk():
    m = np.random.default_rng(0).integers(-5, 6, (40, 7)).astype(np.int8)
    assert similarity_order(m).tolist() == _brute_force_order(m)


def test_pergroup_streams_hold_each_role_across_layers_sorted_and_transposed():
    qstate = _qstate(layers=3)
    layout = PerGroupStateCodec(group_codec=codecs.LzmaCodec(), rest_codec=codecs.BrotliCodec(lgwin=24),
                                perm_codec=codecs.BrotliCodec())
    blob = ex.encode_artifact(qstate, codecs.ZlibCodec(), "int8", layout)
    header, _ = ex.parse_header(blob)
    assert header["layout"] == "pergroup" and header["codec"] == "pergroup"
    labels = [s["label"] for s in header["streams"]]
    assert labels == ["group:tok_emb.weight", "group:attn.c_k.weight", "group:attn.c_q.weight",
                      "group:mlp.fc.weight", "rest", "perms"]
    assert [s["codec"] for s in header["streams"]] == ["lzma"] * 4 + ["brotli", "brotli"]
    streams = _streams(blob)
    # c_q: layers 0, 1, 2 in order, each row-sorted by the greedy walk, then transposed
    expected, perms = b"", []
    for i in range(3):
        codes = qstate[f"blocks.{i}.attn.c_q.weight"].data.numpy()
        order = _brute_force_order(codes)
        perms.append(order)
        expected += np.ascontiguousarray(codes[order].T).tobytes()
    assert streams["group:attn.c_q.weight"] == expected
    ck = b"".join(np.ascontiguousarray(qstate[f"blocks.{i}.attn.c_k.weight"].data.numpy().T).tobytes()
                  for i in range(3))
    assert streams["group:attn.c_k.weight"] == ck  # not in the similarity-sorted roles
    all_perms = np.frombuffer(streams["perms"], dtype=np.uint16).tolist()
    emb_rows = qstate["tok_emb.weight"].data.shape[0]
    assert all_perms[emb_rows:emb_rows + 3 * 48] == [j for p in perms for j in p]
    # the rest holds no codes of grouped tensors, but every scale
    rest = ex.load_records(streams["rest"])
    assert rest["blocks.1.attn.c_q.weight"].data.numel() == 0
    assert torch.equal(rest["blocks.1.attn.c_q.weight"].scale, qstate["blocks.1.attn.c_q.weight"].scale)

    result = ex.ExportResult(blob, qstate, header["raw_bytes"])
    ex.verify_round_trip(result, ex.decoders_of(codecs.ZlibCodec(), layout))  # records and weights, bit for bit
    assert "unknown layout 'pergroup'" in _decode_error(blob, {"zlib": codecs.ZlibCodec()})


def _decode_error(blob: bytes, decoders, **kw) -> str:
    with pytest.raises(ex.ArtifactError) as info:
        ex.decode_artifact(blob, decoders, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def _rewrite(blob: bytes, edit) -> bytes:
    header, off = ex.parse_header(blob)
    edit(header)
    head = json.dumps(header).encode()
    return ex.MAGIC + struct.pack("<HI", 2, len(head)) + head + blob[off:]


def test_pergroup_rejects_a_bad_manifest_and_caps_the_total_size():
    blob = ex.encode_artifact(_qstate(), codecs.ZlibCodec(), "int8", PerGroupStateCodec())
    dec = decoders.all_decoders()
    header, _ = ex.parse_header(blob)

    def not_sorted(h):
        h["manifest"]["groups"][-1]["sort"] = False

    def bad_shape(h):
        h["manifest"]["groups"][1]["shapes"][0] = [9999, 3]

    def no_groups(h):
        del h["manifest"]["groups"]

    assert "unused row-permutation entries" in _decode_error(_rewrite(blob, not_sorted), dec)
    assert "stream too short" in _decode_error(_rewrite(blob, bad_shape), dec)
    def bad_layer(h):
        h["manifest"]["groups"][1]["layers"][0] = 7

    assert "manifest needs 'groups'" in _decode_error(_rewrite(blob, no_groups), dec)
    assert "bad tensor entry (layer 7" in _decode_error(_rewrite(blob, bad_layer), dec)
    assert "size cap" in _decode_error(blob, dec, max_size=header["raw_bytes"] - 1)
    # each stream is capped by what is left of the budget, not by its own declared size only
    first = header["streams"][0]["raw_bytes"]
    assert "size cap" in _decode_error(blob, dec, max_size=first + 10)


def test_pergroup_plugin_per_group_codecs_and_errors():
    plugin = REG.plugins["compress_pergroup"]
    layout = plugin(plugin.config(group_codec="auto")).pg_state_codec(config=None)
    qstate = _qstate()
    blob = ex.encode_artifact(qstate, codecs.ZlibCodec(), "int8", layout)
    header, _ = ex.parse_header(blob)
    group_codecs = {s["codec"] for s in header["streams"] if s["label"].startswith("group:")}
    assert group_codecs <= {"zlib", "zstd", "brotli", "lzma"}
    records, _ = ex.decode_artifact(blob, ex.decoders_of(codecs.ZlibCodec(), layout))
    assert all(torch.equal(records[n].data, q.data) for n, q in qstate.items())
    with pytest.raises(ValueError, match="compress_pergroup.group_codec: unknown codec 'zpaq'"):
        plugin(plugin.config(group_codec="zpaq")).pg_state_codec(config=None)


# --- through the run's export phase ---------------------------------------------------------------
FINAL = re.compile(r"final_(\w+)_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)")
QUANT = ["quant_mixed.keep_float_max_numel=0", "core.val_max_tokens=1024"]  # codes for every matrix


def _export(tiny_sets, plugins, sets=()):
    """setup + the export/evaluate phase on the freshly initialised model (same seed: same weights)."""
    cfg = resolve(plugin_config_classes=REG.config_classes(), plugins=["quant_mixed", *plugins],
                  sets=[*tiny_sets, *QUANT, *sets], check_plugins=REG.check)
    run = setup(cfg, REG)
    fields = final_eval(run, *export_artifact(run))
    blob = (run.run_dir / "final_model.ptz").read_bytes()
    return fields, blob, FINAL.search((run.run_dir / "train.log").read_text()).groups()


def test_export_phase_layouts_change_the_artifact_not_the_model(tiny_sets):
    """A byte shuffle or a layout is lossless: the same final numbers, other artifact bytes."""
    base, base_blob, base_line = _export(tiny_sets, ["brotli"], ["brotli.byte_shuffle=0"])
    shuf, shuf_blob, shuf_line = _export(tiny_sets, ["brotli"])
    group, group_blob, group_line = _export(tiny_sets, ["brotli", "compress_pergroup"], ["brotli.byte_shuffle=0"])
    assert base_line[1:] == shuf_line[1:] == group_line[1:]
    assert base_line[0] == shuf_line[0] == "int6_brotli" and group_line[0] == "int6_pergroup"
    assert base_blob != shuf_blob and shuf["model_bytes"] == len(shuf_blob) != base["model_bytes"] == len(base_blob)
    header, _ = ex.parse_header(group_blob)
    assert header["layout"] == "pergroup" and len(header["streams"]) == 9  # 7 roles, rest, perms
    assert group["model_bytes"] == len(group_blob) and group_blob != base_blob


@pytest.mark.slow
def test_tiny_trained_run_with_pergroup_and_shuffle_round_trips(tiny_sets):
    cfg = resolve(plugin_config_classes=REG.config_classes(), plugins=["quant_mixed", "brotli", "compress_pergroup"],
                  sets=[*tiny_sets, *QUANT, "compress_pergroup.rest_codec=run"], check_plugins=REG.check)
    run = setup(cfg, REG)
    summary = train(run)
    records, header = decoders.read_artifact(run.run_dir / "final_model.ptz")
    assert header["layout"] == "pergroup" and summary["artifact_label"] == "int6+pergroup"
    rest = next(s for s in header["streams"] if s["label"] == "rest")
    assert rest["codec"] == "brotli" and rest["codec_params"] == {"byte_shuffle": 2}  # the run's codec


def test_pgolf_size_reads_a_pergroup_artifact_with_a_shuffled_stream(tmp_path, capsys):
    from pgolf.cli import main as cli_main

    layout = PerGroupStateCodec(rest_codec=None)  # the rest uses the run's codec: brotli + shuffle
    blob = ex.encode_artifact(_qstate(), codecs.BrotliCodec(shuffle=2), "int8", layout)
    run = tmp_path / "run"
    run.mkdir()
    (run / "final_model.ptz").write_bytes(blob)
    (run / "metrics.json").write_text(json.dumps({"code_bytes": 1000}))
    assert cli_main(["size", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["codec"] == "pergroup" and summary["total"] == 1000 + len(blob)


def test_streams_of_one_codec_with_different_parameters_decode_by_their_own_header_parameters():
    """Group streams in plain brotli, the rest in the run's brotli + stride-2 shuffle: one decoder name, two
    configurations; each stream is decoded with the parameters its header entry names (none included)."""
    layout = PerGroupStateCodec(group_codec=codecs.BrotliCodec(), rest_codec=None)
    run_codec = codecs.BrotliCodec(shuffle=2)
    qstate = _qstate()
    blob = ex.encode_artifact(qstate, run_codec, "int8", layout)
    records, header = ex.decode_artifact(blob, ex.decoders_of(run_codec, layout))
    params = {s["label"]: s.get("codec_params", {}) for s in header["streams"]}
    assert params["rest"] == {"byte_shuffle": 2} and any(p == {} for p in params.values())
    assert set(records) == set(qstate)
    def same(a, b):
        return a is b is None or (a is not None and b is not None and torch.equal(a, b))

    assert all(same(records[n].data, q.data) and same(records[n].scale, q.scale) for n, q in qstate.items())
