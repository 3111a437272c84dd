"""fused_ce: the fused softcapped cross-entropy against the core's eager softcap + fp32 CE (value and gradient),
per-token output, and a graph-break-free compile on CPU. The Triton path is checked in tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.model import GPT, ModelSpec, SoftcapCrossEntropy
from plugins.fused_ce import FusedCEConfig, FusedSoftcapCrossEntropy, torch_softcapped_ce

SPEC = dict(vocab_size=96, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)


def eager(logits, targets, softcap):
    return F.cross_entropy((softcap * torch.tanh(logits / softcap)).float(), targets, reduction="none")


@pytest.mark.parametrize("chunk_rows", [1, 7, 4096])
def test_chunked_loss_and_gradient_match_eager_softcap_ce(chunk_rows):
    torch.manual_seed(0)
    logits = (torch.randn(50, 37) * 40).requires_grad_()  # large logits: the softcap matters
    targets = torch.randint(0, 37, (50,))
    weights = torch.randn(50)
    ref = eager(logits, targets, 30.0)
    (ref_grad,) = torch.autograd.grad(ref, logits, weights)
    out = torch_softcapped_ce(logits, targets, 30.0, chunk_rows)
    (grad,) = torch.autograd.grad(out, logits, weights)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_bf16_logits_get_bf16_gradients_close_to_fp32():
    torch.manual_seed(1)
    logits = (torch.randn(8, 40) * 10).bfloat16().requires_grad_()
    targets = torch.randint(0, 40, (8,))
    out = torch_softcapped_ce(logits, targets, 15.0, 3)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref = logits.detach().float().requires_grad_()
    eager(ref, targets, 15.0).sum().backward()
    torch.testing.assert_close(out, eager(logits.detach().float(), targets, 15.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad.float(), ref.grad, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("reduce", [True, False])
def test_loss_slot_matches_the_core_loss_in_value_and_weight_gradients(tie, reduce):
    torch.manual_seed(2)
    model = GPT(ModelSpec(**SPEC, tie_embeddings=tie, logit_softcap=5.0))
    if not tie:
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # the core zero-inits it: make the head matter
    x = torch.randint(0, 96, (2, 16))
    y = torch.randint(0, 96, (2, 16))
    results = []
    for loss in (SoftcapCrossEntropy(), FusedSoftcapCrossEntropy("torch", 5)):
        model.loss = loss
        model.zero_grad(set_to_none=True)
        out = model(x, y, reduce=reduce)
        (out if reduce else (out * torch.linspace(0.5, 1.5, 32).view(2, 16)).sum()).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (fused, grads) = results
    assert fused.shape == ((2, 16) if not reduce else ())
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_loss_slot_compiles_with_zero_graph_breaks():
    torch._dynamo.reset()
    model = GPT(ModelSpec(**SPEC))
    model.loss = FusedSoftcapCrossEntropy("auto", 8)
    x = torch.randint(0, 96, (2, 16))
    for reduce in (True, False):
        exp = torch._dynamo.explain(model)(x, x, reduce=reduce)
        assert exp.graph_break_count == 0, exp.break_reasons


def test_config_rejects_unknown_backend_and_bad_chunk():
    with pytest.raises(ValueError, match="backend"):
        FusedCEConfig(backend="cuda")
    with pytest.raises(ValueError, match="chunk_rows"):
        FusedCEConfig(chunk_rows=0)
