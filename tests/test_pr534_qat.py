"""PR #534's late QAT in `late_qat`: its fake-quant math (`rowmax_floor = 1e-8`), its timing (the first
fake-quantized forward follows the step whose lr_mul fell below the threshold), its base-LR halving
(`lr_scale_on_enable`), and tight SWA applied from one checkpoint (`min_checkpoints`); the recipe against
the record's own script, step by step, on CPU (benchmarks/record_parity_cpu.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import ConfigError, resolve
from core.hookspecs import hookimpl
from core.model import CastedLinear
from core.registry import Registry
from core.run import create_run
from core.train import CoreDefaults, build_model, setup, train
from plugins.late_qat import FakeQuantLinear, fake_quantize_rows
from tests.test_swa import Capture as SWACapture
from tests.test_swa import configure

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = Registry()
MIRROR = Path(os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo"))


def record_fake_quantize(w: np.ndarray, bits: int, rowmax_floor: float, lo: int) -> np.ndarray:
    """PR #534's fake_quantize (lo = -31) / PR #315's (lo = -32, floor 1) written in numpy, row by row."""
    qmax = np.float32(2 ** (bits - 1) - 1)
    out = np.empty_like(w)
    for i, row in enumerate(w):
        scale = np.float32(max(np.abs(row).max(), np.float32(rowmax_floor))) / qmax
        out[i] = np.clip(np.round(row / scale), lo, qmax) * scale  # np.round: half to even, as torch.round
    return out


def test_rowmax_floor_is_pr534s_fake_quantize_and_the_default_pr315s():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 40, generator=gen) * torch.tensor([0.004, 0.1, 0.5, 1.5, 4.0, 0.0])[:, None]
    ours = fake_quantize_rows(w, 6, rowmax_floor=1e-8).numpy()
    np.testing.assert_array_equal(ours, record_fake_quantize(w.numpy(), 6, 1e-8, -31))
    default = fake_quantize_rows(w, 6).numpy()
    np.testing.assert_array_equal(default, record_fake_quantize(w.numpy(), 6, 1.0, -32))
    # rows with max < 1: the default's step is 1/31 (row 0, max < 1/62, collapses to 0), PR #534's rowmax/31
    assert np.all(default[0] == 0) and len(np.unique(ours[0])) > 20
    np.testing.assert_array_equal(ours[3:], default[3:])  # rows with max >= 1 agree
    assert np.all(ours[5] == 0)  # an all-zero row: the 1e-8 floor, no division by zero
    assert np.abs(ours[:5] / (np.abs(w[:5].numpy()).max(1, keepdims=True) / 31)).max() <= 31 + 1e-4  # no clamp


def test_bad_late_qat_and_swa_settings_are_one_line_configuration_errors(tiny_sets):
    for setting, expect in (("late_qat.rowmax_floor=0", r"late_qat.rowmax_floor: expected a positive"),
                            ("late_qat.lr_scale_on_enable=0", r"late_qat.lr_scale_on_enable: expected a positive"),
                            ("late_qat.bits=9", r"late_qat.bits: expected 2..8"),
                            ("tight_swa.min_checkpoints=0", r"tight_swa.min_checkpoints: expected an integer >= 1")):
        with pytest.raises(ConfigError, match=expect) as err:
            configure(tiny_sets, ["late_qat", "tight_swa"], setting)
        assert expect.split(":")[0] in str(err.value).splitlines()[0]


# --- the compiled model -----------------------------------------------------------------------------
def pr534_tiny(*sets: str):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=ROOT / "recipes" / "pr534.toml",
                  sets=["core.vocab_size=96", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2",
                        "core.num_layers=2", "core.mlp_hidden=128", "xsa.last_n=1", "value_embeddings.layers=1",
                        "value_embeddings.dim=16", "partial_rope.dims=8", *sets, "core.device=cpu",
                        "core.compile=false"], check_plugins=REGISTRY.check)
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    torch.manual_seed(0)
    run.model = build_model(run)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # nothing inert (zero-init projections), linear rows with max well below 1
        for p in run.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim < 2 else 0.5 / math.sqrt(p.shape[-1])))
    return run, run.model


def test_rowmax_floor_reaches_the_compiled_model():
    """The recipe's model compiled (fullgraph) with PR #534's floor and the switch on: its output is the
    model's with numpy-quantized weights at floor 1e-8 (independent), far from the one at PR #315's floor 1."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(2))
    run, model = pr534_tiny()  # the recipe: rowmax_floor = 1e-8
    assert run.pm.get_plugin("late_qat").cfg.rowmax_floor == 1e-8
    linears = [m for m in model.modules() if isinstance(m, CastedLinear)]
    assert linears and all(type(m) is FakeQuantLinear for m in linears)
    assert max(m.weight.abs().max().item() for m in linears) < 1  # where the two floors part
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    model.train()
    refs = {}
    with torch.no_grad():
        off = compiled(x, x)
        run.pm.get_plugin("late_qat").switch.set(True)
        on = compiled(x, x)
        live = {m: m.weight.clone() for m in linears}
        model.eval()  # eval mode never fake-quantizes: the reference is the plain model with quantized weights
        for floor in (1e-8, 1.0):
            for m in linears:
                m.weight.copy_(torch.from_numpy(record_fake_quantize(live[m].numpy(), 6, floor, -32)))
            refs[floor] = model(x, x)
    torch.testing.assert_close(on, refs[1e-8], rtol=1e-5, atol=1e-5)
    assert (on - off).abs() > 1e-4 and (refs[1.0] - on).abs() > 1e-3


# --- the timing and the LR halving in a real training loop ---------------------------------------------
class Capture(SWACapture):
    """test_swa's state capture, plus whether each step's forward saw QAT on and every group's LR."""

    def __init__(self):
        super().__init__()
        self.qat_at_forward: dict[int, bool] = {}
        self.lr: dict[int, list[float]] = {}
        self.mul: dict[int, float] = {}

    @hookimpl(tryfirst=True)
    def pg_before_step(self, run, step, clock):  # before late_qat flips it: the state this step's forward saw
        if (qat := run.pm.get_plugin("late_qat")) is not None:
            self.qat_at_forward[step] = qat.switch.is_on()
        self.mul[step] = clock.lr_mul

    @hookimpl
    def pg_after_step(self, run, step):
        super().pg_after_step(run, step)
        self.lr[step - 1] = [g["lr"] for opt in run.optimizers for g in opt.param_groups]


def run_with_capture(cfg):
    run = setup(cfg, REGISTRY)
    cap = Capture()
    run.pm.register(cap, name="capture")
    base = [g["base_lr"] for opt in run.optimizers for g in opt.param_groups]
    train(run)
    return run, cap, base


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_qat_starts_after_the_crossing_step_and_halves_every_base_lr_from_the_next(tiny_sets, scale):
    # 12 iterations, warmdown 4: lr_mul(s) = 1, .75, .5, .25 at s = 8..11. Threshold 0.6: crossed at s = 10,
    # so (PR #534) s = 10 still trains without fake quant at the full base LR; s = 11 is the first with both.
    run, cap, base = run_with_capture(configure(
        tiny_sets, ["late_qat"], "late_qat.threshold=0.6", f"late_qat.lr_scale_on_enable={scale}",
        "late_qat.rowmax_floor=1e-8"))
    assert [s for s, on in sorted(cap.qat_at_forward.items()) if on] == [11]
    for s in range(12):
        want = [b * cap.mul[s] * (scale if s >= 11 else 1.0) for b in base]
        assert cap.lr[s] == pytest.approx(want, rel=1e-12), s
    log = (run.run_dir / "train.log").read_text()
    assert "late_qat:enabled step:11 scale:0.5000" in log  # PR #534: "late_qat:activated at step 11"
    assert ("late_qat:base_lr x0.5 step:11" in log) == (scale != 1.0)


@pytest.mark.parametrize("min_checkpoints", [1, 2])
def test_tight_swa_min_checkpoints(tiny_sets, min_checkpoints):
    # lr_mul < 0.8 from s = 9 on, so steps n = 10..12 qualify; every 11 -> one checkpoint, after step 11.
    run, cap, _ = run_with_capture(configure(
        tiny_sets, ["tight_swa"], "tight_swa.every=11", "tight_swa.threshold=0.8",
        f"tight_swa.min_checkpoints={min_checkpoints}"))
    want = cap.after[11] if min_checkpoints == 1 else cap.after[12]
    for k, v in cap.final.items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=1e-7)
    assert any(not torch.allclose(cap.after[11][k], cap.after[12][k]) for k in cap.final)
    log = (run.run_dir / "train.log").read_text()
    assert ("tight_swa:applying averaged 1 checkpoints" in log) == (min_checkpoints == 1)
    assert ("tight_swa:not applied (1 checkpoints collected; needs 2)" in log) == (min_checkpoints == 2)


# --- against the record's own script ----------------------------------------------------------------
def test_recipe_trains_as_the_record_through_late_qat_and_swa(tiny_data, tmp_path):
    """PR #534's train_gpt.py beside recipes/pr534.toml (value_embeddings.frozen=true, frozen_grads=accumulate:
    the record's VE training), fp32 on CPU with fp32 Newton-Schulz on both sides, 16 steps with warmdown 8: QAT
    from step 12
    (lr_mul(11) = 5/8 < 0.7), base LRs halved from there, one SWA checkpoint (after step 14: lr_mul(13) < 0.9
    and 14 % 7 == 0) applied. Equal losses to float rounding, the same activation step, equal weights after
    SWA (measured: max |dloss| 5e-6, weights 2e-5). Each ported setting set back to its default parts them
    (measured: rowmax_floor=1 dloss 2e-3 from step 13; lr_scale_on_enable=1 dloss 3e-2 from step 14;
    min_checkpoints=2 weights 5e-3), as does QAT one step early (threshold 0.8: dloss from step 12)."""
    from pgolf.cli import main

    if not (MIRROR / "HEAD").exists():
        pytest.skip(f"no parameter-golf git mirror at {MIRROR}")
    record = tmp_path / "train_gpt.py"
    assert main(["bench", "--extract-record", str(record), "--profile", "pr534", "--mirror", str(MIRROR)]) == 0
    shape = ["VOCAB_SIZE=320", "NUM_LAYERS=3", "MODEL_DIM=64", "NUM_HEADS=4", "NUM_KV_HEADS=2", "MLP_HIDDEN=128",
             "TRAIN_SEQ_LEN=64", "EVAL_SEQ_LEN=64", "TRAIN_BATCH_TOKENS=1024", "VAL_BATCH_SIZE=2048",
             "XSA_LAST_N=3", "MUON_MOMENTUM_WARMUP_STEPS=4"]
    rec_env = ["VE_LAYERS=1,2", "VE_DIM=16", "ROPE_DIMS=8", "QAT_LATE_THRESHOLD=0.7", "SWA_EVERY=7",
               "SWA_THRESHOLD=0.9"]
    sets = ["value_embeddings.layers=1,2", "value_embeddings.dim=16", "partial_rope.dims=8",
            "late_qat.threshold=0.7", "tight_swa.every=7", "tight_swa.threshold=0.9", "value_embeddings.frozen=true",
            "value_embeddings.frozen_grads=accumulate"]

    def bench(out: str, rec_extra: tuple[str, ...] = (), pg_extra: tuple[str, ...] = ()) -> dict:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "record_parity_cpu.py"), "--record", str(record),
               "--recipe", str(ROOT / "recipes" / "pr534.toml"), "--data", str(tiny_data), "--iterations", "16",
               "--warmdown", "8", "--out", str(tmp_path / out), "--weights", "--ns-fp32", "--shape", *shape,
               "--record-env", *rec_env, *rec_extra, "--pgolf-set", *sets, *pg_extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return json.loads((tmp_path / out / "parity.json").read_text())

    same = bench("same")
    assert len(same["rows"]) == 16 and same["max_abs_diff"] < 1e-4, same["rows"]  # measured 5e-6
    assert "late_qat:activated at step 12 (lr_scale=0.625)" in same["record_events"]
    assert "late_qat:enabled step:12 scale:0.6250" in same["pgolf_events"]
    assert "swa:applying uniform average of 1 checkpoints" in same["record_events"]
    assert "tight_swa:applying averaged 1 checkpoints" in same["pgolf_events"]
    assert same["weights_max_abs_diff"] < 2e-4 and same["weights_unmatched"] == ["ve_scales.0"]  # measured 2e-5
    # The record's frozen VE keeps requires_grad: its gradients, never zeroed from the warm-up on, count in
    # clip_grad_norm_. With 20 warm-up steps and clipping active (0.01), only frozen_grads=accumulate keeps step 2
    # equal (measured 3.7e-9, none: 1.9e-6; over 16 steps 1.3e-5 vs 8.5e-5).
    rec_clip, pg_clip = ("GRAD_CLIP_NORM=0.01", "WARMUP_STEPS=20"), ("core.grad_clip_norm=0.01", "core.warmup_steps=20")
    accumulate = bench("clip_accumulate", rec_clip, pg_clip)
    none = bench("clip_none", rec_clip, (*pg_clip, "value_embeddings.frozen_grads=none"))
    step2 = [abs(r["rows"][1]["record"] - r["rows"][1]["pgolf"]) for r in (accumulate, none)]
    assert step2[0] < 1e-7 < step2[1], step2
    assert accumulate["max_abs_diff"] < 4e-5 < none["max_abs_diff"], (accumulate["max_abs_diff"], none["max_abs_diff"])
