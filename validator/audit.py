"""Audit every records folder of a Parameter Golf checkout: per-rule pass/warn/fail/skip counts + failure list.

Usage: python -m validator.audit RECORDS_DIR  (RECORDS_DIR holds track_*/<folder>/; prints Markdown)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from validator.cli import validate_folder
from validator.rules import Finding, builtin_rules

ORDER = {"fail": 0, "warn": 1, "pass": 2, "skip": 3}


def audit_records(records: Path) -> tuple[dict[str, list[Finding]], float]:
    """Validate every ``track_*/<folder>`` under ``records``; returns findings per folder and seconds taken."""
    t0 = time.perf_counter()
    out: dict[str, list[Finding]] = {}
    for folder in sorted(records.glob("track_*/*")):
        if folder.is_dir():
            out[f"{folder.parent.name}/{folder.name}"] = validate_folder(folder)
    return out, time.perf_counter() - t0


def worst(findings: list[Finding], rule: str) -> str:
    """The worst status of one rule in one folder."""
    st = [f.status for f in findings if f.rule == rule]
    return min(st, key=lambda s: ORDER[s]) if st else "skip"


def to_markdown(results: dict[str, list[Finding]], seconds: float) -> str:
    """Per-rule table (folders by worst status) and every fail finding."""
    lines = [f"Folders: {len(results)}; static validation of all of them took {seconds:.1f} s.", "",
             "| rule | severity | pass | warn | fail | skip |", "|---|---|---|---|---|---|"]
    for rule in builtin_rules():
        counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
        for findings in results.values():
            counts[worst(findings, rule.id)] += 1
        lines.append(f"| {rule.id} | {rule.severity} | {counts['pass']} | {counts['warn']} | {counts['fail']} | "
                     f"{counts['skip']} |")
    lines += ["", "### Every fail finding", "", "| folder | rule | sev | file | finding |", "|---|---|---|---|---|"]
    for name, findings in results.items():
        for f in findings:
            if f.status == "fail":
                msg = f.message.replace("|", "\\|")
                lines.append(f"| {name} | {f.rule} | {f.severity} | {f.file or ''} | {msg} |")
    return "\n".join(lines) + "\n"


def significance_chain(records: Path) -> str:
    """STAT.SIG for each record-track folder against the previous record folder (chronological), both tests."""
    from validator.rules.base import FolderContext
    from validator.rules.stats import seed_values, significance

    lines = ["| record | vs previous | n | delta bpb | delta nats | p README (0.005 nats) | p practice |",
             "|---|---|---|---|---|---|---|"]
    prev: tuple[str, list[float]] | None = None
    for folder in sorted((records / "track_10min_16mb").iterdir()):
        if not folder.is_dir():
            continue
        vals, losses = seed_values(FolderContext(folder))
        if not vals:
            continue
        if prev is not None and len(vals) >= 2:
            s = significance(vals, losses, prev[1] if len(prev[1]) > 1 else prev[1][0])
            lines.append(f"| {folder.name} | {prev[0]} | {len(vals)} | {s['delta_bpb']:.5f} | {s['delta_nats']:.5f} | "
                         f"{s['p_readme']:.3g} | {s['p_practice']:.3g} |")
        prev = (folder.name, vals)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the Markdown audit of a records directory."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    results, seconds = audit_records(Path(args[0]))
    print(to_markdown(results, seconds))
    print("### STAT.SIG chain (each record vs the previous record folder)\n")
    print(significance_chain(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
