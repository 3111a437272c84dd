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
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from model_builders import build_tiny, randomize
from record_module import exec_record
from record_tables import check_logged

from core.config import resolve
from core.model import MLP
from core.optim import Muon, zeropower_via_newtonschulz5
from core.registry import Registry
from core.run import create_run
from core.train import Clock, CoreDefaults, build_model, make_optimizers, setup, train
from dataprep.build import write_shard
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
    return build_tiny(REGISTRY, TINY, plugins, sets)



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



@pytest.fixture(scope="module")
def record():
    src = _record_source()
    if src is None:
        pytest.skip("PR #1493 train_gpt.py not available (set PGOLF_PR1493_TRAIN_GPT)")
    mod = exec_record(src, "pr1493_train_gpt")
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

    class Spy:  # registered last, so called first among plain implementations: warmdown_frac must be tryfirst
        from core.hookspecs import hookimpl

        @hookimpl
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


# --- the existing plugins at the record's settings ------------------------------------------------------------
def _gptq_plugin(**kw):
    from plugins.gptq import GPTQ, GPTQConfig

    return GPTQ(GPTQConfig(clip="sdclip", gptq_embed=True, matrix_clip_sigmas=12.85, embed_clip_sigmas=20.0, **kw))


def _hessian(cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * cols, cols, generator=gen) * torch.linspace(0.1, 2.0, cols)
    h = x.T @ x / x.shape[0]
    h[3, :] = 0  # a dead input column
    h[:, 3] = 0
    return h


@pytest.mark.parametrize("name,shape,bits,k", [("blocks.0.mlp.fc.weight", (96, 160), 6, 12.85),
                                                ("tok_emb.weight", (200, 64), 8, 20.0)])
def test_gptq_sdclip_is_the_record_quantizer(record, name, shape, bits, k):
    """gptq (clip=sdclip, gptq_embed) on a matrix with a Hessian = the record's gptq_quantize_weight: same int
    codes and fp16 scales (int6 matrices at k 12.85, the int8 embedding at k 20)."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(shape, generator=gen) * 0.05
    h = _hessian(shape[1], seed=6)
    plugin = _gptq_plugin()
    plugin.hessians = {name: h}
    q = plugin.pg_quantize_tensor(name=name, tensor=w, config=None)
    rq, rs = record.gptq_quantize_weight(w, h, clip_sigmas=k, clip_range=2 ** (bits - 1) - 1, block_size=128)
    assert q.meta["bits"] == bits
    torch.testing.assert_close(q.scale, rs, rtol=0, atol=0)
    # bit-identical here; the tolerance only absorbs a platform's float reassociation flipping a rounding
    mismatch = (q.data != rq).float().mean().item()
    assert mismatch < 1e-3 and (q.data.int() - rq.int()).abs().max() <= 1, f"{mismatch:.2%} of the codes differ"


def test_gptq_targets_the_embedding_and_every_large_matrix():
    """The record GPTQs every float tensor above 65,536 elements: block matrices int6, tok_emb int8 with the
    final-norm output as its Hessian; smaller tensors pass through as fp16."""
    from plugins.gptq import HessianCollector, hessian_targets

    run, model = build(["gptq"], ["core.vocab_size=1100", "core.model_dim=256", "core.num_heads=4",
                                  "core.num_kv_heads=2", "gptq.gptq_embed=true", "gptq.clip=sdclip"])
    targets = hessian_targets(model, run.config.plugin_configs["gptq"])
    big = {n for n, p in model.named_parameters() if p.numel() > 65_536}
    assert targets == big and "tok_emb.weight" in targets
    x = torch.randint(0, 1100, (2, 16))
    with HessianCollector(model, {"tok_emb.weight"}) as c, torch.no_grad():
        model(x)
        h = model.hidden(x).reshape(-1, 256)
    torch.testing.assert_close(c.finish()["tok_emb.weight"], h.T @ h / h.shape[0], rtol=1e-5, atol=1e-6)


def record_ttt_chunks(total_tokens: int, seq_len: int, stride: int, chunk: int):
    """PR #1493 eval_val_ttt: chunk of each window (by its first scored position) and each chunk's
    training span [ci·chunk, ci·chunk + chunk_seqs·seq_len] (token indices, inclusive end)."""
    context = seq_len - stride
    starts = [ws for ws in range(0, total_tokens, stride) if ws + context < total_tokens]
    n_chunks = (total_tokens + chunk - 1) // chunk
    windows: list[list[int]] = [[] for _ in range(n_chunks)]
    for ws in starts:
        s = 0 if ws == 0 else context
        windows[min((ws + s) // chunk, n_chunks - 1)].append(ws)
    spans = []
    for ci in range(n_chunks - 1):
        seqs = (min((ci + 1) * chunk, total_tokens) - ci * chunk) // seq_len
        spans.append((ci * chunk, ci * chunk + seqs * seq_len))
    return windows, spans


def test_score_first_ttt_chunks_are_the_records():
    """Same windows per chunk and the same training tokens per chunk as the record (total a multiple of the
    stride, as the record's 40,540,160 validation tokens), and the record's cosine LR across chunks."""
    from plugins.lib.ttt import cosine_lr
    from plugins.score_first_ttt import ScoreFirstTTTConfig, ScoreFirstTTTEvaluator

    seq_len, stride, chunk = 256, 64, 1024
    total = 9 * 1024 + 5 * 64
    ev = ScoreFirstTTTEvaluator(seq_len, ScoreFirstTTTConfig(chunk_tokens=chunk, stride=stride))
    ends, groups = ev.chunks(total)
    windows, spans = record_ttt_chunks(total, seq_len, stride, chunk)
    assert [[ends[k] - seq_len for k in g] for g in groups] == [[max(ws, 0) for ws in w] for w in windows]
    for ci, g in enumerate(groups[:-1]):
        start = ends[g.start - 1] if g.start > 0 else 0
        end = ends[g.stop - 1]
        rows = (end - start) // seq_len
        assert (start, start + rows * seq_len) == spans[ci]
    assert cosine_lr(0.005, 0, 1238) == 0.005 and cosine_lr(0.005, 1237, 1238) == pytest.approx(0.0)
    n = len(groups)
    for ci in (1, n // 2, n - 2):
        assert cosine_lr(0.005, ci, n) == 0.005 * 0.5 * (1 + math.cos(math.pi * ci / (n - 1)))


def _hessian_worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    from plugins.gptq import HessianCollector

    torch.set_num_threads(1)  # a forked worker: no intra-op thread pool of its own
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.Module()
        model.lin = torch.nn.Linear(8, 4, bias=False)
        x = torch.randn(5 + rank, 8, generator=torch.Generator().manual_seed(rank))
        for ranks in ("rank0", "all"):
            with HessianCollector(model, {"lin.weight"}) as c, torch.no_grad():
                model.lin(x)
            out[(ranks, rank)] = c.finish(True, ranks)["lin.weight"]
    finally:
        dist.destroy_process_group()


def test_gptq_hessian_ranks():
    """rank0 (the record: every rank quantizes with its own Hessians, rank 0's artifact is the one written and
    loaded by all): every rank gets rank 0's Hessian; all: the mean over every rank's rows."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        # fork: the workers inherit the loaded torch (spawn would import it afresh in each, ~5 s on 2 cores);
        # a deadline instead of a bare join, so a stuck worker fails the test rather than hanging the suite
        ctx = mp.start_processes(_hessian_worker, args=(2, port, out), nprocs=2, join=False, start_method="fork")
        deadline = time.monotonic() + 120
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("the Hessian workers did not finish in 120 s")
        got = dict(out)
    xs = [torch.randn(5 + r, 8, generator=torch.Generator().manual_seed(r)) for r in range(2)]
    want = {"rank0": xs[0].T @ xs[0] / 5, "all": sum(x.T @ x for x in xs) / 11}
    for (ranks, r), h in got.items():
        torch.testing.assert_close(h, want[ranks], rtol=1e-5, atol=1e-6, msg=f"{ranks} rank {r}")
    assert len(got) == 4


# --- the record's model: the parts of this lane, then (when merged) with the routing plugins -------------------
ROUTING = ("depth_recurrence", "parallel_residuals", "skip_gates")
ROUTING_MISSING = [n for n in ROUTING if n not in REGISTRY.plugins]
needs_routing = pytest.mark.skipif(bool(ROUTING_MISSING), reason=f"routing plugins {ROUTING_MISSING} are not in "
                                   "this registry yet (the lead's depth_recurrence / parallel_residuals / "
                                   "skip_gates land in main separately)")
LANE = ["leaky_relu2", "xsa", "partial_rope", "ln_scale", "orthoinit"]
SMALL = dict(vocab_size=96, num_layers=5, model_dim=64, embedding_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
             xsa_last_n=5, rope_dims=8, train_seq_len=64, qk_gain_init=5.25, ln_scale=True)


def lane_sets(layers: int = 5) -> list[str]:
    return [f"core.num_layers={layers}", "core.qk_gain_init=5.25", f"xsa.last_n={layers}", "partial_rope.dims=8",
            "partial_rope.ntk_train_seq_len=64", "orthoinit.mup_proj_scale=false", "core.seed=11"]


def shared_names(rec_sd: dict, ours_sd: dict) -> dict[str, str]:
    """record name -> pgolf name: equal names, then the leftovers paired one-to-one by shape."""
    mapping = {k: k for k in rec_sd if k in ours_sd}
    left_rec = [k for k in rec_sd if k not in ours_sd]
    left_ours = [k for k in ours_sd if k not in rec_sd]
    for k in left_rec:
        same = [o for o in left_ours if ours_sd[o].shape == rec_sd[k].shape]
        assert len(same) == 1, f"cannot pair the record's {k} with one pgolf parameter: {same}"
        mapping[k] = same[0]
        left_ours.remove(same[0])
    assert not left_ours, f"pgolf parameters the record has not: {left_ours}"
    return mapping


def test_lane_model_is_the_records_without_routing(record):
    """Record GPT with loops, parallel residuals and skip gates off vs pgolf with this lane's plugins: the same
    initial weights from the same seed, the same logits (also past the NTK length) and gradients."""
    h = record_hparams(record, **SMALL, num_loops=0, parallel_residual_start=-1, skip_gates_enabled=False)
    torch.manual_seed(11)
    rec = record.GPT(h)
    _, model = build(LANE, lane_sets())
    ours = model.state_dict()
    assert sorted(rec.state_dict()) == sorted(ours)
    for k, v in rec.state_dict().items():
        assert torch.equal(ours[k], v), f"initial {k} differs"
    randomize(rec, seed=12)
    model.load_state_dict(rec.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(13)
    for seq_len in (40, 80):  # 80 > 64: the NTK-rescaled base in both
        x = torch.randint(0, 96, (2, seq_len), generator=gen)
        y = torch.randint(0, 96, (2, seq_len), generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(model(x), rec.forward_logits(x), rtol=1e-5, atol=1e-5)
    rec(x, y).backward()
    model(x, y).backward()
    grads = dict(model.named_parameters())
    for name, p in rec.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@needs_routing
def test_full_model_is_the_records(record):
    """With the routing plugins: loops 1-2 ×2 (looping on), parallel residuals from block 3, gated skips."""
    h = record_hparams(record, **SMALL, num_loops=2, loop_start=1, loop_end=2, parallel_residual_start=3,
                       skip_gates_enabled=True)
    torch.manual_seed(11)
    rec = record.GPT(h)
    rec.looping_active = True
    run, model = build([*LANE, *ROUTING], [*lane_sets(), "depth_recurrence.loop_start=1",
                                           "depth_recurrence.loop_end=2", "depth_recurrence.num_loops=2",
                                           "parallel_residuals.start=3"])
    modes = [m for ms in run.hook.pg_modes(config=run.config) if ms for m in ms]
    run.hook.pg_enter_mode(model=model, active=tuple(m.name for m in sorted(modes, key=lambda m: m.start_frac)))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in rec.parameters())
    randomize(rec, seed=14)
    names = shared_names(rec.state_dict(), model.state_dict())
    model.load_state_dict({names[k]: v for k, v in rec.state_dict().items()}, strict=True)
    x = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        torch.testing.assert_close(model(x), rec.forward_logits(x), rtol=1e-5, atol=1e-5)


# --- recipes/pr1493.toml ---------------------------------------------------------------------------------------
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pr1493.toml"
LOGGED_PARAMS = 35_944_536

def recipe_config(sets=(), drop_missing: bool = True):
    """The recipe resolved; plugins this registry does not know (yet) are dropped with their tables."""
    from core.config import load_recipe

    data = load_recipe(RECIPE)
    data["source"] = str(RECIPE)
    if drop_missing:
        missing = [n for n in data["plugins"] if n not in REGISTRY.plugins]
        data["plugins"] = [n for n in data["plugins"] if n not in missing]
        for n in missing:
            data.pop(n, None)
    return resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=data, sets=list(sets),
                   check_plugins=REGISTRY.check)


def test_recipe_carries_every_logged_hyperparameter():
    """Every hyperparameter of the seed-42 log is in PR #1493's table (pgolf/records.py) and the recipe's value
    under its name equals the logged one; skip gates, LN scale and TTT are on (their plugins)."""
    check_logged("pr1493")
    from core.config import load_recipe

    plugins = load_recipe(RECIPE)["plugins"]
    assert {"skip_gates", "ln_scale", "score_first_ttt"} <= set(plugins)


def test_recipe_resolves_with_this_lanes_plugins():
    cfg = recipe_config()
    assert cfg.core.qk_gain_init == 5.25 and cfg.core.vocab_size == 8192 and cfg.core.mlp_mult == 4
    pc = cfg.plugin_configs
    assert pc["ema"].decay == 0.9965 and pc["xsa"].last_n == 11 and pc["partial_rope"].dims == 16
    assert (pc["gptq"].calib_batches, pc["gptq"].reserve_seconds, pc["gptq"].clip) == (64, 12.0, "sdclip")
    assert (pc["score_first_ttt"].lr, pc["score_first_ttt"].epochs, pc["score_first_ttt"].chunk_tokens) == \
        (0.005, 3, 32768)
    assert not pc["orthoinit"].mup_proj_scale


@pytest.mark.slow  # ~13 s on 2 CPU cores (orthogonal init of the full-size matrices)
def test_recipe_builds_the_records_parameter_count():
    """35,944,536 (the log) with the routing plugins; without them the core's 5 ungated skips instead of the
    looped schedule's 8 gated ones: 3·512 + 8·512 fewer."""
    cfg = recipe_config(["core.device=cpu", "core.compile=false"], drop_missing=bool(ROUTING_MISSING))
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    n = sum(p.numel() for p in build_model(run).parameters())
    assert n == (LOGGED_PARAMS if not ROUTING_MISSING else LOGGED_PARAMS - 3 * 512 - 8 * 512)


@pytest.mark.slow  # ~60 s on 2 CPU cores: train, GPTQ, brotli, score-first TTT
@needs_routing
def test_recipe_trains_end_to_end_on_cpu(tiny_data, tiny_core, tmp_path):
    from pgolf.cli import main

    args = ["train", "--recipe", str(RECIPE), "--data", str(tiny_data)]
    for s in [*tiny_core, "core.num_layers=6", "core.iterations=3", "core.eval_seq_len=64",
              "depth_recurrence.loop_start=1", "depth_recurrence.loop_end=2", "parallel_residuals.start=4",
              "xsa.last_n=6", "partial_rope.dims=8", "gptq.calib_batches=2", "gptq.reserve_seconds=0",
              "gptq.keep_float_max_numel=0", "score_first_ttt.chunk_tokens=1024", "score_first_ttt.stride=32",
              "score_first_ttt.epochs=1", "brotli.quality=5", f"core.out_dir={tmp_path}", "core.run_id=pr1493"]:
        args += ["--set", s]
    assert main(args) == 0
    run_dir = tmp_path / "pr1493"
    log = (run_dir / "train.log").read_text()
    assert "ema:applied decay:0.9965" in log and "GPTQ:collected" in log and "weight_decay:" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["evaluator"] == "score_first_ttt" and metrics["artifact_label"].endswith("brotli")
    assert math.isfinite(metrics["val_bpb"]) and metrics["steps"] == 3


@pytest.mark.parametrize("setting,expect", [("warmdown_frac.frac=1.5", "warmdown_frac"),
                                            ("muon_eq_r.eps=0", "muon_eq_r"),
                                            ("leaky_relu2.slope=1.0", "leaky_relu2.slope"),
                                            ("weight_decay.embed=-1", "embed=-1.0")])
def test_bad_settings_are_configuration_errors(setting, expect):
    from core.config import ConfigError

    plugin = setting.split(".")[0]
    with pytest.raises(ConfigError, match=expect) as err:
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[plugin], sets=[setting],
                check_plugins=REGISTRY.check)
    assert len(err.value.errors) == 1


@pytest.mark.slow  # ~30-80 s on 2 shared CPU cores (three tiny runs, one compiled)
def test_lane_plugins_in_a_compiled_run(tiny_sets, monkeypatch):
    """The whole lane in one run with the model compiled (fullgraph, aot_eager on CPU) gives the eager run's
    result, and not the result of the run without the lane: nothing is folded away by the compiler."""
    import functools

    lane = ["leaky_relu2", "muon_eq_r", "weight_decay", "warmdown_frac", "shuffled_loader"]
    wd = ["weight_decay.embed=0.085", "weight_decay.adam=0.02"]

    def run_with(plugins, compiled):
        extra = [*wd, f"core.compile={'true' if compiled else 'false'}"] if plugins else []
        cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins,
                      sets=[*tiny_sets, "core.iterations=6", *extra], check_plugins=REGISTRY.check)
        return train(setup(cfg, REGISTRY, make_dir=False))["val_loss"]

    eager = run_with(lane, compiled=False)
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = run_with(lane, compiled=True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert abs(run_with([], compiled=False) - eager) > 1e-3


@needs_routing
def test_recipe_optimizer_groups_are_the_records(record):
    """The record's Optimizers split (block matrices -> Muon WD 0.095 with row norm; tok_emb -> AdamW 0.085;
    block vectors/control tensors, skip_weights, skip_gates -> AdamW 0.02) on the recipe's plugins."""
    h = record_hparams(record, **SMALL, num_loops=2, loop_start=1, loop_end=2, parallel_residual_start=3,
                       skip_gates_enabled=True)
    rec = record.GPT(h)
    opts = record.Optimizers(h, rec)
    rec_names = {id(p): n for n, p in rec.named_parameters()}
    want = {kind: {rec_names[id(p)] for g in opt.param_groups for p in g["params"]}
            for kind, opt in (("token", opts.optimizer_tok), ("matrix", opts.optimizer_muon),
                              ("scalar", opts.optimizer_scalar))}
    run, model = build([*LANE, *ROUTING, "muon_eq_r", "weight_decay"],
                       [*lane_sets(), "depth_recurrence.loop_start=1", "depth_recurrence.loop_end=2",
                        "parallel_residuals.start=3", "weight_decay.adam=0.02", "weight_decay.embed=0.085"])
    names = {v: k for k, v in shared_names(rec.state_dict(), model.state_dict()).items()}
    ours = {id(p): names[n] for n, p in model.named_parameters()}
    got = {}
    for opt in make_optimizers(run, model):
        g = opt.param_groups[0]
        kind = "matrix" if isinstance(opt, MuonEqR) else "token" if g["weight_decay"] == 0.085 else "scalar"
        assert g["weight_decay"] == {"matrix": 0.095, "token": 0.085, "scalar": 0.02}[kind]
        got[kind] = {ours[id(p)] for p in g["params"]}
    assert got == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the core compiles NS5 with inductor there)")
def test_muon_eq_r_keeps_the_row_norm_under_the_cores_compiled_ns5_on_cuda():
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["muon_eq_r"],
                  sets=[s for s in TINY if not s.startswith("core.device")] + ["core.device=cuda"],
                  check_plugins=REGISTRY.check)
    run = create_run(cfg, REGISTRY, CoreDefaults(fused_adam=True), make_dir=False)
    run.model = build_model(run)
    opt = next(o for o in make_optimizers(run, run.model) if isinstance(o, MuonEqR))
    assert opt.inner_zeropower is not zeropower_via_newtonschulz5  # the core's compiled NS5 is inside
    init, grads = _muon_case()
    params = [torch.nn.Parameter(t.cuda()) for t in init]
    ref = MuonEqR(params, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095)
    ref.zeropower = opt.inner_zeropower
    got = _steps(ref, params, [[g.cuda() for g in gs] for gs in grads])
    want = reference_muon_eq_r([t.cuda() for t in init], [[g.cuda() for g in gs] for gs in grads], lr=0.022,
                               momentum=0.99, wd=0.095)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


@pytest.mark.slow  # ~30 s: a vocab-8192 tokenizer and shards from the generated corpus, then a tiny run
def test_recipe_runs_on_a_built_sp8192_dataset(tmp_path):
    """`pgolf data build TEXT --vocab 8192 --out OUT` gives a dataset the recipe trains, exports and evaluates
    on at vocab 8192 (tiny model; routing plugins dropped while they are not in this registry)."""
    from dataprep.build import build_dataset
    from dataprep.corpus import generate_documents

    src = tmp_path / "text"
    src.mkdir()
    for i, doc in enumerate(generate_documents(2000, seed=3)):
        (src / f"doc{i:05d}.txt").write_text(doc, encoding="utf-8")
    build_dataset(src, tmp_path / "sp8192", vocab_size=8192, val_docs=40)
    tiny = ["core.num_layers=6", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2",
            "core.train_seq_len=128", "core.eval_seq_len=128", "core.train_batch_tokens=1024",
            "core.grad_accum_steps=1", "core.iterations=3", "core.warmup_steps=0", "core.val_loss_every=0",
            "core.val_max_tokens=2048", "core.max_wallclock_seconds=0", "core.device=cpu", "core.compile=false",
            f"core.data_path={tmp_path / 'sp8192'}", f"core.out_dir={tmp_path / 'runs'}", "xsa.last_n=6",
            "partial_rope.dims=8", "gptq.calib_batches=2", "gptq.reserve_seconds=0", "brotli.quality=5",
            "score_first_ttt.chunk_tokens=1024", "score_first_ttt.stride=64", "score_first_ttt.epochs=1"]
    if not ROUTING_MISSING:
        tiny += ["depth_recurrence.loop_start=1", "depth_recurrence.loop_end=2", "parallel_residuals.start=4"]
    run = setup(recipe_config(tiny), REGISTRY)
    assert run.core.vocab_size == 8192 and run.tokenizer_path.name == "fineweb_8192_bpe.model"
    summary = train(run)
    assert summary["evaluator"] == "score_first_ttt" and math.isfinite(summary["val_bpb"])
