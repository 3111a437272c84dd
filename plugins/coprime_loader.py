"""Coprime-stride multi-shard training loader (PR #726's idea, PR #1060 `DistributedTokenLoader`, record
2026-03-29_Loader_FullGPTQ_XSA11_BigramHash2816; also PR #1179/#1218).

Shards are memory-mapped. Each shard has a cursor over its (ntok − 1 − phase)//seq_len blocks: a random
phase in [0, min(seq_len − 1, ntok − seq_len − 1)], a random start and a random stride coprime to the block
count, so block (start + k·stride) mod count, k = 0, 1, …, visits every block once per pass in a scrambled
order; an exhausted cursor is re-drawn. Each global batch (all ranks' rows) samples `mix` shards without
replacement with probability ∝ remaining_blocks^α (α = 0.90 − 0.40·p; mix from max(8, W) to max(32, 8W),
both capped by the shard and row counts, p = batches/1800 capped at 1), gives each one row plus a
multinomial share of the rest, shuffles each shard's rows and interleaves the shards in random rounds; rank
r takes rows r::W. One PCG64 generator for all ranks, seeded with an FNV-style hash of the shard paths as
the record (so the order depends on how the paths are spelled, not on SEED). No prefetch thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.data import HEADER_BYTES, DataError
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import STEPS, range_errors
from plugins.shuffled_loader import shard_token_count


@dataclass
class CoprimeLoaderConfig:
    ramp_batches: int = field(default=1800, metadata={"help": "batches over which mix and alpha ramp"})

    def __post_init__(self) -> None:
        if self.ramp_batches < 1:
            raise ValueError(f"coprime_loader.ramp_batches: expected an integer >= 1, got {self.ramp_batches}")


def path_seed(files: list[Path]) -> int:
    """The record's seed: FNV-1a-like over the bytes of every path string, 64-bit."""
    seed = 0
    for f in files:
        for b in str(f).encode():
            seed = ((seed ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return seed


class CoprimeStrideLoader:
    """`next_batch(global_tokens, seq_len, grad_accum_steps) -> (x, y)`, int64 (rows, seq_len) on `device`."""

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device, ramp_batches: int = 1800):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("coprime_loader: no train shards")
        self.rank, self.world_size, self.device, self.ramp = rank, world_size, device, ramp_batches
        self.num_tokens = np.array([shard_token_count(f) for f in self.files], dtype=np.int64)
        self.mmaps = [np.memmap(f, mode="r", dtype="<u2", offset=HEADER_BYTES, shape=(int(n),))
                      for f, n in zip(self.files, self.num_tokens, strict=True)]
        self.rng = np.random.Generator(np.random.PCG64(path_seed(self.files)))
        n = len(self.files)
        self.phase = np.zeros(n, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.next = np.zeros(n, dtype=np.int64)
        self.start = np.zeros(n, dtype=np.int64)
        self.stride = np.ones(n, dtype=np.int64)
        self.ready = np.zeros(n, dtype=np.bool_)
        self.batches = 0
        self.seq_len: int | None = None

    def coprime_stride(self, n: int) -> int:
        if n <= 1:
            return 1
        while True:
            s = int(self.rng.integers(1, n))
            if math.gcd(s, n) == 1:
                return s

    def reset_cursor(self, si: int, seq_len: int) -> None:
        nt = int(self.num_tokens[si])
        max_phase = min(seq_len - 1, max(0, nt - seq_len - 1))
        phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0
        bc = (nt - 1 - phase) // seq_len
        self.phase[si], self.count[si], self.next[si] = phase, bc, 0
        self.start[si] = int(self.rng.integers(bc)) if bc > 1 else 0
        self.stride[si] = self.coprime_stride(bc)
        self.ready[si] = True

    def take(self, si: int, seq_len: int, n: int) -> list[tuple[int, int]]:
        """The next `n` (shard, token offset) windows of shard `si`'s cursor, re-drawn when exhausted."""
        out: list[tuple[int, int]] = []
        while n > 0:
            if not self.ready[si] or self.next[si] >= self.count[si]:
                self.reset_cursor(si, seq_len)
            bc, ni = int(self.count[si]), int(self.next[si])
            k = min(n, bc - ni)
            phase, start, stride = int(self.phase[si]), int(self.start[si]), int(self.stride[si])
            out.extend((si, phase + ((start + (ni + j) * stride) % bc) * seq_len) for j in range(k))
            self.next[si] = ni + k
            n -= k
        return out

    def global_windows(self, seq_len: int, rows_global: int) -> list[tuple[int, int]]:
        eligible = np.nonzero((self.num_tokens - 1) // seq_len > 0)[0]
        if eligible.size == 0:
            raise DataError(f"coprime_loader: no shard holds a window of {seq_len + 1} tokens")
        ec = int(eligible.size)
        p = min(self.batches / float(self.ramp), 1.0)
        remaining = np.array([float(max(int(self.count[si]) - int(self.next[si]), 1)) if self.ready[si]
                              else float((int(self.num_tokens[si]) - 1) // seq_len) for si in eligible.tolist()])
        weights = np.power(remaining, 0.90 - 0.40 * p)
        total = float(weights.sum())
        if not np.isfinite(total) or total <= 0.0:
            weights, total = np.ones(ec), float(ec)
        probs = weights / total
        low = min(max(8, self.world_size), ec, rows_global)
        high = min(max(32, self.world_size * 8), ec, rows_global)
        mix = max(1, min(int(round(low + p * (high - low))), ec, rows_global))
        picked = self.rng.choice(ec, size=mix, replace=False, p=probs)
        shards = eligible[picked]
        share = probs[picked].copy()
        share /= share.sum()
        counts = np.ones(mix, dtype=np.int64)
        if rows_global > mix:
            counts += self.rng.multinomial(rows_global - mix, share).astype(np.int64)
        perm = self.rng.permutation(mix)
        buckets = []
        for si, cnt in zip(shards[perm].tolist(), counts[perm].tolist(), strict=True):
            b = self.take(int(si), seq_len, int(cnt))
            if len(b) > 1:
                b = [b[int(k)] for k in self.rng.permutation(len(b)).tolist()]
            if b:
                buckets.append(b)
        windows: list[tuple[int, int]] = []
        active = list(range(len(buckets)))
        while active:
            still = []
            for oi in self.rng.permutation(len(active)).tolist():
                bi = active[oi]
                if buckets[bi]:
                    windows.append(buckets[bi].pop())
                if buckets[bi]:
                    still.append(bi)
            active = still
        return windows

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[Tensor, Tensor]:
        rows = global_tokens // (self.world_size * grad_accum_steps) // seq_len
        if rows <= 0:
            raise ValueError(f"coprime_loader: {global_tokens} tokens over {self.world_size} ranks x "
                             f"{grad_accum_steps} micro-steps is less than one row of {seq_len}")
        if self.seq_len is None:
            self.seq_len = seq_len
        elif seq_len != self.seq_len:
            raise ValueError(f"coprime_loader: built for seq_len {self.seq_len}, asked for {seq_len}")
        local = self.global_windows(seq_len, rows * self.world_size)[self.rank::self.world_size]
        x = torch.empty((rows, seq_len), dtype=torch.int64)
        y = torch.empty((rows, seq_len), dtype=torch.int64)
        for i, (si, pos) in enumerate(local):
            window = torch.as_tensor(np.array(self.mmaps[si][pos : pos + seq_len + 1], dtype=np.int64))
            x[i], y[i] = window[:-1], window[1:]
        self.batches += 1
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class CoprimeLoader(Plugin):
    name = "coprime_loader"
    family = "data"
    summary = "Coprime-stride cursor per shard, shards sampled ∝ remaining^α each batch (PR #726/#1060)."
    sources = ("openai/parameter-golf#726", "openai/parameter-golf#1060")
    config = CoprimeLoaderConfig
    provides = ("train_loader",)
    test_settings = {"coprime_loader": {"ramp_batches": 4}}

    @classmethod
    def check_config(cls, cfg: CoprimeLoaderConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, ramp_batches=(1, STEPS))

    @hookimpl
    def pg_train_loader(self, run):
        return CoprimeStrideLoader(run.train_files, run.rank, run.world_size, run.device, self.cfg.ramp_batches)
