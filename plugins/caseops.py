"""caseops: the lossless CaseOps text transform with its byte sidecar (PR #1729; PR #1855's record),
techniques §1.2.

Text is rewritten before tokenizer training and tokenization (`lossless_caps_caseops_v1`, an alias of
`lossless_caps_v2`): over maximal ASCII letter runs, lowercase stays; TitleCase -> TITLE + lower;
ALLCAPS (2+ letters) -> ALLCAPS + lower; other mixed case -> [TITLE] + lower with CAPNEXT before each
later capital; a literal operator character is escaped with ESC. The four operators (U+E001..U+E004) are
reserved SentencePiece pieces. BPB must count the ORIGINAL text's bytes: the data builder writes a uint16
sidecar `fineweb_val_bytes_<n>.bin` parallel to the validation tokens (each token's original UTF-8 bytes,
operators 0, BOS 0), and this plugin hands it to scoring (`pg_val_byte_counts`); its byte tables
(`pg_byte_tables`) give the operators 0 bytes for streams without a sidecar. Build the data with
`dataprep.build.build_dataset(..., transform=CaseOpsTransform())` (the `pg_text_transform` answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.data import DataError, read_shard
from core.hookspecs import hookimpl
from core.registry import Plugin
from core.tokenizer import ByteTables, build_byte_tables

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
SIDECAR_PATTERN = "fineweb_val_bytes_*.bin"


class CaseOpsError(ValueError):
    """A transformed string that is not a valid CaseOps encoding."""


def _is_letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def encode_caseops(text: str) -> str:
    """The CaseOps form of `text` (lossless: `decode_caseops(encode_caseops(t)) == t`)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in OPERATORS:
            out += (ESC, ch)
            i += 1
            continue
        if not _is_letter(ch):
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < n and _is_letter(text[j]):
            j += 1
        word, lower = text[i:j], text[i:j].lower()
        if word == lower:
            out.append(word)
        elif len(word) >= 2 and word == word.upper():
            out += (ALLCAPS, lower)
        elif word[0] != lower[0] and len(word) >= 2 and word[1:] == lower[1:]:
            out += (TITLE, lower)
        else:
            if word[0] != lower[0]:
                out.append(TITLE)
            out.append(lower[0])
            for orig, low in zip(word[1:], lower[1:], strict=True):
                if orig != low:
                    out.append(CAPNEXT)
                out.append(low)
        i = j
    return "".join(out)


def decode_caseops(text: str) -> str:
    """The original text of a CaseOps string; a CaseOpsError for a malformed one."""
    out: list[str] = []
    escape = capnext = allcaps = in_word = False
    mode: str | None = None  # a TITLE/ALLCAPS waiting for the first letter of a word
    for ch in text:
        if escape:
            if mode is not None and not _is_letter(ch):
                raise CaseOpsError("escaped operator cannot start a capitalised word")
            out.append(ch)
            escape = False
            in_word = _is_letter(ch)
            allcaps = allcaps and in_word
            continue
        if ch == ESC:
            escape = True
        elif ch in (TITLE, ALLCAPS):
            if mode is not None or in_word or capnext:
                raise CaseOpsError(f"misplaced {'TITLE' if ch == TITLE else 'ALLCAPS'} operator")
            mode = ch
        elif ch == CAPNEXT:
            if capnext:
                raise CaseOpsError("two CAPNEXT operators in a row")
            capnext = True
        elif _is_letter(ch):
            if not in_word:
                upper = mode is not None or capnext
                allcaps, in_word = mode == ALLCAPS, True
            else:
                if mode is not None:
                    raise CaseOpsError("capitalisation operator inside a word")
                upper = allcaps or capnext
            out.append(ch.upper() if upper else ch)
            mode, capnext = None, False
        else:
            if mode is not None or capnext:
                raise CaseOpsError("capitalisation operator not followed by an ASCII letter")
            out.append(ch)
            in_word = allcaps = False
    if escape or mode is not None or capnext:
        raise CaseOpsError("dangling operator at the end of the text")
    return "".join(out)


def original_bytes(surfaces: Iterable[str]) -> list[int]:
    """UTF-8 bytes of the original text behind each consecutive surface of a CaseOps string: operators
    count 0, an escaped operator its own 3 bytes, a letter 1 (case does not change ASCII sizes)."""
    counts: list[int] = []
    escape = False
    for surface in surfaces:
        n = 0
        for ch in surface:
            if escape:
                n += len(ch.encode("utf-8"))
                escape = False
            elif ch == ESC:
                escape = True
            elif ch not in OPERATORS:
                n += len(ch.encode("utf-8"))
        counts.append(n)
    if escape:
        raise CaseOpsError("dangling ESC at the end of the pieces")
    return counts


class CaseOpsTransform:
    """The `dataprep.build.TextTransform` of CaseOps v1."""

    name = "lossless_caps_caseops_v1"
    reserved_symbols = OPERATORS

    def encode(self, text: str) -> str:
        return encode_caseops(text)

    def decode(self, text: str) -> str:
        return decode_caseops(text)

    def original_bytes(self, surfaces: Iterable[str]) -> list[int]:
        return original_bytes(surfaces)


def operator_ids(sp) -> list[int]:
    """Token ids of the four operators; a DataError when the tokenizer does not reserve them."""
    ids = []
    for sym, label in zip(OPERATORS, ("TITLE", "ALLCAPS", "CAPNEXT", "ESC"), strict=True):
        i = int(sp.piece_to_id(sym))
        if sp.id_to_piece(i) != sym:
            raise DataError(f"caseops: the tokenizer has no piece for the {label} operator U+{ord(sym):04X} "
                            f"(build the data with the caseops transform)")
        ids.append(i)
    return ids


def load_sidecar(data_dir: Path, n_tokens: int) -> torch.Tensor:
    """The first `n_tokens` entries of the byte sidecar shards in `data_dir` (as PR #1855's
    `load_validation_byte_sidecar`)."""
    files = sorted(Path(data_dir).glob(SIDECAR_PATTERN))
    if not files:
        raise DataError(f"caseops: no byte sidecar {SIDECAR_PATTERN} in {data_dir} (build the dataset with "
                        f"the caseops transform)")
    counts = torch.cat([read_shard(f) for f in files])
    if counts.numel() < n_tokens:
        raise DataError(f"caseops: byte sidecar in {data_dir} has {counts.numel()} entries, fewer than the "
                        f"{n_tokens} validation tokens")
    return counts[:n_tokens].to(torch.int32)


@dataclass
class CaseOpsConfig:
    sidecar: bool = field(default=True, metadata={
        "help": "score BPB on the byte sidecar (the record); false: the byte tables (operators 0 bytes)"})


class CaseOps(Plugin):
    name = "caseops"
    family = "data"
    summary = "CaseOps lossless case transform; BPB counts the original text's bytes through the byte sidecar."
    sources = ("openai/parameter-golf#1729", "openai/parameter-golf#1855")
    config = CaseOpsConfig
    test_settings: dict = {}
    test_data = "caseops"  # the plugin matrix runs it on a dataset built with its transform

    @hookimpl
    def pg_text_transform(self, config) -> CaseOpsTransform:
        return CaseOpsTransform()

    @hookimpl
    def pg_byte_tables(self, run, tokenizer) -> ByteTables:
        tables = build_byte_tables(tokenizer, run.core.vocab_size)
        for i in operator_ids(tokenizer):
            tables.base_bytes[i] = 0
            tables.has_leading_space[i] = False
        return tables

    @hookimpl
    def pg_val_byte_counts(self, run, tokens) -> torch.Tensor | None:
        if not self.cfg.sidecar:
            return None
        counts = load_sidecar(run.data_dir, tokens.numel())
        bos = tokens.to(torch.int64) == run.core.bos_id
        if bool((counts[bos] != 0).any()):
            raise DataError(f"caseops: byte sidecar in {run.data_dir} is not aligned with the validation "
                            f"tokens (a BOS position has a non-zero byte count)")
        return counts
