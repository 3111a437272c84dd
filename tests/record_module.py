"""A record's own train_gpt.py as a module on CPU: FA3 (`flash_attn_interface`) served by SDPA while it loads, its
varlen function by SDPA per segment, and its Triton imports (PR #1855's kernels, never run on CPU) by stubs."""

from __future__ import annotations

import re
import sys
import types

import torch
import torch.nn.functional as F


def fa3_via_sdpa(q, k, v, causal=True):
    """flash_attn_func's layout, (B, T, H, D), computed with SDPA."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                       enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


def fa3_varlen_via_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, causal=True,
                        **unused):
    """flash_attn_varlen_func's layout, (N, H, D) with segment starts `cu_seqlens_q` (padded with N), by SDPA."""
    starts = cu_seqlens_q.tolist()
    out = [fa3_via_sdpa(q[None, a:b], k[None, a:b], v[None, a:b], causal)[0]
           for a, b in zip(starts, starts[1:], strict=False) if b > a]
    return torch.cat(out)


TRITON_IMPORTS = re.compile(r"^(?:import triton(?:\.language as tl)?|from triton\.\S+ import \w+)\n", re.M)


def _triton_stubs() -> dict[str, object]:
    triton = types.SimpleNamespace(jit=lambda fn=None, **kw: fn if fn is not None else (lambda f: f),
                                   cdiv=lambda a, b: -(-a // b))
    return {"triton": triton, "tl": types.SimpleNamespace(constexpr=int), "TensorDescriptor": object}


def exec_record(src: str, name: str) -> types.ModuleType:
    """Execute a record's source as module `name` with a stub `flash_attn_interface` (restored afterwards)."""
    stub = types.ModuleType("flash_attn_interface")
    stub.flash_attn_func = fa3_via_sdpa
    stub.flash_attn_varlen_func = fa3_varlen_via_sdpa
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = stub
    try:
        mod = types.ModuleType(name)
        src, n_triton = TRITON_IMPORTS.subn("", src)
        if n_triton:  # names, not sys.modules entries: torch's own Triton probing must still find none
            mod.__dict__.update(_triton_stubs())
        exec(compile(src, f"{name}.py", "exec"), mod.__dict__)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    return mod
