"""The code a records folder runs, as the static rules read it: train_gpt.py (decoded) and every local file it
reaches (THREATS.md §4).

`reachable_local_code`: the local files train_gpt.py imports, exec's or names (an AST scan, then a transitive regex
scan of the helpers reached), with their sizes: what SIZE.CODE counts. `code_units`: the same files as source the
scans read. A rule that looked at train_gpt.py alone passed a folder whose train_gpt.py is `import helper` or
`exec(open("helper.py").read())` (a merged record ships that stub) and whose cheat is in the helper.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from validator.rules.base import FolderContext, script_text
from validator.wrapper import decode_wrapper

CODE_SUFFIXES = {".py", ".cpp", ".cu", ".c", ".h", ".cuh", ".so", ".pyd"}
IMPORT_RX = re.compile(r"(?:^|[;:])\s*(?:from|import)\s+([A-Za-z_]\w*)", re.M)
DYN_IMPORT_RX = re.compile(r"(?:import_module|__import__)\(\s*[\"']([A-Za-z_]\w*)")  # a module named by a literal
SCRIPT = "train_gpt.py"


@dataclass(frozen=True)
class CodeUnit:
    """One Python file the run executes: its name in the folder, the source it runs (a wrapper's payload decoded),
    its syntax tree or the SyntaxError, and why a wrapper in it could not be read (None: not wrapped, or read)."""

    name: str
    source: str
    tree: ast.Module | SyntaxError
    problem: str | None = None

    @property
    def lines(self) -> list[str]:
        return self.source.splitlines()


def code_units(ctx: FolderContext) -> list[CodeUnit]:
    """train_gpt.py, then each local .py file it reaches (sorted by name); [] without a train_gpt.py (cached)."""
    cached = ctx.__dict__.get("_code_units")
    if cached is not None:
        return cached
    out: list[CodeUnit] = []
    if ctx.script_decoded is not None:
        src, _, problem = ctx.script_decoded
        out.append(_unit(SCRIPT, src, problem))
        for name in sorted(n for n in reachable_local_code(ctx) if n.endswith(".py")):
            path = ctx.root / name
            src, _, problem = decode_wrapper(script_text(path))
            encoding = problem and "utf-8" or _declared_encoding(path)
            if encoding not in ("utf-8", "utf-8-sig"):  # import decodes it so, `exec(open(f).read())` as UTF-8
                problem = f"it declares the encoding {encoding!r}: an import and an open() read different code"
            out.append(_unit(name, src, problem))
    ctx.__dict__["_code_units"] = out
    return out


def _declared_encoding(path: Path) -> str:
    """The encoding a file's PEP 263 line declares (UTF-8 without one); an unknown one is returned as named."""
    try:
        return tokenize.detect_encoding(io.BytesIO(path.read_bytes()).readline)[0]
    except SyntaxError as exc:
        return str(exc)


def _unit(name: str, source: str, problem: str | None) -> CodeUnit:
    try:
        tree: ast.Module | SyntaxError = ast.parse(source, filename=name)
    except SyntaxError as exc:
        tree = exc
    except ValueError as exc:  # a NUL byte in the source
        tree = SyntaxError(str(exc))
    return CodeUnit(name, source, tree, problem)


def reachable_local_code(ctx: FolderContext) -> dict[str, int]:
    """Local files train_gpt.py imports, exec's or compiles (path in the folder -> bytes), found by an AST scan and a
    transitive scan of the helpers reached (cached). Files are told apart by their path: a helper and a file of the
    same name in a sub-folder are two files, each reached where its name or its module is."""
    cached = ctx.__dict__.get("_reachable")
    if cached is not None:
        return cached
    tree = ctx.tree
    if tree is None:
        return {}
    local = {str(p.relative_to(ctx.root)): p for p in sorted(ctx.root.rglob("*"))
             if p.is_file() and p.suffix in CODE_SUFFIXES}
    modules = _modules(ctx.root, local)
    out: dict[str, int] = {}

    def reach(names: set[str]) -> None:
        out.update({f: local[f].stat().st_size for f in names if f != SCRIPT})

    if isinstance(tree, SyntaxError):  # e.g. PEP 701 f-strings on an older interpreter: fall back to regexes
        reach(_named_in_text(ctx.script_source[0] if ctx.script_source else "", local, modules))
        return _transitive(ctx, out, local, modules)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        elif _call_name(node) in ("import_module", "__import__") and _literal_arg(node):
            names = [_literal_arg(node).split(".")[0]]
        for n in names:
            reach(modules.get(n, set()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 300:
            reach({f for f, p in local.items() if node.value.endswith(p.name)})
            reach(modules.get(node.value, set()) if node.value.isidentifier() else set())  # `python -m helper`
    return _transitive(ctx, out, local, modules)


def _modules(root: Path, local: dict[str, Path]) -> dict[str, set[str]]:
    """What an import of each top-level name may run: the files of that module name (`helper.py`, an extension
    `fastkern.cpython-311-x86_64-linux-gnu.so`) anywhere in the folder (a sys.path edit reaches a sub-folder's), and
    every code file under a folder of that name: a package, with or without `__init__.py` (PEP 420 namespace
    packages import too). Over-reaching only makes the scans read more."""
    modules: dict[str, set[str]] = {}
    for rel, p in local.items():
        modules.setdefault(p.name.split(".")[0], set()).add(rel)
    for d in (d for d in root.rglob("*") if d.is_dir()):
        inside = {f for f in local if Path(f).is_relative_to(d.relative_to(root))}
        modules.setdefault(d.name, set()).update(inside)
    return modules


def _named_in_text(text: str, local: dict[str, Path], modules: dict[str, set[str]]) -> set[str]:
    """The local files a source text reaches by a regex scan: modules it imports, files whose names it quotes."""
    found = {f for rx in (IMPORT_RX, DYN_IMPORT_RX) for m in rx.finditer(text) for f in modules.get(m.group(1), ())}
    return found | {f for f, p in local.items() if re.search(r"[\"'/]" + re.escape(p.name) + r"[\"']", text)}


def _transitive(ctx: FolderContext, out: dict[str, int], local: dict[str, Path],
                modules: dict[str, set[str]]) -> dict[str, int]:
    """Add local files referenced by reached helper modules (regex scan, to a fixed point); cache the result."""
    todo = [n for n in out if n.endswith(".py")]
    while todo:
        text = local[todo.pop()].read_text(encoding="utf-8", errors="replace")
        for name in _named_in_text(text, local, modules) - set(out) - {SCRIPT}:
            out[name] = local[name].stat().st_size
            if name.endswith(".py"):
                todo.append(name)
    ctx.__dict__["_reachable"] = out
    return out


# What runs code given at run time. Any reference to one is judged, not only a call by its usual name: an alias
# (`_e = exec`), an attribute (`builtins.exec`), a lookup (`__builtins__.__dict__["eval"]`), a shadowing definition
# (`def exec`) or an aliased import (`from runpy import run_path as rp`) is code the validator cannot follow.
NAMES_RUN = {"exec", "eval", "compile", "__import__", "__builtins__", "builtins"}
ATTRS_RUN = {"exec", "__import__", "__builtins__", "import_module", "run_path", "run_module", "spec_from_file_location",
             "spec_from_loader", "SourceFileLoader", "SourcelessFileLoader", "ExtensionFileLoader", "load_source",
             "load_compiled", "load_dynamic", "FunctionType", "CodeType"}
LOADS_MODULE = {"import_module", "__import__", "run_module"}  # by module name: a literal one is an import
# by file: the path argument must name a file the scans read (a `.py` the script reaches)
LOADS_FILE = {"run_path": 0, "spec_from_file_location": 1, "SourceFileLoader": 1, "SourcelessFileLoader": 1,
              "ExtensionFileLoader": 1, "load_source": 1, "load_compiled": 1, "load_dynamic": 1}
UNPICKLERS = {"pickle", "marshal", "dill", "cloudpickle", "_pickle"}  # their load/loads run code from bytes


def unread_code(unit: CodeUnit, units: list[CodeUnit]) -> list[tuple[int, str]]:
    """(line, code) of each place in `unit` that runs code the static rules do not read: exec/eval/compile of anything
    but a reached local file's text (`exec(open(...helper.py).read())`), a module or file loaded by a name computed at
    run time or from a file the scans do not read, code from bytes (pickle/marshal loads, `torch.load(weights_only=
    False)`), and any other reference to these (NAMES_RUN, ATTRS_RUN, string lookups): an alias, an attribute, a
    shadowing definition. A name a function or class binds itself (a parameter or field called `compile`) is its
    own. A wrapper's own exec is read (its payload is the unit's source)."""
    if not isinstance(unit.tree, ast.Module):
        return []
    files = {Path(u.name).name for u in units[1:]}
    readable = [n for n in ast.walk(unit.tree) if isinstance(n, ast.Call) and _readable_call(n, files)]
    allowed = {id(n) for n in readable} | {id(n.func) for n in readable}
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, local: frozenset[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            local = local | _bound_in(node)
        if id(node) not in allowed and _runs_code(node, local):
            out.append((node.lineno, ast.unparse(node).splitlines()[0][:80]))
        for child in ast.iter_child_nodes(node):
            visit(child, local)

    visit(unit.tree, frozenset())
    return out


def _runs_code(node: ast.AST, local: frozenset[str]) -> bool:
    if isinstance(node, ast.Call) and (_loads_bytes(node) or _call_name(node) in LOADS_MODULE | set(LOADS_FILE)):
        return True  # a loader call (the readable ones are allowed by the caller)
    if isinstance(node, ast.Name):
        return node.id in NAMES_RUN and node.id not in local
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name in NAMES_RUN
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any(a.name in NAMES_RUN or (a.name in ATTRS_RUN and a.asname) for a in node.names) or (
            isinstance(node, ast.ImportFrom) and node.module in UNPICKLERS)
    return (isinstance(node, ast.Attribute) and node.attr in ATTRS_RUN) or _looked_up(node)


def _bound_in(scope: ast.AST) -> frozenset[str]:
    """The names a function, lambda or class binds in its own body: parameters, assignment and annotation targets
    (not in nested scopes)."""
    names: set[str] = set()
    if not isinstance(scope, ast.ClassDef):
        a = scope.args
        names |= {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None}
    body = scope.body if isinstance(scope.body, list) else [scope.body]
    for stmt in body:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                names.add(n.id)
    return frozenset(names)


LOOKUP_MODULES = {"importlib", "runpy", "types", "sys", *UNPICKLERS}  # getattr(m, <computed>) on these: a lookup


def _looked_up(node: ast.AST) -> bool:
    """A lookup of a code-running name by string: `x["import_module"]`, `getattr(x, "exec")`, or `getattr(m, ...)`
    with a computed name on a module that holds loaders (LOOKUP_MODULES)."""
    runs = NAMES_RUN | ATTRS_RUN
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value in runs
    if _call_name(node) in ("getattr", "__getattribute__") and len(node.args) >= 2:
        what, attr = node.args[0], node.args[1]
        if isinstance(attr, ast.Constant):
            return attr.value in runs
        return isinstance(what, ast.Name) and what.id in LOOKUP_MODULES
    return False


def _readable_call(node: ast.Call, files: set[str]) -> bool:
    """A call of code the scans read: exec/compile of a reached file's text, an import by a literal name, a file
    loader whose path names a reached file."""
    name = _call_name(node)
    if name in ("exec", "compile") and isinstance(node.func, ast.Name):
        return bool(node.args) and _reads_local_file(node.args[0], files)
    if name in LOADS_MODULE:
        return _literal_arg(node) is not None
    if name in LOADS_FILE:
        at = LOADS_FILE[name]
        path = node.args[at] if len(node.args) > at else None
        return path is not None and _names_reached_file(path, files)
    return False


def _loads_bytes(node: ast.Call) -> bool:
    """pickle.loads(...)-style calls and `torch.load(..., weights_only=False)`: code from bytes."""
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id in UNPICKLERS and func.attr in ("load", "loads", "Unpickler"):
            return True
        if func.value.id == "torch" and func.attr == "load":
            return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is False
                       for k in node.keywords)
    return False


def _names_reached_file(node: ast.AST, files: set[str]) -> bool:
    """A path expression made of literals, `__file__` and calls on them, with no indexing, whose file-like literals
    all name the script or a reached file, at least one of them a reached file."""
    if any(isinstance(n, ast.Subscript) for n in ast.walk(node)):
        return False
    named = [Path(c.value).name for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)
             and "." in Path(c.value).name]
    return bool(named) and all(n in files or n == SCRIPT for n in named) and any(n in files for n in named)


def _call_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)


def _literal_arg(node: ast.Call) -> str | None:
    arg = node.args[0] if node.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _reads_local_file(node: ast.AST, files: set[str]) -> bool:
    """`open(E).read()` / `Path(E).read_text()` whose path E names a reached file (`_names_reached_file`), decoded as
    the scans read it: UTF-8 (the default), or bytes (`"rb"`: exec honours the file's own PEP 263 line, which
    `code_units` checks). Any other encoding, an error handler or a reader the scans do not know reads other code."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("read", "read_text") and _names_reached_file(node.func.value, files)):
        return False
    opener = node.func.value
    return (isinstance(opener, ast.Call) and _call_name(opener) in ("open", "Path") and len(opener.args) <= 2
            and all(_utf8_keyword(k) for k in (*opener.keywords, *node.keywords))
            and all(isinstance(a, ast.Constant) and str(a.value).lower().replace("-", "") == "utf8"
                    for a in node.args))


def _utf8_keyword(k: ast.keyword) -> bool:
    """A reader's keyword that keeps the text the scans read: a mode, or encoding UTF-8."""
    if k.arg == "mode":
        return True
    return k.arg == "encoding" and isinstance(k.value, ast.Constant) and \
        str(k.value.value).lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


# A format placeholder of str.format / %-formatting in a literal (`{:.4f}`, `{name}`, `%.4f`, `%s`)
PLACEHOLDER = re.compile(r"\{[^{}]*\}|%[-#0 +]*\d*(?:\.\d+)?[sdifgeEx%r]")


def print_templates(units: list[CodeUnit], must: tuple[str, ...]) -> list[re.Pattern] | None:
    """Every string the code can print that holds one of the words `must`, as a pattern: f-strings, literals with
    format placeholders and `+` chains of them, each value or placeholder any text. None where a unit cannot be
    read (nothing can be concluded)."""
    if not units or any(not isinstance(u.tree, ast.Module) or u.problem for u in units):
        return None
    out: list[re.Pattern] = []
    todo: list[ast.AST] = [u.tree for u in units]
    while todo:
        node = todo.pop()
        parts = _string_parts(node)
        if parts is None:  # not a string expression: its children may hold some
            todo.extend(ast.iter_child_nodes(node))
        elif any(w in "".join(p for p in parts if p is not None) for w in must):  # a whole one, not its pieces
            out.append(re.compile("".join(".*?" if p is None else _literal_pattern(p) for p in parts)))
    return out


def _string_parts(node: ast.AST) -> list[str | None] | None:
    """The pieces of a string expression: literal text, or None for a value (f-string field, operand that is no
    string expression). None: not a string expression."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value if isinstance(v, ast.Constant) else None for v in node.values]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_parts(node.left), _string_parts(node.right)
        if left is not None or right is not None:
            return [*(left or [None]), *(right or [None])]
    return None


def _literal_pattern(text: str) -> str:
    """A literal piece as a pattern: its format placeholders match any text."""
    pieces = PLACEHOLDER.split(text)
    return ".*?".join(re.escape(p) for p in pieces)
