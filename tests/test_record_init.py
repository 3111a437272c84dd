"""recipes/pr534.toml and pr609.toml start from their record's very weights: built with the same seed, the
record's own GPT (its PR head's train_gpt.py, from the parameter-golf mirror) and pgolf's model hold equal
tensors — the modules draw their random numbers in the record's order (PR #534: the VE table and its
nn.Linear projection before the blocks; PR #609: no draw for the banked blocks, the VE module after them,
block matrices drawn first by `orthoinit.banked`). Step 1's loss is then the record's, not another seed's.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from record_module import exec_record
from record_tables import record_source

from core.config import resolve
from core.registry import Registry
from core.run import create_run
from core.train import CoreDefaults, build_model, make_optimizers
from pgolf.records import PROFILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRY = Registry()
L = 3
SHAPE = ["core.vocab_size=128", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2", f"core.num_layers={L}",
         "value_embeddings.layers=1,2", "value_embeddings.dim=16", "partial_rope.dims=8"]


def pgolf_model(name: str, sets: list[str]):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=os.path.join(ROOT, "recipes", f"{name}.toml"),
                  sets=[*SHAPE, *sets, "core.device=cpu", "core.compile=false"], check_plugins=REGISTRY.check)
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    torch.manual_seed(1337)
    return build_model(run)


def assert_same(record: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    for name, tensor in record.items():
        assert name in ours, name
        got = ours[name].reshape(tensor.shape)
        assert torch.equal(got, tensor), f"{name}: differs by {(got - tensor).abs().max():.3g}"


def test_pr534_initial_weights_are_the_records(monkeypatch):
    env = dict(VOCAB_SIZE="128", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS=str(L), VE_LAYERS="1,2",
               VE_DIM="16", ROPE_DIMS="8", XSA_LAST_N="4", MLP_HIDDEN="176", VE_ENABLED="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mod = exec_record(record_source(PROFILES["pr534"]), "pr534_train_gpt")
    torch.manual_seed(1337)
    rec = mod.GPT(mod.Hyperparameters())
    ours = pgolf_model("pr534", ["core.mlp_hidden=176", "xsa.last_n=3"]).state_dict()
    names = {"smear_gate.gate_weight": "embed_mix_post.0.smear_gate"}
    state = {names.get(k, k.replace("ve.", "ve_shared.", 1) if k.startswith("ve.") else k): v
             for k, v in rec.state_dict().items() if not k.startswith("ve_scales.")}
    assert "ve_shared.proj.weight" in state and state["ve_shared.embed.weight"].std() > 0.5  # N(0, 1), never re-drawn
    assert_same(state, ours)


def test_pr534_dtypes_are_the_records_on_cuda(monkeypatch):
    """Under the CUDA dtype policy (the record's `.bfloat16()`, fp32 CastedLinear, `restore_low_dim_params_to_fp32`;
    pgolf's `cast_for_training`) every record parameter has pgolf's dtype: its (1, 1, d) SmearGate escapes the fp32
    restore and trains in bf16 (`smeargate.gate_dtype = "body"`), the VE table is bf16, the projection fp32."""
    from core.model import cast_for_training

    env = dict(VOCAB_SIZE="128", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS=str(L), VE_LAYERS="1,2",
               VE_DIM="16", ROPE_DIMS="8", XSA_LAST_N="4", MLP_HIDDEN="176", VE_ENABLED="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mod = exec_record(record_source(PROFILES["pr534"]), "pr534_train_gpt")
    rec = mod.GPT(mod.Hyperparameters()).bfloat16()
    for m in rec.modules():
        if isinstance(m, mod.CastedLinear):
            m.float()
    mod.restore_low_dim_params_to_fp32(rec)
    sets = ["core.mlp_hidden=176", "xsa.last_n=3", "value_embeddings.frozen=true"]
    ours = {n: p.dtype for n, p in cast_for_training(pgolf_model("pr534", sets), torch.device("cpu"), bf16=True)
                                           .named_parameters()}
    names = {"smear_gate.gate_weight": "embed_mix_post.0.smear_gate", "ve_scales.1": "blocks.1.attn.value_parts.0."
             "ve_layer_scale", "ve_scales.2": "blocks.2.attn.value_parts.0.ve_layer_scale"}
    got = {n: ours[names.get(n, n.replace("ve.", "ve_shared.", 1) if n.startswith("ve.") else n)]
           for n, _ in rec.named_parameters() if n not in ("ve_scales.0",)}
    want = {n: p.dtype for n, p in rec.named_parameters() if n != "ve_scales.0"}
    assert got == want
    assert want["smear_gate.gate_weight"] == torch.bfloat16 and want["ve.proj.weight"] == torch.float32


def test_pr609_initial_weights_are_the_records():
    mod = exec_record(record_source(PROFILES["pr609"]), "pr609_train_gpt")
    torch.manual_seed(1337)
    rec = mod.GPT(vocab_size=128, num_layers=L, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=3,
                  tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0, rope_base=10000.0,
                  qk_gain_init=1.5, bigram_vocab_size=64, bigram_dim=64, xsa_last_n=L, rope_dims=8, ln_scale=True,
                  ve_enabled=True, ve_dim=128, ve_layers="1,2")
    sets = ["core.model_dim=128", "bigram_hash.buckets=64", "bigram_hash.dim=64", f"xsa.last_n={L}",
            "value_embeddings.dim=128"]  # the record's >= 64 rule draws both projections (128 × 64, 64 × 128)
    ours = pgolf_model("pr609", sets).state_dict()
    state = {k: v for k, v in rec.state_dict().items() if not k.endswith("_bank") and not k.startswith("ve_layer")}
    assert "ve_shared.proj.weight" in state  # VE width 128 against a KV width of 64
    state = {("embed_add.0." + k[7:] if k.startswith("bigram.") else k): v for k, v in state.items()}
    state.pop("smear.gate")
    bank = rec.state_dict()
    for i in range(L):  # the banks' slices are the per-layer matrices
        b = f"blocks.{i}."
        state |= {b + "attn.c_q.weight": bank["qo_bank"][i], b + "attn.proj.weight": bank["qo_bank"][L + i],
                  b + "attn.c_k.weight": bank["kv_bank"][i], b + "attn.c_v.weight": bank["kv_bank"][L + i],
                  b + "mlp.fc.weight": bank["mlp_up_bank"][i], b + "mlp.proj.weight": bank["mlp_down_bank"][i]}
    assert state["ve_shared.proj.weight"].abs().sum() > 0 and state["embed_add.0.proj.weight"].abs().sum() > 0
    assert_same(state, ours)


@pytest.mark.parametrize("name, sets", [("pr609", ["orthoinit.banked=false"]),
                                        ("pr534", ["value_embeddings.build_at=after_blocks"])])
def test_the_order_settings_are_what_makes_them_equal(name, sets):
    base = pgolf_model(name, []).state_dict()
    other = pgolf_model(name, sets).state_dict()
    assert not torch.equal(base["blocks.0.attn.c_q.weight"], other["blocks.0.attn.c_q.weight"])


PR1855_SHAPE = ["core.vocab_size=128", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2",
                "core.num_layers=6", "partial_rope.dims=8", "depth_recurrence.loop_start=1",
                "depth_recurrence.loop_end=2", "parallel_lanes.start=4", "xsa.last_n=6", "core.train_seq_len=256",
                "core.device=cpu", "core.compile=false"]


def layer_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Per-layer named parameters (parallel_muon's banks left out: the per-layer weights alias their rows)."""
    return {n: p for n, p in model.named_parameters() if not n.startswith("param_banks.")}


def layer_grad(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The gradient of per-layer parameter `name`: a banked weight's is its row of the bank's gradient."""
    module = model.get_submodule(name.rpartition(".")[0])
    if name.endswith(".weight") and hasattr(module, "_pg_bank"):
        return getattr(module._pg_banks, module._pg_bank).grad[module._pg_index]
    return model.get_parameter(name).grad


def pr1855_pair(monkeypatch, sets: list[str] = ()):
    """(the record's module, its GPT, pgolf's model, the record name of each pgolf tensor) at PR1855_SHAPE, both
    built from seed 1337: the record configured by the bench's env table from the recipe."""
    from pgolf.records import core_env

    profile = PROFILES["pr1855"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=os.path.join(ROOT, profile.recipe),
                  sets=[*PR1855_SHAPE, *sets], check_plugins=REGISTRY.check)
    for k, v in {**core_env(cfg, cfg.core.train_seq_len), **profile.env(cfg, True)}.items():
        monkeypatch.setenv(k, v)
    mod = exec_record(record_source(profile), "pr1855_train_gpt")
    torch.manual_seed(1337)
    rec = mod.GPT(mod.Hyperparameters())
    torch.manual_seed(1337)
    run = create_run(cfg, REGISTRY, CoreDefaults(), make_dir=False)
    ours = run.model = build_model(run)
    n, start = cfg.core.num_layers, cfg.plugin_configs["parallel_lanes"].start
    names = {"tok_emb.weight": "tok_emb.weight", "skip_weights": "skip_weights", "skip_merge.skip_gates": "skip_gates",
             "embed_mix_pre.0.smear_lambda": "smear_lambda", "embed_mix_pre.0.smear_proj": "smear_gate.weight"}
    banks = {"qo_bank": ("attn.c_q.weight", "attn.proj.weight"), "kv_bank": ("attn.c_k.weight", "attn.c_v.weight"),
             "mlp_up_bank": ("mlp.fc.weight",), "mlp_down_bank": ("mlp.proj.weight",)}
    for i in range(n):
        b = f"blocks.{i}."
        names |= {b + name: (bank, j * n + i) for bank, parts in banks.items() for j, name in enumerate(parts)}
        names |= {b + name: b + name for name in ("attn_scale", "mlp_scale", "resid_mix", "attn.q_gain")}
        names[b + "attn.out_parts.1.attn_gate_w"] = b + "attn.attn_gate_w"
        if i >= start:
            names[b + "residual.parallel_post_lambdas"] = ("parallel_post_lambdas", i)
            names[b + "residual.parallel_resid_lambdas"] = ("parallel_resid_lambdas", i)
    return mod, rec, ours, names, run


def record_tensor(rec_params: dict[str, torch.Tensor], name) -> torch.Tensor:
    return rec_params[name[0]][name[1]] if isinstance(name, tuple) else rec_params[name]


def test_pr1855_initial_weights_are_the_records_less_its_dead_lane_lambdas(monkeypatch):
    """PR #1855's GPT, configured by the bench's table from the recipe at a reduced shape, against pgolf's model
    from the same seed: every pgolf tensor equals (bitwise) its record tensor (banks by layer slice), and the only
    record parameters pgolf lacks are the parallel-lane lambda rows of blocks before PARALLEL_START_LAYER (never
    read by its forward): the count its profile's `dead_params` gives the bench (48 at the full shape). Equal
    because the record's generator is advanced as there: its SmearGate nn.Linear(12, 1) draws (then zeroed), its
    banks draw nothing when built, then Q, K, V of every layer and then every MLP up (orthoinit.bank_order)."""
    _, rec, ours, names, run = pr1855_pair(monkeypatch)
    cfg = run.config
    rec_params = dict(rec.named_parameters())
    ours = layer_params(ours)
    assert set(ours) == set(names)
    for name, ref in names.items():
        want = record_tensor(rec_params, ref)
        assert ours[name].shape == want.shape, name
        assert torch.equal(ours[name], want), f"{name}: differs by {(ours[name] - want).abs().max():.3g}"
    assert ours["blocks.0.attn.c_q.weight"].std() > 0.05 and ours["blocks.0.mlp.fc.weight"].std() > 0.05
    start = cfg.plugin_configs["parallel_lanes"].start
    dead = rec_params["parallel_post_lambdas"][:start].numel() + rec_params["parallel_resid_lambdas"][:start].numel()
    n_rec, n_ours = sum(p.numel() for p in rec_params.values()), sum(p.numel() for p in ours.values())
    assert n_rec - n_ours == dead == PROFILES["pr1855"].dead_params(cfg)[0] == 6 * start


@pytest.mark.parametrize("sets", [[], ["orthoinit.bank_order=layer"], ["orthoinit.banked=false"]])
def test_pr1855_draw_order_settings_are_what_makes_them_equal(monkeypatch, sets):
    _, rec, ours, names, _ = pr1855_pair(monkeypatch, sets)
    rec_params = dict(rec.named_parameters())
    same = torch.equal(layer_params(ours)["blocks.1.mlp.fc.weight"],
                       record_tensor(rec_params, names["blocks.1.mlp.fc.weight"]))
    assert same == (not sets)


@pytest.mark.parametrize("ntk", [None, "partial_rope.ntk_train_seq_len=256"])
def test_pr1855_training_loss_is_the_records(monkeypatch, ntk):
    """The loss of one doc-packed flat row (2,304 tokens, documents at BOS, segments of at most train_seq_len): the
    record's with cu_seqlens from its `_build_cu_seqlens`, pgolf's with doc_ids/cu_seqlens from doc_packing, equal in
    fp32 on CPU (to the rounding of the mean: fused_ce sums in chunks), with and without depth recurrence, both
    models holding the same perturbed weights (at init every block's output is zero: only the embedding would be
    compared). The record's rotary has no NTK rescale (ROPE_YARN 0), so the recipe's
    `partial_rope.ntk_train_seq_len` is 0; 2048 (the old value) or 256 rescales any longer row: another loss."""
    from core.train import set_modes
    from plugins.doc_packing import pack_boundaries, segment_starts

    mod, rec, ours, names, run = pr1855_pair(monkeypatch, [ntk] if ntk else [])
    mod.BOS_ID = 1  # set by the record's loader
    rec.fused_ce_enabled = False  # Triton; its eager path is the same softcapped CE
    for block in rec.blocks:
        block.mlp.use_fused = False
    gen = torch.Generator().manual_seed(0)
    rec_params = dict(rec.named_parameters())
    with torch.no_grad():
        for name, p in layer_params(ours).items():
            p.add_(torch.randn(p.shape, generator=gen) * (0.05 if p.ndim >= 2 else 0.2))
            record_tensor(rec_params, names[name]).copy_(p)
    n, seq = 2304, run.core.train_seq_len  # longer than the GPU recipe's 2048 too
    tokens = torch.randint(2, run.core.vocab_size, (n + 1,), generator=gen)
    tokens[torch.tensor([5, 40, 700, 1500, 1530])] = 1
    x, y = tokens[:-1][None], tokens[1:][None]
    starts = (x[0] == 1).nonzero()[:, 0].tolist()
    rec_cu, _ = mod._build_cu_seqlens(starts, n, "cpu", seq, 64)
    doc_ids, cu = pack_boundaries(segment_starts(starts, n, seq), n, 64)
    assert torch.equal(cu, rec_cu)
    for looping in (False, True):
        rec.looping_active = looping
        set_modes(run, ("recurrence",) if looping else ())
        assert ours.schedule.looping == looping
        want = rec(x, y, cu_seqlens=rec_cu, max_seqlen=seq)
        got = ours(x, y, doc_ids=doc_ids[None], cu_seqlens=cu)
        assert (abs(got.item() - want.item()) < 2e-6) == (ntk is None), (looping, got.item(), want.item())


def test_pr1855_batches_are_the_records(tmp_path):
    """doc_packing's batches against the record's own DocumentPackingLoader (prefetch threads and all, pinned
    memory off on CPU) over three shards of BOS-led documents, 1 rank of 8 micro-steps: x, y and cu_seqlens equal
    call by call for 40 calls, across shard changes (the tail that does not fit is skipped) and the wrap to the
    first shard. Both warm-ups read their own loader, so step 1 reads each side's first batch."""
    from types import SimpleNamespace

    from dataprep.build import write_shard
    from plugins.doc_packing import DocumentPackingLoader

    rng = np.random.default_rng(0)
    for i, size in enumerate((9000, 6000, 7500)):
        tokens = rng.integers(2, 128, size)
        tokens[0] = 5  # the cursor starts at the first BOS
        tokens[np.sort(rng.choice(np.arange(3, size), size // 300, replace=False))] = 1
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", tokens)
    src = record_source(PROFILES["pr1855"]).replace("pin_memory=True", "pin_memory=False")
    mod = exec_record(src.replace(".pin_memory()", ""), "pr1855_train_gpt")
    h = SimpleNamespace(rank=0, world_size=1, train_seq_len=256, train_files=str(tmp_path / "fineweb_train_*.bin"))
    rec = mod.DocumentPackingLoader(h, torch.device("cpu"))
    ours = DocumentPackingLoader(sorted(tmp_path.glob("fineweb_train_*.bin")), 0, 1, torch.device("cpu"), bos_id=1,
                                 vocab_size=128)
    shards = []
    for _ in range(40):
        x, y, cu, _ = rec.next_batch(8 * 1024, 8)
        ox, oy, doc_ids, ocu = ours.next_batch(8 * 1024, 256, 8)
        assert torch.equal(ox, x) and torch.equal(oy, y) and torch.equal(ocu, cu)
        assert doc_ids.max() + 1 == int((cu < x.size(1)).sum())
        shards.append(ours.file_idx)
    assert shards[0] == 0 and {1, 2} <= set(shards) and 0 in shards[shards.index(2):]


def test_pr1855_optimizer_steps_are_the_records(monkeypatch):
    """Three training steps of the record's `Optimizers` (token/scalar AdamW, banked Muon: bf16 momentum, MuonEq-R
    rows, Polar Express NS eager as on CPU, WD, the momentum warm-up, clip 0.3) against pgolf's optimizers, both
    fed the record's gradients of one doc-packed row per step: every parameter equal bitwise after each step."""
    from core.optim import Muon
    from plugins.doc_packing import pack_boundaries, segment_starts

    mod, rec, ours, names, run = pr1855_pair(monkeypatch)
    ns = mod.zeropower_via_newtonschulz5
    monkeypatch.setattr(mod, "zeropower_via_newtonschulz5", getattr(ns, "_torchdynamo_orig_callable", ns))
    mod.BOS_ID = 1
    rec.fused_ce_enabled = False
    for block in rec.blocks:
        block.mlp.use_fused = False
    h = mod.Hyperparameters()
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: None)  # its aux stream, unused on CPU
    rec_opts = mod.Optimizers(h, rec)
    for opt in (rec_opts.optimizer_tok, rec_opts.optimizer_scalar):
        opt.param_groups[0]["fused"] = False
    run.optimizers = make_optimizers(run, ours)
    rec_params, our_params = dict(rec.named_parameters()), layer_params(ours)
    gen = torch.Generator().manual_seed(0)
    n, seq = 1024, run.core.train_seq_len
    for step in range(3):
        tokens = torch.randint(2, run.core.vocab_size, (n + 1,), generator=gen)
        tokens[torch.randint(0, n, (6,), generator=gen)] = 1
        x, y = tokens[:-1][None], tokens[1:][None]
        starts = (x[0] == 1).nonzero()[:, 0].tolist()
        rec(x, y, cu_seqlens=mod._build_cu_seqlens(starts, n, "cpu", seq, 64)[0], max_seqlen=seq).backward()
        doc_ids, cu = pack_boundaries(segment_starts(starts, n, seq), n, 64)
        ours(x, y, doc_ids=doc_ids[None], cu_seqlens=cu).backward()
        frac = min(step / h.muon_momentum_warmup_steps, 1.0)  # the record's step_fn schedule, lr_scale 1
        momentum = (1 - frac) * h.muon_momentum_warmup_start + frac * h.muon_momentum
        for o in (*rec_opts.optimizers, *run.optimizers):
            for group in o.param_groups:
                group["lr"] = group["base_lr"]
                if isinstance(o, (Muon, mod.Muon)):
                    group["momentum"] = momentum
        norm = torch.nn.utils.clip_grad_norm_([p for p in rec.parameters() if p.requires_grad], h.grad_clip_norm)
        clip = min(1.0, h.grad_clip_norm / (float(norm) + 1e-6))
        for name, p in our_params.items():  # then the record's clipped gradients, to compare the optimizers alone
            ref = names[name]  # (pgolf's clip sums the norm over per-layer tensors: an ulp apart when it clips)
            grad = rec_params[ref[0]].grad[ref[1]] if isinstance(ref, tuple) else rec_params[ref].grad
            ours_grad = layer_grad(ours, name)
            assert (ours_grad * clip - grad).abs().max() < 1e-6, name
            if ours_grad is p.grad:
                p.grad = grad.clone()
            else:  # a row of a parallel_muon bank's gradient
                ours_grad.copy_(grad)
        for opt in (rec_opts.optimizer_tok, rec_opts.optimizer_scalar, rec_opts.optimizer_muon, *run.optimizers):
            opt.step()
            opt.zero_grad(set_to_none=True)
        for name, p in our_params.items():
            want = record_tensor(rec_params, names[name])
            assert torch.equal(p, want), f"step {step + 1} {name}: differs by {(p - want).abs().max():.3g}"


def test_orthoinit_bank_order_names_the_bad_value():
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=r"orthoinit.bank_order: expected layer or attn_first, got 'qkv'"):
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["orthoinit"],
                sets=["orthoinit.banked=true", "orthoinit.bank_order=qkv"], check_plugins=REGISTRY.check,
                check_settings=REGISTRY.check_settings)
