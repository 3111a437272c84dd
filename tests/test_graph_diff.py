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
