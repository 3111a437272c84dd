"""`pgolf validate --run`: the dynamic rules, each executed in a sandboxed subprocess (validator/sandbox.py).

* Records folder: FILES.RUNS_IN_FOLDER smoke run of train_gpt.py (validator/smoke.py) with the data-access
  audit (DATA.NO_TRAIN_AT_EVAL, DATA.NO_VAL_IN_TRAIN); the §10 harness for `--evaluator FILE.py:NAME`.
* pgolf run directory: the §10 harness (EVAL.C1–C4, EVAL.TTT, EVAL.DOC_ISOLATION) on every evaluator the
  registry knows, built with the run's plugins and settings at a tiny size (validator/harness.py); the
  byte-table audit of the run's tokenizer on its validation tokens (TOK.BPB); the data-access audit of a
  tiny re-training of the run's configuration (validator/trainaudit.py), including the val-swap test.

A check that the machine cannot perform is a SKIP finding whose message starts with "could not run:";
`pgolf validate` then exits 2 unless an ERROR already failed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext
from validator.sandbox import DEFAULT_MEMORY, run_sandboxed
from validator.smoke import COULD_NOT_RUN, access_findings, could_not_run, smoke_findings, val_invariance

ROOT = Path(__file__).resolve().parent.parent
DYNAMIC_RULES: dict[str, tuple[str, str]] = {
    "FILES.RUNS_IN_FOLDER": ("train_gpt.py compiles and runs a smoke configuration in a copy of the folder, "
                             "pgolf not importable", "README Submission Process item 4"),
    "DATA.NO_TRAIN_AT_EVAL": ("no training-data reads after the artifact is written; no network",
                              "README FAQ; rulebook §10.7"),
    "DATA.NO_VAL_IN_TRAIN": ("the artifact does not depend on the validation content", "README FAQ; rulebook §10.7"),
    "EVAL.C1": ("prefix invariance: scores before t do not depend on tokens >= t (records scripts, black-box: "
                "S(P followed by a copy of P) >= S(P))", "Issue #1017 C1; rulebook §10.2"),
    "EVAL.C2": ("the scored distribution sums to 1 over the vocabulary (records scripts, black-box: no better than "
                "chance on i.i.d. uniform validation tokens, Ville bound at 1e-6)", "Issue #1017 C2; rulebook §10.3"),
    "EVAL.C3": ("score before update: x_t does not move the distribution that scores it",
                "Issue #1017 C3; rulebook §10.4"),
    "EVAL.C4": ("single pass: each position scored once, no second scoring pass", "Issue #1017 C4; rulebook §10.5"),
    "EVAL.TTT": ("test-time training only on tokens already scored (optimizer-step audit)",
                 "README FAQ TTT; Issue #677; rulebook EVAL.TTT"),
    "EVAL.DOC_ISOLATION": ("no cross-document leak where the evaluator claims isolation", "PR #1797/#1851; §10.6"),
    "EVAL.PRODUCTION": ("the production-path run (no hooks; same warm-up, sink and stream) reports the loss the "
                        "audited run's per-position records add up to", "issue #12; validator/THREATS.md"),
    "TOK.BPB": ("per-token byte counts sum to the decoded UTF-8 bytes", "README criterion 2; PR #1184 (#1806)"),
}


@dataclass
class DynamicOptions:
    evaluators: list[str] = field(default_factory=list)
    timeout: float = 600.0
    memory: int | None = DEFAULT_MEMORY
    harness: dict[str, Any] = field(default_factory=dict)
    plugin_files: list[str] = field(default_factory=list)
    smoke_env: dict[str, str] = field(default_factory=dict)
    only: list[str] | None = None
    train_audit: bool = True
    byte_tokens: int = 500_000
    jobs: int = 2  # parallel sandboxed children (harness shards + the train audit)
    smoke_data: Path | None = None  # a pgolf data dir to cut the smoke dataset from (default: embedded corpus)


def could_not_run_findings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == SKIP and COULD_NOT_RUN in f.message]


def run_dynamic(path: Path, opts: DynamicOptions) -> list[Finding]:
    """Every dynamic finding for a records folder or a pgolf run directory."""
    ctx = FolderContext(path)
    out: list[Finding] = []
    if ctx.is_run_dir:
        with ThreadPoolExecutor(max_workers=2) as pool:  # each side waits on its own subprocesses
            audit = pool.submit(train_audit_findings, path, opts) if opts.train_audit else None
            out += harness_findings(path, opts)
            if audit is not None:
                out += audit.result()
    else:
        out += smoke_findings(path, opts.timeout, opts.memory, opts.smoke_env, data=opts.smoke_data)
        if any(f.rule == "FILES.RUNS_IN_FOLDER" and f.status == PASS for f in out):
            from validator.blackbox import blackbox_findings

            out += blackbox_findings(path, opts.timeout, opts.memory, opts.smoke_env, data=opts.smoke_data)
        if opts.evaluators:
            out += harness_findings(None, opts)
        else:
            out.append(Finding("EVAL.C1", INFO, SKIP, "dynamic: the §10 harness (EVAL.C1-C4, EVAL.TTT, "
                               "EVAL.DOC_ISOLATION) needs an importable evaluator: pass --evaluator FILE.py:NAME "
                               "(a records script's evaluator is not importable in general)"))
    return out


def _child_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def harness_findings(run_dir: Path | None, opts: DynamicOptions) -> list[Finding]:
    """Launch the harness children (`opts.jobs` shards of the evaluators, in parallel) and turn their reports
    into findings."""
    n = max(1, opts.jobs)
    specs = []
    for spec in opts.evaluators:
        file, _, name = spec.rpartition(":")
        specs.append(f"{Path(file).resolve()}:{name}" if file else spec)
    shards = [k for k in range(n) if run_dir is not None or specs[k::n]]
    with ThreadPoolExecutor(max_workers=len(shards)) as pool:
        docs = list(pool.map(lambda k: _harness_shard(run_dir, opts, specs[k::n], k, n), shards))
    bad = next((d for d in docs if not d.get("ok")), None)
    if bad is not None:
        return report_findings(bad)
    merged = {"ok": True, "reports": [r for d in docs for r in d.get("reports", [])],
              "byte_audit": next((d["byte_audit"] for d in docs if d.get("byte_audit")), None)}
    return report_findings(merged)


def _harness_shard(run_dir: Path | None, opts: DynamicOptions, specs: list[str], k: int, n: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pgolf_validate_harness_"))
    try:
        args = ["--out", str(tmp / "report.json"), "--settings", json.dumps(opts.harness), "--shard", f"{k}/{n}"]
        if run_dir is not None:
            args += ["--run-dir", str(run_dir.resolve()), "--byte-tokens", str(opts.byte_tokens if k == 0 else 0)]
        for spec in specs:
            args += ["--evaluator", spec]
        for pf in opts.plugin_files:
            args += ["--plugin-file", str(Path(pf).resolve())]
        if opts.only:
            args += ["--only", ",".join(opts.only)]
        res = run_sandboxed(_child_cmd("validator.harness", *args), tmp, timeout=opts.timeout, memory=opts.memory,
                            keep_pythonpath=[str(ROOT)], env={"OMP_NUM_THREADS": "1"})
        report = tmp / "report.json"
        if not report.is_file():
            why = "timed out" if res.timed_out else f"exit {res.returncode}: {res.tail}"
            return {"ok": False, "error": f"{COULD_NOT_RUN} the evaluation harness did not finish ({why})"}
        return json.loads(report.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report_findings(doc: dict[str, Any]) -> list[Finding]:
    """Findings from a harness JSON document (validator.harness main)."""
    if not doc.get("ok"):
        err = str(doc.get("error"))
        return [could_not_run("EVAL.C1", err.removeprefix(COULD_NOT_RUN).strip() if err.startswith(COULD_NOT_RUN)
                              else f"the evaluation harness could not start: {err}")]
    out: list[Finding] = []
    for rep in doc.get("reports", []):
        tag = f"[{rep['name']}] "
        if rep.get("error"):
            msg = rep["error"]
            if msg.startswith(COULD_NOT_RUN) or rep.get("primary"):
                body = msg if msg.startswith(COULD_NOT_RUN) else f"{COULD_NOT_RUN} {msg}"
                out.append(Finding("EVAL.C1", ERROR if rep.get("primary") else WARN, SKIP,
                                   f"dynamic: {tag}{body}"))
            else:
                out.append(Finding("EVAL.C1", INFO, SKIP, f"dynamic: {tag}{msg}"))
            continue
        for c in rep.get("checks", []):
            sev = ERROR if rep.get("primary") else WARN
            if c["rule"] == "EVAL.C1" and c["message"].startswith("truncation"):
                sev = WARN
            if (c.get("evidence") or {}).get("info"):
                sev = INFO
            status = c["status"]
            if status == FAIL and sev != ERROR:
                status = "warn"
            extra = "" if rep.get("primary") else " (not this run's evaluator)"
            out.append(Finding(c["rule"], sev, status, f"dynamic: {tag}{c['message']}{extra}"))
    bt = doc.get("byte_audit")
    if bt:
        out.append(Finding("TOK.BPB", ERROR, bt["status"], "dynamic: " + bt["message"]))
    return out


def train_audit_findings(run_dir: Path, opts: DynamicOptions) -> list[Finding]:
    """Tiny re-training of the run's configuration in the sandbox, audited; then the val-swap test."""
    import secrets

    from validator.smoke import artifact_digest, smoke_data

    label = "tiny re-training of the run's configuration"
    offset = secrets.randbelow(1 << 30)

    def one(random_val: bool) -> tuple[Any, Path]:
        tmp = Path(tempfile.mkdtemp(prefix="pgolf_validate_train_"))
        env = smoke_data(tmp, random_val, None, offset)
        args = ["--run-dir", str(run_dir.resolve()), "--data", env["DATA_PATH"], "--out", str(tmp / "runs")]
        for pf in opts.plugin_files:
            args += ["--plugin-file", str(Path(pf).resolve())]
        res = run_sandboxed(_child_cmd("validator.trainaudit", *args), tmp, timeout=opts.timeout,
                            memory=opts.memory, audit=tmp / "audit.jsonl", keep_pythonpath=[str(ROOT)],
                            env={"OMP_NUM_THREADS": "1", "PGOLF_SANDBOX_WATCH": env["PGOLF_SANDBOX_WATCH"]})
        return res, tmp

    res, tmp = one(False)
    try:
        if res.returncode != 0:
            why = "timed out" if res.timed_out else f"exit {res.returncode}: {res.tail}"
            return [could_not_run("DATA.NO_TRAIN_AT_EVAL", f"{label} failed ({why})")]
        out, _ = access_findings(res.events, tmp / "runs", label)
        first = artifact_digest(res.events, tmp / "runs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # always, whatever the read times say: timing can be staged (an early placeholder artifact, a late rewrite)
    def run_once(random_val: bool) -> str | None:
        r, t = one(random_val)
        try:
            return artifact_digest(r.events, t / "runs") if r.returncode == 0 else None
        finally:
            shutil.rmtree(t, ignore_errors=True)

    out.append(val_invariance(run_once, label, first))
    return out


__all__ = ["DYNAMIC_RULES", "DynamicOptions", "run_dynamic", "could_not_run_findings", "report_findings", "PASS",
           "FAIL", "WARN"]
