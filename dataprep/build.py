"""Build challenge-format datasets: a SentencePiece BPE tokenizer plus train/val token shards.

Layout of a built dataset directory (the challenge's names):
`tokenizer/fineweb_{V}_bpe.model` (+ `.vocab`), `fineweb_train_000000.bin ...`, `fineweb_val_000000.bin`
and `dataset.json`. The first documents go to val, the rest to train; each document is encoded and
prefixed with BOS (id 1), no EOS. Builds happen in a temporary directory that is renamed at the end.
With a text transform (a plugin's `pg_text_transform`, e.g. CaseOps), documents are transformed before
tokenizer training and encoding, its reserved symbols are user-defined pieces, and a byte sidecar
`fineweb_val_bytes_<n>.bin` (uint16, parallel to the val tokens, 0 for BOS) holds each val token's bytes
of the original text.
`ensure_default_data` builds and caches the embedded default corpus (`dataprep.corpus`).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import sentencepiece as spm

from core.data import HEADER_INTS, SHARD_MAGIC, SHARD_VERSION, DataError

BOS_ID = 1
SPECIAL_PIECES = 4  # pad, bos, eos, unk
BYTE_PIECES = 256
MIN_VOCAB = SPECIAL_PIECES + BYTE_PIECES + 8
MAX_VOCAB = 1 << 16  # token ids are stored as uint16
CHARACTER_COVERAGE = 0.9995
MIN_CHARACTER_COVERAGE = 0.98  # sentencepiece's lower limit
TOKENIZER_MAX_BYTES = 100_000_000  # text used to train the tokenizer (the first train documents)
HUGE_FILE_BYTES = 1 << 20  # text files larger than this are split on blank lines into documents
SPLIT_DOC_CHARS = 2000  # ... of about this many characters
ENCODE_BATCH_DOCS = 512
MAX_SENTENCE_CHARS = 16_000
DOCUMENT_RULE = ("documents are: one per text file, one per line of a .jsonl file; a text file over 1 MB is split "
                 "at blank lines, one without blank lines is one document")

# the embedded default corpus (bump DEFAULT_VERSION whenever these or dataprep.corpus change)
DEFAULT_VERSION = "v1"
DEFAULT_SEED = 1337
DEFAULT_VAL_DOCS = 500
DEFAULT_TRAIN_DOCS = 7500


class TextTransform(Protocol):
    """A lossless text transform applied before tokenizer training and tokenization (e.g. CaseOps).

    `reserved_symbols`: pieces the tokenizer must keep whole (SentencePiece user-defined symbols);
    `encode`/`decode`: the transform and its inverse (decode(encode(t)) == t);
    `original_bytes(surfaces)`: for consecutive surface strings of the transformed text (SentencePiece
    piece surfaces, in order), the UTF-8 bytes of the original text each one stands for.
    """

    name: str
    reserved_symbols: tuple[str, ...]

    def encode(self, text: str) -> str: ...

    def decode(self, text: str) -> str: ...

    def original_bytes(self, surfaces: Iterable[str]) -> list[int]: ...


def write_shard(path: str | Path, tokens: np.ndarray | Sequence[int]) -> None:
    """Write `tokens` (integers in [0, 65535]) as a shard; atomic (temp file in the same dir + rename)."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise DataError(f"{path}: shard tokens must be 1-D, got shape {tuple(arr.shape)}")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise DataError(f"{path}: shard tokens must be integers, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 0xFFFF:
            raise DataError(f"{path}: token ids must fit uint16 [0, 65535], found range [{lo}, {hi}]")
    if arr.size > np.iinfo(np.int32).max:
        raise DataError(f"{path}: {arr.size} tokens do not fit one shard (int32 count)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, arr.size
    body = arr.astype("<u2", copy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")  # mode per umask
    try:
        with open(tmp, "xb") as f:
            f.write(header.tobytes())
            f.write(body.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class BuildInfo:
    """What `build_dataset` wrote."""

    out_dir: Path
    tokenizer_path: Path
    vocab_size: int
    source: str
    train_files: list[Path] = field(default_factory=list)
    val_files: list[Path] = field(default_factory=list)
    train_docs: int = 0
    val_docs: int = 0
    train_tokens: int = 0
    val_tokens: int = 0
    character_coverage: float | None = CHARACTER_COVERAGE  # None: a given tokenizer
    seconds: float = 0.0


# --- tokenizer -------------------------------------------------------------------------------------


def _check_vocab(vocab_size: int) -> None:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(
            f"vocab_size {vocab_size} is out of range: a byte-fallback BPE needs at least {MIN_VOCAB} "
            f"({SPECIAL_PIECES} special + {BYTE_PIECES} byte pieces + some characters) "
            f"and at most {MAX_VOCAB}"
        )


def _sentences(texts: Iterable[str], max_bytes: int) -> list[str]:
    """Non-empty lines of `texts` (long lines chunked), up to about `max_bytes` of UTF-8."""
    out: list[str] = []
    total = 0
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            for i in range(0, len(line), MAX_SENTENCE_CHARS):
                chunk = line[i : i + MAX_SENTENCE_CHARS]
                out.append(chunk)
                total += len(chunk) + 1
        if total >= max_bytes:
            break
    return out


def _character_coverage(sentences: list[str], vocab_size: int) -> float:
    """CHARACTER_COVERAGE unless the characters it covers would fill more than half of the free slots."""
    counts: Counter[str] = Counter()
    for s in sentences:
        counts.update(s)
    counts.pop(" ", None)
    counts["▁"] = sum(len(s.split()) for s in sentences)  # one meta space per word (an estimate)
    freqs = sorted(counts.values(), reverse=True)
    total = sum(freqs)
    if total == 0:
        return CHARACTER_COVERAGE
    max_chars = max(1, (vocab_size - SPECIAL_PIECES - BYTE_PIECES) // 2)
    acc = 0
    for i, f in enumerate(freqs):
        if acc / total >= CHARACTER_COVERAGE:
            return CHARACTER_COVERAGE  # covered with i <= max_chars characters
        if i == max_chars:
            # sentencepiece adds characters while the covered fraction is below the target: stop at i
            prev = (acc - freqs[i - 1]) / total
            return float(min(CHARACTER_COVERAGE, max(MIN_CHARACTER_COVERAGE, (prev + acc / total) / 2)))
        acc += f
    return CHARACTER_COVERAGE


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_prefix: Path,
    max_bytes: int = TOKENIZER_MAX_BYTES,
    seed: int = 0,
) -> Path:
    """Train a SentencePiece BPE with the challenge's settings; writes `out_prefix`.model/.vocab.

    Exactly `vocab_size` pieces (an error if the text cannot support that many). Character coverage is
    0.9995, lowered only for tiny vocabularies whose free slots would otherwise be all characters.
    Trained on the non-empty lines of `texts` (newlines are spaces after nmt_nfkc), up to `max_bytes`.
    """
    return _train_tokenizer(texts, vocab_size, Path(out_prefix), max_bytes, seed)[0]


def _train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_prefix: Path, max_bytes: int, seed: int, label: str = "",
    user_symbols: tuple[str, ...] = (), source: str = "",
) -> tuple[Path, float]:
    """(model path, character coverage used); `label` names the tokenizer in errors; `user_symbols` are
    pieces kept whole (ids right after the four special pieces)."""
    _check_vocab(vocab_size - len(user_symbols))
    label = label or f"{out_prefix}.model"
    sentences = _sentences(texts, max_bytes)
    if not sentences:
        raise DataError(f"no text to train the tokenizer {label} on")
    _check_visible_text(sentences, label, source)
    coverage = _character_coverage(sentences, vocab_size)
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buf,  # not model_prefix: that path would be recorded in the model
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=coverage,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=True,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=MAX_SENTENCE_CHARS * 4 + 16,
            num_threads=1,
            minloglevel=2,
            **({"user_defined_symbols": list(user_symbols)} if user_symbols else {}),
        )
    except RuntimeError as e:
        raise _trainer_error(e, vocab_size, label) from None
    proto = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    if int(sp.vocab_size()) != vocab_size:
        raise DataError(f"tokenizer {label}: trained {sp.vocab_size()} pieces, wanted {vocab_size}")
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(vocab_size))
    _write_bytes(Path(f"{out_prefix}.vocab"), vocab.encode("utf-8"))
    _write_bytes(Path(f"{out_prefix}.model"), proto)
    return Path(f"{out_prefix}.model"), coverage


def _check_visible_text(sentences: list[str], label: str, source: str = "") -> None:
    """A DataError unless some sentence keeps a character after nmt_nfkc normalization (control and zero-width
    characters are removed: sentencepiece's trainer then fails with an internal check)."""
    normalizer_class = getattr(spm, "SentencePieceNormalizer", None)
    if normalizer_class is None:  # pragma: no cover - sentencepiece < 0.2: the trainer's error is mapped instead
        return
    normalizer = normalizer_class(rule_name="nmt_nfkc")
    if any(normalizer.normalize(s).strip("\u2581 ") for s in sentences):
        return
    raise DataError(f"{source + ': ' if source else ''}no visible characters to train the tokenizer {label} on: "
                    "the training text holds only "
                    "control, zero-width or other characters that normalization (nmt_nfkc) removes; expected "
                    "readable text")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same directory + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _trainer_error(e: RuntimeError, vocab_size: int, label: str) -> DataError:
    msg = " ".join(str(e).split())
    high = re.search(r"Vocabulary size too high.*?<= (\d+)", msg)
    if high:
        return DataError(
            f"vocab_size {vocab_size} is too large for this text: sentencepiece can make at most "
            f"{high.group(1)} pieces from it (use more text or a smaller vocab) [{label}]"
        )
    low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if low:
        return DataError(
            f"vocab_size {vocab_size} is too small for this text: it needs {low.group(2)} pieces for "
            f"special, byte and character pieces [{label}]"
        )
    if "all_chars_count" in msg:
        return DataError(f"no visible characters to train the tokenizer {label} on: the training text holds only "
                         "control, zero-width or other characters that normalization (nmt_nfkc) removes")
    return DataError(f"tokenizer training for {label} failed: {msg}")


# --- document sources ------------------------------------------------------------------------------


def _iter_jsonl(path: Path) -> Iterator[str]:
    with path.open("rb") as f:  # bytes, decoded line by line: a text-mode reader decodes ahead (wrong line numbers)
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:  # also a huge integer, or nesting past the recursion limit
                why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                raise DataError(f"{path}:{lineno}: not valid JSON ({why})") from None
            if not isinstance(obj, dict) or "text" not in obj:
                found = f"keys {sorted(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
                raise DataError(f"{path}:{lineno}: expected an object with a \"text\" field, found {found}")
            text = obj["text"]
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: \"text\" must be a string, found {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # a JSON escape like \\ud800 decodes to a lone surrogate
                raise DataError(f"{path}:{lineno}: \"text\" is not encodable as UTF-8 (unpaired surrogate "
                                f"U+{ord(text[e.start]):04X} at character {e.start})") from None
            if text.strip():
                yield text


def _split_blocks(text: str) -> Iterator[str]:
    """Blank-line separated blocks grouped into documents of about SPLIT_DOC_CHARS characters."""
    group: list[str] = []
    size = 0
    for block in re.split(r"\n\s*\n", text):
        if not block.strip():
            continue
        group.append(block)
        size += len(block)
        if size >= SPLIT_DOC_CHARS:
            yield "\n\n".join(group)
            group, size = [], 0
    if group:
        yield "\n\n".join(group)


_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)


def _looks_like_utf16(head: bytes) -> str | None:
    """"UTF-16 LE"/"UTF-16 BE" when `head` has NUL bytes on (almost) every odd/even position and few on the
    others (ASCII-range text in UTF-16 without a byte-order mark), else None."""
    if len(head) < 16:
        return None
    even, odd = head[0::2], head[1::2]
    for zeros, other, name in ((odd, even, "UTF-16 LE"), (even, odd, "UTF-16 BE")):
        if zeros.count(0) >= 0.9 * len(zeros) and other.count(0) <= 0.1 * len(other):
            return name
    return None


def _read_text_file(path: Path) -> str | None:
    """The file's text, or None if it is binary (NUL bytes in its first 8 KB: images, archives are skipped).
    UTF-16/UTF-32 text with a byte-order mark is decoded; text in another encoding than UTF-8 (or UTF-16
    without a byte-order mark) is an error naming the file (skipping it would drop the user's text silently)."""
    data = path.read_bytes()
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: starts with a {name} byte-order mark but is not {name} text ({e.reason} "
                                f"at byte {e.start}); convert it to UTF-8 (e.g. iconv -f {name.lower()} -t utf-8) "
                                "or move it out of the input") from None
    if b"\0" in data[:8192]:
        guess = _looks_like_utf16(data[:8192])
        if guess:
            raise DataError(f"{path}: looks like {guess} text without a byte-order mark (expected UTF-8); convert "
                            f"it (e.g. iconv -f {guess.replace(' ', '').lower()} -t utf-8) or move it out of the "
                            "input")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); convert it "
                        "(e.g. iconv -f latin1 -t utf-8) or move it out of the input") from None


def _iter_file(path: Path) -> Iterator[str]:
    if path.suffix.lower() == ".jsonl":
        yield from _iter_jsonl(path)
        return
    text = _read_text_file(path)
    if text is None or not text.strip():
        return
    if len(text) > HUGE_FILE_BYTES:
        yield from _split_blocks(text)
    else:
        yield text


def _source_files(source: Path, exclude: Path | None = None) -> list[Path]:
    if source.is_file():
        return [source]
    files = []
    for p in source.rglob("*"):
        rel = p.relative_to(source)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if exclude is not None and p.resolve().is_relative_to(exclude):
            continue
        files.append(p)
    return sorted(files, key=lambda p: p.relative_to(source).as_posix())


def _missing_source(source: Path) -> DataError:
    return DataError(f"source {source} does not exist (expected a directory of text files or a .jsonl file)")


def iter_documents(source: Path, exclude: Path | None = None) -> Iterator[str]:
    """Documents of a directory (one per text file, `.jsonl` files by line), a `.jsonl` or a text file.

    Hidden files and directories, binary files, and anything under `exclude` are skipped; files are read
    in sorted order of their relative paths; text files over HUGE_FILE_BYTES are split on blank lines.
    """
    source = Path(source)
    if not source.exists():
        raise _missing_source(source)
    excluded = exclude.resolve() if exclude is not None else None
    for path in _source_files(source, excluded):
        yield from _iter_file(path)


# --- building --------------------------------------------------------------------------------------


class _ShardWriter:
    def __init__(self, out_dir: Path, split: str, shard_tokens: int, lead: int = BOS_ID) -> None:
        self.out_dir, self.split, self.shard_tokens, self.lead = out_dir, split, shard_tokens, lead
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.files: list[Path] = []
        self.tokens = 0
        self.docs = 0

    def add(self, ids: list[int]) -> None:
        arr = np.empty(len(ids) + 1, dtype=np.uint16)
        arr[0] = self.lead
        arr[1:] = ids
        self.parts.append(arr)
        self.buffered += arr.size
        self.tokens += arr.size
        self.docs += 1
        while self.buffered >= self.shard_tokens:
            flat = np.concatenate(self.parts)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens :]
            self.parts = [rest] if rest.size else []
            self.buffered = int(rest.size)

    def _write(self, tokens: np.ndarray) -> None:
        path = self.out_dir / f"fineweb_{self.split}_{len(self.files):06d}.bin"
        write_shard(path, tokens)
        self.files.append(path)

    def close(self) -> None:
        if self.buffered:
            self._write(np.concatenate(self.parts))
        self.parts, self.buffered = [], 0


def _build(
    documents: Callable[[], Iterable[str]],
    source_desc: str,
    out_dir: Path,
    vocab_size: int,
    val_docs: int | None,
    shard_tokens: int,
    seed: int,
    replace: bool,
    transform: TextTransform | None = None,
    tokenizer: Path | None = None,
    max_train_tokens: int = 0,
) -> BuildInfo:
    t0 = time.perf_counter()
    _check_vocab(vocab_size)
    if max_train_tokens < 0:
        raise DataError(f"max_train_tokens must be >= 0 (0: no limit), got {max_train_tokens}")
    symbols = tuple(transform.reserved_symbols) if transform is not None else ()
    if tokenizer is not None:
        _check_given_tokenizer(Path(tokenizer), vocab_size, symbols)
    if transform is not None:
        raw_documents = documents

        def documents() -> Iterable[str]:
            return (transform.encode(doc) for doc in raw_documents())
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    out_dir = Path(out_dir)
    num_docs = sum(1 for _ in documents())
    if num_docs == 0:
        raise DataError(f"no documents found in {source_desc} (expected non-empty text files or jsonl lines)")
    n_val = max(1, round(num_docs * 0.05)) if val_docs is None else val_docs
    if not 1 <= n_val < num_docs:
        raise DataError(
            f"{source_desc}: {num_docs} documents cannot give {n_val} val documents and at least one "
            f"train document (need val_docs >= 1 and fewer documents than found; {DOCUMENT_RULE})"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()  # not mkdtemp: the dataset gets the usual (umask) permissions
    try:
        train_texts = (doc for i, doc in enumerate(documents()) if i >= n_val)
        prefix = tmp / "tokenizer" / f"fineweb_{vocab_size}_bpe"
        label = f"{out_dir / 'tokenizer' / prefix.name}.model"
        if tokenizer is None:
            model, coverage = _train_tokenizer(train_texts, vocab_size, prefix, TOKENIZER_MAX_BYTES, seed, label,
                                               symbols, source=source_desc)
        else:  # an existing model (e.g. a record's own): copied, not trained
            model, coverage = Path(f"{prefix}.model"), None
            _write_bytes(model, Path(tokenizer).read_bytes())
        sp = spm.SentencePieceProcessor(model_file=str(model))
        val = _ShardWriter(tmp, "val", shard_tokens)
        train = _ShardWriter(tmp, "train", shard_tokens)
        sidecar = _ShardWriter(tmp, "val_bytes", shard_tokens, lead=0) if transform is not None else None
        batch: list[str] = []
        index = 0
        for doc in documents():
            if max_train_tokens and train.tokens >= max_train_tokens:
                break  # the training split is long enough (checked per batch): the rest is left out
            batch.append(doc)
            if len(batch) >= ENCODE_BATCH_DOCS:
                index = _encode_batch(sp, batch, index, n_val, val, train, transform, sidecar)
                batch = []
        if batch:
            index = _encode_batch(sp, batch, index, n_val, val, train, transform, sidecar)
        val.close()
        train.close()
        if sidecar is not None:
            sidecar.close()

        def rel(p: Path) -> str:
            return p.relative_to(tmp).as_posix()

        meta = {
            "format": "pgolf-dataset-1",
            "vocab_size": vocab_size,
            "source": source_desc,
            "tokenizer": rel(model),
            "bos_id": BOS_ID,
            "documents": {"train": train.docs, "val": val.docs},
            "tokens": {"train": train.tokens, "val": val.tokens},
            "shards": {"train": [rel(p) for p in train.files], "val": [rel(p) for p in val.files]},
            "text_transform": transform.name if transform is not None else None,
            "byte_sidecar": [rel(p) for p in sidecar.files] if sidecar is not None else [],
            "shard_tokens": shard_tokens,
            "character_coverage": coverage,
            "seed": seed,
            "tokenizer_source": str(Path(tokenizer).resolve()) if tokenizer is not None else "trained",
            "max_train_tokens": max_train_tokens,
        }
        _write_bytes(tmp / "dataset.json", (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
        final = _install(tmp, out_dir, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final != out_dir or not (out_dir / "dataset.json").is_file():  # pragma: no cover - defensive
        raise DataError(f"dataset {out_dir} was not installed")
    meta = json.loads((out_dir / "dataset.json").read_text(encoding="utf-8"))
    return BuildInfo(
        out_dir=out_dir,
        tokenizer_path=out_dir / meta["tokenizer"],
        vocab_size=vocab_size,
        source=meta["source"],
        train_files=[out_dir / p for p in meta["shards"]["train"]],
        val_files=[out_dir / p for p in meta["shards"]["val"]],
        train_docs=meta["documents"]["train"],
        val_docs=meta["documents"]["val"],
        train_tokens=meta["tokens"]["train"],
        val_tokens=meta["tokens"]["val"],
        character_coverage=meta["character_coverage"],
        seconds=time.perf_counter() - t0,
    )


def _check_given_tokenizer(path: Path, vocab_size: int, symbols: tuple[str, ...]) -> None:
    """A one-line DataError unless `path` is a SentencePiece model of `vocab_size` pieces with BOS id
    BOS_ID that keeps each of the transform's reserved `symbols` whole."""
    if not path.exists():
        raise DataError(f"tokenizer {path}: no such file (expected a SentencePiece .model)")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise DataError(f"tokenizer {path}: {kind} (expected a SentencePiece .model file)")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"tokenizer {path}: not a SentencePiece model ({why})") from None
    if int(sp.vocab_size()) != vocab_size:
        raise DataError(f"tokenizer {path}: {sp.vocab_size()} pieces, but --vocab is {vocab_size}")
    if sp.bos_id() != BOS_ID:
        raise DataError(f"tokenizer {path}: bos_id {sp.bos_id()}, expected {BOS_ID} (shards prefix documents with it)")
    for sym in symbols:
        if len(sp.encode(sym)) != 1 or sp.piece_to_id(sym) == sp.unk_id():
            raise DataError(f"tokenizer {path}: the text transform's reserved symbol U+{ord(sym[0]):04X} is not "
                            "one piece (expected a tokenizer trained with it as a user-defined symbol)")


def _encode_batch(
    sp: spm.SentencePieceProcessor,
    batch: list[str],
    index: int,
    n_val: int,
    val: _ShardWriter,
    train: _ShardWriter,
    transform: TextTransform | None = None,
    sidecar: _ShardWriter | None = None,
) -> int:
    """Encode a batch of (already transformed) documents; val documents also get their sidecar entries."""
    for doc, ids in zip(batch, sp.encode(batch), strict=True):
        if index < n_val and transform is not None and sidecar is not None:
            counts = transform.original_bytes(piece_surfaces(sp, doc))
            if len(counts) != len(ids):
                raise DataError(f"text transform {transform.name}: {len(counts)} byte counts for {len(ids)} tokens")
            sidecar.add(counts)
        (val if index < n_val else train).add(ids)
        index += 1
    return index


def piece_surfaces(sp: spm.SentencePieceProcessor, text: str) -> list[str]:
    """The span of `text` each piece of `sp.encode(text)` stands for (byte-fallback pieces of one
    character: the character on one of them, "" on the others)."""
    try:
        enc = sp.encode(text, out_type="offset_mapping")  # sentencepiece >= 0.2.1
        return [text[b:e] for b, e in enc["offsets"]]
    except (ValueError, TypeError):
        return [p.surface for p in sp.encode(text, out_type="immutable_proto").pieces]  # older releases


class _LostRace(DataError):
    """Another build installed a dataset in the output folder while this one ran (this one was discarded)."""


def _lost_race(out_dir: Path) -> _LostRace:
    return _LostRace(f"output {out_dir}: another build installed a dataset there first, while this one ran; this "
                     "build was discarded and the other's dataset kept (run again with --force to replace it)")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM held back while a group of renames runs (main thread only; elsewhere a no-op): the signal's
    handler runs once the block is done, so Ctrl-C never lands between two renames of an install."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is None:  # installed outside Python: cannot be restored, left alone
            continue
        saved[sig] = handler
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if caught:
            handler = saved[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


def _install(tmp: Path, out_dir: Path, replace: bool) -> Path:
    """Rename the finished build `tmp` to `out_dir` (see build_dataset for the rules). A dataset that another
    build installed meanwhile is kept and this build refused (`_LostRace`); with `replace`, the previous dataset
    is moved aside, the build renamed in, and the previous one put back on any exception (Ctrl-C included)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir():
        contents = list(out_dir.iterdir())
        if (out_dir / "dataset.json").is_file():
            if not replace:  # build_dataset refused an existing dataset before building: a concurrent build's
                raise _lost_race(out_dir)
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with _signals_deferred():
                os.rename(out_dir, old)
                try:
                    os.rename(tmp, out_dir)
                except BaseException:
                    _restore(old, tmp, out_dir)
                    raise
            shutil.rmtree(old, ignore_errors=True)
            return out_dir
        if contents:
            raise DataError(
                f"output {out_dir} exists, is not empty and is not a pgolf dataset (no dataset.json); "
                "choose an empty or new directory"
            )
        with contextlib.suppress(OSError):
            out_dir.rmdir()
    try:
        os.rename(tmp, out_dir)
    except OSError as e:
        if (out_dir / "dataset.json").is_file():  # a concurrent build won the race
            raise _lost_race(out_dir) from None
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise DataError(f"output {out_dir} was filled by something else while the dataset was built (it is "
                            "not a pgolf dataset); choose an empty or new directory") from None
        raise
    return out_dir


def _restore(old: Path, tmp: Path, out_dir: Path) -> None:
    """Put the dataset moved aside to `old` back at `out_dir` after a failed or interrupted swap."""
    if os.path.lexists(out_dir) and not tmp.exists():  # the new build got in before the exception: take it out
        with contextlib.suppress(OSError):
            os.rename(out_dir, tmp)
    try:
        os.rename(old, out_dir)
    except OSError:
        if (out_dir / "dataset.json").is_file():  # a concurrent --force build installed its own: it stays
            shutil.rmtree(old, ignore_errors=True)
            raise _lost_race(out_dir) from None
        raise


_STALE = re.compile(r"(?P<kind>tmp|old)-(?P<pid>\d+|broken)-[0-9a-f]+")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _clean_stale(out_dir: Path, every: bool = False) -> None:
    """Remove what killed builds left beside `out_dir`: `.NAME.tmp-PID-*` build folders and `.NAME.old-PID-*`
    previous datasets of a `--force` install, whose process is dead (`every`: all of them, for a caller holding
    the folder's lock). An `.old-*` dataset whose build died between the two renames is put back when `out_dir`
    is missing."""
    prefix = f".{out_dir.name}."
    try:
        entries = [e for e in out_dir.parent.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in sorted(entries):
        rest = entry.name[len(prefix):]
        m = re.match(r"(?P<kind>tmp|old)-", rest) if every else _STALE.fullmatch(rest)
        if m is None or (not every and m["pid"] != "broken" and _pid_alive(int(m["pid"]))):
            continue
        if (m["kind"] == "old" and not os.path.lexists(out_dir) and not entry.is_symlink()
                and (entry / "dataset.json").is_file()):
            with contextlib.suppress(OSError):
                os.rename(entry, out_dir)
                continue
        if entry.is_symlink() or not entry.is_dir():
            with contextlib.suppress(OSError):
                entry.unlink()
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _output_dir(out_dir: Path) -> Path:
    """The folder the dataset is installed as, checked before anything is built: a symlink to a folder stands
    for that folder (the dataset replaces the link's target; the link stays); a dangling link, a file, or a
    folder that cannot be made is refused."""
    if out_dir.is_symlink():
        target = Path(os.path.realpath(out_dir))
        if not target.exists():
            raise DataError(f"output {out_dir} is a symlink to {os.readlink(out_dir)}, which does not exist; make "
                            "that folder or choose another --out")
        if not target.is_dir():
            raise DataError(f"output {out_dir} is a symlink to {target}, which is not a directory")
        return target
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} exists and is not a directory")
    anc = Path(os.path.abspath(out_dir)).parent
    while not anc.exists():
        if os.path.lexists(anc):
            raise DataError(f"output {out_dir}: {anc} is a symlink to a missing path ({os.readlink(anc)}); expected "
                            "a directory")
        anc = anc.parent
    if not anc.is_dir():
        raise DataError(f"output {out_dir}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise DataError(f"output {out_dir}: cannot create it in {anc} (permission denied)")
    return out_dir


def build_dataset(
    source: str | Path,
    out_dir: str | Path,
    vocab_size: int,
    val_docs: int | None = None,
    shard_tokens: int = 100_000_000,
    seed: int = 0,
    transform: TextTransform | None = None,
    tokenizer: str | Path | None = None,
    max_train_tokens: int = 0,
    replace: bool = True,
) -> BuildInfo:
    """Tokenizer + shards from `source` (a directory of text files, a `.jsonl` file, or one text file).

    The first `val_docs` documents (default ~5%, at least 1) are the val split. `out_dir` must be new,
    empty, or a previous dataset (replaced; with `replace=False` a DataError before anything is built); the build
    is renamed into place at the end.
    `transform` (see `text_transform_of`): applied to every document, with a val byte sidecar.
    `tokenizer`: an existing SentencePiece model (e.g. a record's own) copied into the dataset instead of
    training one; it must have `vocab_size` pieces, BOS id 1 and the transform's reserved symbols as pieces.
    `max_train_tokens` (0: all): stop adding training documents once the split holds at least this many tokens.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise _missing_source(source)
    if not source.is_dir() and not source.is_file():
        raise DataError(f"source {source} is not a regular file or a directory (expected a directory of text files "
                        "or a .jsonl file)")
    out_dir = _output_dir(out_dir)
    _clean_stale(out_dir)
    if not replace and (out_dir / "dataset.json").is_file():
        raise DataError(f"output {out_dir} holds a dataset already; pass --force to replace it (the whole folder)")
    if source.resolve().is_relative_to(out_dir.resolve()) and source.resolve() != out_dir.resolve():
        raise DataError(f"source {source} is inside --out {out_dir}: the build replaces that folder (and skips what "
                        "lies in it); put the text elsewhere")
    if out_dir.is_dir() and not (out_dir / "dataset.json").is_file() and any(out_dir.iterdir()):
        why = " (it is the text folder itself)" if out_dir.resolve() == source.resolve() else ""
        raise DataError(f"output {out_dir} exists, is not empty and is not a pgolf dataset (no dataset.json){why}; "
                        "choose an empty or new directory")
    kind = "directory" if source.is_dir() else ("jsonl file" if source.suffix.lower() == ".jsonl" else "text file")
    return _build(
        lambda: iter_documents(source, exclude=out_dir),
        f"{kind} {source.resolve()}",
        out_dir,
        vocab_size,
        val_docs,
        shard_tokens,
        seed,
        replace=replace,
        transform=transform,
        tokenizer=Path(tokenizer) if tokenizer is not None else None,
        max_train_tokens=max_train_tokens,
    )


def text_transform_of(config, registry) -> TextTransform | None:
    """The text transform the configuration's plugins supply (`pg_text_transform`), or None."""
    from core.registry import make_manager

    return make_manager(registry, config).hook.pg_text_transform(config=config)


# --- the embedded default corpus -------------------------------------------------------------------


def default_data_dir(vocab_size: int = 1024, cache_dir: Path | None = None) -> Path:
    """`$PGOLF_CACHE` (or `~/.cache/pgolf`) / `default-v1-sp{vocab_size}`."""
    root = Path(cache_dir) if cache_dir is not None else None
    if root is None:
        env = os.environ.get("PGOLF_CACHE")
        root = Path(env) if env else Path.home() / ".cache" / "pgolf"
    return root / f"default-{DEFAULT_VERSION}-sp{vocab_size}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` where fcntl exists (released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: rely on the atomic rename alone
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_default_data(vocab_size: int = 1024, cache_dir: Path | None = None) -> Path:
    """The data dir of the embedded default corpus for `vocab_size`, built and cached on first use.

    Concurrent callers (e.g. every rank of a torchrun job) serialize on a lock file; a build happens in
    a temporary directory renamed into place at the end, so an interrupted build leaves nothing half done.
    """
    out = default_data_dir(vocab_size, cache_dir)
    if (out / "dataset.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent / f".{out.name}.lock"):
        if (out / "dataset.json").is_file():
            return out
        _clean_stale(out, every=True)  # left by interrupted builds (we hold the lock)
        if out.exists():  # not a finished dataset: move it out of the way
            aside = out.with_name(f".{out.name}.tmp-broken-{uuid.uuid4().hex[:8]}")
            os.rename(out, aside)
            shutil.rmtree(aside, ignore_errors=True)
        from dataprep.corpus import generate_documents

        docs = generate_documents(DEFAULT_VAL_DOCS + DEFAULT_TRAIN_DOCS, DEFAULT_SEED)
        with contextlib.suppress(_LostRace):  # (no lock on this system) another caller built the same data
            _build(lambda: docs, f"embedded default corpus {DEFAULT_VERSION} (dataprep.corpus, seed {DEFAULT_SEED}, "
                   f"{len(docs)} documents)", out, vocab_size, DEFAULT_VAL_DOCS, 100_000_000, 0, replace=False)
    return out
