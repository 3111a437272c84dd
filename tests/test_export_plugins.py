"""Export plugins (issue #3): mixed int6/int5 (PR #315/#180), GPTQ-lite (PR #414), SDClip (PR #1394),
codecs and compress_auto, prune-to-fit (PR #1019), and `pgolf size`, checked against float64 numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import export as ex
from core.registry import Registry
from pgolf.cli import main as cli_main
from plugins.compress_auto import CompressAuto, CompressAutoConfig
from plugins.gptq_lite import GPTQLite, GPTQLiteConfig
from plugins.lib import codecs
from plugins.prune_to_fit import PruneError, PruneToFit, PruneToFitConfig, find_candidates, prune_to_fit, pruned
from plugins.quant_int8 import int8_quantize
from plugins.quant_mixed import QuantMixed, QuantMixedConfig
from plugins.sdclip import SDClip, SDClipConfig

ATTN, MLP, EMB, CTRL = "blocks.0.attn.c_q.weight", "blocks.0.mlp.fc.weight", "tok_emb.weight", "blocks.0.attn_scale"


def rand_matrix(rows: int = 64, cols: int = 160, seed: int = 0, heavy: bool = False) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2.0, size=(rows, cols)) if heavy else rng.standard_normal((rows, cols))
    row_scale = rng.uniform(0.2, 3.0, size=(rows, 1))  # some rows small enough to hit the 1/qmax floor
    return torch.from_numpy(x * row_scale).float()


def np_quant(x: np.ndarray, clip: np.ndarray, qmax: int, lo: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 reference: fp16 per-row scale, round half to even, clamp."""
    scale = np.maximum(clip / qmax, floor).astype(np.float16).astype(np.float64)
    codes = np.clip(np.rint(x / scale[:, None]), lo, qmax)
    return codes, codes * scale[:, None]


def assert_matches(q: ex.QTensor, codes: np.ndarray, recon: np.ndarray, x: np.ndarray) -> None:
    got_codes = q.data.numpy().astype(np.float64)
    assert np.mean(got_codes != codes) < 1e-3  # float32 vs float64 division may flip an exact tie
    got = q.dequantize().double().numpy()
    err_got, err_ref = np.mean((got - x) ** 2), np.mean((recon - x) ** 2)
    assert err_got == pytest.approx(err_ref, rel=1e-3)
    step = q.scale.float().numpy()[:, None] if q.scale is not None and q.scale.ndim else 1.0
    assert np.all(np.abs(got - recon) <= step + 1e-6)


# --- quant_mixed ------------------------------------------------------------------------------------
def test_quant_mixed_int6_matches_numpy_and_stays_in_range():
    plugin = QuantMixed(QuantMixedConfig(keep_float_max_numel=0))
    w = rand_matrix()
    q = plugin.pg_quantize_tensor(ATTN, w, None)
    assert q.scheme == "intk_per_row" and q.meta["bits"] == 6 and q.data.dtype == torch.int8
    assert int(q.data.min()) >= -32 and int(q.data.max()) <= 31
    x = w.double().numpy()
    codes, recon = np_quant(x, np.abs(x).max(axis=1), 31, -32, 1 / 31)
    assert_matches(q, codes, recon, x)


def test_quant_mixed_int5_mlp_int8_embed_and_passthrough():
    plugin = QuantMixed(QuantMixedConfig(mlp_bits=5, keep_float_max_numel=0))
    w = rand_matrix(seed=1)
    q = plugin.pg_quantize_tensor(MLP, w, None)
    assert q.meta["bits"] == 5 and int(q.data.min()) >= -16 and int(q.data.max()) <= 15
    x = w.double().numpy()
    codes, recon = np_quant(x, np.abs(x).max(axis=1), 15, -16, 1 / 15)
    assert_matches(q, codes, recon, x)
    big_emb = rand_matrix(300, 256, seed=2)  # > 65,536 elements: the baseline int8 rule
    assert plugin.pg_quantize_tensor(EMB, big_emb, None).scheme == "int8_per_row"
    ctrl = plugin.pg_quantize_tensor(CTRL, torch.randn(64), None)
    assert ctrl.scheme == "passthrough" and ctrl.data.dtype == torch.float32
    small = QuantMixed().pg_quantize_tensor(ATTN, w, None)  # default keeps <= 65,536 elements as fp16
    assert small.scheme == "passthrough" and small.data.dtype == torch.float16
    assert QuantMixed(QuantMixedConfig(embed_bits=16, keep_float_max_numel=0)).pg_quantize_tensor(
        EMB, big_emb, None).data.dtype == torch.float16
    with pytest.raises(ValueError, match="mlp_bits"):
        QuantMixed(QuantMixedConfig(mlp_bits=9, keep_float_max_numel=0)).pg_quantize_tensor(MLP, w, None)


# --- gptq_lite --------------------------------------------------------------------------------------
PCTS = [0.999, 0.9995, 0.9999, 0.99999, 1.0]


@pytest.mark.parametrize("per_row", [False, True])
def test_gptq_lite_matches_numpy_search(per_row):
    w = rand_matrix(seed=3, heavy=True)
    q = GPTQLite(GPTQLiteConfig(keep_float_max_numel=0, per_row=per_row)).pg_quantize_tensor(ATTN, w, None)
    assert int(q.data.abs().max()) <= 31
    x = w.double().numpy()
    best = None
    for pct in PCTS:
        clip = np.quantile(np.abs(w.numpy()), pct, axis=1).astype(np.float64)
        codes, recon = np_quant(x, clip, 31, -31, 1 / 31)
        err = np.mean((recon - x) ** 2, axis=1)
        err = err if per_row else np.full_like(err, err.mean())
        if best is None:
            best = [codes, recon, err]
            continue
        better = err < best[2]
        best = [np.where(better[:, None], codes, best[0]), np.where(better[:, None], recon, best[1]),
                np.where(better, err, best[2])]
    assert_matches(q, best[0], best[1], x)


def test_gptq_lite_beats_plain_int6_on_heavy_tails():
    w = rand_matrix(128, 256, seed=4, heavy=True)
    plain = QuantMixed(QuantMixedConfig(keep_float_max_numel=0)).pg_quantize_tensor(ATTN, w, None)
    errs = {}
    for per_row in (False, True):
        q = GPTQLite(GPTQLiteConfig(keep_float_max_numel=0, per_row=per_row)).pg_quantize_tensor(ATTN, w, None)
        errs[per_row] = float((q.dequantize() - w).pow(2).mean())
    plain_err = float((plain.dequantize() - w).pow(2).mean())
    assert errs[False] <= plain_err and errs[True] <= errs[False]
    assert errs[False] < plain_err  # heavy tails: clipping the top outlier pays
    with pytest.raises(ValueError, match="percentiles"):
        GPTQLite(GPTQLiteConfig(percentiles="0.5,abc"))


# --- sdclip -----------------------------------------------------------------------------------------
def test_sdclip_clip_is_k_sigma():
    cfg = SDClipConfig(keep_float_max_numel=0)
    w = rand_matrix(seed=5)
    x = w.double().numpy()
    for name, k, qmax in ((ATTN, 12.85, 31), (EMB, 20.0, 127)):
        q = SDClip(cfg).pg_quantize_tensor(name, w, None)
        assert q.meta["clip_sigmas"] == k and q.meta["bits"] == (6 if qmax == 31 else 8)
        clip = k * x.std(axis=1, ddof=1)
        want_scale = (clip / qmax).astype(np.float16)
        np.testing.assert_allclose(q.scale.numpy().astype(np.float64), want_scale.astype(np.float64), rtol=1e-3)
        assert int(q.data.abs().max()) <= qmax
        codes, recon = np_quant(x, clip, qmax, -qmax, 1e-10)
        assert_matches(q, codes, recon, x)
    per_family = SDClip(SDClipConfig(keep_float_max_numel=0, mlp_clip_sigmas=3.0)).pg_quantize_tensor(MLP, w, None)
    assert per_family.meta["clip_sigmas"] == 3.0 and int(per_family.data.abs().max()) == 31  # k=3 clips


# --- codecs -----------------------------------------------------------------------------------------
CODEC_NAMES = ("zstd", "brotli", "lzma", "compress_auto")


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_plugins_round_trip_and_conflict(name):
    reg = Registry()
    codec = reg.plugins[name]().pg_codec(config=None)
    data = bytes(range(256)) * 64 + b"pgolf" * 1000
    blob = codec.compress(data)
    assert len(blob) < len(data)
    if name != "compress_auto":
        assert codec.decompress(blob) == data
    others = [n for n in CODEC_NAMES if n != name]
    assert all(reg.check([name, other]) for other in others)


def test_compress_auto_picks_smallest_and_decodes():
    codec = CompressAuto(CompressAutoConfig()).pg_codec(config=None)
    quant = QuantMixed(QuantMixedConfig(keep_float_max_numel=0))
    qstate = ex.quantize_state_dict({ATTN: rand_matrix(256, 300, seed=6), "b": torch.arange(10)},
                                       [lambda n, t: quant.pg_quantize_tensor(n, t, None)])
    blob = ex.encode_artifact(qstate, codec, "int6")
    header, _ = ex.parse_header(blob)
    sizes = codec.sizes
    assert set(sizes) == {"zlib", "zstd", "brotli", "lzma"}
    assert header["codec"] == min(sizes, key=lambda n: (sizes[n], list(sizes).index(n)))
    assert header["payload_bytes"] == min(sizes.values())
    records, _ = ex.decode_artifact(blob, codecs.all_decoders())  # no "auto" codec needed: the header names the winner
    assert torch.equal(records[ATTN].data, qstate[ATTN].data)
    assert codec.decompress(codec.compress(b"x" * 1000)) == b"x" * 1000
    with pytest.raises(ValueError, match="unknown codec"):
        CompressAuto(CompressAutoConfig(codecs="zlib,nope")).pg_codec(config=None)


# --- prune_to_fit -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_qstate() -> dict[str, ex.QTensor]:
    quant = QuantMixed(QuantMixedConfig(keep_float_max_numel=0))
    state = {f"blocks.{i}.mlp.fc.weight": rand_matrix(192, 192, seed=10 + i) for i in range(3)}
    state["blocks.0.attn_scale"] = torch.ones(192)
    qstate = ex.quantize_state_dict(state, [lambda n, t: quant.pg_quantize_tensor(n, t, None)])
    return qstate


def test_prune_to_fit_reaches_target_with_fewest_cheapest_codes(small_qstate):
    ctx = ex.RefineContext(size_of=ex.artifact_sizer(codecs.ZlibCodec()), code_bytes=1_000)
    cands = find_candidates(small_qstate)
    full = ctx.code_bytes + ctx.size_of(small_qstate)
    floor = ctx.code_bytes + ctx.size_of(pruned(small_qstate, cands, len(cands)))
    assert floor < full
    target = (full + floor) // 2
    qstate = dict(small_qstate)
    n = prune_to_fit(qstate, ctx, target)
    assert 0 < n < len(cands)
    assert ctx.code_bytes + ctx.size_of(qstate) <= target
    assert ctx.code_bytes + ctx.size_of(pruned(small_qstate, cands, n - 1)) > target
    changed = 0
    for name, q in qstate.items():
        diff = q.data != small_qstate[name].data
        assert torch.all(small_qstate[name].data[diff].abs() == 1) and torch.all(q.data[diff] == 0)
        changed += int(diff.sum())
    assert changed == n
    costs = torch.cat([small_qstate[cands.names[int(t)]].scale.float()[int(p) // 192].reshape(1) ** 2
                       for t, p in zip(cands.tensor_idx[:n + 5], cands.position[:n + 5], strict=True)])
    assert torch.all(costs[1:] >= costs[:-1])
    assert prune_to_fit(dict(small_qstate), ctx, full) == 0  # already fits: nothing pruned


def test_prune_to_fit_plugin_fails_clearly_when_unreachable(small_qstate):
    ctx = ex.RefineContext(size_of=ex.artifact_sizer(codecs.ZlibCodec()), code_bytes=500)
    plugin = PruneToFit(PruneToFitConfig(target_bytes=10_000))
    with pytest.raises(PruneError, match="unreachable"):
        plugin.pg_refine_quantized(dict(small_qstate), ctx)
    model_only = ctx.size_of(small_qstate) - 100
    plugin = PruneToFit(PruneToFitConfig(target_bytes=model_only, include_code=False))
    qstate = dict(small_qstate)
    plugin.pg_refine_quantized(qstate, ctx)
    assert plugin.pruned > 0 and ctx.size_of(qstate) <= model_only


# --- pgolf size -------------------------------------------------------------------------------------
def test_pgolf_size_reports_and_rejects_corrupt_artifacts(tmp_path, small_qstate, capsys):
    blob = ex.encode_artifact(small_qstate, codecs.ZstdCodec(), "int6")
    run = tmp_path / "run"
    run.mkdir()
    (run / "final_model.ptz").write_bytes(blob)
    (run / "metrics.json").write_text(json.dumps({"code_bytes": 12_345}))
    assert cli_main(["size", str(run)]) == 0
    out = capsys.readouterr().out
    assert "12,345" in out and f"{len(blob):,}" in out and f"{16_000_000 - 12_345 - len(blob):,}" in out
    assert "mlp" in out and "int6_row" in out
    assert cli_main(["size", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 12_345 + len(blob) and summary["families"]["mlp"]["tensors"] == 3
    (run / "final_model.ptz").write_bytes(blob[:-100])
    assert cli_main(["size", str(run)]) == 2
    assert "truncated payload" in capsys.readouterr().err
    bad = bytearray(blob)
    bad[-50] ^= 0xFF
    (run / "final_model.ptz").write_bytes(bytes(bad))
    assert cli_main(["size", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgolf size: error:") and "final_model.ptz" in err
    assert cli_main(["size", str(tmp_path / "missing")]) == 2


def test_baseline_int8_rule_below_its_passthrough_size_matches_the_core():
    from plugins.lib.quant import baseline_int8_any_size

    small, big = rand_matrix(100, 128, seed=7), rand_matrix(600, 128, seed=7)
    q_small = QuantMixed(QuantMixedConfig(keep_float_max_numel=0)).pg_quantize_tensor(EMB, small, None)
    assert q_small.scheme == "int8_per_row"
    ref = int8_quantize(EMB, big)  # the baseline rule on a tensor past its passthrough size
    ours = baseline_int8_any_size(EMB, big)
    assert torch.equal(ref.data, ours.data) and torch.equal(ref.scale, ours.scale)
    q_rows = int8_quantize(EMB, torch.cat([small, small, small, small, small, small]))
    assert torch.equal(q_small.data, q_rows.data[:100]) and torch.equal(q_small.scale, q_rows.scale[:100])


def test_prune_search_matches_bisection_with_fewer_probes():
    from plugins.prune_to_fit import smallest_fitting

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(50, 200_000))
        steps = np.cumsum(rng.integers(0, 3, size=n + 1))  # a monotone, noisy, step-like size curve
        sizes = 1_000_000 - steps
        target = int(rng.integers(sizes[-1], sizes[0]))
        probes = []

        def size_at(k, sizes=sizes, probes=probes):
            probes.append(k)
            return int(sizes[k])

        got = smallest_fitting(size_at, n, int(sizes[0]), int(sizes[-1]), target)
        assert got == int(np.argmax(sizes <= target)), trial
        assert len(probes) <= 2 * int(np.ceil(np.log2(n))) + 2


# --- PR #315's export rule, re-implemented here from the record -------------------------------------
PR315_CONTROL = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes", "q_gain",
                 "skip_weight", "skip_weights", "smear")


def pr315_quantize(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """records/…/2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248 `mixed_quantize_int6(sd, {"mlp","attn"})`:
    small floats -> fp16, large control -> fp32, mlp/attn -> int6 rowmax/31 in [-32, 31], rest -> int8 rule."""
    result: dict[str, torch.Tensor] = {}
    meta: dict[str, object] = {}
    for name, t in state.items():
        cat = ("embed" if "tok_emb" in name or "lm_head" in name else "mlp" if ".mlp." in name
               else "attn" if ".attn." in name or ".proj." in name else "other")
        if not t.is_floating_point() or t.numel() <= 65536:
            result[name], meta[name] = (t.half() if t.is_floating_point() else t), "passthrough"
        elif any(p in name for p in PR315_CONTROL):
            result[name], meta[name] = t.float(), "passthrough_ctrl"
        elif cat in ("mlp", "attn"):
            s = (t.float().abs().amax(dim=1) / 31.0).clamp_min(1.0 / 31.0).half()
            result[name + ".q"] = torch.clamp(torch.round(t.float() / s.float()[:, None]), -32, 31).to(torch.int8)
            result[name + ".scale"], meta[name] = s, {"type": "int6"}
        else:
            clip = torch.quantile(t.float().abs(), 0.9999984, dim=1)
            s = (clip / 127.0).clamp_min(1.0 / 127.0)
            c = torch.maximum(torch.minimum(t.float(), clip[:, None]), -clip[:, None])
            result[name + ".q"] = torch.clamp(torch.round(c / s[:, None]), -127, 127).to(torch.int8)
            result[name + ".scale"], meta[name] = s.half(), {"type": "int8"}
    return result, meta


def pr315_like_state(seed: int = 0, dim: int = 512, layers: int = 2) -> dict[str, torch.Tensor]:
    """pgolf state-dict names and #315 shapes (vocab 1024, 8 heads / 4 KV heads, MLP 3x, bigram 2048×128)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    sd = {"tok_emb.weight": r(1024, dim, std=0.005), "embed_add.0.embed.weight": r(2048, 128),
          "embed_add.0.proj.weight": r(dim, 128), "embed_add.0.scale": torch.tensor(0.05),
          "embed_mix_post.0.smear_gate": r(dim), "skip_weights": torch.ones(layers // 2, dim)}
    for i in range(layers):
        p = f"blocks.{i}."
        sd.update({p + "attn.c_q.weight": r(dim, dim), p + "attn.c_k.weight": r(dim // 2, dim),
                   p + "attn.c_v.weight": r(dim // 2, dim), p + "attn.proj.weight": r(dim, dim),
                   p + "attn.q_gain": torch.full((8,), 1.5), p + "mlp.fc.weight": r(3 * dim, dim),
                   p + "mlp.proj.weight": r(dim, 3 * dim), p + "attn_scale": torch.ones(dim),
                   p + "mlp_scale": torch.ones(dim), p + "resid_mix": torch.stack([torch.ones(dim), torch.zeros(dim)])})
    sd["blocks.0.mlp.fc.weight"][3, 7] = 0.5  # an outlier row
    sd["blocks.1.attn.c_q.weight"][5] = 0.0  # an all-zero row: the 1/31 scale floor
    return sd


def test_quant_mixed_codes_and_scales_equal_the_pr315_rule_and_container_size_is_close():
    import io

    sd = pr315_like_state()
    rec, rec_meta = pr315_quantize(sd)
    quant = QuantMixed()
    qstate = ex.quantize_state_dict(sd, [lambda n, t: quant.pg_quantize_tensor(n, t, None)])
    for name in sd:
        q = qstate[name]
        if isinstance(rec_meta[name], dict):
            assert torch.equal(q.data, rec[name + ".q"]), name
            assert q.scale.dtype == rec[name + ".scale"].dtype and torch.equal(q.scale, rec[name + ".scale"]), name
            assert q.scheme == ("intk_per_row" if rec_meta[name]["type"] == "int6" else "int8_per_row"), name
        else:
            assert q.scheme == "passthrough" and q.data.dtype == rec[name].dtype, name
            assert torch.equal(q.data, rec[name]), name
    # Same codes in both containers: compressed sizes within 2% (zstd 9 here; benchmarks/export_bench.py: 22).
    buf = io.BytesIO()
    torch.save({"w": rec, "m": rec_meta}, buf)
    theirs = len(codecs.ZstdCodec(level=9).compress(buf.getvalue()))
    ours = len(ex.encode_artifact(qstate, codecs.ZstdCodec(level=9), "int6"))
    assert abs(ours - theirs) / theirs < 0.02, (ours, theirs)


def test_prune_to_fit_run_fits_code_plus_artifact(tiny_sets):
    """The whole run path: the plugin's target counts the code bytes the run reports."""
    from core.config import resolve
    from core.train import code_bytes, setup, train
    from pgolf.size import size_summary

    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["prune_to_fit"], check_plugins=reg.check,
                  sets=[*tiny_sets, "core.mlp_mult=20", "core.iterations=1", "core.embed_lr=0", "core.head_lr=0",
                        "core.tied_embed_lr=0", "core.matrix_lr=0", "core.scalar_lr=0"])  # weights stay put
    run = setup(cfg, reg)
    n_code = code_bytes(run)
    qstate = ex.quantize_state_dict(run.model.state_dict(), [int8_quantize])
    size_of = ex.artifact_sizer(codecs.ZlibCodec())
    full = n_code + size_of(qstate)
    floor = n_code + size_of(pruned(qstate, find_candidates(qstate), len(find_candidates(qstate))))
    target = (full + floor) // 2
    run.pm.get_plugin("prune_to_fit").cfg.target_bytes = target
    n_code = code_bytes(run)  # the bundle's RECIPE holds target_bytes: a few bytes more or less
    metrics = train(run)
    assert metrics["code_bytes"] == n_code and metrics["pruned_pm1"] > 0
    assert metrics["total_bytes"] <= target < full
    on_disk = (run.run_dir / "final_model.ptz").stat().st_size
    assert metrics["total_bytes"] == n_code + on_disk
    summary = size_summary(run.run_dir)
    assert summary["total"] == metrics["total_bytes"] and summary["headroom"] == 16_000_000 - summary["total"]


def test_pgolf_size_on_a_records_folder(tmp_path, small_qstate, capsys):
    rec = tmp_path / "records" / "2026-01-01_x"
    rec.mkdir(parents=True)
    (rec / "train_gpt.py").write_text("print('hi')\n" * 100)
    for seed, n in ((1, 15_461_049), (2, 15_571_723)):
        (rec / f"train_seed{seed}.log").write_text(
            f"seed:{seed}\nSerialized model: 105783807 bytes\nCode size: 1200 bytes\n"
            f"Serialized model int6+zstd: {n} bytes\nTotal submission size int6+zstd: {n + 1200} bytes\n")
    assert cli_main(["size", str(rec), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["code_bytes"] == 1200 and s["code_source"] == "train_gpt.py"
    assert s["model_bytes"] == 15_571_723 and s["model_source"].startswith("logs (largest of 2")
    assert s["total"] == 15_572_923 and s["families"] == {}
    assert cli_main(["size", str(rec)]) == 0
    out = capsys.readouterr().out
    assert "from logs" in out and "train_seed1.log: model 15,461,049 bytes" in out
    (rec / "final_model.ptz").write_bytes(ex.encode_artifact(small_qstate, codecs.ZlibCodec(), "int6"))
    s = json.loads((cli_main(["size", str(rec), "--json"]), capsys.readouterr().out)[1])
    assert s["model_source"] == "artifact final_model.ptz" and s["families"]["mlp"]["tensors"] == 3
    assert s["code_bytes"] == 1200
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train_gpt.py").write_text("x = 1\n")
    assert cli_main(["size", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no artifact and no log" in err
