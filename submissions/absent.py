"""ABSENT ATTRIBUTES (issue #11): an optional capability that no bundled object has is answered at bundle time.

The core asks plugin-made objects for optional parts by name, `getattr(loader, "warm_batches", None)`; in a bundle
where no code can give any object an attribute of that name, the call is its default (`hasattr(x, "name")`:
False), and `submissions.specialise.fold_sources` then drops the branches on it (`absent_attributes`).
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch

from submissions.lean import FUNCTIONS, pure, purity

# What any object may answer without the bundle storing it: the attributes of the library objects the core hands
# around (a receiver may be one of them; the rule trusts that a name the bundle never writes is not a library
# object's otherwise).
LIBRARY_OBJECTS = (object, type, torch.Tensor, torch.nn.Module, torch.optim.Optimizer, np.ndarray, torch.device)
ANY_NAME = ("__getattr__", "__getattribute__")  # a class of the bundle that defines one may have any attribute
QUERY = re.compile(r"\b(?:getattr|hasattr)\(")
REBOUND_QUERY = re.compile(r"\b(?:getattr|hasattr)\b(?!\()")  # `getattr` other than called: bound, passed, imported
FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[a-zA-Z%]")
CASES = ("upper", "lower")  # `f"{a}_{b}".upper()` writes no lower-case name
PATH_MODULES = {"os.path", "posixpath", "ntpath"}  # their `join` puts a separator between the parts
NUMBER_TEXT = r"[-+0-9.,_%eEinfaINFA ]*"  # what a field with a numeric format spec (`{x:.1f}`) writes


@functools.cache
def library_attributes() -> frozenset[str]:
    """The attribute names of `LIBRARY_OBJECTS`."""
    return frozenset(n for obj in LIBRARY_OBJECTS for n in dir(obj))


def absent_attributes(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` with each `getattr(x, "name", default)` written `default` and each `hasattr(x, "name")` written
    `False` (`x` and `default` pure: `lean.pure`) where `name` is ABSENT from the bundle (`sources` and `extra`, the
    script's own code): the name shows nowhere else in the bundle's text, in any case (so no code stores or deletes
    an attribute of that name, binds it as a function, class, variable, parameter or import, passes it as a keyword
    (`SimpleNamespace(name=…)`, a dataclass), or keeps it in a string: `setattr(o, s, v)` or `register_buffer(s, …)`
    with a name from a string, namedtuple fields, a slice or `.upper()` of a string); no string building could write
    it (an f-string, `+` or `%` of strings, `.format`, a `.join` whose separator is in the name, `.upper()`/`.lower()`
    of those); no class defines `__getattr__`/`__getattribute__` (any name); `getattr`/`hasattr` are only ever called
    (the builtins); and the name is not a dunder, nor an attribute of the library objects the core handles
    (`LIBRARY_OBJECTS`) or of a library module or object the bundle imports (as loaded in this process), and the
    receiver is not one the module imports (`hasattr(torch, "float8_e4m3fn")`: a library's feature). The rule
    trusts that a library object of another kind has no attribute the bundle never writes. A conditional expression
    around such a call whose two sides are then the same constant, `None if should_compile(run) else None`, is that
    constant where its test is pure (`lean.pure`, counting calls of module-level functions that return a pure
    expression: `_returning_pure`)."""
    return dict(_absent(tuple(sources.items()), tuple(extra)))


@functools.lru_cache(maxsize=16)
def _absent(items: tuple[tuple[str, str], ...], extra: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    texts = [s for _, s in items if s] + list(extra)
    if not any(QUERY.search(t) for t in texts) or any(REBOUND_QUERY.search(t) or any(a in t for a in ANY_NAME)
                                                     for t in texts):
        return items
    facts = {n: _module_facts(s) for n, s in items if s and QUERY.search(s)}
    asked = [name for f in facts.values() for name in f.queries]
    lowered = "\0".join(texts).lower()
    library = library_attributes() | imported_attributes(frozenset(
        name for t in texts for name in _module_facts(t).imports))
    absent = {n for n in set(asked) if lowered.count(n.lower()) == asked.count(n) and n not in library
              and not (n.startswith("__") and n.endswith("__"))}
    if absent:
        builders = [b for t in texts for b in _module_facts(t).builders]
        absent = {n for n in absent if not any(b(n) for b in builders)}
    if not absent:
        return items
    out = dict(items)
    with purity(_returning_pure(texts)):
        for name in (n for n, f in facts.items() if absent & set(f.queries)):
            tree = ast.parse(out[name])
            folder = _AbsentFolder(absent, {b for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                                            for b in _bound_names(n)})
            tree = folder.visit(tree)
            if folder.folded:
                out[name] = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return tuple(out.items())


class _Facts(NamedTuple):
    queries: tuple[str, ...]  # the names the module's getattr/hasattr calls ask for (one per call)
    imports: tuple[str, ...]  # the dotted names of the library modules and objects it imports
    builders: tuple[Callable[[str], bool], ...]  # whether its string building may write a given name
    returns: tuple[tuple[str, ast.expr], ...]  # (name, expression) of its functions that only `return` one
    binds: tuple[str, ...]  # the names it binds (one per binding)


@functools.lru_cache(maxsize=512)
def _module_facts(text: str) -> _Facts:
    """What `absent_attributes` needs of one module's (or the script main's) source."""
    tree = ast.parse(text)
    queries, built, binds, cased = [], [], [], {}
    for node in ast.walk(tree):
        if (name := _query_name(node)) is not None:
            queries.append(name)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CASES:
            cased[id(node.func.value)] = node.func.attr
        if (pattern := _built_pattern(node)) is not None:
            built.append((pattern, id(node)))
        binds.extend(_bound_names(node))
    builders = [_builder(pattern, cased.get(node)) for pattern, node in built]
    returns = [(f.name, f.body[-1].value) for f in tree.body if isinstance(f, ast.FunctionDef) and not f.decorator_list
               and not f.args.vararg and not f.args.kwarg and not f.args.defaults and not f.args.kw_defaults
               and isinstance(f.body[-1], ast.Return) and f.body[-1].value is not None
               and all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in f.body[:-1])]
    return _Facts(tuple(queries), _imported(tree), tuple(builders), tuple(returns), tuple(binds))


def _imported(tree: ast.Module) -> tuple[str, ...]:
    """The dotted names of the modules `tree` imports and of the objects it imports from them, the bundle's own
    (`core`, `plugins`) aside."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return tuple(n for n in out if n.split(".")[0] not in ("core", "plugins", "__future__"))


@functools.lru_cache(maxsize=64)
def imported_attributes(names: frozenset[str]) -> frozenset[str]:
    """The attribute names of the library modules and objects `names` (dotted) that this process has loaded (none is
    imported for it: `torch._dynamo` alone takes seconds)."""
    out: set[str] = set()
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = sys.modules.get(name) or getattr(sys.modules.get(module), attr, None)
        out.update(dir(obj) if obj is not None else ())
    return frozenset(out)


def _returning_pure(texts: list[str]) -> frozenset[str]:
    """The module-level functions of the bundle whose body returns a pure expression (`lean.pure`, builtins only),
    their name bound once in the whole bundle (their definition): a call of one is pure."""
    facts = [_module_facts(t) for t in texts]
    bound: dict[str, int] = {}
    for f in facts:
        for name in f.binds:
            bound[name] = bound.get(name, 0) + 1
    return frozenset(n for f in facts for n, value in f.returns if bound[n] == 1 and pure(value))


def _query_name(node: ast.AST) -> str | None:
    """"name" of `getattr(x, "name", default)` or `hasattr(x, "name")`, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords \
            and (node.func.id, len(node.args)) in (("getattr", 3), ("hasattr", 2)) \
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        return node.args[1].value
    return None


def _builder(pattern: re.Pattern[str], case: str | None) -> Callable[[str], bool]:
    """Whether a string built as `pattern` may be a name, after `.upper()` or `.lower()` as `case` says."""
    if case is None:
        return lambda name: pattern.fullmatch(name) is not None
    loose = re.compile(pattern.pattern, re.S | re.I)
    return lambda name: name == getattr(name, case)() and loose.fullmatch(name) is not None


def _bound_names(node: ast.AST) -> Iterable[str]:
    """The names `node` binds: a variable stored, a parameter, a function or class, an import, a `global`."""
    if isinstance(node, ast.Name):
        return [node.id] if not isinstance(node.ctx, ast.Load) else []
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (*FUNCTIONS, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [a.asname or a.name.split(".")[0] for a in node.names]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return node.names
    return []


def _built_pattern(node: ast.AST) -> re.Pattern[str] | None:
    """A regular expression for the strings `node` may build (an f-string, `+` or `%` of a string literal,
    `"…".format(…)`, a `.join`: any string holding its separator), or None when `node` builds none."""
    if isinstance(node, ast.JoinedStr):
        return re.compile("".join(re.escape(v.value) if isinstance(v, ast.Constant) else
                                  NUMBER_TEXT if isinstance(v, ast.FormattedValue) and v.format_spec else ".*"
                                  for v in node.values), re.S)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and any(
            isinstance(s, ast.Constant) and isinstance(s.value, str) for s in (node.left, node.right)):
        parts = [node.left, node.right]
        return re.compile("".join(re.escape(p.value) if isinstance(p, ast.Constant) else ".*" for p in parts), re.S)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant) \
            and isinstance(node.left.value, str):
        return re.compile(".*".join(map(re.escape, PERCENT_FIELD.split(node.left.value))), re.S)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        receiver = node.func.value
        text = receiver.value if isinstance(receiver, ast.Constant) else "/" if ast.unparse(receiver) in PATH_MODULES \
            and node.func.attr == "join" else None
        if isinstance(text, bytes):
            return None  # bytes are no attribute name
        if text is None:
            return re.compile(".*", re.S)  # `sep.join(…)`, `template.format(…)`: anything
        if node.func.attr == "join":
            return re.compile(f".*{re.escape(text)}.*", re.S)  # one part alone: a string of its own
        return re.compile(".*".join(map(re.escape, FORMAT_FIELD.split(text))), re.S)
    return None


def _root(node: ast.expr) -> str | None:
    """The name an attribute chain starts from (`torch` of `torch.backends.cuda`), else None."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


class _AbsentFolder(ast.NodeTransformer):
    """Writes the getattr/hasattr calls of the `absent` names as their answers, and `c if t else c` around one as
    `c`, except on a receiver that an import binds (`imported`: a library module or object); `folded` counts the
    calls."""

    def __init__(self, absent: set[str], imported: set[str]):
        self.absent, self.imported, self.folded = absent, imported, 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if _query_name(node) in self.absent and all(pure(a) for a in node.args) \
                and _root(node.args[0]) not in self.imported:
            self.folded += 1
            return node.args[2] if len(node.args) == 3 else ast.Constant(False)
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        before = self.folded
        self.generic_visit(node)
        same = isinstance(node.body, ast.Constant) and isinstance(node.orelse, ast.Constant) \
            and type(node.body.value) is type(node.orelse.value) and node.body.value == node.orelse.value
        return node.body if same and self.folded > before and pure(node.test) else node
