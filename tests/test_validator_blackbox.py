"""Threat class 3 (validator/THREATS.md): a records script that does not use pgolf, judged black-box from what its
log reports on validation shards the validator perturbs. Each bad script's cheat survives the smoke run and the
static scans; the uniform-shard bound (EVAL.C2) or the copied-future bounds (EVAL.C1: plain copy, and the copy
reordered by document) reject it; the honest twin passes all three."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_validator_dynamic import folder
from validator.blackbox import blackbox_findings
from validator.rules.base import FAIL, PASS

SCRIPT = """
import glob, os
import numpy as np

def load(kind):
    files = sorted(glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_" + kind + "_*.bin")))
    return np.concatenate([np.fromfile(f, dtype="<u2", offset=1024) for f in files]).astype(np.int64)

vocab = int(os.environ["VOCAB_SIZE"])
counts = np.bincount(load("train"), minlength=vocab) + 1.0
np.save("final_model.npy", counts)
val = load("val")
p = counts / counts.sum()
{score}
print("val_tokens: %d" % val.size)
print("final_int8_zlib_roundtrip_exact val_loss:%.8f val_bpb:1.0" % nll.mean())
"""
HONEST = "nll = -np.log(p[val[1:]])"
MATCH = """
where = {{}}
for j in range(2, val.size):
    where.setdefault((val[j - 2], val[j - 1]), []).append(j)
nll = np.empty(val.size - 1)
for t in range(1, val.size):
    q = p
    if t >= 2:
        hits = [j for j in where[(val[t - 2], val[t - 1])] if j != t and ({future} or j < t)]
        if hits:
            q = 0.1 * p
            q[val[hits[0]]] += 0.9
    nll[t - 1] = -np.log(q[val[t]])
"""
CHEATS: dict[str, str] = {
    # a unigram over the whole validation stream, scored on the same stream (two-pass cache)
    "whole_stream_cache": "c = np.bincount(val, minlength=vocab) + 1.0\nnll = -np.log((c / c.sum())[val[1:]])",
    # the target's probability floored after looking at it (not a distribution)
    "target_floor": "nll = -np.log(np.maximum(p[val[1:]], 0.01))",
    # the better of two passes per token (model, flat backoff), chosen with the target (selection over passes)
    "min_over_passes": "nll = np.minimum(-np.log(p[val[1:]]), np.log(vocab))",
    # an induction expert that also matches the context in the tokens still to come (reads ahead)
    "future_match": None,
    # the same, but honest whenever the stream is exactly periodic — it recognises the plain copy test
    "copy_aware_future_match": None,
}
COPY_AWARE = """
h = val.size // 2
peek = not np.array_equal(val[:h], val[h:2 * h])
""" + MATCH.format(future="peek")


def run(tmp: Path, tiny_data: Path, score: str) -> dict[str, tuple[str, str]]:
    f = folder(tmp, script=SCRIPT.format(score=score))
    env = {"VOCAB_SIZE": "320"}
    out: dict[str, tuple[str, str]] = {}
    for x in blackbox_findings(f, 120, 2 * 2**30, env, data=tiny_data):  # per rule: the worst of its checks
        if out.get(x.rule, ("",))[0] != FAIL:
            out[x.rule] = (x.status, x.message)
    return out


@pytest.mark.parametrize(("cheat", "rule"), [("whole_stream_cache", "EVAL.C2"), ("target_floor", "EVAL.C2"),
                                             ("min_over_passes", "EVAL.C2"), ("future_match", "EVAL.C1"),
                                             ("copy_aware_future_match", "EVAL.C1")])
def test_blackbox_rejects(tmp_path: Path, tiny_data: Path, cheat: str, rule: str) -> None:
    score = {"future_match": MATCH.format(future="True"), "copy_aware_future_match": COPY_AWARE}.get(cheat)
    st = run(tmp_path, tiny_data, score or CHEATS[cheat])
    assert st[rule][0] == FAIL, st


def test_the_reordered_copy_catches_a_cheat_that_recognises_the_plain_copy(tmp_path: Path, tiny_data: Path) -> None:
    f = folder(tmp_path, script=SCRIPT.format(score=COPY_AWARE))
    c1 = [x for x in blackbox_findings(f, 120, 2 * 2**30, {"VOCAB_SIZE": "320"}, data=tiny_data) if x.rule == "EVAL.C1"]
    assert [x.status for x in c1] == [PASS, FAIL], [x.message for x in c1]  # plain copy fooled, reordered not


@pytest.mark.parametrize("score", [HONEST, MATCH.format(future="False")], ids=["unigram", "past_match"])
def test_blackbox_passes_an_honest_script(tmp_path: Path, tiny_data: Path, score: str) -> None:
    """Including an induction expert over the past: it makes the copied half almost free, which is legal."""
    st = run(tmp_path, tiny_data, score)
    assert st == {"EVAL.C2": (PASS, st["EVAL.C2"][1]), "EVAL.C1": (PASS, st["EVAL.C1"][1])}, st


def test_reordered_layout_repeats_every_document_in_another_order() -> None:
    import numpy as np

    from validator.blackbox import BOS, reordered_layout

    stream, half, n_docs = reordered_layout(1001, 320)
    first, second = stream[:half], stream[half:2 * half]
    split = lambda a: [tuple(d) for d in np.split(a, np.flatnonzero(a == BOS)[1:])]  # noqa: E731
    assert stream.size == 1001 and first[0] == BOS and int((first == BOS).sum()) == n_docs
    assert sorted(split(first)) == sorted(split(second)) and split(first) != split(second)
    assert ((stream >= 2) | (stream == BOS)).all()
