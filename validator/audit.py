"""Audit every records folder of a Parameter Golf checkout and write validator/RECORDS_AUDIT.md.

Usage: python -m validator.audit RECORDS_DIR [--write] [--cold N]
  RECORDS_DIR holds track_*/<folder>/. Prints the Markdown (or writes RECORDS_AUDIT.md with --write): measured
  timings (in-process per folder; `python -m validator FOLDER` in a fresh process for N folders, default all),
  per-rule counts, every ERROR fail joined with its explanation (validator/audit_notes.py), the STAT.SIG chain.
  Exit 1 if a folder crashed the validator, a rule crashed, or an ERROR has no explanation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from validator.cli import validate_folder
from validator.rules import Finding, builtin_rules

ORDER = {"fail": 0, "warn": 1, "pass": 2, "skip": 3}


def audit_records(records: Path, per_folder: dict[str, float] | None = None
                  ) -> tuple[dict[str, list[Finding]], float]:
    """Validate every ``track_*/<folder>`` under ``records``; returns findings per folder and seconds taken
    (``per_folder`` receives each folder's seconds). A folder that crashes the validator gets one CRASH finding."""
    t0 = time.perf_counter()
    out: dict[str, list[Finding]] = {}
    for folder in sorted(records.glob("track_*/*")):
        if folder.is_dir():
            name = f"{folder.parent.name}/{folder.name}"
            t1 = time.perf_counter()
            try:
                out[name] = validate_folder(folder)
            except Exception as exc:  # noqa: BLE001 - the audit reports crashes instead of stopping
                out[name] = [Finding("CRASH", "ERROR", "fail", f"validator crashed: {type(exc).__name__}: {exc}")]
            if per_folder is not None:
                per_folder[name] = time.perf_counter() - t1
    return out, time.perf_counter() - t0


def cold_seconds(records: Path, limit: int | None = None) -> list[float]:
    """Wall time of `python -m validator FOLDER --json` in a fresh interpreter, per folder (imports included)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    folders = [f for f in sorted(records.glob("track_*/*")) if f.is_dir()]
    if limit is not None and limit < len(folders):
        if limit <= 0:
            return []
        step = len(folders) / limit
        folders = [folders[int(i * step)] for i in range(limit)]
    out = []
    for folder in folders:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "validator", str(folder), "--json"], cwd=root, capture_output=True,
                       check=False, env={**__import__("os").environ, "PYTHONPATH": str(root)})
        out.append(time.perf_counter() - t0)
    return out


def worst(findings: list[Finding], rule: str) -> str:
    """The worst status of one rule in one folder."""
    st = [f.status for f in findings if f.rule == rule]
    return min(st, key=lambda s: ORDER[s]) if st else "skip"


def to_markdown(results: dict[str, list[Finding]], seconds: float) -> str:
    """Per-rule table (folders by worst status) and every fail finding."""
    lines = [f"Folders: {len(results)}; static validation of all of them took {seconds:.1f} s.", "",
             *rule_table(results)]
    lines += ["", "### Every fail finding", "", "| folder | rule | sev | file | finding |", "|---|---|---|---|---|"]
    for name, findings in results.items():
        for f in findings:
            if f.status == "fail":
                msg = f.message.replace("|", "\\|")
                lines.append(f"| {name} | {f.rule} | {f.severity} | {f.file or ''} | {msg} |")
    return "\n".join(lines) + "\n"


def rule_table(results: dict[str, list[Finding]]) -> list[str]:
    """Per-rule counts of folders by their worst status."""
    lines = ["| rule | severity | pass | warn | fail | skip |", "|---|---|---|---|---|---|"]
    for rule in builtin_rules():
        counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
        for findings in results.values():
            counts[worst(findings, rule.id)] += 1
        lines.append(f"| {rule.id} | {rule.severity} | {counts['pass']} | {counts['warn']} | {counts['fail']} | "
                     f"{counts['skip']} |")
    return lines


def audit_document(records: Path, cold_limit: int | None = None) -> tuple[str, int]:
    """The whole RECORDS_AUDIT.md, generated; returns (text, number of problems: crashes + unexplained ERRORs)."""
    import platform
    import statistics

    from validator.audit_notes import explain
    from validator.cli import __version__

    per: dict[str, float] = {}
    results, seconds = audit_records(records, per)
    cold = cold_seconds(records, cold_limit)
    crashes = [(n, f) for n, fs in results.items() for f in fs
               if f.rule == "CRASH" or (f.status == "skip" and f.message.startswith("rule crashed"))]
    errors = [(n, f) for n, fs in results.items() for f in fs if f.status == "fail" and f.severity == "ERROR"]
    unexplained = [(n, f) for n, f in errors if explain(n, f.rule, f.message) is None]
    warm = sorted(per.values())
    lines = [
        f"# Static validator audit of the merged records ({records})", "",
        "Generated by `python -m validator.audit RECORDS_DIR --write` (validator " + __version__ + "); do not edit by "
        "hand — explanations live in `validator/audit_notes.py`. Records come from "
        "`git -C /work/.mirror/openai+parameter-golf/repo archive HEAD records | tar -x -C /tmp/pg_records` "
        "(official `main` HEAD 4908dc46f; no record content is stored in this repo). Default mode: no `--strict`, "
        "no `--sota`.", "",
        "## Measured", "",
        f"* machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average at the end of the run {__import__('os').getloadavg()[0]:.1f} (a shared box: other engineers' "
        "jobs inflate every timing)",
        f"* folders: {len(results)}; validator crashes: {sum(1 for _, f in crashes if f.rule == 'CRASH')}; "
        f"rule crashes: {sum(1 for _, f in crashes if f.rule != 'CRASH')}",
        f"* in-process static validation of all folders: {seconds:.2f} s (per folder median "
        f"{statistics.median(warm):.3f} s, max {max(warm):.3f} s)",
        f"* `python -m validator FOLDER --json` in a fresh process (imports included), {len(cold)} folders: median "
        f"{statistics.median(cold):.3f} s, max {max(cold):.3f} s" if cold else "* cold runs: not measured",
        f"* ERROR fails: {len(errors)} in {len({n for n, _ in errors})} folders; unexplained: {len(unexplained)}", "",
        "## Per rule (folders by the worst status of the rule)", "", *rule_table(results), "",
        "## Every ERROR fail, explained", "",
        "| folder | rule | file | finding | explanation |", "|---|---|---|---|---|"]
    for n, f in errors:
        why = explain(n, f.rule, f.message) or "**UNEXPLAINED**"
        msg = f.message.replace("|", "\\|")
        lines.append(f"| {n} | {f.rule} | {f.file or ''} | {msg} | {why.replace('|', '/')} |")
    from validator.audit_notes import FIXES

    lines += ["", "## Validator bugs found by auditing the records, and fixed", "", FIXES.strip()]
    if crashes:
        lines += ["", "## Crashes", ""] + [f"* {n}: {f.rule}: {f.message}" for n, f in crashes]
    lines += ["", "## STAT.SIG along the record folders (informational)", "",
              "Each record-track folder with >= 2 scored runs against the previous record-track folder in date order "
              "(not the official frontier). README test: 0.005 nats at p < 0.01 (converted to bpb with the new "
              "folder's loss/bpb ratio); practice test: no margin, p < 0.25.", "", significance_chain(records)]
    return "\n".join(lines) + "\n", len(crashes) + len(unexplained)


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
    """Print (or --write) the generated RECORDS_AUDIT.md; exit 1 on crashes or unexplained ERRORs."""
    args = sys.argv[1:] if argv is None else argv
    write = "--write" in args
    cold: int | None = None
    if "--cold" in args:
        cold = int(args[args.index("--cold") + 1])
        args = [a for i, a in enumerate(args) if a != "--cold" and (i == 0 or args[i - 1] != "--cold")]
    pos = [a for a in args if not a.startswith("--")]
    if len(pos) != 1 or not Path(pos[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    text, problems = audit_document(Path(pos[0]), cold)
    if write:
        out = Path(__file__).resolve().parent / "RECORDS_AUDIT.md"
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}; {problems} problem(s)")
    else:
        print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
