"""JSON.SCHEMA: submission.json parses and matches the compat schema (or strict v1 with --strict)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from validator.rules.base import ERROR, FAIL, PASS, SKIP, WARN, Finding, FolderContext, Rule

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
COMPAT = "submission.compat.schema.json"
V1 = "submission.v1.schema.json"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load a bundled schema by file name."""
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))


@cache
def validator_for(name: str) -> Draft202012Validator:
    """A Draft 2020-12 validator for a bundled schema, with the compat schema registered for $ref."""
    compat = load_schema(COMPAT)
    registry = Registry().with_resource(compat["$id"], Resource.from_contents(compat))
    return Draft202012Validator(load_schema(name), registry=registry)


def schema_errors(data: Any, strict: bool = False) -> list[tuple[str, str]]:
    """(json path, message) for every violation of the compat (or strict v1) schema."""
    v = validator_for(V1 if strict else COMPAT)
    return [(e.json_path, e.message) for e in sorted(v.iter_errors(data), key=lambda e: e.json_path)]


# README "Submission Process": "a submission.json file (name, GitHub ID, val_bpb, metadata)" - without these a
# submission cannot be scored or attributed (valerio-oai on PR #631), so they decide the record; the rest of the
# strict v1 schema (author, date, bytes_total, ...) is style: WARN by default, ERROR under --strict.
README_REQUIRED = {"name": ("name", "run_name"), "github_id": ("github_id",), "val_bpb": ("val_bpb", "mean_val_bpb")}


def check_schema(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    if ctx.submission_path is None:
        return [r.finding(SKIP, "no submission.json" + (" (pgolf run directory)" if ctx.is_run_dir else ""))]
    f = ctx.rel(ctx.submission_path)
    if ctx.submission is None:
        return [r.finding(FAIL, f"not a JSON object: {ctx.submission_error or 'wrong type'}", file=f)]
    out: list[Finding] = []
    sub = ctx.submission
    for key, accepted in README_REQUIRED.items():
        vals = [sub.get(k) for k in accepted]
        if not any(v not in (None, "") for v in vals):
            out.append(r.finding(FAIL, f"required field {key!r} is missing or empty (README: submission.json "
                                 "with name, GitHub ID, val_bpb)", file=f, field=key, expected="non-empty",
                                 found=next((v for v in vals if v is not None), None)))
    compat_errs = schema_errors(sub, strict=False)
    for path, msg in compat_errs:
        out.append(r.finding(FAIL, f"compat schema: {msg}", file=f, field=path))
    required = {k for k in README_REQUIRED}
    for path, msg in schema_errors(sub, strict=True):
        if (path, msg) in compat_errs or any(f"'{k}'" in msg and "required" in msg for k in required):
            continue
        out.append(r.finding(WARN, f"strict v1 schema: {msg}", severity=WARN, file=f, field=path, style=True))
    return out or [r.finding(PASS, "valid against the compat and strict v1 schemas", file=f)]


RULES = [
    Rule("JSON.SCHEMA", "submission.json parses, has name, github_id and val_bpb, and matches the compat schema",
         "README 'Submission Process' (submission.json with name, GitHub ID, val_bpb); rulebook §8", ERROR,
         check_schema, lower="strict-v1 gaps beyond the README fields (author, date, bytes_total): style "
                             "(WARN; ERROR with --strict)"),
]
