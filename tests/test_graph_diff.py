"""benchmarks/graph_diff.py: the traced training step it compares (issue #14) — matmul FLOPs and saved tensors
against a hand count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "graph_diff.py"
spec = importlib.util.spec_from_file_location("graph_diff", SCRIPT)
graph_diff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph_diff)


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False)

    def forward(self, x, y):
        return nn.functional.mse_loss(self.down(torch.relu(self.up(x))).float(), y)


def test_traced_step_counts_matmul_flops_of_forward_and_backward():
    torch.manual_seed(0)
    graphs = graph_diff.traced(_TwoLayer(), (torch.randn(3, 8), torch.randn(3, 4)))
    assert graphs["forward"]["flops"] == 2 * 3 * 8 * 16 + 2 * 3 * 16 * 4
    # backward: d(down.weight), d(relu output) and d(up.weight); the input needs no gradient
    assert graphs["backward"]["flops"] == 2 * 3 * 4 * 16 + 2 * 3 * 4 * 16 + 2 * 3 * 16 * 8
    assert graphs["forward"]["ops"]["aten.mm.default"] == 2
    n_saved, saved_bytes = graph_diff.saved_summary(graphs["forward"]["outputs"])
    assert n_saved >= 2 and saved_bytes > 0  # the loss and what backward reads
    assert any("self.up(x)" in site for site in graphs["forward"]["sites"]["aten.mm.default"])


class _OneAttention(nn.Module):
    """The core's attention layer alone (GQA 4/2), as one training loss."""

    def __init__(self):
        super().__init__()
        from core.model import CausalSelfAttention, ModelSpec

        self.attn = CausalSelfAttention(ModelSpec(model_dim=32, num_heads=4, num_kv_heads=2))

    def forward(self, x):
        return self.attn(x, {}).float().square().mean()


def test_attention_layer_traces_without_layout_copies():
    """q/k RMSNorm and RoPE in (B, T, H, D), transposed only at the SDPA call, as the records (issue #14): no
    clone or copy in the layer's forward or backward graph. Roping in (B, H, T, D) cost per layer a `y.contiguous()`
    and two RMSNorm input copies in the forward, and the q/k gradients' layout copies in the backward."""
    torch.manual_seed(0)
    model = _OneAttention()
    model.attn.proj.weight.data.normal_()  # zero-initialised: a nonzero loss gradient reaches q, k and v
    graphs = graph_diff.traced(model, (torch.randn(2, 16, 32, requires_grad=True),))
    layout_ops = ("aten.clone.", "aten.copy.", "aten.contiguous.")  # not aten._to_copy: the bf16 casts
    copies = {kind: {op: n for op, n in g["ops"].items() if op.startswith(layout_ops)} for kind, g in graphs.items()}
    assert copies == {"forward": {}, "backward": {}}
    assert graphs["forward"]["ops"]["aten._scaled_dot_product_flash_attention_for_cpu.default"] == 1
