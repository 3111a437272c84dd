"""cuDNN SDPA forward + backward by memory layout of q/k/v/dO (pgolf issue #14).

pgolf's attention keeps q/k/v in (B, T, H, D) memory and hands SDPA a transposed view (no layout copies); the
records' scripts transpose first, and inductor writes the normed/rotated q/k as (B, H, T, D). The same cuDNN kernel
then reads rows 1 KB apart instead of 128 B apart. This times both layouts (GQA, causal, bf16) at a record's shape:

    python benchmarks/attention_layout.py --batch 192 --seq 2048 --heads 8 --kv-heads 4 --head-dim 64
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from cuda_timing import ms_per_call
from torch.nn.attention import SDPBackend, sdpa_kernel


def tensors(layout: str, b: int, t: int, h: int, kv: int, d: int) -> tuple[torch.Tensor, ...]:
    """q, k, v (leaf, requiring grad) and dO as (B, H, T, D) views over `layout` memory."""
    def make(heads: int, grad: bool) -> torch.Tensor:
        if layout == "bthd":
            x = torch.randn(b, t, heads, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        else:
            x = torch.randn(b, heads, t, d, device="cuda", dtype=torch.bfloat16)
        return x.requires_grad_(grad)
    return make(h, True), make(kv, True), make(kv, True), make(h, False)


def fwd_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor) -> None:
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out.backward(do)


def time_layout(layout: str, shape: tuple[int, ...], iters: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of cuDNN SDPA over `layout` memory."""
    q, k, v, do = tensors(layout, *shape)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        fwd = ms_per_call(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), iters)
        both = ms_per_call(lambda: fwd_bwd(q, k, v, do), iters)
    return fwd, both


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=192)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    shape = (a.batch, a.seq, a.heads, a.kv_heads, a.head_dim)
    for rnd, order in enumerate((("bthd", "bhtd"), ("bhtd", "bthd"))):  # both orders: the first timed runs slow
        for layout in order:
            fwd, both = time_layout(layout, shape, a.iters)
            print(f"round {rnd} {layout}: forward {fwd:.3f} ms, forward+backward {both:.3f} ms "
                  f"(backward {both - fwd:.3f})", flush=True)


if __name__ == "__main__":
    main()
