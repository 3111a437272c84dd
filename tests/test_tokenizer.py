"""Byte tables and exact byte accounting for BPB (core.tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from core.data import DataError
from core.tokenizer import ByteTables, build_byte_tables, load_tokenizer, token_bytes
from dataprep.build import train_tokenizer
from dataprep.corpus import generate_documents

VOCAB = 384

EXTRA_DOCS = [
    "  Leading spaces,   repeated   spaces\tand tabs.\nNew line and\n\nparagraphs.  ",
    "Digits 1234567890 and 3.14159; café naïve résumé façade jalapeño über.",
    "CJK 東京 北京 猫 犬 and emoji 🚀🙂☕ and rare ones: ʃ ʒ ŋ Ω ∑ ∫ 𝔘 ﬁ ①.",
    "Full-width ＡＢＣ１２３ and ellipsis … become ASCII under NFKC.",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, spm.SentencePieceProcessor]:
    out = tmp_path_factory.mktemp("tok") / "t"
    model = train_tokenizer(generate_documents(150, seed=11) + EXTRA_DOCS, VOCAB, out)
    return model, load_tokenizer(model, VOCAB)


def test_tables_follow_piece_types(tokenizer: tuple[Path, spm.SentencePieceProcessor]) -> None:
    _, sp = tokenizer
    tables = build_byte_tables(sp, VOCAB)
    assert tables.base_bytes.numel() == VOCAB
    assert tables.base_bytes.dtype == torch.int16
    assert tables.has_leading_space.dtype == torch.bool and tables.is_boundary.dtype == torch.bool
    for special in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert tables.is_boundary[special] and tables.base_bytes[special] == 0
        assert not tables.has_leading_space[special]
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256
    assert all(tables.base_bytes[i] == 1 and not tables.is_boundary[i] for i in byte_ids)
    space_ids = [i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("▁")]
    assert space_ids
    for i in space_ids:
        assert tables.has_leading_space[i]
        assert tables.base_bytes[i] == len(sp.id_to_piece(i)[1:].encode("utf-8"))
    multi = [i for i in range(sp.vocab_size()) if len(sp.id_to_piece(i).encode()) != len(sp.id_to_piece(i))]
    assert any(tables.base_bytes[i] >= 2 for i in multi if not sp.is_byte(i))  # e.g. 'é' counts 2 bytes


def test_tables_padded_to_model_vocab(tokenizer: tuple[Path, spm.SentencePieceProcessor]) -> None:
    _, sp = tokenizer
    tables = build_byte_tables(sp, VOCAB + 16)
    assert tables.base_bytes.numel() == VOCAB + 16
    assert tables.is_boundary[VOCAB:].all() and not tables.base_bytes[VOCAB:].any()
    moved = tables.to("cpu")
    assert isinstance(moved, ByteTables) and torch.equal(moved.base_bytes, tables.base_bytes)


def test_leading_space_rule() -> None:
    tables = ByteTables(
        base_bytes=torch.tensor([0, 3, 2, 1], dtype=torch.int16),
        has_leading_space=torch.tensor([False, True, False, False]),
        is_boundary=torch.tensor([True, False, False, False]),
    )
    prev = torch.tensor([0, 2, 1, 3, 0])
    tgt = torch.tensor([1, 1, 2, 3, 0])
    out = token_bytes(prev, tgt, tables)
    assert out.tolist() == [3, 4, 2, 1, 0]  # space counted unless the previous token is a boundary
    assert out.dtype in (torch.int32, torch.int64)
    assert token_bytes(prev.reshape(1, 5), tgt.reshape(1, 5), tables).shape == (1, 5)


def test_token_bytes_sum_equals_decoded_utf8(tokenizer: tuple[Path, spm.SentencePieceProcessor]) -> None:
    """Bytes of an encoded multi-document stream (BOS before each doc) equal its decoded UTF-8 size."""
    _, sp = tokenizer
    tables = build_byte_tables(sp, VOCAB)
    docs = EXTRA_DOCS + generate_documents(40, seed=99)
    encoded = [sp.encode(d) for d in docs]
    stream = torch.tensor([t for ids in encoded for t in [1, *ids]], dtype=torch.int64)
    counted = int(token_bytes(stream[:-1], stream[1:], tables).sum())
    expected = sum(len(sp.decode(ids).encode("utf-8")) for ids in encoded)
    assert counted == expected
    # the stream really exercises byte fallback and leading-space tokens (after a non-boundary)
    assert any(sp.is_byte(t) for t in stream.tolist())
    assert bool((tables.has_leading_space[stream[1:]] & ~tables.is_boundary[stream[:-1]]).any())
    # the uint16 storage path gives the same answer
    s16 = stream.to(torch.uint16)
    assert int(token_bytes(s16[:-1], s16[1:], tables).sum()) == expected


def test_load_tokenizer_errors(tokenizer: tuple[Path, spm.SentencePieceProcessor], tmp_path: Path) -> None:
    model, _ = tokenizer
    with pytest.raises(DataError, match="does not exist") as e:
        load_tokenizer(tmp_path / "missing.model", VOCAB)
    assert str(tmp_path / "missing.model") in str(e.value)
    wrong = tmp_path / "tok.txt"
    wrong.write_text("hello")
    with pytest.raises(DataError, match=r"not a SentencePiece \.model file"):
        load_tokenizer(wrong, VOCAB)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00\xffnot a model")
    with pytest.raises(DataError) as e:
        load_tokenizer(garbage, VOCAB)
    assert "failed to load" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError) as e:
        load_tokenizer(model, 1024)
    assert str(e.value) == (
        f"tokenizer {model.name} has vocab_size {VOCAB} but config vocab_size is 1024 (VOCAB_SIZE)"
    )
