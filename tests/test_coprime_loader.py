"""coprime_loader: the record's cursor draws (phase, start, coprime stride), every block once per pass, and
batches that are shifted windows of the shards split over ranks (PR #1060)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import ConfigError, resolve
from core.data import HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION
from core.registry import Registry
from plugins.coprime_loader import CoprimeStrideLoader, path_seed

REGISTRY = Registry()


def write_shard(path: Path, tokens: np.ndarray) -> Path:
    header = np.zeros(HEADER_BYTES // 4, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())
    return path


@pytest.fixture
def shards(tmp_path):
    return [write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(1000 * i, 1000 * i + n) % 60000)
            for i, n in enumerate((1001, 777, 1500))]


def test_cursor_order_is_the_records_draws_and_visits_every_block_once(shards):
    seq = 16
    loader = CoprimeStrideLoader(shards, 0, 1, torch.device("cpu"))
    got = loader.take(1, seq, 200)  # shard 1: 777 tokens
    rng = np.random.Generator(np.random.PCG64(path_seed(shards)))  # independent replay of the record's draws

    def one_pass() -> tuple[int, list[tuple[int, int]]]:
        phase = int(rng.integers(min(seq - 1, 777 - seq - 1) + 1))
        bc = (777 - 1 - phase) // seq
        start = int(rng.integers(bc))
        while math.gcd(stride := int(rng.integers(1, bc)), bc) != 1:
            pass
        return phase, [(1, phase + ((start + k * stride) % bc) * seq) for k in range(bc)]

    (phase, first), (phase2, second) = one_pass(), one_pass()  # exhausted: a fresh pass, its own phase and count
    assert got[:len(first)] == first and got[len(first):len(first) + len(second)] == second[:200 - len(first)]
    for ph, blocks in ((phase, first), (phase2, second)):  # every block once per pass
        assert sorted(p for _, p in blocks) == [ph + k * seq for k in range(len(blocks))]


def test_batches_are_shifted_windows_split_over_ranks(shards):
    seq, rows = 16, 6
    tokens = [np.fromfile(f, dtype="<u2", offset=HEADER_BYTES).astype(np.int64) for f in shards]
    per_rank = [CoprimeStrideLoader(shards, r, 2, torch.device("cpu")) for r in (0, 1)]
    ref = CoprimeStrideLoader(shards, 0, 1, torch.device("cpu"))
    for _ in range(3):
        windows = ref.global_windows(seq, 2 * rows)
        ref.batches += 1
        assert len(windows) == 2 * rows
        for r, loader in enumerate(per_rank):
            x, y = loader.next_batch(2 * rows * seq, seq, 1)
            assert x.shape == (rows, seq)
            for i, (si, pos) in enumerate(windows[r::2]):
                assert torch.equal(x[i], torch.as_tensor(tokens[si][pos : pos + seq]))
                assert torch.equal(y[i], torch.as_tensor(tokens[si][pos + 1 : pos + seq + 1]))


def test_bad_setting_is_a_configuration_error():
    with pytest.raises(ConfigError, match=r"coprime_loader.ramp_batches: expected an integer >= 1, got 0"):
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["coprime_loader"],
                sets=["coprime_loader.ramp_batches=0"], check_plugins=REGISTRY.check,
                check_settings=REGISTRY.check_settings)
