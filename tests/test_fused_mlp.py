"""fused_mlp: the fused LeakyReLU² MLP Function (torch reference path, hand-written backward) against the eager
leaky_relu2 MLP in value and gradients, the module's training/eval split, the compiled model (fullgraph, the
Function in the training graph only), the quack epilogues' per-element math and the Function's quack wiring, and
bad settings. The Triton and quack kernels themselves are checked in tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_builders import build_tiny, graph_recorder, randomize

from core.config import ConfigError, resolve
from core.registry import Registry
from plugins import fused_mlp as FM
from plugins.fused_mlp import (
    FusedLeakyReLU2Function,
    FusedLeakyReLU2MLP,
    fused_leaky_relu2_mlp,
    quack_up_backward_math,
    quack_up_math,
    up_backward_reference,
    up_reference,
)

REGISTRY = Registry()
TINY = ["core.vocab_size=96", "core.num_layers=2", "core.model_dim=32", "core.num_heads=4", "core.num_kv_heads=2",
        "core.device=cpu", "core.compile=false"]


def eager_mlp(x, w1, w2, slope):
    return F.leaky_relu(x @ w1.T, negative_slope=slope).square() @ w2.T


def grads_of(fn, tensors, weights):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    return out, torch.autograd.grad(out, tensors, weights)


@pytest.mark.parametrize("slope", [0.5, 0.0, 0.3])
def test_function_output_and_gradients_equal_the_eager_leaky_relu2_mlp(slope):
    gen = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(*shape, generator=gen) for shape in ((2, 5, 16), (24, 16), (16, 24)))
    weights = torch.randn(2, 5, 16, generator=gen)
    ref, ref_grads = grads_of(lambda *t: eager_mlp(*t, slope), (x, w1, w2), weights)
    out, got = grads_of(lambda *t: fused_leaky_relu2_mlp(*t, slope, "torch"), (x, w1, w2), weights)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r, name in zip(got, ref_grads, ("x", "w1", "w2"), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4, msg=f"d{name}")


def test_epilogues_written_out():
    pre = torch.tensor([[-2.0, -0.5, 0.0, 1.5]])
    got_pre, post = up_reference(torch.ones(1, 1), pre.T, 0.5)  # x = [[1]], w1 = preᵀ: x·W1ᵀ = pre
    torch.testing.assert_close(got_pre, pre)
    torch.testing.assert_close(post, torch.tensor([[1.0, 0.0625, 0.0, 2.25]]))
    # d leaky(p)²/dp: 2p for p > 0, 2·slope²·p else (the record's 0.5·pre at slope 0.5); g·W2 = 1
    torch.testing.assert_close(up_backward_reference(torch.ones(1, 1), torch.ones(1, 4), pre, 0.5),
                               torch.tensor([[-1.0, -0.25, 0.0, 3.0]]))


def torch_drelu(p, a):
    """quack.activation.drelu's contract in torch: (a·[p > 0], relu(p))."""
    return a * (p > 0), F.relu(p)


@pytest.mark.parametrize("slope", [0.5, 0.0, 0.3])
def test_quack_epilogue_math_equals_the_reference_epilogues(slope):
    """The per-element math the quack epilogues trace, run on torch tensors: pre, leaky(pre)² and the backward's
    dpre equal the torch reference (bitwise at the records' slopes 0 and 0.5, where the Triton kernel's products
    are reproduced exactly)."""
    gen = torch.Generator().manual_seed(5)
    pre = torch.randn(64, 48, generator=gen)
    pre[0, :4] = 0.0
    acc = torch.randn(64, 48, generator=gen)  # g·W2
    got_pre, post = quack_up_math(pre, slope, F.relu)
    dpre = quack_up_backward_math(acc, pre, slope, torch_drelu)
    ref_dpre = up_backward_reference(acc, torch.eye(48), pre, slope)
    tol = {"rtol": 0.0, "atol": 0.0} if slope in (0.0, 0.5) else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(got_pre, pre, rtol=0.0, atol=0.0)
    torch.testing.assert_close(post, F.leaky_relu(pre, slope).square(), **tol)
    torch.testing.assert_close(dpre, ref_dpre, **tol)


def test_the_function_on_the_quack_path_runs_both_quack_ops_and_trains_like_the_eager_mlp(monkeypatch):
    """The Function's quack path, its two custom ops replaced by the epilogue math on torch matmuls: each op runs
    once per forward + backward, and output and gradients equal the eager MLP's."""
    calls = []

    def up(x, w1, s):
        calls.append("up")
        return quack_up_math(x @ w1.T, s, F.relu)

    def up_backward(g, w2, pre, s):
        calls.append("up_backward")
        return quack_up_backward_math(g @ w2, pre, s, torch_drelu)

    monkeypatch.setattr(FM, "_quack_up", up, raising=False)
    monkeypatch.setattr(FM, "_quack_up_backward", up_backward, raising=False)
    gen = torch.Generator().manual_seed(6)
    x, w1, w2 = (torch.randn(*shape, generator=gen) for shape in ((2, 5, 16), (24, 16), (16, 24)))
    weights = torch.randn(2, 5, 16, generator=gen)
    ref, ref_grads = grads_of(lambda *t: eager_mlp(*t, 0.5), (x, w1, w2), weights)
    out, got = grads_of(lambda *t: FusedLeakyReLU2Function.apply(*t, 0.5, "quack"), (x, w1, w2), weights)
    assert calls == ["up", "up_backward"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r, name in zip(got, ref_grads, ("x", "w1", "w2"), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4, msg=f"d{name}")


def test_bf16_inputs_give_bf16_outputs_and_gradients_close_to_fp32():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, generator=gen)
    w1, w2 = torch.randn(32, 16, generator=gen) / 4, torch.randn(16, 32, generator=gen) / 4
    weights = torch.randn(3, 16, generator=gen)
    ref, ref_grads = grads_of(lambda *t: eager_mlp(*t, 0.5), (x, w1, w2), weights)
    out, got = grads_of(lambda *t: fused_leaky_relu2_mlp(*t, 0.5), [t.bfloat16() for t in (x, w1, w2)],
                        weights.bfloat16())
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got)
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    for g, r in zip(got, ref_grads, strict=True):
        torch.testing.assert_close(g.float(), r, rtol=3e-2, atol=5e-2)


def build(plugins, sets=()):
    return build_tiny(REGISTRY, TINY, plugins, sets, 0)[1]


def test_the_model_trains_like_leaky_relu2_and_evaluates_through_fc_and_proj():
    fused, leaky = build(["fused_mlp"], ["fused_mlp.slope=0.3"]), build(["leaky_relu2"], ["leaky_relu2.slope=0.3"])
    assert isinstance(fused.blocks[0].mlp, FusedLeakyReLU2MLP)
    randomize(fused)
    leaky.load_state_dict(fused.state_dict())
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, 1)
    for model in (fused, leaky):
        model.train()
        model(x, y).backward()
    torch.testing.assert_close(fused(x, y), leaky(x, y))
    for (name, p), q in zip(fused.named_parameters(), leaky.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    seen = []
    mlp = fused.blocks[1].mlp
    handle = mlp.proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    h = torch.randn(2, 16, 32)
    with torch.no_grad():
        mlp(h)
        assert not seen  # training: the fused Function, not the proj module
        fused.eval()
        out = mlp(h)
    handle.remove()
    hidden = F.leaky_relu(h @ mlp.fc.weight.T, negative_slope=0.3).square()
    torch.testing.assert_close(seen[0], hidden)  # eval: calibration hooks see the hidden activation
    torch.testing.assert_close(out, hidden @ mlp.proj.weight.T)


def test_compiled_training_graph_holds_the_function_and_matches_eager():
    """fullgraph, zero breaks; the training graph calls the fused Function (the eval graph does not) and its output
    and gradients are the eager leaky_relu2 model's, not the plugin-off (relu²) model's."""
    torch._dynamo.reset()
    fused, leaky, plain = build(["fused_mlp"]), build(["leaky_relu2"]), build([])
    randomize(fused)
    leaky.load_state_dict(fused.state_dict())
    plain.load_state_dict(fused.state_dict())
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, 1)
    backend, graphs = graph_recorder()
    assert torch._dynamo.explain(fused)(x, y).graph_break_count == 0
    loss = torch.compile(fused, backend=backend, fullgraph=True)(x, y)
    assert "autograd_function_apply" in graphs[-1]
    loss.backward()
    leaky(x, y).backward()
    torch.testing.assert_close(loss, leaky(x, y))
    assert abs(loss.item() - plain(x, y).item()) > 1e-3
    for (name, p), q in zip(fused.named_parameters(), leaky.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    fused.eval()
    with torch.no_grad():
        torch.compile(fused, backend=backend, fullgraph=True)(x)
    assert "autograd_function_apply" not in graphs[-1]


def config_error(sets):
    with pytest.raises(ConfigError) as err:
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["fused_mlp"], sets=[*TINY, *sets],
                check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    assert len(err.value.errors) == 1, err.value.errors
    return err.value.errors[0]


def test_bad_settings_are_one_line_errors_naming_the_field():
    assert "fused_mlp.slope" in config_error(["fused_mlp.slope=1.5"])
    assert "fused_mlp.backend" in config_error(["fused_mlp.backend=cuda"])
    if FM.quack_activation is None:  # this machine has no quack-kernels: asking for it is a configuration error
        assert "fused_mlp.backend: 'quack' needs the quack-kernels package" in config_error(["fused_mlp.backend=quack"])
    with pytest.raises(RuntimeError, match="fused_mlp: backend 'quack' needs (the quack-kernels|bf16 CUDA)"):
        fused_leaky_relu2_mlp(torch.zeros(2, 8), torch.zeros(8, 8), torch.zeros(8, 8), 0.5, "quack")
    errors = REGISTRY.check(["fused_mlp", "leaky_relu2"]) + REGISTRY.check(["fused_mlp", "late_qat"])
    assert len(errors) == 2 and "'mlp'" in errors[0] and "conflict" in errors[1]


def test_flop_formulas_of_the_kernels_count_what_the_reference_epilogues_multiply():
    """`pgolf bench` counts the Triton kernel's custom ops by `up_flops` / `up_backward_flops` (registered where
    triton imports): each equals the FLOPs torch's counter finds in the torch reference of that epilogue."""
    from torch.utils.flop_counter import FlopCounterMode

    from plugins.fused_mlp import up_backward_flops, up_backward_reference, up_flops, up_reference

    m, k, n, d = 12, 8, 32, 8
    x, w1, w2, g = torch.randn(m, k), torch.randn(n, k), torch.randn(d, n), torch.randn(m, d)
    with FlopCounterMode(display=False) as up:
        pre, _ = up_reference(x, w1, 0.5)
    with FlopCounterMode(display=False) as back:
        up_backward_reference(g, w2, pre, 0.5)
    assert up_flops(x.shape, w1.shape, 0.5) == up.get_total_flops() == 2 * m * k * n
    assert up_backward_flops(g.shape, w2.shape, pre.shape, 0.5) == back.get_total_flops() == 2 * m * d * n


def test_the_tile_benchmark_refuses_a_machine_without_the_kernel():
    """benchmarks/fused_mlp_tiles.py times the kernel's tile configurations on CUDA; elsewhere one clear line."""
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the benchmark itself")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_mlp_tiles.py"
    proc = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("fused_mlp_tiles: needs a CUDA GPU")


def test_the_quack_tile_sweep_times_each_configuration_in_both_orders_and_notes_the_faster(monkeypatch):
    """`quack_tile_sweep` (benchmarks/fused_mlp_tiles.py) with quack's epilogues and the clock faked: every forward and
    backward configuration is called with its own pinned tiles and no autotuning, timed once in the list's order and
    once reversed (the first-timed entry read slow on the GPU), noted at its faster time; a configuration that raises
    is reported and not timed again."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import fused_mlp_tiles as tiles

    seen = []

    def epilogue(direction):
        def call(*args, out, config, tuned):
            assert not tuned and set(out) == ({"D", "postact"} if direction == "fwd" else {"D"})
            if (config.tile_m, config.tile_n) == (256, 128):
                raise RuntimeError("too much shared memory")
            seen.append((direction, config.tile_m, config.tile_n, config.pingpong))
        return call

    monkeypatch.setattr(tiles.FM, "quack_epilogues", lambda slope: (epilogue("fwd"), epilogue("bwd")), raising=False)
    monkeypatch.setattr(tiles.FM, "GemmConfig", lambda **kw: SimpleNamespace(**kw), raising=False)
    clock = iter(range(1000, 0, -1))  # each timing faster than the one before: the second pass wins
    monkeypatch.setattr(tiles, "ms_per_call", lambda call, iters: (call(), float(next(clock)))[1])
    noted = {}
    x = torch.zeros(4, 8)
    tiles.quack_tile_sweep(x, torch.zeros(16, 8), x, torch.zeros(8, 16), torch.zeros(4, 16),
                           lambda name, ms: noted.update({name: ms}), 0.5)
    good = [t for t in tiles.QUACK_TILES if t[:2] != (256, 128)]
    names = [f"quack {d} {m}x{n} pingpong={p}" for m, n, p in good for d in ("fwd", "bwd")]
    assert sorted(noted) == sorted(names)
    assert all(noted[n] < noted[m] for n, m in zip(names, names[1:], strict=False))  # reversed pass: first is fastest
    assert len(seen) == 2 * 2 * 2 * len(good)  # per pass and configuration: a warm-up call and the timed one
