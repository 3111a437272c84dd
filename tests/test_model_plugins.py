"""Forward-changing technique plugins of issue #15 (value_embeddings, parallel_lanes, the attention gates,
quant_gate, trigram_hash, overtone_init, mlp_hidden): each against an independent computation written out
here from the record's code, each live in the compiled model (fullgraph, zero graph breaks, output differs
from the plugin-off model), and bad settings as one-line configuration errors naming the field."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from model_builders import build_tiny, randomize

from core.config import ConfigError, resolve
from core.optim import default_param_groups
from core.registry import Registry
from core.train import make_optimizers

REGISTRY = Registry()
TINY = ["core.vocab_size=96", "core.num_layers=4", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2",
        "core.device=cpu", "core.compile=false"]


def build(plugins: list[str], sets=(), seed: int = 0):
    return build_tiny(REGISTRY, TINY, plugins, sets, seed)



def ids(b: int = 2, t: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (b, t), generator=torch.Generator().manual_seed(seed))


def assert_live_when_compiled(plugins: list[str], sets=()) -> None:
    """The plugin's model under torch.compile(fullgraph=True): zero graph breaks, the eager output, and not
    the output of the plugin-off model with the same shared weights."""
    torch._dynamo.reset()
    _, model = build(plugins, sets)
    randomize(model)
    _, plain = build([], [s for s in sets if s.startswith("core.")])
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()}, strict=False)
    x = ids()
    y = torch.roll(x, -1, 1)
    for args in ((x, y), (x,)):
        exp = torch._dynamo.explain(model)(*args)
        assert exp.graph_break_count == 0, exp.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
        assert (out - plain(x)).abs().max() > 1e-3, f"{plugins} changed nothing in the compiled model"


def config_error(plugins: list[str], sets: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=[*TINY, *sets],
                check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    return err.value


def reference_attention(attn, x: torch.Tensor, v: torch.Tensor, heads: int = 4, kv: int = 2) -> torch.Tensor:
    """The baseline attention of `attn` on x, with the values v (B, T, Hkv·D) given, written out by hand;
    returns the pre-projection output y (B, T, H, D)."""
    from core.model import apply_rotary_emb

    b, t, dim = x.shape
    d = dim // heads
    q = F.rms_norm(attn.c_q(x).reshape(b, t, heads, d), (d,))
    k = F.rms_norm(attn.c_k(x).reshape(b, t, kv, d), (d,))
    cos, sin = attn.rotary(t, x.device, q.dtype)  # (1, T, 1, D/2)
    q = (apply_rotary_emb(q, cos, sin) * attn.q_gain[None, None, :, None]).transpose(1, 2)
    k = apply_rotary_emb(k, cos, sin).transpose(1, 2).repeat_interleave(heads // kv, dim=1)
    vv = v.reshape(b, t, kv, d).transpose(1, 2).repeat_interleave(heads // kv, dim=1)
    return F.scaled_dot_product_attention(q, k, vv, is_causal=True).transpose(1, 2)


# --- value_embeddings ----------------------------------------------------------------------------------------
def test_value_embeddings_add_the_shared_projected_table_to_the_chosen_layers_values():
    _, model = build(["value_embeddings"], ["value_embeddings.layers=2,3", "value_embeddings.dim=16"])
    randomize(model)
    ve = model.ve_shared
    assert ve.embed.weight.shape == (96, 16) and ve.proj.weight.shape == (32, 16)  # kv width = 2 heads × 16
    assert [len(b.attn.value_parts) for b in model.blocks] == [0, 0, 1, 1]
    tok = ids()
    x = torch.randn(2, 16, 64)
    base = ve.proj(ve.embed(tok)) * ve.scale  # the record's ValueEmbedding.forward
    for i in (2, 3):
        attn = model.blocks[i].attn
        v = attn.c_v(x) + base * attn.value_parts[0].ve_layer_scale
        expect = attn.proj(reference_attention(attn, x, v).reshape(2, 16, 64))
        torch.testing.assert_close(attn(x, {"input_ids": tok}), expect, rtol=1e-5, atol=1e-5)
    plain = model.blocks[1].attn
    torch.testing.assert_close(plain(x, {"input_ids": tok}),
                               plain.proj(reference_attention(plain, x, plain.c_v(x)).reshape(2, 16, 64)))


def test_value_embeddings_init_and_optimizer_groups_are_the_records():
    _, model = build(["value_embeddings", "orthoinit"], ["value_embeddings.layers=3", "value_embeddings.dim=16",
                                                         "orthoinit.min_dim=16"])
    ve = model.ve_shared
    assert ve.embed.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert ve.scale.item() == pytest.approx(0.1) and model.blocks[3].attn.value_parts[0].ve_layer_scale.item() == 1
    w = ve.proj.weight * math.sqrt(2 * 4)  # orthogonal × 1/sqrt(2L): the record's GPT init of a `.proj`
    torch.testing.assert_close(w.T @ w, torch.eye(16), atol=1e-5, rtol=0)
    groups = {g: {id(p) for p in ps} for g, ps in default_param_groups(model).items()}
    assert id(ve.embed.weight) in groups["token"] and id(ve.proj.weight) in groups["matrix"]
    assert {id(ve.scale), id(model.blocks[3].attn.value_parts[0].ve_layer_scale)} <= groups["scalar"]
    names = [n for n, _ in model.named_parameters()]
    assert names.count("ve_shared.embed.weight") == 1 and "ve_shared.proj.weight" in names


def test_projection_group_scalar_is_the_bank_records_adam():
    """proj_group = "scalar" (PR #609: Muon takes only the banks): both projections train with the scalar Adam."""
    sets = ["value_embeddings.layers=3", "value_embeddings.dim=16", "bigram_hash.buckets=32", "bigram_hash.dim=16"]
    for group, other in (("matrix", "scalar"), ("scalar", "matrix")):
        _, model = build(["value_embeddings", "bigram_hash"], [*sets, f"value_embeddings.proj_group={group}",
                                                                f"bigram_hash.proj_group={group}"])
        groups = {g: {id(p) for p in ps} for g, ps in default_param_groups(model).items()}
        projs = {id(model.ve_shared.proj.weight), id(model.embed_add[0].proj.weight)}
        assert projs <= groups[group] and not projs & groups.get(other, set())


def test_value_embeddings_live_when_compiled():
    assert_live_when_compiled(["value_embeddings"], ["value_embeddings.layers=1,3", "value_embeddings.dim=16"])


def test_value_embeddings_frozen_is_pr534s_layout():
    """frozen: no shared scale, per-layer scales at scale_init, table and projection fixed and in no group."""
    _, model = build(["value_embeddings"], ["value_embeddings.layers=2,3", "value_embeddings.dim=16",
                                            "value_embeddings.frozen=true", "value_embeddings.scale_init=0.25"])
    ve = model.ve_shared
    assert ve.scale is None and [p.item() for b in model.blocks[2:] for p in b.attn.value_parts[0].parameters()] \
        == [0.25, 0.25]
    assert not ve.embed.weight.requires_grad and not ve.proj.weight.requires_grad
    grouped = {id(p) for ps in default_param_groups(model).values() for p in ps}
    assert id(ve.embed.weight) not in grouped and id(ve.proj.weight) not in grouped
    assert {"ve_shared.embed.weight", "ve_shared.proj.weight"} <= set(model.state_dict())  # still exported
    randomize(model)
    tok, x = ids(), torch.randn(2, 16, 64)
    attn = model.blocks[3].attn
    ve_i = F.linear(F.embedding(tok, ve.embed.weight), ve.proj.weight) * attn.value_parts[0].ve_layer_scale  # #534
    expect = attn.proj(reference_attention(attn, x, attn.c_v(x) + ve_i).reshape(2, 16, 64))
    torch.testing.assert_close(attn(x, {"input_ids": tok}), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frozen, frozen_grads", [(False, "none"), (True, "none"), (True, "accumulate")])
def test_value_embeddings_frozen_keeps_the_table_fixed_in_compiled_training(frozen, frozen_grads):
    """frozen: table and projection never move; with frozen_grads=accumulate (PR #534) they still get gradients,
    which no optimizer zeroes: the third step's gradient is the sum of three steps' (here, with no clipping)."""
    torch._dynamo.reset()
    run, model = build(["value_embeddings"], ["value_embeddings.layers=1,3", "value_embeddings.dim=16",
                                              f"value_embeddings.frozen={str(frozen).lower()}",
                                              f"value_embeddings.frozen_grads={frozen_grads}"])
    ve = model.ve_shared
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    opts = make_optimizers(run, model)
    assert not any(p is ve.embed.weight or p is ve.proj.weight for o in opts for g in o.param_groups
                   for p in g["params"]) or not frozen
    x = ids()
    step_grads = []
    for _ in range(3):
        before_step = None if ve.proj.weight.grad is None else ve.proj.weight.grad.clone()
        compiled(x, torch.roll(x, -1, 1)).backward()
        if ve.proj.weight.grad is not None:
            step_grads.append(ve.proj.weight.grad - (0 if before_step is None else before_step))
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert ("ve_shared.embed.weight" in moved) is not frozen and ("ve_shared.proj.weight" in moved) is not frozen
    assert "blocks.3.attn.value_parts.0.ve_layer_scale" in moved  # the per-layer scale trains either way
    if frozen_grads == "accumulate":  # step 1's is zero (the attention output projections start at zero)
        assert ve.embed.weight.requires_grad and len(step_grads) == 3 and step_grads[1].abs().sum() > 0
        assert step_grads[2].abs().sum() > 0
        torch.testing.assert_close(ve.proj.weight.grad, sum(step_grads))  # never zeroed
    elif frozen:
        assert ve.embed.weight.grad is None and ve.proj.weight.grad is None and not step_grads
    else:  # trained: its optimizer zeroes the gradients
        assert ve.proj.weight.grad is None and len(step_grads) == 3


@pytest.mark.parametrize("sets, field", [(["value_embeddings.layers=2,9"], "value_embeddings.layers=2,9"),
                                         (["value_embeddings.layers=a"], "value_embeddings.layers"),
                                         (["value_embeddings.dim=0"], "value_embeddings.dim"),
                                         (["value_embeddings.build_at=middle"], "value_embeddings.build_at"),
                                         (["value_embeddings.proj_init=xavier"], "value_embeddings.proj_init"),
                                         (["value_embeddings.proj_group=adam"], "value_embeddings.proj_group"),
                                         (["value_embeddings.frozen=true", "value_embeddings.frozen_grads=keep"],
                                          "value_embeddings.frozen_grads: expected one of none, accumulate"),
                                         (["value_embeddings.frozen_grads=accumulate"],
                                          "value_embeddings.frozen_grads: applies to frozen = true only")])
def test_value_embeddings_bad_settings(sets, field):
    err = config_error(["value_embeddings"], sets)
    assert len(err.errors) == 1 and field in err.errors[0]


# --- attention head gates ------------------------------------------------------------------------------------
def gated_reference(attn, x: torch.Tensor, gate) -> torch.Tensor:
    y = reference_attention(attn, x, attn.c_v(x))
    return attn.proj((y * gate(x)[..., None]).reshape(x.shape))


@pytest.mark.parametrize("plugin, sets, gate", [
    ("gated_attn", [], lambda p, x: torch.sigmoid(x @ p.attn_gate_w.T)),
    ("sparse_attn_gate", ["sparse_attn_gate.window=12", "sparse_attn_gate.scale=0.5"],
     lambda p, x: torch.sigmoid(0.5 * (x[..., :12] @ p.attn_gate_w.T))),
    ("attn_output_gate", ["attn_output_gate.window=12"],
     lambda p, x: 2 * torch.sigmoid(x[..., :12] @ p.attn_gate_proj.weight.T)),
])
def test_head_gates_are_the_records_formulas(plugin, sets, gate):
    _, model = build([plugin], sets)
    randomize(model)
    x = torch.randn(2, 16, 64)
    for block in model.blocks:
        attn = block.attn
        (part,) = attn.out_parts
        expect = gated_reference(attn, x, functools.partial(gate, part))
        torch.testing.assert_close(attn(x, {"input_ids": ids()}), expect, rtol=1e-5, atol=1e-5)


def test_head_gates_init_as_the_records():
    _, dense = build(["gated_attn"])
    w = torch.cat([b.attn.out_parts[0].attn_gate_w.flatten() for b in dense.blocks])
    assert w.shape == (4 * 4 * 64,) and w.std().item() == pytest.approx(0.005, rel=0.1)
    _, sparse = build(["sparse_attn_gate"])
    assert sparse.blocks[0].attn.out_parts[0].attn_gate_w.shape == (4, 12)
    _, out = build(["attn_output_gate", "orthoinit"], ["orthoinit.min_dim=1"])
    for b in (*sparse.blocks, *out.blocks):
        assert not any(p.any() for p in b.attn.out_parts.parameters())  # zero: g = 0.5 (sparse), 1 (output)
    groups = {id(p) for p in default_param_groups(out)["scalar"]}
    assert all(id(b.attn.out_parts[0].attn_gate_proj.weight) in groups for b in out.blocks)


@pytest.mark.parametrize("plugin", ["gated_attn", "sparse_attn_gate", "attn_output_gate"])
def test_head_gates_live_when_compiled(plugin):
    assert_live_when_compiled([plugin, "xsa"], ["xsa.last_n=2"])


@pytest.mark.parametrize("pair", [("gated_attn", "sparse_attn_gate"), ("attn_output_gate", "gated_attn"),
                                  ("sparse_attn_gate", "attn_output_gate")])
def test_head_gates_are_mutually_exclusive(pair):
    err = config_error(list(pair), [])
    assert len(err.errors) == 1 and all(p in err.errors[0] for p in pair) and "attn_head_gate" in err.errors[0]


@pytest.mark.parametrize("sets, field", [(["sparse_attn_gate.window=0"], "sparse_attn_gate.window"),
                                         (["sparse_attn_gate.window=65"], "sparse_attn_gate.window=65"),
                                         (["sparse_attn_gate.init_std=-1"], "sparse_attn_gate.init_std")])
def test_sparse_gate_bad_settings(sets, field):
    err = config_error(["sparse_attn_gate"], sets)
    assert len(err.errors) == 1 and field in err.errors[0]


# --- quant_gate ------------------------------------------------------------------------------------------------
def test_quant_gate_is_int8_rows_of_the_gate_before_the_runs_quantizer():
    from core import export as ex

    run, model = build(["sparse_attn_gate", "quant_gate", "quant_mixed"])
    w = torch.randn(4, 12, generator=torch.Generator().manual_seed(3))
    name = "blocks.1.attn.out_parts.0.attn_gate_w"
    q = run.hook.pg_quantize_tensor(name=name, tensor=w, config=run.config)
    scale = (w.abs().max(dim=1).values / 127).half()  # the record's _quantize_gate_int8_row
    codes = (w / scale.float()[:, None]).round().clamp(-127, 127)
    assert q.scheme == "int8_per_row" and q.data.dtype == torch.int8 and q.scale.dtype == torch.float16
    torch.testing.assert_close(q.scale, scale, rtol=0, atol=0)
    torch.testing.assert_close(q.data.float(), codes, rtol=0, atol=0)
    back = q.dequantize(run.schemes)
    torch.testing.assert_close(back, codes * scale.float()[:, None], rtol=0, atol=0)
    assert (back - w).abs().max() <= scale.float().max() / 2 + 1e-6
    # not a gate, or outside the size window: the run's quantizer decides (quant_mixed: passthrough here)
    for other, t in (("blocks.1.attn.c_q.weight", w), (name, torch.randn(2, 8)), (name, torch.randn(8))):
        assert run.hook.pg_quantize_tensor(name=other, tensor=t, config=run.config).scheme != "int8_per_row"
    plain = build(["sparse_attn_gate", "quant_mixed"])[0]
    assert plain.hook.pg_quantize_tensor(name=name, tensor=w, config=plain.config).scheme == "passthrough"
    assert "int8_per_row" in ex.SCHEMES


def test_quant_gate_bad_settings():
    err = config_error(["quant_gate"], ["quant_gate.min_numel=100", "quant_gate.max_numel=10"])
    assert len(err.errors) == 1 and "quant_gate.min_numel" in err.errors[0]


# --- parallel_lanes ----------------------------------------------------------------------------------------
def reference_two_lane_hidden(model, tok: torch.Tensor, start: int, final: str) -> torch.Tensor:
    """PR #1855's `_forward_hidden` with its `_parallel_block` (U-Net skips, no recurrence), by hand."""
    norm = lambda t: F.rms_norm(t, (t.size(-1),))  # noqa: E731
    x = norm(model.tok_emb(tok))
    x0, skips, ctx = x, [], {"input_ids": tok}

    def mixed(b, t):
        return b.resid_mix[0] * t + b.resid_mix[1] * x0

    def sequential(i, t):
        b = model.blocks[i]
        t = mixed(b, t)
        t = t + b.attn_scale * b.attn(norm(t), ctx)
        return t + b.mlp_scale * b.mlp(norm(t))

    n = len(model.blocks)
    enc, dec = list(range(n // 2)), list(range(n // 2, n))
    for i in enc:
        x = sequential(i, x)
        skips.append(x)
    lane0 = lane1 = None
    for j, i in enumerate(dec):
        skip = model.skip_weights[j] * skips.pop() if j < model.skip_weights.size(0) and skips else 0.0
        if i < start:
            x = sequential(i, x + skip)
            continue
        if lane0 is None:
            lane0 = lane1 = x
        lane0 = lane0 + skip
        b, res = model.blocks[i], model.blocks[i].residual
        attn_out = b.attn_scale * b.attn(norm(mixed(b, lane0)), ctx)
        mlp_out = b.mlp_scale * b.mlp(norm(lane1))
        r, p = res.parallel_resid_lambdas, res.parallel_post_lambdas
        lane0, lane1 = (r[0] * lane0 + p[0, 0] * attn_out + p[1, 0] * mlp_out,
                        r[1] * lane1 + p[0, 1] * attn_out + p[1, 1] * mlp_out)
    x = {"mean": 0.5 * (lane0 + lane1), "attn": lane0, "mlp": lane1}[final]
    return norm(x)


@pytest.mark.parametrize("start, final", [(4, "mean"), (3, "mlp"), (5, "attn")])
def test_parallel_lanes_are_the_records_two_lane_forward(start, final):
    _, model = build(["parallel_lanes"], ["core.num_layers=6", f"parallel_lanes.start={start}",
                                          f"parallel_lanes.final_lane={final}"])
    randomize(model)
    res = model.blocks[5].residual
    assert res.parallel_resid_lambdas.shape == (2,) and res.parallel_post_lambdas.shape == (2, 2)
    tok = ids()
    torch.testing.assert_close(model.hidden(tok), reference_two_lane_hidden(model, tok, start, final),
                               rtol=1e-5, atol=1e-5)


def test_parallel_lanes_init_and_groups():
    _, model = build(["parallel_lanes"], ["core.num_layers=6", "parallel_lanes.start=4"])
    lambdas = [(b.residual.parallel_resid_lambdas, b.residual.parallel_post_lambdas) for b in model.blocks[4:]]
    assert all(torch.equal(r, torch.full((2,), 1.1)) and torch.equal(p, torch.ones(2, 2)) for r, p in lambdas)
    assert not any("lambdas" in n for n, _ in model.blocks[:4].named_parameters())
    scalar = {id(p) for p in default_param_groups(model)["scalar"]}
    assert all(id(r) in scalar and id(p) in scalar for r, p in lambdas)


def test_parallel_lanes_live_when_compiled():
    assert_live_when_compiled(["parallel_lanes", "skip_gates"], ["core.num_layers=6", "parallel_lanes.start=3"])


@pytest.mark.parametrize("plugins, sets, field", [
    (["parallel_lanes"], ["parallel_lanes.start=1"], "parallel_lanes.start=1"),
    (["parallel_lanes"], ["parallel_lanes.start=4"], "parallel_lanes.start=4"),
    (["parallel_lanes"], ["parallel_lanes.final_lane=sum"], "parallel_lanes.final_lane"),
    (["parallel_lanes", "parallel_residuals"], [], "block_residual"),
])
def test_parallel_lanes_bad_settings(plugins, sets, field):
    err = config_error(plugins, sets)
    assert len(err.errors) == 1 and field in err.errors[0]


# --- trigram_hash ----------------------------------------------------------------------------------------------
def test_trigram_buckets_are_the_records_hash():
    from plugins.trigram_hash import trigram_buckets

    tok = torch.randint(0, 1024, (3, 10), generator=torch.Generator().manual_seed(5))
    got = trigram_buckets(tok, 2048)
    for row, out in zip(tok.tolist(), got.tolist(), strict=True):
        expect = [2047, 2047] + [((36313 * row[i]) ^ (27191 * row[i - 1]) ^ (51497 * row[i - 2])) % 2047
                                 for i in range(2, len(row))]
        assert out == expect
    assert trigram_buckets(tok[:, :1], 64).tolist() == [[63]] * 3


def test_trigram_hash_adds_its_lookup_to_the_bigram_table_before_the_projection():
    from plugins.bigram_hash import bigram_buckets

    sets = ["bigram_hash.buckets=64", "bigram_hash.dim=16"]
    _, model = build(["bigram_hash", "trigram_hash"], sets)
    randomize(model)
    (part,) = model.embed_add
    tok = ids()
    tri = torch.tensor([[63, 63] + [((36313 * r[i]) ^ (27191 * r[i - 1]) ^ (51497 * r[i - 2])) % 63
                                    for i in range(2, len(r))] for r in tok.tolist()])
    table = part.embed.weight
    expect = (table[bigram_buckets(tok, 64)] + table[tri]) @ part.proj.weight.T * part.scale
    torch.testing.assert_close(part(tok), expect, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build(["bigram_hash"], sets)[1]
                                                             .parameters())  # zero extra parameters


def test_trigram_hash_live_when_compiled():
    torch._dynamo.reset()
    sets = ["bigram_hash.buckets=64", "bigram_hash.dim=16"]
    _, model = build(["bigram_hash", "trigram_hash"], sets)
    randomize(model)
    _, plain = build(["bigram_hash"], sets)
    plain.load_state_dict(model.state_dict())
    x = ids()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
        assert (out - plain(x)).abs().max() > 1e-3


def test_trigram_hash_requires_bigram_hash():
    err = config_error(["trigram_hash"], [])
    assert len(err.errors) == 1 and "'trigram_hash' requires plugin 'bigram_hash'" in err.errors[0]


# --- overtone_init -------------------------------------------------------------------------------------------
def test_overtone_init_is_the_records_spectrum_and_phases():
    _, plain = build([], seed=4)
    _, model = build(["overtone_init"], seed=4)
    w0, w = plain.tok_emb.weight.detach(), model.tok_emb.weight.detach()
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    ks = torch.arange(1, s.numel() + 1, dtype=torch.float32)
    torch.testing.assert_close(w, u @ torch.diag(s[0] / ks.sqrt()) @ vh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.linalg.svdvals(w), s[0] / ks.sqrt(), rtol=1e-4, atol=1e-6)
    for i, block in enumerate(model.blocks):
        phi = 1 / (1 + math.exp(-3 * (i / 3 - 0.5)))
        torch.testing.assert_close(block.resid_mix.detach(), torch.tensor([[phi] * 64, [1 - phi] * 64]))
    other = {k: v for k, v in model.state_dict().items() if k != "tok_emb.weight" and "resid_mix" not in k}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in other.items())  # init only, nothing else


def test_overtone_init_changes_the_compiled_model():
    torch._dynamo.reset()
    _, plain = build([], seed=4)
    _, model = build(["overtone_init"], seed=4)
    x = ids()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert (compiled(x) - plain(x)).abs().max() > 1e-4


def test_overtone_init_bad_settings():
    err = config_error(["overtone_init"], ["overtone_init.power=-1"])
    assert len(err.errors) == 1 and "overtone_init.power" in err.errors[0]


# --- explicit MLP width (core.mlp_hidden) ----------------------------------------------------------------------
def test_mlp_hidden_sets_the_width_of_every_mlp():
    _, model = build([], ["core.mlp_hidden=88"])  # 88 = 1.375 × 64: no integer multiple (PR #534: 1408 at 512)
    randomize(model)
    for block in model.blocks:
        mlp = block.mlp
        assert mlp.fc.weight.shape == (88, 64) and mlp.proj.weight.shape == (64, 88)
    x = torch.randn(2, 5, 64)
    mlp = model.blocks[0].mlp
    torch.testing.assert_close(mlp(x), torch.relu(x @ mlp.fc.weight.T).square() @ mlp.proj.weight.T)
    _, leaky = build(["leaky_relu2"], ["core.mlp_hidden=88"])
    assert leaky.blocks[2].mlp.fc.weight.shape == (88, 64)
    _, default = build([])
    assert default.blocks[0].mlp.fc.weight.shape == (128, 64)  # 0: mlp_mult · model_dim as before


def test_mlp_hidden_from_the_environment_and_bad_values():
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[], sets=TINY, env={"MLP_HIDDEN": "1408"})
    assert cfg.core.mlp_hidden == 1408
    err = config_error([], ["core.mlp_hidden=-8"])
    assert len(err.errors) == 1 and "core.mlp_hidden must be in [0, 1048577)" in err.errors[0]
