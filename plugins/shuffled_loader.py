"""Shuffled-sequence training loader (PR #1394 `ShuffledSequenceLoader`, used by PR #1493).

Rank r owns shards r::world_size (memory-mapped). Per shard: a random phase in [0, min(seq_len − 1,
ntok − seq_len − 1)] and a random permutation of the (ntok − 1 − phase)//seq_len sequence starts
phase + k·seq_len. Each row of a batch picks a shard with probability ∝ its remaining sequences and pops the
last start of that shard's list; the window is seq_len + 1 tokens (x, then y shifted by one). When every
shard is exhausted all shards are re-phased and re-permuted. One numpy PCG64 generator per rank drives all
of it, seeded with the rank alone as in the record (so the data order does not follow SEED), or with
(SEED, rank) when `follow_seed` is set. The core rebuilds the loader after the compile warm-up and the GPTQ
calibration builds a fresh one, as the record does, so both start from the same first batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.data import HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, DataError
from core.hookspecs import hookimpl
from core.registry import Plugin


@dataclass
class ShuffledLoaderConfig:
    follow_seed: bool = field(default=False, metadata={
        "help": "seed the generator with (SEED, rank) instead of the record's rank alone"})


def shard_token_count(path: Path) -> int:
    """Tokens in a shard, from its header (checked as the record's `_read_num_tokens`, plus the file size)."""
    header = np.fromfile(path, dtype="<i4", count=3)
    if header.size != 3 or int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
        raise DataError(f"{path}: bad shard header (expected magic {SHARD_MAGIC}, version {SHARD_VERSION})")
    n = int(header[2])
    if path.stat().st_size != HEADER_BYTES + 2 * n:
        raise DataError(f"{path}: header says {n} tokens but the file has {path.stat().st_size} bytes")
    return n


class ShuffledSequenceLoader:
    """`next_batch(global_tokens, seq_len, grad_accum_steps) -> (x, y)`, int64 (rows, seq_len) on `device`."""

    def __init__(self, files: list[Path], rank: int, world_size: int, seq_len: int, device: torch.device,
                 seed: int | tuple[int, int]):
        self.files = [Path(f) for f in files][rank::world_size]
        if not self.files:
            raise DataError(f"shuffled_loader: rank {rank} of {world_size} gets no train shard "
                            f"({len(files)} shards; need at least one per rank)")
        self.world_size = world_size
        self.seq_len = seq_len
        self.device = device
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.num_tokens = [shard_token_count(f) for f in self.files]
        self.mmaps = [np.memmap(f, mode="r", dtype="<u2", offset=HEADER_BYTES, shape=(n,))
                      for f, n in zip(self.files, self.num_tokens, strict=True)]
        self.starts: list[list[int]] = [[] for _ in self.files]
        for si in range(len(self.files)):
            self._reset_shard(si)

    def _reset_shard(self, si: int) -> None:
        n, seq_len = self.num_tokens[si], self.seq_len
        max_phase = min(seq_len - 1, max(0, n - seq_len - 1))
        phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0
        order = self.rng.permutation((n - 1 - phase) // seq_len)
        self.starts[si] = (phase + order * seq_len).tolist()

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[Tensor, Tensor]:
        if seq_len != self.seq_len:
            raise ValueError(f"shuffled_loader: built for seq_len {self.seq_len}, asked for {seq_len}")
        rows = global_tokens // (self.world_size * grad_accum_steps) // seq_len
        if rows <= 0:
            raise ValueError(f"shuffled_loader: {global_tokens} tokens over {self.world_size} ranks x "
                             f"{grad_accum_steps} micro-steps is less than one row of {seq_len}")
        remaining = np.array([len(s) for s in self.starts], dtype=np.float64)
        pinned = self.device.type == "cuda"  # page-locked: the copies below then leave the host free (the record's)
        xy = torch.empty((2, rows, seq_len), dtype=torch.int64, pin_memory=pinned)
        rows_of = xy.numpy()  # x and y written in place, row by row: no per-row tensors (host time is the step's)
        for bi in range(rows):
            total = remaining.sum()
            if total <= 0:
                for si in range(len(self.files)):
                    self._reset_shard(si)
                remaining = np.array([len(s) for s in self.starts], dtype=np.float64)
                total = remaining.sum()
            si = int(self.rng.choice(len(self.files), p=remaining / total))
            start = self.starts[si].pop()
            remaining[si] -= 1
            window = self.mmaps[si][start : start + seq_len + 1]
            rows_of[0, bi] = window[:-1]
            rows_of[1, bi] = window[1:]
        x, y = xy.to(self.device, non_blocking=True)  # one copy
        return x, y


class ShuffledLoader(Plugin):
    name = "shuffled_loader"
    family = "training"
    summary = "Per-rank shards, random phase + permuted sequence starts per shard, shard picked ∝ remaining."
    sources = ("openai/parameter-golf#1394", "openai/parameter-golf#1493")
    config = ShuffledLoaderConfig
    provides = ("train_loader",)
    test_settings = {"shuffled_loader": {"follow_seed": False}}

    @hookimpl
    def pg_train_loader(self, run):
        seed = (run.core.seed, run.rank) if self.cfg.follow_seed else run.rank
        return ShuffledSequenceLoader(run.train_files, run.rank, run.world_size, run.core.train_seq_len,
                                      run.device, seed)
