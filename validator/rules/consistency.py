"""JSON.CONSISTENCY: the claimed score in submission.json agrees with the logs."""

from __future__ import annotations

import re
from statistics import mean
from typing import Any

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule, close_to_claim
from validator.untrusted_json import run_dir_metrics

SEED_TOL = 5e-4
# How far a claim may sit below the logs' mean: the half-unit of a 4-decimal claim (1.08104 -> 1.0810). A claim of
# 1.08 for a mean of 1.0849 reads 0.0049 better than the runs: more than twice a record's margin.
ROUNDED_DOWN = 6e-5


def claimed_bpb(sub: dict[str, Any] | None) -> tuple[str, float] | None:
    """(field, value) of the headline score claim."""
    if not sub:
        return None
    for key in ("val_bpb", "mean_val_bpb"):
        if isinstance(sub.get(key), (int, float)):
            return key, float(sub[key])
    return None


def seed_results(sub: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-seed results from ``seed_results`` or the dict form of ``seeds``."""
    if not sub:
        return {}
    for key in ("seed_results", "seeds"):
        val = sub.get(key)
        if isinstance(val, dict):
            return {str(k): v for k, v in val.items() if isinstance(v, dict)}
    return {}




def log_family(path) -> str:
    """A log's family: its file name with the seed and the word 'seed' removed (train_seed42_rerun.log ->
    train_rerun; train_s1337.txt -> train), so seeds of one series share a family and re-runs do not."""
    import re

    stem = re.sub(r"(?i)(?:(?:seed|(?<=[_-])s)[_-]?|(?<=[_-])|(?<=train))\d{1,6}(?=$|[_.-])", "", path.stem)
    return re.sub(r"[_-]+", "_", stem).strip("_") or "-"


def log_groups(finals: list) -> dict[str, list]:
    """(log, final line) pairs grouped by sub-folder and by file-name family."""
    groups: dict[str, list] = {}
    for lg, fin in finals:
        groups.setdefault(f"{lg.path.parent.name}/", []).append((lg, fin))
        groups.setdefault(f"*{log_family(lg.path)}", []).append((lg, fin))
    return groups


def _matching_group(finals: list, claim: float) -> tuple[str, list[float]] | None:
    """The sub-folder (or file-name family) whose logs' mean reproduces the claim, and their scores."""
    for name, members in log_groups(finals).items():
        vals = [fin.val_bpb for _, fin in members]
        if 1 < len(vals) < len(finals) and close_to_claim(mean(vals), claim):
            return name.rstrip("/"), vals
    return None


def check_consistency(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    method = ctx.method
    finals = [(lg, lg.final(method)) for lg in ctx.scoring]
    finals = [(lg, f) for lg, f in finals if f is not None]
    if ctx.is_run_dir:
        if not finals:
            where = ctx.logs[0].path.name if ctx.logs else "events.jsonl"
            return [r.finding(FAIL, f"{where} has no final score", file=where)]

        try:
            metrics = run_dir_metrics(ctx.root, required=("val_bpb",))
        except ValueError as exc:
            return [r.finding(FAIL, str(exc).replace(str(ctx.root) + "/", ""), file="metrics.json")]
        fin = finals[-1][1]
        mb = metrics["val_bpb"]
        tol = 1e-9 if finals[-1][0].fmt == "events" else 5.1e-9  # a log line: its 8 printed decimals
        if abs(mb - fin.val_bpb) > tol:
            return [r.finding(FAIL, "metrics.json val_bpb differs from the final_eval event", file="metrics.json",
                              field="val_bpb", expected=fin.val_bpb, found=mb)]
        if bad := run_disagreements(ctx, metrics):
            return [r.finding(FAIL, msg, file=where, line=line, field=fact, expected=want, found=got)
                    for where, line, fact, want, got, msg in bad[:8]]
        return [r.finding(PASS, f"final_eval val_bpb {fin.val_bpb:.6f} agrees with metrics.json, and "
                          f"{' and '.join(lg.path.name for lg in ctx.run_records if lg.fmt != 'metrics')} agree with "
                          "metrics.json on the score, train time, steps, eval time and sizes",
                          file=finals[-1][0].path.name)]
    claim = claimed_bpb(ctx.submission)
    if claim is None:
        return [r.finding(SKIP, "no val_bpb claim to compare")]
    key, value = claim
    f = ctx.rel(ctx.submission_path) if ctx.submission_path else None
    if not finals:
        return [r.finding(FAIL, "no log carries a final score to support the claim", file=f, field=key,
                          expected=value)]
    vals = [fin.val_bpb for _, fin in finals]
    m = mean(vals)
    out: list[Finding] = []
    if close_to_claim(m, value) and value < m - ROUNDED_DOWN:
        out.append(r.finding(FAIL, f"{key} {value} rounds the logs' mean {m:.6f} down by {m - value:.5f}: a claim may "
                             f"round to its own precision only upward beyond {ROUNDED_DOWN:g} (a coarse number must "
                             "not read as a better score)", file=f, field=key, expected=f">= {m - ROUNDED_DOWN:.6f}",
                             found=value))
    elif close_to_claim(m, value):
        lab = f" (scoring line {method})" if method else ""
        out.append(r.finding(PASS, f"{key} {value} = mean of {len(vals)} scored log(s) ({m:.6f}){lab}", file=f,
                             field=key))
    elif group := _matching_group(finals, value):
        name, chosen = group
        others = sorted(vals)[len(chosen):] if sorted(vals)[: len(chosen)] == sorted(chosen) else []
        if others and min(others) > max(chosen):  # the claim's runs are exactly the best ones
            out.append(r.finding(WARN, f"{key} {value} averages the best {len(chosen)} of {len(vals)} scored runs "
                                 f"(those in {name}/; the others score {min(others):.5f}+): reported runs must not be "
                                 "selected on outcome (PR #1769)", severity=WARN, file=f, field=key))
        else:
            out.append(r.finding(PASS, f"{key} {value} = mean of the {len(chosen)} scored log(s) in {name}/ "
                                 f"(other logs in the folder are disclosed extra runs)", file=f, field=key))
    elif any(close_to_claim(v, value) for v in vals):
        which = [str(lg.path.name) for lg, fin in finals if close_to_claim(fin.val_bpb, value)]
        best = min(vals)
        kind = "the best seed" if close_to_claim(best, value) and len(vals) > 1 else "one log"
        out.append(r.finding(WARN, f"{key} equals {kind} ({', '.join(which)}), not the mean {m:.6f} of "
                             f"{len(vals)} logs", severity=WARN, file=f, field=key, expected=round(m, 6), found=value))
    elif any_line := next(((lg, e) for lg in ctx.logs for e in lg.evals if close_to_claim(e.val_bpb, value)), None):
        lg, e = any_line
        printable = _printable(ctx, e.text)
        out.append(r.finding(WARN if printable else FAIL, f"{key} {value} matches only the '{e.label}' line of "
                             f"{ctx.rel(lg.path)}, not the scoring line of the logs (mean {m:.6f})"
                             + ("" if printable else ", and no statement of the shipped code prints that line"),
                             severity=WARN if printable else ERROR, file=f, field=key, expected=round(m, 6),
                             found=value))
    else:
        out.append(r.finding(FAIL, f"{key} {value} is not supported by any log (mean {m:.6f}, values "
                             f"{', '.join(f'{v:.5f}' for v in vals)})", file=f, field=key, expected=round(m, 6),
                             found=value))
    out += _seed_claims(r, ctx, finals, f)
    out += _unprintable(r, ctx, finals)
    vl = (ctx.submission or {}).get("val_loss")
    if isinstance(vl, (int, float)) and key == "val_bpb" and vl < 1.3 * value and abs(vl - value) < 0.2:
        out.append(r.finding(WARN, "val_loss looks like a bpb value (loss/bpb ratio ~1)", severity=INFO, file=f,
                             field="val_loss", found=vl))
    return out


FIGURE = r"[-+]?\d[\d,_]*(?:\.(\d+))?(?:[eE][-+]?\d+)?"


def _printed_half_unit(text: str, key: str) -> float | None:
    """Half a unit of the last digit `key`'s figure is printed with on a log line (`val_bpb:0.9012` -> 5e-5), or
    None where the line prints no such figure."""
    m = re.search(rf"\b{key}\s*[:=]\s*{FIGURE}", text)
    if not m:
        return None
    return 0.5 * 10.0 ** -len(m.group(1) or "")


def run_disagreements(ctx: FolderContext, metrics: dict[str, Any]) -> list[tuple]:
    """Where a run directory's records disagree (`FolderContext.run_records`: events.jsonl, train.log, each
    against metrics.json, the run's summary): (file, line, fact, metrics' value, the record's value, message) per
    disagreement. Compared: the final score (val_bpb, val_loss) and eval time of every final line, the training
    time (train.log prints the loop's; events.jsonl and metrics.json the loop's plus calibration), the step count,
    and the model, code and total bytes. A figure printed in a log is compared at its printed precision (times to
    the half millisecond, or 1e-4 of their value where they are printed coarser); events.jsonl and metrics.json are
    the same floats. Every record of one run states the same facts: a disagreement means a file was edited."""
    out: list[tuple] = []
    num = lambda k: metrics[k] if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool) \
        else None
    loop_ms = num("loop_train_time_ms")
    if loop_ms is None and num("train_time_ms") is not None:
        loop_ms = num("train_time_ms") - (num("calibration_ms") or 0.0)  # type: ignore[operator]

    def differ(a: float, b: float, tol: float) -> bool:
        return abs(a - b) > tol + 1e-9 * max(abs(a), abs(b))

    for lg in ctx.run_records:
        if lg.fmt == "metrics":
            continue
        text = lg.fmt != "events"
        name = ctx.rel(lg.path)
        for e in lg.evals:
            for fact, got in (("val_bpb", e.val_bpb), ("val_loss", e.val_loss)):
                want = num(fact)
                half = _printed_half_unit(e.text, fact) if text else 0.0
                if want is not None and differ(got, want, 5e-9 if half is None else half):
                    out.append((name, e.line, fact, want, got, f"{name} line {e.line} ({e.label}) prints {fact} {got} "
                                f"but metrics.json says {want}: the records of one run disagree on its score"))
            want = num("eval_time_ms")
            if e.eval_ms is not None and want is not None and differ(e.eval_ms, want, max(0.5, 1e-4 * want)
                                                                     if text else 1e-6):
                out.append((name, e.line, "eval_time_ms", want, e.eval_ms, f"{name} line {e.line} times the "
                            f"evaluation at {e.eval_ms:,.0f} ms but metrics.json says {want:,.0f} ms"))
        want = loop_ms if text else num("train_time_ms")
        if lg.train_time_ms is not None and want is not None and differ(lg.train_time_ms, want,
                                                                         max(0.5, 1e-4 * want) if text else 1e-6):
            out.append((name, lg.train_time_line, "train_time_ms", want, lg.train_time_ms, f"{name} shows training "
                        f"time {lg.train_time_ms:,.0f} ms but metrics.json says {want:,.0f} ms: the records of one "
                        "run disagree on its training time"))
        for fact, got in (("steps", lg.steps), ("model_bytes", lg.model_bytes), ("code_bytes", lg.code_bytes),
                          ("total_bytes", lg.total_bytes)):
            want = num(fact)
            if got is not None and want is not None and got != want:
                out.append((name, None, fact, want, got, f"{name} shows {fact} {got:,} but metrics.json says "
                            f"{want:,}: the records of one run disagree"))
    return out


def _seed_claims(r: Rule, ctx: FolderContext, finals: list, f: str | None) -> list[Finding]:
    """Each seed submission.json names (`seeds`, `seed_results`) has a log, and its per-seed figures are that log's:
    val_bpb (any final line, SEED_TOL), val_loss (SEED_TOL) and every size it states (`_seed_figures`)."""
    out: list[Finding] = []
    logs = {lg.seed: (lg, fin) for lg, fin in finals if lg.seed is not None}
    results = seed_results(ctx.submission)
    listed = (ctx.submission or {}).get("seeds")
    claimed = set(results) | {str(s) for s in (listed if isinstance(listed, list) else []) if isinstance(s, int)}
    for seed in sorted(claimed):
        if not seed.isdigit() or int(seed) not in logs:
            if logs:  # logs that name their seeds, none of them this one
                out.append(r.finding(FAIL, f"seed {seed} is claimed but no scored log reports it (logged seeds: "
                                     f"{', '.join(map(str, sorted(logs)))})", file=f, field="seeds",
                                     expected=sorted(logs), found=seed))
            continue
        lg, fin = logs[int(seed)]
        res = results.get(seed, {})
        v, loss = res.get("val_bpb"), res.get("val_loss")
        if _number(v) and abs(v - fin.val_bpb) > SEED_TOL and all(abs(v - e.val_bpb) > SEED_TOL for e in lg.evals):
            out.append(r.finding(FAIL, f"seed {seed}: claimed val_bpb differs from its log by "
                                 f"{abs(v - fin.val_bpb):.5f}", file=f, field=f"seed_results.{seed}.val_bpb",
                                 expected=fin.val_bpb, found=v))
        if _number(loss) and all(abs(loss - e.val_loss) > SEED_TOL for e in lg.evals):
            out.append(r.finding(FAIL, f"seed {seed}: claimed val_loss {loss} is on no final line of its log "
                                 f"({ctx.rel(lg.path)})", file=f, field=f"seed_results.{seed}.val_loss",
                                 expected=fin.val_loss, found=loss))
        out += _seed_figures(r, seed, res, [x for x in ctx.logs if x.seed == int(seed)] or [lg], f)
    return out


def _size_kind(key: str) -> str | None:
    """What a per-seed key states the size of, whatever its spelling (`artifact_bytes`, `bytes_total`,
    `artifact_size_bytes`, `model_bytes`, `bytes_code`): 'total', 'model', 'code', or None (no size)."""
    import re

    words = set(re.split(r"[^a-z]+", key.lower()))
    if not words & {"bytes", "size", "byte"} or words & {"per", "mb", "mib", "tokens", "token", "val", "bpb"}:
        return None
    if words & {"code", "script"}:
        return "code"
    if words & {"model", "weights", "quant", "compressed", "int6", "int8", "ptz"} and not words & {"total",
                                                                                                   "artifact"}:
        return "model"
    return "total"


def _seed_figures(r: Rule, seed: str, res: dict[str, Any], logs: list, f: str | None) -> list[Finding]:
    """Every size a per-seed entry states is one a log of that seed prints (exactly; a seed's original run and its
    re-run are both its logs): a total is any total the log prints (the last, or any named artifact's), a model size
    the log's model bytes, a code size its code bytes (either form). A kind of size no log prints is not compared."""
    out = []
    logged: dict[str, set[int]] = {"total": set(), "model": set(), "code": set()}
    for lg in logs:
        logged["total"] |= {n for n in [lg.total_bytes] + [t[1] for t in lg.artifact_totals] if n is not None}
        logged["model"] |= {n for n in [lg.model_bytes] if n is not None}
        logged["code"] |= {n for n in [lg.code_bytes, lg.code_bytes_uncompressed] if n is not None}
    lg = logs[0]
    for key, value in res.items():
        kind = _size_kind(str(key))
        if kind is None or not _number(value) or not logged[kind] or value in logged[kind]:
            continue
        shown = ", ".join(f"{n:,}" for n in sorted(logged[kind]))
        out.append(r.finding(FAIL, f"seed {seed}: claimed {key} {value:,} but its log ({lg.path.name}) prints "
                             f"{'a total of' if kind == 'total' else kind + ' bytes'} {shown}", file=f,
                             field=f"seed_results.{seed}.{key}", expected=sorted(logged[kind]), found=value))
    return out


def _printable(ctx: FolderContext, text: str) -> bool:
    """Whether the shipped code can print the score line `text`: some f-string, literal or `+` chain of it matches
    the whole line (text around a real template is no line the code wrote); True where the code cannot be read or
    prints no score line (nothing to conclude)."""
    from validator.rules.code import code_units, print_templates

    templates = ctx.__dict__.get("_score_templates")
    if templates is None:
        templates = ctx.__dict__["_score_templates"] = print_templates(code_units(ctx), ("val_loss", "val_bpb")) or []
    return ctx.is_run_dir or not templates or not text or any(t.fullmatch(text) for t in templates)


def _unprintable(r: Rule, ctx: FolderContext, finals: list) -> list[Finding]:
    """A scoring line the shipped code cannot print is no evidence: a line added to a log (a subset's score, a
    probe's) must not become the claim."""
    from validator.rules.stats import claim_logs

    record, backing = ctx.track == "record", {id(lg) for lg in claim_logs(ctx)}
    return [r.finding(FAIL if record else WARN, f"line {fin.line} ({fin.text[:60]!r}) is printed by no statement of "
                      "the shipped code: a score the code cannot write backs no claim", severity=ERROR if record
                      else INFO, file=ctx.rel(lg.path), line=fin.line)
            for lg, fin in finals if id(lg) in backing and not _printable(ctx, fin.text)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


RULES = [
    Rule("JSON.CONSISTENCY", "submission.json agrees with the logs (score = mean of seed logs)",
         "rulebook §9.4; README 'A train log, automatically produced by your script'", ERROR, check_consistency,
         lower="claim = best seed / one log / a non-scoring line of the logs: WARN (merged practice)"),
]
