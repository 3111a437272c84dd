"""Hardware, track, log provenance and external-compute rules: HW.H100, TRACK.PLACEMENT, FILES.LOG_PROVENANCE,
COMPUTE.EXTERNAL (rulebook §2, §6, §7). What the folder shows is checked; what it cannot show (whether a log
really came from this run, whether compute was smuggled) is reported for manual review."""

from __future__ import annotations

import ast
import difflib
import re
from pathlib import Path

from validator.logs import embedded_source, launch_counts, more_than_eight_gpus
from validator.rules.base import BLOB_BYTES, ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule
from validator.rules.code import code_units, reachable_local_code
from validator.rules.layout import linked_files, shipped_kind

# Any accelerator a log names (an allow-list decides: H100 passes, anything else fails a record; a list of known
# other parts let an unlisted one, an H800 or an MI300X, through).
GPU = re.compile(r"NVIDIA\s+(?:GeForce\s+|Tesla\s+)?(?P<n>(?!CUDA\b)(?:RTX\s+(?:PRO\s+)?)?[A-Z]+\s?\d+[A-Za-z]*"
                 r"(?:[ -](?:80GB|40GB|SXM\d?|PCIe|NVL|HBM3e?|\d+GB|Ti|MIG|\d+g\.\d+gb))*)"
                 r"|Tesla\s+(?P<t>[A-Z]\d+[\w-]*)|AMD\s+(?:Radeon\s+)?Instinct\s+(?P<a>MI\d+\w*)"
                 r"|Intel\(R\)\s+(?P<i>Data Center GPU[\w ]*?\d+)")
# submission.json's hardware: eight H100s, not the PCIe part
HW_FIELD = re.compile(r"\b8\s*[x×]\s*(?:NVIDIA )?H100", re.I)
SMALL_EDIT = 5  # changed code lines tolerated as a post-run touch-up (WARN) before "a different script" (FAIL)
SMALL_OK = (".log", ".txt", ".md", ".json", ".py", ".model", ".vocab", ".png", ".jpg", ".jpeg", ".svg", ".csv",
            ".tsv", ".sh", ".toml", ".yaml", ".yml", ".pdf")
ABS_LOAD = re.compile(r"""(?:torch\.load|np\.load|open|load_file)\(\s*["'](/(?!dev/)[^"']+)["']""")


def _log_text(lg) -> str:
    try:
        return lg.path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def claimed_runs(ctx: FolderContext) -> list:
    """The logs of the claim's runs: the scoring logs and every other log of their seeds (a training log whose score
    is printed by an eval-only re-run), and logs that name no seed (nothing ties them to another run)."""
    seeds, scoring = {lg.seed for lg in ctx.scoring if lg.seed is not None}, {id(lg) for lg in ctx.scoring}
    return [lg for lg in ctx.logs if id(lg) in scoring or lg.seed is None or lg.seed in seeds]


def check_hw(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    if ctx.is_run_dir:
        ws = next((lg.world_size for lg in ctx.logs if lg.world_size), None)
        return [r.finding(SKIP, f"pgolf run directory (world_size {ws or 1}): hardware applies to the record runs",
                          severity=INFO)]
    record = ctx.track == "record"
    sev = ERROR if record else INFO
    out: list[Finding] = []
    gpus: set[str] = set()
    for lg in claimed_runs(ctx):  # a training log split from its score line (eval-only logs) says where it trained
        f = ctx.rel(lg.path)
        names = {" ".join(next(g for g in m.groups() if g).split()) for m in GPU.finditer(_log_text(lg))}
        gpus |= names
        other = sorted(n for n in names if not n.startswith("H100") or "MIG" in n)  # an H100 slice is not an H100
        if other:
            out.append(r.finding(FAIL if record else WARN, f"log shows {other[0]} (record runs use 8xH100 SXM)",
                                 severity=sev, file=f, expected="H100 SXM", found=other[0]))
        elif any("PCIe" in n or "NVL" in n for n in names):
            out.append(r.finding(WARN, f"log shows {sorted(names)[0]}, not the SXM part", severity=WARN, file=f))
        dumped = lg.hparams.get("world_size", "")
        sizes = {lg.world_size, int(dumped) if dumped.isdigit() else None} - {None}
        if sizes - {8}:
            ws = min(sizes - {8})
            out.append(r.finding(FAIL if record else WARN, f"world_size:{ws} on a log of a claimed run (8 GPUs "
                                 "expected)",
                                 severity=sev, file=f, expected=8, found=ws))
    for where, launches in [("README.md", launch_counts(ctx.readme)),
                            *((ctx.rel(lg.path), lg.launch) for lg in ctx.logs)]:
        if more := more_than_eight_gpus(launches):
            out.append(r.finding(FAIL if record else WARN, f"{where} launches {' '.join(more)} (a record runs 8 "
                                 "GPUs on one node)", severity=sev, file=where, expected="8 GPUs, 1 node",
                                 found=more[0]))
    hw = str((ctx.submission or {}).get("hardware", "") or "")
    if hw and (not HW_FIELD.search(hw) or "pcie" in hw.lower()):
        out.append(r.finding(FAIL if record else WARN, f"submission.json hardware {hw!r} is not 8xH100 SXM",
                             severity=sev, file="submission.json", field="hardware", found=hw))
    if out:
        return out[:5]
    sizes = sorted({lg.world_size for lg in ctx.scoring if lg.world_size})
    if gpus or sizes or hw:
        seen = ", ".join([*sorted(gpus), *(f"world_size {s}" for s in sizes), *([hw] if hw else [])])
        return [r.finding(PASS, f"hardware evidence consistent with 8xH100: {seen}")]
    return [r.finding(SKIP, "no hardware evidence in the logs or submission.json (manual review)", severity=INFO)]


def check_track(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory", severity=INFO)]
    parent = ctx.root.resolve().parent.name
    field = str((ctx.submission or {}).get("track", "") or "")
    out: list[Finding] = []
    if parent not in ("track_10min_16mb", "track_non_record_16mb"):
        return [r.finding(SKIP, f"folder is not under records/track_*/ (parent {parent!r}): placement unchecked",
                          severity=INFO)]
    in_record = parent == "track_10min_16mb"
    if field and ("non" in field.lower()) == in_record:
        out.append(r.finding(WARN, f"submission.json track {field!r} disagrees with the folder's track {parent}",
                             severity=WARN, file="submission.json", field="track", expected=parent, found=field))
    blurb = " ".join(str((ctx.submission or {}).get(k, "")) for k in ("name", "blurb", "description"))
    head = ctx.readme[:2000]
    if in_record and re.search(r"non[- _]?record", blurb + " " + head, re.I):
        out.append(r.finding(WARN, "a record-track folder describes itself as non-record (PR #1412): it belongs in "
                             "track_non_record_16mb", severity=WARN, file="README.md"))
    if out:
        return out
    note = "; whether it beats SOTA is STAT.SIG (--sota)" if in_record else ""
    return [r.finding(PASS, f"folder track {parent} agrees with submission.json{note}")]


def _normal(src: str) -> list[str]:
    """Code lines: trailing blanks, blank lines and whole-line comments dropped."""
    return [ln.rstrip() for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _same_program(a: str, b: str) -> bool | None:
    """True/False if both parse (AST equality, comments and layout ignored), None if either does not parse."""
    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except SyntaxError:
        return None


def check_log_provenance(ctx: FolderContext) -> list[Finding]:
    r = RULES[2]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory: logs written by pgolf itself", severity=INFO)]
    if ctx.script_source is None:
        return [r.finding(SKIP, "no train_gpt.py")]
    shipped = ctx.script_source[0]
    out: list[Finding] = []
    checked = 0
    for lg in ctx.logs:
        f = ctx.rel(lg.path)
        emb = embedded_source(_log_text(lg))
        if emb is None:
            continue
        checked += 1
        if _normal(emb) == _normal(shipped):
            continue
        same = _same_program(emb, shipped)
        if same:
            out.append(r.finding(WARN, "the log embeds the shipped program with different comments/layout",
                                 severity=INFO, file=f))
            continue
        a, b = _normal(emb), _normal(shipped)
        ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
        changed = sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in ops if op != "equal")
        first = next((j1 + 1 for op, _, _, j1, _ in ops if op != "equal"), None)
        if changed <= SMALL_EDIT:
            out.append(r.finding(WARN, f"the log embeds a script {changed} code line(s) away from the shipped "
                                 "train_gpt.py: a post-run touch-up (accepted in practice) or a different run — "
                                 "review the diff", severity=WARN, file=f, found=f"{changed} lines changed"))
            continue
        aux = len(Path(f).parts) > 1  # a log in a subfolder: experiments, not the submission's runs
        out.append(r.finding(WARN if aux else FAIL, f"the log embeds a different script than the shipped train_gpt.py "
                             f"({changed} code lines changed, first near shipped code line {first}): "
                             + ("an auxiliary log of another script" if aux else
                                "the log was not produced by the shipped code"),
                             severity=WARN if aux else ERROR, file=f, expected=f"{len(b)} code lines",
                             found=f"{len(a)}"))
    if not checked:
        from validator.rules.size import exec_stub_target

        sizes = {lg.code_bytes for lg in ctx.logs if lg.code_bytes is not None and lg.code_kind != "compressed"}
        helpers = reachable_local_code(ctx)
        stub = exec_stub_target(ctx)
        accepted = {ctx.script_bytes, (ctx.script_bytes or 0) + sum(helpers.values())}
        if stub:
            accepted |= {helpers[stub], helpers[stub] + (ctx.script_bytes or 0)}
        if sizes and ctx.script_bytes is not None and not sizes & accepted:
            return [r.finding(WARN, f"no log embeds its source; logged code size(s) {sorted(sizes)} != shipped "
                              f"{ctx.script_bytes:,} B (see SIZE.LOG; manual review)", severity=WARN)]
        return [r.finding(SKIP, "no log embeds its source: provenance rests on SIZE.LOG and JSON.CONSISTENCY "
                          "(manual review)", severity=INFO)]
    return out[:5] or [r.finding(PASS, f"{checked} log(s) embed exactly the shipped train_gpt.py")]


def check_external_compute(ctx: FolderContext) -> list[Finding]:
    r = RULES[3]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory", severity=INFO)]
    out: list[Finding] = []
    for rel in ctx.files:
        p = ctx.root / rel
        if p.suffix.lower() not in SMALL_OK and p.stat().st_size > BLOB_BYTES:
            out.append(r.finding(WARN, f"{rel} is a {p.stat().st_size:,}-byte binary: anything the run loads must be "
                                 "built inside the 10 minutes (or counted as artifact bytes)", severity=WARN,
                                 file=str(rel)))
    for link in (p for p in linked_files(ctx.root) if not shipped_kind(p)):  # those FILES.REQUIRED fails
        target = (ctx.root / link).resolve()
        where = "outside the folder" if not target.is_relative_to(ctx.root.resolve()) else "inside the folder"
        out.append(r.finding(WARN, f"{link} is a symbolic link to {where} ({target}): a PR ships the link, not what "
                             "the run read through it", severity=WARN, file=str(link)))
    for unit in code_units(ctx):
        for no, line in enumerate(unit.lines, start=1):
            m = ABS_LOAD.search(line)
            if m and not line.lstrip().startswith("#") and "/tmp" not in m.group(1):
                out.append(r.finding(WARN, f"loads {m.group(1)!r} from outside the folder", severity=WARN,
                                     file=unit.name, line=no))
    sub = ctx.submission or {}
    for k in sub:
        if re.fullmatch(r"(seeds?_(run|tried|all|total)|all_seeds|n_seeds_run)", k):
            out.append(r.finding(WARN, f"submission.json discloses {k}={sub[k]!r}: reported seeds must not be selected "
                                 "on outcome (PR #1769)", severity=INFO, file="submission.json", field=k))
    if out:
        return out[:5]
    return [r.finding(PASS, "no binary blobs, no loads from outside the folder (heuristics only: seed brute-forcing "
                      "and offline val optimisation need manual review)")]


RULES = [
    Rule("HW.H100", "record runs on 8xH100 SXM", "README 'Scaling up'; rulebook HW.H100", ERROR, check_hw,
         lower="PCIe/NVL parts: WARN; non-record folders: INFO"),
    Rule("TRACK.PLACEMENT", "record track only for runs under the record rules; otherwise non-record",
         "README 'Non-record Submissions'; #1806", ERROR, check_track,
         lower="track field or self-description disagreeing with the folder: WARN (whether it beats SOTA is "
               "STAT.SIG)"),
    Rule("FILES.LOG_PROVENANCE", "logs were produced by the shipped script and configuration",
         "README Submission Process item 3; PR #86", ERROR, check_log_provenance,
         lower="<= 5 changed code lines, auxiliary logs in sub-folders, no embedded source: WARN/INFO"),
    Rule("COMPUTE.EXTERNAL", "no smuggled compute (seed brute-forcing, offline val optimisation, external blobs)",
         "README FAQ 'external compute'", WARN, check_external_compute, decides=False),
]
