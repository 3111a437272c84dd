"""The code a records folder runs, as the static rules read it: train_gpt.py (decoded) and every local file it
reaches (THREATS.md §4).

`reachable_local_code`: the local files train_gpt.py imports, exec's or names (an AST scan, then a transitive regex
scan of the helpers reached), with their sizes: what SIZE.CODE counts. `code_units`: the same files as source the
scans read. A rule that looked at train_gpt.py alone passed a folder whose train_gpt.py is `import helper` or
`exec(open("helper.py").read())` (a merged record ships that stub) and whose cheat is in the helper.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from validator.rules.base import FolderContext, script_text
from validator.wrapper import decode_wrapper

CODE_SUFFIXES = {".py", ".cpp", ".cu", ".c", ".h", ".cuh", ".so"}
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
        found = [p for p in ctx.root.rglob("*.py") if p.is_file()]
        paths = {**{p.name: p for p in found}, **{str(p.relative_to(ctx.root)): p for p in found}}
        for name in sorted(n for n in reachable_local_code(ctx) if n.endswith(".py") and n in paths):
            src, _, problem = decode_wrapper(script_text(paths[name]))
            out.append(_unit(str(ctx.rel(paths[name])), src, problem))
    ctx.__dict__["_code_units"] = out
    return out


def _unit(name: str, source: str, problem: str | None) -> CodeUnit:
    try:
        tree: ast.Module | SyntaxError = ast.parse(source, filename=name)
    except SyntaxError as exc:
        tree = exc
    except ValueError as exc:  # a NUL byte in the source
        tree = SyntaxError(str(exc))
    return CodeUnit(name, source, tree, problem)


def reachable_local_code(ctx: FolderContext) -> dict[str, int]:
    """Local files train_gpt.py imports, exec's or compiles (name -> bytes), found by an AST scan (cached)."""
    cached = ctx.__dict__.get("_reachable")
    if cached is not None:
        return cached
    tree = ctx.tree
    if tree is None:
        return {}
    local = {p.name: p for p in ctx.root.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES}
    stems = {Path(n).stem: n for n in local if n.endswith(".py")}
    for pkg in (d for d in ctx.root.rglob("*") if d.is_dir() and (d / "__init__.py").is_file()):
        files = {str(f.relative_to(ctx.root)): f for f in sorted(pkg.rglob("*.py"))}  # a package: all of its code
        local.update(files)
        stems[pkg.name] = str((pkg / "__init__.py").relative_to(ctx.root))
        ctx.__dict__.setdefault("_packages", {})[stems[pkg.name]] = list(files)
    out: dict[str, int] = {}
    if isinstance(tree, SyntaxError):  # e.g. PEP 701 f-strings on an older interpreter: fall back to regexes
        text = ctx.script_source[0] if ctx.script_source else ""
        for m in [*IMPORT_RX.finditer(text), *DYN_IMPORT_RX.finditer(text)]:
            if m.group(1) in stems and stems[m.group(1)] != "train_gpt.py":
                out[stems[m.group(1)]] = local[stems[m.group(1)]].stat().st_size
        for fname, p in local.items():
            if fname != "train_gpt.py" and re.search(r"[\"'/]" + re.escape(fname) + r"[\"']", text):
                out[fname] = p.stat().st_size
        return _transitive(ctx, out, local, stems)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        elif _call_name(node) in ("import_module", "__import__") and _literal_arg(node):
            names = [_literal_arg(node).split(".")[0]]
        for n in names:
            if n in stems and stems[n] != "train_gpt.py":
                out[stems[n]] = local[stems[n]].stat().st_size
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 300:
            for fname, p in local.items():
                if fname != "train_gpt.py" and node.value.endswith(fname):
                    out[fname] = p.stat().st_size
    return _transitive(ctx, out, local, stems)


def _transitive(ctx: FolderContext, out: dict[str, int], local: dict[str, Path],
                stems: dict[str, str]) -> dict[str, int]:
    """Add local files referenced by reached helper modules (regex scan, to a fixed point); cache the result."""
    todo = [n for n in out if n.endswith(".py")]
    while todo:
        text = local[todo.pop()].read_text(encoding="utf-8", errors="replace")
        found = {stems[m.group(1)] for rx in (IMPORT_RX, DYN_IMPORT_RX) for m in rx.finditer(text)
                 if m.group(1) in stems}
        found |= {f for f in local if re.search(r"[\"'/]" + re.escape(f) + r"[\"']", text)}
        for name in found - set(out) - {"train_gpt.py"}:
            out[name] = local[name].stat().st_size
            if name.endswith(".py"):
                todo.append(name)
    for init, files in ctx.__dict__.get("_packages", {}).items():  # a reached package brings every file in it
        if init in out:
            out.update({f: local[f].stat().st_size for f in files})
    ctx.__dict__["_reachable"] = out
    return out


# Calls that run code given to them at run time; the static rules read only files and wrapper payloads.
EXECUTES = {"exec", "eval", "compile"}
LOADS_MODULE = {"import_module", "__import__", "run_module"}  # by module name: a literal one is an import
# by file: the file must be one the scans read (a `.py` the script reaches), whatever its name's suffix
LOADS_FILE = {"run_path", "spec_from_file_location", "SourceFileLoader", "SourcelessFileLoader", "ExtensionFileLoader",
              "load_source", "load_compiled", "load_dynamic"}
BUILDS_CODE = {("marshal", "loads"), ("types", "FunctionType"), ("types", "CodeType")}


def unread_code(unit: CodeUnit, units: list[CodeUnit]) -> list[tuple[int, str]]:
    """(line, call) of each call in `unit` that runs code the static rules do not read: exec/eval/compile of anything
    but a reached local file's text (`exec(open(...helper.py).read())`), a module or file loaded by a name computed at
    run time or from a file the scans do not read (`SourceFileLoader("m", "kern.dat")`), code objects built from bytes.
    A wrapper's own exec is read (its payload is the unit's source)."""
    if not isinstance(unit.tree, ast.Module):
        return []
    files = {Path(u.name).name for u in units[1:]}
    own = {n.name for n in unit.tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}  # a function `eval`
    out = []
    for node in ast.walk(unit.tree):
        name = _call_name(node)
        if name in EXECUTES and isinstance(node.func, ast.Name) and name not in own:
            ok = bool(node.args) and _reads_local_file(node.args[0], files)
        elif name in LOADS_MODULE:
            ok = _literal_arg(node) is not None
        elif name in LOADS_FILE:
            ok = any(isinstance(c, ast.Constant) and isinstance(c.value, str) and Path(c.value).name in files
                     for c in ast.walk(node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value,
                                                                                              ast.Name):
            ok = (node.func.value.id, node.func.attr) not in BUILDS_CODE
        else:
            ok = True
        if not ok:
            out.append((node.lineno, ast.unparse(node)[:80]))
    return out


def _call_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)


def _literal_arg(node: ast.Call) -> str | None:
    arg = node.args[0] if node.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _reads_local_file(node: ast.AST, files: set[str]) -> bool:
    """`open(E).read()` / `Path(E).read_text()` (any receiver of .read/.read_text) with a literal in E naming one
    of `files`."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("read", "read_text")
            and any(isinstance(c, ast.Constant) and isinstance(c.value, str) and Path(c.value).name in files
                    for c in ast.walk(node.func.value)))
