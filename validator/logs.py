"""Tolerant parsing of Parameter Golf train logs (rulebook §9) and exact parsing of pgolf's events.jsonl."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validator.untrusted_json import JSON_ERRORS, parse_json

# What launchers and loggers put before a line: an epoch timestamp, torchrun --tee's `[default0]:` / `[rank0]:`, a
# logging-module date; removed (repeatedly: they stack) so that the patterns below read the line itself
TS_PREFIX = re.compile(r"^(?:\d{10}\.\d{3} |\[(?:default|rank)\d+\]:\s?|\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?"
                       r"\s+(?:(?:INFO|DEBUG|WARNING|ERROR)\b\W*)?)+")
# A figure in any notation a log may print it in (12345, 12,345, 12_345, 1.2e4), of bounded length (a 5,000-digit
# field must not stop the parse), and a time unit with or without a space before it.
NUM = r"\d[\d,_]{0,24}(?:\.\d{1,12})?(?:[eE][+-]?\d{1,3})?"
INT = r"\d[\d,_]{0,24}"
UNIT = r"(?:ms|msecs?|millis(?:econds)?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\b"
E1 = re.compile(
    r"^(?P<label>[A-Za-z][\w\-. ]*?(?: sliding)?)\s+val_loss[:=]\s*(?P<loss>[0-9.]+)\s+"
    r"(?:sliding )?val_bpb[:=]\s*(?P<bpb>[0-9.]+)(?P<rest>.*)$"
)
E2 = re.compile(r"^(?P<label>final_sliding_window_eval(?:_exact)?) stride:\d+ val_loss:(?P<loss>[0-9.]+) "
                r"val_bpb:(?P<bpb>[0-9.]+)(?P<rest>.*)$")
E3 = re.compile(r"^ttt_sliding:done val_loss=(?P<loss>[0-9.]+) val_bpb=(?P<bpb>[0-9.]+) elapsed=(?P<s>[0-9.]+)s")
V1 = re.compile(rf"\b(?:(?:eval_)?time|elapsed)[:=]\s*(?P<num>{NUM})\s*(?P<unit>{UNIT})")
V1_FIGURE = re.compile(r"\b(?:(?:eval_)?time|elapsed)[:=]\s*\d")  # a figure follows: it must be read
# Any other time figure on a scoring line: a number with a time unit (`(712.7s)`, `took 712s`, `eval_time 712s`), or
# a key that carries the unit (`eval_s:712.7`, `eval_ms=712687`). The line's largest time figure is its pass's time.
TIME_FIGURE = re.compile(rf"(?<![\w.])(?P<num>{NUM})\s*(?P<unit>{UNIT})")
UNIT_KEY_FIGURE = re.compile(rf"\b[A-Za-z]\w*?_(?P<unit>ms|s|secs?|seconds|mins?)[:=]\s*(?P<num>{NUM})(?![\w.])")
# Any training-time or step figure on a log line, in any unit (the parse of record-format lines above reads the
# shapes it knows; this reads every figure, so that a final line in another shape or unit is never skipped for an
# earlier, smaller one): the log's largest counts.
# `train_time`, `Train time`, `total_train_time`, `training_time`, `training-time` (a key inside a longer one too)
TRAIN_KEY = r"(?i:(?<![a-z])train(?:ing)?[ _-]?time)"
ANY_TRAIN_TIME = re.compile(rf"{TRAIN_KEY}[:=]?\s*(?P<num>{NUM})\s*(?P<unit>{UNIT})")
CLOCK_TRAIN_TIME = re.compile(rf"{TRAIN_KEY}[:=]?\s*(?:(\d+):)?(\d+):(\d{{2}}(?:\.\d+)?)\b")  # [h:]mm:ss
TRAIN_TIME_FIGURE = re.compile(rf"{TRAIN_KEY}[:=]?\s*\d")  # a figure follows: it must be read, or the log fails
STEP_LOSS = re.compile(r"^(?:step:)?(\d+)/\d+ .*?\btrain_loss:\s*(\d+(?:\.\d+)?)\b")
ANY_STEP = re.compile(r"\bstep[:=]?\s*(\d+)/\d+\b")
STEP_VAL_LOSS = re.compile(r"\bval_loss[:=]\s*(\d+\.\d+)")
# a line about evaluation (`eval_time:712418ms` on its own line, `sliding_window_eval:done elapsed=712.4s`,
# `total_eval_time: 712.4s`, `TTT:done ...`): any duration on it bounds the evaluation from below (EVAL_WORD)
EVAL_WORD = re.compile(r"(?i)(?<![a-z])(?:eval\w*|ttt|sliding|scor(?:e|ing)|inference|test[-_ ]?time\w*)(?![a-z])")
V3 = re.compile(r"^ttt_lora:compile warmup done \(([0-9.]+)s\)")
T1 = re.compile(r"^step:(\d+)/(\d+)\b.*?\btrain_time:(\d+(?:\.\d+)?)ms(?:.*?step_avg:([0-9.]+)ms)?")
T2 = re.compile(r"^stopping_early: wallclock_cap train_time: ?(\d+)ms step: ?(\d+)/(\d+)")
T3 = re.compile(r"^(\d+)/(\d+) train_loss: [0-9.]+ train_time: ([0-9.]+)m tok/s")
G1 = re.compile(r"^gptq:reserving ([0-9.]+)(ms|s)(?: from training budget)?, effective=(\d+)ms")
# calibration that reads training data (Hessians from the train loader): inside the 600 s training budget
# any line about Hessians or calibration with a duration (`GPTQ:collected 67 Hessians in 12400ms`, `gptq:calibrated
# 66 layers in 3.1 s`) that is not the self-generated kind below
CALIB_WORD = re.compile(r"(?i)(?<![a-z])(?:hessians?|calibrat\w*)(?![a-z])")
# calibration on self-generated sequences (PR #1019 "AR self-gen"): timed separately
GAR = re.compile(r"^gptq:(?:generated \d+ (?:seqs|sequences)|collected hessians for \d+ layers) in ([0-9.]+)s")
GAR_MARK = re.compile(r"^gptq:(?:generating autoregressive|collecting hessians from autoregressive)|\(AR self-gen\)")
GDONE = re.compile(r"^gptq:(?:done in|quantization complete in) ([0-9.]+)s")
GWALL = re.compile(r"^wallclock:post_gptq total_elapsed:([0-9.]+)s train_budget:([0-9.]+)s")
# eval-phase work logged on its own line (a TTT pass before the scoring line, a precompute over val, decompression)
# (`ttt:done ... time:560s`, `legal_ttt:finished 2000 steps in 560.0s`, `TTT:done`): its largest duration is the pass
PH_TTT = re.compile(r"(?i)^[\w-]*ttt[\w-]*[: ].*?\b(?:done|completed?|finished|ended?)\b")
# a TTT progress line's running time (`tttg: c12/40 lr:0.01 t:31.2s`): the pass it belongs to took at least as long
TTT_PROGRESS = re.compile(r"(?i)^[\w-]*ttt[\w-]*[: ]")
PH_PRE = re.compile(r"^ngram_tilt:precompute .*?elapsed=([0-9.]+)s")
PH_DESER = re.compile(r"^Deserialize: decompression done in ([0-9.]+)s")
# fine-tuning on validation tokens before quantization (PR #1376 family), however it is spelled
PREQ = re.compile(r"^(?:pre[-_ ]?quant(?:ization)?[\w-]*[ _:-]ttt|ttt[\w-]*[ _:-]pre[-_ ]?quant|prequant_?ttt|"
                  r"pre_quant_ttt|ttt_before_quant)[\w:]*", re.I)
# "  INT4+fp8+brotli: 15.42MB model + 0.077MB code = 15.50/16.00MB FITS" (ByteJEPA; printed indented)
MB_SUM = re.compile(r"^[\w+.-]+: ([0-9.]+)(MB|MiB) model \+ ([0-9.]+)(?:MB|MiB) code = ([0-9]+(?:\.([0-9]+))?)/[0-9.]+"
                    r"(MB|MiB)\b")
MB_TOTAL = re.compile(r"^(?:artifact|Total submission size[^:]*|total_size|artifact_size):\s*([0-9]+(?:\.([0-9]+))?)"
                      r"\s*(MB|MiB|M)\b")
G3 = re.compile(r"^(?:Serialize: per-group compression done in|serialize_wallclock:|artifact_production_wallclock:)"
                r" ([0-9.]+)s")
S1 = re.compile(rf"^Total submission size(?: (?P<kind>[^:]+))?:\s*(?P<n>{INT})\s*bytes")
S2 = re.compile(rf"^Serialized model(?: (?P<kind>[^:]+))?:\s*(?P<n>{INT})\s*bytes")
S3 = re.compile(rf"^Code size(?: \((?P<kind>compressed|uncompressed)\))?:\s*(?P<n>{INT})\s*bytes")
S4A = re.compile(rf"^budget:({INT})/16,?000,?000 \(")
S4B = re.compile(rf"^artifact:[0-9.]+MB .* code:({INT})")
S5A = re.compile(rf"^INT\d\+\w+ model:\s*({INT})\s*bytes \| Total submission:\s*({INT})\s*bytes")
S5B = re.compile(rf"^Raw model: {INT} bytes \| Code:\s*({INT})\s*bytes")
S6 = re.compile(rf"^artifact_bytes:\s+({INT})")
# a size line whose figure no pattern above reads (`Total submission size: 15.6 M bytes`): it may be the largest
SIZE_FIGURE = re.compile(r"^(?:Total submission size|Serialized model|artifact_bytes|budget:)\D*\d")
D1A = re.compile(rf"^val_tokens: ?({INT})")
D1B = re.compile(rf"^val_loader:shards pattern=(\S+) tokens:({INT})")
# any other validation-loader line that counts its tokens (`val_loader: pattern=... num_tokens=31010816`)
D1C = re.compile(rf"^val[\w ]*:.*?\b(?:num_|n_|total_|n)?(?:tokens|toks?)[:=]\s*({INT})\b")
D2A = re.compile(r"^train_shards: ?(\d+)")
D2B = re.compile(r"^train_loader:dataset:(\S+) train_shards:(\d+)")
D3 = re.compile(r"^val_bpb:byte_sidecar:enabled")
# the number of ranks, in any spacing (`world_size: 16`, `world_size=16`), and a launcher's GPU count
# (`torchrun --nnodes=2 --nproc_per_node=8`): every figure is kept, a record needs all of them to say 8 GPUs on 1 node
WORLD_SIZE = re.compile(r"\bworld[ _-]?size\s*[:=]\s*(\d{1,6})\b", re.I)
# launchers' node and process counts: torchrun, srun, accelerate, deepspeed, mpirun (`--nnodes=1:2` is an elastic
# range: its largest figure counts)
LAUNCH = re.compile(r"(?:--(?P<key>nproc[_-]per[_-]node|nnodes|nodes|ntasks[_-]per[_-]node|ntasks|num[_-]machines|"
                    r"num[_-]processes|num[_-]nodes|num[_-]gpus|gpus[_-]per[_-]node)|(?P<short>-np))"
                    r"(?:=|\s+)(?:\d{1,6}:)?(?P<n>\d{1,6})\b")
SEED_LINE = re.compile(r"^seed:\s*(\d{1,19})\s*$")
HP_LINE = re.compile(r"^  ([A-Za-z_][\w]*): (.*)$")
# the `key:value key:value` lines a script prints before its first training step (its configuration when it prints
# no Hyperparameters dump): `model_params:26829913`, `train_batch_tokens:786432 train_seq_len:2048 ...`
SETUP_LINE = re.compile(r"^[A-Za-z_]\w*[:=]\S")
SETUP_PAIR = re.compile(r"\b([A-Za-z_]\w*)[:=]([^\s,]+)")
TRAINING_STARTED = re.compile(r"^(?:warmup_)?step[:=]?\s*\d+/\d+|^\d+/\d+ ")
SEED_FILE = [re.compile(r"seed[_-]?(\d+)", re.I), re.compile(r"train(\d+)\.txt$"), re.compile(r"_(\d+)\.(?:txt|log)$")]
EXCLUDED = re.compile(r"^(?:diagnostic|DIAGNOSTIC|pre-quantization|pre_quant|prequant)", re.I)

LOG_SUFFIXES = (".log", ".txt")


@dataclass
class EvalLine:
    """One final-evaluation line (E1–E3)."""

    label: str
    val_loss: float
    val_bpb: float
    eval_ms: float | None
    line: int
    text: str = ""  # the line as printed (timestamp removed)


@dataclass
class LogRecord:
    """Structured facts extracted from one log file (one seed/run)."""

    path: Path
    fmt: str = "text"
    sha256: str = ""
    seed: int | None = None
    evals: list[EvalLine] = field(default_factory=list)
    train_time_ms: float | None = None
    train_time_line: int | None = None
    step_avg_ms: float | None = None
    steps: int | None = None
    total_bytes: int | None = None
    total_bytes_line: int | None = None
    total_kind: str | None = None
    model_bytes: int | None = None
    code_bytes: int | None = None
    code_kind: str | None = None
    code_bytes_uncompressed: int | None = None
    hessian_s: float | None = None
    gptq_reserve_s: float | None = None
    serialize_s: list[float] = field(default_factory=list)
    ar_calib_s: float | None = None  # self-generated calibration (AR self-gen), seconds after the loop
    post_gptq_elapsed_s: float | None = None  # wallclock:post_gptq total_elapsed
    train_budget_s: float | None = None
    phases: list[tuple[str, float, int]] = field(default_factory=list)  # (eval phase, seconds, line)
    prequant_lines: list[int] = field(default_factory=list)
    total_mb: tuple[float, float, str, int] | None = None  # (value, half a printed unit, unit, line)
    eval_figures: list[tuple[float, int]] = field(default_factory=list)  # (ms, line) of durations on eval lines
    warmup_s: float | None = None
    val_tokens: int | None = None
    train_shards: int | None = None
    sidecar: bool = False
    world_size: int | None = None  # a figure other than 8 where the log shows one (every figure: world_sizes)
    world_sizes: set[int] = field(default_factory=set)
    launch: list[tuple[str, int]] = field(default_factory=list)  # (nproc_per_node | nnodes, n) of launch commands
    hparams: dict[str, str] = field(default_factory=dict)
    setup: dict[str, str] = field(default_factory=dict)  # key:value pairs printed before training (SETUP_LINE)
    train_losses: dict[int, float] = field(default_factory=dict)  # step -> train_loss, from the step lines
    step_times: dict[int, float] = field(default_factory=dict)  # step -> train_time (ms) of the step lines
    val_losses: dict[int, float] = field(default_factory=dict)  # step -> val_loss of the periodic validation lines
    artifact_totals: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, bytes, line) per named total
    unread_train_time: tuple[int, str] | None = None  # (line, text) of a train_time figure no pattern reads
    unread_eval_time: tuple[int, str] | None = None  # (line, text) of an eval-line time figure no pattern reads
    unread_size: tuple[int, str] | None = None  # (line, text) of a size line whose figure no pattern reads
    ttt_progress: list[tuple[float, int]] = field(default_factory=list)  # (running ms, line) of TTT progress lines
    cap: int | None = None

    def final(self, method: str | None = None) -> EvalLine | None:
        """The scoring line: the label matching ``method`` if given, else ttt > sliding > roundtrip, exact, last."""
        if not self.evals:
            return None
        if method:
            hits = [e for e in self.evals if e.label == method or e.label == method + "_exact"]
            if hits:
                return max(hits, key=lambda e: (e.label.endswith("_exact"), e.line))

        def rank(e: EvalLine) -> tuple[int, bool, int]:
            lab = e.label.lower()
            fam = 3 if "ttt" in lab else 2 if "sliding" in lab else 1
            return fam, lab.endswith("_exact") or e.label == "ttt_sliding:done", e.line

        return max(self.evals, key=rank)

    def phase_ms_before(self, line: int) -> float:
        """Milliseconds of eval phases that read validation data and were logged on their own line before the
        scoring line (a TTT pass whose adapted model the scoring line then evaluates, a precompute over val)."""
        return 1000.0 * sum(s for name, s, no in self.phases if name in ("ttt", "precompute") and no < line)

    def pass_ms(self, e: EvalLine) -> float | None:
        """One evaluation pass: the largest time its line family prints (an `_exact` twin and its timed line are one
        pass) plus the val-reading phases logged before it on their own lines; a TTT progress line's running time
        before it bounds it from below."""
        base = e.label.removesuffix("_exact")
        times = [x.eval_ms for x in self.evals if x.label.removesuffix("_exact") == base and x.eval_ms is not None]
        phases = self.phase_ms_before(e.line)
        running = [ms for ms, no in self.ttt_progress if no < e.line]
        if not times and not phases and not running:
            return None
        return max(max(times, default=0.0) + phases, max(running, default=0.0))

    def scoring_eval_ms(self, method: str | None = None) -> float | None:
        """Eval time charged to the 600 s evaluation budget: the longest evaluation pass the log shows (whichever
        line a submission names as its score: a claim cannot choose a shorter pass than the script ran), or any
        duration on a line about evaluation if larger (`total_eval_time`, a pass timed on its own line)."""
        passes = [ms for ms in map(self.pass_ms, self.evals) if ms is not None]
        return max(passes + [ms for ms, _ in self.eval_figures], default=None)

    @property
    def eval_sum_ms(self) -> float:
        """Sum of the eval time of every timed final-eval line."""
        return float(sum(e.eval_ms for e in self.evals if e.eval_ms is not None))


def is_log_file(path: Path) -> bool:
    """A ``*.log`` / ``*.txt`` file that is a log (not requirements.txt)."""
    return path.suffix.lower() in LOG_SUFFIXES and path.name.lower() != "requirements.txt"


def seed_from_name(name: str) -> int | None:
    """Seed from a filename (rulebook §9.1), if encoded there."""
    for rx in SEED_FILE:
        m = rx.search(name)
        if m:
            return int(m.group(1))
    return None


def figure(text: str) -> float:
    """A NUM figure with its digit separators removed."""
    return float(text.replace(",", "").replace("_", ""))


def count(text: str) -> int:
    """An INT figure with its digit separators removed."""
    return int(text.replace(",", "").replace("_", ""))


def unit_ms(unit: str) -> float:
    """Milliseconds per `unit` (ms, msec, milliseconds, s, sec(s), second(s), m, min(s), minute(s), h, hour(s))."""
    u = unit.lower()
    return 1.0 if u.startswith(("ms", "msec", "milli")) else 1000.0 if u.startswith("s") else \
        60_000.0 if u.startswith("m") else 3_600_000.0


# A duration written in parts (`10m 48.0s`, `1h 2m 3s`, `2 min 5 s`): read as one figure, the sum (its parts read
# one by one took the largest, 10 min, for 648 s; and every clock of a run under 11 minutes read the same)
DURATION_PARTS = re.compile(r"(?<![\w.])(?:(?P<h>\d{1,3})\s*h(?:ours?|rs?)?\b[ ,]*)?"
                            r"(?:(?P<m>\d{1,4})\s*m(?:ins?|inutes?)?\b[ ,]*)"
                            r"(?:(?P<s>\d{1,4}(?:\.\d{1,6})?)\s*s(?:ecs?|econds?)?\b)?")


def compound_durations(line: str) -> str:
    """`line` with each duration of two or more parts (h, m, s) written as its total in seconds."""
    def total(m: re.Match) -> str:
        if sum(m[k] is not None for k in "hms") < 2:
            return m[0]
        seconds = int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + float(m["s"] or 0)
        return f"{seconds:.3f}s" + (" " if m[0].endswith((" ", ",")) else "")
    return DURATION_PARTS.sub(total, line)


NODE_KEYS = {"nnodes", "nodes", "num_machines", "num_nodes"}  # must be 1
PER_NODE_KEYS = {"nproc_per_node", "ntasks_per_node", "num_gpus", "gpus_per_node"}  # must be 8
TOTAL_KEYS = {"ntasks", "num_processes", "-np"}  # processes in all: must be 8 (mpirun's -np)


def launch_counts(text: str) -> list[tuple[str, int]]:
    """(key, n) of every launcher count in `text` (LAUNCH), keys with `_` for `-`; short flags as written."""
    return [(m["key"].replace("-", "_") if m["key"] else m["short"], int(m["n"])) for m in LAUNCH.finditer(text)]


def more_than_eight_gpus(launches: list[tuple[str, int]]) -> list[str]:
    """The launcher counts that are not 8 GPUs on one node, as written (`--nnodes=2`)."""
    return [f"{k if k.startswith('-') else '--' + k}={n}" for k, n in launches
            if (k in NODE_KEYS and n != 1) or (k in PER_NODE_KEYS | TOTAL_KEYS and n != 8)]


def _train_time(rec: LogRecord, ms: float, no: int, steps: int) -> None:
    """A record-format time line: the log's training time and steps only grow (see ANY_TRAIN_TIME)."""
    if ms >= (rec.train_time_ms or 0.0):
        rec.train_time_ms, rec.train_time_line = ms, no
    rec.steps = max(rec.steps or 0, steps)


def _largest_train_time(rec: LogRecord, line: str, no: int) -> None:
    """Raise the log's training time and step count to any larger figure on `line` (ANY_TRAIN_TIME in any unit,
    CLOCK_TRAIN_TIME, ANY_STEP); a figure after `train_time` that neither reads is kept as unread (TIME.TRAIN fails a
    record on it). A figure must follow directly, so code echoed in the log (`train_time:{ms:.0f}ms`) never counts."""
    timed = list(ANY_TRAIN_TIME.finditer(line))
    figures = [figure(m["num"]) * unit_ms(m["unit"]) for m in timed]
    figures += [(float(m[1] or 0) * 3600 + float(m[2]) * 60 + float(m[3])) * 1000.0
                for m in CLOCK_TRAIN_TIME.finditer(line)]
    if len(figures) < len(TRAIN_TIME_FIGURE.findall(line)):
        rec.unread_train_time = rec.unread_train_time or (no, line.strip()[:100])
    if m := STEP_LOSS.match(line):
        rec.train_losses[int(m[1])] = float(m[2])
    steps = [int(m[1]) for m in ANY_STEP.finditer(line)]
    if steps and "train" in line:  # a training step line
        step = max(steps)
        rec.steps = max(rec.steps or 0, step)
        precise = [figure(m["num"]) * unit_ms(m["unit"]) for m in timed
                   if unit_ms(m["unit"]) * 10.0 ** -len(m["num"].partition(".")[2]) <= 1.0]
        if precise:  # a clock printed to the millisecond (whole seconds agree between honest seeds)
            rec.step_times[step] = max(precise)
        if m := STEP_VAL_LOSS.search(line):
            rec.val_losses[step] = float(m[1])
        figures += _step_line_times(line, step)
    for ms in figures:
        if ms > (rec.train_time_ms or 0.0):
            rec.train_time_ms, rec.train_time_line = ms, no


def durations(line: str) -> list[float]:
    """Every duration on `line`, in ms: a number with a time unit, or under a key that carries the unit."""
    return [figure(m["num"]) * unit_ms(m["unit"]) for rx in (TIME_FIGURE, UNIT_KEY_FIGURE) for m in rx.finditer(line)]


def _eval_figures(rec: LogRecord, line: str, no: int) -> None:
    """Durations on a line about evaluation (EVAL_WORD) that is no training step line: each bounds the evaluation."""
    if EVAL_WORD.search(line) and not (ANY_STEP.search(line) and "train" in line.lower()):
        rec.eval_figures += [(ms, no) for ms in durations(line)]


def _step_line_times(line: str, step: int) -> list[float]:
    """A training step line's time figures (ms): any figure with a time unit, or under a key that carries one, but
    an average (`elapsed:645.8s`, `(612.0s)`, `train_ms:612047`: the clock at that step), and step x step_avg less
    its printed rounding (`step_avg` is the time so far over the steps so far: a line without a total shows it)."""
    out = [figure(m["num"]) * unit_ms(m["unit"]) for m in UNIT_KEY_FIGURE.finditer(line)  # `train_ms:612047`
           if not re.search(r"avg|per", m[0])]
    for m in TIME_FIGURE.finditer(line):
        key = re.search(r"(\w*)\W*$", line[: m.start()])[1].lower()
        ms = figure(m["num"]) * unit_ms(m["unit"])
        if "avg" not in key and "per" not in key:
            out.append(ms)
        elif key.endswith("step_avg"):
            decimals = len(m["num"].partition(".")[2])
            out.append(step * (ms - 0.5 * 10.0 ** -decimals * unit_ms(m["unit"])))
    return out


def _total(rec: LogRecord, n: int, no: int, kind: str | None = None) -> None:
    """A total-size line: the last one is the log's total (logs print the raw model's size before the quantized
    artifact's); every total of a named artifact (`int6+brotli`, `int8+zlib`) is kept for SIZE.CAP."""
    rec.total_bytes, rec.total_bytes_line = n, no
    if kind is not None:
        rec.total_kind = kind
        rec.artifact_totals.append((kind, n, no))


SOURCE_END = "=" * 100  # the line the baseline family prints after the script it embeds (`log0(code)`)
CODE_START = ('"""', "'''", "import ", "from ", "#")


def embedded_source(text: str) -> str | None:
    """The script a baseline-family log embeds at its top (`log0(code)`, then SOURCE_END), if any."""
    idx = text.find("\n" + SOURCE_END)
    if idx <= 0 or idx > 2_000_000 or not text[:idx].lstrip()[:40].startswith(CODE_START):
        return None
    return text[:idx]


def parse_text(text: str, path: Path | str = "<log>") -> LogRecord:
    """Parse a text log in any of the §9 formats. The script a log embeds at its top is code, not evidence; every
    other line is read, whatever it holds (a printed dict, an indented line: skipping those hid real figures)."""
    rec = LogRecord(path=Path(path), sha256=hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())
    source = embedded_source(text)
    code_lines = len(source.splitlines()) if source is not None else 0
    in_hp = started = False
    for no, raw in enumerate(text.splitlines(), start=1):
        if no <= code_lines:
            continue
        line = compound_durations(TS_PREFIX.sub("", raw.rstrip("\r")))
        started = started or bool(TRAINING_STARTED.match(line))
        if not started and SETUP_LINE.match(line):
            for key, value in SETUP_PAIR.findall(line):
                rec.setup.setdefault(key, value)
        if line.startswith("Hyperparameters"):
            in_hp = True
            continue
        if in_hp:
            m = HP_LINE.match(line)
            if m:
                rec.hparams[m.group(1)] = m.group(2).strip()
                if m.group(1) == "seed" and m.group(2).strip().isdigit() and rec.seed is None:
                    rec.seed = int(m.group(2))
                continue
            in_hp = False
        line = line.strip()
        if m := MB_SUM.match(line):
            rec.total_mb = (float(m[4]), 0.5 * 10.0 ** -len(m[5] or ""), m[6], no)
            continue
        if not line:
            continue
        _largest_train_time(rec, line, no)
        _eval_figures(rec, line, no)
        rec.world_sizes |= {int(n) for n in WORLD_SIZE.findall(line)}
        rec.launch += launch_counts(line)
        try:
            _parse_line(rec, line, no)
        except (ValueError, OverflowError):  # a figure no number type holds: the line reads as no evidence
            continue
    if rec.seed is None:
        rec.seed = seed_from_name(rec.path.name)
    if rec.world_sizes:  # the one a record must not have, where the log shows one
        rec.world_size = min(rec.world_sizes - {8}, default=8)
    return rec


def _parse_line(rec: LogRecord, line: str, no: int) -> None:
    m = E3.match(line)
    if m:
        rec.evals.append(EvalLine("ttt_sliding:done", float(m["loss"]), float(m["bpb"]), float(m["s"]) * 1000, no,
                                  line))
        return
    m = E2.match(line) or (None if line.startswith("step:") else E1.match(line))
    if m and not EXCLUDED.match(m["label"]):
        keyed = [figure(t["num"]) * unit_ms(t["unit"]) for t in V1.finditer(m["rest"])]
        if len(keyed) < len(V1_FIGURE.findall(m["rest"])):
            rec.unread_eval_time = rec.unread_eval_time or (no, line.strip()[:100])
        times = keyed + durations(m["rest"])
        ms = max(times, default=None)  # the largest: a decoy `load time:2.1s` before `eval_time:708525ms` must not win
        try:
            rec.evals.append(EvalLine(m["label"].strip(), float(m["loss"]), float(m["bpb"]), ms, no, line))
        except ValueError:
            pass
        return
    if m := T2.match(line):
        _train_time(rec, float(m[1]), no, int(m[2]))
    elif m := T1.match(line):
        _train_time(rec, float(m[3]), no, int(m[1]))
        if m[4]:
            rec.step_avg_ms = float(m[4])
    elif m := T3.match(line):
        _train_time(rec, float(m[3]) * 60000, no, int(m[1]))
    elif m := S1.match(line):
        _total(rec, count(m["n"]), no, m["kind"])
    elif m := S2.match(line):
        if m["kind"]:
            rec.model_bytes = count(m["n"])
    elif m := S3.match(line):
        if m["kind"] == "uncompressed":
            rec.code_bytes_uncompressed = count(m["n"])
            if rec.code_kind != "compressed":
                rec.code_bytes, rec.code_kind = count(m["n"]), "uncompressed"
        else:
            rec.code_bytes, rec.code_kind = count(m["n"]), m["kind"] or "raw"
    elif m := S4A.match(line):
        _total(rec, count(m[1]), no)
    elif m := S4B.match(line):
        rec.code_bytes, rec.code_kind = count(m[1]), "raw"
    elif m := S5A.match(line):
        rec.model_bytes = count(m[1])
        _total(rec, count(m[2]), no)
    elif m := S5B.match(line):
        rec.code_bytes, rec.code_kind = count(m[1]), "raw"
    elif m := S6.match(line):
        _total(rec, count(m[1]), no)
    elif SIZE_FIGURE.match(line):
        rec.unread_size = rec.unread_size or (no, line.strip()[:100])
    elif m := G1.match(line):
        rec.gptq_reserve_s = float(m[1]) / (1000.0 if m[2] == "ms" else 1.0)
    elif m := GAR.match(line):
        rec.ar_calib_s = max(rec.ar_calib_s or 0.0, float(m[1]))
    elif GAR_MARK.search(line):
        rec.ar_calib_s = rec.ar_calib_s or 0.0
    elif m := GDONE.match(line):
        if rec.ar_calib_s is not None:
            rec.ar_calib_s = max(rec.ar_calib_s, float(m[1]))
        elif rec.hessian_s is None:
            rec.hessian_s = float(m[1])
    elif m := GWALL.match(line):
        rec.post_gptq_elapsed_s, rec.train_budget_s = float(m[1]), float(m[2])
    elif CALIB_WORD.search(line) and (ms := durations(line)):
        rec.hessian_s = max(rec.hessian_s or 0.0, max(ms) / 1000.0)
    elif m := V3.match(line):
        rec.warmup_s = float(m[1])
    elif PREQ.match(line):
        rec.prequant_lines.append(no)
    elif PH_TTT.match(line) and (ms := durations(line)):
        rec.phases.append(("ttt", max(ms) / 1000.0, no))
    elif TTT_PROGRESS.match(line) and (ms := durations(line)):
        rec.ttt_progress.append((max(ms), no))
    elif m := PH_PRE.match(line):
        rec.phases.append(("precompute", float(m[1]), no))
    elif m := PH_DESER.match(line):
        rec.phases.append(("deserialize", float(m[1]), no))
    elif m := MB_TOTAL.match(line):
        decimals = len(m[2] or "")
        rec.total_mb = (float(m[1]), 0.5 * 10.0 ** -decimals, m[3], no)
    elif m := G3.match(line):
        rec.serialize_s.append(float(m[1]))
    elif m := D1A.match(line):
        rec.val_tokens = count(m[1])
    elif m := D1B.match(line):
        rec.val_tokens = count(m[2])
    elif m := D1C.match(line):
        rec.val_tokens = count(m[1])
    elif m := D2A.match(line):
        rec.train_shards = int(m[1])
    elif m := D2B.match(line):
        rec.train_shards = int(m[2])
    elif D3.match(line):
        rec.sidecar = True
    elif m := SEED_LINE.match(line):
        rec.seed = int(m[1])


def parse_events(text: str, path: Path | str = "events.jsonl", seed: int | None = None) -> LogRecord:
    """Parse pgolf's events.jsonl exactly (one JSON object per line with an ``event`` key)."""
    rec = LogRecord(path=Path(path), fmt="events", seed=seed,
                    sha256=hashlib.sha256(text.encode()).hexdigest())
    for no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            ev: dict[str, Any] = parse_json(raw)
        except JSON_ERRORS as exc:
            raise ValueError(f"{path}:{no}: not a JSON object: {exc}") from None
        kind = ev.get("event")
        if kind == "start":
            if "world_size" in ev:
                rec.world_size = int(ev["world_size"])
            if "seed" in ev and rec.seed is None:
                rec.seed = int(ev["seed"])
        elif kind == "step":
            rec.train_time_ms, rec.train_time_line, rec.steps = float(ev["train_time_ms"]), no, int(ev["step"])
        elif kind == "train_end":
            rec.train_time_ms, rec.train_time_line, rec.steps = float(ev["train_time_ms"]), no, int(ev["steps"])
            if rec.steps:
                rec.step_avg_ms = rec.train_time_ms / rec.steps
        elif kind == "calibration" and "train_time_ms" in ev:  # the loop's time + calibration: the training budget
            rec.train_time_ms, rec.train_time_line = float(ev["train_time_ms"]), no
        elif kind == "size":
            rec.code_bytes, rec.code_kind = int(ev["code_bytes"]), "raw"
            rec.model_bytes = int(ev["model_bytes"])
            total = ev.get("total_bytes", ev.get("total"))  # pgolf writes "total"; "total_bytes" accepted too
            rec.total_bytes = int(total) if total is not None else rec.model_bytes + rec.code_bytes
            rec.total_bytes_line, rec.total_kind, rec.cap = no, ev.get("label"), ev.get("cap")
        elif kind == "final_eval":
            rec.evals.append(EvalLine(f"final_eval:{ev.get('evaluator', '')}", float(ev["val_loss"]),
                                      float(ev["val_bpb"]), float(ev["eval_time_ms"]), no))
    return rec


def parse_file(path: Path) -> LogRecord:
    """Parse a log file, choosing the events parser for ``*.jsonl``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        return parse_events(text, path)
    return parse_text(text, path)


def find_logs(folder: Path) -> list[Path]:
    """Every log file under ``folder`` (subfolders included), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_log_file(p))


def parse_folder(folder: Path) -> list[LogRecord]:
    """Parse every log in a records folder, dropping byte-identical duplicates."""
    seen: set[str] = set()
    out: list[LogRecord] = []
    for p in find_logs(folder):
        rec = parse_file(p)
        if rec.sha256 in seen:
            continue
        seen.add(rec.sha256)
        out.append(rec)
    return out


def scoring_logs(records: list[LogRecord]) -> list[LogRecord]:
    """Logs that carry a final score, de-duplicated by (seed, score) (train.log often copies a seed log)."""
    out: list[LogRecord] = []
    keys: set[tuple[int | None, float, str]] = set()
    for r in records:
        fin = r.final()
        if fin is None:
            continue
        # a copy has the same seed, score and configuration; a re-run with another configuration is not a copy
        key = (r.seed, round(fin.val_bpb, 6), repr(sorted(r.hparams.items())) if r.hparams else "")
        if key in keys or (r.seed is None and any(k[1] == key[1] for k in keys)):
            continue
        keys.add(key)
        out.append(r)
    return out
