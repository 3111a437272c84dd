"""Statistics rules: STAT.SEEDS (number/sameness/disclosure) and STAT.SIG (Welch test vs SOTA, both thresholds)."""

from __future__ import annotations

from statistics import mean

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule
from validator.stats import welch_one_sided

README_MARGIN_NATS = 0.005
README_P = 0.01
PRACTICE_P = 0.25
HP_IGNORE = {"seed", "run_id", "data_path", "tokenizer_path", "out_dir", "logfile", "log_path", "train_files",
             "val_files", "datasets_dir", "data_dir"}


# words of a logged key whose value differs between runs of one configuration: clocks and dates (`start_time`,
# `compile_elapsed`)
CLOCK_WORDS = {"time", "date", "timestamp", "elapsed", "started"}
# per-run facts, by their whole name only: a word inside a setting's name is no per-run fact (`ttt_lora_rank` and
# `lqer_rank` are hyper-parameters; seeds run with different ranks passed as "same config")
RUN_KEYS = {"rank", "local_rank", "global_rank", "node_rank", "world_rank", "host", "hostname", "node", "node_name",
            "pid", "uuid", "git", "commit", "git_commit", "git_sha", "git_hash", "device", "devices", "device_id",
            "device_name", "gpu", "gpu_name", "cuda_visible_devices"}


def _ignored(key: str) -> bool:
    """Logged settings allowed to differ between seeds: seed, run id, paths, and per-run facts (a clock, a host, a
    commit, this process's rank)."""
    k = key.lower()
    return key in HP_IGNORE or k.endswith(("_path", "_dir", "_file", "_files")) or k in RUN_KEYS or bool(
        set(k.split("_")) & CLOCK_WORDS)


def seed_values(ctx: FolderContext) -> tuple[list[float], list[float]]:
    """(per-seed val_bpb, per-seed val_loss) from the logs that back the claim, one value per seed (the mean of its
    logs: a re-run or a copy of a seed is no independent replicate, and counting it twice shrank the test's standard
    error), else from submission.json seed_results."""
    from validator.rules.consistency import seed_results

    runs: dict = {}
    for i, lg in enumerate(claim_logs(ctx)):
        if (fin := lg.final(ctx.method)) is not None:
            runs.setdefault(lg.seed if lg.seed is not None else f"log{i}", []).append(fin)
    if runs:
        return ([sum(f.val_bpb for f in fs) / len(fs) for fs in runs.values()],
                [sum(f.val_loss for f in fs) / len(fs) for fs in runs.values()])
    res = seed_results(ctx.submission)
    bpb = [float(v["val_bpb"]) for v in res.values() if isinstance(v.get("val_bpb"), (int, float))]
    loss = [float(v["val_loss"]) for v in res.values() if isinstance(v.get("val_loss"), (int, float))]
    return bpb, loss


def claim_logs(ctx: FolderContext) -> list:
    """The scoring logs that back the claim. When the folder also holds other runs (disclosed extra runs,
    re-runs of the same seeds, eval-only re-runs), the candidate sets are: all logs, each sub-folder / file-name
    family, and each choice of one log per seed; among those whose mean reproduces the claimed val_bpb, a set of
    distinct seeds is preferred, then the closest mean."""
    import itertools
    from statistics import mean as _mean

    from validator.rules.base import close_to_claim
    from validator.rules.consistency import claimed_bpb, log_groups

    logs = ctx.scoring
    claim = claimed_bpb(ctx.submission)
    if claim is None or len(logs) < 2:
        return logs
    finals = [(lg, lg.final(ctx.method)) for lg in logs]
    finals = [(lg, f) for lg, f in finals if f is not None]
    if not finals:
        return logs
    cands = [finals] + [m for m in log_groups(finals).values() if 1 < len(m) < len(finals)]
    by_seed: dict = {}
    for lg, fin in finals:
        by_seed.setdefault(lg.seed, []).append((lg, fin))
    n = 1
    for v in by_seed.values():
        n *= len(v)
    if None not in by_seed and 1 < len(by_seed) and 1 < n <= 4096:
        cands += [list(c) for c in itertools.product(*by_seed.values())]

    def mixed(c: list) -> bool:
        dumps = [lg.hparams for lg, _ in c if lg.hparams]
        return any(d.get(k) != dumps[0].get(k) for d in dumps[1:] for k in set(d) & set(dumps[0]) if not _ignored(k))

    def key(c: list) -> tuple[bool, bool, float]:
        seeds = [lg.seed for lg, _ in c]
        return len(set(seeds)) != len(seeds), mixed(c), abs(_mean(f.val_bpb for _, f in c) - claim[1])

    good = [c for c in cands if close_to_claim(_mean(f.val_bpb for _, f in c), claim[1])]
    return [lg for lg, _ in min(good, key=key)] if good else logs


SAME_RUN_STEPS = 5  # common logged steps (beyond step 1) needed to compare two training curves
# Two seeds' curves share at most 8% of their logged train losses exactly and differ by 1.4e-3 or more at the
# median (the 60 merged records); one run under two names shares most, or all within an edit's noise.
SAME_RUN_EQUAL, SAME_RUN_NOISE = 0.5, 5e-4
# A copy whose losses were all edited still carries its run's other columns: the clock at each step (two seeds of a
# merged record share at most 35 % of their train_time figures to the millisecond) and the periodic validation
# losses (at most 15 %); one run shares (nearly) all of them.
SAME_RUN_CURVES = (("step_times", 0.8, SAME_RUN_STEPS), ("val_losses", SAME_RUN_EQUAL, 3))


def _same_runs(logs: list) -> list[tuple]:
    """Pairs of claim logs that are one run: their train losses (at least SAME_RUN_STEPS common steps) are half or more
    the same, or all agree within SAME_RUN_NOISE (a copied log with a few losses edited), or their clocks or
    validation losses at common steps are (nearly) all the same (SAME_RUN_CURVES)."""
    out = []
    for i, a in enumerate(logs):
        for b in logs[i + 1:]:
            if _same_curve(a.train_losses, b.train_losses, SAME_RUN_EQUAL, SAME_RUN_STEPS, SAME_RUN_NOISE) or any(
                    _same_curve(getattr(a, name), getattr(b, name), share, least)
                    for name, share, least in SAME_RUN_CURVES):
                out.append((a, b))
    return out


def _same_curve(a: dict[int, float], b: dict[int, float], share: float, least: int, noise: float = -1.0) -> bool:
    """At least `least` common steps (beyond step 1), of which `share` or more carry the same value, or all within
    `noise`."""
    common = sorted(k for k in set(a) & set(b) if k > 1)
    if len(common) < least:
        return False
    diffs = [abs(a[k] - b[k]) for k in common]
    return sum(d == 0 for d in diffs) >= share * len(diffs) or max(diffs) <= noise


def check_seeds(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    out: list[Finding] = []
    record = ctx.track == "record" and not ctx.is_run_dir
    logs = claim_logs(ctx)
    if not logs:
        if record:
            return [r.finding(FAIL, "no scored log backs the claim")]
        return [r.finding(SKIP, "no scored log")]
    seeds = [lg.seed for lg in logs]
    known = [s for s in seeds if s is not None]
    distinct = len(set(known))  # a log that names no seed is no evidence of another seed
    if distinct < 3:
        unnamed = f"; {len(seeds) - len(known)} log(s) name no seed" if len(known) < len(seeds) else ""
        msg = (f"{distinct} distinct seed(s) back the claim ({', '.join(str(s) for s in seeds)}){unnamed}; a record "
               "needs a 3-seed mean of the submitted configuration")
        out.append(r.finding(FAIL, msg, expected=">= 3", found=distinct) if record else
                   r.finding(WARN, msg, severity=INFO, expected=">= 3", found=distinct))
    if len(set(known)) != len(known):
        out.append(r.finding(FAIL if record else WARN, f"the same seed appears in several logs backing the claim: "
                             f"{sorted(known)} (a re-run is not an independent seed)",
                             severity=ERROR if record else INFO, found=sorted(known)))
    from validator.rules.provenance import claimed_runs

    runs = claimed_runs(ctx) if record else logs  # a seed's training log, where an eval-only log holds its score
    for a, b in (p for p in _same_runs(runs) if p[0].seed != p[1].seed or p[0].seed is None):
        out.append(r.finding(FAIL if record else WARN, f"{a.path.name} and {b.path.name} train identically (their "
                             "common steps' train losses, clocks or validation losses agree): one run under two seeds",
                             severity=ERROR if record else INFO, file=ctx.rel(b.path)))
    dumps = [lg for lg in logs if lg.hparams or lg.setup]  # the Hyperparameters dump, else the setup lines
    if len(dumps) > 1:
        ref = dumps[0]
        for lg in dumps[1:]:
            mine, theirs = (lg.hparams, ref.hparams) if lg.hparams and ref.hparams else (lg.setup, ref.setup)
            both = set(theirs) & set(mine)
            own = (str(ref.seed), str(lg.seed))  # a field that prints each log's own seed (`s:1337`) is its seed
            diff = sorted(k for k in both if not _ignored(k) and theirs[k] != mine[k] and (theirs[k], mine[k]) != own)
            only = sorted(k for k in set(theirs) ^ set(mine) if not _ignored(k))
            if only and not diff:
                out.append(r.finding(WARN, f"the logged configuration has other keys than {ref.path.name}'s: "
                                     f"{', '.join(only[:6])} (logs of different script versions: see "
                                     "FILES.LOG_PROVENANCE)", severity=WARN, file=ctx.rel(lg.path), found=only[:6]))
            if diff:
                out.append(r.finding(FAIL if record else WARN, f"configuration differs from {ref.path.name} beyond "
                                     f"seed/run_id/paths: {', '.join(diff[:8])} (the seeds of a record run one "
                                     "configuration)", severity=ERROR if record else INFO, file=ctx.rel(lg.path),
                                     found=diff[:8]))
    sub = ctx.submission or {}
    disclosed = [k for k in sub if "all_runs" in k or "disclosure" in k]
    if disclosed:
        out.append(r.finding(WARN, f"submission discloses more runs than it averages ({', '.join(disclosed)})",
                             severity=WARN, field=disclosed[0]))
    return out or [r.finding(PASS, f"{len(logs)} distinct seed logs ({', '.join(str(s) for s in seeds)}), same config")]


def significance(new: list[float], losses: list[float], sota: float | list[float]) -> dict[str, float]:
    """Both tests (README: 0.005 nats at p < 0.01; practice: no margin at p < 0.25); bpb units, margin converted."""
    ratio = mean(losses) / mean(new) if losses and len(losses) == len(new) else float("nan")
    margin_bpb = README_MARGIN_NATS / ratio if ratio == ratio else README_MARGIN_NATS
    readme = welch_one_sided(new, sota, margin_bpb)
    practice = welch_one_sided(new, sota, 0.0)
    return {"delta_bpb": practice.delta, "delta_nats": practice.delta * ratio if ratio == ratio else float("nan"),
            "nats_per_bpb": ratio, "margin_bpb": margin_bpb, "t_readme": readme.t, "df_readme": readme.df,
            "p_readme": readme.p, "t_practice": practice.t, "df_practice": practice.df, "p_practice": practice.p}


def check_sig(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    if ctx.sota is None:
        return [r.finding(SKIP, "no --sota given")]
    new, losses = seed_values(ctx)
    if len(new) < 2:
        return [r.finding(SKIP, f"need >= 2 per-seed values for a t-test, have {len(new)}")]
    s = significance(new, losses, ctx.sota)
    label = ctx.sota_label or (f"{ctx.sota}" if isinstance(ctx.sota, float) else f"{len(ctx.sota)} runs")
    msg = (f"vs SOTA {label}: delta {s['delta_bpb']:.5f} bpb = {s['delta_nats']:.5f} nats; README test (>= 0.005 "
           f"nats = {s['margin_bpb']:.5f} bpb, p < {README_P}): t={s['t_readme']:.3f} df={s['df_readme']:.2f} "
           f"p={s['p_readme']:.4g}; practice test (no margin, p < {PRACTICE_P}): t={s['t_practice']:.3f} "
           f"p={s['p_practice']:.4g}")
    if ctx.track == "non-record":
        return [r.finding(PASS, msg + " [non-record: INFO]", severity=INFO, found=s)]
    if s["p_readme"] < README_P:
        return [r.finding(PASS, msg, found=s)]
    why = ("passes only the p < 0.25 practice test, not the README's 0.005 nats at p < 0.01"
           if s["p_practice"] < PRACTICE_P else "fails both the README and the practice test")
    return [r.finding(FAIL, f"{msg} -> {why}", found=s)]


RULES = [
    Rule("STAT.SEEDS", ">= 3 distinct seeds of one configuration back a record claim; all runs disclosed",
         "README 'average over 3 training runs'; cocohearts on PR #2124/#561", ERROR, check_seeds,
         lower="non-record folders and run directories: INFO; disclosed best-k-of-n selection: WARN"),
    Rule("STAT.SIG", "with --sota: beat it by >= 0.005 nats at p < 0.01 (README); the p < 0.25 practice test is "
         "reported", "README Submission Process 1; cocohearts PR #1900/#1902", ERROR, check_sig,
         lower="non-record folders: INFO; skipped without --sota"),
]
