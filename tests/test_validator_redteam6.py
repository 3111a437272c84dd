"""Bad record folders from the sixth red-team pass (session 28), log wordings: a time figure is read wherever a log
prints it — an evaluation timed on its own line (`eval_time:…` after the score, `total_eval_time` in ms, a TTT pass
`finished … in 560.0s` or `TTT:done`), a Hessian collection in ms or lower case, a training time spelled
`Train time` / `total_train_time` / `training_time` — and a re-run log that repeats a seed's score is still a run
whose evaluation must fit. And the honest variant the parser failed: logs captured with `torchrun --tee` or a
logging module (a prefix before every line). Each case mutates the clean 3-seed folder of the third pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_validator_redteam3 import log_text, record_folder, replace
from test_validator_redteam4 import fails_its_rule, passes_every_rule_of

SCORE = "stride:64 eval_time:70000ms"
SLIDING = "final_int6_sliding_window val_loss"


def before_score(line: str):
    """`line` logged just before each seed's scoring line (a TTT pass whose adapted model the score evaluates)."""
    return replace(SLIDING, f"{line}\n{SLIDING}")


def before_sizes(line: str):
    return replace("Serialized model", f"{line}\nSerialized model")


def prefixed(prefix: str):
    def edit(seed: int, text: str) -> str:
        return "".join(prefix + line for line in text.splitlines(keepends=True))
    return edit


CASES = {  # name: (rule, record_folder keyword arguments, files added afterwards)
    "an eval time on its own line after the score": ("TIME.EVAL", dict(edit_log=replace(
        SCORE, "stride:64\neval_time:712418ms")), {}),
    "a scoring pass's done line": ("TIME.EVAL", dict(edit_log=replace(
        SCORE, "stride:64\nsliding_window_eval:done elapsed=712.4s")), {}),
    "total_eval_time in ms": ("TIME.EVAL", dict(edit_log=lambda s, t: t + "total_eval_time:712418ms\n"), {}),
    "total_eval_time with a space": ("TIME.EVAL", dict(edit_log=lambda s, t: t + "total_eval_time: 712.4s\n"), {}),
    "a TTT pass in words before the score": ("TIME.EVAL", dict(edit_log=before_score(
        "ttt:finished 2000 steps in 560.0s")), {}),
    "a TTT pass under another prefix": ("TIME.EVAL", dict(edit_log=before_score(
        "legal_ttt:done steps:2000 time:560.0s")), {}),
    "an inference pass timed in words": ("TIME.EVAL", dict(edit_log=lambda s, t: t + "inference done in 712.0s\n"),
                                         {}),
    "a TTT pass in capitals": ("TIME.EVAL", dict(edit_log=before_score("TTT:done steps:2000 time:560.0s")), {}),
    "Hessians timed in ms": ("TIME.TRAIN_POSTLOOP", dict(edit_log=before_sizes(
        "GPTQ:collected 67 Hessians in 12400ms")), {}),
    "Hessians timed with a space": ("TIME.TRAIN_POSTLOOP", dict(edit_log=before_sizes(
        "GPTQ:collected 67 Hessians in 12.4 s")), {}),
    "Hessians in lower case": ("TIME.TRAIN_POSTLOOP", dict(edit_log=before_sizes(
        "gptq:collected 67 hessians in 12.4s")), {}),
    "a training time capitalised": ("TIME.TRAIN", dict(edit_log=before_sizes("Train time: 612.3s")), {}),
    "a total_train_time": ("TIME.TRAIN", dict(edit_log=before_sizes("total_train_time:612.3s")), {}),
    "a training_time": ("TIME.TRAIN", dict(edit_log=before_sizes("training_time: 612.3s")), {}),
    "a re-run log repeating a seed's score": ("TIME.EVAL", {}, {"train_seed42_rerun.log": log_text(42).replace(
        SCORE, "stride:64 eval_time:712418ms")}),
}


def test_the_clean_folder_passes_every_rule_the_cases_check(tmp_path: Path) -> None:
    passes_every_rule_of(record_folder(tmp_path), CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_fails_its_rule(tmp_path: Path, case: str) -> None:
    assert fails_its_rule(tmp_path, CASES[case]), case


@pytest.mark.parametrize("prefix", ["[default0]:", "[rank0]: ", "2026-03-26 20:50:06,519 INFO ",
                                    "1774558206.519 [default0]:"])
def test_a_log_captured_with_a_line_prefix_reads_as_the_plain_log(tmp_path: Path, prefix: str) -> None:
    """torchrun --tee and logging modules put a tag before every line: the folder passes as its plain twin does, and
    a bad time behind the prefix is still read."""
    passes_every_rule_of(record_folder(tmp_path, edit_log=prefixed(prefix)), CASES)
    over = replace(SCORE, "stride:64 eval_time:712418ms")
    assert fails_its_rule(tmp_path / "over", ("TIME.EVAL", dict(edit_log=lambda s, t: prefixed(prefix)(s, over(s, t))),
                                              {}))
