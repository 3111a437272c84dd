"""FlashAttention-4 (`flash_attn.cute`, pip flash-attn-4) as the "attention" slot (pgolf issue #14; no record PR
uses it: the records run FA3, which the core selects itself, `core.attention = fa3`).

On CUDA every layer's causal attention runs FA4 through pgolf's traceable custom op (`plugins.lib.fa4`);
document-masked attention (`ctx["doc_ids"]`) stays the core's masked SDPA, as it is for every backend. Off CUDA
there is no FA4: the core's SDPA runs, so a recipe with this plugin still runs (and is tested) on a CPU. A CUDA
run without flash_attn.cute is a configuration error. The same function as SDPA, to kernel rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CausalAttention
from core.registry import Plugin
from plugins.lib import fa4


class FA4Attention(nn.Module):
    """module(q, k, v, ctx) -> y (B, T, H, D): FA4 on CUDA, else (or within documents) the core's attention."""

    def __init__(self, backend: str):
        super().__init__()
        self.core = CausalAttention(backend)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: dict) -> Tensor:
        if q.device.type != "cuda" or "doc_ids" in ctx:
            return self.core(q, k, v, ctx)
        return fa4.fa4_func(q, k, v)


class FA4AttentionPlugin(Plugin):
    name = "fa4_attention"
    family = "model"
    summary = "FlashAttention-4 (flash_attn.cute) for the causal attention of every layer, compiled as a custom op."
    sources = ("Dao-AILab/flash-attention flash_attn.cute (FlashAttention-4); pgolf issue #14",)
    provides = ("attention",)  # the per-layer attention slot has one provider
    same_function = True  # a kernel: the core's numbers (on CPU the matrix runs the core's SDPA through it)
    test_settings = {}

    @classmethod
    def check_config(cls, cfg, core) -> list[str]:
        cuda = core.device.startswith("cuda") or (core.device == "auto" and torch.cuda.is_available())
        if cuda and not fa4.available():
            return ["fa4_attention: flash_attn.cute (pip flash-attn-4) is not importable here; install it or "
                    "drop the plugin (core.attention=auto picks among fa3, cuDNN and flash SDPA)"]
        return []

    @hookimpl
    def pg_build_slot(self, slot, spec, layer):
        return FA4Attention(spec.attention) if slot == "attention" else None

    @hookimpl
    def pg_train_start(self, run) -> None:
        if run.device.type == "cuda":
            run.log("attention_slot:fa4_attention (FlashAttention-4 in every layer, in place of attention_backend)")
