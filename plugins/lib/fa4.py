"""FlashAttention-4 (`flash_attn.cute`, pip flash-attn-4) as a traceable custom op, for the `fa4_attention` plugin.

flash_attn.cute JIT-compiles CuTe DSL kernels: dynamo cannot trace it, so the forward and backward are
torch.library ops with fake implementations (torch.compile(fullgraph=True) keeps them as single nodes).
KERNELS is the seam: fwd(q, k, v) -> (out, lse) and bwd(q, k, v, out, dout, lse) -> (dq, dk, dv), all in
(B, T, H, D) / (B, T, Hkv, D) layout, lse (B, H, T) float32; tests put a stand-in here. This module imports only
torch: `pgolf bench` loads it by path into a record's process (its `flash_attn_interface` stand-in), so both
sides run the same kernel.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import Tensor


def available() -> bool:
    """Whether `flash_attn.cute` imports here."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):  # flash_attn itself is missing
        return False


def _fa4_fwd_kernel(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    from flash_attn.cute import flash_attn_func  # type: ignore[import-not-found]

    with torch.no_grad():
        return flash_attn_func(q, k, v, causal=True, return_lse=True)


def _fa4_bwd_kernel(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor):
    # flash_attn.cute has no public backward: FlashAttnFunc.backward calls this (4.0.0b36)
    from flash_attn.cute.interface import _flash_attn_bwd  # type: ignore[import-not-found]

    return _flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]


KERNELS: dict[str, Callable] = {"fwd": _fa4_fwd_kernel, "bwd": _fa4_bwd_kernel}


@torch.library.custom_op("pgolf::fa4_fwd", mutates_args=())
def fa4_fwd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    out, lse = KERNELS["fwd"](q, k, v)
    return out.contiguous(), lse.contiguous()


@fa4_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    b, t, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((b, h, t), dtype=torch.float32)


@torch.library.custom_op("pgolf::fa4_bwd", mutates_args=())
def fa4_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = KERNELS["bwd"](q, k, v, out, dout, lse)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@fa4_bwd.register_fake
def _(q, k, v, out, dout, lse):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _fa4_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)  # q, k, v, out, lse


def _fa4_backward(ctx, dout: Tensor, dlse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    return fa4_bwd(q, k, v, out, dout.contiguous(), lse)


fa4_fwd.register_autograd(_fa4_backward, setup_context=_fa4_setup)


def fa4_func(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FA3's interface on FA4: (B, T, H, D) q and (B, T, Hkv, D) k, v (Hkv divides H) -> (B, T, H, D), causal."""
    return fa4_fwd(q.contiguous(), k.contiguous(), v.contiguous())[0]
