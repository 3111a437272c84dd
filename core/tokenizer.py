"""SentencePiece loading and the byte tables for exact bits-per-byte (the baseline's accounting).

A target token counts its piece's UTF-8 bytes (without the leading '▁'), plus one byte for that space unless the
previous token is a boundary (control/unknown/unused) token. `token_bytes` is the only place the project computes this
from tables. A plugin may supply other tables (`pg_byte_tables`) or per-position byte counts of the validation stream
(`pg_val_byte_counts`, a byte sidecar the ScoreSink then sums)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from torch import Tensor

from core.data import DataError


@dataclass
class ByteTables:
    """Per-token lookup tables, sized max(tokenizer vocab, model vocab)."""

    base_bytes: Tensor  # int16: UTF-8 bytes of the piece without its leading '▁' (1 for byte tokens)
    has_leading_space: Tensor  # bool: the piece starts with '▁'
    is_boundary: Tensor  # bool: control/unknown/unused (and ids past the tokenizer's vocab)

    def to(self, device: torch.device | str) -> ByteTables:
        return ByteTables(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


def check_position_bytes(counts: Tensor, tokens: Tensor, where: str) -> Tensor:
    """`counts` as int32 if it is a 1-D tensor of non-negative integers parallel to `tokens`, else a
    DataError naming `where` (who supplied it)."""
    if not isinstance(counts, Tensor) or counts.ndim != 1 or counts.dtype.is_floating_point \
            or counts.dtype == torch.bool:
        raise DataError(f"{where}: per-position byte counts must be a 1-D integer tensor")
    if counts.numel() != tokens.numel():
        raise DataError(f"{where}: {counts.numel()} per-position byte counts for {tokens.numel()} validation "
                        f"tokens (expected one per token)")
    counts = counts.to(torch.int32)
    if counts.numel() and int(counts.min()) < 0:
        raise DataError(f"{where}: negative per-position byte count")
    return counts


def load_tokenizer(path: str | Path, vocab_size: int) -> spm.SentencePieceProcessor:
    """Load a SentencePiece `.model` and check that its vocab size equals the model's `vocab_size`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"tokenizer {path} does not exist")
    if not path.is_file() or path.suffix != ".model":
        raise DataError(f"tokenizer {path} is not a SentencePiece .model file")
    sp = spm.SentencePieceProcessor()
    try:
        ok = sp.Load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError with multi-line text
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"tokenizer {path} failed to load as a SentencePiece model: {reason}") from None
    if ok is False:
        raise DataError(f"tokenizer {path} failed to load as a SentencePiece model")
    if int(sp.vocab_size()) != vocab_size:
        raise DataError(f"tokenizer {path.name} has vocab_size {int(sp.vocab_size())} but config vocab_size is "
                        f"{vocab_size} (VOCAB_SIZE)")
    return sp


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteTables:
    """The baseline's `build_sentencepiece_luts`, on the CPU."""
    sp_vocab = int(sp.vocab_size())
    size = max(sp_vocab, vocab_size)
    base_bytes = np.zeros(size, dtype=np.int16)
    has_leading_space = np.zeros(size, dtype=np.bool_)
    is_boundary = np.ones(size, dtype=np.bool_)
    for i in range(sp_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("▁"):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return ByteTables(torch.from_numpy(base_bytes), torch.from_numpy(has_leading_space), torch.from_numpy(is_boundary))


def token_bytes(prev_ids: Tensor, tgt_ids: Tensor, tables: ByteTables) -> Tensor:
    """Bytes of each target token given its predecessor (int32, the shape of `tgt_ids`)."""
    prev, tgt = prev_ids.to(torch.int64), tgt_ids.to(torch.int64)
    space = tables.has_leading_space[tgt] & ~tables.is_boundary[prev]
    return tables.base_bytes[tgt].to(torch.int32) + space.to(torch.int32)
