"""Time-budget rules: TIME.TRAIN, TIME.TRAIN_POSTLOOP, TIME.EVAL, TIME.EVAL_SCOPE."""

from __future__ import annotations

import re

from validator.rules.base import (
    ERROR,
    EVAL_CAP_MS,
    FAIL,
    INFO,
    PASS,
    SKIP,
    TRAIN_CAP_MS,
    WARN,
    Finding,
    FolderContext,
    Rule,
)

OVERRIDES = re.compile(r"FORCE_STOP_STEP=\d+|MAX_WALLCLOCK_SECONDS=0\b")
GRANULARITY_MS = 1_000.0


def _gate(ctx: FolderContext, severity: str) -> str:
    """Record-track gates keep their severity; non-record runs are reported as INFO."""
    return INFO if ctx.track == "non-record" else severity


def _status(ctx: FolderContext) -> str:
    """Over-budget status: fail on the record track, warn (INFO) on the non-record track."""
    return WARN if ctx.track == "non-record" else FAIL


def _no_evidence(ctx: FolderContext, r: Rule, what: str) -> Finding:
    """A budget a record's logs do not show: a FAIL on the record track (a record proves it fits; logs cut down to a
    score line passed every budget rule by skipping), a SKIP elsewhere."""
    if ctx.track == "record" and not ctx.is_run_dir:
        return r.finding(FAIL, f"{what}: a record's logs must show it")
    return r.finding(SKIP, what)


def check_train(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    out: list[Finding] = []
    for lg in ctx.budget_logs:  # a run directory: each of its records, so the worst figure counts
        if lg.unread_train_time is not None:  # a figure after train_time no pattern reads: it may be the largest
            no, text = lg.unread_train_time
            out.append(r.finding(_status(ctx), f"a train_time figure the validator cannot read: {text!r} (log "
                                 "training time in ms, s or min)", severity=_gate(ctx, ERROR), file=ctx.rel(lg.path),
                                 line=no))
        if lg.train_time_ms is None:
            if (lg.steps or lg.train_losses) and ctx.track == "record" and not ctx.is_run_dir:
                out.append(r.finding(FAIL, "the log shows training steps but no training time the validator can read "
                                     "(log `train_time:<ms>ms`)", file=ctx.rel(lg.path)))
            continue
        f = ctx.rel(lg.path)
        measured = lg.train_time_ms / lg.steps if lg.steps else None  # a logged step_avg is a claim, not a measure
        step = min((x for x in (lg.step_avg_ms, measured) if x is not None), default=0.0)
        over = lg.train_time_ms - TRAIN_CAP_MS
        if over <= step or over <= 0:
            out.append(r.finding(PASS, f"train_time {lg.train_time_ms / 1000:.1f}s <= 600s + 1 step "
                                 f"({step:.0f} ms)", file=f, line=lg.train_time_line))
        elif over <= max(2 * step, GRANULARITY_MS):
            out.append(r.finding(WARN, f"train_time {lg.train_time_ms:,.0f} ms: {over:.0f} ms over 600 s, more than "
                                 f"one average step ({step:.0f} ms) but within timer granularity (the last step and "
                                 "the stop check; merged March records log 600,008-600,137 ms)", severity=WARN,
                                 file=f, line=lg.train_time_line, expected=f"<= {TRAIN_CAP_MS + step:.0f}",
                                 found=lg.train_time_ms))
        else:
            tag = " [non-record]" if ctx.track == "non-record" else ""
            out.append(r.finding(_status(ctx), f"train_time {lg.train_time_ms:,.0f} ms exceeds 600,000 ms by more "
                                 f"than one step ({step:.0f} ms){tag}",
                                 severity=_gate(ctx, ERROR), file=f, line=lg.train_time_line,
                                 expected=f"<= {TRAIN_CAP_MS + step:.0f}", found=lg.train_time_ms))
        if lg.world_size is not None and lg.world_size != 8 and ctx.track == "record":
            out.append(r.finding(WARN, f"world_size:{lg.world_size} (record track expects 8xH100 SXM)",
                                 severity=WARN, file=f, expected=8, found=lg.world_size))
    out += _untrained_claims(ctx, r)
    out += _scaled_clocks(ctx, r)
    m = OVERRIDES.search(ctx.readme)
    if m:
        out.append(r.finding(WARN, f"README run command overrides the wallclock cap: {m.group(0)}", severity=WARN,
                             file="README.md", found=m.group(0)))
    if not out:
        return [_no_evidence(ctx, r, "no training time in any log")]
    bad = [x for x in out if x.status != PASS]
    return bad or [r.finding(PASS, f"{len(out)} log(s) within 600 s (+1 step); max "
                             f"{max(lg.train_time_ms or 0 for lg in ctx.budget_logs) / 1000:.1f}s")]


def _scaled_clocks(ctx: FolderContext, r: Rule) -> list[Finding]:
    """The script's own clock arithmetic is plain unit conversion (`validator.rules.clocks`): a clock scaled by
    0.8 or shifted by a constant under-reports every logged training time and the script's own cap check alike,
    so no log figure can show it. Run directories run pgolf's own code: not scanned."""
    if ctx.is_run_dir:
        return []
    from validator.rules.clocks import clock_problems
    from validator.rules.code import code_units

    return [r.finding(_status(ctx), f"{what}: `{src[:100]}` — the training clock must be a clock reading converted "
                      "between units (ms/s/min), nothing more, or every logged train_time and the cap check "
                      "under-report", severity=_gate(ctx, ERROR), file=u.name, line=no)
            for u in code_units(ctx) for no, what, src in clock_problems(u)]


def _untrained_claims(ctx: FolderContext, r: Rule) -> list[Finding]:
    """On the record track, a log that backs the claim and shows no training run must have one of its seed beside
    it (an eval-only re-run of a trained artifact, TTT_EVAL_ONLY); a score with no training behind it is no run."""
    if ctx.track != "record" or ctx.is_run_dir:
        return []
    from validator.rules.stats import claim_logs

    trained = {lg.seed for lg in ctx.logs if lg.train_time_ms is not None and lg.seed is not None}
    return [r.finding(FAIL, f"a log backing the claim shows no training run, and no log of its seed ({lg.seed}) does",
                      file=ctx.rel(lg.path)) for lg in claim_logs(ctx)
            if lg.train_time_ms is None and lg.seed not in trained]


def check_postloop(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    out: list[Finding] = []
    for lg in ctx.logs:
        if lg.train_time_ms is not None and lg.ar_calib_s:
            end = lg.train_time_ms + 1000.0 * lg.ar_calib_s
            if end > TRAIN_CAP_MS + GRANULARITY_MS:
                out.append(r.finding(WARN, f"train {lg.train_time_ms / 1000:.1f}s + calibration on self-generated "
                                     f"sequences {lg.ar_calib_s}s = {end / 1000:.1f}s > 600s: no training data is read "
                                     "after the loop (AR self-gen, merged in PR #1019 at valerio-oai's request)",
                                     severity=_gate(ctx, WARN), file=ctx.rel(lg.path), found=round(end)))
        if lg.post_gptq_elapsed_s is not None and lg.train_budget_s and not lg.ar_calib_s and (
                lg.post_gptq_elapsed_s > lg.train_budget_s + GRANULARITY_MS / 1000):
            out.append(r.finding(_status(ctx), f"wallclock:post_gptq total_elapsed {lg.post_gptq_elapsed_s}s > "
                                 f"train_budget {lg.train_budget_s}s: calibration ended outside the training budget",
                                 severity=_gate(ctx, ERROR), file=ctx.rel(lg.path),
                                 expected=f"<= {lg.train_budget_s}", found=lg.post_gptq_elapsed_s))
        if lg.hessian_s is None or lg.train_time_ms is None:
            continue
        f = ctx.rel(lg.path)
        end = lg.train_time_ms + 1000.0 * lg.hessian_s
        extra = (f"; gptq reserve {lg.gptq_reserve_s}s" if lg.gptq_reserve_s is not None else "") + (
            f"; serialization {', '.join(f'{s}s' for s in lg.serialize_s)} (INFO, tolerated)" if lg.serialize_s else "")
        msg = f"train {lg.train_time_ms / 1000:.1f}s + Hessians {lg.hessian_s}s = {end / 1000:.1f}s{extra}"
        if end <= TRAIN_CAP_MS:
            out.append(r.finding(PASS, msg, file=f))
        elif end <= TRAIN_CAP_MS + GRANULARITY_MS:
            out.append(r.finding(WARN, msg + " > 600s by under 1 s (timer granularity)",
                                 severity=_gate(ctx, WARN), file=f, expected="<= 600000", found=round(end)))
        else:
            out.append(r.finding(_status(ctx), msg + " > 600s: calibration on training data belongs to the 600 s "
                                 "training budget (valerio-oai, PR #631)", severity=_gate(ctx, ERROR), file=f,
                                 expected="<= 600000", found=round(end)))
    if not out:
        return [r.finding(SKIP, "no post-loop calibration logged")]
    bad = [x for x in out if x.status != PASS]
    return bad or [r.finding(PASS, f"{len(out)} log(s): training + Hessian collection <= 600 s")]


def check_eval(ctx: FolderContext) -> list[Finding]:
    r = RULES[2]
    out: list[Finding] = []
    record = ctx.track == "record" and not ctx.is_run_dir
    # every log with a score, a re-run that `scoring_logs` drops as a copy of its seed's score too: each is a run
    # of the submitted evaluation, and each must fit
    for lg in [lg for lg in ctx.budget_logs if lg.final() is not None]:
        ms = lg.scoring_eval_ms(ctx.method)
        f = ctx.rel(lg.path)
        if lg.unread_eval_time is not None:  # a time figure no pattern reads may be the scoring pass's
            no, text = lg.unread_eval_time
            out.append(r.finding(_status(ctx), f"an eval time the validator cannot read: {text!r} (log eval_time in "
                                 "ms or s)", severity=_gate(ctx, ERROR), file=f, line=no))
        if ms is None:
            if record and any(x.eval_ms is not None for other in ctx.scoring for x in other.evals):
                out.append(r.finding(FAIL, "a scoring log without an eval time beside logs that show one", file=f))
            continue
        fin = lg.final(ctx.method)
        label = fin.label if fin else "?"
        if ms <= EVAL_CAP_MS:
            out.append(r.finding(PASS, f"{label}: {ms / 1000:.1f}s", file=f))
        else:
            out.append(r.finding(_status(ctx), f"the longest evaluation pass took {ms / 1000:.1f}s > 600s "
                                 f"(score: {label})",
                                 severity=_gate(ctx, ERROR), file=f, line=fin.line if fin else None,
                                 expected="<= 600000", found=ms))
    if not out:
        return [_no_evidence(ctx, r, "no eval time on any scoring line")]
    bad = [x for x in out if x.status != PASS]
    return bad or [r.finding(PASS, f"{len(out)} scoring pass(es) <= 600 s (max "
                             f"{max(lg.scoring_eval_ms(ctx.method) or 0 for lg in ctx.budget_logs) / 1000:.1f}s)")]


def check_eval_scope(ctx: FolderContext) -> list[Finding]:
    r = RULES[3]
    out: list[Finding] = []
    for lg in ctx.scoring:
        total = lg.eval_sum_ms + (lg.warmup_s or 0.0) * 1000 + 1000.0 * sum(s for _, s, _ in lg.phases)
        if total > EVAL_CAP_MS:
            scored = (lg.scoring_eval_ms(ctx.method) or 0) / 1000
            out.append(r.finding(WARN, f"sum of eval lines{' + compile warmup' if lg.warmup_s else ''}"
                                 f"{' + phases (' + ', '.join(n for n, _, _ in lg.phases) + ')' if lg.phases else ''} "
                                 f"{total / 1000:.1f}s > 600s (scoring pass {scored:.1f}s)",
                                 file=ctx.rel(lg.path), found=round(total)))
    return out or [r.finding(PASS, "sum of eval-phase lines <= 600 s in every log")]


RULES = [
    Rule("TIME.TRAIN", "training <= 600 s on 8xH100 SXM (<= 1 step over)",
         "README intro + Submission Process criterion 3; baseline MAX_WALLCLOCK_SECONDS", ERROR, check_train,
         lower="over by more than one average step but under max(2 steps, 1 s): WARN (timer granularity); a README "
               "run command that overrides the cap: WARN; non-record folders: INFO"),
    Rule("TIME.TRAIN_POSTLOOP", "post-loop calibration reading training data (GPTQ Hessians) is inside the 600 s",
         "valerio-oai on PR #631; Issue #677; PR #1868/#1950 compliance re-runs", ERROR, check_postloop,
         lower="under 1 s over: WARN (timer granularity); serialization time: reported only; non-record: INFO"),
    Rule("TIME.EVAL", "evaluation (scoring pass) <= 600 s, in addition to training",
         "README FAQ 'What are the restrictions on evaluation?'", ERROR, check_eval, lower="non-record: INFO"),
    Rule("TIME.EVAL_SCOPE", "untimed eval-phase work should be disclosed; sum of eval lines reported",
         "merged-log convention; PR #1948/#1967 (no explicit ruling)", WARN, check_eval_scope, decides=False),
]
