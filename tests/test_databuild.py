"""Dataset building from text directories and jsonl, and the cached default corpus (dataprep.build)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from core.data import DataError, read_shard, shard_files
from core.tokenizer import build_byte_tables, load_tokenizer, token_bytes
from dataprep import build as databuild
from dataprep.build import build_dataset, default_data_dir, ensure_default_data, train_tokenizer
from dataprep.corpus import generate_documents

VOCAB = 320


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate_documents(60, seed=21)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "sub").mkdir()
    for i, doc in enumerate(corpus):
        where = src / "sub" if i % 3 == 0 else src
        (where / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    (src / ".hidden.txt").write_text("hidden text must be skipped", encoding="utf-8")
    (src / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (src / "empty.md").write_text("  \n\n ", encoding="utf-8")
    return src


def ordered_docs(src: Path) -> list[str]:
    """The documents of text_dir in the builder's order (sorted relative paths)."""
    files = sorted((p for p in src.rglob("*.txt") if not p.name.startswith(".")),
                   key=lambda p: p.relative_to(src).as_posix())
    return [p.read_text(encoding="utf-8") for p in files]


def split_docs(tokens: torch.Tensor) -> list[list[int]]:
    ids = tokens.to(torch.int64).tolist()
    assert ids[0] == 1
    docs: list[list[int]] = []
    for t in ids:
        if t == 1:
            docs.append([])
        else:
            docs[-1].append(t)
    return docs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, text_dir: Path) -> databuild.BuildInfo:
    return build_dataset(text_dir, tmp_path_factory.mktemp("out") / "ds", vocab_size=VOCAB, val_docs=4)


def test_build_from_dir_layout_and_counts(built: databuild.BuildInfo, text_dir: Path) -> None:
    out = built.out_dir
    assert built.tokenizer_path == out / "tokenizer" / f"fineweb_{VOCAB}_bpe.model"
    assert (out / "tokenizer" / f"fineweb_{VOCAB}_bpe.vocab").is_file()
    assert built.val_files == [out / "fineweb_val_000000.bin"]
    assert built.train_files == [out / "fineweb_train_000000.bin"] == shard_files(out, "train")
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["vocab_size"] == VOCAB and meta["tokenizer"] == f"tokenizer/fineweb_{VOCAB}_bpe.model"
    assert meta["documents"] == {"train": 56, "val": 4} == {"train": built.train_docs, "val": built.val_docs}
    assert str(text_dir.resolve()) in meta["source"]
    assert [p.name for p in out.parent.iterdir()] == ["ds"]  # no temp dirs left behind

    sp = load_tokenizer(built.tokenizer_path, VOCAB)
    docs = ordered_docs(text_dir)
    val, train = read_shard(built.val_files[0]), read_shard(built.train_files[0])
    assert val.numel() == built.val_tokens and train.numel() == built.train_tokens
    assert split_docs(val) == [sp.encode(d) for d in docs[:4]]
    assert split_docs(train) == [sp.encode(d) for d in docs[4:]]
    assert "hidden" not in sp.decode(split_docs(train)[-1])


def test_built_data_accounts_bytes_exactly(built: databuild.BuildInfo) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(built.tokenizer_path))
    tables = build_byte_tables(sp, VOCAB)
    val = read_shard(built.val_files[0]).to(torch.int64)
    counted = int(token_bytes(val[:-1], val[1:], tables).sum())
    assert counted == sum(len(sp.decode(d).encode("utf-8")) for d in split_docs(val))


def test_small_shards_and_determinism(tmp_path: Path, text_dir: Path, built: databuild.BuildInfo) -> None:
    info = build_dataset(text_dir, tmp_path / "ds", vocab_size=VOCAB, val_docs=4, shard_tokens=1000)
    assert len(info.train_files) == -(-built.train_tokens // 1000)
    assert all(read_shard(f).numel() == 1000 for f in info.train_files[:-1])
    cat = torch.cat([read_shard(f) for f in info.train_files])
    assert torch.equal(cat, read_shard(built.train_files[0]))  # same tokenizer, same tokens
    assert info.tokenizer_path.read_bytes() == built.tokenizer_path.read_bytes()


def test_rebuild_replaces_dataset_but_not_other_dirs(tmp_path: Path, text_dir: Path) -> None:
    out = tmp_path / "ds"
    build_dataset(text_dir, out, vocab_size=VOCAB, val_docs=2, shard_tokens=2000)
    info = build_dataset(text_dir, out, vocab_size=VOCAB, val_docs=3)
    assert sorted(p.name for p in out.glob("fineweb_*.bin")) == ["fineweb_train_000000.bin",
                                                                 "fineweb_val_000000.bin"]
    assert info.val_docs == 3
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_dataset(text_dir, busy, vocab_size=VOCAB, val_docs=2)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "ds"]


def test_build_from_jsonl(tmp_path: Path, corpus: list[str]) -> None:
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(corpus)]
    src.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n", encoding="utf-8")
    info = build_dataset(src, tmp_path / "out", vocab_size=VOCAB)
    assert info.val_docs == 3 and info.train_docs == 57  # default ~5%
    sp = load_tokenizer(info.tokenizer_path, VOCAB)
    assert split_docs(read_shard(info.val_files[0])) == [sp.encode(d) for d in corpus[:3]]


@pytest.mark.parametrize(
    ("line", "expected"),
    [("{not json", "not valid JSON"), ('{"txt": "x"}', 'expected an object with a "text" field'),
     ('["a"]', 'expected an object with a "text" field'), ('{"text": 5}', '"text" must be a string')],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        build_dataset(src, tmp_path / "out", vocab_size=VOCAB)
    assert f"{src}:3:" in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_source_errors(tmp_path: Path, text_dir: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as e:
        build_dataset(tmp_path / "nowhere", tmp_path / "out", vocab_size=VOCAB)
    assert str(tmp_path / "nowhere") in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no documents found") as e:
        build_dataset(empty, tmp_path / "out", vocab_size=VOCAB)
    assert str(empty.resolve()) in str(e.value)
    with pytest.raises(DataError, match="vocab_size 200 is out of range"):
        build_dataset(text_dir, tmp_path / "out", vocab_size=200)
    with pytest.raises(DataError, match="60 documents cannot give 60 val documents"):
        build_dataset(text_dir, tmp_path / "out", vocab_size=VOCAB, val_docs=60)
    with pytest.raises(DataError, match="too large for this text"):
        build_dataset(text_dir, tmp_path / "out", vocab_size=20000, val_docs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing half-built left behind


def test_train_tokenizer_exact_vocab(tmp_path: Path, corpus: list[str]) -> None:
    model = train_tokenizer(corpus, 400, tmp_path / "tok" / "x")
    assert model == tmp_path / "tok" / "x.model" and (tmp_path / "tok" / "x.vocab").is_file()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.vocab_size() == 400
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert sp.encode("2024") == [sp.piece_to_id(c) for c in "2024"]  # split_digits
    assert not sp.id_to_piece(sp.encode("Hello")[0]).startswith("▁")  # no dummy prefix
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["x.model", "x.vocab"]


# --- the cached default corpus --------------------------------------------------------------------


@pytest.fixture
def small_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(databuild, "DEFAULT_TRAIN_DOCS", 60)
    monkeypatch.setattr(databuild, "DEFAULT_VAL_DOCS", 5)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGOLF_CACHE", str(tmp_path / "cache"))
    assert default_data_dir(512) == tmp_path / "cache" / "default-v1-sp512"
    monkeypatch.delenv("PGOLF_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "pgolf" / "default-v1-sp1024"
    assert default_data_dir(1024, tmp_path / "c") == tmp_path / "c" / "default-v1-sp1024"


def test_ensure_default_data_builds_once(small_default: None, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = ensure_default_data(VOCAB, cache_dir=tmp_path)
    assert out == tmp_path / "default-v1-sp320"
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["documents"] == {"train": 60, "val": 5}
    assert len(shard_files(out, "train")) == 1 and len(shard_files(out, "val")) == 1
    load_tokenizer(out / meta["tokenizer"], VOCAB)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a cached dataset")

    monkeypatch.setattr(databuild, "_build", no_build)
    assert ensure_default_data(VOCAB, cache_dir=tmp_path) == out


def test_ensure_default_data_recovers_from_interrupted_builds(small_default: None, tmp_path: Path) -> None:
    final = tmp_path / "default-v1-sp320"
    final.mkdir()
    (final / "fineweb_train_000000.bin").write_bytes(b"partial")  # no dataset.json: unfinished
    stale = tmp_path / ".default-v1-sp320.tmp-dead"
    stale.mkdir()
    out = ensure_default_data(VOCAB, cache_dir=tmp_path)
    assert out == final and (final / "dataset.json").is_file()
    read_shard(final / "fineweb_train_000000.bin")
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_ensure_default_data_concurrent(small_default: None, tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(ensure_default_data(VOCAB, cache_dir=tmp_path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [tmp_path / "default-v1-sp320"] * 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["default-v1-sp320"]


def test_huge_files_split_and_output_inside_source(tmp_path: Path, corpus: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(databuild, "HUGE_FILE_BYTES", 5000)
    monkeypatch.setattr(databuild, "SPLIT_DOC_CHARS", 1500)
    src = tmp_path / "src"
    src.mkdir()
    book = "\n\n".join(corpus)
    (src / "book.txt").write_text(book, encoding="utf-8")
    docs = list(databuild.iter_documents(src))
    assert len(docs) > 10
    assert all(len(d) >= 1500 for d in docs[:-1]) and "\n\n".join(docs) == book
    first = build_dataset(src, src / "out", vocab_size=VOCAB, val_docs=2)
    second = build_dataset(src, src / "out", vocab_size=VOCAB, val_docs=2)  # ignores its own output
    assert (first.train_docs, first.train_tokens) == (second.train_docs, second.train_tokens)
    assert first.train_docs + first.val_docs == len(docs)


def test_given_tokenizer_is_copied_not_trained_and_train_tokens_capped(tmp_path: Path, text_dir: Path,
                                                                       built: databuild.BuildInfo) -> None:
    """`tokenizer=`: the model is used as is (same bytes, same token stream as the build that trained it);
    `max_train_tokens`: training documents stop (at a batch boundary) once the split holds that many."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(databuild, "_train_tokenizer", lambda *a, **k: pytest.fail("trained a tokenizer"))
        info = build_dataset(text_dir, tmp_path / "given", vocab_size=VOCAB, val_docs=4,
                             tokenizer=built.tokenizer_path)
    assert info.tokenizer_path.read_bytes() == built.tokenizer_path.read_bytes()
    assert torch.equal(read_shard(info.train_files[0]), read_shard(built.train_files[0]))
    assert torch.equal(read_shard(info.val_files[0]), read_shard(built.val_files[0]))
    meta = json.loads((info.out_dir / "dataset.json").read_text(encoding="utf-8"))
    assert meta["tokenizer_source"] == str(built.tokenizer_path.resolve()) and meta["character_coverage"] is None

    sp = load_tokenizer(built.tokenizer_path, VOCAB)
    docs = ordered_docs(text_dir)
    per_doc = [len(sp.encode(d)) + 1 for d in docs[4:]]  # + BOS
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(databuild, "ENCODE_BATCH_DOCS", 5)
        # batches of 5 over all documents: [4 val + train 1], [train 2-6], [7-11], [12-16]: a cap reached by
        # train document 12 is checked after the batch that holds it, so 16 train documents are kept
        cap = sum(per_doc[:12]) - 1
        info = build_dataset(text_dir, tmp_path / "capped", vocab_size=VOCAB, val_docs=4,
                             tokenizer=built.tokenizer_path, max_train_tokens=cap)
    assert info.train_docs == 16 and info.train_tokens == sum(per_doc[:16]) < built.train_tokens
    assert split_docs(read_shard(info.train_files[0])) == [sp.encode(d) for d in docs[4:20]]
    assert info.val_docs == 4


def test_given_tokenizer_errors_are_one_line(tmp_path: Path, text_dir: Path, built: databuild.BuildInfo) -> None:
    from plugins.caseops import CaseOpsTransform

    with pytest.raises(DataError, match="no such file"):
        build_dataset(text_dir, tmp_path / "a", vocab_size=VOCAB, tokenizer=tmp_path / "none.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        build_dataset(text_dir, tmp_path / "a", vocab_size=VOCAB, tokenizer=bad)
    with pytest.raises(DataError, match=f"{VOCAB} pieces, but --vocab is 512"):
        build_dataset(text_dir, tmp_path / "a", vocab_size=512, tokenizer=built.tokenizer_path)
    with pytest.raises(DataError, match=r"reserved symbol U\+E001 is not one piece"):
        build_dataset(text_dir, tmp_path / "a", vocab_size=VOCAB, tokenizer=built.tokenizer_path,
                      transform=CaseOpsTransform())
    with pytest.raises(DataError, match="max_train_tokens must be >= 0"):
        build_dataset(text_dir, tmp_path / "a", vocab_size=VOCAB, max_train_tokens=-1)
    assert not (tmp_path / "a").exists()


def test_cli_data_build_with_a_given_tokenizer(tmp_path: Path, text_dir: Path, built: databuild.BuildInfo,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pgolf.cli import main

    monkeypatch.setattr(databuild, "ENCODE_BATCH_DOCS", 5)
    out = tmp_path / "cli"
    assert main(["data", "build", str(text_dir), "--vocab", str(VOCAB), "--out", str(out), "--val-docs", "4",
                 "--tokenizer", str(built.tokenizer_path), "--max-train-tokens", "1"]) == 0
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["tokenizer_source"] == str(built.tokenizer_path.resolve()) and meta["max_train_tokens"] == 1
    assert meta["documents"]["train"] == 1  # the first batch (4 val + 1 train documents) reached the cap
    capsys.readouterr()
    assert main(["data", "build", str(text_dir), "--vocab", "512", "--out", str(tmp_path / "bad"),
                 "--tokenizer", str(built.tokenizer_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{VOCAB} pieces, but --vocab is 512" in err


# --- session 28 (data build, seventh pass)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_utf16_and_utf32_with_a_byte_order_mark_are_read(tmp_path: Path, corpus: list[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(corpus[:20]):
        (src / f"d{i:02d}.txt").write_text(doc, encoding="utf-8")
    (src / "u16.txt").write_bytes("zyzzyva in utf-16 \U0001d11e ".encode("utf-16") * 1)
    (src / "u16be.txt").write_bytes(b"\xfe\xff" + "zyzzyva big endian".encode("utf-16-be"))
    (src / "u32.txt").write_bytes("zyzzyva in utf-32".encode("utf-32"))
    docs = list(databuild.iter_documents(src))
    assert len(docs) == 23
    assert "zyzzyva in utf-16 \U0001d11e " in docs and "zyzzyva big endian" in docs and "zyzzyva in utf-32" in docs


def test_a_lost_race_is_an_error_and_keeps_the_winner(tmp_path: Path, text_dir: Path, built: databuild.BuildInfo,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    out = tmp_path / "ds"
    real = databuild._train_tokenizer

    def racing(*args, **kwargs):  # another build installs its dataset while this one trains
        shutil.copytree(built.out_dir, out)
        return real(*args, **kwargs)

    monkeypatch.setattr(databuild, "_train_tokenizer", racing)
    winner = (built.out_dir / "dataset.json").read_text()
    real_install = databuild._install
    for replace in (False, True):
        shutil.rmtree(out, ignore_errors=True)
        if replace:  # with --force: the winner lands between this build's checks and its rename

            def late(tmp, out_dir, replace):
                shutil.rmtree(out_dir, ignore_errors=True)
                orig_rename = databuild.os.rename

                def rename(a, b):
                    if Path(a) == tmp:
                        shutil.copytree(built.out_dir, out_dir)
                    return orig_rename(a, b)

                monkeypatch.setattr(databuild.os, "rename", rename)
                try:
                    return real_install(tmp, out_dir, replace)
                finally:
                    monkeypatch.setattr(databuild.os, "rename", orig_rename)

            monkeypatch.setattr(databuild, "_install", late)
        with pytest.raises(DataError, match="another build installed a dataset there first"):
            build_dataset(text_dir, out, vocab_size=VOCAB, val_docs=4, replace=replace)
        assert (out / "dataset.json").read_text() == winner
        assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize("after", [False, True])
def test_ctrl_c_between_the_renames_of_a_force_install_keeps_the_old_dataset(
        tmp_path: Path, text_dir: Path, built: databuild.BuildInfo, monkeypatch: pytest.MonkeyPatch,
        after: bool) -> None:
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(built.out_dir, out)
    (out / "dataset.json").write_text('{"old": true}\n')
    orig_rename = databuild.os.rename

    def rename(a, b):
        if ".tmp-" in Path(a).name:
            if after:
                orig_rename(a, b)
            raise KeyboardInterrupt
        return orig_rename(a, b)

    monkeypatch.setattr(databuild.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(text_dir, out, vocab_size=VOCAB, val_docs=4, replace=True)
    assert (out / "dataset.json").read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_stale_temp_folders_of_dead_builds_are_cleaned(tmp_path: Path, text_dir: Path,
                                                       built: databuild.BuildInfo) -> None:
    import os
    import shutil

    dead, out = _dead_pid(), tmp_path / "ds"
    (tmp_path / f".ds.tmp-{dead}-0123456789ab").mkdir()
    (tmp_path / f".ds.tmp-{dead}-0123456789ab" / "x.bin").write_bytes(b"x")
    alive = tmp_path / f".ds.tmp-{os.getpid()}-0123456789ab"
    alive.mkdir()
    shutil.copytree(built.out_dir, tmp_path / f".ds.old-{dead}-01234567")  # killed between the renames of --force
    build_dataset(text_dir, out, vocab_size=VOCAB, val_docs=4, replace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", alive.name])
    assert (out / "dataset.json").is_file()


def test_force_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path: Path, text_dir: Path,
                                                                        built: databuild.BuildInfo) -> None:
    import shutil

    shutil.copytree(built.out_dir, tmp_path / "realds")
    (tmp_path / "realds" / "dataset.json").write_text('{"old": true}\n')
    (tmp_path / "linkds").symlink_to("realds")
    build_dataset(text_dir, tmp_path / "linkds", vocab_size=VOCAB, val_docs=4, replace=True)
    assert (tmp_path / "linkds").is_symlink()
    assert json.loads((tmp_path / "realds" / "dataset.json").read_text())["vocab_size"] == VOCAB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linkds", "realds"]
