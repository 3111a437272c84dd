"""TOK.BPB for records folders: the byte denominator implied by the logs against the validation text's UTF-8
bytes, and a shipped byte table against the shipped tokenizer's pieces. Each inflated denominator is an ERROR;
the canonical ones pass."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.test_validator_rules import make_folder, write_log
from validator.cli import validate_folder
from validator.rules.tokenizer import CANONICAL_VAL_BYTES, reference_bytes


def tok_findings(folder: Path) -> list:
    return [f for f in validate_folder(folder) if f.rule == "TOK.BPB"]


def with_bytes_per_token(tmp: Path, val_tokens: int, total_bytes: float) -> Path:
    """A complete folder whose logs' loss/bpb imply `total_bytes` over `val_tokens`."""
    folder = make_folder(tmp)
    bpt = total_bytes / (val_tokens - 1)
    for p in folder.glob("*.log"):
        p.unlink()
    for seed, bpb in {1: 1.081, 2: 1.0812, 3: 1.0814}.items():
        write_log(folder, seed, bpb, len((folder / "train_gpt.py").read_bytes()), val_tokens=val_tokens)
        log = folder / f"train_seed{seed}.log"
        text = log.read_text()
        for line in text.splitlines():
            if "val_loss:" in line and "val_bpb:" in line and not line.startswith("step"):
                loss = bpb * math.log(2) * bpt
                text = text.replace(line, line.split(" val_loss:")[0] + f" val_loss:{loss:.8f} val_bpb:{bpb:.8f}"
                                    + (" eval_time:80000ms" if "_exact" not in line else ""))
        log.write_text(text)
    return folder


@pytest.mark.parametrize(("val_tokens", "factor"), [
    (40_540_160, 1.0413),  # Scylla: byte-fallback pieces counted as 3 bytes (+4.13 %)
    (45_508_608, 1.002),  # a subtler overcount: +0.2 %
    (62_021_632, 1.20),  # spaces counted as 3 bytes (Issue #897)
])
def test_inflated_denominator_is_an_error(tmp_path: Path, val_tokens: int, factor: float) -> None:
    folder = with_bytes_per_token(tmp_path, val_tokens, CANONICAL_VAL_BYTES * factor)
    bad = [f for f in tok_findings(folder) if f.status == "fail" and f.severity == "ERROR"]
    assert bad and "inflated" in bad[0].message, tok_findings(folder)


@pytest.mark.parametrize(("val_tokens", "total"), [
    (40_540_160, 151_078_218), (47_851_520, 151_074_496), (151_076_864, 151_076_863), (63_779_840, 155_769_744),
])
def test_canonical_denominators_pass(tmp_path: Path, val_tokens: int, total: int) -> None:
    folder = with_bytes_per_token(tmp_path, val_tokens, total)
    assert {f.status for f in tok_findings(folder)} <= {"pass"}, tok_findings(folder)


def test_shipped_byte_table_against_the_shipped_tokenizer(tmp_path: Path, tiny_data: Path) -> None:
    model = next((tiny_data / "tokenizer").glob("*.model"))
    ref = np.array(reference_bytes(model))
    good = make_folder(tmp_path / "good")
    bad = make_folder(tmp_path / "bad")
    for folder, table in ((good, ref), (bad, np.where(ref == 1, 3, ref))):  # byte pieces counted as 3 bytes
        (folder / "tokenizer.model").write_bytes(model.read_bytes())
        np.savez(folder / "candidate.meta.npz", base_bytes=table.astype(np.int16))
    fails = [f for f in tok_findings(bad) if f.status == "fail"]
    assert fails and "candidate.meta.npz" in fails[0].message and fails[0].severity == "ERROR"
    assert not [f for f in tok_findings(good) if f.status == "fail"]
