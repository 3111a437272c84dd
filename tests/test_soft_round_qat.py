"""soft_round_qat (PR #1179): the soft-rounding formula, its real (non-STE) gradient, the alpha ramp, the
activation rule, and the compiled switch (on/off and alpha are buffers: they change the compiled output
with no recompile)."""

from __future__ import annotations

import pytest
import torch

from core.config import resolve
from core.model import CastedLinear
from core.registry import Registry
from core.run import create_run
from core.train import Clock, CoreDefaults, build_model
from plugins.soft_round_qat import SoftRoundLinear, alpha_at, soft_round_rows
from tests.conftest import TINY_CORE

REGISTRY = Registry()


def clock(step: int, lr_mul: float) -> Clock:
    return Clock(step=step, elapsed_ms=0.0, frac=0.5, lr_mul=lr_mul, muon_momentum=0.99)


def test_soft_round_is_the_records_formula_and_sharpens_to_round():
    w = torch.tensor([[0.31, -0.62, 0.04, 3.1], [-0.2, 0.0, 0.7, 0.45]])
    s = (w.abs().amax(dim=1) / 31).clamp_min(1 / 31)[:, None]
    u = w / s
    by_hand = torch.clamp(torch.floor(u) + 1 / (1 + torch.exp(-4.0 * (u - torch.floor(u) - 0.5))), -31, 31) * s
    torch.testing.assert_close(soft_round_rows(w, 4.0, 6), by_hand)
    # alpha -> infinity: sigmoid becomes a step at frac 0.5, i.e. round-to-nearest on the int6 grid
    torch.testing.assert_close(soft_round_rows(w, 1e4, 6), torch.clamp(torch.round(u), -31, 31) * s)
    # alpha = 1: far from rounding (sigmoid(±0.5) ∈ [0.38, 0.62])
    assert (soft_round_rows(w, 1.0, 6) - torch.round(u) * s).abs().max() > 0.1 * s.min()


def test_soft_round_gradient_is_real_not_straight_through():
    w = torch.tensor([[0.30, -0.11, 0.52, 1.0]], requires_grad=True)
    soft_round_rows(w, 16.0, 6).sum().backward()
    # an STE would give exactly 1 everywhere; the sigmoid's slope is alpha·σ'(·) near a bin edge
    assert not torch.allclose(w.grad, torch.ones_like(w.grad))
    assert w.grad.abs().max() > 1.0


def test_alpha_ramps_linearly_from_one_to_alpha_max():
    assert [alpha_at(s, 100, 16.0, 500) for s in (100, 350, 600, 5000)] == [1.0, 8.5, 16.0, 16.0]


def build(*sets):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["soft_round_qat"],
                  sets=[*TINY_CORE, *sets], check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    run.model = build_model(run)
    return run, run.model, run.pm.get_plugin("soft_round_qat")


def test_activates_at_threshold_after_min_step_and_ramps(tmp_path):
    run, _, plugin = build("soft_round_qat.threshold=0.15", "soft_round_qat.min_step=10",
                           "soft_round_qat.ramp_steps=4", f"core.out_dir={tmp_path}")
    plugin.pg_before_step(run=run, step=5, clock=clock(5, 0.05))  # below threshold but before min_step
    assert not plugin.switch.is_on()
    plugin.pg_before_step(run=run, step=10, clock=clock(10, 0.2))  # after min_step, above threshold
    assert not plugin.switch.is_on()
    plugin.pg_before_step(run=run, step=11, clock=clock(11, 0.1))
    assert plugin.switch.is_on() and plugin.alpha.value.item() == 1.0
    plugin.pg_before_step(run=run, step=13, clock=clock(13, 0.5))  # stays on; alpha 1 + 15·2/4
    assert plugin.switch.is_on() and plugin.alpha.value.item() == pytest.approx(8.5)


def test_compiled_switch_and_alpha_change_the_output_without_recompiling():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    run, model, plugin = build("soft_round_qat.min_step=0", "soft_round_qat.ramp_steps=4")
    linears = [m for m in model.modules() if isinstance(m, CastedLinear)]
    assert linears and all(type(m) is SoftRoundLinear for m in linears)
    with torch.no_grad():  # the block projections start at zero: give every linear weight some mass
        for i, m in enumerate(linears):
            m.weight.copy_(torch.randn(m.weight.shape, generator=torch.Generator().manual_seed(i)) * 0.3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 320, (2, 32), generator=gen)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    model.train()
    off = compiled(x).detach()  # logits
    compiled(x)  # first call fills any host-side cache: allow one re-trace before counting
    frames = counter.frame_count
    torch.testing.assert_close(off, model(x).detach())
    plugin.pg_before_step(run=run, step=3, clock=clock(3, 0.05))
    on_soft = compiled(x).detach()
    plugin.pg_before_step(run=run, step=7, clock=clock(7, 0.05))  # alpha 16
    on_sharp = compiled(x).detach()
    assert counter.frame_count == frames, "flipping the switch or moving alpha must not recompile"
    assert (on_soft - off).abs().max() > 1e-3 and (on_sharp - on_soft).abs().max() > 1e-4
    torch.testing.assert_close(on_sharp, model(x).detach(), rtol=1e-5, atol=1e-5)  # eager agrees
    model.eval()  # eval mode never soft-rounds
    torch.testing.assert_close(model(x), off, rtol=1e-6, atol=1e-6)
