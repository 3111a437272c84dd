"""Rendering of findings: a readable table (rule, severity, status, detail) and a JSON document."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import Any

from validator.rules.base import ERROR, FAIL, Finding

STATUS_ORDER = {"fail": 0, "warn": 1, "pass": 2, "skip": 3}


def has_errors(findings: Sequence[Finding]) -> bool:
    """True if any ERROR-severity finding failed (exit status 1)."""
    return any(f.status == FAIL and f.severity == ERROR for f in findings)


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    """Counts per status."""
    out = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for f in findings:
        out[f.status] = out.get(f.status, 0) + 1
    return out


def _where(f: Finding) -> str:
    loc = f.file or ""
    if f.line is not None:
        loc += f":{f.line}"
    if f.field:
        loc += f" [{f.field}]"
    return loc


def render_table(findings: Sequence[Finding], folder: str = "", width: int = 120) -> str:
    """A fixed-width table: rule, severity, status, detail (location, message, expected/found)."""
    head = f"{'rule':<22} {'sev':<5} {'status':<6} detail"
    lines = [f"pgolf validate: {folder}" if folder else "pgolf validate", head, "-" * min(width, 120)]
    detail_w = max(40, width - 36)
    for f in findings:
        detail = f.message
        loc = _where(f)
        if loc:
            detail = f"{loc}: {detail}"
        if f.expected is not None and f.found is not None and not isinstance(f.found, dict):
            detail += f" (expected {f.expected}, found {f.found})"
        wrapped = textwrap.wrap(detail, detail_w) or [""]
        lines.append(f"{f.rule:<22} {f.severity:<5} {f.status.upper():<6} {wrapped[0]}")
        lines.extend(f"{'':<36}{w}" for w in wrapped[1:])
    s = summary(findings)
    verdict = "ERRORS" if has_errors(findings) else "OK"
    lines.append("-" * min(width, 120))
    lines.append(f"{verdict}: {s['fail']} fail, {s['warn']} warn, {s['pass']} pass, {s['skip']} skip")
    return "\n".join(lines)


def to_json(findings: Sequence[Finding], folder: str = "", extra: dict[str, Any] | None = None) -> str:
    """JSON document: folder, verdict, counts and every finding."""
    doc: dict[str, Any] = {"folder": folder, "ok": not has_errors(findings), "summary": summary(findings),
                           "findings": [f.to_dict() for f in findings]}
    if extra:
        doc.update(extra)
    return json.dumps(doc, indent=2, default=str)
