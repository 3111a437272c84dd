"""Attention backends (issue #14): auto's choice by measurement, the FA4 plugin's op, the bench stand-in."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core import run as core_run
from core.config import ConfigError, resolve
from core.model import attend
from core.registry import Registry
from core.run import create_run, pick_attention
from core.train import CoreDefaults, build_model
from plugins import attention_auto as attn
from plugins.attention_auto import attention_shape
from plugins.lib import fa4

REGISTRY = Registry()
TINY = ["core.num_layers=2", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2", "core.train_seq_len=64",
        "core.train_batch_tokens=1024", "core.grad_accum_steps=1", "core.device=cpu", "core.vocab_size=320",
        "core.compile=false"]


# --- auto's choice -------------------------------------------------------------------------------------------

def test_choose_picks_the_fastest_and_skips_a_raising_backend():
    def timer(name: str) -> float:
        if name == "fa3":
            raise RuntimeError("FA3 needs sm90\nsecond line")
        return {"fa4": 2.06, "cudnn": 2.31, "flash": 2.5}[name]

    choice, measured = attn.choose(["fa3", "fa4", "cudnn", "flash"], timer)
    assert choice == "fa4"
    assert measured["fa4"] == 2.06 and measured["cudnn"] == 2.31
    assert measured["fa3"] == "error: RuntimeError: FA3 needs sm90"
    line = attn.describe(choice, measured)
    assert line.startswith("attention_backend:fa4 (measured: fa3=error: RuntimeError: FA3 needs sm90, fa4=2.060ms")


def test_choose_breaks_ties_by_preference_and_fails_when_nothing_ran():
    assert attn.choose(["fa3", "cudnn"], lambda n: 1.0)[0] == "fa3"
    with pytest.raises(RuntimeError, match="no backend ran"):
        attn.choose(["fa4", "cudnn"], lambda n: 1 / 0)


def test_auto_on_cpu_is_untimed_sdpa():
    assert pick_attention("auto", torch.device("cpu"), lambda: pytest.fail("measured on CPU")) == "sdpa"


@pytest.fixture
def sdpa_flags():
    """pick_attention sets torch's global SDPA flags (no CUDA needed to set them): put them back after the test."""
    names = ("cudnn_sdp", "flash_sdp", "mem_efficient_sdp", "math_sdp")
    before = [getattr(torch.backends.cuda, f"{n}_enabled")() for n in names]
    yield lambda: [getattr(torch.backends.cuda, f"{n}_enabled")() for n in names]
    for n, on in zip(names, before, strict=True):
        getattr(torch.backends.cuda, f"enable_{n}")(on)


def test_auto_on_cuda_takes_pg_attention_backend_else_fa3_or_cudnn(monkeypatch, sdpa_flags):
    cuda = torch.device("cuda")  # only a name here: pick_attention sets flags, runs nothing
    assert pick_attention("auto", cuda, lambda: "flash") == "flash"
    assert sdpa_flags() == [False, True, False, False]
    monkeypatch.setattr(core_run, "available", lambda name: name != "fa3")
    assert pick_attention("auto", cuda, lambda: None) == "cudnn" and sdpa_flags() == [True, True, False, False]
    assert pick_attention("math", cuda, lambda: pytest.fail("measured an explicit setting")) == "math"
    assert sdpa_flags() == [False, False, False, True]
    assert pick_attention("sdpa", cuda) == "sdpa" and sdpa_flags() == [True, True, True, True]  # torch's dispatch
    monkeypatch.setattr(core_run, "available", lambda name: True)
    assert pick_attention("auto", cuda) == "fa3"


def test_create_run_asks_the_default_plugin_unless_deterministic(monkeypatch):
    asked = []
    monkeypatch.setattr(core_run, "pick_attention", lambda setting, device, measure: asked.append(measure) or "sdpa")
    monkeypatch.setattr(attn, "measure", lambda core, device, world: ("cudnn", {"fa3": "error: X", "cudnn": 1.5}))
    for deterministic in ("false", "true"):
        cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                      sets=[*TINY, f"core.deterministic={deterministic}"])
        run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
        lines = []
        run.log = lines.append
        timed = deterministic == "false"
        assert asked[-1]() == ("cudnn" if timed else None)
        assert lines == (["attention_backend:cudnn (measured: fa3=error: X, cudnn=1.500ms)"] if timed else [])
        assert run.state.get("attention_auto") == ({"fa3": "error: X", "cudnn": 1.5} if timed else None)


def test_attention_shape_is_the_micro_batch():
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                  sets=[*TINY, "core.grad_accum_steps=2"])
    assert attention_shape(cfg.core, 1) == attn.AttnShape(8, 4, 2, 64, 16)  # 1024 tokens / (1 rank · 2 accum) / 64
    assert attention_shape(cfg.core, 2) == attn.AttnShape(4, 4, 2, 64, 16)


def test_auto_on_cpu_matches_the_explicit_sdpa_model():
    losses = []
    for setting in ("auto", "sdpa"):
        cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                      sets=[*TINY, f"core.attention={setting}"])
        run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
        assert run.attention == "sdpa" and "attention_auto" not in run.state
        torch.manual_seed(0)
        model = build_model(run)
        assert model.blocks[0].attn.attention.backend == "sdpa"
        ids = torch.randint(0, 320, (2, 64), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            losses.append(model(ids, ids))
    assert torch.equal(losses[0], losses[1])


def test_config_accepts_sdpa_and_points_fa4_at_its_plugin():
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[], sets=[*TINY, "core.attention=sdpa"])
    assert cfg.core.attention == "sdpa"
    with pytest.raises(ConfigError) as err:
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[], sets=[*TINY, "core.attention=fa4"])
    assert err.value.errors == ["core.attention (PGOLF_ATTENTION): expected auto, fa3, cudnn, flash, efficient, math "
                                "or sdpa, got 'fa4' (FlashAttention-4 is the fa4_attention plugin: enable it instead)"]


def test_fa4_plugin_on_cuda_without_flash_attn_cute_is_a_config_error(monkeypatch):
    monkeypatch.setattr(fa4, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"^fa4_attention: flash_attn.cute \(pip flash-attn-4\) is not importable"):
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["fa4_attention"],
                sets=[*TINY, "core.device=cuda"], check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["fa4_attention"], sets=TINY,
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    assert cfg.plugins == ["fa4_attention"]  # on the CPU it runs the core's SDPA


# --- the FA4 adapter, with a stand-in kernel ------------------------------------------------------------------

def _standin_fwd(q, k, v):
    """FA4's contract in (B, T, H, D) layout from SDPA: (out, lse (B, H, T) fp32), GQA by repetition."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    rep = qh.size(1) // kh.size(1)
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    s = (qh @ kh.transpose(-1, -2)) / qh.size(-1) ** 0.5
    t = s.size(-1)
    s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    lse = s.logsumexp(-1)
    out = (s - lse[..., None]).exp() @ vh
    return out.transpose(1, 2).to(q.dtype), lse


def _standin_bwd(q, k, v, out, dout, lse):
    """Attention's backward by hand (a custom op's body runs without autograd), GQA grads summed per group."""
    qh, kh, vh, oh, doh = (t.transpose(1, 2).float() for t in (q, k, v, out, dout))
    rep = qh.size(1) // kh.size(1)
    kr, vr = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    scale = qh.size(-1) ** -0.5
    t = qh.size(2)
    s = (qh @ kr.transpose(-1, -2)) * scale
    p = (s - lse[..., None]).exp().masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), 0.0)
    dv = p.transpose(-1, -2) @ doh
    dp = doh @ vr.transpose(-1, -2)
    ds = p * (dp - (doh * oh).sum(-1, keepdim=True)) * scale
    dq, dk = ds @ kr, ds.transpose(-1, -2) @ qh
    b, h, _, d = dk.shape
    dk, dv = (g.view(b, h // rep, rep, t, d).sum(2) for g in (dk, dv))
    return tuple(g.transpose(1, 2).to(q.dtype) for g in (dq, dk, dv))


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setitem(fa4.KERNELS, "fwd", _standin_fwd)
    monkeypatch.setitem(fa4.KERNELS, "bwd", _standin_bwd)


def _qkv(h=4, hkv=2, b=2, t=16, d=8):  # (B, T, H, D), (B, T, Hkv, D); also run in the bench test's subprocess
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, t, n, d, generator=g, requires_grad=True) for n in (h, hkv, hkv)]


def test_fa4_adapter_matches_sdpa_layout_gqa_and_grads(standin):
    q, k, v = _qkv()
    ref = attend("sdpa", q, k, v)
    y = fa4.fa4_func(q, k, v)
    assert y.shape == (2, 16, 4, 8)  # (B, T, H, D)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fa4_op_traces_fullgraph_with_its_fake_implementation(standin):
    torch._dynamo.reset()
    q, k, v = _qkv()
    fn = torch.compile(lambda q, k, v: fa4.fa4_func(q, k, v).square().sum(), fullgraph=True, backend="aot_eager")
    loss = fn(q, k, v)
    loss.backward()
    torch.testing.assert_close(loss, attend("sdpa", q, k, v).square().sum(), atol=1e-4, rtol=1e-5)
    assert q.grad is not None and k.grad.shape == k.shape
    args = tuple(t.detach() for t in (q, k, v))
    torch.library.opcheck(torch.ops.pgolf.fa4_fwd.default, args, test_utils=("test_schema", "test_faketensor"))


# --- the bench's flash_attn_interface stand-in follows pgolf's choice ------------------------------------------

STANDIN_CHECK = """
import torch, torch.nn.functional as F
import flash_attn_interface as shim, pgolf_bench_attention as fa4mod
fa4mod.KERNELS.update(fwd=_standin_fwd, bwd=_standin_bwd)
q, k, v = (x.detach() for x in _qkv())
calls = []
fwd = fa4mod.KERNELS["fwd"]
fa4mod.KERNELS["fwd"] = lambda *a: calls.append(1) or fwd(*a)
y = shim.flash_attn_func(q, k, v, causal=True)
ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                     enable_gqa=True).transpose(1, 2)
torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
assert calls == [1]
print("ok")
"""


def test_bench_standin_calls_fa4_when_pgolf_picked_fa4(tmp_path):
    from pgolf.bench import REPO, SHIM, attention_kernel, record_attention_label

    (tmp_path / "flash_attn_interface.py").write_text(SHIM, encoding="utf-8")
    env = dict(os.environ, PGOLF_BENCH_SDPA="fa4", PGOLF_BENCH_ATTENTION_PY=str(REPO / "plugins" / "lib" / "fa4.py"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parent.parent)]))
    helpers = "".join(inspect.getsource(f) + "\n" for f in (_standin_fwd, _standin_bwd, _qkv))
    proc = subprocess.run([sys.executable, "-c", "import torch\n" + helpers + STANDIN_CHECK], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    assert record_attention_label("fa4", False) == "fa4"
    assert attention_kernel(SimpleNamespace(plugins=["fa4_attention"]), "cudnn") == "fa4"
    assert attention_kernel(SimpleNamespace(plugins=["fa4_attention"]), "sdpa") == "sdpa"  # CPU: no FA4
    assert attention_kernel(SimpleNamespace(plugins=[]), "cudnn") == "cudnn"
    assert record_attention_label("cudnn", False) == "sdpa-cudnn"
    assert record_attention_label("fa3", True) == "fa3"
    assert record_attention_label("flash", False, varlen=True) == "sdpa-flash+flex-varlen"
    assert record_attention_label("fa3", True, varlen=True) == "fa3"
