"""Shard format, shard discovery and the baseline loader semantics (core.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import (
    HEADER_INTS,
    SHARD_MAGIC,
    SHARD_VERSION,
    DataError,
    DistributedTokenLoader,
    TokenStream,
    load_validation_tokens,
    read_shard,
    shard_files,
)
from dataprep.build import write_shard


def raw_shard(path: Path, tokens: list[int], magic: int = SHARD_MAGIC, version: int = SHARD_VERSION,
              count: int | None = None, extra: bytes = b"") -> Path:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = [magic, version, len(tokens) if count is None else count]
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes() + extra)
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


def test_round_trip_numpy_and_list(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 2, 65535, 1000, 7], dtype=np.int64)
    write_shard(tmp_path / "a.bin", tokens)
    out = read_shard(tmp_path / "a.bin")
    assert out.dtype == torch.uint16
    assert out.to(torch.int64).tolist() == tokens.tolist()
    write_shard(tmp_path / "b.bin", [5, 4, 3])
    assert read_shard(str(tmp_path / "b.bin")).to(torch.int64).tolist() == [5, 4, 3]
    write_shard(tmp_path / "empty.bin", [])
    assert read_shard(tmp_path / "empty.bin").numel() == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_written_bytes_are_the_challenge_format(tmp_path: Path) -> None:
    write_shard(tmp_path / "s.bin", [1, 258, 3])
    data = (tmp_path / "s.bin").read_bytes()
    header = np.frombuffer(data[: HEADER_INTS * 4], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 3] and not header[3:].any()
    assert data[HEADER_INTS * 4 :] == bytes([1, 0, 2, 1, 3, 0])  # little-endian uint16


def test_write_rejects_bad_tokens(tmp_path: Path) -> None:
    for bad in ([-1, 2], [0, 65536], np.array([0.5, 1.0]), np.zeros((2, 2), dtype=np.int64)):
        with pytest.raises(DataError) as e:
            write_shard(tmp_path / "x.bin", bad)
        assert_one_line_error(e, str(tmp_path / "x.bin"))
    assert not (tmp_path / "x.bin").exists()


def test_bad_magic(tmp_path: Path) -> None:
    p = raw_shard(tmp_path / "x.bin", [1, 2], magic=1234)
    with pytest.raises(DataError) as e:
        read_shard(p)
    assert_one_line_error(e, str(p), "magic 1234", "expected 20240520")


def test_bad_version(tmp_path: Path) -> None:
    p = raw_shard(tmp_path / "x.bin", [1, 2], version=7)
    with pytest.raises(DataError) as e:
        read_shard(p)
    assert_one_line_error(e, str(p), "version 7", "expected 1")


def test_truncated_shard(tmp_path: Path) -> None:
    p = raw_shard(tmp_path / "x.bin", [1] * 10, count=1000)
    with pytest.raises(DataError) as e:
        read_shard(p)
    assert_one_line_error(e, str(p), "truncated", "1000 tokens (3024 bytes)", "file has 1044 bytes")


def test_trailing_bytes(tmp_path: Path) -> None:
    p = raw_shard(tmp_path / "x.bin", [1, 2, 3], extra=b"\0\0")
    with pytest.raises(DataError) as e:
        read_shard(p)
    assert_one_line_error(e, str(p), "3 tokens", "file has 1032 bytes")


def test_file_shorter_than_header(tmp_path: Path) -> None:
    p = tmp_path / "short.bin"
    p.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError) as e:
        read_shard(p)
    assert_one_line_error(e, str(p), "3 bytes", "1024-byte header")


def test_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        read_shard(tmp_path / "nope.bin")
    assert_one_line_error(e, str(tmp_path / "nope.bin"), "does not exist")


def test_shard_files(tmp_path: Path) -> None:
    for name in ("fineweb_train_000002.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin",
                 "fineweb_val_000000.bin", "other.bin"):
        write_shard(tmp_path / name, [1])
    assert [p.name for p in shard_files(tmp_path, "train")] == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert [p.name for p in shard_files(str(tmp_path), "val")] == ["fineweb_val_000000.bin"]
    with pytest.raises(DataError) as e:
        shard_files(tmp_path, "test")
    assert_one_line_error(e, str(tmp_path), "fineweb_test_*.bin", "pgolf data build")
    with pytest.raises(DataError) as e:
        shard_files(tmp_path / "missing", "train")
    assert_one_line_error(e, f"data path {tmp_path / 'missing'} does not exist")
    with pytest.raises(DataError) as e:
        shard_files(tmp_path / "other.bin", "train")
    assert_one_line_error(e, str(tmp_path / "other.bin"), "not a directory")


# --- loader semantics -----------------------------------------------------------------------------


class ReferenceLoader:
    """Straightforward model of the baseline: the shards, concatenated, repeated forever."""

    def __init__(self, shards: list[list[int]], rank: int, world_size: int) -> None:
        self.stream = [t for s in shards for t in s]
        self.pos = 0
        self.rank, self.world_size = rank, world_size

    def next_batch(self, global_tokens: int, seq_len: int, accum: int) -> tuple[list[int], list[int]]:
        local = global_tokens // (self.world_size * accum)
        span = local + 1
        chunk = [self.stream[(self.pos + i) % len(self.stream)] for i in range(span * self.world_size)]
        self.pos += span * self.world_size
        mine = chunk[self.rank * span : (self.rank + 1) * span]
        return mine[:-1], mine[1:]


@pytest.fixture
def loader_shards(tmp_path: Path) -> tuple[list[Path], list[list[int]]]:
    rng = np.random.default_rng(0)
    sizes = [37, 5, 0, 120, 64]  # includes a shard smaller than a batch and an empty one
    shards = [rng.integers(0, 65536, size=n).tolist() for n in sizes]
    files = []
    for i, s in enumerate(shards):
        files.append(tmp_path / f"fineweb_train_{i:06d}.bin")
        write_shard(files[-1], s)
    return files, shards


@pytest.mark.parametrize(("world_size", "accum"), [(1, 1), (2, 1), (3, 2), (4, 2)])
def test_loader_matches_reference_all_ranks(loader_shards: tuple[list[Path], list[list[int]]],
                                            world_size: int, accum: int) -> None:
    files, shards = loader_shards
    seq_len = 8
    global_tokens = 16 * world_size * accum
    total = sum(len(s) for s in shards)
    steps = 3 * total // (global_tokens + world_size) + 2  # wraps around the shards at least twice
    for rank in range(world_size):
        loader = DistributedTokenLoader(files, rank, world_size, torch.device("cpu"))
        ref = ReferenceLoader(shards, rank, world_size)
        for _ in range(steps):
            x, y = loader.next_batch(global_tokens, seq_len, accum)
            rx, ry = ref.next_batch(global_tokens, seq_len, accum)
            assert x.dtype == torch.int64 and y.dtype == torch.int64
            assert x.shape == (16 // seq_len, seq_len) and y.shape == x.shape
            assert x.reshape(-1).tolist() == rx and y.reshape(-1).tolist() == ry
            assert torch.equal(x[:, 1:], y[:, :-1])


def test_ranks_get_disjoint_consecutive_spans(tmp_path: Path) -> None:
    write_shard(tmp_path / "fineweb_train_000000.bin", list(range(1000)))
    loaders = [DistributedTokenLoader([tmp_path / "fineweb_train_000000.bin"], r, 2, torch.device("cpu"))
               for r in range(2)]
    xs = [ld.next_batch(32, 4, 2)[0].reshape(-1).tolist() for ld in loaders]
    assert xs[0] == list(range(0, 8)) and xs[1] == list(range(9, 17))
    xs = [ld.next_batch(32, 4, 2)[0].reshape(-1).tolist() for ld in loaders]
    assert xs[0] == list(range(18, 26)) and xs[1] == list(range(27, 35))


def test_token_stream_wraps(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.bin", [1, 2, 3])
    write_shard(tmp_path / "b.bin", [4, 5])
    stream = TokenStream([tmp_path / "a.bin", tmp_path / "b.bin"])
    assert stream.take(4).tolist() == [1, 2, 3, 4]
    assert stream.take(7).tolist() == [5, 1, 2, 3, 4, 5, 1]
    with pytest.raises(DataError):
        TokenStream([])


def test_loader_rejects_indivisible_batch(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.bin", list(range(100)))
    loader = DistributedTokenLoader([tmp_path / "a.bin"], 0, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="seq_len 8"):
        loader.next_batch(20, 8, 1)


def test_load_validation_tokens(tmp_path: Path) -> None:
    write_shard(tmp_path / "fineweb_val_000000.bin", list(range(10)))
    write_shard(tmp_path / "fineweb_val_000001.bin", list(range(10, 25)))
    files = shard_files(tmp_path, "val")
    val = load_validation_tokens(files, 8)
    assert val.dtype == torch.uint16
    assert val.to(torch.int64).tolist() == list(range(25))  # 24 predicted tokens = 3 * 8, + 1
    assert load_validation_tokens(files, 10).to(torch.int64).tolist() == list(range(21))
    assert load_validation_tokens(files, 24).numel() == 25
    with pytest.raises(DataError) as e:
        load_validation_tokens(files, 25)
    assert_one_line_error(e, str(tmp_path), "25 tokens", "seq_len 25")
    with pytest.raises(DataError):
        load_validation_tokens([], 8)
