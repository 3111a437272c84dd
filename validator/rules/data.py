"""Data-rule fingerprints: DATA.FULL_VAL, DATA.NO_VAL_IN_TRAIN, DATA.NO_TRAIN_AT_EVAL (static parts)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule
from validator.rules.code import code_units

# val token counts observed in merged logs (rulebook DATA.FULL_VAL): count -> description
CANONICAL_VAL = {
    62_021_632: "sp1024", 45_508_608: "sp4096", 45_514_752: "sp4096", 40_540_160: "sp8192",
    47_853_343: "CaseOps-sp8192 (untruncated)", 151_076_864: "byte-level", 151_130_112: "byte-level",
}
TRUNCATED_VAL = {47_851_520: (47_853_343, "CaseOps-sp8192 truncated to a multiple of 2,048")}
EARLIER_EXPORT = {63_779_840: "earlier sp1024 val export (NaiveBaseline, 2026-03-17)"}
LEAK_TRAIN_SHARDS = {1499: "CaseOps prepare_caseops_data.py default --val-docs=10000 (train/val overlap, Issue #2127)"}
VOCAB_VAL = {1024: (62_021_632,), 4096: (45_508_608, 45_514_752), 8192: (40_540_160, 47_853_343)}
NETWORK = re.compile(r"\b(snapshot_download|hf_hub_download|urllib\.request|urllib3|urlopen|requests\.\w+\(|httpx|"
                     r"aiohttp|http\.client|HTTPS?Connection|ftplib|smtplib|socket\.(?:socket|create_connection)|"
                     r"torch\.hub|load_state_dict_from_url|download_url_to_file|load_dataset|"
                     r"[\"']?\b(?:wget|curl|git|rsync|scp|aria2c)\b[\"']?\s*[, ]\s*[\"']?(?:-|https?:|s3:|clone\b)|"
                     # package installers run from the code: they download what no review saw
                     r"[\"']?\b(?:pip3?|uv|conda|mamba|micromamba|apt-get|apt|npm|yarn|cargo)\b[\"']?\s*[, ]\s*"
                     r"[\"']?(?:install|add|download|pip)\b|\bensurepip\b|\bpip\._internal\b|\bpip\.main\b|"
                     r"huggingface[-_]cli\b|\bhf\b[\"']?\s*[, ]\s*[\"']?download\b)")


# The longest evaluation sequence a record uses: a split cut to a multiple of it loses fewer tokens (truncation,
# a WARN; the GDN long-context study evaluates 32,768-token windows).
MAX_EVAL_SEQ = 32_768
VOCAB_DEFAULT = re.compile(r"[\"']VOCAB_SIZE[\"']\s*,\s*[\"']?(\d+)")
VOCAB_NAMED = re.compile(r"\bvocab_size[:=]\s*(\d+)\b|fineweb_(\d+)_bpe\b|fineweb10B_sp(\d+)\b")


def check_full_val(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory: dataset chosen by its config", severity=INFO)]
    out: list[Finding] = []
    counts = sorted({lg.val_tokens for lg in ctx.logs if lg.val_tokens is not None})
    for n in counts:
        if n in CANONICAL_VAL:
            out.append(r.finding(PASS, f"val_tokens {n:,} = canonical {CANONICAL_VAL[n]}"))
        elif n in TRUNCATED_VAL:
            full, why = TRUNCATED_VAL[n]
            out.append(r.finding(WARN, f"val_tokens {n:,}: {why}; canonical {full:,} ({full - n} tokens unscored)",
                                 severity=WARN, expected=full, found=n))
        elif n in EARLIER_EXPORT:
            out.append(r.finding(WARN, f"val_tokens {n:,}: {EARLIER_EXPORT[n]}", severity=INFO, found=n))
        elif (vocab := vocab_of(ctx)) in VOCAB_VAL and n < min(VOCAB_VAL[vocab]) - MAX_EVAL_SEQ:
            record = ctx.track == "record"  # a non-record study (or a tiny demo run) may score a subset: noted
            out.append(r.finding(FAIL if record else WARN, f"val_tokens {n:,} is short of every canonical count for "
                                 f"vocab {vocab} ({', '.join(f'{c:,}' for c in VOCAB_VAL[vocab])}): not the full "
                                 "validation split", severity=ERROR if record else INFO, expected=VOCAB_VAL[vocab],
                                 found=n))
        else:
            near = [c for c in CANONICAL_VAL if 0 < c - n < MAX_EVAL_SEQ]
            if near:
                out.append(r.finding(WARN, f"val_tokens {n:,} is {near[0] - n} short of canonical {near[0]:,} "
                                     "(truncation)", severity=WARN, expected=near[0], found=n))
            else:
                out.append(r.finding(WARN, f"val_tokens {n:,} is not a known canonical count (new tokenizer? "
                                     "prove it is the full 50k-doc split)", severity=INFO, found=n))
    if not out:
        if ctx.track == "record" and ctx.scoring:  # a record shows it scored the whole split (TOK.BPB assumes it)
            return [r.finding(FAIL, "no scoring log shows how many validation tokens it scored (log `val_tokens:N` "
                              "or the loader's `tokens:N`): a record proves it scored the full split")]
        return [r.finding(SKIP, "no val token count in the logs")]
    bad = [x for x in out if x.status != PASS]
    return bad or out[:1]


def vocab_of(ctx: FolderContext) -> int | None:
    """vocab_size from the logs' Hyperparameters dumps, else from any log line that names it or the tokenizer
    (`vocab_size:8192`, `fineweb_8192_bpe.model`, `fineweb10B_sp8192`), else the script's default: deleting the
    dump's line must not turn a short validation split into an unknown one."""
    for lg in ctx.logs:  # the run's printed configuration: its dump, else the `key=value` lines before training
        v = lg.hparams.get("vocab_size", "") or lg.setup.get("vocab_size", "")
        if v.isdigit():
            return int(v)
    for lg in ctx.logs:
        try:
            text = lg.path.read_text(encoding="utf-8", errors="replace")[:2_000_000]
        except OSError:
            continue
        if m := VOCAB_NAMED.search(text):
            return int(next(g for g in m.groups() if g))
    for unit in code_units(ctx):  # the script's own default (`os.environ.get("VOCAB_SIZE", 8192)`)
        if m := VOCAB_DEFAULT.search(unit.source):
            return int(m[1])
    return None


def check_no_val_in_train(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    out: list[Finding] = []
    for lg in ctx.logs:
        if lg.train_shards in LEAK_TRAIN_SHARDS:
            out.append(r.finding(FAIL, f"train_shards: {lg.train_shards} = {LEAK_TRAIN_SHARDS[lg.train_shards]}",
                                 file=ctx.rel(lg.path), found=lg.train_shards))
    out += _val_in_train_patterns(r, ctx)
    if out:
        return out
    shards = sorted({lg.train_shards for lg in ctx.logs if lg.train_shards is not None})
    if not shards:
        return [r.finding(SKIP, "no train shard count logged (static fingerprint only)")]
    return [r.finding(PASS, f"train_shards {shards}: no known leak fingerprint (static fingerprint only)")]


VAL_SHARD = "fineweb_val_000000.bin"


DATA_WORDS = {"files", "file", "pattern", "patterns", "glob", "shards", "shard", "path", "paths", "dir", "loader",
              "stream", "dataset", "data", "bins"}


def _words(name: str) -> set[str]:
    return set(name.lower().split("_"))


def _is_train_data(name: str) -> bool:
    """A name for the training data or its loader (`train_loader`, `args.train_files`, `train_stream`)."""
    words = _words(name)
    return "train" in words and bool(words & DATA_WORDS)


def _val_data_name(value: ast.AST) -> str | None:
    """The first name or attribute in `value` that names validation files or their loader (`args.val_files`,
    `val_pattern`, `valid_shards`); validation *tokens* are left out (score-first TTT trains on scored ones)."""
    for c in ast.walk(value):
        name = c.id if isinstance(c, ast.Name) else c.attr if isinstance(c, ast.Attribute) else ""
        words = _words(name)
        if words & {"val", "valid", "validation"} and words & (DATA_WORDS - {"data", "dataset"}):
            return ast.unparse(c)
    return None


def _val_in_train_patterns(r: Rule, ctx: FolderContext) -> list[Finding]:
    """A file pattern assigned to a training name (`train_files = ".../fineweb_[tv]*.bin"`) that matches the
    validation shards: training would read them. Names and patterns are literal here; the val-swap test of
    `pgolf validate --run` decides the rest."""
    out = []
    for unit in code_units(ctx):
        if not isinstance(unit.tree, ast.Module):
            continue
        for node in ast.walk(unit.tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AnnAssign, ast.AugAssign)) else []
            names = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets]
            if not any("train" in n.lower() for n in names) or node.value is None:
                continue
            if any(_is_train_data(n) for n in names) and (val := _val_data_name(node.value)):
                out.append(r.finding(FAIL, f"{names[0]} is built from {val}: training would read the validation "
                                     "data", file=unit.name, line=node.lineno, found=val))
            for c in ast.walk(node.value):
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and any(ch in c.value for ch in "*?["):
                    pattern = c.value.rsplit("/", 1)[-1]
                    if fnmatch.fnmatchcase(VAL_SHARD, pattern):
                        out.append(r.finding(FAIL, f"{names[0]} = a pattern that matches the validation shards "
                                             f"({c.value!r}): training would read them", file=unit.name,
                                             line=node.lineno, found=c.value))
    return out[:5]


def check_no_train_at_eval(ctx: FolderContext) -> list[Finding]:
    r = RULES[2]
    units = code_units(ctx)
    if not units:
        return [r.finding(SKIP, "no train_gpt.py")]
    out: list[Finding] = []
    for unit in units:
        for no, line in enumerate(unit.lines, start=1):
            m = NETWORK.search(line)
            if m and not line.lstrip().startswith("#"):
                if ctx.track == "record":  # no merged record's code holds one; a record run downloads nothing
                    out.append(r.finding(FAIL, f"network/download call in the code a record runs: "
                                         f"{m.group(1).strip()}", file=unit.name, line=no))
                else:
                    out.append(r.finding(WARN, f"network/download call in the code: {m.group(1).strip()} (static: "
                                         "cannot tell whether it runs during evaluation)", severity=WARN,
                                         file=unit.name, line=no))
    out += _downloads_the_code_reads(r, ctx, "\n".join(u.source for u in units))
    names = ", ".join(u.name for u in units)
    return out[:5] or [r.finding(PASS, f"no download/network calls in {names} (static scan)")]


# a download in a shell script or a README command: curl/wget and the file it writes (-o/-O NAME, else the URL's)
SHELL_DOWNLOAD = re.compile(r"\b(?:curl|wget)\b[^\n]*")
DOWNLOADED = re.compile(r"(?:(?:-o|-O|--output(?:-document)?)[ =]\s*[\"']?(?P<out>[^\s\"';|&]+)"
                        r"|(?P<url>https?://[^\s\"';|&]+))")


def _downloads_the_code_reads(r: Rule, ctx: FolderContext, code: str) -> list[Finding]:
    """A shipped shell script or the README that downloads a file the code names (`curl … -o init_state.bin` beside
    `torch.load("init_state.bin")`): weights fetched before the run, outside the artifact and every scan. Setting up
    an environment (an installer the code never reads) is no finding."""
    texts = [("README.md", ctx.readme)] + [(str(p), (ctx.root / p).read_text(encoding="utf-8", errors="replace"))
                                          for p in ctx.files if p.suffix.lower() in (".sh", ".bash")]
    out = []
    for where, text in texts:
        for m in (d for command in SHELL_DOWNLOAD.findall(text) for d in DOWNLOADED.finditer(command)):
            name = Path(m["out"] or m["url"]).name
            if len(name) > 3 and re.search(r"[\"'/]" + re.escape(name) + r"[\"']", code):
                out.append(r.finding(FAIL if ctx.track == "record" else WARN, f"{where} downloads {name}, which the "
                                     "code reads: data fetched outside the folder and the artifact",
                                     severity=ERROR if ctx.track == "record" else WARN, file=where))
    return out


RULES = [
    Rule("DATA.FULL_VAL", "score the full canonical validation split (first 50k docs), un-reordered",
         "README 'Validation always runs on the full fineweb_val_* split'", ERROR, check_full_val,
         lower="truncation to a multiple of seq_len (< 32,768 tokens short): WARN; unknown counts, and a short split "
               "off the record track: INFO"),
    Rule("DATA.NO_VAL_IN_TRAIN", "no validation data during training (fingerprint: train_shards 1499 overlap)",
         "README FAQ 'You CANNOT access validation data during training'; Issue #2127", ERROR, check_no_val_in_train),
    Rule("DATA.NO_TRAIN_AT_EVAL", "no training data, downloads or network during evaluation (static scan)",
         "README FAQ 'No external downloads, training dataset access, or network calls'", ERROR,
         check_no_train_at_eval, lower="a download call in a non-record script: WARN statically (cannot tell whether "
                                       "it runs at evaluation); the sandboxed run decides"),
]
