"""BigramHash: a hashed embedding of (previous, current) token pairs added to the token embedding.

PR #198/#265 form, as carried by PR #315 (2048 buckets × 128, projected to the model width): bucket
(36313·t_i XOR 27191·t_{i-1}) mod (buckets - 1), and the reserved bucket `buckets - 1` at the first
position of each row; output proj(embed(bucket)) · scale. The table starts at zero, `scale` at 0.05,
and the projection at orthogonal × 1/sqrt(2·num_layers) — what the record's GPT-level init gives it:
the module zeroes it (as the record's, so the random draws match the record's for a seed), then the
`*.proj` rule of `orthoinit` (the record's init) re-draws it in module order if both its dims are >= 64;
without `orthoinit` this plugin draws it in `pg_init_weights` (with both factors zero it would never
get a gradient).
The table trains with the token-embedding Adam group, the projection with Muon (`proj_group = "scalar"`: with
the scalar Adam, as the parameter-bank records #549/#609 do), `scale` with scalars.
`bos_id` (not in the records, off by default): a BOS position also gets the reserved bucket, so no
pair spans two documents (with a document-masked evaluator nothing then crosses a BOS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CastedLinear, join_group
from core.registry import Plugin
from plugins.lib.settings import ARTIFACT_BITS, INIT, range_errors

HASH_CUR, HASH_PREV = 36313, 27191


@dataclass
class BigramHashConfig:
    buckets: int = field(default=2048, metadata={"help": "hash table rows (PR #315: 2048; the last is position 0's)"})
    dim: int = field(default=128, metadata={"help": "table width, projected to model_dim (no projection if equal)"})
    scale_init: float = field(default=0.05, metadata={"help": "initial value of the learned output scale"})
    bos_id: int = field(default=-1, metadata={
        "help": "BOS token id: its position gets the reserved bucket, no pair spans documents (-1 = off, records)"})
    proj_group: str = field(default="matrix", metadata={
        "help": "optimizer group of the projection: matrix (Muon, #315) | scalar (Adam, the bank records #549/#609)"})


def bigram_buckets(ids: Tensor, buckets: int, bos_id: int = -1) -> Tensor:
    """(36313·t_i XOR 27191·t_{i-1}) mod (buckets-1), and buckets-1 at position 0 of each row (and where
    t_i is `bos_id`, when that is >= 0).

    int64 arithmetic: equal to the record's int32 version while 36313·(vocab-1) < 2**31 (vocab ≤ 59,138).
    """
    t = ids.long()
    mod = buckets - 1
    pairs = torch.bitwise_xor(HASH_CUR * t[..., 1:], HASH_PREV * t[..., :-1]) % mod
    out = torch.cat((torch.full_like(t[..., :1], mod), pairs), dim=-1)
    return out if bos_id < 0 else torch.where(t == bos_id, mod, out)


class BigramHashEmbedding(nn.Module):
    def __init__(self, buckets: int, dim: int, model_dim: int, scale_init: float, num_layers: int,
                 bos_id: int = -1, proj_group: str = "matrix"):
        super().__init__()
        self.buckets, self.bos_id = buckets, bos_id
        self.embed = nn.Embedding(buckets, dim)
        nn.init.zeros_(self.embed.weight)
        self.proj = CastedLinear(dim, model_dim, bias=False) if dim != model_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
            if proj_group == "scalar":
                join_group(self.proj.weight, "scalar")
        self.num_layers = num_layers
        self.scale = nn.Parameter(torch.tensor(scale_init, dtype=torch.float32))
        # more hashes (ids, buckets) -> buckets looked up in the same table and summed before the projection
        # (`trigram_hash` adds one); a static tuple, fixed at build time
        self.extra_hashes: tuple[Callable[[Tensor, int], Tensor], ...] = ()

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embed(bigram_buckets(input_ids, self.buckets, self.bos_id))
        for extra in self.extra_hashes:
            h = h + self.embed(extra(input_ids, self.buckets))
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(dtype=h.dtype)


class BigramHash(Plugin):
    name = "bigram_hash"
    family = "model"
    summary = "Hashed (prev, cur) token-pair embedding, projected and scaled, added to the token embedding."
    sources = ("openai/parameter-golf#198", "openai/parameter-golf#265", "openai/parameter-golf#315")
    config = BigramHashConfig
    test_settings = {"bigram_hash": {"buckets": 64, "dim": 32, "scale_init": 0.5}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        bad = [] if cfg.proj_group in ("matrix", "scalar") else [
            f"bigram_hash.proj_group: expected matrix or scalar, got {cfg.proj_group!r}"]
        bad += range_errors(cls.name, cfg, buckets=(2, ARTIFACT_BITS), dim=(1, 4 * core.model_dim),
                            scale_init=(-INIT, INIT), bos_id=(-1, core.vocab_size - 1))
        if not bad and cfg.buckets * cfg.dim > ARTIFACT_BITS:  # a table no artifact can hold
            bad.append(f"bigram_hash.buckets x dim: expected at most {ARTIFACT_BITS:,} table entries (one bit each "
                       f"fills the 16 MB artifact), got {cfg.buckets * cfg.dim:,}")
        return bad

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        if slot != "embed_add":
            return None
        if self.cfg.buckets < 2:
            raise ValueError(f"bigram_hash.buckets: expected at least 2, got {self.cfg.buckets}")
        if self.cfg.dim < 1:
            raise ValueError(f"bigram_hash.dim: expected a positive width, got {self.cfg.dim}")
        if self.cfg.proj_group not in ("matrix", "scalar"):
            raise ValueError(f"bigram_hash.proj_group: expected matrix or scalar, got {self.cfg.proj_group!r}")
        return BigramHashEmbedding(self.cfg.buckets, self.cfg.dim, spec.model_dim, self.cfg.scale_init,
                                   spec.num_layers, self.cfg.bos_id, self.cfg.proj_group)

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        """The record's projection init when `orthoinit` (the record's own init, which also decides by size
        whether to draw it) is not enabled."""
        if "orthoinit" in config.plugins:
            return
        for part in model.embed_add:
            if isinstance(part, BigramHashEmbedding) and part.proj is not None:
                nn.init.orthogonal_(part.proj.weight, gain=1.0)
                with torch.no_grad():
                    part.proj.weight.mul_(1.0 / math.sqrt(2 * part.num_layers))
