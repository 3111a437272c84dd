"""The challenge's token shard format, shard discovery, and the baseline's training/validation loaders.

A shard is a 256-int32 little-endian header (magic 20240520, version 1, num_tokens, zeros) followed by num_tokens
little-endian uint16 tokens. The loaders reproduce `train_gpt.py` token order exactly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class DataError(ValueError):
    """A data file or directory is missing or malformed (the message is one line and names the path)."""


def read_shard(path: str | Path, vocab_size: int | None = None) -> Tensor:
    """Tokens of one shard as a 1-D uint16 tensor (header checked like the baseline's `load_data_shard`;
    with `vocab_size`, every id checked below it)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"shard {path} does not exist") from None
    if not path.is_file():
        raise DataError(f"shard {path} is not a regular file")
    if size < HEADER_BYTES:
        raise DataError(f"{path}: too short for a shard: {size} bytes, expected a {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, num_tokens = int(header[0]), int(header[1]), int(header[2])
    if magic != SHARD_MAGIC:
        raise DataError(f"{path}: bad shard header: magic {magic}, expected {SHARD_MAGIC}")
    if version != SHARD_VERSION:
        raise DataError(f"{path}: bad shard header: version {version}, expected {SHARD_VERSION}")
    if num_tokens < 0:
        raise DataError(f"{path}: bad shard header: num_tokens {num_tokens}, expected >= 0")
    expected = HEADER_BYTES + num_tokens * 2  # uint16 tokens
    if size != expected:
        what = "truncated shard" if size < expected else "shard has trailing bytes"
        raise DataError(f"{path}: {what}: header says {num_tokens} tokens ({expected} bytes) but file has {size} bytes")
    tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    if vocab_size is not None and tokens.size and int(tokens.max()) >= vocab_size:
        raise DataError(f"{path}: token id {int(tokens.max())} >= vocab size {vocab_size} (VOCAB_SIZE / "
                        "core.vocab_size): the shards were built for a larger vocabulary")
    return torch.from_numpy(tokens.astype(np.uint16, copy=False))


def data_directory(path: str | Path) -> Path:
    """`path` as a Path; a DataError unless it is an existing directory."""
    path = Path(path)
    if not path.is_dir():
        why = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"data path {path} {why} (DATA_PATH / core.data_path)")
    return path


def shard_files(data_dir: str | Path, split: str) -> list[Path]:
    """The sorted `fineweb_{split}_<digits>.bin` files of `data_dir` (a DataError if there are none); byte
    sidecars beside them (`fineweb_val_bytes_*.bin`, CaseOps) are not token shards."""
    data_dir, prefix = data_directory(data_dir), f"fineweb_{split}_"
    files = sorted((p for p in data_dir.glob(f"{prefix}*.bin") if p.is_file() and p.stem[len(prefix):].isdigit()),
                   key=lambda p: p.name)
    if not files:
        raise DataError(f"no {split} shards matching {prefix}*.bin in {data_dir} (expected the challenge's shard "
                        "files; build some with 'pgolf data build')")
    return files


class TokenStream:
    """Reads shards in order and wraps around forever (the baseline's deterministic streaming)."""

    def __init__(self, files: Sequence[str | Path], vocab_size: int | None = None) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("TokenStream needs at least one shard file, got none")
        self.vocab_size, self.file_idx, self.pos = vocab_size, 0, 0
        self.tokens = read_shard(self.files[0], vocab_size)

    def take(self, n: int) -> Tensor:
        """The next `n` tokens of the stream (crossing shard boundaries and wrapping as needed)."""
        chunks: list[Tensor] = []
        remaining, empty_in_a_row = n, 0
        while remaining > 0:
            avail = self.tokens.numel() - self.pos
            if avail <= 0:
                empty_in_a_row += 1
                if empty_in_a_row > len(self.files):
                    raise DataError(f"all {len(self.files)} shards are empty (first: {self.files[0]})")
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = read_shard(self.files[self.file_idx], self.vocab_size), 0
                continue
            empty_in_a_row = 0
            k = min(remaining, avail)
            chunks.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            remaining -= k
        if not chunks:
            return self.tokens[:0]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class DistributedTokenLoader:
    """Each call takes one contiguous chunk of the stream and gives each rank its own span (+1 token)."""

    def __init__(self, files: Sequence[str | Path], rank: int, world_size: int, device: torch.device,
                 vocab_size: int | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world_size {world_size}")
        self.rank, self.world_size, self.device = rank, world_size, device
        self.stream = TokenStream(files, vocab_size)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[Tensor, Tensor]:
        """(x, y) int64 of shape (local_tokens // seq_len, seq_len) for this rank, y shifted by one."""
        local_tokens = global_tokens // (self.world_size * grad_accum_steps)
        if local_tokens <= 0 or local_tokens % seq_len != 0:
            raise ValueError(f"core.train_batch_tokens {global_tokens} / (world_size {self.world_size} * grad_accum "
                             f"{grad_accum_steps}) = {local_tokens} per rank: not a multiple of seq_len {seq_len}")
        span = local_tokens + 1
        local = self.stream.take(span * self.world_size)[self.rank * span : (self.rank + 1) * span].to(torch.int64)
        local = local.pin_memory() if self.device.type == "cuda" else local  # else the copies below block the host
        x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_validation_tokens(files: Sequence[str | Path], seq_len: int, vocab_size: int | None = None) -> Tensor:
    """All validation tokens, truncated to a multiple of `seq_len` plus one (uint16, 1-D)."""
    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no validation shard files given (expected fineweb_val_*.bin)")
    tokens = torch.cat([read_shard(p, vocab_size) for p in paths]).contiguous()
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    if usable <= 0:
        raise DataError(f"validation split in {paths[0].parent} is too short: {tokens.numel()} tokens in "
                        f"{len(paths)} shard(s), need at least {seq_len + 1} for seq_len {seq_len}")
    return tokens[: usable + 1]
