"""`pgolf validate` (static part): argument parser and runner; exit 0 = no errors, 1 = errors, 2 = could not run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from validator.report import has_errors, render_table, to_json
from validator.rules import Finding, FolderContext, Rule, all_rules
from validator.rules.base import CRASHED

__version__ = "0.1.0"


def add_validate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``validate`` sub-command on an argparse subparsers object."""
    p = subparsers.add_parser("validate", help="check a records folder or pgolf run directory against the rules")
    configure_parser(p)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the validate arguments to a parser."""
    p.add_argument("path", help="records folder (README.md, submission.json, train_gpt.py, logs) or pgolf run dir")
    p.add_argument("--strict", action="store_true",
                   help="strict v1 submission.json schema; README significance test is an error")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    p.add_argument("--sota", default=None,
                   help="SOTA to beat for STAT.SIG: a val_bpb number or a records folder with per-seed logs")
    p.set_defaults(func=run_validate)


def parse_sota(value: str | None) -> tuple[float | list[float] | None, str | None]:
    """A number, or the per-seed val_bpb values of a records folder; raises ValueError if neither."""
    if value is None:
        return None, None
    try:
        return float(value), value
    except ValueError:
        pass
    folder = Path(value)
    if not folder.is_dir():
        raise ValueError(f"--sota {value!r} is neither a number nor a folder")
    from validator.rules.stats import seed_values

    vals, _ = seed_values(FolderContext(folder))
    if not vals:
        from validator.rules.consistency import claimed_bpb

        claim = claimed_bpb(FolderContext(folder).submission)
        if claim is None:
            raise ValueError(f"--sota folder {value!r} has no per-seed scores and no val_bpb claim")
        return claim[1], f"{folder.name} (claim {claim[1]})"
    return (vals if len(vals) > 1 else vals[0]), f"{folder.name} (mean of {len(vals)})"


def validate_folder(path: Path, strict: bool = False, sota: float | list[float] | None = None,
                    sota_label: str | None = None, extra_rules: Iterable[Rule] = ()) -> list[Finding]:
    """Run every static rule over one folder and return the findings."""
    ctx = FolderContext(path, strict=strict, sota=sota, sota_label=sota_label)
    try:
        _ = ctx.logs
    except (KeyError, TypeError, ValueError) as exc:  # a malformed events.jsonl / log: cannot validate
        raise ValueError(f"could not parse the logs of {path}: {type(exc).__name__}: {exc}") from exc
    findings: list[Finding] = []
    for rule in all_rules(extra_rules):
        findings.extend(rule.run(ctx))
    return findings


def run_validate(args: argparse.Namespace, extra_rules: Iterable[Rule] = ()) -> int:
    """Run the static validation described by ``args``; print the report; return the exit status.

    Extra rules (e.g. from the ``pg_validator_rules`` plugin hook) come from ``extra_rules`` or ``args.extra_rules``.
    """
    extra_rules = [*extra_rules, *(getattr(args, "extra_rules", None) or [])]
    path = Path(args.path)
    if not path.is_dir():
        print(f"pgolf validate: {path} is not a directory", file=sys.stderr)
        return 2
    try:
        sota, label = parse_sota(getattr(args, "sota", None))
        findings = validate_folder(path, strict=args.strict, sota=sota, sota_label=label, extra_rules=extra_rules)
    except (ValueError, OSError) as exc:
        print(f"pgolf validate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(to_json(findings, str(path), {"validator_version": __version__, "strict": bool(args.strict)}))
    else:
        print(render_table(findings, str(path)))
    if has_errors(findings):
        return 1
    crashed = [f.rule for f in findings if f.status == "skip" and f.message.startswith(CRASHED)]
    if crashed:
        print(f"pgolf validate: rule(s) crashed, validation incomplete: {', '.join(crashed)}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m validator``."""
    parser = argparse.ArgumentParser(prog="python -m validator", description=__doc__)
    configure_parser(parser)
    return run_validate(parser.parse_args(argv))
