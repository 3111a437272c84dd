"""The core Muon's batched step (same-shape matrices through one Newton–Schulz call, foreach momentum, WD and
update) equals the per-matrix loop it replaced, bit for bit on CPU: fp32 momentum, NS in bf16. CPU bmm and mm
give identical bf16 results for batches of these sizes (checked directly below), so every comparison is exact
(atol=0). A batch of ONE large transposed matrix (1536x512) does not (CPU bmm differs from mm in the last bf16
bit, which NS amplifies to bf16 noise), so a lone matrix goes through NS in 2-D, as before (tested at that size).
On 2 gloo ranks the sharded step (matrix i computed by rank i % 2, the flat bf16 update all-reduced) equals
the one-process step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nproc_runs import end_gloo_worker, free_port

from core.optim import NS5_COEFFS, Muon, zeropower_via_newtonschulz5
from plugins.muon_eq_r import MuonEqR, normalize_rows
from plugins.polar_express import PE_COEFFS

pytestmark = pytest.mark.usefixtures("one_thread")

# banks of 3 (8x16), 2 (16x8) and 1 (12x12, 24x8) matrices, interleaved as a model's layers are
SHAPES = [(8, 16), (16, 8), (8, 16), (12, 12), (16, 8), (8, 16), (24, 8)]


def ns_2d(G, steps, coeffs=None, eps=1e-7):
    """The pre-batching NS5 of one matrix (bf16; the norm of the whole matrix; `.T` when rows > cols)."""
    X = G.bfloat16()
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for a, b, c in (NS5_COEFFS,) * steps if coeffs is None else coeffs[:steps]:
        A = X @ X.T
        X = a * X + (b * A + (c * A @ A if coeffs is None else c * (A @ A))) @ X  # NS5's order, the schedule's
    return X.T if transposed else X


def reference_steps(init, grads, lr, momentum, nesterov=True, wd=0.0, coeffs=None, row_norm=False):
    """The per-matrix loop (the old `Muon.step` on one rank): returns final params and momentum buffers."""
    params, bufs = [t.clone() for t in init], [None] * len(init)
    for step_grads in grads:
        for i, (p, g) in enumerate(zip(params, step_grads, strict=True)):
            if g is not None:
                bufs[i] = torch.zeros_like(g) if bufs[i] is None else bufs[i]
                bufs[i].mul_(momentum).add_(g)
                u = g.add(bufs[i], alpha=momentum) if nesterov else g
                u = ns_2d(normalize_rows(u, 1e-7) if row_norm else u, 5, coeffs)
                u *= max(1, u.size(0) / u.size(1)) ** 0.5
            p.mul_(1.0 - lr * wd)  # (wd=0: times 1.0, exact)
            if g is not None:
                p.add_(u.to(p.dtype), alpha=-lr)
    return params, bufs


def case(seed=0, steps=3, missing=()):
    """Initial weights and per-step gradients; (step, index) in `missing` has no gradient."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[None if (t, i) in missing else torch.randn(s, generator=gen) for i, s in enumerate(SHAPES)]
             for t in range(steps)]
    return init, grads


def run(opt_factory, init, grads):
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = opt_factory(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = None if g is None else g.clone()
        opt.step()
    return [p.detach() for p in params], [opt.state[p].get("momentum_buffer") for p in params]


def assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(8, 16), (24, 8), (5, 8, 16), (3, 24, 8), (2, 3, 12, 12)])
def test_batched_newton_schulz_equals_each_matrix_alone_bitwise(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    for coeffs in (None, PE_COEFFS):
        got = zeropower_via_newtonschulz5(G, steps=5, coeffs=coeffs)
        want = torch.stack([ns_2d(m, 5, coeffs) for m in G.reshape(-1, *shape[-2:])]).reshape(shape)
        assert got.dtype == torch.bfloat16 and got.shape == G.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_newton_schulz_leaves_a_same_dtype_input_alone():
    G = torch.randn(3, 8, 16, dtype=torch.bfloat16)
    before = G.clone()
    zeropower_via_newtonschulz5(G, steps=5)
    assert torch.equal(G, before)  # (the bf16 cast is the input itself: the normalisation must not be in place)
    out = zeropower_via_newtonschulz5(G.float(), steps=5, dtype=torch.float32)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("kw", [
    dict(),  # NS5, Nesterov, no WD
    dict(wd=0.04),
    dict(nesterov=False, wd=0.1),
    dict(coeffs=PE_COEFFS, wd=0.04),  # polar_express's param-group schedule
], ids=["ns5", "wd", "no_nesterov", "polar_express"])
def test_batched_step_equals_the_per_matrix_loop_bitwise(kw):
    init, grads = case(missing={(0, 3), (1, 1), (1, 6)})  # no gradient: WD only, momentum untouched
    want = reference_steps(init, grads, 0.05, 0.9, **kw)

    def make(params):
        opt = Muon(params, lr=0.05, momentum=0.9, backend_steps=5, nesterov=kw.get("nesterov", True),
                   weight_decay=kw.get("wd", 0.0))
        if "coeffs" in kw:
            opt.param_groups[0]["ns_coeffs"] = kw["coeffs"]
        return opt

    got = run(make, init, grads)
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])  # the per-parameter momentum_buffer state, as before
    assert max((a - b).abs().max().item() for a, b in zip(got[0], init, strict=True)) > 1e-3


def test_a_lone_large_matrix_keeps_the_2d_bits():
    gen = torch.Generator().manual_seed(5)
    shapes = [(1536, 512), (64, 32), (64, 32)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes]]
    want = reference_steps(init, grads, 0.025, 0.99, wd=0.04)
    got = run(lambda ps: Muon(ps, lr=0.025, momentum=0.99, backend_steps=5, weight_decay=0.04), init, grads)
    assert_same(got[0], want[0])


def test_muon_eq_r_batched_step_equals_the_per_matrix_loop_bitwise():
    init, grads = case(seed=2, missing={(2, 0)})
    want = reference_steps(init, grads, 0.022, 0.99, wd=0.095, row_norm=True)
    got = run(lambda ps: MuonEqR(ps, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095), init, grads)
    assert_same(got[0], want[0])
    plain = run(lambda ps: Muon(ps, lr=0.022, momentum=0.99, backend_steps=5, weight_decay=0.095), init, grads)
    assert max((a - b).abs().max().item() for a, b in zip(got[0], plain[0], strict=True)) > 1e-3


def test_several_groups_and_a_compiled_newton_schulz():
    """Two param groups with their own lr/WD; the NS compiled as the core does on CUDA (dynamic=False, one graph
    per batched shape) gives the eager result."""
    init, grads = case(seed=3, steps=2)
    a, b = reference_steps(init[:4], [g[:4] for g in grads], 0.05, 0.9), \
        reference_steps(init[4:], [g[4:] for g in grads], 0.02, 0.95, wd=0.1)
    compiled = torch.compile(zeropower_via_newtonschulz5, backend="aot_eager", fullgraph=True, dynamic=False)

    def make(params):
        opt = Muon(params[:4], lr=0.05, momentum=0.9, backend_steps=5, zeropower=compiled)
        opt.add_param_group(dict(params=params[4:], lr=0.02, momentum=0.95, weight_decay=0.1))
        return opt

    got = run(make, init, grads)
    assert_same(got[0], a[0] + b[0])
    assert_same(got[1], a[1] + b[1])


# --- two ranks (gloo) ---------------------------------------------------------------------------------------
def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    init, grads = case(seed=4, missing={(1, 2)})
    got, bufs = run(lambda ps: Muon(ps, lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.04), init, grads)
    out = {"params": [p.tolist() for p in got], "owned": [b is not None for b in bufs]}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))
    end_gloo_worker()


@pytest.mark.slow  # two spawned processes
def test_two_ranks_split_the_matrices_and_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in range(2):  # rank r keeps the momentum of matrices r, r + 2, ... (group order) only
        assert ranks[r]["owned"] == [i % 2 == r for i in range(len(SHAPES))]
    init, grads = case(seed=4, missing={(1, 2)})
    want, _ = reference_steps(init, grads, 0.05, 0.9, wd=0.04)
    for r in range(2):
        assert_same([torch.tensor(p) for p in ranks[r]["params"]], want)


@pytest.mark.parametrize("after", [False, True])
def test_muon_decays_before_or_after_the_update(after):
    """weight_decay.muon_after_update (PR #534): p <- (p - lr·u)·(1 - lr·wd); default p·(1 - lr·wd) - lr·u."""
    from core.config import resolve
    from core.registry import Registry
    from plugins.weight_decay import WeightDecay

    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["weight_decay"],
                  sets=["weight_decay.muon=0.5", f"weight_decay.muon_after_update={str(after).lower()}",
                        "core.matrix_lr=0.1"])
    gen = torch.Generator().manual_seed(0)
    p0, g = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    p = torch.nn.Parameter(p0.clone())
    p.grad = g.clone()
    WeightDecay(cfg.plugin_configs["weight_decay"]).pg_make_optimizer("matrix", [p], cfg).step()
    plain = torch.nn.Parameter(p0.clone())
    plain.grad = g.clone()
    Muon([plain], lr=0.1, momentum=cfg.core.muon_momentum, backend_steps=cfg.core.muon_backend_steps).step()
    u = (p0 - plain.detach()) / 0.1  # the update itself
    expect = (p0 - 0.1 * u) * (1 - 0.1 * 0.5) if after else p0 * (1 - 0.1 * 0.5) - 0.1 * u
    torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-6)
    other = (p0 - 0.1 * u) * (1 - 0.1 * 0.5) if not after else p0 * (1 - 0.1 * 0.5) - 0.1 * u
    assert (p.detach() - other).abs().max() > 1e-4  # the two orders differ by lr²·wd·u
