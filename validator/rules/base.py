"""Core types of the rules engine: Severity, Finding, Rule and the folder context rules inspect."""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from validator.logs import EvalLine, LogRecord, parse_events, parse_folder, parse_text, scoring_logs
from validator.untrusted_json import JSON_ERRORS, parse_json, run_dir_metrics
from validator.wrapper import decode_wrapper

CAP = 16_000_000
BLOB_BYTES = 1_000_000  # a shipped file this large that is no document, log or tokenizer is data a run may load
TRAIN_CAP_MS = 600_000.0
EVAL_CAP_MS = 600_000.0
ERROR, WARN, INFO = "ERROR", "WARN", "INFO"
PASS, FAIL, SKIP = "pass", "fail", "skip"
WARN_STATUS = "warn"
CRASHED = "rule crashed:"
# A code scan that could not read a file the run executes (it does not parse on this Python, e.g. PEP 701 f-strings
# before 3.12): the validation is incomplete, never a pass (`pgolf validate` exits 2).
UNREAD = "not read by this scan"
# A run directory's files; a record-profile script's run has no events.jsonl (train.log is its record).
RUN_DIR_FILES = ("config.json", "train.log", "metrics.json", "final_model.ptz")
# Files only a records folder holds: a folder with one is validated as a records folder (`FolderContext.is_run_dir`).
RECORDS_FOLDER_FILES = ("train_gpt.py",)


@dataclass
class Finding:
    """One result of one rule: status is pass / warn / fail / skip."""

    rule: str
    severity: str
    status: str
    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None
    expected: Any = None
    found: Any = None
    style: bool = False  # a style/packaging finding: WARN by default, an ERROR fail under --strict

    def __post_init__(self) -> None:
        self.status = self.status.lower()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (None and False fields dropped)."""
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}


@dataclass
class Rule:
    """A rule: id and severity from the rulebook, where it comes from, and its static check."""

    id: str
    title: str
    source: str
    severity: str
    check: Callable[[FolderContext], list[Finding]]
    decides: bool = True  # a record-deciding rule: its violations are ERROR fails by default (no --strict needed)
    lower: str = ""  # which of its findings are reported below the rule's severity, and why (RULES.md)

    def finding(self, status: str, message: str, severity: str | None = None, **kw: Any) -> Finding:
        """Build a Finding of this rule."""
        return Finding(self.id, severity or self.severity, status, message, **kw)

    def run(self, ctx: FolderContext) -> list[Finding]:
        """Run the check; a crash becomes a skip finding rather than aborting the whole validation."""
        try:
            out = self.check(ctx)
        except Exception as exc:  # noqa: BLE001 - a rule bug must not hide the other rules' findings
            return [self.finding(SKIP, f"{CRASHED} {type(exc).__name__}: {exc}")]
        out = out or [self.finding(SKIP, "nothing to check")]
        if ctx.strict:
            for f in out:  # --strict only adds the style rules: their warnings become errors
                if f.style and f.status == WARN_STATUS:
                    f.status, f.severity = FAIL, ERROR
                    f.message = "[strict] " + f.message
        return out


def script_text(path: Path) -> str:
    """A Python file's text in the encoding its PEP 263 line declares (UTF-8 without one; undecodable bytes
    replaced): a latin-1 wrapper's payload characters are its bytes."""
    data = path.read_bytes()
    try:
        encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    except SyntaxError:  # an unknown codec or a bad BOM: read it as UTF-8, as before
        encoding = "utf-8"
    return data.decode(encoding, errors="replace")


def unwrap_source(src: str) -> tuple[str, bool]:
    """Decode a self-extracting wrapper by literal evaluation (never exec); returns (source, wrapped)."""
    return decode_wrapper(src)[:2]


@dataclass
class FolderContext:
    """Everything a static rule may look at, parsed once: files, submission.json, logs."""

    root: Path
    strict: bool = False
    sota: float | list[float] | None = None
    sota_label: str | None = None
    notes: list[str] = field(default_factory=list)
    plugin_files: tuple[str, ...] = ()  # `--plugin-file`s: a run directory's configuration resolves with them

    @cached_property
    def is_run_dir(self) -> bool:
        """A pgolf run directory (config.json + events.jsonl, or a record-profile script's run: config.json +
        train.log + metrics.json, no events.jsonl) rather than a records folder. A folder that also holds what only a
        records folder holds (train_gpt.py, a submission*.json), or that sits in a records track (its parent named
        `track_*`), is a records folder whatever else it ships: run directories get lighter static rules (pgolf's
        own code, one run), so claiming to be one must gain a submission nothing. What remains a run directory is
        held to being one: its config.json must resolve (FILES.REQUIRED) and its artifact must be whole and carry a
        model (RUN.ARTIFACT)."""
        has = [(self.root / f).is_file() for f in ("config.json", "events.jsonl", "train.log", "metrics.json")]
        if not (has[0] and (has[1] or (has[2] and has[3]))):
            return False
        records_files = [f for f in RECORDS_FOLDER_FILES if (self.root / f).exists()]
        records_files += [p.name for p in self.root.glob("submission*.json")]
        return not records_files and not self.root.resolve().parent.name.startswith("track_")

    @cached_property
    def files(self) -> list[Path]:
        """Every file under the folder, relative paths, sorted."""
        return sorted(p.relative_to(self.root) for p in self.root.rglob("*") if p.is_file())

    @cached_property
    def track(self) -> str:
        """'record', 'non-record' or 'unknown', from the parent folder name and the JSON ``track`` field."""
        parent = self.root.resolve().parent.name
        if parent == "track_non_record_16mb":
            return "non-record"
        if parent == "track_10min_16mb":
            return "record"
        tr = str((self.submission or {}).get("track", ""))
        if "non" in tr:
            return "non-record"
        return "record" if tr else "unknown"

    @cached_property
    def submission_path(self) -> Path | None:
        """submission.json, else a variant submission_*.json."""
        p = self.root / "submission.json"
        if p.is_file():
            return p
        variants = sorted(self.root.glob("submission*.json"))
        return variants[0] if variants else None

    @cached_property
    def submission_error(self) -> str | None:
        """JSON parse error of the submission file, if any."""
        _ = self.submission
        return self.__dict__.get("_sub_err")

    @cached_property
    def submission(self) -> dict[str, Any] | None:
        """Parsed submission JSON (None if absent or invalid)."""
        if self.submission_path is None:
            return None
        try:
            # a BOM is allowed (FILES.PLAIN_TEXT), and JSON readers skip it
            data = parse_json(self.submission_path.read_text(encoding="utf-8-sig"))
        except JSON_ERRORS as exc:
            self.__dict__["_sub_err"] = str(exc)
            return None
        return data if isinstance(data, dict) else None

    @cached_property
    def logs(self) -> list[LogRecord]:
        """Parsed logs (events.jsonl for a run directory)."""
        if self.is_run_dir:
            seed = None
            try:
                cfg = parse_json((self.root / "config.json").read_text())
                seed = _find_key(cfg, "seed")
            except (*JSON_ERRORS, OSError):
                pass
            seed = int(seed) if isinstance(seed, (int, float)) else None
            if not (self.root / "events.jsonl").is_file():  # a record-profile script's run: its train.log
                rec = parse_text((self.root / "train.log").read_text(), self.root / "train.log")
                rec.seed = rec.seed if rec.seed is not None else seed
                return [rec]
            return [parse_events((self.root / "events.jsonl").read_text(), self.root / "events.jsonl", seed=seed)]
        return parse_folder(self.root)

    @cached_property
    def run_records(self) -> list[LogRecord]:
        """Every record of a run directory's one run, each parsed on its own: events.jsonl, train.log and
        metrics.json (as a record of its figures, fmt "metrics"); [] for a records folder. They must agree on every
        fact a rule judges (JSON.CONSISTENCY), and the budget rules read all of them (`budget_logs`): the worst
        figure any of them shows counts, so editing one file down changes nothing."""
        if not self.is_run_dir:
            return []
        out = list(self.logs)
        log = self.root / "train.log"
        if (self.root / "events.jsonl").is_file() and log.is_file():
            rec = parse_text(log.read_text(encoding="utf-8", errors="replace"), log)
            rec.seed = rec.seed if rec.seed is not None else (out[0].seed if out else None)
            out.append(rec)
        try:
            m = run_dir_metrics(self.root, required=())
        except ValueError:  # JSON.CONSISTENCY reports it
            return out
        rec = LogRecord(path=self.root / "metrics.json", fmt="metrics", seed=out[0].seed if out else None)
        num = lambda k: float(m[k]) if isinstance(m.get(k), (int, float)) and not isinstance(m[k], bool) else None
        rec.train_time_ms, rec.steps = num("train_time_ms"), m.get("steps") if isinstance(m.get("steps"), int) else None
        rec.model_bytes, rec.code_bytes, rec.total_bytes = (m.get(k) for k in ("model_bytes", "code_bytes",
                                                                               "total_bytes"))
        if num("val_bpb") is not None and num("val_loss") is not None:
            rec.evals.append(EvalLine("metrics.json", num("val_loss"), num("val_bpb"),  # type: ignore[arg-type]
                                      num("eval_time_ms"), 0))
        return [*out, rec]

    @cached_property
    def budget_logs(self) -> list[LogRecord]:
        """The records the budget rules judge: every record of a run directory's run (`run_records`), the logs of a
        records folder."""
        return self.run_records if self.is_run_dir else self.logs

    @cached_property
    def scoring(self) -> list[LogRecord]:
        """Logs with a final score, one per seed/run."""
        return scoring_logs(self.logs)

    @cached_property
    def method(self) -> str | None:
        """Label of the scoring line: submission.json ``val_bpb_method``, else the label whose per-log mean
        reproduces the claimed val_bpb when the default preference (ttt > sliding > roundtrip) does not."""
        sub = self.submission or {}
        if isinstance(sub.get("val_bpb_method"), str):
            return sub["val_bpb_method"]
        claim = next((float(sub[k]) for k in ("val_bpb", "mean_val_bpb") if isinstance(sub.get(k), (int, float))),
                     None)
        logs = self.scoring
        if claim is None or not logs:
            return None
        default = [lg.final() for lg in logs]
        if close_to_claim(sum(f.val_bpb for f in default if f) / len(logs), claim):
            return None
        labels = {e.label for lg in logs for e in lg.evals}
        for label in sorted(labels, key=lambda x: (not x.endswith("_exact"), x)):
            vals = [next((e.val_bpb for e in reversed(lg.evals) if e.label == label), None) for lg in logs]
            if all(v is not None for v in vals) and close_to_claim(sum(vals) / len(vals), claim):  # type: ignore
                return label
        return None

    @cached_property
    def script_path(self) -> Path | None:
        """The training script (train_gpt.py)."""
        p = self.root / "train_gpt.py"
        return p if p.is_file() else None

    @cached_property
    def script_bytes(self) -> int | None:
        """Size of the shipped train_gpt.py."""
        return self.script_path.stat().st_size if self.script_path else None

    @cached_property
    def script_decoded(self) -> tuple[str, bool, str | None] | None:
        """(decoded source, was_wrapped, why a wrapper could not be read) of train_gpt.py."""
        if self.script_path is None:
            return None
        return decode_wrapper(script_text(self.script_path))

    @cached_property
    def script_source(self) -> tuple[str, bool] | None:
        """(decoded source, was_wrapped) of train_gpt.py."""
        return None if self.script_decoded is None else self.script_decoded[:2]

    @cached_property
    def tree(self) -> ast.Module | SyntaxError | None:
        """AST of the decoded train_gpt.py (parsed once), the SyntaxError if it does not parse, None if absent."""
        if self.script_source is None:
            return None
        try:
            return ast.parse(self.script_source[0], filename="train_gpt.py")
        except SyntaxError as exc:
            return exc

    @cached_property
    def readme(self) -> str:
        """README.md text ('' if absent)."""
        p = self.root / "README.md"
        return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else ""

    def rel(self, p: Path) -> str:
        """Path relative to the folder, as a string."""
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)


def close_to_claim(value: float, claim: float, tol: float = 6e-5) -> bool:
    """True if ``value`` agrees with ``claim`` within ``tol`` or the claim's own rounding."""
    text = repr(claim)
    digits = len(text.split(".")[-1]) if "." in text and "e" not in text else 0
    return abs(value - claim) <= max(tol, 0.5 * 10 ** -digits + 1e-12)


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj and not isinstance(obj[key], (dict, list)):
            return obj[key]
        for v in obj.values():
            r = _find_key(v, key)
            if r is not None:
                return r
    return None


def py_version_note() -> str:
    """The interpreter version used for parse checks."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"
