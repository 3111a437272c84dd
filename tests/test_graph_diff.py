"""benchmarks/graph_diff.py: the traced training step it compares (issue #14) — matmul FLOPs and saved tensors
against a hand count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
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


PR1855_TINY = ["core.vocab_size=320", "core.num_layers=5", "core.model_dim=64", "core.num_heads=4",
               "core.num_kv_heads=2", "core.train_seq_len=64", "partial_rope.dims=8", "depth_recurrence.loop_start=1",
               "depth_recurrence.loop_end=2", "parallel_lanes.start=3", "xsa.last_n=5",
               "varlen_attention.kernel=chunked"]
LAYOUT_AND_CASTS = ("aten.clone.default", "aten._to_copy.default", "aten.copy.default", "aten.copy_.default",
                    "aten.cat.default", "aten.permute.default", "aten.transpose.int", "aten.contiguous.default")


@pytest.mark.slow
def test_pr1855_step_graph_does_no_more_work_than_the_records(tiny_caseops_data, tmp_path):
    """PR #1855 against its own GPT, both traced as graph_diff does (a doc-packed flat row with cu_seqlens, base and
    depth-recurrence modes), with the eager MLP and CE on both sides (the record's Triton kernels are CUDA-only, and
    so are fused_mlp's and fused_ce's): the same matmul FLOPs (but SmearGate's first-token gate), no more ops in
    total, no more layout copies, casts or concatenations of any kind, and saved tensors within 1 % of the record's
    bytes (pgolf keeps the two-lane blocks' attn_scale·attn output where the record's partition recomputes it: one
    activation per two-lane block)."""
    import os
    import sys

    from record_tables import record_source

    from pgolf.records import PROFILES

    script = tmp_path / "pr1855_train_gpt.py"
    script.write_text(record_source(PROFILES["pr1855"]), encoding="utf-8")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pr1855.toml"
    eager = graph_diff.eager_plugins(recipe, [])
    assert eager and "leaky_relu2" in eager[0] and "fused" not in eager[0]
    env, path, modules = dict(os.environ), list(sys.path), set(sys.modules)
    try:
        ours, cfg, run = graph_diff.pgolf_model(recipe, tiny_caseops_data[0], [*PR1855_TINY, *eager])
        theirs = graph_diff.record_model(script, cfg)
        theirs.record_module.BOS_ID = 1
        ours_args, ours_kwargs, their_args, their_kwargs = graph_diff.batches(cfg, run, 2, True)
        for mode in ("base", "recurrence"):
            graph_diff.set_mode(ours, run, theirs, mode)
            a, b = graph_diff.traced(ours, ours_args, ours_kwargs), graph_diff.traced(theirs, their_args, their_kwargs)
            for kind in ("forward", "backward"):
                # pgolf's SmearGate gate also runs on the first token (then masked): 2·12 FLOPs more per sequence
                assert 0 <= a[kind]["flops"] - b[kind]["flops"] <= 2 * 2 * 12 and b[kind]["flops"] > 0, (mode, kind)
                assert sum(a[kind]["ops"].values()) <= sum(b[kind]["ops"].values()), (mode, kind)
                extra = {op: (a[kind]["ops"][op], b[kind]["ops"][op]) for op in LAYOUT_AND_CASTS
                         if a[kind]["ops"][op] > b[kind]["ops"][op]}
                assert extra == {}, (mode, kind)
            (n_ours, bytes_ours), (n_theirs, bytes_theirs) = (graph_diff.saved_summary(g["forward"]["outputs"])
                                                              for g in (a, b))
            assert bytes_ours <= 1.01 * bytes_theirs, (mode, bytes_ours, bytes_theirs)
    finally:
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if name in ("flash_attn_interface", "pgolf_bench_varlen", "record_train_gpt"):
                del sys.modules[name]
