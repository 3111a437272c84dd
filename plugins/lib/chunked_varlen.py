"""Packed-document attention as chunked dense SDPA, for `varlen_attention` (kernel "chunked") and the bench's record
stand-in (PR #1530's `flash_attn_varlen_func` over one flat row of documents cut into ≤ `train_seq_len` segments).

The token row is cut into chunks of `chunk` queries; each chunk attends to the keys of the previous chunk and its
own under a same-segment causal mask, through SDPA's masked kernels (memory-efficient on CUDA, math on CPU). That
is exact whenever no segment is longer than `chunk` (a query's segment then starts at most `chunk - 1` tokens
back), costs 2·chunk keys per query instead of ≤ chunk, and compiles like any SDPA call: no FlexAttention block
mask, no kernel outside torch. This module imports only torch: `pgolf bench` loads it by path into a record's
process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

_NO_KEY = -2  # segment id of the zero keys before the first chunk (real ids ≥ 0, row padding -1)


def chunk_mask(doc_ids: Tensor, chunk: int) -> Tensor:
    """(B, N) segment ids -> (B·C, 1, chunk, 2·chunk) bool, C = ⌈N / chunk⌉: query i of a chunk sees key j of
    [previous chunk, own chunk] when j ≤ i + chunk and both carry the same segment id (the row's padding to C·chunk
    tokens is a segment of its own, id -1)."""
    doc_ids = F.pad(doc_ids, (0, -doc_ids.size(1) % chunk), value=-1)
    b, n = doc_ids.shape
    own = doc_ids.view(b, n // chunk, chunk)
    previous = F.pad(own[:, :-1], (0, 0, 1, 0), value=_NO_KEY)
    keys = torch.cat([previous, own], dim=2).flatten(0, 1)
    pos = torch.arange(2 * chunk, device=doc_ids.device)
    causal = pos[None, :] <= pos[chunk:, None]
    return ((own.flatten(0, 1)[:, :, None] == keys[:, None, :]) & causal)[:, None]


def _chunks(z: Tensor, chunk: int, with_previous: bool) -> Tensor:
    """(B, H, N, D) -> (B·C, H, chunk, D), or (B·C, H, 2·chunk, D) with each chunk's predecessor (zeros first)."""
    b, h, n, d = z.shape
    own = z.view(b, h, n // chunk, chunk, d).transpose(1, 2)
    if with_previous:
        own = torch.cat([F.pad(own[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0)), own], dim=3)
    return own.flatten(0, 1)


def chunked_document_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, chunk: int,
                               mask: Tensor | None = None) -> Tensor:
    """q (B, N, H, D), k/v (B, N, Hkv, D), doc_ids (B, N) one id per segment (no segment longer than `chunk`)
    -> (B, N, H, D), causal attention inside each segment. `mask`: `chunk_mask(doc_ids, chunk)`, if made already."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    b, h, n, d = q.shape
    pad = -n % chunk  # the padded queries are cut off below
    if pad:
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
    rep = h // k.size(1)
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is None:
        mask = chunk_mask(doc_ids, chunk)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        y = F.scaled_dot_product_attention(_chunks(q, chunk, False), _chunks(k, chunk, True),
                                           _chunks(v, chunk, True), attn_mask=mask)
    return y.view(b, -1, h, chunk, d).transpose(2, 3).reshape(b, -1, h, d)[:, :n]


def chunked_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor | None = None,
                        max_seqlen_q: int = 0, max_seqlen_k: int = 0, causal: bool = True, **unused) -> Tensor:
    """FA3's `flash_attn_varlen_func` interface: (N, H, D) q, (N, Hkv, D) k/v, segment starts `cu_seqlens_q` (int32,
    padded with N) -> (N, H, D); chunks of `max_seqlen_q` tokens (the caller's segment cap)."""
    if not causal or (cu_seqlens_k is not None and cu_seqlens_k is not cu_seqlens_q):
        raise ValueError("chunked_varlen_func: causal self-attention only (cu_seqlens_k must be cu_seqlens_q)")
    if max_seqlen_q < 1:
        raise ValueError(f"chunked_varlen_func: max_seqlen_q must be the segment cap (≥ 1), got {max_seqlen_q}")
    positions = torch.arange(q.size(0), device=q.device, dtype=cu_seqlens_q.dtype)
    doc_ids = torch.searchsorted(cu_seqlens_q, positions, right=True)
    return chunked_document_attention(q[None], k[None], v[None], doc_ids[None], int(max_seqlen_q))[0]
