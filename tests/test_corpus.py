"""The embedded default corpus: determinism, shape and learnable structure (dataprep.corpus)."""

from __future__ import annotations

import math
import re
import time
from collections import Counter

import pytest

from dataprep.corpus import generate_documents


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return generate_documents(400, seed=5)


def test_deterministic_per_seed_and_prefix_stable(docs: list[str]) -> None:
    assert generate_documents(400, seed=5) == docs
    assert generate_documents(50, seed=5) == docs[:50]
    other = generate_documents(50, seed=6)
    assert other != docs[:50]
    assert sum(a == b for a, b in zip(other, docs, strict=False)) == 0
    assert generate_documents(0, seed=5) == []
    with pytest.raises(ValueError):
        generate_documents(-1, seed=5)


def test_document_lengths_vary(docs: list[str]) -> None:
    words = [len(d.split()) for d in docs]
    assert min(words) >= 40 and max(words) <= 700
    assert sum(w < 120 for w in words) > 40 and sum(w > 250 for w in words) > 40
    assert len(set(docs)) == len(docs)


def test_non_ascii_and_formats_present(docs: list[str]) -> None:
    text = "\n".join(docs)
    assert re.search(r"[éöüøó]", text) and re.search(r"[\u4e00-\u9fff]", text)
    assert any(ord(c) > 0xFFFF for c in text)  # emoji: 4-byte UTF-8
    assert "×" in text and "÷" in text
    assert re.search(r"^1\. ", text, re.M) and re.search(r"^2\. ", text, re.M)
    assert re.search(r'^"[^"\n]+\?" asked ', text, re.M)
    assert any(d.count("\n\n") >= 2 for d in docs)


def test_arithmetic_is_correct(docs: list[str]) -> None:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b,
           "÷": lambda a, b: a // b}
    lines = re.findall(r"^(\d+) ([-+×÷]) (\d+) = (\d+)$", "\n".join(docs), re.M)
    assert len(lines) > 100
    for a, op, b, c in lines:
        assert ops[op](int(a), int(b)) == int(c), (a, op, b, c)
        if op == "÷":
            assert int(a) % int(b) == 0
    stories = re.findall(r"had (\d+) (\w+)\. Then \w+ found (\d+) more\. Now \w+ ha(?:s|ve) (\d+) (\w+)\.",
                         "\n".join(docs))
    assert stories and all(int(a) + int(b) == int(c) and n1 == n2 for a, n1, b, c, n2 in stories)


def test_agreement(docs: list[str]) -> None:
    text = "\n".join(docs)
    assert not re.search(r"\b(?:She|He|she|he) (?:are|were|have)\b", text)
    assert not re.search(r"\b(?:They|they) (?:is|was|has)\b", text)
    assert not re.search(r"\ba [aeiou]", text)


def test_topic_entity_repeats_within_documents(docs: list[str]) -> None:
    repeated = 0
    for d in docs:
        names = re.findall(r"\b[A-Z][a-z]+\b", d)
        repeated += Counter(names).most_common(1)[0][1] >= 3 if names else 0
    assert repeated > 0.8 * len(docs)


def test_has_learnable_local_structure(docs: list[str]) -> None:
    """Next-word entropy given the previous word is far below the unigram entropy."""
    words = " ".join(docs).split()
    uni = Counter(words)
    bi = Counter(zip(words, words[1:], strict=False))
    n = len(words)
    h_uni = -sum(c / n * math.log2(c / n) for c in uni.values())
    h_bi = -sum(c / (n - 1) * math.log2(c / uni[a]) for (a, _), c in bi.items())
    assert h_uni > 7.0
    assert h_bi < h_uni - 3.0


def test_fast_enough() -> None:
    t0 = time.perf_counter()
    docs = generate_documents(3000, seed=1)
    elapsed = time.perf_counter() - t0
    size = sum(len(d.encode("utf-8")) for d in docs)
    assert size > 2_000_000
    assert size / elapsed > 1_000_000  # bytes per second (typically ~15 MB/s)
