"""JSON.SCHEMA: submission.json parses and matches the compat schema (or strict v1 with --strict)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule

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


def check_schema(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    if ctx.submission_path is None:
        return [r.finding(SKIP, "no submission.json" + (" (pgolf run directory)" if ctx.is_run_dir else ""))]
    f = ctx.rel(ctx.submission_path)
    if ctx.submission is None:
        return [r.finding(FAIL, f"not a JSON object: {ctx.submission_error or 'wrong type'}", file=f)]
    out: list[Finding] = []
    compat_errs = schema_errors(ctx.submission, strict=False)
    for path, msg in compat_errs:
        out.append(r.finding(FAIL, f"compat schema: {msg}", file=f, field=path))
    for path, msg in schema_errors(ctx.submission, strict=True):
        if (path, msg) in compat_errs:
            continue
        if ctx.strict:
            out.append(r.finding(FAIL, f"strict v1 schema: {msg}", file=f, field=path))
        else:
            out.append(r.finding(WARN, f"strict v1 schema (informational without --strict): {msg}",
                                 severity=INFO, file=f, field=path))
    return out or [r.finding(PASS, f"valid against {'strict v1' if ctx.strict else 'compat'} and v1 schemas",
                             file=f)]


RULES = [
    Rule("JSON.SCHEMA", "submission.json parses and matches the schema (compat; strict v1 with --strict)",
         "README 'Submission Process' (submission.json with name, GitHub ID, val_bpb); rulebook §8", ERROR,
         check_schema),
]
