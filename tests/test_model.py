"""The core model is the baseline's; compile safety (zero graph breaks, the mid-run Switch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.model import GPT, ModelSpec
from plugins.lib.switch import Switch

TINY = dict(vocab_size=96, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2)


def test_baseline_parameter_count_matches_the_record_log():
    # records/.../2026-03-17_NaiveBaseline log: model_params:17059912
    with torch.device("meta"):
        model = GPT(ModelSpec())
    assert sum(p.numel() for p in model.parameters()) == 17_059_912


def test_baseline_state_dict_names():
    model = GPT(ModelSpec(**TINY))
    names = set(model.state_dict())
    expected = {"tok_emb.weight", "skip_weights", "blocks.0.attn.c_q.weight", "blocks.0.attn.c_k.weight",
                "blocks.0.attn.c_v.weight", "blocks.0.attn.proj.weight", "blocks.0.attn.q_gain",
                "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "blocks.0.attn_scale", "blocks.0.mlp_scale",
                "blocks.0.resid_mix"}
    assert expected <= names
    assert not any("lm_head" in n for n in names)


def test_zero_init_projections_and_tied_embedding_std():
    torch.manual_seed(0)
    model = GPT(ModelSpec(vocab_size=2048, num_layers=2, model_dim=256, num_heads=4, num_kv_heads=2))
    assert torch.count_nonzero(model.blocks[0].attn.proj.weight) == 0
    assert torch.count_nonzero(model.blocks[1].mlp.proj.weight) == 0
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 2e-4


def test_forward_modes_agree():
    torch.manual_seed(0)
    model = GPT(ModelSpec(**TINY))
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    ids = torch.randint(0, 96, (2, 16))
    tgt = torch.randint(0, 96, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, 96)
    assert logits.abs().max() <= 30.0
    nll = model(ids, tgt, reduce=False)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 96), tgt.reshape(-1), reduction="none")
    torch.testing.assert_close(nll.reshape(-1), ref)
    torch.testing.assert_close(model(ids, tgt), ref.mean())


def test_causal_prefix_invariance():
    torch.manual_seed(0)
    model = GPT(ModelSpec(**TINY)).double()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 96, (1, 24))
    alt = ids.clone()
    alt[0, 12:] = (alt[0, 12:] + 5) % 96
    a, b = model(ids), model(alt)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.equal(a[:, 12:], b[:, 12:])


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.switch = Switch(False)

    def forward(self, x):
        y = self.lin(x)
        return y + self.switch.value * y.square()


def test_switch_flips_compiled_output_without_recompiling():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = _Scaled()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    x = torch.randn(4, 8)
    off = compiled(x)
    m.switch.set(True)
    on = compiled(x)
    assert not torch.allclose(off, on)
    torch.testing.assert_close(on, m.lin(x) + m.lin(x).square())
    m.switch.set(False)
    torch.testing.assert_close(compiled(x), off)
    assert m.switch.is_on() is False


def test_switch_is_a_graph_input_not_a_constant():
    torch._dynamo.reset()
    m = _Scaled()
    explanation = torch._dynamo.explain(m)(torch.randn(2, 8))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    # The Switch value is a buffer: it is an input of the traced graph, not a constant.
    gm = explanation.graphs[0]
    placeholders = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    assert any("switch" in str(t) for t in placeholders), placeholders


@pytest.mark.parametrize("tie", [True, False])
def test_model_compiles_with_zero_graph_breaks(tie):
    torch._dynamo.reset()
    model = GPT(ModelSpec(**TINY, tie_embeddings=tie))
    ids = torch.randint(0, 96, (2, 16))
    exp = torch._dynamo.explain(model)(ids, ids)
    assert exp.graph_break_count == 0, exp.break_reasons


def test_rotary_table_has_fp32_angles_rounded_once_to_the_bf16_buffer():
    """Under the GPU dtype policy the buffer is bf16; the records' compiled graphs still compute positions and angles
    in fp32 and round the table once (measured on an H200: bitwise), while an eager bf16 arange rounds every
    position above 256 (1025 -> 1024, 2047 -> 2048): cos off by up to 2, ~0.06 nats of PR #1493's train loss."""
    from core.model import Rotary

    rotary = Rotary(16).bfloat16()
    cos, sin = rotary(2048, torch.device("cpu"), torch.bfloat16)
    angles = torch.arange(2048, dtype=torch.float64)[:, None] * rotary.inv_freq.double()[None]  # independent: fp64
    ulp = 2.0**-8  # bf16's spacing in [0.5, 1]: the table may differ from fp64 by one rounding
    assert cos.dtype == sin.dtype == torch.bfloat16 and cos.shape == (1, 2048, 1, 8)  # (1, T, 1, D/2)
    assert (cos[0, :, 0].double() - angles.cos()).abs().max() <= ulp
    assert (sin[0, :, 0].double() - angles.sin()).abs().max() <= ulp
    assert abs(cos[0, 1025, 0, 0].item() - cos[0, 1024, 0, 0].item()) > 0.25  # the positions stay apart
