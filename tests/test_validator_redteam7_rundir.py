"""Eighth red team (session 29), two threat classes (validator/THREATS.md §4):

* a pgolf run directory whose records disagree: train.log's train_time/step_avg figures ×7 (728 s) while
  events.jsonl and metrics.json say 104 s passed TIME.TRAIN; events.jsonl and metrics.json edited to a better
  val_bpb while train.log prints the real one passed JSON.CONSISTENCY. Every record of one run (events.jsonl,
  train.log, metrics.json) must state the same facts (a disagreement is a JSON.CONSISTENCY ERROR), and the budget
  rules judge each record, so the worst figure counts;
* a records script whose training clock is scaled or shifted in the code (`800.0 * (time.perf_counter() - t0)`
  where the record had `1000.0 *`): every logged train time and the script's cap check under-report together, so
  no figure disagrees; TIME.TRAIN fails the arithmetic itself (`validator.rules.clocks`).

Run-directory cases mutate a genuine pgolf run (trained here, tiny, on the CPU), which passes every rule the
cases check; script cases mutate the clean 3-seed folder of the third pass."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from test_validator_redteam3 import SCRIPT, errors, record_folder
from test_validator_redteam4 import passes_every_rule_of

from validator.cli import validate_folder
from validator.rules.clocks import clock_problems, is_unit
from validator.rules.code import CodeUnit


def _scale(factor: float, key: str = "train_time", unit: str = "ms"):
    """An edit of train.log multiplying every `key:<n><unit>` figure (and step_avg with train_time) by factor."""
    def edit(text: str) -> str:
        text = re.sub(rf"\b{key}:(\d+){unit}\b", lambda m: f"{key}:{round(int(m[1]) * factor)}{unit}", text)
        if key == "train_time":
            text = re.sub(r"step_avg:([\d.]+)ms", lambda m: f"step_avg:{float(m[1]) * factor:.2f}ms", text)
        return text
    return {"train.log": edit}


def _scale_to(total_ms: float):
    """An edit of train.log scaling every train_time/step_avg figure so that the largest reads `total_ms` (the
    tiny run has 6 steps: a figure far over 600 s, so one average step of allowance cannot cover it)."""
    def edit(text: str) -> str:
        largest = max(int(x) for x in re.findall(r"\btrain_time:(\d+)ms", text))
        return _scale(total_ms / max(largest, 1))["train.log"](text)
    return {"train.log": edit}


def _json_edit(name: str, **fields):
    def edit(text: str) -> str:
        if name == "metrics.json":
            return json.dumps({**json.loads(text), **fields}, indent=2) + "\n"
        lines = []
        for line in text.splitlines():
            ev = json.loads(line)
            if ev.get("event") == "final_eval":
                ev.update({k: v for k, v in fields.items() if k in ev})
            lines.append(json.dumps(ev))
        return "\n".join(lines) + "\n"
    return edit


def _score_edit():
    """events.jsonl and metrics.json claim 0.05 better than the train.log the run printed."""
    return {"events.jsonl": lambda t: _json_edit("events.jsonl", **_better(t))(t),
            "metrics.json": lambda t: _json_edit("metrics.json", **_better_metrics(t))(t)}


def _better(events: str) -> dict:
    ev = next(json.loads(x) for x in events.splitlines() if '"final_eval"' in x)
    return {"val_bpb": ev["val_bpb"] - 0.05, "val_loss": ev["val_loss"] - 0.1}


def _better_metrics(text: str) -> dict:
    m = json.loads(text)
    return {"val_bpb": m["val_bpb"] - 0.05, "val_loss": m["val_loss"] - 0.1}


def _sizes_edit(text: str) -> str:
    return re.sub(r"(Total submission size \S+: )(\d+)", lambda m: f"{m[1]}{int(m[2]) - 1000}", text)


def _steps_edit(text: str) -> str:
    m = json.loads(text)
    return json.dumps({**m, "steps": m["steps"] + 3}, indent=2) + "\n"


# name -> (rule, {file: edit of its text}): each fails its rule on the genuine run directory
RUN_CASES = {
    "trainlog_train_time_over": ("TIME.TRAIN", _scale_to(10_000_000.0)),
    "trainlog_train_time_x7_consistency": ("JSON.CONSISTENCY", _scale(7.0)),
    "trainlog_train_time_x0.8": ("JSON.CONSISTENCY", _scale(0.8)),
    "score_edited_in_events_and_metrics": ("JSON.CONSISTENCY", _score_edit()),
    "eval_time_in_trainlog_x10": ("JSON.CONSISTENCY", _scale(10.0, "eval_time")),
    "eval_time_over_in_trainlog": ("TIME.EVAL", {"train.log": lambda t: re.sub(r"eval_time:\d+ms",
                                                                              "eval_time:700000ms", t)}),
    "total_size_in_trainlog": ("JSON.CONSISTENCY", {"train.log": _sizes_edit}),
    "steps_in_metrics": ("JSON.CONSISTENCY", {"metrics.json": _steps_edit}),
    "train_time_over_in_metrics_only": ("TIME.TRAIN", {"metrics.json": lambda t: _json_edit(
        "metrics.json", train_time_ms=10_000_000.0)(t)}),  # far over: the tiny run has 6 steps
}


@pytest.fixture(scope="module")
def genuine_run(tiny_data, tiny_core, tmp_path_factory) -> Path:
    """A finished pgolf run (plugins ema and zstd, periodic validation) as `pgolf train` writes it."""
    from pgolf.cli import main

    out = tmp_path_factory.mktemp("rt7runs")
    argv = ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", str(tiny_data), "--set",
            f"core.out_dir={out}", "--set", "core.run_id=genuine", "--set", "core.iterations=6", "--plugins",
            "ema,zstd", "--set", "core.val_loss_every=3"]
    assert main(argv) == 0
    return out / "genuine"


def test_a_calibrated_run_agrees(tiny_data, tiny_core, tmp_path: Path) -> None:
    """With post-loop calibration (GPTQ Hessians) train.log prints the loop's time on its step lines and the total
    on `train_time_with_calibration`; events.jsonl and metrics.json carry both: a genuine run agrees."""
    from pgolf.cli import main

    argv = ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", str(tiny_data), "--set",
            f"core.out_dir={tmp_path}", "--set", "core.run_id=cal", "--set", "core.iterations=4", "--plugins", "gptq"]
    assert main(argv) == 0
    run = tmp_path / "cal"
    assert "train_time_with_calibration" in (run / "train.log").read_text()
    bad = [f for f in validate_folder(run) if f.status == "fail" and f.severity == "ERROR"]
    assert not bad, bad


def _mutated(run: Path, tmp: Path, edits: dict) -> Path:
    folder = tmp / "run" / run.name
    shutil.copytree(run, folder)
    for name, edit in edits.items():
        path = folder / name
        path.write_text(edit(path.read_text()))
    return folder


def test_the_genuine_run_passes_every_rule_the_cases_check(genuine_run: Path) -> None:
    passes_every_rule_of(genuine_run, {k: (rule, {}, {}) for k, (rule, _) in RUN_CASES.items()})
    bad = [f for f in validate_folder(genuine_run) if f.status == "fail" and f.severity == "ERROR"]
    assert not bad, bad


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_each_disagreeing_run_fails_its_rule(genuine_run: Path, tmp_path: Path, case: str) -> None:
    rule, edits = RUN_CASES[case]
    assert errors(_mutated(genuine_run, tmp_path, edits), rule), case


def test_printed_rounding_is_no_disagreement(genuine_run: Path, tmp_path: Path) -> None:
    """train.log prints times to the millisecond and the score to 4 and 8 decimals: metrics.json's full floats a
    hair away (within the printed rounding) still agree."""
    m = json.loads((genuine_run / "metrics.json").read_text())
    nudge = {"metrics.json": _json_edit("metrics.json", train_time_ms=m["train_time_ms"] + 0.4,
                                        loop_train_time_ms=m["loop_train_time_ms"] + 0.4),
             "events.jsonl": lambda t: t.replace(f'"train_time_ms": {m["train_time_ms"]}',
                                                 f'"train_time_ms": {m["train_time_ms"] + 0.4}')}
    assert not errors(_mutated(genuine_run, tmp_path, nudge), "JSON.CONSISTENCY")


# ---- the training clock in a records script ----

CLOCK = "    training_time_ms += 1000.0 * (time.perf_counter() - t0)\n"


def _script(stmt: str) -> str:
    return SCRIPT.replace("    model = build()", f"    import time\n    t0 = time.perf_counter()\n{stmt}"
                          "    model = build()")


SCRIPT_CASES = {
    "scaled_800": ("TIME.TRAIN", {"script": _script(CLOCK.replace("1000.0", "800.00"))}, {}),
    "scaled_through_constant": ("TIME.TRAIN", {"script": "SCALE = 0.8\n" + _script(
        CLOCK.replace("1000.0 *", "1000.0 * SCALE *"))}, {}),
    "scaled_after_unit": ("TIME.TRAIN", {"script": _script(CLOCK.replace("1000.0 * (time.perf_counter() - t0)",
                                                                         "(time.perf_counter() - t0) * 1e3 / 1.25"))},
                          {}),
    "scaled_in_place": ("TIME.TRAIN", {"script": _script(CLOCK + "    training_time_ms *= 0.8\n")}, {}),
    "start_shifted_at_binding": ("TIME.TRAIN", {"script": _script(
        "    t0 = time.perf_counter() + 30.0\n" + CLOCK)}, {}),
    "duration_shortened": ("TIME.TRAIN", {"script": _script(CLOCK + "    training_time_ms -= 5000\n")}, {}),
    "aliased_clock": ("TIME.TRAIN", {"script": _script("    from time import perf_counter as pc\n" + CLOCK.replace(
        "1000.0", "900.0").replace("time.perf_counter", "pc"))}, {}),
    "cuda_event_scaled": ("TIME.TRAIN", {"script": _script("    ms = 0.5 * start.elapsed_time(end)\n")}, {}),
    "start_shifted": ("TIME.TRAIN", {"script": _script("    t0 += 60\n" + CLOCK)}, {}),
    "reading_offset": ("TIME.TRAIN", {"script": _script(CLOCK.replace("- t0)", "- t0 - 30.0)"))}, {}),
    "clock_rebound": ("TIME.TRAIN", {"script": _script("    time.perf_counter = lambda: 0.0\n")}, {}),
}


def test_the_clean_script_passes_the_clock_scan(tmp_path: Path) -> None:
    passes_every_rule_of(record_folder(tmp_path / "plain"), SCRIPT_CASES)
    passes_every_rule_of(record_folder(tmp_path / "clock", script=_script(CLOCK)), SCRIPT_CASES)


@pytest.mark.parametrize("case", sorted(SCRIPT_CASES))
def test_each_scaled_clock_fails_time_train(tmp_path: Path, case: str) -> None:
    rule, kwargs, _ = SCRIPT_CASES[case]
    assert errors(record_folder(tmp_path, **kwargs), rule), case


def _problems(src: str) -> list:
    import ast

    return clock_problems(CodeUnit("t.py", src, ast.parse(src)))


@pytest.mark.parametrize("src", [
    "import time\nt0 = time.perf_counter()\nms = 1000.0 * (time.perf_counter() - t0)\n",
    "import time\nt0 = time.time()\ns = (time.time() - t0) / 60\nh = (time.time() - t0) / 3600.0\n",
    "import time\nt0 = time.perf_counter_ns()\nms = (time.perf_counter_ns() - t0) / 1e6\n",
    "import time\nt0 = time.perf_counter()\nel = time.perf_counter() - t0\nrate = 4096 / (el + 1e-9)\n",
    "import time\nt0 = time.perf_counter()\nel = 1e3 * (time.perf_counter() - t0)\navg = el / max(step, 1)\n"
    "late = 0.8 * avg\nfrac = el / cap_ms\nw = 1.0 - frac\n",
    "MS = 1000\nimport time\nt0 = time.monotonic()\nx = MS * (time.monotonic() - t0)\n",
    "x = start.elapsed_time(end) / 1000.0\n",
    # pgolf's own shapes: a deadline, a per-step time times a step count, an estimate over two passes
    "import time\ndeadline = time.monotonic() + 120\nwhile time.monotonic() < deadline:\n    left = deadline - "
    "time.monotonic()\n",
    "import time\nt0 = time.perf_counter()\nel = 1e3 * (time.perf_counter() - t0)\nw = iters * el / max(step, 1)\n",
    "import time\nt0 = time.perf_counter()\ns = count * (time.perf_counter() - t0) / 2\n",
])
def test_unit_conversions_rates_and_fractions_are_plain(src: str) -> None:
    assert not _problems(src), _problems(src)


def test_unit_table() -> None:
    assert all(is_unit(v) for v in (1, 1000, 1e3, 1e-3, 60, 1 / 60, 3600, 1e6, 1e9, 1e-9))
    assert not any(is_unit(v) for v in (0.8, 800, 1.25, 999, 1001, 0.5, 2, 0))
