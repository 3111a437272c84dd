"""Artifact-size rules: SIZE.CAP, SIZE.CODE, SIZE.CODE_WRAPPED, SIZE.LOG."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path
from statistics import mean

from validator.logs import is_log_file
from validator.rules.base import BLOB_BYTES, CAP, ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule
from validator.rules.code import CODE_SUFFIXES, code_units, reachable_local_code

DATA_PREP = re.compile(r"(prepare|download|tokeniz|build_|make_|lossless_caps|plot|analy|measure)", re.I)


def exec_stub_target(ctx: FolderContext) -> str | None:
    """If train_gpt.py is an exec(open(...)) stub, the local file it runs."""
    if ctx.script_bytes is None or ctx.script_bytes > 2000 or ctx.script_source is None:
        return None
    text = ctx.script_source[0]
    if "exec(" not in text or "open(" not in text:
        return None
    for name in reachable_local_code(ctx):
        if name.endswith(".py"):
            return name
    return None


# Files a folder ships that the run need not read: the PR's text, the logs the script writes, and the challenge's
# tokenizers (the CaseOps records ship theirs in tokenizers/). Their names and suffixes free none of them: a file the
# code READS is part of the artifact whatever it is called (weights in a README comment, a `.txt`, a JSON field).
NOT_ARTIFACT = {"readme.md", "submission.json", "requirements.txt"}
TOKENIZER_SUFFIXES = (".model", ".vocab")
DOC_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".svg", ".pdf")
# What a SentencePiece tokenizer of V pieces needs: a normalization table (the largest built-in rule, nmt_nfkc_cf,
# compiles to 248 KB; identity to none) and, per piece, its text (at most 16 characters) and score. The challenge's
# and the merged records' tokenizers: 13.7-15.9 bytes a piece in a `.model` past its table, 8-13.4 in a `.vocab`.
TOKENIZER_TABLE_BYTES = 262_144
TOKENIZER_PIECE_BYTES = 32
MAX_VOCAB = 65_536  # pieces a tokenizer may hold when no log names the run's vocabulary


def loaded_data_files(ctx: FolderContext) -> list[tuple[str, int]]:
    """(file, bytes) of what the folder ships for the run to read besides its code: a file the code names or matches
    with a glob pattern, whatever its suffix (weights in a `.png` the README shows as a figure), and the files that
    are no document, log or tokenizer when together they exceed BLOB_BYTES (weights split into 999 KB parts).
    README.md, submission.json, requirements.txt and logs count when the code READS them (a log it only writes is
    free); a tokenizer is free only while it is one: SentencePiece loads it (or it is `piece<TAB>score` text), with
    no more pieces than the logs' vocabulary and no more bytes than such a tokenizer needs (`_tokenizer`).
    Weights loaded from such files are model bytes the logged artifact total does not count."""
    units = code_units(ctx)
    code_names = {u.name for u in units}
    text = "\n".join(u.source for u in units)
    patterns = {c.value for u in units if isinstance(u.tree, ast.Module) for c in ast.walk(u.tree)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and len(c.value) < 200
                and any(ch in c.value for ch in "*?[") and "." in c.value}
    reads = _FileReads(units)
    named, blobs = [], []
    for rel in ctx.files:
        name, suffix = rel.name, rel.suffix.lower()
        if str(rel) in code_names or suffix in CODE_SUFFIXES:
            continue
        size = (ctx.root / rel).stat().st_size
        if suffix in TOKENIZER_SUFFIXES and _tokenizer(ctx.root / rel, _vocab_limit(ctx)):
            continue  # the data pipeline's tokenizer, not weights
        if name.lower() in NOT_ARTIFACT or is_log_file(rel):
            if reads.read(rel):  # the PR's text and the script's own logs are free unless the run reads them
                named.append((str(rel), size))
            continue
        if name in text or any(fnmatch.fnmatch(str(rel), p.lstrip("./")) or fnmatch.fnmatch(name, Path(p).name)
                               for p in patterns):
            named.append((str(rel), size))
        elif suffix not in DOC_SUFFIXES:  # a `.model`/`.vocab` that is no tokenizer is a blob like any other
            blobs.append((str(rel), size))
    return named + (blobs if sum(n for _, n in blobs) > BLOB_BYTES else [])


def _vocab_limit(ctx: FolderContext) -> int:
    """The pieces a shipped tokenizer may hold: the vocabulary the logs (or the script's default) name, else
    MAX_VOCAB (cached)."""
    if "_vocab_limit" not in ctx.__dict__:
        from validator.rules.data import vocab_of

        ctx.__dict__["_vocab_limit"] = vocab_of(ctx) or MAX_VOCAB
    return ctx.__dict__["_vocab_limit"]


def _tokenizer(path: Path, vocab: int = MAX_VOCAB) -> bool:
    """A tokenizer file of at most `vocab` pieces and no bigger than such a tokenizer needs: a `.model` SentencePiece
    loads (its table + TOKENIZER_PIECE_BYTES a piece: protobuf keeps unknown fields, so bytes appended to a real model
    still load), or a `.vocab` of `piece<TAB>score` lines (TOKENIZER_PIECE_BYTES a line). Weights shipped under a
    tokenizer's suffix, or a tokenizer carrying more than its pieces, are data like any other."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    try:
        if suffix == ".model":
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            if size > TOKENIZER_TABLE_BYTES + TOKENIZER_PIECE_BYTES * vocab or not sp.Load(str(path)):
                return False
            pieces = sp.GetPieceSize()
            return pieces <= vocab and size <= TOKENIZER_TABLE_BYTES + TOKENIZER_PIECE_BYTES * pieces
        if suffix == ".vocab":
            if size > TOKENIZER_PIECE_BYTES * vocab:
                return False
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
            if not lines or len(lines) > vocab or size > TOKENIZER_PIECE_BYTES * len(lines):
                return False
            return all(len(parts := line.split("\t")) == 2 and _number(parts[1]) for line in lines)
    except Exception:  # noqa: BLE001 - untrusted bytes: not a tokenizer
        return False
    return False


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# How a path literal is built into the path a call receives, and the calls that use a path without reading the file.
PATH_BUILDERS = {"join", "Path", "PurePath", "PosixPath", "str", "fspath", "abspath", "realpath", "normpath",
                 "expanduser", "resolve", "absolute"}
DEFAULT_GETTERS = {"get", "getenv"}  # os.environ.get("LOG", "train.txt"): the default is the value
NO_READ_METHODS = {"write_text", "write_bytes", "touch", "unlink", "exists", "is_file", "is_dir", "mkdir"}
NO_READ_CALLS = {"exists", "isfile", "isdir", "getsize", "remove", "unlink", "makedirs", "mkdir", "FileHandler"}
WRITE_MODES = set("wax")


class _FileReads:
    """Whether the code reads a shipped file: a string literal naming it (the path, its tail after a `/` as in
    `f"{d}/README.md"` or `join(d, "README.md")`, or a glob pattern matching it) reaches a use that reads. Writing
    (`open(p, "w"/"a")`, `write_text`, a logging FileHandler) and looking (`exists`, `getsize`) are no reads; a name
    or attribute the path is assigned to is followed to its uses; anything else (a reader, a function the path is
    passed to, a mode built at run time) counts as a read (fail closed). Code that does not parse: any mention."""

    def __init__(self, units: list) -> None:
        self.units = units
        self.literals = [(u, c) for u in units if isinstance(u.tree, ast.Module) for c in ast.walk(u.tree)
                         if isinstance(c, ast.Constant) and isinstance(c.value, str) and 0 < len(c.value) < 300]
        self.parents: dict[int, dict[ast.AST, ast.AST]] = {}

    def read(self, rel: Path) -> bool:
        path = str(rel).replace("\\", "/")
        if any(not isinstance(u.tree, ast.Module) and rel.name in u.source for u in self.units):
            return True
        for unit, node in self.literals:
            if _names(node.value, path, rel.name) and self._use_reads(unit, node, set()):
                return True
        return False

    def _parent_map(self, unit) -> dict[ast.AST, ast.AST]:
        if id(unit) not in self.parents:
            self.parents[id(unit)] = {c: p for p in ast.walk(unit.tree) for c in ast.iter_child_nodes(p)}
        return self.parents[id(unit)]

    def _use_reads(self, unit, node: ast.AST, seen: set) -> bool:
        parents = self._parent_map(unit)
        node = _path_expr(node, parents)
        parent = parents.get(node)
        if isinstance(parent, ast.Call) and parent.func is not node:
            name = _call_name(parent)
            if name == "open" and parent.args and parent.args[0] is node:
                return _mode_reads(parent, 1)
            if name in NO_READ_CALLS:
                return False
            if name == "basicConfig" and any(k.value is node and k.arg == "filename" for k in parent.keywords):
                return False
            return True
        if isinstance(parent, ast.keyword):
            call = parents.get(parent)
            return not (isinstance(call, ast.Call) and (_call_name(call) in NO_READ_CALLS
                                                        or (_call_name(call) == "basicConfig"
                                                            and parent.arg == "filename")))
        if isinstance(parent, ast.Attribute) and parent.value is node:  # Path(p).open("w"), .write_text(...)
            call = parents.get(parent)
            if isinstance(call, ast.Call) and call.func is parent:
                if parent.attr == "open":
                    return _mode_reads(call, 0)
                if parent.attr in NO_READ_METHODS:
                    return False
            return True
        targets = (parent.targets if isinstance(parent, ast.Assign) else [parent.target]
                   if isinstance(parent, (ast.AnnAssign, ast.NamedExpr)) else [])
        if targets and getattr(parent, "value", None) is node:
            return any(self._name_reads(t, seen) for t in targets)
        if isinstance(parent, ast.Expr):  # a bare literal (a docstring): no use
            return False
        return True

    def _name_reads(self, target: ast.AST, seen: set) -> bool:
        """The uses of a name (or an attribute, `self.log_path`) a path is assigned to, in every unit."""
        if isinstance(target, ast.Name):
            key = ("name", target.id)
        elif isinstance(target, ast.Attribute):
            key = ("attr", target.attr)
        else:
            return True
        if key in seen or len(seen) > 20:
            return key not in seen
        seen.add(key)
        for unit in self.units:
            if not isinstance(unit.tree, ast.Module):
                continue
            for n in ast.walk(unit.tree):
                use = ((isinstance(n, ast.Name) and key == ("name", n.id))
                       or (isinstance(n, ast.Attribute) and key == ("attr", n.attr)))
                if use and isinstance(n.ctx, ast.Load) and self._use_reads(unit, n, seen):
                    return True
        return False


def _names(value: str, path: str, name: str) -> bool:
    """A literal naming the shipped file `path` (base name `name`): the path, a tail of a joined path, a glob."""
    v = value.replace("\\", "/")
    while v.startswith("./"):
        v = v[2:]
    if v in (path, name) or v.endswith("/" + path) or v.endswith("/" + name):
        return True
    return (any(ch in v for ch in "*?[") and "." in v
            and (fnmatch.fnmatch(path, v) or fnmatch.fnmatch(name, v.rsplit("/", 1)[-1])))


def _path_expr(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> ast.AST:
    """The largest expression that only builds a path from `node` (`f"{d}/x"`, `d / "x"`, `join(d, "x")`,
    `Path(...).resolve()`, `os.environ.get("K", "x")`)."""
    while True:
        p = parents.get(node)
        if isinstance(p, (ast.JoinedStr, ast.FormattedValue)) or (
                isinstance(p, ast.BinOp) and isinstance(p.op, (ast.Div, ast.Add))):
            node = p
        elif isinstance(p, ast.Call) and node in p.args and (
                _call_name(p) in PATH_BUILDERS or (_call_name(p) in DEFAULT_GETTERS and p.args.index(node) == 1)):
            node = p
        elif (isinstance(p, ast.Attribute) and p.attr in ("resolve", "absolute", "expanduser")
              and isinstance(parents.get(p), ast.Call) and parents[p].func is p):
            node = parents[p]
        else:
            return node


def _call_name(node: ast.Call) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)


def _mode_reads(call: ast.Call, index: int) -> bool:
    """An open() whose mode may read: any mode but a literal one that only writes (w, a, x without r or +)."""
    mode = call.args[index] if len(call.args) > index else next(
        (k.value for k in call.keywords if k.arg == "mode"), ast.Constant("r"))
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
        return True
    return not (set(mode.value) & WRITE_MODES) or "+" in mode.value or "r" in mode.value


def size_logs(ctx: FolderContext) -> list:
    """Logs that carry any size evidence."""
    return [lg for lg in ctx.logs if lg.total_bytes is not None or lg.model_bytes is not None or lg.total_mb]


MIB_RX = re.compile(r"(?:1024\s*\*\s*1024|2\s*\*\*\s*20|1048576|1 ?<< ?20)")


def mb_factor(ctx: FolderContext, unit: str) -> tuple[float, str]:
    """Bytes per printed 'MB': 1e6, unless the unit is MiB or the script computes its MB figures with 2**20
    (then a printed '16.00MB' is 16,777,216 bytes — the MiB-vs-MB confusion of PR #1399)."""
    if unit == "MiB":
        return float(2**20), "MiB"
    srcs = [ctx.script_source[0]] if ctx.script_source else []
    srcs += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(ctx.root.glob("*.py"))
             if p.name != "train_gpt.py" and p.stat().st_size < 1_000_000]
    if any(MIB_RX.search(ln) for src in srcs for ln in src.splitlines() if "MB" in ln):
        return float(2**20), "MB computed with 2**20 in train_gpt.py (MiB)"
    return 1e6, "MB (decimal)"


def check_cap(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    out: list[Finding] = []
    for lg in size_logs(ctx):
        f = ctx.rel(lg.path)
        if lg.total_bytes is not None:
            cap = lg.cap or CAP
            st = PASS if lg.total_bytes <= cap else FAIL
            out.append(r.finding(st, f"logged total {lg.total_bytes:,} bytes "
                                 f"{'<=' if st == PASS else '>'} {cap:,}", file=f, line=lg.total_bytes_line,
                                 expected=f"<= {cap}", found=lg.total_bytes))
        elif lg.total_mb is not None:
            value, half, unit, line = lg.total_mb
            factor, how = mb_factor(ctx, unit)
            lo, hi = (value - half) * factor, (value + half) * factor
            if lo > CAP:
                st, why = FAIL, f"= at least {lo:,.0f} bytes > {CAP:,}"
            elif hi > CAP:
                st, why = FAIL, (f"= {lo:,.0f}-{hi:,.0f} bytes: the printed precision cannot show <= {CAP:,} "
                                 "(log the size in bytes)")
            else:
                st, why = PASS, f"<= {hi:,.0f} bytes <= {CAP:,}"
            out.append(r.finding(st, f"logged total {value}{unit} ({how}) {why}", file=f, line=line,
                                 expected=f"<= {CAP}", found=round(hi)))
        over = [(k, n, no) for k, n, no in lg.artifact_totals if n > (lg.cap or CAP) and no != lg.total_bytes_line]
        for kind, n, no in over[:1]:  # an earlier artifact over the cap: the last line need not be the scored one
            out.append(r.finding(FAIL, f"the log's {kind} artifact totals {n:,} bytes > {lg.cap or CAP:,} (a later "
                                 "total does not make it fit)", file=f, line=no, expected=f"<= {lg.cap or CAP}",
                                 found=n))
        if lg.model_bytes is not None and lg.fmt == "text":  # no code line: the shipped script still counts
            logged = lg.code_bytes or 0
            code = logged if lg.code_kind == "compressed" else max(logged, ctx.script_bytes or 0)
            total = lg.model_bytes + code
            if total > CAP and (lg.total_bytes is None or lg.total_bytes <= CAP):
                out.append(r.finding(FAIL, f"model {lg.model_bytes:,} + counted code {code:,} = {total:,} > cap",
                                     file=f, expected=f"<= {CAP}", found=total))
    data = loaded_data_files(ctx)
    if data and not ctx.is_run_dir:
        extra = sum(n for _, n in data)
        logged = max((lg.total_bytes for lg in ctx.logs if lg.total_bytes is not None), default=0)
        if logged + extra > CAP or ctx.track == "record":
            out.append(r.finding(FAIL, f"the run reads {data[0][0]} ({data[0][1]:,} bytes"
                                 f"{f'; {len(data)} files, {extra:,} bytes in all' if len(data) > 1 else ''}) beside "
                                 f"its artifact: logged total {logged:,} + {extra:,} = {logged + extra:,} bytes; a "
                                 "record ships its weights inside the counted artifact", file=data[0][0],
                                 expected=f"<= {CAP}", found=logged + extra))
    for lg in ctx.logs:  # a size figure in a notation no pattern reads may be the largest: never skipped
        if lg.unread_size is not None and ctx.track == "record":
            no, text = lg.unread_size
            out.append(r.finding(FAIL, f"a size figure the validator cannot read: {text!r} (log sizes as an integer "
                                 "number of bytes)", file=ctx.rel(lg.path), line=no))
    bt = (ctx.submission or {}).get("bytes_total")
    if isinstance(bt, int) and bt > CAP:
        out.append(r.finding(FAIL, f"submission.json bytes_total {bt:,} > {CAP:,}", file="submission.json",
                             field="bytes_total", expected=f"<= {CAP}", found=bt))
    if not out:
        what = ("no size line in any log (submission.json's bytes_total is a claim, not evidence)"
                if isinstance(bt, int) else "no size evidence (no Total submission size line, no bytes_total)")
        if ctx.track == "record" and not ctx.is_run_dir:
            return [r.finding(FAIL, f"{what}: a record's logs must show it")]
        return [r.finding(SKIP, what)]
    fails = [x for x in out if x.status == FAIL]
    if fails:
        return fails
    return [r.finding(PASS, f"{len(out)} size figure(s) <= {CAP:,} (max {max(int(x.found) for x in out):,})")]


def check_code(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory: code_bytes computed by pgolf")]
    if ctx.script_path is None:
        return [r.finding(SKIP, "no train_gpt.py")]
    out: list[Finding] = []
    helpers = reachable_local_code(ctx)
    stub = exec_stub_target(ctx)
    logged = [lg.code_bytes for lg in ctx.logs if lg.code_bytes is not None]
    shipped = ctx.script_bytes or 0
    if stub:
        need = helpers[stub]
        if not logged or max(logged) < need:
            out.append(r.finding(FAIL, f"train_gpt.py is an exec stub running {stub} ({helpers[stub]:,} B); the logs "
                                 f"count {max(logged) if logged else 'no'} code bytes", file="train_gpt.py",
                                 expected=f">= {need}", found=max(logged) if logged else None))
    others = {k: v for k, v in helpers.items() if k != stub}
    if others:
        need = shipped + sum(others.values())
        compressed = any(lg.code_kind == "compressed" for lg in ctx.logs)
        if logged and not compressed and max(logged) < need:
            totals = [lg.total_bytes + need - lg.code_bytes for lg in ctx.logs
                      if lg.total_bytes is not None and lg.code_bytes is not None]
            over = f"; counting it, the largest total is {max(totals):,} B" if totals else ""
            above = bool(totals) and max(totals) > CAP
            over += f" > {CAP:,} (over the cap)" if above else ""
            out.append(r.finding(FAIL if above else WARN, f"local code reached from train_gpt.py is not counted: "
                                 f"{', '.join(f'{k} ({v:,} B)' for k, v in sorted(others.items()))}; "
                                 f"logged code {max(logged):,} B < {need:,} B{over}",
                                 severity=ERROR if above else WARN, file="train_gpt.py", expected=need,
                                 found=max(logged)))
    extra = sorted(str(p) for p in ctx.files if p.suffix in CODE_SUFFIXES - {".py"} and p.name not in helpers)
    if extra:
        out.append(r.finding(WARN, f"compiled-language sources shipped but not referenced by train_gpt.py: "
                             f"{', '.join(extra)}", severity=INFO))
    unref = sorted(str(p) for p in ctx.files if p.suffix == ".py" and p.name != "train_gpt.py"
                   and p.name not in helpers and str(p) not in helpers and not DATA_PREP.search(p.name))
    if unref:
        out.append(r.finding(WARN, f"other Python files shipped, not reached from train_gpt.py (must not be part "
                             f"of the run command): {', '.join(unref)}", severity=INFO))
    return out or [r.finding(PASS, "all code reached from train_gpt.py is counted" +
                             (f" ({', '.join(helpers)})" if helpers else " (single file)"))]


WRAP_FLOOR = 0.8  # logged compressed sizes of merged records: 0.93-1.05 x the estimate below
WRAP_FLOOR_RAW = 0.7  # ... and 0.78-1.0 x the raw-source estimate (sources this Python cannot parse)


def wrapper_estimate(src: str) -> tuple[int, bool]:
    """Bytes of an LZMA+b85 self-extractor of `src` with comments, layout and docstrings removed (ast.unparse): what
    pyminify --remove-literal-statements + LZMA reaches, within a few %; (estimate, from_parsed_source)."""
    import base64
    import lzma

    text, parsed = src, False
    try:
        tree = ast.parse(src)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        text, parsed = ast.unparse(tree), True
    except (SyntaxError, RecursionError, ValueError):
        pass
    data = lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2,
                                                                                  "preset": 9}])
    return len(base64.b85encode(data)) + 70, parsed


def check_wrapped(ctx: FolderContext) -> list[Finding]:
    r = RULES[2]
    comp = [lg for lg in ctx.logs if lg.code_kind == "compressed"]
    if not comp:
        return [r.finding(PASS, "code counted at its raw size (no 'Code size (compressed)' line)", severity=WARN)]
    out: list[Finding] = []
    shipped = ctx.script_bytes
    wrapped = bool(ctx.script_source and ctx.script_source[1])
    est = None
    for lg in comp:
        f = ctx.rel(lg.path)
        m = lg.code_bytes or 0
        if not wrapped and ctx.script_source is not None:
            est = est or wrapper_estimate(ctx.script_source[0])
            floor = (WRAP_FLOOR if est[1] else WRAP_FLOOR_RAW) * est[0]
            if m < floor:
                out.append(r.finding(FAIL, f"the log counts {m:,} B of compressed code, but the shipped train_gpt.py "
                                     f"compresses to about {est[0]:,} B even with comments and docstrings removed: the "
                                     "claimed code size is not this script's (ship the wrapper, or count the real "
                                     "size)", file=f, expected=f">= {floor:,.0f}", found=m))
                continue
        if wrapped and shipped == m:
            out.append(r.finding(PASS, f"ships the {m:,}-byte wrapper that the log counts", file=f, severity=WARN))
            continue
        model = lg.model_bytes if lg.model_bytes is not None else (lg.total_bytes or 0) - m
        strict_total = (shipped or 0) + model
        if wrapped and shipped > m and strict_total > CAP:  # the wrapper that ships is the code: its bytes count
            out.append(r.finding(FAIL, f"the shipped wrapper is {shipped:,} B, the log counts {m:,} B of code: with "
                                 f"the wrapper that runs the artifact is {strict_total:,} B, over the cap", file=f,
                                 expected=f"<= {CAP:,}", found=strict_total))
            continue
        msg = (f"wrapper convention: {m:,} B code + {model:,} B model = {m + model:,}; strict reading (shipped "
               f"train_gpt.py {shipped or 0:,} B + model) = {strict_total:,}")
        if wrapped:
            msg += f"; shipped wrapper is {shipped:,} B, not {m:,}"
        else:
            msg += "; wrapper not shipped (recompute with pinned python-minifier not done statically)"
        st = WARN if strict_total > 16_000_000 or wrapped else PASS
        out.append(r.finding(st, msg + (" > cap under the strict reading" if strict_total > 16_000_000 else ""),
                             severity=WARN, file=f, expected="<= 16000000 (strict)", found=strict_total))
    bad = [x for x in out if x.status == FAIL]
    warns = [x for x in out if x.status == WARN]
    return bad or warns or out[:1]


def check_log(ctx: FolderContext) -> list[Finding]:
    r = RULES[3]
    out: list[Finding] = []
    logs = [lg for lg in ctx.scoring] or size_logs(ctx)
    if not logs:
        return [r.finding(SKIP, "no scored log")]
    totals: list[int] = []
    helpers = reachable_local_code(ctx)
    stub = exec_stub_target(ctx)
    accepted = {ctx.script_bytes, (ctx.script_bytes or 0) + sum(helpers.values())}
    if stub:
        accepted |= {helpers[stub], helpers[stub] + (ctx.script_bytes or 0)}
    for lg in logs:
        f = ctx.rel(lg.path)
        if lg.total_bytes is None and lg.total_mb is not None:
            value, _, unit, line = lg.total_mb
            out.append(r.finding(WARN, f"the total is logged only in {unit} ({value}{unit}, line {line}): checked "
                                 "against the cap at its printed precision (SIZE.CAP); log bytes", severity=WARN,
                                 file=f, line=line))
            continue
        if lg.total_bytes is None:
            if lg.train_time_ms is not None:  # eval-only re-runs (e.g. TTT_EVAL_ONLY) print no size
                out.append(r.finding(FAIL, "training log has no final 'Total submission size … bytes' line", file=f))
            continue
        totals.append(lg.total_bytes)
        parts = (lg.model_bytes, lg.code_bytes)
        if parts[0] is not None and parts[1] is not None and parts[0] + parts[1] != lg.total_bytes:
            out.append(r.finding(WARN, f"total {lg.total_bytes:,} != model {lg.model_bytes:,} + code "
                                 f"{lg.code_bytes:,}", severity=WARN, file=f, line=lg.total_bytes_line,
                                 expected=lg.model_bytes + lg.code_bytes, found=lg.total_bytes))
        if (lg.fmt == "text" and lg.code_bytes is not None and lg.code_kind != "compressed"
                and ctx.script_bytes is not None and lg.code_bytes not in accepted):
            out.append(r.finding(WARN, f"logged code {lg.code_bytes:,} B != shipped train_gpt.py "
                                 f"{ctx.script_bytes:,} B (log from another version of the script?)", severity=WARN,
                                 file=f, expected=ctx.script_bytes, found=lg.code_bytes))
    bt = (ctx.submission or {}).get("bytes_total")
    if isinstance(bt, int) and totals:
        ok = bt in totals or bt in (round(mean(totals)), int(mean(totals)), max(totals))
        if not ok:
            listed = ", ".join(f"{t:,}" for t in totals)
            out.append(r.finding(WARN, f"bytes_total {bt:,} matches no log total ({listed}) nor their mean/max",
                                 severity=WARN, file="submission.json", field="bytes_total",
                                 expected=sorted(set(totals)), found=bt))
    return out or [r.finding(PASS, f"{len(totals)} log total(s) consistent (model + code; bytes_total)")]


RULES = [
    Rule("SIZE.CAP", "code bytes + compressed model bytes <= 16,000,000 (decimal) for every seed",
         "README FAQ 'What exactly counts toward the 16MB artifact size?'; PR #1809/#1835 rulings", ERROR,
         check_cap),
    Rule("SIZE.CODE", "all code that runs counts (exec stubs, helper modules, kernels)",
         "README FAQ 'All counted code should live in the train_gpt.py script'; PR #1420 precedent", ERROR,
         check_code, lower="uncounted helper code that keeps the total under the cap: WARN; shipped files not "
                           "reached from train_gpt.py: INFO"),
    Rule("SIZE.CODE_WRAPPED", "compressed-code (pyminify+LZMA+b85 wrapper) accounting only if the wrapper ships",
         "accepted practice from PR #1394/#1530; not README text", ERROR, check_wrapped,
         lower="the convention itself is accepted practice (WARN); a claimed compressed size that the shipped source "
               "cannot reach is an ERROR"),
    Rule("SIZE.LOG", "the log's last Total submission size line is the evidence and matches model + code + JSON",
         "README 'A train log, automatically produced by your script'; PR #1809/#1835 rulings", ERROR, check_log,
         lower="total != model + code, logged code != shipped size, bytes_total matching no log: WARN (provenance "
               "review; the cap itself is SIZE.CAP)"),
]
