"""FlashAttention-4's varlen kernel (`flash_attn.cute.flash_attn_varlen_func`) as a traceable custom op, for
`varlen_attention` (PR #1530's packed documents) and the bench's record stand-in.

Dynamo cannot trace CuTe DSL (as plugins/lib/fa4.py's dense op), so the forward and backward are torch.library ops
with fake implementations. VARLEN_KERNELS is the seam (tests put a stand-in here): fwd(q, k, v, cu, max_seqlen)
-> (out, lse) and bwd(q, k, v, out, dout, lse, cu, max_seqlen) -> (dq, dk, dv); q (N, H, D), k/v (N, Hkv, D),
lse (H, N) float32. This module imports only torch: `pgolf bench` loads it by path into a record's process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _fa4_varlen_fwd_kernel(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    from flash_attn.cute import flash_attn_varlen_func  # type: ignore[import-not-found]

    with torch.no_grad():
        return flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_seqlen,
                                      max_seqlen_k=max_seqlen, causal=True, return_lse=True)


def _fa4_varlen_bwd_kernel(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor, cu: Tensor,
                           max_seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
    # flash_attn.cute has no public backward: FlashAttnVarlenFunc.backward calls this (4.0.0b36)
    from flash_attn.cute.interface import _flash_attn_bwd  # type: ignore[import-not-found]

    return _flash_attn_bwd(q, k, v, out, dout, lse, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu,
                           max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen)[:3]


VARLEN_KERNELS: dict[str, Callable] = {"fwd": _fa4_varlen_fwd_kernel, "bwd": _fa4_varlen_bwd_kernel}


@torch.library.custom_op("pgolf::fa4_varlen_fwd", mutates_args=())
def fa4_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    out, lse = VARLEN_KERNELS["fwd"](q, k, v, cu, max_seqlen)
    return out.contiguous(), lse.contiguous()


@fa4_varlen_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    n, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((h, n), dtype=torch.float32)


@torch.library.custom_op("pgolf::fa4_varlen_bwd", mutates_args=())
def fa4_varlen_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor, cu: Tensor,
                   max_seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = VARLEN_KERNELS["bwd"](q, k, v, out, dout, lse, cu, max_seqlen)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@fa4_varlen_bwd.register_fake
def _(q, k, v, out, dout, lse, cu, max_seqlen):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _varlen_setup(ctx, inputs, output) -> None:
    q, k, v, cu, max_seqlen = inputs
    ctx.max_seqlen = max_seqlen
    ctx.save_for_backward(q, k, v, cu, *output)  # q, k, v, cu, out, lse


def _varlen_backward(ctx, dout: Tensor, dlse: Tensor | None):
    q, k, v, cu, out, lse = ctx.saved_tensors
    return (*fa4_varlen_bwd(q, k, v, out, dout.contiguous(), lse, cu, ctx.max_seqlen), None, None)


fa4_varlen_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup)


def fa4_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor | None = None,
                    max_seqlen_q: int = 0, max_seqlen_k: int = 0, causal: bool = True, **unused) -> Tensor:
    """FA3's `flash_attn_varlen_func` interface on FA4 (causal, one set of boundaries for q and k)."""
    if not causal or (cu_seqlens_k is not None and cu_seqlens_k is not cu_seqlens_q):
        raise ValueError("fa4_varlen_func: causal self-attention only (cu_seqlens_k must be cu_seqlens_q)")
    return fa4_varlen_fwd(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens_q, int(max_seqlen_q))[0]
