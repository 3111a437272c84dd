"""PR #1493's parts (leaky_relu2, muon_eq_r, warmdown_frac, the weight-decay split, shuffled_loader, and the
settings of the existing plugins the record uses) against independent computations and, where the record's
own code is available, against it.

The record's `train_gpt.py` is an LZMA self-extractor; it is read from $PGOLF_PR1493_TRAIN_GPT (decoded or
wrapped) or from the parameter-golf git mirror ($PGOLF_PARAMETER_GOLF_MIRROR, default
/work/.mirror/openai+parameter-golf/repo), decoded in memory and imported on CPU with a stub
`flash_attn_interface` (FA3 -> SDPA); those tests skip when neither is available.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.config import resolve
from core.data import write_shard
from core.model import MLP
from core.optim import Muon, zeropower_via_newtonschulz5
from core.registry import Registry
from core.run import create_run
from core.train import Clock, CoreDefaults, build_model, make_optimizers, setup, train
from plugins.leaky_relu2 import LeakyReLU2MLP
from plugins.muon_eq_r import MuonEqR
from plugins.shuffled_loader import ShuffledSequenceLoader
from plugins.warmdown_frac import WarmdownFrac, WarmdownFracConfig, lr_multiplier
from plugins.weight_decay import WeightDecay, WeightDecayConfig

REGISTRY = Registry()
RECORD_DIR = "records/track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"

TINY = ["core.vocab_size=96", "core.num_layers=3", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2",
        "core.mlp_mult=4", "core.device=cpu", "core.compile=false"]


def build(plugins: list[str], sets=()):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=[*TINY, *sets],
                  check_plugins=REGISTRY.check)
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    torch.manual_seed(cfg.core.seed)
    run.model = build_model(run)
    return run, run.model


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (zero-init projections included), so no part of the forward is inert."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim < 2 else 1.0 / math.sqrt(p.shape[-1])))


# --- the record's own code ------------------------------------------------------------------------------
def _record_source() -> str | None:
    path = os.environ.get("PGOLF_PR1493_TRAIN_GPT")
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        mirror = os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo")
        try:
            proc = subprocess.run(["git", "-C", mirror, "show", f"HEAD:{RECORD_DIR}/train_gpt.py"],
                                  capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0 or not proc.stdout:
            return None
        text = proc.stdout
    if text.lstrip().startswith("import lzma"):  # the self-extractor: capture the string it would exec
        ns: dict = {}
        exec(text.replace("exec(", "_decoded=(", 1), ns)
        text = ns["_decoded"]
        text = text.decode() if isinstance(text, bytes) else text
    if sys.version_info < (3, 12):  # the record's two f-strings nest double quotes (a Python 3.12 form)
        text = text.replace('{", ".join(', "{', '.join(").replace('glob("fineweb_train_*.bin")',
                                                                   "glob('fineweb_train_*.bin')")
    return text


def _fa3_via_sdpa(q, k, v, causal=True):
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                       enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


@pytest.fixture(scope="module")
def record():
    src = _record_source()
    if src is None:
        pytest.skip("PR #1493 train_gpt.py not available (set PGOLF_PR1493_TRAIN_GPT)")
    stub = types.ModuleType("flash_attn_interface")
    stub.flash_attn_func = _fa3_via_sdpa
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = stub
    try:
        mod = types.ModuleType("pr1493_train_gpt")
        exec(compile(src, "pr1493_train_gpt.py", "exec"), mod.__dict__)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    # the record decorates NS5 with @torch.compile (inductor); on CPU use the function it wraps
    ns5 = mod.zeropower_via_newtonschulz5
    mod.zeropower_via_newtonschulz5 = getattr(ns5, "_torchdynamo_orig_callable", ns5)
    return mod


def record_hparams(record, **overrides):
    h = record.Hyperparameters()
    for k, v in overrides.items():
        setattr(h, k, v)
    return h


# --- leaky_relu2 -------------------------------------------------------------------------------------------
def test_leaky_relu2_is_the_formula():
    gen = torch.Generator().manual_seed(0)
    run, model = build(["leaky_relu2"])
    mlp = model.blocks[1].mlp
    assert isinstance(mlp, LeakyReLU2MLP) and mlp.fc.weight.shape == (4 * 64, 64)  # hidden = mlp_mult·dim
    assert mlp.proj._zero_init and not mlp.proj.weight.any()
    w1, w2 = torch.randn(256, 64, generator=gen), torch.randn(64, 256, generator=gen)
    with torch.no_grad():
        mlp.fc.weight.copy_(w1)
        mlp.proj.weight.copy_(w2)
    x = torch.randn(2, 5, 64, generator=gen)
    pre = x @ w1.T
    act = torch.where(pre >= 0, pre, 0.5 * pre) ** 2
    torch.testing.assert_close(mlp(x), act @ w2.T, rtol=1e-5, atol=1e-5)
    relu2 = MLP(model.spec)
    relu2.load_state_dict(mlp.state_dict())
    assert (relu2(x) - mlp(x)).abs().max() > 1e-2  # negative pre-activations now count


def test_leaky_relu2_honours_a_fractional_mlp_mult():
    run, model = build(["leaky_relu2"])
    spec = model.spec
    spec.mlp_mult = 2.625  # PR #63's width; CoreConfig.mlp_mult is an int, the slot honours the spec's float
    assert LeakyReLU2MLP(spec, 0.5).fc.weight.shape == (int(2.625 * 64), 64)


def test_leaky_relu2_leaves_the_random_init_alone():
    """Installing the slot draws no random numbers: orthoinit's draws are the same with or without it."""
    _, plain = build(["orthoinit"])
    _, leaky = build(["orthoinit", "leaky_relu2"])
    for (name, a), b in zip(plain.state_dict().items(), leaky.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_leaky_relu2_is_live_in_the_compiled_graph():
    torch._dynamo.reset()
    _, model = build(["leaky_relu2"], ["core.num_layers=2"])
    randomize(model)
    _, plain = build([], ["core.num_layers=2"])
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
        assert (out - plain(x)).abs().max() > 1e-3, "leaky_relu2 changed nothing in the compiled model"


def test_leaky_relu2_matches_the_record_mlp(record):
    torch.manual_seed(0)
    rec = record.MLP(64, 4.0)
    _, model = build(["leaky_relu2"])
    mlp = model.blocks[0].mlp
    randomize(rec, seed=2)
    mlp.load_state_dict(rec.state_dict(), strict=True)
    x = torch.randn(3, 7, 64)
    torch.testing.assert_close(mlp(x), rec(x), rtol=0, atol=0)


# --- muon_eq_r ---------------------------------------------------------------------------------------------
def reference_muon_eq_r(params0, grads, lr, momentum, wd, steps=5):
    """PR #1493's Muon step written out: Nesterov, row L2 norm (fp32, clamp 1e-7), NS5 in bf16 on the
    (wide) orientation, sqrt(max(1, rows/cols)), then p·(1 - lr·wd) and p - lr·update."""
    params = [p.clone() for p in params0]
    bufs = [torch.zeros_like(p) for p in params]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            bufs[i] = bufs[i] * momentum + g
            u = g + momentum * bufs[i]
            u = u / u.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(u.dtype)
            X = u.bfloat16()
            X = X / (X.norm() + 1e-7)
            tall = u.size(0) > u.size(1)
            if tall:
                X = X.T
            for _ in range(steps):
                A = X @ X.T
                X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
            X = X.T if tall else X
            X = X * max(1, u.size(0) / u.size(1)) ** 0.5
            params[i] = params[i] * (1 - lr * wd)
            params[i] = params[i] - lr * X.to(params[i].dtype)
    return params


def _muon_case(seed=4):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(32, 16), (16, 48), (24, 24)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    # rows of very different scale: row normalisation matters
    grads = [[torch.randn(s, generator=gen) * torch.logspace(-2, 1, s[0])[:, None] for s in shapes]
             for _ in range(3)]
    return init, grads


def _steps(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("compiled", [False, True])
def test_muon_eq_r_is_the_row_normalised_step(compiled):
    init, grads = _muon_case()
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = MuonEqR(params, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095)
    if compiled:  # what the core does on CUDA: assign a compiled NS5; the row normalisation must survive it
        opt.zeropower = torch.compile(zeropower_via_newtonschulz5, backend="aot_eager", fullgraph=True)
    got = _steps(opt, params, grads)
    want = reference_muon_eq_r(init, grads, lr=0.022, momentum=0.99, wd=0.095)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    off = _steps(Muon(plain, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095), plain, grads)
    assert max((a - b).abs().max().item() for a, b in zip(got, off, strict=True)) > 1e-3, \
        "row normalisation changed nothing"
    unnormed = [torch.nn.Parameter(t.clone()) for t in init]
    same = _steps(MuonEqR(unnormed, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095,
                          row_normalize=False), unnormed, grads)
    for a, b in zip(same, off, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_muon_eq_r_matches_the_record_muon(record):
    init, grads = _muon_case(seed=9)
    finals = []
    for make in (lambda ps: record.Muon(ps, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095,
                                        row_normalize=True),
                 lambda ps: MuonEqR(ps, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095)):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        finals.append(_steps(make(params), params, grads))
    for a, b in zip(*finals, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recipe_optimizers_are_the_record_split():
    """muon_eq_r takes the matrix group (tryfirst, before weight_decay's Muon); the Adam groups get the
    record's EMBED_WD / ADAM_WD; lr/momentum come from the core settings."""
    run, model = build(["muon_eq_r", "weight_decay"],
                       ["weight_decay.muon=0.095", "weight_decay.adam=0.02", "weight_decay.embed=0.085",
                        "core.matrix_lr=0.022", "core.scalar_lr=0.02", "core.tied_embed_lr=0.03"])
    opts = make_optimizers(run, model)
    kinds = {type(o).__name__: o.param_groups[0] for o in opts}
    matrix = kinds["MuonEqR"]
    muon = next(o for o in opts if isinstance(o, MuonEqR))
    assert (matrix["weight_decay"], matrix["base_lr"]) == (0.095, 0.022) and muon.row_normalize
    adam = {g["base_lr"]: g for o in opts if isinstance(o, torch.optim.AdamW) for g in o.param_groups}
    assert adam[0.03]["weight_decay"] == 0.085 and adam[0.02]["weight_decay"] == 0.02
    assert {id(p) for p in adam[0.03]["params"]} == {id(model.tok_emb.weight)}


# --- weight decay split --------------------------------------------------------------------------------------
def test_weight_decay_split_decays_each_group_by_its_own_rate():
    """Zero gradients: each step is pure decay, p <- p·(1 - lr·wd), with the group's own wd."""
    run, model = build(["weight_decay"], ["weight_decay.muon=0.095", "weight_decay.adam=0.02",
                                          "weight_decay.embed=0.085"])
    opts = make_optimizers(run, model)
    randomize(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for o in opts:
        o.step()
    core = run.core
    for n, p in model.named_parameters():
        if n == "tok_emb.weight":
            factor = 1 - core.tied_embed_lr * 0.085
        elif p.ndim == 2 and "skip_weights" not in n and "resid_mix" not in n:
            factor = 1 - core.matrix_lr * 0.095
        else:
            factor = 1 - core.scalar_lr * 0.02
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=1e-6, atol=1e-7, msg=n)


def test_weight_decay_defaults_are_pr315s():
    cfg = WeightDecayConfig()
    assert (cfg.muon, cfg.adam, cfg.embed) == (0.04, 0.04, 0.04)  # recipes/pr315.toml relies on these
    run, model = build(["weight_decay"])
    wds = sorted(o.param_groups[0]["weight_decay"] for o in make_optimizers(run, model))
    assert wds == [0.04, 0.04, 0.04]
    muon = WeightDecay().pg_make_optimizer(group="matrix", params=[torch.nn.Parameter(torch.zeros(4, 4))],
                                          config=run.config)
    assert type(muon) is Muon and muon.param_groups[0]["weight_decay"] == 0.04  # alone, it makes the Muon


# --- warmdown_frac -------------------------------------------------------------------------------------------
def record_lr_mul(frac: float, warmdown_frac: float, min_lr: float) -> float:
    """PR #1493 train_model.lr_mul, transcribed."""
    if warmdown_frac <= 0:
        return 1.0
    if frac >= 1.0 - warmdown_frac:
        return max((1.0 - frac) / warmdown_frac, min_lr)
    return 1.0


@pytest.mark.parametrize("wf,min_lr", [(0.72, 0.0), (0.72, 0.1), (0.0, 0.0), (1.0, 0.0)])
def test_warmdown_frac_is_the_record_schedule(wf, min_lr):
    for f in np.linspace(0, 1, 101):
        assert lr_multiplier(float(f), wf, min_lr) == record_lr_mul(float(f), wf, min_lr)
    assert lr_multiplier(0.28, 0.72, 0.0) == pytest.approx(1.0)
    assert lr_multiplier(0.64, 0.72, 0.0) == pytest.approx(0.5)
    plugin = WarmdownFrac(WarmdownFracConfig(frac=wf, min_lr=min_lr))
    clock = Clock(step=3, elapsed_ms=0.0, frac=0.9, lr_mul=0.123, muon_momentum=0.99)
    plugin.pg_before_step(run=None, step=3, clock=clock)
    assert clock.lr_mul == record_lr_mul(0.9, wf, min_lr)


def test_warmdown_frac_drives_the_training_lr(tiny_sets):
    """Uncapped run of 10 steps: step s is trained at lr_mul(s/10), whatever core.warmdown_iters says."""
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["warmdown_frac"],
                  sets=[*tiny_sets, "core.iterations=10", "core.warmdown_iters=4", "warmdown_frac.frac=0.72",
                        "warmdown_frac.min_lr=0.1"], check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY)
    seen = []

    class Spy:
        from core.hookspecs import hookimpl

        @hookimpl(trylast=True)
        def pg_before_step(self, run, step, clock):
            seen.append((step, clock.lr_mul))

    run.pm.register(Spy(), name="spy")
    train(run)
    assert seen == [(s, max((1 - s / 10) / 0.72, 0.1) if s / 10 >= 0.28 else 1.0) for s in range(10)]
    events = [json.loads(line) for line in (run.run_dir / "events.jsonl").read_text().splitlines()]
    logged = [e["lr_mul"] for e in events if e["event"] == "step"]
    assert logged and all(v in {m for _, m in seen} for v in logged)


# --- shuffled_loader -----------------------------------------------------------------------------------------
def reference_batches(files: list[Path], rank: int, world_size: int, seq_len: int, rows: int, n_batches: int,
                      seed):
    """PR #1394's ShuffledSequenceLoader re-derived from its description, with np.fromfile and plain lists."""
    mine = files[rank::world_size]
    rng = np.random.Generator(np.random.PCG64(seed))
    toks = [np.fromfile(f, dtype="<u2", offset=1024).astype(np.int64) for f in mine]
    starts: list[list[int]] = [[] for _ in mine]

    def reset(i):
        n = len(toks[i])
        max_phase = min(seq_len - 1, max(0, n - seq_len - 1))
        phase = int(rng.integers(max_phase + 1)) if max_phase > 0 else 0
        starts[i] = [phase + int(k) * seq_len for k in rng.permutation((n - 1 - phase) // seq_len)]

    for i in range(len(mine)):
        reset(i)
    out = []
    for _ in range(n_batches):
        counts = np.array([len(s) for s in starts], dtype=np.float64)
        xs, ys = [], []
        for _ in range(rows):
            if counts.sum() <= 0:
                for i in range(len(mine)):
                    reset(i)
                counts = np.array([len(s) for s in starts], dtype=np.float64)
            i = int(rng.choice(len(mine), p=counts / counts.sum()))
            s = starts[i].pop()
            counts[i] -= 1
            xs.append(toks[i][s : s + seq_len])
            ys.append(toks[i][s + 1 : s + seq_len + 1])
        out.append((torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))))
    return out


@pytest.fixture
def shards(tmp_path):
    gen = np.random.default_rng(0)
    files = []
    for i, n in enumerate([1000, 517, 64 * 5 + 3, 2000]):
        f = tmp_path / f"fineweb_train_{i:06d}.bin"
        write_shard(f, gen.integers(0, 65535, n))
        files.append(f)
    return files


@pytest.mark.parametrize("rank,world_size,seed", [(0, 1, 0), (1, 2, 1), (0, 2, (1337, 0))])
def test_shuffled_loader_batches_equal_the_reference(shards, rank, world_size, seed):
    seq_len, rows = 64, 6
    loader = ShuffledSequenceLoader(shards, rank, world_size, seq_len, torch.device("cpu"), seed)
    want = reference_batches(shards, rank, world_size, seq_len, rows, 12, seed)  # several epochs: resets too
    for wx, wy in want:
        x, y = loader.next_batch(rows * seq_len * world_size, seq_len, 1)
        assert x.dtype == torch.int64 and torch.equal(x, wx) and torch.equal(y, wy)


def test_shuffled_loader_matches_the_record_loader(record, shards, tmp_path):
    h = record_hparams(record, train_files=str(tmp_path / "fineweb_train_*.bin"), train_seq_len=64,
                       world_size=2, rank=1)
    rec = record.ShuffledSequenceLoader(h, torch.device("cpu"))
    mine = ShuffledSequenceLoader(shards, 1, 2, 64, torch.device("cpu"), 1)
    for _ in range(10):
        rx, ry = rec.next_batch(64 * 8 * 2, 1)
        x, y = mine.next_batch(64 * 8 * 2, 64, 1)
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_shuffled_loader_is_the_training_and_calibration_source(tiny_sets):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["shuffled_loader"],
                  sets=[*tiny_sets, "core.iterations=2"], check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY, make_dir=False)
    from core.train import new_loader

    a, b = new_loader(run), new_loader(run)
    assert isinstance(a, ShuffledSequenceLoader)
    xa, _ = a.next_batch(1024, 64, 1)
    xb, _ = b.next_batch(1024, 64, 1)
    assert torch.equal(xa, xb)  # every rebuild (after warm-up, for GPTQ) starts from the same batch
