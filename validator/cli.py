"""`pgolf validate`: argument parser and runner (static rules; dynamic rules with --run).

Exit 0 = no errors, 1 = errors, 2 = could not run (a parse failure, a crashed rule, or a dynamic check the
machine cannot perform, e.g. a record script that needs CUDA on a CPU box).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from pathlib import Path

from validator.report import has_errors, render_table, to_json
from validator.rules import Finding, FolderContext, Rule, all_rules
from validator.rules.base import CRASHED, UNREAD
from validator.untrusted_json import irregular_files

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
    g = p.add_argument_group("dynamic rules (--run: executes code in a sandboxed subprocess)")
    g.add_argument("--run", action="store_true",
                   help="also run the dynamic rules: smoke-run train_gpt.py in a copy of a records folder (pgolf "
                        "not importable, network off) / the EVAL.C1-C4 harness on a run dir's evaluators")
    g.add_argument("--evaluator", action="append", default=[], metavar="FILE.py:NAME",
                   help="an evaluator object to put through the EVAL.C1-C4 harness (class or factory; repeatable)")
    g.add_argument("--only", default=None, metavar="NAMES",
                   help="run dir: check only these evaluators (comma-separated, e.g. plain,score_first_ttt)")
    g.add_argument("--timeout", type=float, default=600.0, help="wall-time limit per sandboxed process (s)")
    g.add_argument("--memory-gb", type=float, default=12.0, help="address-space limit per sandboxed process (GiB)")
    g.add_argument("--smoke-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the records smoke run (e.g. NUM_LAYERS=2)")
    g.add_argument("--smoke-data", default=None, metavar="DIR",
                   help="records smoke run: a pgolf data dir (shards + tokenizer/*.model) to cut the tiny dataset "
                        "from (default: the embedded corpus, sp1024)")
    g.add_argument("--jobs", type=int, default=2, help="parallel sandboxed processes (default 2)")
    g.add_argument("--harness-set", action="append", default=[], metavar="KEY=VALUE",
                   help="harness size, e.g. cuts=10 vfold_positions=3 vocab=32 (validator/harness.py)")
    g.add_argument("--no-train-audit", action="store_true",
                   help="run dir: skip the audited tiny re-training (data-access and val-swap checks)")
    p.set_defaults(func=run_validate)


# (flag, dest, default) of the dynamic checks' options: given without --run, they would be silently ignored
DYNAMIC_OPTIONS = (("--evaluator", "evaluator", []), ("--only", "only", None), ("--timeout", "timeout", 600.0),
                   ("--memory-gb", "memory_gb", 12.0), ("--smoke-env", "smoke_env", []),
                   ("--smoke-data", "smoke_data", None), ("--jobs", "jobs", 2), ("--harness-set", "harness_set", []),
                   ("--no-train-audit", "no_train_audit", False))


def parse_sota(value: str | None) -> tuple[float | list[float] | None, str | None]:
    """A number, or the per-seed val_bpb values of a records folder; raises ValueError if neither."""
    if value is None:
        return None, None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not 0.0 < number < math.inf:
            raise ValueError(f"--sota {value!r}: expected a positive finite val_bpb")
        return number, value
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
                    sota_label: str | None = None, extra_rules: Iterable[Rule] = (),
                    plugin_files: Iterable[str] = ()) -> list[Finding]:
    """Run every static rule over one folder and return the findings."""
    if bad := irregular_files(Path(path)):  # before any rule opens one (a FIFO hangs a reader, /dev/zero fills it)
        raise ValueError(bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    ctx = FolderContext(path, strict=strict, sota=sota, sota_label=sota_label, plugin_files=tuple(plugin_files))
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

    Extra rules (e.g. pgolf's run rules, ``pgolf.run_rules``) come from ``extra_rules`` or ``args.extra_rules``.
    """
    extra_rules = [*extra_rules, *(getattr(args, "extra_rules", None) or [])]
    path = Path(args.path)
    if not path.is_dir():
        print(f"pgolf validate: {path} is not a directory", file=sys.stderr)
        return 2
    try:
        sota, label = parse_sota(getattr(args, "sota", None))
        dynamic = [flag for flag, dest, default in DYNAMIC_OPTIONS if getattr(args, dest, default) != default]
        if dynamic and not getattr(args, "run", False):  # options of the dynamic checks: ignored without them
            raise ValueError(f"{', '.join(dynamic)}: option(s) of the dynamic checks; add --run")
        options = dynamic_options(args) if getattr(args, "run", False) else None  # its errors before the static run
        findings = validate_folder(path, strict=args.strict, sota=sota, sota_label=label, extra_rules=extra_rules,
                                   plugin_files=getattr(args, "plugin_file", None) or ())
        if options is not None:
            from validator.dynamic import run_dynamic

            findings += run_dynamic(path, options)
    except (ValueError, OSError) as exc:
        print(f"pgolf validate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(to_json(findings, str(path), {"validator_version": __version__, "strict": bool(args.strict),
                                            "dynamic": bool(getattr(args, "run", False))}))
    else:
        print(render_table(findings, str(path)))
    if has_errors(findings):
        return 1
    crashed = [f.rule for f in findings if f.status == "skip" and f.message.startswith(CRASHED)]
    if crashed:
        print(f"pgolf validate: rule(s) crashed, validation incomplete: {', '.join(crashed)}", file=sys.stderr)
        return 2
    unread = sorted({f.file for f in findings if f.status == "skip" and UNREAD in f.message})
    if unread:
        print(f"pgolf validate: the code scans could not read {', '.join(unread)} on Python "
              f"{sys.version_info.major}.{sys.version_info.minor} (validation incomplete: run it with the Python the "
              "script needs, e.g. >= 3.12 for PEP 701 f-strings)", file=sys.stderr)
        return 2
    from validator.smoke import COULD_NOT_RUN

    blocked = [f for f in findings if f.status == "skip" and COULD_NOT_RUN in f.message and f.severity != "INFO"]
    if blocked:
        print(f"pgolf validate: {len(blocked)} dynamic check(s) could not run here: "
              f"{blocked[0].rule}: {blocked[0].message.split(COULD_NOT_RUN, 1)[1].strip()}", file=sys.stderr)
        return 2
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _harness_value(key: str, raw: str, default: object) -> object:
    """One --harness-set value (JSON): a count, size or tolerance must be a positive number, a seed an integer >= 0
    (a negative count crashed the harness with numpy's message, naming no setting)."""
    import json

    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--harness-set {key}={raw}: expected a number or JSON value") from exc
    if isinstance(default, tuple):
        return value
    integer = key == "seed" or isinstance(default, int)
    typed = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not typed or not (value >= 0 if key == "seed" else value > 0):
        raise ValueError(f"--harness-set {key}={raw}: expected {'an integer' if integer else 'a number'} "
                         f"{'>= 0' if key == 'seed' else '> 0'}")
    return value


def dynamic_options(args: argparse.Namespace):
    """DynamicOptions from the --run flags (bad values are one-line ValueErrors)."""
    import dataclasses

    from validator.dynamic import DynamicOptions
    from validator.harness import HarnessSettings

    fields = {f.name: f for f in dataclasses.fields(HarnessSettings)}
    harness: dict = {}
    for key, value in _pairs(getattr(args, "harness_set", []), "--harness-set").items():
        if key not in fields:
            raise ValueError(f"--harness-set {key}: unknown setting (one of {', '.join(fields)})")
        harness[key] = _harness_value(key, value, fields[key].default)
    if args.timeout <= 0 or args.memory_gb <= 0 or args.jobs < 1:
        raise ValueError("--timeout, --memory-gb and --jobs must be positive")
    for spec in args.evaluator:  # a missing file: said now, not after minutes of sandboxed checks
        file = spec.rpartition(":")[0] or spec
        if not Path(file).is_file():
            raise ValueError(f"--evaluator {spec}: {file} is not a file (expected FILE.py:NAME)")
    smoke_data = Path(args.smoke_data) if args.smoke_data else None
    if smoke_data is not None and not (smoke_data / "dataset.json").is_file():
        raise ValueError(f"--smoke-data {smoke_data}: expected a pgolf data dir with dataset.json")
    return DynamicOptions(
        evaluators=list(args.evaluator), timeout=args.timeout, memory=int(args.memory_gb * 2**30), harness=harness,
        plugin_files=list(getattr(args, "plugin_file", None) or []), smoke_env=_pairs(args.smoke_env, "--smoke-env"),
        only=[n.strip() for n in args.only.split(",") if n.strip()] if args.only else None,
        train_audit=not args.no_train_audit, jobs=args.jobs, smoke_data=smoke_data)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m validator``."""
    parser = argparse.ArgumentParser(prog="python -m validator", description=__doc__)
    configure_parser(parser)
    return run_validate(parser.parse_args(argv))
