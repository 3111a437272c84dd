"""Shrink a bundle's modules without changing what they do: tree-shaking and short local names (issue #11).

`shake` keeps only the definitions the bundle can reach. Reachability is by name, across all modules, to a
fixpoint: the live code starts as every module-level statement that is not a definition (plus the extra root
names given, e.g. the loader's), and a function, class, method, class attribute, pure module-level constant or
imported name stays when its name occurs in live code — as a name, an attribute, an imported name or an
identifier inside a string constant (`getattr(obj, "name")`; not the words of an error message — a `raise` or
`assert` message's text — or of prose, a string of three or more spaces). Kept regardless: dunder methods,
`@hookimpl` functions (pluggy calls them), every method of a class whose bases reach outside the bundle (torch
calls `forward`, `step` …), and the enabled plugins' classes (the registry finds them by scanning their modules;
a plugin module another one merely imports keeps only what is used). `if TYPE_CHECKING:` blocks go (they never
run), then modules nothing imports any more. One name kept anywhere keeps every definition of that name:
conservative, never clever.

`rename_locals` gives the local variables of each function (not its parameters: callers may pass them by keyword)
short names that occur nowhere else in the module; functions that call `locals`, `vars`, `eval`, `exec` or `dir`, or
define a class, keep their names. `rename_globals` then gives the module-level functions, constants and bundle-only
classes short names across all modules and the script's own code (one old name, one new name, every occurrence: an
alpha-renaming; names an attribute, keyword, parameter or string shows stay). `measure` reports bytes per module and
per top-level definition, plain and after LZMA (what the code wrapper ships)."""

from __future__ import annotations

import ast
import builtins
import itertools
import keyword
import lzma
import re
import string
import sys
from collections.abc import Collection, Iterable

IDENT = re.compile(r"[A-Za-z_]\w*")
DYNAMIC = {"locals", "vars", "eval", "exec", "dir", "globals"}
HOOK_MARKERS = {"hookimpl"}
# Generic types whose subscription (a type alias) has no effect but its value.
TYPING_GENERICS = {"Callable", "Optional", "Union", "Literal", "dict", "list", "tuple", "set", "frozenset", "type"}


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _pure(node: ast.AST) -> bool:
    """An expression whose evaluation has no effect but its value (dropping an unused one changes nothing)."""
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_pure(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _pure(k) for k in node.keys) and all(_pure(v) for v in node.values)
    if isinstance(node, ast.Attribute):
        return _pure(node.value)
    if isinstance(node, ast.UnaryOp):
        return _pure(node.operand)
    if isinstance(node, ast.BinOp):  # arithmetic on literals only: `36.6 * 2.54 / (2.54 - 1)`
        return _literal_arithmetic(node)
    if isinstance(node, ast.Subscript):  # a type alias: `Callable[[Config, Registry], int]`, `dict[str, T | None]`
        return isinstance(node.value, ast.Name) and node.value.id in TYPING_GENERICS and _type_arguments(node.slice)
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(v, ast.Constant) or (isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name))
                   for v in node.values)
    if isinstance(node, ast.Call) and isinstance(f := node.func, ast.Attribute) and isinstance(f.value, ast.Name) \
            and (f.value.id, f.attr) in PURE_CONSTRUCTORS:  # `re.compile("…")`, `struct.Struct("<HI")`
        return all(isinstance(a, ast.Constant) for a in [*node.args, *(k.value for k in node.keywords)])
    return False


def _literal_arithmetic(node: ast.AST) -> bool:
    """Literals combined by unary and binary operators only (no name: no `__mul__` of some object runs)."""
    if isinstance(node, ast.BinOp):
        return _literal_arithmetic(node.left) and _literal_arithmetic(node.right)
    if isinstance(node, ast.UnaryOp):
        return _literal_arithmetic(node.operand)
    return isinstance(node, ast.Constant)


def _type_arguments(node: ast.AST) -> bool:
    """The arguments of a typing generic: pure expressions and `A | B` unions of them (`type.__or__` only builds a
    union type)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _type_arguments(node.left) and _type_arguments(node.right)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(_type_arguments(e) for e in node.elts)
    return _pure(node)


# Standard-library constructors whose call on literals only builds a value: an unused `X = re.compile("…")` goes.
PURE_CONSTRUCTORS = {("re", "compile"), ("struct", "Struct")}


# A string with this many spaces is prose (a message, a log line), not a name `getattr` could read.
PROSE_SPACES = 3


def _message_strings(top: ast.AST) -> set[int]:
    """ids of the string constants that are only an error message: the text parts of `raise E(...)` arguments and
    of `assert` messages (no `getattr(obj, "name")` reads a name out of those)."""
    out: set[int] = set()
    for node in ast.walk(top):
        for part in (node.exc,) if isinstance(node, ast.Raise) and node.exc else \
                (node.msg,) if isinstance(node, ast.Assert) and node.msg else ():
            args = [*part.args, *(k.value for k in part.keywords)] if isinstance(part, ast.Call) else [part]
            for arg in args:
                texts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
                out.update(id(t) for t in texts if isinstance(t, ast.Constant) and isinstance(t.value, str))
    return out


def names_in(nodes: Iterable[ast.AST], attributes: bool = True, messages: bool = True) -> set[str]:
    """Every identifier the nodes may use: names, attributes (unless `attributes` is false), imported names,
    keyword names and identifier-like words inside string constants (unless `messages`, not those of error
    messages and prose: `PROSE_SPACES`)."""
    out: set[str] = set()
    for top in nodes:
        skip = set() if messages else _message_strings(top)
        for node in ast.walk(top):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Name):
                out.add(node.id)
            elif isinstance(node, ast.Attribute) and attributes:
                out.add(node.attr)
            elif isinstance(node, ast.alias):
                out.update(node.name.split("."))
            elif isinstance(node, ast.keyword) and node.arg:
                out.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and (messages or node.value.count(" ") < PROSE_SPACES):
                out.update(IDENT.findall(node.value))
    return out


def _module_objects(trees: dict[str, ast.Module], roots: set[str]) -> set[str]:
    """Bundled modules some code may hold as a module object (`import core.config`, `from core import export`,
    a root naming it): only their top-level definitions can be reached as attributes (`export.name`)."""
    bound = set(roots)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound.update(a.name for a in node.names)
                bound.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                bound.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in trees if m in bound or m.rsplit(".", 1)[-1] in roots}


def _decorator_names(node: ast.AST) -> set[str]:
    return names_in(getattr(node, "decorator_list", []))


def _assigned_name(stmt: ast.stmt) -> str | None:
    """The single name a pure `NAME = value` / `NAME: T = value` binds, else None."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id if _pure(stmt.value) else None
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id if _pure(stmt.value) else None
    return None


def _is_type_checking(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and not stmt.orelse and names_in([stmt.test]) == {"TYPE_CHECKING"}


def _class_names(trees: dict[str, ast.Module]) -> dict[str, list[ast.ClassDef]]:
    out: dict[str, list[ast.ClassDef]] = {}
    for tree in trees.values():
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                out.setdefault(stmt.name, []).append(stmt)
    return out


def _external_classes(classes: dict[str, list[ast.ClassDef]]) -> set[str]:
    """Names of bundled classes with a base outside the bundle (directly or through bundled bases)."""
    external: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, defs in classes.items():
            if name in external:
                continue
            for cls in defs:
                for base in cls.bases:
                    bname = base.id if isinstance(base, ast.Name) else None
                    if bname == "object":
                        continue
                    if bname is None or bname not in classes or bname in external:
                        external.add(name)
                        changed = True
                        break
    return external


def _plugin_classes(classes: dict[str, list[ast.ClassDef]]) -> set[str]:
    """Names of bundled classes deriving from `Plugin` (the registry finds them by scanning their module)."""
    found = {"Plugin"}
    changed = True
    while changed:
        changed = False
        for name, defs in classes.items():
            if name not in found and any(isinstance(b, ast.Name) and b.id in found for c in defs for b in c.bases):
                found.add(name)
                changed = True
    return found - {"Plugin"}


def _prune_imports(stmt: ast.stmt, live: set[str]) -> ast.stmt | None:
    """An import statement without the names no live code uses (None when none is left); an `if` of imports
    goes when no branch keeps one (a branch left empty gets `pass`)."""
    if isinstance(stmt, ast.If):
        body = [k for s in stmt.body if (k := _prune_imports(s, live))]
        orelse = [k for s in stmt.orelse if (k := _prune_imports(s, live))]
        if not body and not orelse:
            return None
        stmt.body, stmt.orelse = body or [ast.Pass()], orelse
        return stmt
    if isinstance(stmt, ast.ImportFrom):
        if stmt.module == "__future__":
            return stmt
        stmt.names = [a for a in stmt.names if (a.asname or a.name) in live or a.name == "*"]
    elif isinstance(stmt, ast.Import):
        stmt.names = [a for a in stmt.names if "." in a.name or (a.asname or a.name) in live]
    return stmt if stmt.names else None


def shake(sources: dict[str, str], roots: Iterable[str] = (), scanned: Iterable[str] = (),
          attribute_roots: Iterable[str] = ()) -> dict[str, str]:
    """`sources` (module name -> source) with the definitions no live code can reach removed (see the module
    docstring); `roots` are names used from outside the modules (the script's own code), `attribute_roots` names
    it uses only as attributes, `scanned` the modules whose `Plugin` subclasses the registry finds by scanning
    (the enabled plugins' modules)."""
    scanned = set(scanned)
    roots = set(roots)
    trees = {name: ast.parse(src) for name, src in sources.items()}
    for tree in trees.values():
        tree.body = [s for s in tree.body if not _is_type_checking(s)]
    classes = _class_names(trees)
    external = _external_classes(classes)
    plugin_classes = _plugin_classes(classes)

    live_names: set[str] = roots | set(attribute_roots)
    # A top-level definition of a module no code holds as an object is reached by name only, never as an
    # attribute: `Path(p).resolve()` does not keep `core.config.resolve`.
    live_plain: set[str] = set(roots)
    objects = _module_objects(trees, roots)
    by_name_only: set[int] = set()  # ids of such definitions
    pending: list[tuple[str, ast.AST]] = []  # (name, unit) not yet reached
    live_ids: set[int] = set()

    def use(nodes: list[ast.AST]) -> None:
        live_names.update(names_in(nodes, messages=False))
        live_plain.update(names_in(nodes, attributes=False, messages=False))

    def visit_class_body(cls: ast.ClassDef) -> None:
        keep_all = cls.name in external
        for stmt in cls.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if keep_all or _is_dunder(stmt.name) or _decorator_names(stmt) & HOOK_MARKERS:
                    reach(stmt)
                else:
                    pending.append((stmt.name, stmt))
            elif (name := _assigned_name(stmt)) is not None and not _is_dunder(name) and isinstance(stmt, ast.Assign):
                pending.append((name, stmt))  # a plain class attribute; annotated ones are dataclass fields
            else:
                use([stmt])
                live_ids.add(id(stmt))

    def reach(unit: ast.AST) -> None:
        if id(unit) in live_ids:
            return
        live_ids.add(id(unit))
        if isinstance(unit, ast.ClassDef):
            use([*unit.bases, *unit.keywords, *unit.decorator_list])
            visit_class_body(unit)
        elif isinstance(unit, (ast.FunctionDef, ast.AsyncFunctionDef)):
            use([unit])
            if _decorator_names(unit) & HOOK_MARKERS:
                live_names.add(unit.name)  # its hookspec
                live_plain.add(unit.name)
        else:
            use([unit])

    for module, tree in trees.items():
        for stmt in tree.body:
            if module not in objects:
                by_name_only.add(id(stmt))
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _decorator_names(stmt) & HOOK_MARKERS:
                    reach(stmt)
                else:
                    pending.append((stmt.name, stmt))
            elif isinstance(stmt, ast.ClassDef):
                if stmt.name in plugin_classes and module in scanned:
                    reach(stmt)
                else:
                    pending.append((stmt.name, stmt))
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                pass  # kept when what they bind is used (below)
            elif (name := _assigned_name(stmt)) is not None and not _is_dunder(name):
                pending.append((name, stmt))
            else:
                reach(stmt)
    while True:
        reached = [u for n, u in pending if id(u) not in live_ids
                   and n in (live_plain if id(u) in by_name_only else live_names)]
        if not reached:
            break
        for unit in reached:
            reach(unit)

    def prune(body: list[ast.stmt], top: bool) -> list[ast.stmt]:
        out = []
        for stmt in body:
            if top and isinstance(stmt, (ast.Import, ast.ImportFrom)):
                kept = _prune_imports(stmt, live_names)
                if kept is not None:
                    out.append(kept)
                continue
            if id(stmt) not in live_ids:
                continue
            if isinstance(stmt, ast.ClassDef):
                stmt.body = prune(stmt.body, False) or [ast.Pass()]
            out.append(stmt)
        return out

    for tree in trees.values():
        tree.body = prune(tree.body, True)
    # An import stays where its module uses the name, another module imports it from there, or (a module held
    # as an object) live code may read it as an attribute.
    imported_from: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in trees:
                imported_from.setdefault(node.module, set()).update(a.name for a in node.names)
    out = {}
    for name, tree in trees.items():
        needed = names_in([s for s in tree.body if not _imports_only(s)])
        needed |= imported_from.get(name, set()) | (live_names if name in objects else set())
        tree.body = [kept for s in tree.body  # first the `if`s of imports, then the imports their tests read
                     if (kept := _prune_imports(s, needed) if _imports_only(s) and isinstance(s, ast.If) else s)]
        needed |= names_in([s.test for s in tree.body if isinstance(s, ast.If) and _imports_only(s)])
        tree.body = [kept for s in tree.body if (kept := _prune_imports(s, needed) if _imports_only(s) else s)]
        out[name] = ast.unparse(tree) + "\n" if tree.body else ""
    return out


def _imports_only(stmt: ast.stmt) -> bool:
    """An import, or an `if` that only imports (`if sys.version_info >= (3, 11): import tomllib else: …`)."""
    if isinstance(stmt, ast.If):
        return all(_imports_only(s) for s in (*stmt.body, *stmt.orelse))
    return isinstance(stmt, (ast.Import, ast.ImportFrom))


SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
          ast.GeneratorExp)


def _params(args: ast.arguments) -> set[str]:
    return {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a is not None}


def _own_nodes(scope: ast.AST) -> Iterable[ast.AST]:
    """The nodes evaluated in `scope` itself: not the bodies of the scopes nested in it (those nodes are yielded,
    with the decorators and defaults a nested function evaluates in `scope`)."""
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        todo: list[ast.AST] = list(scope.body)
    else:
        todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.extend([*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)])
        elif isinstance(node, ast.Lambda):
            todo.extend([*node.args.defaults, *(d for d in node.args.kw_defaults if d)])
        elif not isinstance(node, SCOPES):
            todo.extend(ast.iter_child_nodes(node))


PLAIN_DECORATORS = {"staticmethod", "classmethod", "property", "setter"}


def _params_renamable(fn: ast.AST) -> bool:
    """Whether callers reach `fn`'s parameters only through the bundle's own calls: a lambda, or a function with
    no decorator but staticmethod/classmethod/property (pluggy, for one, passes hookimpls their arguments by
    name) that is no dunder."""
    if isinstance(fn, ast.Lambda):
        return True
    return not _is_dunder(fn.name) and names_in(fn.decorator_list) <= PLAIN_DECORATORS | names_in(
        [d.value for d in fn.decorator_list if isinstance(d, ast.Attribute)])


def _receiver(method: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The parameter a method's calls bind by position to the instance or class (`self`, `cls`): its first positional
    one, unless it is a staticmethod (`__new__` is one, called with the class first all the same)."""
    if "staticmethod" in names_in(method.decorator_list) and method.name != "__new__":
        return None
    first = [*method.args.posonlyargs, *method.args.args][:1]
    return first[0].arg if first else None


def renamable_locals(fn: ast.FunctionDef | ast.AsyncFunctionDef, fixed: set[str] | None = None,
                     own_params: bool = False, receiver: str | None = None) -> set[str]:
    """Names bound inside `fn` (its nested functions, lambdas and comprehensions included) that can take another
    name everywhere in `fn` without changing what any occurrence refers to: no `global`, not bound by a dotted
    import, every occurrence resolving to a binding inside `fn`. Parameters only with `fixed` (the names any
    caller may pass by keyword: those stay), of the nested scopes whose callers are the bundle's
    (`_params_renamable`) and of `fn` itself when `own_params`. Empty when a class is defined inside or names
    are accessed dynamically (`locals()`, `eval` …). `receiver`: a method's first parameter (`self`, `cls`), which
    Python binds by position on every call, so it is renamable whoever the callers are."""
    bound: dict[int, set[str]] = {}
    unsafe: set[str] = set()
    uses: list[tuple[str, list[int]]] = []

    def scan(scope: ast.AST, chain: list[int]) -> bool:
        chain = [*chain, id(scope)]
        names = bound.setdefault(id(scope), set())
        if not isinstance(scope, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            params = _params(scope.args)
            free = {receiver} & params if scope is fn else set()
            names.update(free)
            if fixed is not None and (own_params if scope is fn else _params_renamable(scope)):
                names.update(params - fixed)
                unsafe.update((params & fixed) - free)
            else:
                unsafe.update(params - free)
        for node in _own_nodes(scope):
            if isinstance(node, ast.ClassDef):
                return False
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DYNAMIC:
                return False
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, (ast.Store, ast.Del)):
                    names.add(node.id)
                uses.append((node.id, chain))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
                if not scan(node, chain):
                    return False
            elif isinstance(node, SCOPES):
                if not scan(node, chain):
                    return False
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    bound_name = a.asname or a.name
                    (unsafe.add if "." in bound_name else names.add)(bound_name.split(".")[0])
            elif isinstance(node, ast.Global):
                unsafe.update(node.names)
            elif isinstance(node, ast.Nonlocal):
                uses.extend((n, chain) for n in node.names)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                names.add(node.name)
        return True

    if not scan(fn, []):
        return set()
    everything = set().union(*bound.values())
    for name, chain in uses:
        if not any(name in bound[s] for s in chain):
            unsafe.add(name)
    return everything - unsafe


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.Nonlocal:
        node.names = [self.mapping.get(n, n) for n in node.names]
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        if node.name:
            node.name = self.mapping.get(node.name, node.name)
        self.generic_visit(node)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.name = self.mapping.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.mapping.get(node.arg, node.arg)
        return node

    def visit_alias(self, node: ast.alias) -> ast.alias:
        bound = node.asname or node.name
        if bound in self.mapping:
            node.asname = self.mapping[bound]
        return node


def short_names(taken: set[str]) -> Iterable[str]:
    """a, b, …, z, A, …, Z, aa, ab, … except the `taken` names, keywords and builtins."""
    reserved = taken | set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist)
    for size in itertools.count(1):
        for chars in itertools.product(string.ascii_letters, repeat=size):
            if (name := "".join(chars)) not in reserved:
                yield name


def rename_locals(source: str, fixed: set[str] | None = None, external: Collection[str] = ()) -> str:
    """`source` with the local variables of each module-level function and method renamed to short names that
    occur nowhere else in the module (`renamable_locals`), the most used first. With `fixed` (every name a
    caller may pass by keyword, `keyword_names`) parameters too, except those of methods of the `external`
    classes (the ones outside code such as torch calls)."""
    tree = ast.parse(source)
    taken = names_in([tree]) | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    taken |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}

    def outermost(body: list[ast.stmt], cls: str = "") -> Iterable[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield stmt, cls
            elif isinstance(stmt, ast.ClassDef):
                yield from outermost(stmt.body, stmt.name)

    for fn, cls in outermost(tree.body):
        own = fixed is not None and cls not in external and _params_renamable(fn)
        first = _receiver(fn) if cls else None
        local = renamable_locals(fn, fixed, own_params=own, receiver=first)
        if not local:
            continue
        counts = dict.fromkeys(local, 0)
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and node.id in counts:
                counts[node.id] += 1
        fresh = short_names(taken)  # the receiver first: every method's the same short name, which compresses better
        mapping = {n: next(fresh) for n in sorted(local, key=lambda n: (n != first, -counts[n], n))}
        renamer = _Renamer(mapping)
        fn.body = [renamer.visit(stmt) for stmt in fn.body]
        a = fn.args
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
            if arg is not None:
                arg.arg = mapping.get(arg.arg, arg.arg)  # not its defaults: those are evaluated outside `fn`
    return ast.unparse(tree) + "\n" if tree.body else ""


def keyword_names(trees: Iterable[ast.AST]) -> set[str]:
    """Names a caller may pass by keyword: keyword arguments, identifiers in strings (`**{"name": …}`) and
    names bound in class bodies (dataclass fields, which `cls(**values)` passes on)."""
    out: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg:
                out.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.update(IDENT.findall(node.value))
            elif isinstance(node, ast.ClassDef):
                out.update(names_in(t for s in node.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                                    for t in (s.targets if isinstance(s, ast.Assign) else [s.target])))
    return out


def minify_modules(sources: dict[str, str], roots: Iterable[str] = (), scanned: Iterable[str] = (),
                   extra: Iterable[str] = (), attribute_roots: Iterable[str] = ()) -> dict[str, str]:
    """`shake` the modules, then rename locals and parameters (`rename_locals`) with the names every module and
    the `extra` sources (the script's own code) pass by keyword kept."""
    shaken = shake(sources, roots=roots, scanned=scanned, attribute_roots=attribute_roots)
    trees = [ast.parse(s) for s in (*shaken.values(), *extra)]
    fixed = keyword_names(trees)
    external = _external_classes(_class_names(dict(enumerate(trees))))
    return {n: rename_locals(s, fixed, external) if s else "" for n, s in shaken.items()}


def lzma_size(text: str) -> int:
    """Bytes of `text` as the code wrapper compresses it (raw LZMA2, preset 9 | extreme)."""
    return len(lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_RAW,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]))


def measure(sources: dict[str, str]) -> list[tuple[str, int, int]]:
    """(module or module:definition, plain bytes, LZMA bytes alone) for every module and top-level definition,
    largest compressed first."""
    rows = []
    for name, src in sources.items():
        if not src:
            continue
        rows.append((name, len(src.encode()), lzma_size(src)))
        for stmt in ast.parse(src).body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                text = ast.get_source_segment(src, stmt) or ast.unparse(stmt)
                rows.append((f"{name}:{stmt.name}", len(text.encode()), lzma_size(text)))
    return sorted(rows, key=lambda r: -r[2])


class _Bindings(ast.NodeVisitor):
    """The identifiers a global rename must leave alone (`fixed`): attribute names, keywords, parameters, names
    bound in a class body (attributes: fields, methods), names imported from outside the `bundled` modules,
    identifiers inside strings, and every name of a module that reads its namespace (`locals()`, `vars()` …).
    Renaming any other identifier at every occurrence, in every scope, is an alpha-renaming: same program."""

    def __init__(self, bundled: Collection[str]):
        self.bundled = bundled
        self.fixed: set[str] = set()
        self.scopes: list[str] = []

    def _bind(self, name: str) -> None:
        if self.scopes and self.scopes[-1] == "class":
            self.fixed.add(name)

    def _scope(self, node: ast.AST, kind: str = "function") -> None:
        self.scopes.append(kind)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self._bind(node.name)
        for d in node.decorator_list:
            self.visit(d)
        for part in ("args", "returns", "bases", "keywords"):  # evaluated in the enclosing scope
            value = getattr(node, part, None)
            for v in value if isinstance(value, list) else [value] if value is not None else []:
                self.visit(v)
        self.scopes.append("class" if isinstance(node, ast.ClassDef) else "function")
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef
    visit_Lambda = visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self._bind(node.id)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.fixed.add(a.name.split(".")[0])
            if a.asname:
                self._bind(a.asname)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            if node.module not in self.bundled or node.level:
                self.fixed.add(a.name)
            self._bind(a.asname or a.name)

    def visit_arg(self, node: ast.arg) -> None:
        self.fixed.add(node.arg)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg:
            self.fixed.add(node.arg)
        self.visit(node.value)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.fixed.add(node.attr)
        self.visit(node.value)

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        self.fixed.update(node.names)

    visit_Nonlocal = visit_Global

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.fixed.update(IDENT.findall(node.value))

    def visit_Module(self, node: ast.Module) -> None:
        if any(isinstance(n, ast.Name) and n.id in DYNAMIC for n in ast.walk(node)):
            self.fixed.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
        self.generic_visit(node)


# Outside bases whose subclasses may still be renamed (see `rename_globals`).
TORCH_MODULE_BASES = ("nn.", "torch.nn.")


class _GlobalRenamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str], bundled: Collection[str]):
        self.mapping = mapping
        self.bundled = bundled

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        node.name = self.mapping.get(node.name, node.name)  # type: ignore[attr-defined]
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        ours = node.module in self.bundled and not node.level
        for a in node.names:
            if ours and a.name in self.mapping:  # the definition's new name (and the bound name, without `as`)
                a.name = self.mapping[a.name]
            if a.asname in self.mapping:
                a.asname = self.mapping[a.asname]
        return node

    def visit_Import(self, node: ast.Import) -> ast.Import:
        for a in node.names:
            if a.asname in self.mapping:
                a.asname = self.mapping[a.asname]
        return node


def rename_globals(sources: dict[str, str], extra: Iterable[str] = (), kinds: tuple[type, ...] = (
        ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign, ast.ClassDef), min_length: int = 3,
        keep: Collection[str] = ()) -> tuple[dict[str, str], list[str]]:
    """(`sources`, `extra`) with the module-level functions, classes and constants of the bundled modules (`kinds`:
    statements whose names are renamed) given short names, the same new name for one old name in every module
    and in `extra` (the script's own code). A name is renamed only where a rename can follow every use of it:
    only ever a module-level binding and a plain name or an import from a bundled module — never an attribute,
    a keyword, a parameter or local, a name imported from outside, a module name, or an identifier in any string
    (`getattr`, settings, messages); a class only when all its bases are renamed classes of the bundle or torch
    modules (`nn.Module`, `nn.Linear`: their class names show only in a repr nothing prints); an exception's or an
    optimizer's name shows in tracebacks and reports (weight_decay names groups by it). The new names occur
    nowhere in the bundle; the most used get the shortest. `keep`: names code outside reads (`plugins.BUNDLED`)."""
    trees = {n: ast.parse(s) for n, s in sources.items()}
    others = [ast.parse(s) for s in extra]
    bundled = set(sources)
    seen = _Bindings(bundled)
    for tree in (*trees.values(), *others):
        seen.visit(tree)
    defined = {stmt.name if not isinstance(stmt, ast.Assign) else t.id  # type: ignore[union-attr]
               for tree in trees.values() for stmt in tree.body if isinstance(stmt, kinds)
               for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt])
               if not isinstance(stmt, ast.Assign) or isinstance(t, ast.Name)}
    classes = {stmt.name: stmt for tree in trees.values() for stmt in tree.body if isinstance(stmt, ast.ClassDef)}
    outside = set(classes)  # classes with a base outside the bundle (exceptions, optimizers …): their names show

    def renamable_base(b: ast.expr) -> bool:
        return (isinstance(b, ast.Name) and b.id in classes and b.id not in outside) or \
            ast.unparse(b).startswith(TORCH_MODULE_BASES)

    while changed := {c for c in outside if all(renamable_base(b) for b in classes[c].bases)}:
        outside -= changed
    defined -= outside
    parts = {p for n in bundled for p in n.split(".")}
    reserved = set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist)
    names = {n for n in defined - seen.fixed - parts - reserved - set(keep)
             if len(n) >= min_length and not _is_dunder(n)}
    texts = [*sources.values(), *extra]
    counts = {n: sum(len(re.findall(rf"\b{n}\b", t)) for t in texts) for n in names}
    taken = {w for t in texts for w in IDENT.findall(t)}
    fresh = short_names(taken)
    mapping = {n: next(fresh) for n in sorted(names, key=lambda n: (-counts[n], n))}
    renamer = _GlobalRenamer(mapping, bundled)
    out = {n: ast.unparse(renamer.visit(t)) + "\n" if sources[n] else "" for n, t in trees.items()}
    return out, [ast.unparse(renamer.visit(t)) + "\n" for t in others]


# A parenthesised aside of an error message with no value in it: a hint for the reader, not what went wrong.
MESSAGE_ASIDE = re.compile(r" ?\([^(){}]*\)")


def _message_texts(node: ast.expr) -> list[ast.Constant]:
    """The literal text parts of an error message expression: a string, an f-string's text between its values, or
    the strings of a list of them (`ConfigError([f"..."])`)."""
    if isinstance(node, ast.List):
        return [t for e in node.elts for t in _message_texts(e)]
    if isinstance(node, ast.JoinedStr):
        return [v for v in node.values if isinstance(v, ast.Constant)]
    return [node] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def shorten_messages(source: str) -> str:
    """`source` with its error messages (the arguments of `raise E(...)` and `assert` messages) less their
    parenthesised asides that show no value (`(set TOKENIZER_PATH / core.tokenizer_path)`): what failed and the
    values stay, the advice goes (bytes of a bundle; pgolf's own modules keep the whole text). A constant
    formatted into an f-string (`{'artifact'}`, a folded setting) becomes its text."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        part = node.exc if isinstance(node, ast.Raise) else node.msg if isinstance(node, ast.Assert) else None
        args = [*part.args, *(k.value for k in part.keywords)] if isinstance(part, ast.Call) else [part] if part else []
        for arg in args:
            for fs in [n for n in ast.walk(arg) if isinstance(n, ast.JoinedStr)]:
                fs.values = _joined_constants(fs.values)
            for text in _message_texts(arg):
                text.value = MESSAGE_ASIDE.sub("", text.value)
    return ast.unparse(tree) + "\n" if tree.body else ""


def return_directly(source: str) -> str:
    """`source` with each `x = <value>` directly followed by `return x` written `return <value>`, where `x` is a
    local of that function named nowhere else in it (nested scopes included), not declared global/nonlocal, in a
    function that calls no `locals`/`vars`/`eval`/`exec`: the same value returned (what lean and folding leave of
    `x = f(); <checks of x>; return x`)."""
    tree = ast.parse(source)
    changed = False
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        names = [n.id for n in ast.walk(fn) if isinstance(n, ast.Name)]
        if any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in ast.walk(fn)) or {"locals", "vars", "eval",
                                                                                     "exec"} & set(names):
            continue
        for node in ast.walk(fn):
            for field_name in ("body", "orelse", "finalbody"):
                body = getattr(node, field_name, None)
                if not isinstance(body, list):
                    continue
                for i in range(len(body) - 2, -1, -1):
                    a, r = body[i], body[i + 1]
                    if isinstance(a, ast.Assign) and len(a.targets) == 1 and isinstance(a.targets[0], ast.Name) \
                            and isinstance(r, ast.Return) and isinstance(r.value, ast.Name) \
                            and r.value.id == a.targets[0].id and names.count(r.value.id) == 2:
                        body[i:i + 2] = [ast.copy_location(ast.Return(a.value), r)]
                        changed = True
    return ast.unparse(tree) + "\n" if changed else source


def _joined_constants(values: list[ast.expr]) -> list[ast.expr]:
    """An f-string's parts with each plain formatted string constant (`{'x'}`) merged into the text around it."""
    out: list[ast.expr] = []
    for v in values:
        if isinstance(v, ast.FormattedValue) and v.conversion == -1 and v.format_spec is None \
                and isinstance(v.value, ast.Constant) and isinstance(v.value.value, str):
            v = ast.Constant(v.value.value)
        if isinstance(v, ast.Constant) and out and isinstance(out[-1], ast.Constant):
            out[-1] = ast.Constant(out[-1].value + v.value)
        else:
            out.append(v)
    return out


PLAIN_ANNOTATIONS = frozenset({"int", "float", "str", "bool", "bytes"})


def drop_future_annotations(source: str) -> str:
    """`source` without `from __future__ import annotations` where that changes nothing: every annotation left is
    a constant or a builtin scalar type (int, float, str, bool, bytes) the module does not rebind, so evaluating it
    eagerly gives what `typing.get_type_hints` reads from the string."""
    tree = ast.parse(source)
    future = [s for s in tree.body if isinstance(s, ast.ImportFrom) and s.module == "__future__"
              and [a.name for a in s.names] == ["annotations"]]
    if not future:
        return source
    annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.AnnAssign, ast.arg)) and n.annotation]
    annotations += [n.returns for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and n.returns]
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}
    plain = PLAIN_ANNOTATIONS - bound
    if not all(isinstance(a, ast.Constant) or (isinstance(a, ast.Name) and a.id in plain) for a in annotations):
        return source
    tree.body = [s for s in tree.body if s not in future]
    return ast.unparse(tree) + "\n" if tree.body else ""


def prune_unused_imports(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The modules without the module-level imported names nothing uses any more (after specialisation, shaking and
    renaming: `field` once no field needs it, `Tensor` once annotations are gone). A name stays when its module's
    code uses it, another module or `extra` (the script's own code) imports it from there, or — the module held as
    an object — some code reads an attribute of that name. A statement importing a bundled module keeps one name
    (its module still runs in the same order); an emptied import of another package goes only when that package
    is in the standard library or an import of it that stays loads it anyway (importing it has no other effect)."""
    trees = {n: ast.parse(s) for n, s in sources.items() if s}
    others = [ast.parse(s) for s in extra]
    imported_from: dict[str, set[str]] = {}
    for tree in (*trees.values(), *others):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in sources and not node.level:
                imported_from.setdefault(node.module, set()).update(a.name for a in node.names)
    objects = _module_objects({**trees, **{f"extra{i}": t for i, t in enumerate(others)}}, set())
    attributes = {n.attr for t in (*trees.values(), *others) for n in ast.walk(t) if isinstance(n, ast.Attribute)}
    out = dict(sources)
    for name, tree in trees.items():
        needed = names_in([s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))])
        needed |= imported_from.get(name, set()) | (attributes if name in objects else set())
        def top(stmt: ast.Import | ast.ImportFrom) -> str:
            return (stmt.module if isinstance(stmt, ast.ImportFrom) else stmt.names[0].name or "").split(".")[0]

        imports = [s for s in tree.body if isinstance(s, ast.Import) or (
            isinstance(s, ast.ImportFrom) and s.module != "__future__" and not s.level)]
        used = {id(s): [a for a in s.names if (a.asname or a.name.split(".")[0]) in needed or a.name == "*"]
                for s in imports}
        loaded = {top(s) for s in imports if used[id(s)]}  # packages a kept import still loads
        for stmt in imports:
            module = stmt.module if isinstance(stmt, ast.ImportFrom) else stmt.names[0].name
            if used[id(stmt)]:
                stmt.names = used[id(stmt)]
            elif module in sources or top(stmt) in ("core", "plugins"):
                stmt.names = stmt.names[:1]  # the module still runs where it did
            elif top(stmt) in sys.stdlib_module_names or top(stmt) in loaded:
                stmt.names = []
        tree.body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom)) or s.names]
        out[name] = ast.unparse(tree) + "\n" if tree.body else ""
    return out



METHODS = (ast.FunctionDef, ast.AsyncFunctionDef)


def rename_private_attributes(sources: dict[str, str], extra: list[str]) -> tuple[dict[str, str], list[str]]:
    """(`sources`, `extra`) with each PRIVATE ATTRIBUTE of the bundle's own classes renamed to a short fresh name,
    everywhere at once: a `_x` name (not `__x`) that is only ever an attribute (`o._x`) or a method defined in a
    class body, stored only as `self._x` and defined only in classes with no base outside the bundle (so never an
    `nn.Module`'s registered parameter, buffer or submodule, nor an override torch calls by name), that no string
    names (`getattr(o, "_x")`, a state_dict key, a log line) nor begins, and that is no attribute of `object`."""
    trees = {n: ast.parse(t) for n, t in sources.items()}
    others = [ast.parse(t) for t in extra]
    alls = [*trees.values(), *others]
    classes = _class_names(trees)
    external = _external_classes(classes)
    strings = [n.value for t in alls for n in ast.walk(t) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    words = {w for s in strings for w in IDENT.findall(s)}
    bad = set(dir(object)) | words
    owned: set[str] = set()
    for tree in alls:
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        owner: dict[ast.AST, ast.ClassDef | None] = {}
        for node in ast.walk(tree):  # the class whose method a node is in (the innermost function's class)
            for child in ast.iter_child_nodes(node):
                owner[child] = node if isinstance(node, ast.ClassDef) else owner.get(node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                cls = owner.get(node)
                if isinstance(node.ctx, ast.Store) or isinstance(parents.get(node), ast.Delete):
                    own = isinstance(node.value, ast.Name) and node.value.id == "self" and cls is not None \
                        and cls.name not in external
                    (owned if own else bad).add(node.attr)
            elif isinstance(node, METHODS) and isinstance(parents.get(node), ast.ClassDef):
                (owned if parents[node].name not in external else bad).add(node.name)
            elif isinstance(node, ast.Name):
                bad.add(node.id)
            elif isinstance(node, ast.arg):
                bad.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                bad.add(node.arg)
            elif isinstance(node, ast.alias):
                bad.update(node.name.split("."))
            elif isinstance(node, (*METHODS, ast.ClassDef)):
                bad.add(node.name)
    names = sorted(n for n in owned - bad if n.startswith("_") and not n.startswith("__")
                   and not any(len(s) > 1 and IDENT.fullmatch(s) and n.startswith(s) for s in strings))
    if not names:
        return dict(sources), list(extra)
    fresh = short_names({w for t in [*sources.values(), *extra] for w in IDENT.findall(t)})
    mapping = {n: next(fresh) for n in names}

    class Renamer(ast.NodeTransformer):
        def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
            self.generic_visit(node)
            node.attr = mapping.get(node.attr, node.attr)
            return node

        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
            self.generic_visit(node)
            node.name = mapping.get(node.name, node.name)
            return node

        visit_AsyncFunctionDef = visit_FunctionDef

    renamer = Renamer()
    return ({n: ast.unparse(renamer.visit(t)) + "\n" if sources[n] else "" for n, t in trees.items()},
            [ast.unparse(renamer.visit(t)) + "\n" for t in others])
