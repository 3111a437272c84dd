"""Full-Hessian GPTQ (plugins/gptq.py, plugins.lib.quant GPTQ solver; PRs #1019/#1060/#1394) and LQER (PR #1797):
against an independent float64 GPTQ, against round-to-nearest on correlated inputs, Hessians against an
explicit XᵀX, and the budget reservation + calibration timing of a real (tiny) run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from core import export as ex
from core.config import resolve
from core.registry import Registry
from core.train import setup, train
from plugins.gptq import GPTQ, GPTQConfig, HessianCollector, collect_hessians
from plugins.lib import codecs
from plugins.lib.decoders import read_artifact
from plugins.lib.quant import gptq_quantize, gptq_rows, prepare_hessian
from plugins.lqer import LQER, LQERConfig, add_lqer, pack_asym
from plugins.quant_mixed import QuantMixed, QuantMixedConfig

REGISTRY = Registry()


def correlated_inputs(n: int, cols: int, seed: int) -> np.ndarray:
    """Rows of X share a few strong directions (like activations), with per-column scales."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) * np.exp(-np.arange(cols) / 8.0)[:, None]
    return (rng.standard_normal((n, cols)) @ mix) * rng.uniform(0.5, 2.0, size=cols)


def reference_gptq(w: np.ndarray, h: np.ndarray, scale: np.ndarray, qmax: int, damp: float = 0.01) -> np.ndarray:
    """Textbook GPTQ in float64, unblocked: act order, then per column quantize, spread the error with the
    inverse Hessian of the remaining columns, and remove the column from that inverse (OBS downdate)."""
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    order = np.argsort(-np.diag(h), kind="stable")
    w = w[:, order].copy()
    w[:, dead[order]] = 0
    hinv = np.linalg.inv(h[np.ix_(order, order)])
    codes = np.zeros_like(w)
    for j in range(w.shape[1]):
        q = np.clip(np.round(w[:, j] / scale), -qmax, qmax)
        codes[:, j] = q
        err = (w[:, j] - q * scale) / hinv[j, j]
        w[:, j + 1:] -= np.outer(err, hinv[j, j + 1:])
        hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    out = np.empty_like(codes)
    out[:, order] = codes
    return out


def test_gptq_solver_matches_float64_reference():
    rng = np.random.default_rng(0)
    x = correlated_inputs(1024, 96, seed=1)
    w = rng.standard_normal((48, 96))
    h = x.T @ x / len(x)
    scale = (np.abs(w).max(axis=1) / 31).astype(np.float16).astype(np.float64)
    ref = reference_gptq(w, h, scale, 31)
    prep = prepare_hessian(torch.from_numpy(h).float())
    ours = gptq_rows(torch.from_numpy(w).float(), prep, torch.from_numpy(scale).float(), -31, 31, block_size=32)
    assert ours.dtype == torch.int8 and int(ours.abs().max()) <= 31
    mismatch = np.mean(ours.numpy() != ref)
    assert mismatch < 0.01, mismatch  # float32 vs float64 may flip a rare near-tie


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(correlated_inputs(2048, 128, seed=3)).float()
    w = torch.from_numpy(rng.standard_normal((64, 128))).float()
    prep = prepare_hessian(x.T @ x / len(x))
    scale = (w.abs().amax(dim=1) / 31).to(torch.float16)
    codes, s, k = gptq_quantize(w, prep, [scale], bits=6, block_size=32)
    rtn = torch.clamp(torch.round(w / scale.float()[:, None]), -31, 31)
    err_gptq = float(torch.linalg.norm(x @ w.T - x @ (codes.float() * s.float()[:, None]).T))
    err_rtn = float(torch.linalg.norm(x @ w.T - x @ (rtn * scale.float()[:, None]).T))
    assert k == 0 and err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)
    # Several candidate scales: the chosen one has the lowest weight MSE of all candidates.
    cands = [(w.abs().amax(dim=1) * f / 31).to(torch.float16) for f in (0.6, 0.9, 1.0)]
    codes, s, k = gptq_quantize(w, prep, cands, bits=6, block_size=32)
    mse = [float((gptq_quantize(w, prep, [c], 6, 32)[0].float() * c.float()[:, None] - w).pow(2).mean())
           for c in cands]
    assert k == int(np.argmin(mse)) and torch.equal(s, cands[k])


def test_hessian_collector_is_the_mean_xtx_of_each_linear_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    xs = [torch.randn(5, 7, 16) for _ in range(3)]
    with HessianCollector(model, {"0.weight", "2.weight"}) as col:
        for x in xs:
            model(x)
    hs = col.finish()
    x0 = torch.cat([x.reshape(-1, 16) for x in xs]).double()
    x2 = torch.relu(x0 @ model[0].weight.double().T + model[0].bias.double())
    torch.testing.assert_close(hs["0.weight"].double(), x0.T @ x0 / len(x0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hs["2.weight"].double(), x2.T @ x2 / len(x2), rtol=1e-5, atol=1e-5)
    model(xs[0])  # hooks are gone after the context
    assert col.rows["0.weight"] == 105


def tiny_run(tiny_sets, plugins, extra=(), make_dir=True):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=[*tiny_sets, *extra],
                  check_plugins=REGISTRY.check)
    return setup(cfg, REGISTRY, make_dir=make_dir)


def test_gptq_run_reserves_budget_and_counts_calibration_as_training(tiny_sets):
    run = tiny_run(tiny_sets, ["gptq"], ["gptq.keep_float_max_numel=0", "gptq.calib_batches=3",
                                         "gptq.reserve_seconds=5", "core.max_wallclock_seconds=600",
                                         "core.iterations=4"])
    metrics = train(run)
    log = (run.run_dir / "train.log").read_text()
    assert "calibration:reserving 5.0s, effective=595000ms" in log
    assert "gptq:reserving 5.0s, effective=595000ms" in log
    assert "GPTQ:collected 12 Hessians in" in log  # 2 layers × (c_q, c_k, c_v, proj, fc, mlp proj)
    assert "gptq_calibration time:" in log and "tokens:3072" in log
    assert metrics["calibration_ms"] > 0
    assert metrics["train_time_ms"] == pytest.approx(metrics["loop_train_time_ms"] + metrics["calibration_ms"])
    assert metrics["artifact_label"].startswith("int6+") and metrics["gptq_hessians"] == 12
    records, header = read_artifact(run.run_dir / "final_model.ptz", codecs.all_decoders())
    assert header["quantizer"] == "int6"
    q = records["blocks.0.attn.c_q.weight"]
    assert q.meta["method"] == "gptq" and q.meta["bits"] == 6 and int(q.data.abs().max()) <= 31
    assert records["tok_emb.weight"].scheme == "int8_per_row"  # #1060: the embedding keeps the int8 rule
    saved = json.loads((run.run_dir / "metrics.json").read_text())
    assert saved["calibration_ms"] == metrics["calibration_ms"]


def test_ar_calibration_reads_no_training_data(tiny_sets, monkeypatch):
    import core.train

    run = tiny_run(tiny_sets, ["gptq"], ["gptq.keep_float_max_numel=0", "gptq.calibration=ar", "gptq.ar_seqs=3",
                                         "gptq.ar_seq_len=9", "gptq.ar_batch=2", "gptq.gptq_embed=true"],
                   make_dir=False)

    def no_data(run):
        raise AssertionError("AR calibration read the training loader")

    monkeypatch.setattr(core.train, "new_loader", no_data)
    plugin = run.pm.get_plugin("gptq")
    hessians, tokens = collect_hessians(run, run.model, plugin.cfg)
    assert tokens == 3 * 8 and "tok_emb.weight" in hessians and len(hessians) == 13
    assert all(torch.isfinite(h).all() and h.shape[0] == h.shape[1] for h in hessians.values())
    plugin.cfg.calibration = "train"
    with pytest.raises(AssertionError, match="training loader"):
        collect_hessians(run, run.model, plugin.cfg)



def test_shuffled_calibration_reads_the_records_rows_whatever_the_training_loader(tiny_sets):
    """PR #1855 trains on packed documents but calibrates GPTQ on ShuffledSequenceLoader rows (rank-seeded):
    `calibration = "shuffled"` feeds those rows with doc_packing as the training loader; `"train"` feeds
    doc_packing's flat (1, n) batches instead."""
    from plugins.shuffled_loader import ShuffledSequenceLoader

    run = tiny_run(tiny_sets, ["doc_packing", "gptq"], ["gptq.keep_float_max_numel=0", "gptq.calib_batches=3",
                                                        "gptq.calibration=shuffled"], make_dir=False)
    seen: list[torch.Tensor] = []
    run.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    plugin = run.pm.get_plugin("gptq")
    core = run.core
    _, tokens = collect_hessians(run, run.model, plugin.cfg)
    ref = ShuffledSequenceLoader(run.train_files, 0, 1, core.train_seq_len, torch.device("cpu"), 0)
    want = [ref.next_batch(core.train_batch_tokens, core.train_seq_len, run.grad_accum_steps)[0] for _ in range(3)]
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, want, strict=True))
    assert seen[0].shape[1] == core.train_seq_len and tokens == sum(w.numel() for w in want)
    seen.clear()
    plugin.cfg.calibration = "train"
    collect_hessians(run, run.model, plugin.cfg)
    n = core.train_batch_tokens // run.grad_accum_steps
    assert [tuple(x.shape) for x in seen] == [(1, n)] * 3  # doc_packing's flat rows


def test_gptq_sdclip_embedding_and_fallbacks():
    torch.manual_seed(1)
    w = torch.randn(64, 96)
    x = torch.from_numpy(correlated_inputs(512, 96, seed=4)).float()
    plugin = GPTQ(GPTQConfig(keep_float_max_numel=0, clip="sdclip", gptq_embed=True))
    plugin.hessians = {"tok_emb.weight": x.T @ x / len(x), "blocks.0.mlp.fc.weight": x.T @ x / len(x)}
    emb = plugin.pg_quantize_tensor("tok_emb.weight", w, None)
    assert emb.meta["method"] == "gptq" and emb.meta["bits"] == 8 and int(emb.data.abs().max()) <= 127
    want = (20.0 * w.std(dim=1) / 127).to(torch.float16)
    assert torch.equal(emb.scale, want)
    mlp = plugin.pg_quantize_tensor("blocks.0.mlp.fc.weight", w, None)
    assert torch.equal(mlp.scale, (12.85 * w.std(dim=1) / 31).to(torch.float16))
    no_h = plugin.pg_quantize_tensor("blocks.1.mlp.fc.weight", w, None)  # no Hessian: SDClip round-to-nearest
    assert no_h.meta["method"] == "sdclip" and torch.equal(no_h.scale, mlp.scale)
    with pytest.raises(ValueError, match="gptq.calibration must be one of"):
        GPTQ(GPTQConfig(calibration="val"))


# --- LQER -------------------------------------------------------------------------------------------
LQER_SCHEMES = {**ex.SCHEMES, **LQER().pg_dequantizers()}


def test_lqer_asym_matches_an_independent_float64_computation_and_reduces_error():
    torch.manual_seed(2)
    state = {f"blocks.{i}.mlp.fc.weight": torch.randn(96, 128) * (1 + i) for i in range(4)}
    quant = QuantMixed(QuantMixedConfig(keep_float_max_numel=0))
    qstate = {n: quant.pg_quantize_tensor(n, t, None) for n, t in state.items()}
    before = {n: q.dequantize() for n, q in qstate.items()}
    top = add_lqer(qstate, state, LQERConfig(rank=4, top_k=2))
    assert top == ["blocks.3.mlp.fc.weight", "blocks.2.mlp.fc.weight"]  # the largest errors
    for name in top:
        q = qstate[name]
        assert q.scheme == "lqer" and q.meta["lqer_packing"] == "asym"
        # Reference: the residual's SVD (torch float32, as the record: fixes the factors' signs, which the
        # asymmetric int2/int4 ranges are not invariant to), then packing and sum in float64 numpy.
        e32 = state[name].float() - before[name].float()
        u, s, vh = (t.double().numpy() for t in torch.linalg.svd(e32, full_matrices=False))
        e = e32.double().numpy()
        a, b = u[:, :4] * s[:4], vh[:4]
        s_a = np.float64(np.float16(np.abs(a).max() / 1.5))
        qa = np.clip(np.rint(a / s_a), -2, 1)
        bg = b.reshape(-1, 64)
        s_b = (np.abs(bg).max(axis=1) / 7.5).astype(np.float16).astype(np.float64)
        qb = np.clip(np.rint(bg / s_b[:, None]), -8, 7).reshape(b.shape)
        want = before[name].double().numpy() + (qa * s_a) @ (qb.reshape(-1, 64) * s_b[:, None]).reshape(b.shape)
        got = q.dequantize(LQER_SCHEMES).double().numpy()
        assert np.mean(np.abs(got - want) > 1e-4) < 1e-3  # float32 vs float64 may flip a rare rounding tie
        assert np.linalg.norm(got - state[name].numpy()) < np.linalg.norm(e)
    untouched = qstate["blocks.0.mlp.fc.weight"]
    assert untouched.scheme == "intk_per_row"
    blob = ex.encode_artifact(qstate, codecs.ZlibCodec(), "int6")  # factors survive the artifact round trip
    decoded, _ = ex.decode_artifact(blob, codecs.all_decoders())
    for name in state:
        assert torch.equal(decoded[name].dequantize(LQER_SCHEMES), qstate[name].dequantize(LQER_SCHEMES))
    with pytest.raises(ex.ArtifactError, match="unknown quantization scheme 'lqer'"):
        decoded[top[0]].dequantize()  # the core alone does not know the plugin's scheme
    assert decoded[top[0]].payload_bytes == qstate[top[0]].payload_bytes > before[top[0]].numel()


def test_lqer_symmetric_packing_when_groups_do_not_divide_and_plugin_needs_float_state():
    torch.manual_seed(3)
    a, b = torch.randn(10, 3), torch.randn(3, 30)
    packed = pack_asym(a, b.reshape(-1)[:64].reshape(1, 64), 64)
    assert packed["a"].min() >= -2 and packed["a"].max() <= 1 and packed["b"].abs().max() <= 8
    w = {"blocks.0.mlp.fc.weight": torch.randn(40, 30)}  # B = 4×30 = 120 values: not whole groups of 64
    quant = QuantMixed(QuantMixedConfig(keep_float_max_numel=0))
    qstate = {n: quant.pg_quantize_tensor(n, t, None) for n, t in w.items()}
    add_lqer(qstate, w, LQERConfig(top_k=1))
    q = qstate["blocks.0.mlp.fc.weight"]
    assert q.meta["lqer_packing"] == "sym" and q.extra["a_scale"].shape == (40,)
    ctx = ex.RefineContext(size_of=len, code_bytes=0)
    with pytest.raises(ValueError, match="float state"):
        LQER().pg_refine_quantized({}, ctx)
    with pytest.raises(ValueError, match="lqer.rank must be >= 1"):
        LQER(LQERConfig(rank=0))
