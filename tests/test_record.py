"""`pgolf record`: a records folder from finished runs, validated before it is written, never overwritten."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from core.config import resolve
from core.registry import Registry
from core.train import run_training
from pgolf.cli import main as cli_main
from submissions.bundle import bundle, bundle_size
from submissions.package import RecordError, build_files, errors_of, write_records_folder
from validator.cli import validate_folder

REG = Registry()
PLUGINS = ["ema", "zstd"]


def _train(sets: list[str], seed: int, run_id: str) -> Path:
    cfg = resolve(plugin_config_classes=REG.config_classes(), plugins=PLUGINS, check_plugins=REG.check,
                  sets=[*sets, f"core.seed={seed}", f"core.run_id={run_id}", "core.iterations=6"])
    run_training(cfg, REG, code_size=bundle_size)
    return Path(cfg.core.out_dir) / run_id


@pytest.fixture(scope="module")
def two_seeds(tiny_data, tiny_core, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("runs")
    sets = [*tiny_core, f"core.data_path={tiny_data}", f"core.out_dir={out}"]
    return [_train(sets, 7, "seed7"), _train(sets, 1337, "seed1337")]  # seeds of different lengths


def _files(runs, track="non-record"):
    return build_files(runs, REG, name="2026-11-23_Tiny_EMA", author="Ada", github_id="ada", track=track,
                       when="2026-11-23")


def test_record_folder_holds_the_bundle_logs_and_a_consistent_submission(two_seeds, tmp_path):
    files = _files(two_seeds)
    assert set(files) == {"train_gpt.py", "submission.json", "README.md", "requirements.txt", "train_seed7.log",
                          "train_seed1337.log"}
    metrics = [json.loads((p / "metrics.json").read_text()) for p in two_seeds]
    sub = json.loads(files["submission.json"])
    assert sub["val_bpb"] == pytest.approx(statistics.fmean(m["val_bpb"] for m in metrics), abs=1e-8)
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(m["val_bpb"] for m in metrics), abs=1e-8)
    assert sub["bytes_code"] == len(files["train_gpt.py"]) == metrics[0]["code_bytes"]
    assert sub["bytes_total"] == max(m["total_bytes"] for m in metrics) and sub["seeds"] == [7, 1337]
    assert files["train_seed1337.log"] == (two_seeds[1] / "train.log").read_text()
    assert "openai/parameter-golf#287" in files["README.md"] and "zstandard" in files["requirements.txt"]
    dest = tmp_path / "track_non_record_16mb" / "2026-11-23_Tiny_EMA"
    findings = write_records_folder(files, dest)
    assert not errors_of(findings) and not errors_of(validate_folder(dest))
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no staging folder left behind


def test_record_track_with_single_gpu_logs_is_refused_and_nothing_is_written(two_seeds, tmp_path):
    dest = tmp_path / "track_10min_16mb" / "2026-11-23_Tiny_EMA"
    with pytest.raises(RecordError, match="validator rejects.*HW.H100"):
        write_records_folder(_files(two_seeds, track="record"), dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_existing_folder_is_replaced_only_with_force(two_seeds, tmp_path, capsys):
    out = tmp_path / "track_non_record_16mb"
    dest = out / "2026-11-23_Tiny_EMA"
    dest.mkdir(parents=True)
    (dest / "mine.txt").write_text("keep")
    args = ["record", *map(str, two_seeds), "--name", dest.name, "--out", str(out), "--track", "non-record",
            "--author", "Ada", "--github-id", "ada"]
    assert cli_main(args) == 2 and "pass --force" in capsys.readouterr().err
    assert (dest / "mine.txt").read_text() == "keep"
    assert cli_main([*args, "--force"]) == 0
    assert not (dest / "mine.txt").exists() and (dest / "train_gpt.py").is_file()


def test_runs_with_different_settings_or_changed_code_are_refused(two_seeds, tmp_path, tiny_data, tiny_core):
    other = _train([*tiny_core, f"core.data_path={tiny_data}", f"core.out_dir={tmp_path}", "ema.decay=0.5"], 3, "s3")
    with pytest.raises(RecordError, match="configuration differs"):
        _files([two_seeds[0], other])
    with pytest.raises(RecordError, match="share a seed"):
        _files([two_seeds[0], two_seeds[0]])
    metrics = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps({**metrics, "code_bytes": metrics["code_bytes"] + 1}))
    with pytest.raises(RecordError, match="code changed after the run"):
        _files([other])
    (other / "metrics.json").unlink()
    with pytest.raises(RecordError, match="not a finished pgolf run"):
        _files([other])


def test_the_logged_code_size_is_the_bundle_a_record_ships(two_seeds):
    """`pgolf train` logs the bytes of exactly the script `pgolf record` bundles from its config.json, and
    every seed of a record bundles to the same script (the seed is not in it)."""
    texts = []
    for run in two_seeds:
        recipe = json.loads((run / "config.json").read_text())["config"]
        cfg = resolve(plugin_config_classes=REG.config_classes(), recipe=recipe, env={}, check_plugins=REG.check)
        logged = json.loads((run / "metrics.json").read_text())["code_bytes"]
        texts.append(bundle(cfg, REG))
        assert len(texts[-1].encode()) == logged
        assert f"Code size: {logged} bytes" in (run / "train.log").read_text()
    assert texts[0] == texts[1] and "'seed'" not in texts[0]
