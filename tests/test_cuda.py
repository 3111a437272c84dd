"""CUDA-only checks (skipped on CPU): inductor compile with every plugin, the Switch under inductor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.config import ConfigError, resolve
from core.model import Switch
from core.registry import Registry
from core.train import setup, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
REGISTRY = Registry()


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
    """As many plugins as can be enabled together (registry conflicts and setting checks both pass), one run."""
    torch._dynamo.reset()
    sets = [s for s in tiny_sets if not s.startswith(("core.device", "core.compile"))]
    enabled: list[str] = []
    for name in REGISTRY.names():
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
    assert run.attention in ("fa3", "fa4", "cudnn", "flash")
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
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
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


@pytest.mark.skipif(not __import__("core.attention").attention.available("fa4"), reason="needs flash-attn-4")
def test_fa4_matches_sdpa_forward_and_backward_compiled():
    """FA4 through pgolf's custom op against flash SDPA at a GQA shape, bf16, eager and compiled (fullgraph)."""
    from core.attention import attend

    torch._dynamo.reset()
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, n, 256, 64, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
               for n in (8, 4, 4))
    dy = torch.randn(2, 256, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)

    def grads(name, fn):
        y = fn(name, q, k, v)
        return (y, *torch.autograd.grad(y, (q, k, v), dy))

    ref = grads("sdpa", attend)
    for fn in (attend, torch.compile(attend, fullgraph=True)):
        for a, b in zip(grads("fa4", fn), ref, strict=True):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_auto_measures_every_importable_backend_and_logs_it(tiny_sets):
    from core.attention import MEASURED, available

    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                  sets=[*(s for s in tiny_sets if not s.startswith("core.device")), "core.device=cuda",
                        "core.attention=auto"])
    run = setup(cfg, REGISTRY)
    assert list(run.attention_measured) == [n for n in MEASURED if available(n)]
    ok = {n: ms for n, ms in run.attention_measured.items() if isinstance(ms, float)}
    assert run.attention == min(ok, key=ok.get)
    assert f"attention_backend:{run.attention} (measured: " in (run.run_dir / "train.log").read_text()
