"""One namespace for a specialised bundle's modules: the script is their code, in import order (issue #11).

A specialised, minified bundle (`submissions.bundle`) needs no import machinery once its module-level names are
unique (`minify.rename_globals` makes them so): its modules' code can run in the script's own globals, one after
the other in the order Python would import them. An import of a bundled module then binds nothing new:
`from core.x import a as b` becomes `b = a` (nothing where `b` is `a`), and a module held as an object
(`from core import export as ex`) is read through its names (`ex.SCHEMES` -> `SCHEMES`). The embedded sources,
their loader class and each module's import lines go (about 1 KB of the wrapped pr1493 script).

`merge_modules` refuses (None: the bundle keeps its module loader) whatever it cannot prove the same: two modules
binding one name to different things, a name one module reads as a builtin that another binds, a module object
used other than by reading its names, module-level import cycles, `__name__`/`__file__`-dependent code,
`from __future__` imports other than `annotations` (whose annotations it writes as the strings that import makes).
"""

from __future__ import annotations

import ast
import builtins
import symtable
from collections.abc import Iterable

PACKAGES = ("core", "plugins")
SCRIPT = "__main__"  # the script's own code (RECIPE, main), merged last
SCRIPT_NAMES = ("RECIPE",)
MODULE_DUNDERS = {"__name__", "__file__", "__spec__", "__package__", "__path__", "__loader__", "__all__"}


class Unmergeable(Exception):
    """Why the modules cannot share one namespace."""


def _bundled(name: str | None, modules: dict[str, str]) -> bool:
    return bool(name) and name.split(".")[0] in PACKAGES and name in modules  # type: ignore[union-attr]


def _module_aliases(stmt: ast.Import | ast.ImportFrom, modules: dict[str, str]) -> dict[str, str]:
    """alias -> bundled module of the module objects an import binds (`from core import export as ex`)."""
    out = {}
    if isinstance(stmt, ast.Import):
        for a in stmt.names:
            if _bundled(a.name, modules):
                if not a.asname:
                    raise Unmergeable(f"import {a.name} without an alias")
                out[a.asname] = a.name
    elif not stmt.level and stmt.module and stmt.module.split(".")[0] in PACKAGES:
        for a in stmt.names:
            if f"{stmt.module}.{a.name}" in modules:
                out[a.asname or a.name] = f"{stmt.module}.{a.name}"
    return out


def _module_deps(tree: ast.Module, modules: dict[str, str]) -> list[str]:
    """Bundled modules a module's top-level statements import, in order (their code must run first)."""
    deps: list[str] = []
    for node in _outside_functions(tree):
        if isinstance(node, ast.Import):
            deps += [a.name for a in node.names if _bundled(a.name, modules)]
        elif isinstance(node, ast.ImportFrom) and not node.level and _bundled(node.module, modules):
            deps.append(node.module)  # type: ignore[arg-type]
            deps += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in PACKAGES:
            deps += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
    return deps


def _outside_functions(node: ast.AST) -> Iterable[ast.AST]:
    """The nodes under `node` that run when it does: not those inside function bodies."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _outside_functions(child)


def import_order(trees: dict[str, ast.Module], modules: dict[str, str], roots: Iterable[str]) -> list[str]:
    """The modules in the order their code must run: each after the modules its top level imports."""
    order: list[str] = []
    active: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name not in trees:
            return
        if name in active:
            raise Unmergeable(f"module-level import cycle through {name}")
        active.add(name)
        for dep in _module_deps(trees[name], modules):
            visit(dep)
        active.discard(name)
        order.append(name)

    for name in [*roots, *sorted(trees)]:
        visit(name)
    return order


class _Rewrite(ast.NodeTransformer):
    """Bundled imports -> plain bindings; `module.name` -> `name` for the module objects they bound."""

    def __init__(self, modules: dict[str, str], bindings: dict[str, ast.Module]):
        self.modules = modules
        self.bindings = bindings  # module -> its tree (names it binds at its top level)
        self.objects: dict[str, str] = {}
        self.aliases: set[int] = set()  # the `b = a` statements made of `from m import a as b`

    def _imports(self, node: ast.Import | ast.ImportFrom) -> list[ast.stmt] | ast.AST:
        aliases = _module_aliases(node, self.modules)
        if isinstance(node, ast.Import):
            if not aliases:
                return node
            self.objects.update(aliases)
            return []
        if node.level or not node.module or node.module.split(".")[0] not in PACKAGES:
            return node
        out: list[ast.stmt] = []
        for a in node.names:
            if (a.asname or a.name) in aliases:
                self.objects[a.asname or a.name] = aliases[a.asname or a.name]
            elif node.module not in self.modules or a.name not in top_names(self.bindings[node.module]):
                raise Unmergeable(f"from {node.module} import {a.name}: not a name that module binds")
            elif a.asname and a.asname != a.name:
                out.append(ast.Assign(targets=[ast.Name(a.asname, ast.Store())], value=ast.Name(a.name, ast.Load()),
                                      lineno=node.lineno))
                self.aliases.add(id(out[-1]))
        return out

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.objects:
            raise Unmergeable(f"module {self.objects[node.id]} used as an object ({node.id})")
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._scope(node)

    def _scope(self, node: ast.AST) -> ast.AST:
        """A function's body rewritten; the module objects its own imports bind are seen inside it only, and a
        name it binds otherwise must not be one (`ex.x` would not be the module's)."""
        outer = dict(self.objects)
        own = {n for x in ast.walk(node) if x is not node and not (isinstance(x, (ast.Import, ast.ImportFrom))
                                                                   and _module_aliases(x, self.modules))
               for n in _bound_names(x)}
        if isinstance(node, ast.Lambda):
            own |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        if own & set(outer):
            raise Unmergeable(f"a function binds {sorted(own & set(outer))}, a module's name")
        node = self.generic_visit(node)
        self.objects = outer
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        """The function, its `b = a` bindings of imported names read as `a` where nothing else binds `a` or `b`."""
        node = self._scope(node)  # type: ignore[assignment]
        stored: dict[str, int] = {}
        for n in ast.walk(node):
            for name in _bound_names(n):
                stored[name] = stored.get(name, 0) + 1
        swap = {}
        for stmt in [s for s in node.body if id(s) in self.aliases]:
            alias, name = stmt.targets[0].id, stmt.value.id  # type: ignore[attr-defined]
            if stored.get(alias) == 1 and name not in stored and name not in swap.values():
                swap[alias] = name
        if swap:
            node.body = [s for s in node.body if not (id(s) in self.aliases and s.targets[0].id in swap)] or \
                [ast.Pass()]  # type: ignore[attr-defined]
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and n.id in swap:
                    n.id = swap[n.id]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Import = visit_ImportFrom = _imports

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id in self.objects:
            module = self.objects[node.value.id]
            if not isinstance(node.ctx, ast.Load) or node.attr not in top_names(self.bindings[module]):
                raise Unmergeable(f"{node.value.id}.{node.attr}: not a name {module} binds, read")
            return ast.copy_location(ast.Name(node.attr, ast.Load()), node)
        return self.generic_visit(node)


def _bound_names(node: ast.AST) -> list[str]:
    """Names `node` binds (an assignment target, a parameter, a definition, an import, a global declaration)."""
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return list(node.names)
    if isinstance(node, ast.ExceptHandler) and node.name:
        return [node.name]
    return []


def top_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level."""
    out: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        else:
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    out.add(node.id)
    return out


def _identity(stmt: ast.stmt, alias: ast.alias, module: str) -> tuple[str, ...]:
    """What a top-level import binds (the same third-party object when two modules import it alike)."""
    if isinstance(stmt, ast.Import):
        return ("import", alias.name if alias.asname else alias.name.split(".")[0])
    return ("from", stmt.module or "", alias.name)  # type: ignore[attr-defined]


def _global_reads(source: str, name: str) -> set[str]:
    """Names the module's code looks up in its globals or the builtins (any scope)."""
    out: set[str] = set()
    todo = [symtable.symtable(source, name, "exec")]
    while todo:
        table = todo.pop()
        for sym in table.get_symbols():
            if sym.is_referenced() and (sym.is_global() or (table.get_type() == "module" and not sym.is_assigned()
                                                            and not sym.is_imported())):
                out.add(sym.get_name())
        todo += table.get_children()
    return out


def merge_modules(sources: dict[str, str], main: str, roots: Iterable[str]) -> str:
    """The modules' code in one namespace followed by `main` (the script's own code, whose imports of bundled
    modules are rewritten alike); raises Unmergeable with the reason where that could change what runs."""
    modules = {n: s for n, s in sources.items() if n.split(".")[0] in PACKAGES}
    trees = {n: ast.parse(s) for n, s in modules.items()}
    main_tree = ast.parse(main)
    order = [*import_order(trees, modules, [*roots, *_module_deps(_as_top_level(main_tree), modules)]), SCRIPT]
    trees[SCRIPT] = main_tree
    owner: dict[str, tuple[str, ...]] = {n: ("def", SCRIPT, n) for n in SCRIPT_NAMES}
    for name in order:
        tree = trees[name]
        _postpone_annotations(tree, name)
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)) and not _module_aliases(stmt, modules) and not (
                    isinstance(stmt, ast.ImportFrom) and (stmt.module or "").split(".")[0] in PACKAGES):
                for a in stmt.names:
                    _claim(owner, (a.asname or a.name).split(".")[0], _identity(stmt, a, name))
        for bound in top_names(tree) - _imported_names(tree):
            _claim(owner, bound, ("def", name, bound))
    for name in order[:-1]:
        reads = _global_reads(modules[name], name)
        if reads & MODULE_DUNDERS:
            raise Unmergeable(f"{name} reads {sorted(reads & MODULE_DUNDERS)}")
        builtin_reads = reads - top_names(trees[name]) - set(dir(builtins))
        if builtin_reads & set(owner):  # another module's name where this one reads an undefined one: ok only if
            raise Unmergeable(f"{name} reads {sorted(builtin_reads & set(owner))} it does not bind")
        shadowed = (reads - top_names(trees[name])) & set(dir(builtins)) & set(owner)
        if shadowed:
            raise Unmergeable(f"{name} reads builtins {sorted(shadowed)} another module binds")
    rewrite = _Rewrite(modules, trees)
    seen: set[tuple[str, ...]] = set()
    parts = []
    for name in order:
        rewrite.objects = {}
        tree = rewrite.visit(trees[name])
        body = []
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                kept = [a for a in stmt.names if _statement_key(stmt, a) not in seen]
                seen.update(_statement_key(stmt, a) for a in stmt.names)
                if not kept:
                    continue
                stmt.names = kept
            body.append(stmt)
        tree.body = body
        parts.append(ast.unparse(tree))
    return "\n".join(p for p in parts if p) + "\n"


def _postpone_annotations(tree: ast.Module, name: str) -> None:
    """Drop the module's `from __future__ import annotations`, writing each annotation as the string that import
    makes of it (PEP 563: its unparsed text) so that nothing else in the script changes; refuse other features."""
    future = [s for s in tree.body if isinstance(s, ast.ImportFrom) and s.module == "__future__"]
    if not future:
        return
    if {a.name for s in future for a in s.names} != {"annotations"}:
        raise Unmergeable(f"{name}: a __future__ import other than annotations")
    tree.body = [s for s in tree.body if s not in future]
    for node in ast.walk(tree):
        for field in ("annotation", "returns"):
            value = getattr(node, field, None)
            if isinstance(value, ast.expr) and not isinstance(value, ast.Constant):
                setattr(node, field, ast.Constant(ast.unparse(value)))


def _statement_key(stmt: ast.Import | ast.ImportFrom, alias: ast.alias) -> tuple[str | None, ...]:
    """One imported name exactly (`import a.b` loads a.b: another `import a` does not stand for it)."""
    return (type(stmt).__name__, getattr(stmt, "module", None), alias.name, alias.asname)


def _as_top_level(tree: ast.Module) -> ast.Module:
    """The script's code with its function bodies' statements at the top (main imports the modules it runs)."""
    body = [s for n in tree.body for s in (n.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else [n])]
    return ast.Module(body=body, type_ignores=[])


def _imported_names(tree: ast.Module) -> set[str]:
    return {(a.asname or a.name).split(".")[0] for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))
            for a in s.names}


def _claim(owner: dict[str, tuple[str, ...]], name: str, what: tuple[str, ...]) -> None:
    if owner.setdefault(name, what) != what:
        raise Unmergeable(f"{name} is bound to {owner[name]} and {what}")
