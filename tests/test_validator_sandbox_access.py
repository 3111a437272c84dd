"""Threat class 2 (validator/THREATS.md): data access in the sandboxed run is identified by resolved path and
inode, not by file name, and is not timed against one chosen artifact write. Each bad script reads data by a
route the name-based, single-write audit missed; its clean twin passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_validator_dynamic import folder, smoke
from validator.rules.base import FAIL, PASS

SHARD = "sorted(glob.glob(os.path.join(os.environ['DATA_PATH'], 'fineweb_{kind}_*.bin')))[0]"


def alias(kind: str, how: str, name: str) -> str:
    """Code that makes `name` another path to the first {kind} shard (symlink or hard link)."""
    return f"os.{how}({SHARD.format(kind=kind)}, {name!r})"


@pytest.mark.parametrize(("before", "train", "after", "rule", "needle"), [
    # the validation shard reaches the artifact through a symlink with an innocent name
    (alias("val", "symlink", "aux.bin"), "counts += np.bincount(np.fromfile('aux.bin', dtype='<u2', offset=1024), "
     "minlength=vocab)", "", "DATA.NO_VAL_IN_TRAIN", "changes"),
    # ... through a hard link
    (alias("val", "link", "aux2.bin"), "counts += np.bincount(np.fromfile('aux2.bin', dtype='<u2', offset=1024), "
     "minlength=vocab)", "", "DATA.NO_VAL_IN_TRAIN", "changes"),
    # a placeholder artifact written first, so every validation read looks 'after the artifact'
    ("np.save('final_model.npy', np.zeros(1))", "counts += np.bincount(load('val'), minlength=vocab)", "",
     "DATA.NO_VAL_IN_TRAIN", "changes"),
    # training data read at evaluation through a symlink named like a cache
    (alias("train", "symlink", "eval_cache.bin"), "", "extra = np.fromfile('eval_cache.bin', dtype='<u2')",
     "DATA.NO_TRAIN_AT_EVAL", "opened as"),
    # training data read at evaluation, then the artifact rewritten so the read looks 'before' it
    ("", "", "extra = load('train')\nnp.save('final_model.npy', counts)", "DATA.NO_TRAIN_AT_EVAL", "first written"),
], ids=["val-symlink", "val-hardlink", "placeholder-artifact", "train-symlink-at-eval", "artifact-rewritten"])
def test_data_access_evasion_is_caught(tmp_path: Path, tiny_data: Path, before, train, after, rule, needle) -> None:
    st = smoke(folder(tmp_path, before=before, train=train, after=after), tiny_data)
    assert st["FILES.RUNS_IN_FOLDER"][0] == PASS, st
    assert st[rule][0] == FAIL and needle in st[rule][1], st


def test_innocent_aliases_pass(tmp_path: Path, tiny_data: Path) -> None:
    """A symlink to the training shard read during training (not evaluation) is fine."""
    st = smoke(folder(tmp_path, before=alias("train", "symlink", "mirror.bin"),
                      train="counts += np.bincount(np.fromfile('mirror.bin', dtype='<u2', offset=1024), "
                            "minlength=vocab)"), tiny_data)
    assert {r: s for r, (s, _) in st.items()} == {"FILES.RUNS_IN_FOLDER": PASS, "DATA.NO_TRAIN_AT_EVAL": PASS,
                                                   "DATA.NO_VAL_IN_TRAIN": PASS}, st
