"""Bad record folders from the seventh red-team pass (session 28): a seed counted twice in the significance test
(its log copied into a re-run folder), a folder name that is no real date or not ASCII (`2026-19-45_…`,
`2020-04-29_…`, a trailing newline, Arabic-Indic digits), a second records folder inside the first, two files whose
names differ only in case, a zero-width character in a file name, and a shipped wrapper larger than the code size
the logs count. Each case mutates the clean 3-seed folder of the third pass."""

from __future__ import annotations

import base64
import lzma
import os
from pathlib import Path

import pytest
from test_validator_redteam3 import SCRIPT, SEEDS, errors, log_text, record_folder

from validator.rules import FolderContext
from validator.rules.stats import seed_values


def renamed(folder: Path, name: str) -> Path:
    return folder.rename(folder.parent / name)


@pytest.mark.parametrize("name", ["2026-19-45_Fixture", "2020-04-29_Fixture", "2026-03-23_Fixture\n",
                                  "\u0662\u0660\u0662\u0666-\u0660\u0663-\u0662\u0663_Fixture", "2999-01-01_Fixture"])
def test_a_folder_name_that_is_no_real_ascii_date_fails(tmp_path: Path, name: str) -> None:
    assert errors(renamed(record_folder(tmp_path), name), "FILES.PR_SCOPE")


def test_the_clean_folder_name_passes(tmp_path: Path) -> None:
    assert not errors(record_folder(tmp_path), "FILES.PR_SCOPE") and not errors(record_folder(
        tmp_path / "b"), "FILES.PLAIN_TEXT")


@pytest.mark.parametrize(("files", "rule"), [
    ({"old/train_gpt.py": SCRIPT, "old/submission.json": "{}"}, "FILES.PR_SCOPE"),  # a second record inside
    ({"Submission.json": '{"val_bpb": 1.05}'}, "FILES.PR_SCOPE"),  # one file on macOS/Windows, two here
    ({"Train_GPT.py": SCRIPT.replace("range(100)", "range(200)")}, "FILES.PR_SCOPE"),
    ({"train_gpt\u200b.py": SCRIPT}, "FILES.PLAIN_TEXT"),  # a name that looks like train_gpt.py
])
def test_files_that_make_two_submissions_of_one_fail(tmp_path: Path, files: dict, rule: str) -> None:
    folder = record_folder(tmp_path)
    for name, text in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)
    assert errors(folder, rule), files


def test_a_seed_copied_into_a_rerun_folder_is_one_replicate(tmp_path: Path) -> None:
    """STAT.SIG's Welch test takes one value per seed: six logs of three seeds were six replicates (p shrank)."""
    folder = record_folder(tmp_path)
    (folder / "rerun").mkdir()
    for seed in SEEDS:
        text = log_text(seed)
        bpb = f"{1.1248 + seed * 1e-7:.8f}"
        (folder / "rerun" / f"train_seed{seed}.log").write_text(text.replace(bpb, f"{float(bpb) + 1e-6:.8f}"))
    bpb, loss = seed_values(FolderContext(folder))
    assert len(bpb) == len(loss) == len(SEEDS)


def wrapper(source: str) -> str:
    payload = lzma.compress(source.encode(), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    return ('import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("' + base64.b85encode(payload).decode() +
            '"),format=L.FORMAT_RAW,filters=[{"id":L.FILTER_LZMA2}]))\n')


def test_a_shipped_wrapper_larger_than_the_logged_code_size_counts(tmp_path: Path) -> None:
    """SIZE.CODE_WRAPPED: the wrapper that ships is the code; when it is larger than the compressed size the logs
    count and the total with it passes the cap, the folder fails (it only warned)."""
    padded = wrapper(SCRIPT + "#" + os.urandom(15_000).hex() + "\n")

    def edit(seed: int, text: str) -> str:
        return text.replace("Serialized model int6+zstd: 15000000 bytes\nCode size: 50000 bytes\nTotal submission "
                            "size int6+zstd: 15050000 bytes", "Serialized model int6+zstd: 15990000 bytes\nCode size "
                            "(compressed): 5000 bytes\nTotal submission size int6+zstd: 15995000 bytes")
    assert len(padded) > 10_000
    assert errors(record_folder(tmp_path, edit_log=edit, script=padded), "SIZE.CODE_WRAPPED")
    exact = wrapper(SCRIPT)
    same = record_folder(tmp_path / "ok", edit_log=lambda s, t: edit(s, t).replace("(compressed): 5000", (
        f"(compressed): {len(exact)}")).replace("15995000", str(15_990_000 + len(exact))), script=exact)
    assert not errors(same, "SIZE.CODE_WRAPPED")
