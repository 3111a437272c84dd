"""CUDA-only checks (skipped on CPU): inductor compile with every plugin, the Switch under inductor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import ConfigError, resolve, tomllib
from core.registry import Registry
from core.train import setup, train
from plugins.lib.switch import Switch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
REGISTRY = Registry()
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.switch = Switch(False)

    def forward(self, x):
        y = self.lin(x)
        return y + self.switch.value * torch.tanh(y)


def test_switch_flips_inductor_compiled_output():
    torch._dynamo.reset()
    m = _Gated().cuda()
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(8, 16, device="cuda")
    off = compiled(x)
    m.switch.set(True)
    on = compiled(x)
    assert not torch.allclose(off, on)
    torch.testing.assert_close(on, m.lin(x) + torch.tanh(m.lin(x)))


def _resolve(sets: list[str], plugins: list[str]):
    extra = [f"{sec}.{k}={v}" for n in plugins for sec, kv in (REGISTRY.plugins[n].test_settings or {}).items()
             for k, v in kv.items()]
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins,
                   sets=[*sets, *extra, "core.device=cuda", "core.compile=true", "core.iterations=6"],
                   check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)


def test_every_plugin_trains_compiled_on_cuda(tiny_sets, request):
    """As many plugins as can be enabled together (registry conflicts and setting checks both pass), one run;
    plugins the recipes use are taken first, so a conflicting newcomer does not push them out; fused_mlp, speed
    only and with CUDA tests of its own below, comes after them, so its QAT conflicts leave late_qat in."""
    torch._dynamo.reset()
    sets = [s for s in tiny_sets if not s.startswith(("core.device", "core.compile"))]
    in_recipes = {n for f in RECIPES.glob("*.toml") for n in tomllib.loads(f.read_text()).get("plugins", [])}
    enabled: list[str] = []
    for name in sorted(REGISTRY.names(), key=lambda n: (n not in in_recipes, n == "fused_mlp", n)):
        missing = [n for n in (*REGISTRY.plugins[name].requires, name) if n not in enabled]
        if REGISTRY.check([*enabled, *missing]):
            continue
        try:
            _resolve(sets, [*enabled, *missing])
        except ConfigError:
            continue
        enabled.extend(missing)
    assert len(enabled) >= 30, enabled
    if any(getattr(REGISTRY.plugins[n], "test_data", None) == "caseops" for n in enabled):
        data, _ = request.getfixturevalue("tiny_caseops_data")  # caseops needs its transformed data + sidecar
        sets = [*(s for s in sets if not s.startswith("core.data_path=")), f"core.data_path={data}"]
    cfg = _resolve(sets, enabled)
    run = setup(cfg, REGISTRY)
    assert run.attention in ("fa3", "cudnn", "flash")
    summary = train(run)
    assert summary["val_bpb"] == summary["val_bpb"] and summary["val_bpb"] > 0
    ids = run.val_tokens[:129].to("cuda", torch.int64)
    exp = torch._dynamo.explain(run.model)(ids[:-1].view(2, 64), ids[1:].view(2, 64))
    assert exp.graph_break_count == 0, exp.break_reasons


def test_recurrence_mode_switches_in_the_compiled_cuda_loop_with_zero_recompiles(tiny_sets):
    """PR #1493's routing under inductor: every mode warmed before the clock, none compiled inside it."""
    torch._dynamo.reset()
    plugins = ["depth_recurrence", "parallel_residuals", "skip_gates", "xsa", "ln_scale"]
    sets = [s for s in tiny_sets if not s.startswith(("core.device", "core.compile"))]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins,
                  sets=[*sets, "core.device=cuda", "core.compile=true", "core.iterations=8", "core.num_layers=6",
                        "core.val_loss_every=4", "depth_recurrence.loop_start=2", "depth_recurrence.loop_end=3",
                        "depth_recurrence.enable_at=0.5", "parallel_residuals.start=4", "xsa.last_n=6"],
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    run = setup(cfg, REGISTRY)
    train(run)
    log = (run.run_dir / "train.log").read_text()
    assert "warmup_mode:recurrence" in log and "mode:recurrence on step:4" in log
    assert "timed_loop_recompiles:0" in log


def test_fused_ce_triton_kernels_match_eager_softcap_ce_and_compile():
    """The Triton path of `fused_ce` (needs triton): value and gradient against the eager softcap + fp32 CE, in
    fp32 and bf16, and under torch.compile(fullgraph=True)."""
    pytest.importorskip("triton")
    import torch.nn.functional as F

    from plugins.fused_ce import softcapped_cross_entropy

    torch.manual_seed(0)
    targets = torch.randint(0, 3000, (257,), device="cuda")
    weights = torch.randn(257, device="cuda")
    # fp32 gradient: Triton's exp/log differ from torch's by ~1 ulp, and softmax - onehot cancels; on the H200
    # 2 of 771,000 entries were 2.3e-7 off (relative 7e-5), hence 1e-4 / 1e-6
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
        logits = (torch.randn(257, 3000, device="cuda") * 40).to(dtype).requires_grad_()
        ref_in = logits.detach().float().requires_grad_()
        ref = F.cross_entropy(30 * torch.tanh(ref_in / 30), targets, reduction="none")
        (ref_grad,) = torch.autograd.grad(ref, ref_in, weights)
        fn = torch.compile(lambda z: softcapped_cross_entropy(z, targets, 30.0, "triton"), fullgraph=True)
        for f in (lambda z: softcapped_cross_entropy(z, targets, 30.0, "triton"), fn):
            out = f(logits)
            (grad,) = torch.autograd.grad(out, logits, weights)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(grad.float(), ref_grad, rtol=tol, atol=tol * 1e-2)


@pytest.mark.skipif(not __import__("plugins.lib.fa4").lib.fa4.available(), reason="needs flash-attn-4")
def test_fa4_matches_sdpa_forward_and_backward_compiled():
    """FA4 through pgolf's custom op (the fa4_attention plugin's) against flash SDPA at a GQA shape, bf16, eager and
    compiled (fullgraph)."""
    from core.model import attend
    from plugins.lib import fa4

    def fa4_or_core(name, q, k, v):
        return fa4.fa4_func(q, k, v) if name == "fa4" else attend(name, q, k, v)

    torch._dynamo.reset()
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 256, n, 64, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
               for n in (8, 4, 4))
    dy = torch.randn(2, 256, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)

    def grads(name, fn):
        y = fn(name, q, k, v)
        return (y, *torch.autograd.grad(y, (q, k, v), dy))

    ref = grads("sdpa", attend)
    for fn in (fa4_or_core, torch.compile(fa4_or_core, fullgraph=True)):
        for a, b in zip(grads("fa4", fn), ref, strict=True):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_auto_measures_every_importable_backend_and_logs_it(tiny_sets):
    from core.run import available
    from plugins.attention_auto import MEASURED

    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                  sets=[*(s for s in tiny_sets if not s.startswith("core.device")), "core.device=cuda",
                        "core.attention=auto"])
    run = setup(cfg, REGISTRY)
    measured = run.state["attention_auto"]
    assert list(measured) == [n for n in MEASURED if available(n)]
    ok = {n: ms for n, ms in measured.items() if isinstance(ms, float)}
    assert run.attention == min(ok, key=ok.get)
    assert f"attention_backend:{run.attention} (measured: " in (run.run_dir / "train.log").read_text()


@pytest.mark.parametrize("backend", ["triton", "quack"])
def test_fused_mlp_kernel_matches_the_torch_reference_and_compiles(backend):
    """The Triton and quack paths of `fused_mlp` (need triton / quack-kernels, sm90+): both epilogues against the
    torch reference on the same bf16 inputs (rows and hidden width no multiple of the 128×256 tiles), and the
    Function's output and gradients against the eager fp32 LeakyReLU² MLP, eagerly and under
    torch.compile(fullgraph=True)."""
    pytest.importorskip("triton" if backend == "triton" else "quack")
    import torch.nn.functional as F

    from plugins import fused_mlp as fm

    torch.manual_seed(0)
    rows, dim, hidden = 300, 96, 200
    x = torch.randn(rows, dim, device="cuda").bfloat16()
    w1 = (torch.randn(hidden, dim, device="cuda") / dim**0.5).bfloat16()
    w2 = (torch.randn(dim, hidden, device="cuda") / hidden**0.5).bfloat16()
    g = torch.randn(rows, dim, device="cuda").bfloat16()
    if backend == "triton":
        assert fm._kernel_fits(x, w1) and fm._kernel_fits(g, w2.T.contiguous())  # the kernel itself, no fallback
    for slope in (0.5, 0.25, 0.0):
        ref_pre, ref_post = fm.up_reference(x, w1, slope)
        ref_dpre = fm.up_backward_reference(g, w2, ref_pre, slope)
        up, up_backward = fm.epilogues(backend)
        (pre, post), dpre = up(x, w1, slope), up_backward(g, w2, ref_pre, slope)
        torch.testing.assert_close(pre, ref_pre, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(post, ref_post, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(dpre, ref_dpre, rtol=2e-2, atol=2e-2)
    if backend == "quack":  # a width TMA cannot take (rows not 16-byte aligned): the torch reference instead
        xo, w1o = x[:, :90].contiguous(), w1[:, :90].contiguous()
        torch.testing.assert_close(fm._quack_up(xo, w1o, 0.5)[0], fm.up_reference(xo, w1o, 0.5)[0])
    x3, w1f, w2f = x.float().view(3, 100, dim), w1.float(), w2.float()
    weights = torch.randn(3, 100, dim, device="cuda")

    def eager(a, b, c):
        return F.leaky_relu(a @ b.T, negative_slope=0.5).square() @ c.T

    ref_in = [t.clone().requires_grad_() for t in (x3, w1f, w2f)]
    ref = eager(*ref_in)
    ref_grads = torch.autograd.grad(ref, ref_in, weights)
    compiled = torch.compile(lambda a, b, c: fm.fused_leaky_relu2_mlp(a, b, c, 0.5, backend), fullgraph=True)
    for fn in (lambda a, b, c: fm.fused_leaky_relu2_mlp(a, b, c, 0.5, backend), compiled):
        ins = [t.bfloat16().requires_grad_() for t in (x3, w1f, w2f)]
        out = fn(*ins)
        grads = torch.autograd.grad(out, ins, weights.bfloat16())
        scale = ref.abs().max().item()
        torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2 * scale)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


def test_fused_mlp_model_trains_under_autocast_with_the_kernel_and_matches_leaky_relu2():
    """The plugin's model on CUDA under bf16 autocast: the training forward runs the kernel (the custom op is in
    the compiled graph), loss and gradients close to leaky_relu2's; eval mode runs the eager MLP."""
    pytest.importorskip("triton")
    from model_builders import build_tiny, randomize

    tiny = ["core.vocab_size=96", "core.num_layers=2", "core.model_dim=128", "core.num_heads=4",
            "core.num_kv_heads=2", "core.device=cuda", "core.compile=false"]
    _, fused = build_tiny(REGISTRY, tiny, ["fused_mlp"], seed=0)
    _, leaky = build_tiny(REGISTRY, tiny, ["leaky_relu2"], seed=0)
    randomize(fused)
    fused, leaky = fused.cuda(), leaky.cuda()
    leaky.load_state_dict(fused.state_dict())
    x = torch.randint(0, 96, (4, 64), device="cuda")
    y = torch.roll(x, -1, 1)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))  # with the Function's forward/backward bodies
        return gm.forward

    torch._dynamo.reset()
    losses = []
    for fn in (torch.compile(fused, backend=backend, fullgraph=True), leaky):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(x, y)
        loss.backward()
        losses.append(loss.float())
    assert "pgolf_fused_mlp.up" in graphs[-1], graphs[-1][-3000:]
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-2, atol=2e-2)
    for (name, p), q in zip(fused.named_parameters(), leaky.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2 * q.grad.abs().max().item() + 1e-6,
                                   msg=name)
    fused.eval()
    leaky.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(fused(x, y), leaky(x, y))


def test_batches_reach_the_gpu_without_blocking_the_host(tiny_data):
    """The loaders copy through page-locked memory: with a second of work queued on the stream, taking a batch
    returns at once (a pageable copy waits for the queue), and the batch is the CPU loader's."""
    import time

    from core.data import DistributedTokenLoader, shard_files
    from plugins.doc_packing import to_device

    files = shard_files(tiny_data, "train")
    on_gpu = DistributedTokenLoader(files, 0, 1, torch.device("cuda"))
    expected = DistributedTokenLoader(files, 0, 1, torch.device("cpu")).next_batch(4096, 64, 1)
    arange = torch.arange(50_000)
    batches = []
    to_device(arange, torch.device("cuda"))  # the host allocator's first page-locked blocks (allocated, not timed)
    DistributedTokenLoader(files, 0, 1, torch.device("cuda")).next_batch(4096, 64, 1)
    for take in (lambda: on_gpu.next_batch(4096, 64, 1), lambda: (to_device(arange, torch.device("cuda")),)):
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU time queued ahead of the copies
        start = time.perf_counter()
        batches.append(take())
        assert time.perf_counter() - start < 0.3
    torch.cuda.synchronize()
    assert all(torch.equal(got.cpu(), want) for got, want in zip(batches[0], expected, strict=True))
    assert torch.equal(batches[1][0].cpu(), arange)
