"""The command line a newcomer meets: fast --help, progress, reproducible runs, absolute paths, record's track
and folder, bundle requirements, loss curves, quiet pipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.cli import main, with_default_data, write_new
from pgolf.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _tiny_args(tiny_core, data, out, *extra) -> list[str]:
    return ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", str(data), "--set", f"core.out_dir={out}",
            *extra]


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tiny_core, tmp_path_factory) -> Path:
    """A finished run trained from another working directory with relative --data and out_dir."""
    work = tmp_path_factory.mktemp("cwd")
    (work / "data").symlink_to(tiny_data)
    old = os.getcwd()
    os.chdir(work)
    try:
        argv = ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", "data", "--set", "core.out_dir=runs",
                "--set", "core.run_id=rel", "--set", "core.iterations=6", "--plugins", "ema,zstd",
                "--set", "core.val_loss_every=3"]
        assert main(argv) == 0
    finally:
        os.chdir(old)
    return work / "runs" / "rel"


def test_help_and_static_validate_do_not_import_torch(tmp_path):
    code = ("import sys\nfrom pgolf.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    for argv in (["--help"], ["train", "--help"], ["validate", str(tmp_path)], ["size", "--help"]):
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=ENV,
                             timeout=120)
        assert res.stdout.strip().endswith("NO-TORCH"), (argv, res.stdout[-500:], res.stderr[-500:])


def test_progress_line_shows_step_rate_loss_and_phase(capsys):
    p = Progress(total=10, tokens_per_step=1000, cap_ms=None)
    p.phase("validating at step 0")
    p.update(5, 1000.0, 2.5)
    p.close()
    err = capsys.readouterr().err
    assert "5/10" in err and "tok/s" in err and "loss 2.500" in err and "validating at step 0" in err


def test_run_dir_paths_are_absolute_and_commands_work_from_anywhere(tiny_run, tmp_path, capsys, monkeypatch):
    core = json.loads((tiny_run / "config.json").read_text())["config"]["core"]
    for key in ("data_path", "out_dir"):
        assert Path(core[key]).is_absolute(), (key, core[key])
    assert Path(core["data_path"]) == Path(core["data_path"]).resolve()
    # EMA over 6 steps lags the live weights: the log says why the final score is worse than the last step's
    assert "note: final val_bpb" in (tiny_run / "train.log").read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(tiny_run)]) == 0
    assert main(["size", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "final_eval val_loss" in out and "fits" in out


def test_a_run_dir_holds_one_run_and_force_replaces_it(tiny_run, tiny_core, tiny_data, capsys):
    out = tiny_run.parent
    before = (tiny_run / "final_model.ptz").read_bytes()
    assert main(_tiny_args(tiny_core, tiny_data, out, "--set", "core.run_id=rel")) == 2
    assert "holds a run already" in capsys.readouterr().err
    assert (tiny_run / "final_model.ptz").read_bytes() == before
    copy = out / "again"
    assert main(_tiny_args(tiny_core, tiny_data, out, "--set", "core.run_id=again")) == 0
    assert main(_tiny_args(tiny_core, tiny_data, out, "--set", "core.run_id=again", "--force")) == 0
    log = (copy / "train.log").read_text()
    assert log.count("model_params:") == 1 and json.loads((copy / "status.json").read_text())["status"] == "finished"


def test_a_run_dir_in_use_is_refused_even_with_force_and_a_stale_lock_is_taken_over(tiny_run, tiny_core, tiny_data,
                                                                                      capsys):
    """Two runs of one RUN_ID at once (a second terminal, a re-launched job) would move the live run's files to
    .replaced/ and mix their logs: rank 0 holds `.lock` (its pid) for the whole run; only a live pgolf holds it."""
    out = tiny_run.parent
    for rid in ("busy", "reused"):
        shutil.copytree(tiny_run, out / rid)
    before = (out / "busy" / "final_model.ptz").read_bytes()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    holder, other = subprocess.Popen([*sleep, "pgolf"]), subprocess.Popen(sleep)  # other: alive, not pgolf
    try:
        (out / "busy" / ".lock").write_text(f"{holder.pid}\n")
        assert main(_tiny_args(tiny_core, tiny_data, out, "--set", "core.run_id=busy", "--force")) == 2
        err = capsys.readouterr().err
        assert f"a run is training there now (pid {holder.pid}, .lock)" in err and len(err.strip().splitlines()) == 1
        assert (out / "busy" / "final_model.ptz").read_bytes() == before and not (out / "busy" / ".replaced").exists()
        holder.kill()
        holder.wait()  # dead now: "busy" holds a killed run's lock
        (out / "reused" / ".lock").write_text(f"{other.pid}\n")
        for rid in ("busy", "reused"):
            assert main(_tiny_args(tiny_core, tiny_data, out, "--set", f"core.run_id={rid}", "--force")) == 0
            assert not (out / rid / ".lock").exists()
    finally:
        for p in (holder, other):
            p.kill()
            p.wait()


@pytest.mark.parametrize("edit", ["core removed", "another vocabulary"])
def test_a_config_json_that_is_not_the_artifacts_model_fails_validate(tiny_run, tmp_path, capsys, edit):
    """RUN.MODEL: the artifact must load into the model config.json builds (an edited config.json passed validate
    and `pgolf record`, and `pgolf eval` failed only later)."""
    from pgolf.run_rules import check_model
    from validator.rules import FolderContext

    assert [f.status for f in check_model(FolderContext(tiny_run))] == ["pass"]
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    if edit == "core removed":
        del cfg["config"]["core"]
    else:
        cfg["config"]["core"]["vocab_size"] = 512
    (run / "config.json").write_text(json.dumps(cfg))
    (finding,) = check_model(FolderContext(run))
    assert finding.status == "fail" and "not the model config.json describes" in finding.message
    assert main(["validate", str(run)]) == 1 and "RUN.MODEL" in capsys.readouterr().out


def test_deterministic_runs_agree_and_the_bundle_carries_it(tiny_core, tiny_data, tmp_path, capsys):
    extra = ["--deterministic", "--set", "core.max_wallclock_seconds=600"]
    assert main(_tiny_args(tiny_core, tiny_data, tmp_path, "--set", "core.run_id=a", *extra)) == 0
    assert main(_tiny_args(tiny_core, tiny_data, tmp_path, "--set", "core.run_id=b", *extra)) == 0
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in "ab")
    assert a["val_bpb"] == b["val_bpb"] and a["val_loss"] == b["val_loss"]
    assert "deterministic:true" in (tmp_path / "a" / "train.log").read_text()
    assert main(["bundle", str(tmp_path / "a"), "-o", str(tmp_path / "train_gpt.py")]) == 0
    assert "'deterministic': True" in (tmp_path / "train_gpt.py").read_text()


def test_record_picks_the_track_and_folder_and_agrees_with_validate(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["record", str(tiny_run), "--name", "2026-11-23_Tiny", "--author", "Ada", "--github-id", "ada"]
    assert main(args) == 0, capsys.readouterr().err
    dest = tmp_path / "records" / "track_non_record_16mb" / "2026-11-23_Tiny"
    assert "track non-record" in capsys.readouterr().out
    assert (dest / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "loss_curve.png" in (dest / "README.md").read_text()
    assert main(["validate", str(dest)]) == 0  # the folder record wrote passes validate, from anywhere
    # asked for the record track, the same rules refuse it there, and nothing is written
    assert main([*args, "--track", "record"]) == 2
    assert "HW.H100" in capsys.readouterr().err
    assert not (tmp_path / "records" / "track_10min_16mb" / "2026-11-23_Tiny").exists()


def test_bundle_prints_and_writes_its_requirements(tmp_path, capsys):
    out = tmp_path / "sub" / "train_gpt.py"
    assert main(["bundle", "--plugins", "ema,zstd", "-o", str(out), "--requirements"]) == 0
    printed = capsys.readouterr().out
    reqs = (out.parent / "requirements.txt").read_text().splitlines()
    # a specialised script dispatches its hooks statically: no pluggy, nor tomli (no recipe file is read)
    assert {"torch", "numpy", "sentencepiece", "zstandard"} <= set(reqs) and "brotli" not in reqs
    assert "pluggy" not in reqs and not any(r.startswith("tomli") for r in reqs)
    assert "requirements: " in printed and "zstandard" in printed
    assert main(["bundle", "--plugins", "ema", "-o", str(out), "--requirements"]) == 2  # no overwrite
    assert sorted(p.name for p in out.parent.iterdir()) == ["requirements.txt", "train_gpt.py"]


def test_requirements_list_guarded_imports_as_optional_under_their_distribution_names(tmp_path):
    """An import under `try: ... except ImportError` at module level (fused_mlp's triton and quack) is an optional
    extra, written as a comment with its PyPI name (quack-kernels, not the unrelated `quack`); plain module-level
    imports stay required."""
    from submissions.bundle import _third_party

    src = ("import numpy\ntry:\n    import quack.activation\nexcept ImportError:\n    quack = None\n"
           "try:\n    import triton\nexcept (ImportError, OSError):\n    triton = None\n"
           "try:\n    import scipy\nexcept ValueError:\n    pass\ndef f():\n    import tqdm\n")
    assert _third_party(src) == ({"numpy", "scipy"}, {"quack", "triton", "tqdm"})
    out = tmp_path / "train_gpt.py"
    assert main(["bundle", "--plugins", "fused_mlp", "-o", str(out), "--requirements"]) == 0
    reqs = (tmp_path / "requirements.txt").read_text().splitlines()
    assert "quack" not in reqs and "triton" not in reqs and {"torch", "numpy"} <= set(reqs)
    assert "# optional: quack-kernels[cu13] (fused_mlp.backend = quack)" in reqs
    # a hook wrapper (parallel_muon's pg_make_optimizer) keeps pluggy's dispatch and the module loader: the
    # modules embedded as string literals count too
    assert main(["bundle", "--plugins", "parallel_muon", "-o", str(out), "--requirements", "--force"]) == 0
    script = out.read_text()
    reqs = (tmp_path / "requirements.txt").read_text().splitlines()
    assert "_MODULES[" in script and "pluggy" in reqs and "torch" in reqs


def test_loss_curve_png_and_the_note_without_matplotlib(tiny_run, monkeypatch, tmp_path):
    assert (tiny_run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    import builtins

    from pgolf import plots

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plots.write_loss_curve(tiny_run) == plots.MISSING


def test_size_names_an_unquantized_artifact():
    from types import SimpleNamespace

    from pgolf.size import quantizer_label

    assert quantizer_label("int8", {"a": SimpleNamespace(scheme="passthrough")}) == "none (every tensor passthrough)"
    assert quantizer_label("int8", {"a": SimpleNamespace(scheme="int8_row")}) == "int8"


def test_a_closed_pipe_is_not_an_error():
    res = subprocess.run(f"'{sys.executable}' -m pgolf.cli plugins show ema | head -c 10", shell=True,
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


def test_demo_is_bounded_by_steps_and_reproducible():
    from pgolf.cli import DEMO_SETTINGS

    assert "core.max_wallclock_seconds=0" in DEMO_SETTINGS and "core.deterministic=true" in DEMO_SETTINGS
    log_every = int(next(s for s in DEMO_SETTINGS if s.startswith("core.train_log_every=")).split("=")[1])
    assert log_every <= 10  # a line at least every ~4 s on 2 quiet cores without a terminal's progress bar


def test_unigram_baseline_is_between_the_model_and_uniform(tiny_data, tiny_core, tiny_run):
    import math

    from core.config import resolve
    from core.registry import Registry
    from pgolf.baseline import unigram_bpb

    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), sets=[*tiny_core, f"core.data_path={tiny_data}"],
                  check_plugins=reg.check)
    uni = unigram_bpb(cfg)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    tokens_per_byte = metrics["val_bpb"] * math.log(2) / metrics["val_loss"]  # the same validation tokens
    uniform = math.log2(320) * tokens_per_byte
    assert 0 < uni < uniform  # token frequencies beat a uniform guess over the vocabulary


# ----- seventh CLI red-team pass (session 28): outputs another command makes meanwhile, Ctrl-C between record's
# renames, a bundle cache in a user's folder, odd shapes of a run's files, a plugin file raising GeneratorExit,
# `plugins new` names that shadow a module, options a command would ignore, a relative PGOLF_CACHE, a dangling link

def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_an_output_made_meanwhile_is_not_replaced_without_force(tmp_path: Path) -> None:
    out = tmp_path / "train_gpt.py"
    out.write_text("theirs")  # made by another bundle after this one checked
    with pytest.raises(FileExistsError, match="made by another command while this one ran"):
        write_new(out, b"mine", force=False)
    assert out.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["train_gpt.py"]
    write_new(out, b"mine", force=True)
    assert out.read_text() == "mine"


def test_record_keeps_a_folder_made_meanwhile_and_restores_the_old_one_on_ctrl_c(tmp_path, monkeypatch) -> None:
    import validator.cli
    from submissions.package import RecordError, write_records_folder

    dest = tmp_path / "track_non_record_16mb" / "2026-12-05_X"
    made = {}

    def concurrent(folder, **kwargs):  # another `record` finishes while this one validates
        if not made:
            dest.mkdir(parents=True)
            (dest / "README.md").write_text("theirs")
            made["yes"] = True
        return []
    monkeypatch.setattr(validator.cli, "validate_folder", concurrent)
    with pytest.raises(RecordError, match="was made by another command while this one ran"):
        write_records_folder({"README.md": "mine"}, dest)
    assert (dest / "README.md").read_text() == "theirs"

    real = Path.rename

    def interrupted(self, target):  # Ctrl-C between moving the old folder aside and renaming the new one in
        if Path(target) == dest and self.name == dest.name:
            raise KeyboardInterrupt
        return real(self, target)
    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_records_folder({"README.md": "mine"}, dest, force=True)
    assert (dest / "README.md").read_text() == "theirs"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no stage left


def test_the_bundle_cache_prunes_only_its_own_entries(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "myjson"
    cache.mkdir()
    for i in range(70):
        (cache / f"data{i}.json").write_text("{}")
    monkeypatch.setenv("PGOLF_BUNDLE_CACHE", str(cache))
    assert main(["bundle", "--plugins", "ema", "-o", str(tmp_path / "b.py")]) == 0
    assert len(list(cache.glob("data*.json"))) == 70 and len(list(cache.glob("*.json"))) == 71


def test_a_runs_files_read_as_every_reader_reads_them(tiny_run, tmp_path, capsys) -> None:
    from pgolf.plots import loss_curve_png, read_curves
    from submissions.package import track_of

    run = tmp_path / "cost_$5_and_$"
    shutil.copytree(tiny_run, run)
    assert loss_curve_png([run])[:4] == b"\x89PNG"  # a `$` in a run id is text, not matplotlib's math
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "code_bytes": -99_999_999}))
    assert main(["size", str(run)]) == 2
    assert "metrics.json: code_bytes is -99999999, expected a non-negative integer" in _one_error(capsys)
    events = (run / "events.jsonl").read_text()
    (run / "events.jsonl").write_text("[1]\n" + '{"event": "step"}\n' + events)
    assert read_curves(run)[0] == read_curves(tiny_run)[0]  # lines of another shape draw nothing
    (run / "events.jsonl").write_text('{"start": ' + "[" * 100_000 + "\n" + events)
    assert track_of([run]) == "non-record"  # nested past the parser's depth: no record evidence, no crash


def test_commands_refuse_what_they_would_ignore_or_break(tiny_run, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "boom.py").write_text('raise GeneratorExit("boom")\n')
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = [
        (["bundle", "--plugin-file", str(tmp_path / "boom.py"), "--plugins", "ema", "-o", str(tmp_path / "z.py")],
         "import failed: GeneratorExit: boom"),
        (["plugins", "new", "None", "--dir", str(tmp_path)], "no keyword"),
        (["plugins", "new", "torch", "--dir", str(tmp_path)], "an importable module has that name"),
        (["plugins", "new", "a" * 247, "--dir", str(tmp_path)], "at most 64 characters"),
        (["plugins", "new", "qq", "--dir", str(tmp_path / "dangling")], "dangling: is a link to nothing"),
        (["data", "default", "--tokenizer", "x.model"], "--tokenizer only apply to `data build`"),
        (["data", "build", str(tmp_path), "--out", str(tmp_path / "o"), "--plugin-file", "p.py"],
         "--plugin-file without --plugins"),
        (["data", "build", str(tmp_path), "--out", str(tmp_path / "o"), "--plugins", "ema"],
         "--plugins ema: none of them transforms the text"),
        (["eval", str(tiny_run), "--recipe", "nope.toml"], "a run is evaluated with its own config.json"),
        (["bundle", str(tiny_run), "--recipe", "pr315", "-o", str(tmp_path / "y.py")], "its own config.json"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _one_error(capsys), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boom.py", "dangling"]
    import dataprep.build

    monkeypatch.setattr(dataprep.build, "ensure_default_data", lambda vocab_size: Path("relc/default"))
    from core.config import resolve

    cfg = with_default_data(resolve(plugin_config_classes={}, env={}))
    assert Path(cfg.core.data_path).is_absolute()  # a relative PGOLF_CACHE: config.json names it from anywhere


def test_a_full_disk_that_names_no_file_says_where_to_look(tiny_core, tiny_data, tmp_path, capsys, monkeypatch):
    import errno

    import core.train

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it: no file name
    monkeypatch.setattr(core.train, "write_atomic", full)
    assert main(_tiny_args(tiny_core, tiny_data, tmp_path, "--set", "core.run_id=full")) == 1
    assert "No space left on device (errno 28) where this command writes (its run directory" in _one_error(capsys)


def test_demo_writes_where_out_or_pgolf_out_dir_says(monkeypatch, tmp_path):
    import pgolf.cli

    seen = []
    monkeypatch.setattr(pgolf.cli, "cmd_train", lambda args, extra_sets, after: seen.append(
        [s for s in extra_sets + args.sets if s.startswith("core.out_dir=")]) or 0)
    monkeypatch.setenv("PGOLF_OUT_DIR", str(tmp_path / "env"))
    for argv in (["demo"], ["demo", "--out", "mine"], ["demo", "--set", "core.out_dir=set"]):
        assert main(argv) == 0
    assert seen == [[f"core.out_dir={tmp_path / 'env'}"], ["core.out_dir=mine"], ["core.out_dir=set"]]
    assert main(["demo", "--out", "a", "--set", "core.out_dir=b"]) == 2


def test_bundle_says_which_per_run_settings_it_leaves_to_the_environment(tmp_path, capsys):
    assert main(["bundle", "--plugins", "ema", "--set", "core.seed=4242", "-o", str(tmp_path / "b.py")]) == 0
    assert "note: core.seed not written into the script (per-run settings" in capsys.readouterr().err
