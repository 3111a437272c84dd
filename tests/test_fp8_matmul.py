"""fp8_matmul: the FP8 Function's output and both gradients against an independent fp32 computation on the quantized
operands (and loosely against bf16 F.linear), the compiled model (fullgraph, zero breaks, the Function in the
training graph only, a training loss that differs from the plugin-off model's), the bf16 eval path, bad settings
and declared conflicts. `torch._scaled_mm` runs on CPU, so this is the real path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import torch.nn.functional as F
from model_builders import build_tiny, graph_recorder, randomize

from core.config import ConfigError, resolve
from core.model import CastedLinear
from core.registry import Registry
from core.run import create_run
from core.train import CoreDefaults, build_model
from plugins.fp8_matmul import FP8Linear, FP8MatmulConfig, FP8TiedHead, fp8_linear

REGISTRY = Registry()
TINY = ["core.vocab_size=96", "core.num_layers=2", "core.model_dim=32", "core.num_heads=4", "core.num_kv_heads=2",
        "core.device=cpu", "core.compile=false"]


def dequantized(t: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """t rounded to `dtype` at `scale` (saturating), back in fp32: what the FP8 matmul multiplies."""
    fmax = torch.finfo(dtype).max
    return torch.clamp(t.double() / scale, -fmax, fmax).float().to(dtype).float() * scale


def fp8_and_grads(x, w, g, cfg):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fp8_linear(x, w, cfg)
    dx, dw = torch.autograd.grad(y, (x, w), g)
    return y, dx, dw


@pytest.mark.parametrize("scaling", ["dynamic", "static"])
def test_forward_and_gradients_equal_fp32_matmuls_of_the_quantized_operands(scaling):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 64, generator=gen)              # 48 rows
    w = torch.randn(40, 64, generator=gen) / 8
    g = (torch.randn(2, 24, 40, generator=gen) * 1e-3).bfloat16().float()  # the bf16 output's gradient is bf16
    cfg = FP8MatmulConfig(targets="head", scaling=scaling, x_s=5.0 / 448, w_s=0.5 / 448, grad_s=0.2 / 448)
    y, dx, dw = fp8_and_grads(x, w, g, cfg)
    if scaling == "dynamic":
        sx, sw, sg = x.abs().max().item() / 448, w.abs().max().item() / 448, g.abs().max().item() / 57344
    else:
        sx, sw, sg = 5.0 / 448, 0.5 / 448, 0.2 / 448 / 48   # grad_s per row: pgolf's loss is a mean
    xq, wq = dequantized(x, sx, torch.float8_e4m3fn), dequantized(w, sw, torch.float8_e4m3fn)
    gq = dequantized(g, sg, torch.float8_e5m2).reshape(-1, 40)
    xq2 = xq.reshape(-1, 64)
    assert not torch.equal(xq, x) and not torch.equal(gq, g.reshape(-1, 40))  # the rounding is real
    # bf16 outputs (forward, dX): one bf16 rounding of the fp32 product; dW is fp32
    torch.testing.assert_close(y, (xq2 @ wq.T).view(2, 24, 40).bfloat16().float(), rtol=8e-3, atol=1e-5)
    torch.testing.assert_close(dx, (gq @ wq).view(2, 24, 64).bfloat16().float(), rtol=8e-3, atol=1e-7)
    torch.testing.assert_close(dw, gq.T @ xq2, rtol=1e-5, atol=1e-8)
    assert y.dtype == dx.dtype == dw.dtype == torch.float32  # returned in the inputs' dtypes
    # and loosely the plain matmul (e4m3: 3 mantissa bits, e5m2: 2)
    ref_y, ref_dx, ref_dw = F.linear(x, w), g @ w, g.reshape(-1, 40).T @ x.reshape(-1, 64)
    for got, ref in ((y, ref_y), (dx, ref_dx), (dw, ref_dw)):
        assert (got - ref).norm() / ref.norm() < 0.15
        assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99


def test_bf16_inputs_keep_bf16_and_fp32_master_weights_get_fp32_gradients():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(16, 32, generator=gen).bfloat16(), torch.randn(24, 32, generator=gen) / 6
    y, dx, dw = fp8_and_grads(x, w, torch.randn(16, 24, generator=gen).bfloat16(), FP8MatmulConfig(scaling="dynamic"))
    assert (y.dtype, dx.dtype, dw.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    ref = F.linear(x, w.bfloat16()).float()
    assert (y.float() - ref).norm() / ref.norm() < 0.1


def test_strided_inputs_and_gradients_give_the_contiguous_results():
    gen = torch.Generator().manual_seed(2)
    x, w, g = torch.randn(32, 16, generator=gen), torch.randn(24, 32, generator=gen), torch.randn(24, 16, generator=gen)
    cfg = FP8MatmulConfig(scaling="dynamic")
    strided = fp8_and_grads(x.T, w, g.T, cfg)  # (16, 32) and (16, 24) column-major views
    for got, ref in zip(strided, fp8_and_grads(x.T.contiguous(), w, g.T.contiguous(), cfg), strict=True):
        assert torch.equal(got, ref)


def test_under_autocast_the_output_has_f_linears_dtype():
    x, w = torch.randn(16, 32, requires_grad=True), torch.randn(24, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fp8_linear(x, w, FP8MatmulConfig(scaling="dynamic"))
        assert y.dtype == F.linear(x, w).dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32


def test_static_scales_saturate_instead_of_overflowing():
    x = torch.tensor([[1000.0, -1.0]])  # x/x_s = 448e3: far past e4m3's 448
    y = fp8_linear(x, torch.eye(2), FP8MatmulConfig(scaling="static", x_s=1 / 448, w_s=1 / 448))
    torch.testing.assert_close(y, torch.tensor([[1.0, -1.0]]))


def build(plugins, sets=()):
    return build_tiny(REGISTRY, TINY, plugins, sets, 0)[1]


def pair(sets=(), extra_plugins=()):
    fp8, plain = build(["fp8_matmul", *extra_plugins], sets), build([*extra_plugins])
    randomize(fp8)
    plain.load_state_dict(fp8.state_dict())
    return fp8, plain


@pytest.mark.parametrize("sets,swapped", [
    ([], ["tied head"]),
    (["fp8_matmul.targets=mlp,attn"], ["blocks.0.mlp.fc", "blocks.1.attn.c_v", "blocks.1.attn.proj"]),
    (["core.tie_embeddings=false"], ["lm_head"]),
])
def test_targets_select_the_modules(sets, swapped):
    model = build(["fp8_matmul"], sets)
    names = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    tied = isinstance(model, FP8TiedHead)
    assert tied == ("tied head" in swapped)
    assert {s for s in swapped if s != "tied head"} <= names
    if not sets:
        assert names == set()
    if "fp8_matmul.targets=mlp,attn" in sets:
        assert len(names) == 2 * 6  # 2 layers x (fc, proj, c_q, c_k, c_v, proj)
    if "core.tie_embeddings=false" in sets:
        assert names == {"lm_head"}


def test_compiled_training_loss_differs_from_plain_and_eval_equals_plain_exactly():
    """fullgraph with zero breaks; the FP8 Function is in the training graph (not the eval one); the training loss
    and gradients are near the plain model's but not equal (not silently off); eval outputs are the plain model's."""
    torch._dynamo.reset()
    fp8, plain = pair(["fp8_matmul.targets=head,mlp,attn", "fp8_matmul.scaling=dynamic"])
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, 1)
    backend, graphs = graph_recorder()
    assert torch._dynamo.explain(fp8)(x, y).graph_break_count == 0
    loss = torch.compile(fp8, backend=backend, fullgraph=True)(x, y)
    assert graphs[-1].count("target=torch.ops.higher_order.autograd_function_apply") == 1 + 2 * 6  # head + 12 linears
    loss.backward()
    ref = plain(x, y)
    ref.backward()
    assert loss.item() != ref.item() and abs(loss.item() - ref.item()) < 0.05
    for (name, p), q in zip(fp8.named_parameters(), plain.parameters(), strict=True):
        if q.grad is not None and q.grad.norm() > 0:
            assert F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0) > 0.95, name
    fp8.eval(), plain.eval()
    with torch.no_grad():
        out = torch.compile(fp8, backend=backend, fullgraph=True)(x)
        assert "autograd_function_apply" not in graphs[-1]
        assert torch.equal(out, plain(x))
        assert torch.equal(fp8(x, y, reduce=False), plain(x, y, reduce=False))


def test_inductor_compiled_training_step_matches_eager():
    """The default (inductor) backend compiles the Functions' forward and backward with `_scaled_mm`."""
    torch._dynamo.reset()
    fp8 = build(["fp8_matmul"], ["core.tie_embeddings=false", "fp8_matmul.targets=head,mlp",
                                 "fp8_matmul.scaling=static", "fp8_matmul.x_s=0.05", "fp8_matmul.w_s=0.002"])
    randomize(fp8)
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(5))
    y = torch.roll(x, -1, 1)
    eager = fp8(x, y)
    eager.backward()
    grads = {n: p.grad.clone() for n, p in fp8.named_parameters()}
    fp8.zero_grad(set_to_none=True)
    compiled = torch.compile(fp8, fullgraph=True)(x, y)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    for name, p in fp8.named_parameters():
        # the compiled model's fp32 rounding differs slightly and flips a few fp8 roundings: close, not bitwise
        assert F.cosine_similarity(p.grad.flatten(), grads[name].flatten(), dim=0) > 0.995 or \
            grads[name].norm() == 0, name


def config_errors(sets, plugins=("fp8_matmul",)):
    with pytest.raises(ConfigError) as err:
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=list(plugins), sets=[*TINY, *sets],
                check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    return err.value.errors


@pytest.mark.parametrize("setting,field", [
    ("fp8_matmul.targets=head,lm", "fp8_matmul.targets"), ("fp8_matmul.scaling=delayed", "fp8_matmul.scaling"),
    ("fp8_matmul.grad_s=0", "fp8_matmul.grad_s"), ("fp8_matmul.targets=,", "fp8_matmul.targets")])
def test_bad_settings_are_one_line_errors_naming_the_field(setting, field):
    errors = config_errors([setting])
    assert len(errors) == 1 and field in errors[0] and "\n" not in errors[0], errors


def test_conflicts_with_the_qat_class_swaps_and_with_fused_mlp_for_mlp():
    for other in ("late_qat", "soft_round_qat"):
        errors = REGISTRY.check(["fp8_matmul", other])
        assert len(errors) == 1 and "conflict" in errors[0] and other in errors[0]
    errors = config_errors(["fp8_matmul.targets=head,mlp"], ("fused_mlp", "fp8_matmul"))
    assert len(errors) == 1 and "fp8_matmul.targets" in errors[0] and "fused_mlp" in errors[0]
    model = build(["fused_mlp", "fp8_matmul"], ["fp8_matmul.targets=head,attn"])  # no mlp target: composes
    assert isinstance(model, FP8TiedHead) and isinstance(model.blocks[0].attn.c_q, FP8Linear)
    assert type(model.blocks[0].mlp.fc) is CastedLinear


BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fp8_matmul.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("fp8_matmul_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_parses_the_pr315_shapes_and_rejects_bad_arguments(capsys):
    bench = bench_module()
    assert bench.parse_shapes(bench.SHAPES) == [(512, 1536), (1536, 512), (512, 1024), (512, 512), (512, 1024)]
    assert bench.parse_tokens(bench.TOKENS) == [98304, 393216]
    gen = torch.Generator().manual_seed(3)  # its error report runs anywhere: small, nonzero, for y, dX and dW
    x = torch.randn(64, 32, generator=gen).bfloat16().requires_grad_()
    w = torch.randn(48, 32, generator=gen).requires_grad_()
    errors = bench.rel_errors("fp8_dynamic", x, w, torch.randn(64, 48, generator=gen).bfloat16())
    assert len(errors) == 3 and all(0 < e < 0.15 for e in errors), errors
    for argv, words in ((["--shapes", "512x"], "--shapes"), (["--shapes", "500x512"], "multiples of 16"),
                        (["--tokens", "98k"], "--tokens"), (["--iters", "0"], "--iters")):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without an FP8 GPU")
def test_benchmark_refuses_without_a_gpu_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--json", str(tmp_path / "o.json")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs a CUDA GPU with FP8" in proc.stderr
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("recipe,targets,linears", [("pr315", "head,attn", 2 * 4), ("pr1493", "head,mlp,attn", 6 * 6)])
def test_the_record_stacks_trace_with_zero_graph_breaks(recipe, targets, linears):
    """The PR #315 / #1493 plugin stacks (tiny, tied heads) with fp8_matmul: every targeted linear swapped, the
    training forward traces whole, and a step's loss and gradients are finite."""
    path = Path(__file__).resolve().parents[1] / "recipes" / f"{recipe}.toml"
    plugins = [*tomllib.loads(path.read_text(encoding="utf-8"))["plugins"], "fp8_matmul"]
    layers = 6 if recipe == "pr1493" else 2  # its depth recurrence loops layers 3..5
    sets = [*TINY, "core.model_dim=64", f"core.num_layers={layers}", f"fp8_matmul.targets={targets}",
            *(["bigram_hash.buckets=64"] if "bigram_hash" in plugins else [])]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=path, plugins=plugins, sets=sets,
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    torch.manual_seed(0)
    model = build_model(run)
    assert isinstance(model, FP8TiedHead) and sum(isinstance(m, FP8Linear) for m in model.modules()) == linears
    torch._dynamo.reset()
    x = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(6))
    y = torch.roll(x, -1, 1)
    model.train()
    exp = torch._dynamo.explain(model)(x, y)
    assert exp.graph_break_count == 0, exp.break_reasons
    loss = model(x, y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an FP8 GPU (sm89+)")
@pytest.mark.parametrize("scaling", ["dynamic", "static"])
def test_cuda_compiled_fp8_matmul_equals_fp32_matmuls_of_the_quantized_operands(scaling):
    """On the GPU, under inductor: cuBLASLt's layout rules (row-major A, column-major B) hold for the operands the
    Function makes, and the result is the fp32 product of the quantized operands (fast accumulation in the forward
    only, so its tolerance is looser)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 256, 512, generator=gen).cuda().bfloat16()   # 1,024 rows of the #315 model dim
    w = (torch.randn(1536, 512, generator=gen) / 24).cuda()        # fp32 master weight
    g = (torch.randn(4, 256, 1536, generator=gen) * 1e-3).cuda().bfloat16()
    cfg = FP8MatmulConfig(targets="mlp", scaling=scaling, x_s=4.0 / 448, w_s=0.2 / 448, grad_s=0.5 / 448)

    x, w = x.requires_grad_(), w.requires_grad_()
    y = torch.compile(lambda x, w: fp8_linear(x, w, cfg), fullgraph=True)(x, w)
    dx, dw = torch.autograd.grad(y, (x, w), g)  # the compiled backward
    xf, wf, gf = x.float().reshape(-1, 512), w.float(), g.float().reshape(-1, 1536)
    if scaling == "dynamic":
        sx, sw, sg = xf.abs().max().item() / 448, wf.abs().max().item() / 448, gf.abs().max().item() / 57344
    else:
        sx, sw, sg = 4.0 / 448, 0.2 / 448, 0.5 / 448 / 1024
    xq, wq = dequantized(xf, sx, torch.float8_e4m3fn), dequantized(wf, sw, torch.float8_e4m3fn)
    gq = dequantized(gf, sg, torch.float8_e5m2)
    assert y.dtype == dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    torch.testing.assert_close(y.float().reshape(-1, 1536), xq @ wq.T, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dx.float().reshape(-1, 512), gq @ wq, rtol=1e-2, atol=1e-5)
    # H200: the FP8 tensor cores' accumulation (even without fast accumulation) leaves dW within 3e-5 of the fp32
    # product (entries up to 0.15, mean 0.026); a wrong operand layout is off by the entries' own size
    torch.testing.assert_close(dw, gq.T @ xq, rtol=1e-2, atol=2e-4)
