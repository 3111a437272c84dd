"""Data-rule fingerprints: DATA.FULL_VAL, DATA.NO_VAL_IN_TRAIN, DATA.NO_TRAIN_AT_EVAL (static parts)."""

from __future__ import annotations

import ast
import builtins
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
    for unit, line, what in _ValFlow(code_units(ctx)).run()[:5]:
        out.append(r.finding(FAIL, f"{what}: validation data may reach only evaluation, never the artifact or the "
                             "model before it is scored", file=unit, line=line))
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
    files = {str(p) for p in ctx.files}
    for unit in units:
        hits = {no: m.group(1).strip() for no, line in enumerate(unit.lines, start=1)
                if (m := NETWORK.search(line)) and not line.lstrip().startswith("#")}
        for no, what in network_uses(unit, files):  # the syntax tree: imports, spawned programs, hub loaders, URLs
            hits.setdefault(no, what)
        for no, what in sorted(hits.items()):
            if ctx.track == "record":  # no merged record's code holds one; a record run downloads nothing
                out.append(r.finding(FAIL, f"network/download call in the code a record runs: {what}",
                                     file=unit.name, line=no))
            else:
                out.append(r.finding(WARN, f"network/download call in the code: {what} (static: cannot tell whether "
                                     "it runs during evaluation)", severity=WARN, file=unit.name, line=no))
    code = "\n".join(u.source for u in units)
    out += _downloads_the_code_reads(r, ctx, code)
    out += _scripts_the_code_runs(r, ctx, code)
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


def _scripts_the_code_runs(r: Rule, ctx: FolderContext, code: str) -> list[Finding]:
    """A shipped shell script the code names (`subprocess.run(["bash", "fetch.sh"])`) whose commands reach the
    network: the script runs with the code, so its download is the code's."""
    out = []
    for p in ctx.files:
        if p.suffix.lower() not in (".sh", ".bash") or not re.search(r"[\"'/]" + re.escape(p.name) + r"[\"']", code):
            continue
        text = (ctx.root / p).read_text(encoding="utf-8", errors="replace")
        for no, line in enumerate(text.splitlines(), start=1):
            if not line.lstrip().startswith("#") and (what := _network_command(_shell_words(line.strip()))):
                out.append(r.finding(FAIL if ctx.track == "record" else WARN, f"{p} (run by the code) reaches the "
                                     f"network: {what}", severity=ERROR if ctx.track == "record" else WARN,
                                     file=str(p), line=no))
                break
    return out


RULES = [
    Rule("DATA.FULL_VAL", "score the full canonical validation split (first 50k docs), un-reordered",
         "README 'Validation always runs on the full fineweb_val_* split'", ERROR, check_full_val,
         lower="truncation to a multiple of seq_len (< 32,768 tokens short): WARN; unknown counts, and a short split "
               "off the record track: INFO"),
    Rule("DATA.NO_VAL_IN_TRAIN", "no validation data during training (train_shards 1499 overlap; a training loader "
         "over validation files; validation data written into the model or the artifact, or reduced to a statistic "
         "outside evaluation)",
         "README FAQ 'You CANNOT access validation data during training'; Issue #2127", ERROR, check_no_val_in_train),
    Rule("DATA.NO_TRAIN_AT_EVAL", "no training data, downloads or network during evaluation (static scan)",
         "README FAQ 'No external downloads, training dataset access, or network calls'", ERROR,
         check_no_train_at_eval, lower="a download call in a non-record script: WARN statically (cannot tell whether "
                                       "it runs at evaluation); the sandboxed run decides"),
]


# ---------------------------------------------------------------- validation data flowing anywhere but evaluation
VAL_WORDS = {"val", "valid", "validation"}
# what a validation name holds when it is data (tokens, a loader, its files), not a setting or a score (`val_bpb`,
# `val_every`, `val_batch_size`)
VAL_HELD = {"tokens", "token", "toks", "tok", "ids", "data", "dataset", "stream", "seq", "seqs", "docs", "doc",
            "text", "bytes", "buf", "buffer", "shard", "shards", "files", "file", "pattern", "patterns", "glob",
            "path", "paths", "bins", "set", "split", "loader", "prefix", "arr", "array", "np", "tensor"}
LOADER_WORDS = {"load", "ld", "read", "get", "fetch", "open"}
# what carries no more than a few figures about the data: sizes, scalars, reprs (taint stops there)
SIZE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "itemsize", "nbytes"}
SCALAR_METHODS = {"numel", "size", "dim", "item", "nelement", "element_size", "data_ptr", "is_contiguous",
                  "get_device", "stride"}
FULL_REDUCTIONS = {"sum", "mean", "max", "min", "std", "var", "prod", "norm", "any", "all", "count_nonzero",
                   "nansum", "amax", "amin", "logsumexp"}
SCALAR_FUNCS = {"len", "int", "float", "bool", "str", "repr", "print", "isinstance", "type", "id", "round", "abs",
                "format", "hasattr", "callable", "divmod", "math"}
# a statistic of a token stream: a histogram, counts, an n-gram table (compliance §4 EVAL.C1 "static helpers")
STATISTICS = {"bincount", "histc", "histogram", "histogram2d", "histogramdd", "unique", "unique_consecutive",
              "Counter", "index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce",
              "scatter_reduce_", "add.at", "at", "value_counts", "most_common", "defaultdict"}
# tensor/array methods that write into their receiver
IN_PLACE = re.compile(r"^(?:copy_|set_|fill_|add_|sub_|mul_|div_|addcmul_|addcdiv_|lerp_|index_\w+_|scatter\w*_|"
                      r"masked_\w+_|put_|clamp_|mul|update|append|extend|insert|setdefault|__setitem__|"
                      r"load_state_dict|register_buffer|register_parameter|add_module)$")
FRESH = {"zeros", "zeros_like", "empty", "empty_like", "ones", "ones_like", "full", "full_like", "arange", "tensor",
         "as_tensor", "from_numpy", "array", "asarray", "list", "dict", "set", "tuple", "deque", "defaultdict",
         "Counter", "OrderedDict", "BytesIO", "cat", "stack", "clone", "copy", "deepcopy"}
SERIALIZE = {"save", "savez", "savez_compressed", "tofile", "dump", "dumps", "write", "write_bytes", "write_text",
             "compress", "save_file", "put_object"}


def _val_name(name: str) -> bool:
    words = _words(name)
    return bool(words & VAL_WORDS) and bool(words & VAL_HELD)


def _val_literal(value: object) -> bool:
    """A path or pattern naming validation shards (`"./data/fineweb_val_*.bin"`)."""
    if not isinstance(value, str) or len(value) > 300 or not any(c in value for c in "/*.?["):
        return False
    base = value.rsplit("/", 1)[-1]
    return (any(c in base for c in "*?[") and fnmatch.fnmatchcase(VAL_SHARD, base)) or bool(
        set(re.split(r"[^a-z]+", value.lower())) & VAL_WORDS)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


class _ValFlow:
    """Where validation data flows in the code a run executes (DATA.NO_VAL_IN_TRAIN). Validation data is what a name
    for it holds (`val_tokens`, `val_data.val_tokens`, `args.val_files`), what a loader returns when handed validation
    files, a path literal of the validation shards, and everything derived from those by slicing, indexing, methods,
    library functions and containers; a size, a scalar reduction, a model's output (an opaque callable) and a helper
    whose return carries none of it are no longer the data. Handing the data to a function of the code is
    evaluation (what that function does is the EVAL rules' and the harness's); the function is followed only to
    learn whether its return carries the data, and whether it writes it into state it was given.

    Found: validation data (or a statistic of it: a histogram, counts, an n-gram table) written into state that is
    not a buffer the function allocated — model weights (`tok_emb.weight[:, 0] += log1p(hist)`), the quantized
    state dict (`quant_result["prefix"] = val_tokens[:N]`), a parameter or buffer — or passed to a serializer
    (torch.save, np.save, a file write); and a statistic of validation data computed in the function that loads it
    rather than in an evaluation function."""

    def __init__(self, units: list) -> None:
        self.units = [u for u in units if isinstance(u.tree, ast.Module)]
        self.defs: dict[str, list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
        self.classes: set[str] = set()
        self.modules: set[str] = set()  # names bound by imports (library code: data flows through it)
        for u in self.units:
            for node in ast.walk(u.tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.defs.setdefault(node.name, []).append((u.name, node))
                elif isinstance(node, ast.ClassDef):
                    self.classes.add(node.name)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    self.modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
        self.attrs: set[str] = set()  # attribute names validation data was stored under (`self.val_cache = …`)
        self.returns: dict[int, bool] = {}
        self.found: list[tuple[str, int, str]] = []
        self.visiting: set[tuple[int, frozenset]] = set()

    # -- expressions
    def tainted(self, e: ast.AST | None, env: set[str]) -> bool:
        if e is None:
            return False
        if isinstance(e, ast.Name):
            return e.id in env or _val_name(e.id)
        if isinstance(e, ast.Attribute):
            if e.attr in SIZE_ATTRS:
                return False
            return _val_name(e.attr) or e.attr in self.attrs or self.tainted(e.value, env)
        if isinstance(e, ast.Constant):
            return _val_literal(e.value)
        if isinstance(e, ast.Call):
            return self.call_tainted(e, env)
        if isinstance(e, (ast.Lambda, ast.FunctionDef)):
            return False
        return any(self.tainted(c, env) for c in ast.iter_child_nodes(e))

    def call_tainted(self, e: ast.Call, env: set[str]) -> bool:
        args = list(e.args) + [k.value for k in e.keywords]
        f = e.func
        if isinstance(f, ast.Attribute):
            if f.attr in SCALAR_METHODS or (f.attr in FULL_REDUCTIONS and not args):
                return False
            if f.attr in self.defs and not self.tainted(f.value, env) and _root(f).__class__ is ast.Name and (
                    _root(f).id not in self.modules):  # a method of the code's own classes
                return self.follow(f.attr, e, env, method=True)
            return self.tainted(f.value, env) or any(self.tainted(a, env) for a in args)
        if isinstance(f, ast.Name):
            if f.id in SCALAR_FUNCS:
                return False
            if f.id in self.defs:
                return self.follow(f.id, e, env)
            words = _words(f.id)
            if words & VAL_WORDS and words & LOADER_WORDS:
                return True
            if f.id in self.classes or f.id in self.modules or hasattr(builtins, f.id) or f.id in STATISTICS:
                return any(self.tainted(a, env) for a in args)
            return False  # an opaque callable (a model, a compiled function): its output is a score, not the data
        return any(self.tainted(a, env) for a in args) or self.tainted(f, env)

    def follow(self, name: str, call: ast.Call, env: set[str], method: bool = False) -> bool:
        """Whether the code's function `name` returns validation data when called so; its body is scanned with the
        parameters the call hands validation data."""
        hit = False
        for unit, fn in self.defs[name]:
            params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            if method and params[:1] in (["self"], ["cls"]):
                params = params[1:]
            tainted = {p for p, a in zip(params, call.args, strict=False)
                       if not isinstance(a, ast.Starred) and self.tainted(a, env)}
            tainted |= {k.arg for k in call.keywords if k.arg and self.tainted(k.value, env)}
            if any(isinstance(a, ast.Starred) and self.tainted(a, env) for a in call.args) and fn.args.vararg:
                tainted.add(fn.args.vararg.arg)
            hit |= self.scan(unit, fn, frozenset(tainted), driver=False)
        return hit

    # -- statements
    def scan(self, unit: str, fn: ast.AST, given: frozenset, driver: bool) -> bool:
        """Scan one function (or a module) with `given` names holding validation data; return whether it returns
        validation data."""
        key = (id(fn), given)
        if key in self.returns:
            return self.returns[key]
        if key in self.visiting:
            return False
        self.visiting.add(key)
        env = set(given)
        fresh: set[str] = set()  # buffers this function allocates itself: scratch, not state
        body = fn.body if isinstance(fn, ast.Module) else fn.body
        returns = False
        for _ in range(2):  # a loop's later assignments reach its earlier uses
            for node in _walk_body(body):
                returns |= self.statement(unit, node, env, fresh, driver)
        self.visiting.discard(key)
        self.returns[key] = returns
        return returns

    def statement(self, unit: str, node: ast.AST, env: set[str], fresh: set[str], driver: bool) -> bool:
        if isinstance(node, ast.Return):
            return self.tainted(node.value, env)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            val = self.tainted(node.value, env)
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                        if val:
                            env.add(sub.id)
                        elif _allocates(node.value):
                            fresh.add(sub.id)
                if isinstance(t, (ast.Attribute, ast.Subscript)):
                    keyed = isinstance(t, ast.Subscript) and self.tainted(t.slice, env)
                    self.store(unit, node, t, val or (keyed and driver), env, fresh, driver)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            if self.tainted(node.iter, env):
                env |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None and self.tainted(item.context_expr, env):
                    env |= {n.id for n in ast.walk(item.optional_vars) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.NamedExpr) and self.tainted(node.value, env):
            env.add(node.target.id)
        elif isinstance(node, ast.Call):
            self.call(unit, node, env, fresh, driver)
        return False

    def call(self, unit: str, node: ast.Call, env: set[str], fresh: set[str], driver: bool) -> None:
        args = list(node.args) + [k.value for k in node.keywords]
        f, tail = node.func, _call_tail(node)
        if not any(self.tainted(a, env) for a in args):
            return
        if isinstance(f, ast.Name) and f.id in self.defs or isinstance(f, ast.Attribute) and f.attr in self.defs and (
                not self.tainted(f.value, env)):
            self.call_tainted(node, env)  # follow it: the helper's own writes are scanned
            return
        what = ast.unparse(node)[:80]
        if tail in SERIALIZE:
            self.found.append((unit, node.lineno, f"validation data is serialized: {what}"))
        elif tail in ("Parameter", "register_buffer", "register_parameter", "load_state_dict"):
            self.found.append((unit, node.lineno, f"validation data becomes model state: {what}"))
        elif isinstance(f, ast.Attribute) and IN_PLACE.match(tail) and not self.tainted(f.value, env):
            self.store(unit, node, f.value, True, env, fresh, driver)
        elif driver and (tail in STATISTICS or _dotted(f).endswith("add.at")):
            self.found.append((unit, node.lineno, f"a statistic of validation data is computed outside "
                                                  f"evaluation: {what}"))

    def store(self, unit: str, node: ast.AST, target: ast.AST, val: bool, env: set[str], fresh: set[str],
              driver: bool) -> None:
        """Validation data written into `target` (an attribute, an item, an in-place method's receiver)."""
        if not val:
            return
        root = _root(target)
        name = root.id if isinstance(root, ast.Name) else ""
        if name in fresh or name in env:  # a buffer of its own, or one that holds validation data already
            if name:
                env.add(name)
            return
        if isinstance(target, ast.Attribute) and name == "self" and isinstance(target.value, ast.Name):
            self.attrs.add(target.attr)  # an object keeping the data (an evaluator's `self.tokens`): followed
            return
        if not driver and not {"weight", "bias", "data"} & set(_dotted(_root_chain(target)).split(".")):
            return  # a helper's own working state (a model's activations, a cache it was handed)
        self.found.append((unit, node.lineno, f"validation data is written into {ast.unparse(target)[:60]}: "
                                              f"{ast.unparse(node)[:80]}"))

    def run(self) -> list[tuple[str, int, str]]:
        for u in self.units:
            drivers = [u.tree] + [n for n in ast.walk(u.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                                  and _loads_val(n)]
            for fn in drivers:
                self.scan(u.name, fn, frozenset(), driver=True)
        seen, out = set(), []
        for f in self.found:
            if f[:2] not in seen:
                seen.add(f[:2])
                out.append(f)
        return out


def _allocates(value: ast.AST) -> bool:
    """A new buffer or container (`torch.zeros(…)`, `[]`, `{}`, a comprehension): the function's own scratch."""
    if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.Tuple, ast.ListComp, ast.DictComp, ast.SetComp)):
        return True
    return isinstance(value, ast.Call) and _call_tail(value) in FRESH


def _root_chain(node: ast.AST) -> ast.AST:
    """The attribute chain a target writes into, without its subscripts and calls (`m.w.weight[:, 0]` -> m.w.weight)."""
    while isinstance(node, (ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _call_tail(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _walk_body(body: list[ast.stmt]):
    """Every statement and call of a body in order, not entering nested functions or classes."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _loads_val(fn: ast.AST) -> bool:
    """A function that binds validation data itself (not handed it): where a run drives training and evaluation."""
    params = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    for node in _walk_body(fn.body):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and _val_name(n.id) and n.id not in params:
                        return True
    return False


# ---------------------------------------------------------------- code that can reach the network
# modules whose use reaches the network (a download, an upload, a connection): imported, or named by a dotted path
NETWORK_MODULES = {
    "socket", "ssl", "http.client", "http.cookiejar", "urllib.request", "urllib2", "urllib3", "ftplib", "smtplib",
    "telnetlib", "poplib", "imaplib", "nntplib", "xmlrpc.client", "webbrowser", "multiprocessing.connection",
    "requests", "httpx", "aiohttp", "httplib2", "pycurl", "websocket", "websockets", "grpc", "paramiko", "fabric",
    "huggingface_hub", "datasets", "transformers", "diffusers", "timm", "tiktoken", "sentence_transformers",
    "modelscope", "kagglehub", "kaggle", "gdown", "wandb", "mlflow", "comet_ml", "neptune", "clearml", "fsspec",
    "gcsfs", "s3fs", "adlfs", "smart_open", "boto3", "botocore", "s3transfer", "google.cloud", "azure", "git",
    "pygit2", "dvc", "torch.hub", "torch.utils.model_zoo", "torchvision.datasets", "tensorflow_datasets", "openai",
    "anthropic", "pip", "ensurepip"}
# programs that fetch whatever their arguments; git and the installers only with a fetching subcommand
NETWORK_PROGRAMS = {"curl", "wget", "rsync", "scp", "sftp", "ftp", "ssh", "aria2c", "nc", "ncat", "netcat", "telnet",
                    "huggingface-cli", "gsutil", "aws", "az", "gcloud", "rclone", "s3cmd", "azcopy", "kaggle",
                    "gdown", "wandb", "axel", "lftp", "httpie", "http", "https"}
GIT_LOCAL = {"rev-parse", "status", "diff", "log", "show", "describe", "branch", "ls-files", "hash-object", "init",
             "add", "commit", "config", "tag", "stash", "apply", "blame", "shortlog", "version", "--version"}
INSTALLERS = {"pip", "pip3", "uv", "conda", "mamba", "micromamba", "apt", "apt-get", "npm", "yarn", "cargo", "hf",
              "poetry", "pipx", "brew", "dnf", "yum", "apk", "go", "gem"}
INSTALL_LOCAL = {"list", "freeze", "show", "--version", "-V", "version", "info", "env", "check"}
SPAWN = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput", "system", "popen",
         "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnl", "spawnle",
         "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawn", "create_subprocess_exec",
         "create_subprocess_shell", "posix_spawn", "posix_spawnp", "startfile"}
URL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*://|git@[\w.-]+:|www\.)", re.I)
HUB_CALLS = {"from_pretrained", "snapshot_download", "hf_hub_download", "load_dataset", "hub_download",
             "cached_download", "load_state_dict_from_url", "download_url_to_file", "urlretrieve", "urlopen"}
# calls a URL may be handed without being fetched: a message, a comparison, a format
MESSAGE = re.compile(r"(?i)^(?:print\w*|\w*log\w*|warn\w*|info|debug|error|critical|exception|write|writelines|"
                     r"format|add_argument|echo|append|join|startswith|endswith|replace|split|match|search|"
                     r"fullmatch|sub|compile|get|getenv|str|repr|len)$")


def _module_hit(name: str) -> str | None:
    return next((m for m in NETWORK_MODULES if name == m or name.startswith(m + ".")), None)


def network_uses(unit, files: set[str]) -> list[tuple[int, str]]:
    """Where a parsed code unit can reach the network: an import of a network-capable module (or a dotted use, or a
    dynamic import by literal), a process spawned running a network program, git's fetching subcommands or an
    installer, a hub loader (`from_pretrained`, `load_dataset`) on anything but a shipped path, and a URL literal
    handed to a call other than a message. Names bound to string literals are resolved (`INIT_URL = "https://…"`)."""
    tree = unit.tree
    if not isinstance(tree, ast.Module):
        return []
    consts: dict[str, str] = {}
    aliases: dict[str, str] = {}  # local name -> the module path it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    consts[t.id] = node.value.value
        elif isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def strings(e: ast.AST) -> list[str]:
        """The string values an argument expression holds (literals, names bound to literals, list items)."""
        if isinstance(e, ast.Constant) and isinstance(e.value, str):
            return [e.value]
        if isinstance(e, ast.Name) and e.id in consts:
            return [consts[e.id]]
        if isinstance(e, (ast.List, ast.Tuple)):
            return [s for x in e.elts for s in strings(x)]
        if isinstance(e, ast.JoinedStr):
            return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in e.values)]
        if isinstance(e, ast.BinOp):
            return ["".join(strings(e.left) + strings(e.right))]
        return []

    def full(node: ast.AST) -> str:
        d = _dotted(node)
        head, _, rest = d.partition(".")
        return (aliases.get(head, head) + ("." + rest if rest else "")) if d else ""

    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [f"{node.module}.{a.name}" for a in node.names] if node.module and not node.level else [])
            for n in names:
                if m := _module_hit(n):
                    out.append((node.lineno, f"imports {m}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            d = full(node)
            if (m := _module_hit(d)) and "." in m and d.count(".") >= m.count("."):
                out.append((node.lineno, f"uses {m}"))
        elif isinstance(node, ast.Call):
            tail = _call_tail(node)
            name = full(node.func)
            args = list(node.args) + [k.value for k in node.keywords]
            if tail in ("import_module", "__import__") and node.args and (
                    m := _module_hit(next(iter(strings(node.args[0])), ""))):
                out.append((node.lineno, f"imports {m} dynamically"))
            if tail in SPAWN and name.split(".")[0] in ("subprocess", "os", "pty", "asyncio", tail, ""):
                argv = [w for a in (node.args[:2] if tail.startswith(("exec", "spawn")) else node.args[:1])
                        for s in strings(a) for w in _shell_words(s)]
                if what := _network_command(argv):
                    out.append((node.lineno, f"runs {what}"))
            if tail in HUB_CALLS:
                paths = [s for a in args for s in strings(a)]
                if not paths or not all(s.strip("./") in files or any(f.startswith(s.strip("./") + "/")
                                                                     for f in files) for s in paths[:1]):
                    out.append((node.lineno, f"{tail}({', '.join(map(repr, paths[:1])) or '…'}): a hub/URL loader"))
            if not MESSAGE.match(tail):
                urls = [s for a in args if not isinstance(a, ast.JoinedStr) for s in strings(a) if URL.match(s)]
                if urls:
                    out.append((node.lineno, f"{tail or 'a call'} is handed the URL {urls[0][:60]!r}"))
    seen: set[int] = set()
    return [o for o in sorted(out) if not (o[0] in seen or seen.add(o[0]))]


def _shell_words(s: str) -> list[str]:
    """A command string's words, each command of a `;`/`&&`/`|` chain starting with its program."""
    return [w for w in re.split(r"\s+|(?=[;&|])|(?<=[;&|])", s) if w]


def _network_command(argv: list[str]) -> str | None:
    """The network program an argv (or a shell line split into words) runs, if any."""
    starts = [0] + [i + 1 for i, w in enumerate(argv) if w in (";", "&", "&&", "|", "||", "sudo", "env", "-c",
                                                                 "exec", "nohup", "time")]
    for i in starts:
        if i >= len(argv):
            continue
        prog = argv[i].rsplit("/", 1)[-1].strip("\"'")
        rest = [w.strip("\"'") for w in argv[i + 1:i + 4] if not w.startswith("-")]
        if prog in NETWORK_PROGRAMS:
            return " ".join(argv[i:i + 3])
        if prog == "git" and (not rest or rest[0] not in GIT_LOCAL):
            return " ".join(argv[i:i + 3])
        if prog in INSTALLERS and rest[:1] != [] and rest[0] not in INSTALL_LOCAL:
            return " ".join(argv[i:i + 3])
        if re.fullmatch(r"python[\d.]*|sys\.executable", prog) and "-m" in argv[i + 1:i + 3]:
            mod = argv[argv.index("-m", i) + 1] if argv.index("-m", i) + 1 < len(argv) else ""
            if _module_hit(mod) or mod in INSTALLERS:
                return " ".join(argv[i:i + 4])
    return None
