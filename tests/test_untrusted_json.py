"""Threat class: a JSON file that Python's parser refuses without raising json.JSONDecodeError.

A run directory's config.json, metrics.json, status.json and events.jsonl, a records folder's submission.json, a
JSONL corpus, an artifact's header, a `--set` list and a recipe's TOML are written by users and submissions. Besides
malformed text the parser raises ValueError on an integer over 4,300 digits, and RecursionError on nesting deeper
than the stack. Before `validator.untrusted_json`, both escaped as tracebacks or as "rule crashed". Every entry point
now answers each kind with its one-line error or a failed rule that names the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.config import resolve
from core.registry import Registry
from core.train import run_training
from pgolf.cli import main as cli_main
from pgolf.run_rules import RULES as RUN_RULES
from submissions.bundle import bundle_size
from validator.cli import validate_folder

REG = Registry()
BAD = {  # what each kind of text does to json.loads
    "deep": "[" * 100_000 + "]" * 100_000,  # RecursionError
    "huge_int": '{"config": {"x": ' + "9" * 5_000 + "}}",  # ValueError: over sys.get_int_max_str_digits()
    "malformed": '{"config": ',  # json.JSONDecodeError
}
# What the validator refuses besides: a key named twice (Python keeps the last value, another reader the first).
AMBIGUOUS = {**BAD, "duplicate_key": '{"config": {"core": {}}, "config": {"core": {}}, "status": "finished"}'}


@pytest.fixture(scope="module")
def finished_run(tiny_data, tiny_core, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = resolve(plugin_config_classes=REG.config_classes(), plugins=["zstd"], check_plugins=REG.check,
                  sets=[*tiny_core, f"core.data_path={tiny_data}", f"core.out_dir={out}", "core.run_id=run",
                        "core.iterations=2"])
    run_training(cfg, REG, code_size=bundle_size)
    return out / "run"


def _corrupt(run: Path, tmp_path: Path, name: str, text: str) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / name).write_text(text + "\n")
    return copy


def _one_line_error(capsys, code: int, name: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and name in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("kind", sorted(AMBIGUOUS))
@pytest.mark.parametrize("name", ["config.json", "metrics.json", "status.json", "events.jsonl"])
def test_validate_fails_a_run_directory_whose_json_the_parser_refuses(finished_run, tmp_path, name, kind):
    run = _corrupt(finished_run, tmp_path, name, AMBIGUOUS[kind])
    try:
        findings = validate_folder(run, extra_rules=RUN_RULES)
    except ValueError as exc:  # the logs cannot be parsed at all: `pgolf validate` prints this one line
        assert f"{name}:1: not a JSON object" in str(exc) and name == "events.jsonl"
        return
    assert not [f for f in findings if "crashed" in f.message]
    assert [f for f in findings if f.status == "fail" and name in f"{f.file} {f.message}"], findings


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_command_reading_a_run_answers_a_refused_json_with_one_line(finished_run, tmp_path, capsys, kind):
    run = _corrupt(finished_run, tmp_path, "config.json", BAD[kind])
    _one_line_error(capsys, cli_main(["eval", str(run)]), "config.json")
    _one_line_error(capsys, cli_main(["bundle", str(run), "-o", str(tmp_path / "x.py")]), "config.json")
    _one_line_error(capsys, cli_main(["record", str(run), "--name", "2026-12-04_X", "--author", "a",
                                      "--github-id", "a", "--out", str(tmp_path / "records")]), "config.json")
    (run / "config.json").write_bytes((finished_run / "config.json").read_bytes())
    (run / "metrics.json").write_text(BAD[kind])
    _one_line_error(capsys, cli_main(["size", str(run)]), "metrics.json")


@pytest.mark.parametrize("kind", sorted(AMBIGUOUS))
def test_a_records_folder_whose_submission_json_the_parser_refuses_fails_its_schema(tmp_path, kind):
    from tests.test_validator_rules import make_folder

    folder = make_folder(tmp_path)
    (folder / "submission.json").write_text(AMBIGUOUS[kind])
    findings = validate_folder(folder, sota=1.1)
    assert not [f for f in findings if "crashed" in f.message]
    assert {f.status for f in findings if f.rule == "JSON.SCHEMA"} == {"fail"}


@pytest.mark.parametrize("text", ["x = " + "[" * 50_000 + "]" * 50_000, "[core]\nnum_layers = " + "9" * 5_000])
def test_a_recipe_the_toml_parser_refuses_the_same_ways_is_a_config_error(tmp_path, capsys, text):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text + "\n")
    code = cli_main(["config", "show", "--recipe", str(recipe)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"recipe {recipe}: invalid TOML" in err[0], err


def test_parse_json_refuses_a_key_named_twice_in_any_object_and_reads_the_rest_as_json_does():
    from validator.untrusted_json import JSON_ERRORS, parse_json

    assert parse_json('{"a": [1, {"b": 2.5}], "c": null}') == {"a": [1, {"b": 2.5}], "c": None}
    for text in ('{"val_bpb": 0.1, "val_bpb": 1.1}', '{"seed_results": {"1": {"x": 1, "x": 2}}}', '[{"k": 1, "k": 1}]'):
        with pytest.raises(JSON_ERRORS, match="appears twice"):
            parse_json(text)


def test_a_corpus_line_an_artifact_header_and_a_set_list_the_parser_refuses_are_clear_errors(tmp_path):
    from core.config import coerce
    from core.export import _PREFIX, FORMAT_VERSION, MAGIC, ArtifactError, parse_header
    from dataprep.build import DataError, iter_documents

    for kind, text in BAD.items():
        corpus = tmp_path / f"{kind}.jsonl"
        corpus.write_text('{"text": "hello"}\n' + text + "\n")
        with pytest.raises(DataError, match=rf"{kind}.jsonl:2: not valid JSON"):
            list(iter_documents(corpus))
        head = text.encode()
        blob = MAGIC + _PREFIX.pack(FORMAT_VERSION, len(head)) + head
        with pytest.raises(ArtifactError, match="corrupt header"):
            parse_header(blob)
        with pytest.raises(ValueError, match="expected a list"):
            coerce(text if text.startswith("[") else "[" + text, list[int], "x.y")
