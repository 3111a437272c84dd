"""Tokenizer-side hooks: pg_text_transform (data build), pg_byte_tables and pg_val_byte_counts (scoring),
with the CaseOps plugin: BPB is counted on the ORIGINAL text's bytes."""

from __future__ import annotations

import math
import random

import pytest
import torch

from core.config import resolve
from core.data import DataError, read_shard, shard_files
from core.registry import Registry
from core.scoring import ScoreSink, ScoringError, evaluate
from core.tokenizer import check_position_bytes
from core.train import plain_evaluator, setup
from dataprep.build import text_transform_of, write_shard
from plugins.caseops import (
    ALLCAPS,
    CAPNEXT,
    ESC,
    TITLE,
    CaseOpsError,
    CaseOpsTransform,
    decode_caseops,
    encode_caseops,
    original_bytes,
)

REG = Registry()


def test_encode_marks_title_allcaps_and_mixed_words_and_escapes_operators():
    text = f"The NASA launch, McDonald iPhone A x{TITLE}y é"
    want = (f"{TITLE}the {ALLCAPS}nasa launch, {TITLE}mc{CAPNEXT}donald i{CAPNEXT}phone {TITLE}a "
            f"x{ESC}{TITLE}y é")
    assert encode_caseops(text) == want and decode_caseops(want) == text


def test_round_trip_and_byte_counts_on_random_text():
    rng = random.Random(0)
    alphabet = "aAbBzZ  .\n1é中" + TITLE + ALLCAPS + CAPNEXT + ESC
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        enc = encode_caseops(text)
        assert decode_caseops(enc) == text
        cuts = sorted(rng.sample(range(len(enc) + 1), min(3, len(enc) + 1)))
        pieces = [enc[a:b] for a, b in zip([0, *cuts], [*cuts, len(enc)], strict=True)]
        assert sum(original_bytes(pieces)) == len(text.encode("utf-8"))  # however the text is cut


@pytest.mark.parametrize("bad", [TITLE, f"{TITLE}1", f"a{TITLE}b", f"{CAPNEXT}{CAPNEXT}a", ESC])
def test_decode_rejects_malformed_text(bad):
    with pytest.raises(CaseOpsError):
        decode_caseops(bad)


def _config(data, plugins, sets=()):
    from tests.conftest import TINY_CORE

    return resolve(plugin_config_classes=REG.config_classes(), plugins=plugins,
                   sets=[*TINY_CORE, f"core.data_path={data}", "core.val_max_tokens=0", *sets],
                   check_plugins=REG.check)


def test_the_plugin_supplies_the_transform_to_the_data_builder(tiny_caseops_data):
    data, val_docs = tiny_caseops_data
    assert isinstance(text_transform_of(_config(data, ["caseops"]), REG), CaseOpsTransform)
    assert text_transform_of(_config(data, []), REG) is None
    assert [p.name for p in shard_files(data, "val")] == ["fineweb_val_000000.bin"]  # the sidecar is no shard
    tokens = read_shard(data / "fineweb_val_000000.bin")
    sidecar = read_shard(data / "fineweb_val_bytes_000000.bin").long()
    assert sidecar.shape == tokens.shape and int(sidecar[tokens == 1].sum()) == 0
    assert int(sidecar.sum()) == sum(len(d.encode("utf-8")) for d in val_docs)  # every original byte, once


def test_bpb_counts_the_original_texts_bytes(tiny_caseops_data):
    """Score the whole val stream: the bytes are those of the original val documents, counted here
    independently, and val_bpb = val_loss / ln 2 * tokens / those bytes."""
    data, val_docs = tiny_caseops_data
    n_val = read_shard(data / "fineweb_val_000000.bin").numel()
    sets = [f"core.eval_seq_len={n_val - 1}", f"core.val_batch_size={n_val - 1}"]  # nothing trimmed
    run = setup(_config(data, ["caseops"], sets), REG, make_dir=False)
    assert run.val_tokens.numel() == n_val
    original = sum(len(d.encode("utf-8")) for d in val_docs)
    res = evaluate(run, run.eval_model, plain_evaluator(run), run.val_tokens)
    assert res.bytes == original
    assert res.val_bpb == pytest.approx(res.val_loss / math.log(2) * res.tokens / original, rel=1e-12)

    # the same stream through the byte tables: the core's counts each operator piece as 3 bytes (its
    # UTF-8), the plugin's tables as 0 -- the difference is exactly the scored operator tokens
    plain = setup(_config(data, [], sets), REG, make_dir=False)
    tables_only = setup(_config(data, ["caseops"], [*sets, "caseops.sidecar=false"]), REG, make_dir=False)
    assert plain.val_bytes is None and tables_only.val_bytes is None
    ops = torch.tensor([int(run.tokenizer.piece_to_id(s)) for s in (TITLE, ALLCAPS, CAPNEXT, ESC)])
    n_ops = int(torch.isin(run.val_tokens[1:].long(), ops).sum())
    assert n_ops > 50
    core_bytes = evaluate(plain, run.eval_model, plain_evaluator(plain), plain.val_tokens).bytes
    plugin_bytes = evaluate(tables_only, run.eval_model, plain_evaluator(tables_only), tables_only.val_tokens).bytes
    assert core_bytes - plugin_bytes == 3 * n_ops
    assert core_bytes != original


def test_sidecar_errors_are_one_line(tiny_caseops_data, tiny_data, tmp_path):
    data, _ = tiny_caseops_data
    with pytest.raises(DataError, match="caseops: the tokenizer has no piece for the TITLE operator") as info:
        setup(_config(tiny_data, ["caseops"]), REG, make_dir=False)
    assert "\n" not in str(info.value)
    copy = tmp_path / "data"
    copy.mkdir()
    for f in data.rglob("*"):
        if f.is_file() and "bytes" not in f.name:
            (copy / f.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(data)).write_bytes(f.read_bytes())
    with pytest.raises(DataError, match=r"caseops: no byte sidecar fineweb_val_bytes_\*\.bin in"):
        setup(_config(copy, ["caseops"]), REG, make_dir=False)
    shifted = read_shard(data / "fineweb_val_bytes_000000.bin").numpy()[3:]  # three positions off
    write_shard(copy / "fineweb_val_bytes_000000.bin", list(shifted) + [0, 0, 0])
    with pytest.raises(DataError, match="not aligned with the validation tokens"):
        setup(_config(copy, ["caseops"]), REG, make_dir=False)
    with pytest.raises(DataError, match="3 per-position byte counts for 4 validation tokens"):
        check_position_bytes(torch.ones(3, dtype=torch.int32), torch.ones(4), "pg_val_byte_counts")
    with pytest.raises(ScoringError, match="one byte count per token"):
        ScoreSink(torch.ones(4, dtype=torch.int64), setup_tables(), position_bytes=torch.ones(3))


def setup_tables():
    from core.tokenizer import ByteTables

    return ByteTables(torch.ones(8, dtype=torch.int16), torch.zeros(8, dtype=torch.bool),
                      torch.zeros(8, dtype=torch.bool))
