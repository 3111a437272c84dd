"""A record's own train_gpt.py as a module on CPU: FA3 (`flash_attn_interface`) served by SDPA while it loads."""

from __future__ import annotations

import sys
import types

import torch.nn.functional as F


def fa3_via_sdpa(q, k, v, causal=True):
    """flash_attn_func's layout, (B, T, H, D), computed with SDPA."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                       enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


def exec_record(src: str, name: str) -> types.ModuleType:
    """Execute a record's source as module `name` with a stub `flash_attn_interface` (restored afterwards)."""
    stub = types.ModuleType("flash_attn_interface")
    stub.flash_attn_func = fa3_via_sdpa
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = stub
    try:
        mod = types.ModuleType(name)
        exec(compile(src, f"{name}.py", "exec"), mod.__dict__)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    return mod
