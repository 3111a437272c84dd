"""Variable-length (document-isolated) attention without a dense T×T mask (PR #1530, record
2026-04-10_VarLenAttn: `flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens, …, causal=True)`).

The "attention" slot, per forward (`kernel = "auto"`):
- `ctx["cu_seqlens"]` (from a packing loader, e.g. `doc_packing`) on CUDA with FlashAttention importable:
  the varlen kernel on the flat B·T tokens (FA3 `flash_attn_interface`, else FA4 `flash_attn.cute` through the
  `pgolf::fa4_varlen_fwd`/`_bwd` custom ops: dynamo cannot trace CuTe DSL, as plugins/lib/fa4.py's dense op),
  max_seqlen = `core.train_seq_len` (the loader's segment cap, as the record passes);
- `ctx["doc_ids"]` on CUDA otherwise: FlexAttention with a document-causal block mask, made once per forward
  inside the compiled graph (it traces with no graph break) and shared by the layers through `ctx`;
- `ctx["doc_ids"]` on CPU: the core's SDPA with the dense `document_mask` (FlexAttention has no CPU backward in torch
  2.13, and its eager CPU path materialises the scores anyway) — the reference the others are tested against;
- no boundaries: the core's causal attention.
`kernel = "flex"` / `"dense"` force one path (flex on CPU: forward only); `"chunked"` runs plugins/lib/chunked_varlen.py
(SDPA over chunks of `train_seq_len` queries with their previous chunk's keys under a same-segment causal mask: exact
for the loader's ≤ train_seq_len segments, compiles like dense SDPA, and the bench's record stand-in runs the same
code, so both sides of a PR #1855 comparison share one attention backend without FA3/FA4).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CausalAttention
from core.registry import Plugin
from plugins.lib.chunked_varlen import chunk_mask, chunked_document_attention
from plugins.lib.fa4_varlen import fa4_varlen_func

KERNELS = ("auto", "flex", "dense", "chunked")


@dataclass
class VarlenAttentionConfig:
    kernel: str = field(default="auto", metadata={"help": "auto | flex | dense | chunked (see the module docstring)"})

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"varlen_attention.kernel: expected one of {', '.join(KERNELS)}, got {self.kernel!r}")


def flash_varlen_func() -> Callable[..., object] | None:
    """FA3's `flash_attn_varlen_func`, else FA4's (`flash_attn.cute`) as a traceable op, else None."""
    for module in ("flash_attn_interface", "flash_attn.cute"):
        try:
            fn = getattr(importlib.import_module(module), "flash_attn_varlen_func", None)
        except Exception:  # a missing or broken (e.g. CPU-only) install
            continue
        if fn is not None:
            return fn if module == "flash_attn_interface" else fa4_varlen_func
    return None


def document_block_mask(doc_ids: Tensor):
    """FlexAttention block mask: key ≤ query and the same document id, per row of `doc_ids` (B, T)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def doc_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

    t = doc_ids.size(1)
    return create_block_mask(doc_causal, doc_ids.size(0), None, t, t, device=doc_ids.device)


class VarlenAttention(nn.Module):
    """module(q, k, v, ctx) -> y (B, T, H, D), attending only within documents (see the module docstring)."""

    def __init__(self, backend: str, kernel: str = "auto", max_seqlen: int = 0):
        super().__init__()
        self.causal = CausalAttention(backend)
        self.kernel = kernel
        self.max_seqlen = max_seqlen  # set by the plugin from core.train_seq_len
        self.varlen_fn = flash_varlen_func() if torch.cuda.is_available() else None

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: dict) -> Tensor:
        doc_ids = ctx.get("doc_ids")
        if doc_ids is None or self.kernel == "dense":
            return self.causal(q, k, v, ctx)  # the core's: causal, or SDPA with the dense document mask
        cu = ctx.get("cu_seqlens")
        on_cuda = q.device.type == "cuda"
        if self.kernel == "chunked":
            return self.chunked(q, k, v, doc_ids, ctx)
        if self.kernel == "auto" and on_cuda and cu is not None and self.varlen_fn is not None:
            return self.flash_varlen(q, k, v, cu)
        if self.kernel == "flex" or on_cuda:
            return self.flex(q, k, v, doc_ids, ctx)
        return self.causal(q, k, v, ctx)

    def flash_varlen(self, q: Tensor, k: Tensor, v: Tensor, cu: Tensor) -> Tensor:
        b, t, h, d = q.shape
        flat = [z.reshape(b * t, z.size(2), d) for z in (q, k, v)]
        m = self.max_seqlen or t
        y = self.varlen_fn(*flat, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=m, max_seqlen_k=m, causal=True)
        y = y[0] if isinstance(y, tuple) else y
        return y.reshape(b, t, h, d)

    def chunked(self, q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, ctx: dict) -> Tensor:
        chunk = self.max_seqlen or q.size(1)
        if "chunk_mask" not in ctx:  # once per forward, shared by every layer
            ctx["chunk_mask"] = chunk_mask(doc_ids, chunk)
        return chunked_document_attention(q, k, v, doc_ids, chunk, ctx["chunk_mask"])

    def flex(self, q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, ctx: dict) -> Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        if "block_mask" not in ctx:  # once per forward, shared by every layer
            ctx["block_mask"] = document_block_mask(doc_ids)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = flex_attention(q, k, v, block_mask=ctx["block_mask"], enable_gqa=k.size(1) != q.size(1))
        return y.transpose(1, 2)


class VarlenAttentionPlugin(Plugin):
    name = "varlen_attention"
    family = "model"
    summary = ("Attention within documents: FlashAttention varlen (cu_seqlens), a FlexAttention block mask or chunked "
               "SDPA (PR #1530).")
    sources = ("openai/parameter-golf#1530",)
    config = VarlenAttentionConfig
    provides = ("attention",)  # the per-layer attention slot has one provider
    same_function = True  # a kernel: the core's document-masked numbers (the matrix checks equality)
    # Document-masked evaluation makes the plugin's path run in the matrix's tiny CPU runs (dense there).
    test_settings = {"core": {"eval_doc_mask": True}, "varlen_attention": {"kernel": "dense"}}
    test_with = ("doc_packing",)

    def __init__(self, cfg: VarlenAttentionConfig | None = None):
        super().__init__(cfg)
        self.modules: list[VarlenAttention] = []

    @hookimpl
    def pg_build_slot(self, slot, spec, layer):
        if slot != "attention":
            return None
        module = VarlenAttention(spec.attention, self.cfg.kernel)
        self.modules.append(module)
        return module

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        for module in self.modules:
            module.max_seqlen = config.core.train_seq_len
