"""`inductor_options` (pgolf issue #15): building a model with it sets inductor's mix-order reduction as configured,
and on CUDA the compiled backward of a norm with per-channel weights really loses its eager `aten::sum` finish."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor

from core.config import resolve
from core.registry import Registry
from core.train import setup

REGISTRY = Registry()
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "inductor_options.py"
HAS_OPTION = hasattr(inductor.triton, "mix_order_reduction")


@pytest.fixture
def restored_option():
    before = getattr(inductor.triton, "mix_order_reduction", None)
    yield
    if HAS_OPTION:
        inductor.triton.mix_order_reduction = before


@pytest.mark.skipif(not HAS_OPTION, reason="torch without mix-order reduction")
@pytest.mark.parametrize("setting", [[], ["inductor_options.mix_order_reduction=true"]])
def test_building_the_model_sets_the_option(tiny_sets, restored_option, setting):
    inductor.triton.mix_order_reduction = not setting  # the opposite of what the plugin will set
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["inductor_options"],
                  sets=[*tiny_sets, *setting], check_plugins=REGISTRY.check)
    setup(cfg, REGISTRY, make_dir=False)
    assert inductor.triton.mix_order_reduction is bool(setting)


def test_a_run_without_the_plugin_leaves_the_option_alone(tiny_sets, restored_option):
    if not HAS_OPTION:
        pytest.skip("torch without mix-order reduction")
    inductor.triton.mix_order_reduction = True
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[], sets=tiny_sets)
    setup(cfg, REGISTRY, make_dir=False)
    assert inductor.triton.mix_order_reduction is True


def _eager_sums_in_compiled_backward(mix_order: bool) -> int:
    spec = importlib.util.spec_from_file_location("inductor_options_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch._dynamo.reset()
    torch.manual_seed(0)
    # the PR #1855 micro-step (12,288 tokens x 512): H200, torch 2.11, two blocks leave 2 eager sums with the option on;
    # at 8,192 x 256 inductor does not mix the orders at all (0 either way)
    model = bench.Stack(512, 2).cuda()
    x = torch.randn(1, 12288, 512, device="cuda", dtype=torch.bfloat16)
    with inductor.patch({"triton.mix_order_reduction": mix_order}):
        step = torch.compile(model, fullgraph=True)
        step(x).backward()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(x).backward()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::sum")


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_OPTION, reason="needs CUDA and mix-order reduction")
def test_off_removes_the_eager_column_sums_from_the_compiled_backward():
    assert _eager_sums_in_compiled_backward(True) > 0  # the fused kernel's partials, finished eagerly
    assert _eager_sums_in_compiled_backward(False) == 0
