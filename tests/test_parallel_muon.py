"""parallel_muon: the banked (batched) update equals the per-matrix Muon update; on 2 gloo ranks the sharded
update equals the 1-rank update, with and without the global-norm clip, and ranks stay identical."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from nproc_runs import end_gloo_worker, free_port, train_on_1_and_2_processes

from core.optim import NS5_COEFFS, Muon, default_param_groups, zeropower_via_newtonschulz5
from plugins.muon_eq_r import MuonEqR
from plugins.parallel_muon import ParallelMuon, clip_global_grad_norm
from plugins.polar_express import PE_COEFFS

SHAPES = [(8, 16), (16, 8), (8, 16), (12, 12), (16, 8), (8, 16)]  # banks of 3, 2 and 1 matrices
F32 = dict(grad_dtype=torch.float32, ns_dtype=torch.float32)
BANK_ROWS = [(0, 2, 5), (1, 4), (3,)]  # SHAPES' same-shape matrices, stacked as 3-D bank parameters


def ns_per_matrix_fp32(G, steps, coeffs=None, eps=1e-7):
    """Independent per-matrix Newton–Schulz in fp32 (the core's algorithm, without its bf16 cast)."""
    X = G.float()
    X = X / (X.norm() + eps)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    for a, b, c in (coeffs or (NS5_COEFFS,) * steps)[:steps]:
        A = X @ X.T
        X = a * X + (b * A + (c * A @ A if coeffs is None else c * (A @ A))) @ X  # the core's orders
    return X.T if transposed else X


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in SHAPES]


def grads_for(step, rank=None):
    g = torch.Generator().manual_seed(1000 * step + (rank if rank is not None else 99))
    return [torch.randn(*s, generator=g) for s in SHAPES]


def run_steps(opt, params, grads_of_step, steps=3):
    for step in range(steps):
        for p, grad in zip(params, grads_of_step(step), strict=True):
            p.grad = grad.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def muon_per_matrix_fp32(params, grads_of_step, lr, momentum, wd=0.0, coeffs=None, row_normalize=False,
                         steps=3):
    """Muon one matrix at a time in fp32 (the core's `Muon.step` keeps its update in bf16, so it is not the
    fp32 reference): Nesterov momentum, optional row normalisation, NS, sqrt(max(1, r/c)) scale, WD."""
    bufs = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        for step in range(steps):
            for p, buf, g in zip(params, bufs, grads_of_step(step), strict=True):
                buf.mul_(momentum).add_(g)
                u = g + momentum * buf
                if row_normalize:
                    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-7)
                u = ns_per_matrix_fp32(u, 5, coeffs) * max(1, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1 - lr * wd).add_(u, alpha=-lr)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("variant", ["ns5", "polar_express_wd", "muon_eq_r"])
def test_banked_update_equals_per_matrix_muon_fp32(variant):
    ref_params, params = make_params(), make_params()
    wd = 0.0 if variant == "ns5" else 0.1
    coeffs = PE_COEFFS if variant == "polar_express_wd" else None
    kw = dict(lr=0.05, momentum=0.9, backend_steps=5)
    source = MuonEqR(params, weight_decay=wd, **kw) if variant == "muon_eq_r" else Muon(params, weight_decay=wd, **kw)
    if coeffs:
        source.param_groups[0]["ns_coeffs"] = coeffs
    banked = ParallelMuon.from_muon(source, **F32)  # takes the settings from the Muon it replaces
    expected = muon_per_matrix_fp32(ref_params, grads_for, 0.05, 0.9, wd, coeffs, variant == "muon_eq_r")
    got = run_steps(banked, params, grads_for)
    assert sorted(len(b.params) for b in banked.banks) == [1, 2, 3]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
    assert not torch.allclose(expected[0], make_params()[0], atol=1e-3)  # the steps moved the weights


def test_default_bf16_bank_update_is_as_close_to_fp32_as_the_core_muon():
    """The record's precision (bf16 momentum and NS): its distance to the fp32 update is the core Muon's
    (bf16 NS, bf16 update) bf16 noise, not a different update."""
    start, fp32 = make_params(), muon_per_matrix_fp32(make_params(), grads_for, 0.05, 0.9)
    core_params, params = make_params(), make_params()
    core = run_steps(Muon(core_params, lr=0.05, momentum=0.9, backend_steps=5), core_params, grads_for)
    banked = run_steps(ParallelMuon(params, lr=0.05, momentum=0.9, backend_steps=5), params, grads_for)
    for s, f, c, b in zip(start, fp32, core, banked, strict=True):
        moved = (f - s).norm()
        assert (b - f).norm() < 0.05 * moved
        assert (b - f).norm() < 1.5 * (c - f).norm()


@pytest.mark.parametrize("shape", [(4, 8, 24), (3, 24, 8)])
def test_batched_newton_schulz_equals_each_matrix_alone(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    batched = zeropower_via_newtonschulz5(G, 5, dtype=torch.float32)  # the NS the banks run
    for i in range(shape[0]):
        torch.testing.assert_close(batched[i], ns_per_matrix_fp32(G[i], 5), rtol=0, atol=1e-6)


def test_load_state_dict_restores_bank_momentum():
    """The core's warm-up restores optimizer state with load_state_dict: the bank momentum must follow."""
    params = make_params()
    opt = ParallelMuon(params, lr=0.05, momentum=0.9, backend_steps=5, **F32)
    initial = opt.state_dict()
    start = [p.detach().clone() for p in params]
    first = run_steps(opt, params, grads_for, steps=2)
    opt.load_state_dict(initial)
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    again = run_steps(opt, params, grads_for, steps=2)
    for a, b in zip(again, first, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt.state[params[0]]["bank_momentum"].dtype == torch.float32


# --- two ranks (gloo) ---------------------------------------------------------------------------------------
def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    for name, kw in (("fp32", F32), ("bf16", {})):
        params = make_params()
        other = torch.nn.Parameter(torch.ones(5))
        opt = ParallelMuon(params, lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.1, **kw)
        for step in range(3):
            for p, grad in zip(params, grads_for(step, rank), strict=True):
                p.grad = grad
            other.grad = torch.full((5,), 2.0)  # replicated (already reduced) gradient
            if step == 2:  # the plugin's clip path: reduce-scatter, global norm, clip, then step
                opt.launch_reduce_scatters()
                clip_global_grad_norm(opt, [other.grad], max_norm=1.0)
                for p in params:
                    p.grad = None
            opt.step()
        results[name] = {"params": [p.detach().tolist() for p in params], "other_grad": other.grad.tolist()}
    # real banks (3-D parameters, parallel_muon.banks): the same steps on the stacks, B=3 padded to 4 on 2 ranks
    params = make_params()
    banks = [torch.nn.Parameter(torch.stack([params[i] for i in idx]).detach()) for idx in BANK_ROWS]
    other = torch.nn.Parameter(torch.ones(5))
    opt = ParallelMuon(banks, lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.1, **F32)
    for step in range(3):
        grads = grads_for(step, rank)
        for bank, idx in zip(banks, BANK_ROWS, strict=True):
            bank.grad = torch.stack([grads[i] for i in idx])
        other.grad = torch.full((5,), 2.0)
        if step == 2:
            opt.launch_reduce_scatters()
            clip_global_grad_norm(opt, [other.grad], max_norm=1.0)
            for bank in banks:
                bank.grad = None
        opt.step()
    rows = {i: bank[k] for bank, idx in zip(banks, BANK_ROWS, strict=True) for k, i in enumerate(idx)}
    results["banks"] = {"params": [rows[i].detach().tolist() for i in range(len(SHAPES))],
                        "other_grad": other.grad.tolist()}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    end_gloo_worker()


@pytest.mark.slow  # two spawned processes: ~7-10 s on 2 shared cores
def test_two_rank_sharded_update_equals_one_rank_and_ranks_agree(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name in ("fp32", "bf16"):
        assert ranks[0][name] == ranks[1][name], f"{name}: ranks diverged"
    # one process, the rank-mean gradient, the same clip at step 3 computed here directly
    params = make_params()
    opt = ParallelMuon(params, lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.1, **F32)
    for step in range(3):
        mean = [(a + b) / 2 for a, b in zip(grads_for(step, 0), grads_for(step, 1), strict=True)]
        if step == 2:
            norm = torch.sqrt(sum(g.square().sum() for g in mean) + 5 * 2.0**2)
            factor = min(1.0, 1.0 / (float(norm) + 1e-6))
            mean = [g * factor for g in mean]
            assert ranks[0]["fp32"]["other_grad"] == pytest.approx([2.0 * factor] * 5, rel=1e-6)
            assert factor < 0.5  # the clip is active
        for p, g in zip(params, mean, strict=True):
            p.grad = g
        opt.step()
    for p, got in zip(params, ranks[0]["fp32"]["params"], strict=True):
        torch.testing.assert_close(torch.tensor(got), p.detach(), rtol=0, atol=1e-6)
    assert ranks[0]["banks"] == ranks[1]["banks"] and ranks[0]["banks"] == ranks[0]["fp32"]  # bitwise


@pytest.mark.slow
def test_pgolf_train_nproc_2_with_parallel_muon_matches_one_process(tiny_sets, tmp_path):
    """End to end: DDP skips the banked matrices (no double reduction); 2 ranks train like 1 (clip on)."""

    sets = [s for s in tiny_sets if not s.startswith(("core.out_dir", "core.grad_accum_steps"))]
    sets += [f"core.out_dir={tmp_path}", "core.val_max_tokens=2048", "core.grad_clip_norm=0.3",
             "parallel_muon.grad_dtype=float32", "parallel_muon.ns_dtype=float32"]
    args = ["--plugins", "parallel_muon", *(a for s in sets for a in ("--set", s))]
    out = train_on_1_and_2_processes(args, tmp_path)
    assert out[1]["val_loss"] == pytest.approx(out[2]["val_loss"], abs=2e-3)
    logged = re.search(r"parallel_muon:banks:(\d+) matrices:(\d+) params:(\d+) world_size:2 ddp_skips:(\d+)",
                       (tmp_path / "n2" / "train.log").read_text())
    # DDP reduces none of the optimizer's parameters (the banks: fewer than the matrices)
    assert logged and logged[3] == logged[4] and int(logged[1]) <= int(logged[3]) < int(logged[2])


@pytest.mark.parametrize("order", [("muon_eq_r", "polar_express", "parallel_muon"),
                                   ("parallel_muon", "polar_express", "muon_eq_r")])
def test_wraps_the_matrix_muon_of_the_enabled_plugins(tiny_sets, order):
    """With muon_eq_r and polar_express (PR #1855's stack), in any plugin order, the matrix group gets a
    ParallelMuon with their row normalisation, WD and coefficient schedule; the core's groups stay Adam."""
    from core.train import setup
    from tests.test_plugin_matrix import REGISTRY, tiny_config

    run = setup(tiny_config(tiny_sets, list(order)), REGISTRY, make_dir=False)
    banked = [o for o in run.optimizers if isinstance(o, ParallelMuon)]
    assert len(banked) == 1 and sum(isinstance(o, Muon) for o in run.optimizers) == 1
    opt = banked[0]
    group = opt.param_groups[0]
    assert opt.row_normalize and group["weight_decay"] == 0.095 and group["ns_coeffs"] == PE_COEFFS
    assert group["base_lr"] == run.core.matrix_lr
    matrices = default_param_groups(run.model)["matrix"]
    assert {id(p) for p in group["params"]} == {id(p) for p in matrices}
    assert sum(p.size(0) if p.ndim == 3 else 1 for p in matrices) >= 12  # banks (default) of the block matrices


# --- bank parameters in the model (parallel_muon.banks) ------------------------------------------------------
def _banked_run(tiny_sets, banks, plugins=("parallel_muon",), extra=()):
    from core.config import resolve
    from core.train import setup
    from tests.test_plugin_matrix import REGISTRY

    sets = [*tiny_sets, f"parallel_muon.banks={str(banks).lower()}", "parallel_muon.grad_dtype=float32",
            "parallel_muon.ns_dtype=float32", *extra]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=list(plugins), sets=sets,
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    return setup(cfg, REGISTRY, make_dir=False)


def _batch(run, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, run.core.vocab_size, (2, run.core.train_seq_len + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def _accumulate_grad_leaves(loss):
    """The leaf tensors autograd accumulates into for `loss` (benchmarks/bank_grads.py's walk of the graph)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bank_grads.py"
    spec = importlib.util.spec_from_file_location("bank_grads_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.accumulate_grad_leaves(loss)


def _train(run, steps):
    losses, (x, y) = [], _batch(run)
    for _ in range(steps):
        loss = run.train_model(x, y)
        loss.backward()
        for opt in run.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_banks_are_the_autograd_leaves_of_the_block_matrices(tiny_sets):
    """Banks on: the graph accumulates into one bank per matrix shape instead of every per-layer matrix; the
    per-layer weights stay in named_parameters (frozen aliases of their bank rows), the state_dict keeps
    exactly the per-layer keys, and the matrix group is the banks."""
    off, on = _banked_run(tiny_sets, False), _banked_run(tiny_sets, True)
    x, y = _batch(off)
    leaves_off, leaves_on = _accumulate_grad_leaves(off.model(x, y)), _accumulate_grad_leaves(on.model(x, y))
    banks = dict(on.model.param_banks.named_parameters())
    n_banked = sum(b.size(0) for b in banks.values())
    assert set(banks) == {"bank_64x64", "bank_32x64", "bank_128x64", "bank_64x128"}  # q/proj, k/v, fc, mlp proj
    assert n_banked == 6 * off.core.num_layers
    assert len(leaves_on) == len(leaves_off) - n_banked + len(banks)
    assert {id(p) for p in banks.values()} <= {id(t) for t in leaves_on}
    assert list(on.model.state_dict()) == list(off.model.state_dict())
    names_off = [n for n, _ in off.model.named_parameters()]
    assert [n for n, _ in on.model.named_parameters() if not n.startswith("param_banks.")] == names_off
    matrix = next(o for o in on.optimizers if isinstance(o, ParallelMuon)).param_groups[0]["params"]
    assert {id(p) for p in matrix} == {id(p) for p in banks.values()}


def test_banks_on_and_off_train_the_same_and_export_the_same_state(tiny_sets):
    """Same seed, fp32 banks: the same losses over 4 steps and the same state_dict (keys, values)."""
    off, on = _banked_run(tiny_sets, False), _banked_run(tiny_sets, True)
    for (k, a), (k2, b) in zip(off.model.state_dict().items(), on.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k  # the same init, bank or not
    losses_off, losses_on = _train(off, 4), _train(on, 4)
    assert losses_on == losses_off  # bitwise: the bank gradient is the stack of the per-layer ones
    assert losses_off[-1] < losses_off[0]
    sd_off, sd_on = off.model.state_dict(), on.model.state_dict()
    assert list(sd_on) == list(sd_off)
    for k in sd_off:
        assert torch.equal(sd_on[k], sd_off[k]), k
    moved = on.model.blocks[0].attn.c_q.weight
    assert torch.equal(sd_on["blocks.0.attn.c_q.weight"], moved.detach())


def test_banked_model_state_dict_round_trip_is_bit_exact(tiny_sets, tmp_path):
    """Save (per-layer keys) -> load into a freshly built banked model (another seed): the banks hold the
    loaded values, the aliases still share their storage, and the forward is bit-identical."""
    a = _banked_run(tiny_sets, True)
    _train(a, 2)
    torch.save(a.model.state_dict(), tmp_path / "sd.pt")
    b = _banked_run(tiny_sets, True, extra=["core.seed=7"])
    x, y = _batch(a, 5)
    assert not torch.equal(a.model(x, y), b.model(x, y))
    b.model.load_state_dict(torch.load(tmp_path / "sd.pt"))
    assert b.model.param_banks.aliased()
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k
    # role-major as the record's qo_bank: Q of layers 0, 1, then the out projections of layers 0, 1
    assert torch.equal(b.model.param_banks.bank_64x64[2], a.model.blocks[0].attn.proj.weight.detach())
    assert torch.equal(b.model.param_banks.bank_64x64[1], a.model.blocks[1].attn.c_q.weight.detach())
    assert torch.equal(a.model(x, y), b.model(x, y))


def test_banked_model_compiles_fullgraph_without_breaks(tiny_sets):
    run = _banked_run(tiny_sets, True)
    x, y = _batch(run)
    explain = torch._dynamo.explain(run.model)(x, y)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    _train(run, 1)  # the zero-init projections move: every bank gets a non-zero gradient below
    run.model(x, y).backward()
    banks = list(run.model.param_banks.parameters())
    eager = [b.grad.clone() for b in banks]
    run.model.zero_grad(set_to_none=True)
    torch.compile(run.model, fullgraph=True, backend="aot_eager")(x, y).backward()
    for b, e in zip(banks, eager, strict=True):
        assert e.abs().sum() > 0
        torch.testing.assert_close(b.grad, e, rtol=1e-4, atol=1e-6)
    assert all(m._parameters["weight"].grad is None for m in run.model.modules() if hasattr(m, "_pg_bank"))


def test_banks_setting_rejects_a_non_boolean(tiny_sets):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="parallel_muon.banks"):
        _banked_run(tiny_sets, "maybe")


@pytest.mark.slow  # two tiny runs with export + eval
def test_banks_on_and_off_give_the_same_artifact_through_qat_gptq_and_ema(tiny_sets, tmp_path):
    """pgolf's whole run (orthoinit, MuonEq-R + WD, late QAT switched on mid-run, EMA applied, GPTQ calibrated and
    written back, exported, reloaded, evaluated): banks on and off log the same parameter count, write the same
    artifact bytes and score the same bpb (bitwise: the banked gradient is the stack of the per-layer ones)."""
    from core.train import setup, train
    from tests.test_plugin_matrix import REGISTRY, settings_of, tiny_config

    plugins = ["orthoinit", "muon_eq_r", "weight_decay", "late_qat", "ema", "gptq", "parallel_muon"]
    sets = [s for p in plugins for s in settings_of(p)]
    out = {}
    for banks in (False, True):
        cfg = tiny_config(tiny_sets, plugins, [*sets, f"parallel_muon.banks={str(banks).lower()}",
                                               f"core.run_id=banks_{banks}", f"core.out_dir={tmp_path}"])
        run = setup(cfg, REGISTRY)
        assert isinstance(getattr(run.model, "param_banks", None), torch.nn.Module) == banks
        summary = train(run)
        log = (run.run_dir / "train.log").read_text()
        assert "late_qat:enabled step:" in log and "ema:applied" in log
        hessians = int(re.search(r"GPTQ:collected (\d+) Hessians", log)[1])
        assert hessians >= 6 * run.core.num_layers  # every block matrix, found by its per-layer name
        out[banks] = (summary["val_bpb"], (run.run_dir / "final_model.ptz").read_bytes(),
                      re.search(r"^model_params:(\d+)$", log, re.M)[1], hessians)
    assert out[True][2:] == out[False][2:]
    assert out[True][1] == out[False][1]
    assert out[True][0] == out[False][0]


def test_banks_refuse_score_first_ttt_with_frozen_blocks(tiny_sets):
    from core.config import ConfigError

    plugins = ("parallel_muon", "score_first_ttt")
    with pytest.raises(ConfigError, match="parallel_muon.banks: true with score_first_ttt.freeze_blocks"):
        _banked_run(tiny_sets, True, plugins, ["score_first_ttt.freeze_blocks=1"])
    _banked_run(tiny_sets, False, plugins, ["score_first_ttt.freeze_blocks=1"])
    _banked_run(tiny_sets, True, plugins)


def test_bf16_cast_keeps_fp32_banks_and_the_aliases(tiny_sets):
    """The core's CUDA dtype policy (bf16 body, fp32 CastedLinear): the banks stay fp32 master weights and every
    per-layer weight is still a view of its bank row, in the state_dict too."""
    from core.model import cast_for_training

    run = _banked_run(tiny_sets, True)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    model = cast_for_training(run.model, torch.device("cpu"), bf16=True)
    banks = model.param_banks
    assert all(b.dtype == torch.float32 for b in banks.parameters()) and banks.aliased()
    assert model.tok_emb.weight.dtype == torch.bfloat16
    sd = model.state_dict()
    assert sd["blocks.1.mlp.fc.weight"].dtype == torch.float32
    assert torch.equal(sd["blocks.1.mlp.fc.weight"], before["blocks.1.mlp.fc.weight"])
    with torch.no_grad():
        banks.bank_128x64[1].add_(1.0)  # the fc of layer 1 (role-major: fc of layers 0, 1)
    assert torch.equal(model.state_dict()["blocks.1.mlp.fc.weight"], before["blocks.1.mlp.fc.weight"] + 1.0)


def test_a_deepcopy_of_a_banked_model_keeps_its_own_aliases(tiny_sets):
    """TTT copies the model (plugins.lib.ttt): the copy's per-layer weights alias the copy's banks, not the
    original's, and its state_dict follows its own banks."""
    import copy

    run = _banked_run(tiny_sets, True)
    twin = copy.deepcopy(run.model)
    assert twin.param_banks.aliased() and twin.blocks[0].attn.c_q._pg_banks is twin.param_banks
    with torch.no_grad():
        twin.param_banks.bank_32x64.mul_(2.0)  # c_k and c_v of both layers
    key = "blocks.1.attn.c_v.weight"
    assert torch.equal(twin.state_dict()[key], 2 * run.model.state_dict()[key])
