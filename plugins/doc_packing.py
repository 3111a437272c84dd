"""Document-packing training loader (PR #1530 `DocumentPackingLoader`, record 2026-04-10_VarLenAttn).

Shards are read in order (wrapping around). A cursor starts at the shard's first BOS (`core.bos_id`); each
batch takes one contiguous span of W·(n + 1) tokens (n = tokens per rank per micro-step) and rank r its
r-th (n + 1)-token slice: x = slice[:-1], y = slice[1:]. When the span does not fit in the rest of the
shard, the loader moves to the next shard (the tail is skipped, as in the record). Documents start at the
BOS positions of x (and at 0 when x does not begin with one); each is cut into segments of at most
`train_seq_len` tokens counted from its start. The segments are the batch's boundaries: `doc_ids` (one id
per segment) and `cu_seqlens`, int32 segment starts then n, padded with n to a multiple of
`cu_bucket_size` entries so compiled graphs see a few fixed sizes. A new size would be a recompile, so the
compiled warm-up takes a step at every size a batch can have (`warm_batches`, random tokens): from one
document's segments up to `max_docs` documents (0: the densest span of the first shard, plus one bucket).
Where the attention reads only doc_ids (FlexAttention without FA3, the dense CPU mask) cu_seqlens is unused but
still a guarded input: `dynamic_cu` marks its length dynamic (`maybe_mark_dynamic`: a kernel that needs it
static still specializes), so one graph per mode serves every size instead of one per (mode, size).
x, y and doc_ids are one flat (1, n) row as in the record; `flat = false` packs (n / seq_len, seq_len) rows
instead, every row start also a boundary. The record's prefetch threads (speed only) are not ported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.data import DataError, read_shard
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class DocPackingConfig:
    cu_bucket_size: int = field(default=64, metadata={"help": "cu_seqlens is padded to a multiple of this"})
    flat: bool = field(default=True, metadata={
        "help": "one flat (1, n) row per micro-step as the record; false: (n/seq_len, seq_len) rows"})
    prewarm: bool = field(default=True, metadata={"help": "compile every cu_seqlens size in the warm-up"})
    max_docs: int = field(default=0, metadata={
        "help": "most documents in a rank's micro-batch, for the pre-warm (0: first shard's densest span + a bucket)"})
    dynamic_cu: bool = field(default=False, metadata={
        "help": "cu_seqlens' length a dynamic dim: one graph per mode where attention reads only doc_ids (flex, CPU)"})

    def __post_init__(self) -> None:
        if self.cu_bucket_size < 1:
            raise ValueError(f"doc_packing.cu_bucket_size: expected an integer >= 1, got {self.cu_bucket_size}")
        if self.max_docs < 0:
            raise ValueError(f"doc_packing.max_docs: expected an integer >= 0 (0: measured), got {self.max_docs}")


def segment_starts(doc_starts: list[int], total: int, max_len: int, row_len: int | None = None) -> list[int]:
    """Starts of the segments of `total` tokens: documents begin at `doc_starts` (and at 0), rows at multiples
    of `row_len`, and each piece is cut every `max_len` tokens from its start (the record's `_build_cu_seqlens`
    with rows added)."""
    cuts = {0, *doc_starts}
    if row_len:
        cuts.update(range(0, total, row_len))
    bounds = sorted(c for c in cuts if 0 <= c < total)
    out: list[int] = []
    for start, end in zip(bounds, [*bounds[1:], total], strict=True):
        out.extend(range(start, end, max_len) if max_len > 0 else [start])
    return out


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; to CUDA through page-locked memory, so the copy is asynchronous and the host runs ahead (the
    record's loader pins its batches; a pageable copy waits for the stream's queued work)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def pack_boundaries(starts: list[int], total: int, bucket: int, device: torch.device | None = None
                    ) -> tuple[Tensor, Tensor]:
    """(doc_ids int64 (total,), cu_seqlens int32 padded with `total` to a multiple of `bucket` entries)."""
    n_cu = len(starts) + 1
    cu = torch.full((-(-n_cu // bucket) * bucket,), total, dtype=torch.int32)
    cu[: len(starts)] = torch.tensor(starts, dtype=torch.int32)
    marks = torch.zeros(total, dtype=torch.int64)
    marks[torch.tensor(starts[1:], dtype=torch.int64)] = 1
    return torch.cumsum(marks, 0).to(device), cu.to(device)


class DocumentPackingLoader:
    """`next_batch(global_tokens, seq_len, grad_accum_steps) -> (x, y, doc_ids, cu_seqlens)` on `device`."""

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device, bos_id: int,
                 vocab_size: int | None = None, cu_bucket_size: int = 64, flat: bool = True, max_docs: int = 0,
                 dynamic_cu: bool = False):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("doc_packing: no train shards")
        self.rank, self.world_size, self.device = rank, world_size, device
        self.bos_id, self.vocab_size, self.bucket, self.flat = bos_id, vocab_size, cu_bucket_size, flat
        self.max_docs, self.dynamic_cu = max_docs, dynamic_cu
        self.file_idx = -1
        self._advance_shard()

    def _advance_shard(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = read_shard(self.files[self.file_idx], self.vocab_size)
        bos = (self.tokens == self.bos_id).nonzero(as_tuple=True)[0].numpy().astype(np.int64)
        self.bos_idx = bos if bos.size else np.zeros(1, dtype=np.int64)
        self.cursor = int(self.bos_idx[0])

    def doc_starts(self, local_start: int, n: int) -> list[int]:
        lo, hi = np.searchsorted(self.bos_idx, [local_start, local_start + n], side="left")
        return (self.bos_idx[lo:hi] - local_start).tolist()

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = global_tokens // (self.world_size * grad_accum_steps)
        if n <= 0 or (not self.flat and n % seq_len):
            raise ValueError(f"doc_packing: {global_tokens} tokens over {self.world_size} ranks x {grad_accum_steps} "
                             f"micro-steps = {n} per rank" + ("" if self.flat else f", not a multiple of {seq_len}"))
        span = n + 1
        tried = 0
        while self.cursor + span * self.world_size > self.tokens.numel():
            tried += 1
            if tried > len(self.files):
                raise DataError(f"doc_packing: no train shard holds a span of {span * self.world_size} tokens "
                                f"after its first BOS (first: {self.files[0]})")
            self._advance_shard()
        local_start = self.cursor + self.rank * span
        buf = self.tokens[local_start : local_start + span].to(torch.int64)
        starts = segment_starts(self.doc_starts(local_start, n), n, seq_len, None if self.flat else seq_len)
        doc_ids, cu = pack_boundaries(starts, n, self.bucket)
        self.cursor += span * self.world_size
        shape = (1, n) if self.flat else (n // seq_len, seq_len)
        x, y, ids = buf[:-1].view(shape), buf[1:].view(shape), doc_ids.view(shape)
        return self._marked(tuple(to_device(t, self.device) for t in (x, y, ids, cu)))  # type: ignore[return-value]

    def _marked(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self.dynamic_cu:  # host-side, on the tensor the compiled step receives
            torch._dynamo.maybe_mark_dynamic(batch[3], 0)
        return batch


    def densest(self, n: int) -> int:
        """Most BOS positions in any n-token span of the current shard."""
        bos = self.bos_idx
        return int((np.searchsorted(bos, bos + n, side="left") - np.arange(bos.size)).max()) if bos.size else 0

    def cu_sizes(self, n: int, seq_len: int) -> list[int]:
        """Every padded cu_seqlens length a batch of n tokens can have: from one document (cut every seq_len)
        to max_docs documents (cut every seq_len, and at row starts unless flat)."""
        docs = self.max_docs or self.densest(n) + self.bucket
        pieces = -(-n // seq_len)
        most = min(n, docs + 1 + pieces + (0 if self.flat else pieces))
        lo, hi = -(-(pieces + 1) // self.bucket), -(-(most + 1) // self.bucket)
        return [k * self.bucket for k in range(lo, hi + 1)]

    def warm_batches(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> list[tuple[Tensor, ...]]:
        """One batch of random tokens per `cu_sizes` length (evenly spaced segments), for the compiled warm-up."""
        n = global_tokens // (self.world_size * grad_accum_steps)
        gen = torch.Generator().manual_seed(0)
        shape = (1, n) if self.flat else (n // seq_len, seq_len)
        out = []
        for size in self.cu_sizes(n, seq_len):
            m = min(size - 1, n)  # segments: m + 1 entries pad to `size`
            starts = sorted({(i * n) // m for i in range(m)})
            doc_ids, cu = pack_boundaries(starts, n, self.bucket)
            x, y = torch.randint(0, self.vocab_size or 2, (2, *shape), generator=gen)
            out.append(self._marked(tuple(t.to(self.device) for t in (x, y, doc_ids.view(shape), cu))))
        return out


class DocPacking(Plugin):
    name = "doc_packing"
    family = "data"
    summary = "Pack documents (split at BOS, ≤ train_seq_len segments) into rows with cu_seqlens boundaries (PR #1530)."
    sources = ("openai/parameter-golf#1530",)
    config = DocPackingConfig
    provides = ("train_loader",)
    test_settings = {"doc_packing": {"cu_bucket_size": 16}}

    @classmethod
    def check_config(cls, cfg: DocPackingConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, cu_bucket_size=(1, core.train_batch_tokens),
                            max_docs=(0, core.train_batch_tokens))  # no batch holds more documents than tokens

    @hookimpl
    def pg_train_loader(self, run):
        loader = DocumentPackingLoader(run.train_files, run.rank, run.world_size, run.device, run.core.bos_id,
                                       run.core.vocab_size, self.cfg.cu_bucket_size, self.cfg.flat, self.cfg.max_docs,
                                       self.cfg.dynamic_cu)
        if not self.cfg.prewarm:
            loader.warm_batches = None  # the core's warm-up skips a loader with no warm_batches
        return loader
