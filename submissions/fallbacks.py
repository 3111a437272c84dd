"""A hook's fallback that can never run (issue #11): `x = run.hook.pg_h(...)` then `x or default` is `x` where the
hook's answer is always a true object.

The core asks a `firstresult` hook and falls back to its own default when no plugin answers:
`loader = run.hook.pg_train_loader(run=run)`, `return loader or DistributedTokenLoader(...)`. Where the first
implementation pluggy calls (`truthy_hooks`) returns, on every path that returns, a new instance of a bundled class
that is always true, the answer is never None nor false, so the `or` never evaluates its default
(`without_fallbacks`), and the tree-shaker then drops the default's code (PR #1493's bundle: the core's sequential
shard loader, `shuffled_loader` answers).

A class is always true when neither it nor any base defines `__bool__`, `__len__` or `__new__` (in its body, as a
method or a name), every base is such a bundled class (no base: `object`; a library base such as `nn.ModuleList` may
define `__len__`), it has no metaclass or other class keyword, and its decorators are `dataclass` only (which adds
none of them). An implementation qualifies when its body ends in a `return`, it has no `yield`/`await`, and each of
its `return`s gives a call of such a class by its name, or a local bound exactly once (nowhere else: no parameter,
loop, `with`, import or second assignment of that name) to such a call. The rewrite applies to `a or b …` whose first
operand is such a hook call, or a local of the enclosing function bound exactly once to one. The one trusted
assumption: bundled code never stores `__bool__`/`__len__` on a class at run time (checked for literal attribute
stores and `setattr` with a literal name; a computed `setattr` onto a class object is not followed).
"""

from __future__ import annotations

import ast
from typing import Any

from core.config import Config
from core.registry import Registry, make_manager
from submissions.minify import _params

SPECIAL = frozenset({"__bool__", "__len__", "__new__"})
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def truthy_hooks(cfg: Config, registry: Registry, sources: dict[str, str]) -> frozenset[str]:
    """The `firstresult` hooks of this run whose first-called implementation always returns a true instance."""
    from core.train import CoreDefaults

    if _stores_special(ast.parse(s) for s in sources.values() if s and any(n in s for n in SPECIAL)):
        return frozenset()
    trees = _Parsed(sources)  # parsed as the analysis reaches them: the implementations' modules and their imports
    pm = make_manager(registry, cfg, CoreDefaults())
    out = set()
    for hook, caller in vars(pm.hook).items():
        if not hook.startswith("pg_") or caller.spec is None or not caller.spec.opts.get("firstresult"):
            continue
        impls = caller.get_hookimpls()
        if not impls or any(i.hookwrapper or i.wrapper for i in impls):
            continue
        first = impls[-1]  # pluggy calls the last registered first
        cls = type(first.plugin)
        fn = _method(trees.get(cls.__module__), cls.__name__, first.function.__name__)
        if fn is not None and _returns_true_instance(fn, cls.__module__, trees):
            out.add(hook)
    return frozenset(out)


class _Parsed(dict):
    """module -> its parsed source, parsed on first use (modules with no source are absent)."""

    def __init__(self, sources: dict[str, str]):
        super().__init__()
        self.sources = sources

    def __contains__(self, module: object) -> bool:
        return bool(self.sources.get(module))  # type: ignore[call-overload]

    def get(self, module: str, default: Any = None) -> Any:  # type: ignore[override]
        if module not in self:
            return default
        if not dict.__contains__(self, module):
            self[module] = ast.parse(self.sources[module])
        return dict.__getitem__(self, module)


def without_fallbacks(sources: dict[str, str], hooks: frozenset[str]) -> dict[str, str]:
    """`sources` with `x or default` written `x` where `x` is an answer of one of `hooks` (see the module doc)."""
    if not hooks:
        return sources
    out = dict(sources)
    for module, text in sources.items():
        if not text or not any(f".{h}(" in text for h in hooks):
            continue
        tree = ast.parse(text)
        rewriter = _Fallbacks(hooks)
        tree = rewriter.visit(tree)
        if rewriter.changed:
            out[module] = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return out


class _Fallbacks(ast.NodeTransformer):
    def __init__(self, hooks: frozenset[str]):
        self.hooks, self.answers, self.changed = hooks, [frozenset()], False

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        counts = _bindings(node)
        once = {t.id for s in _own(node) if isinstance(s, ast.Assign) and len(s.targets) == 1
                and isinstance(t := s.targets[0], ast.Name) and counts.get(t.id) == 1 and self._answer(s.value)}
        self.answers.append(frozenset(once))
        self.generic_visit(node)
        self.answers.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        first = node.values[0]
        if isinstance(node.op, ast.Or) and (self._answer(first) or isinstance(first, ast.Name)
                                            and first.id in self.answers[-1]):
            self.changed = True
            return first
        return node

    def _answer(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in self.hooks \
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "hook"


def _own(fn: ast.AST):
    """The nodes of `fn`'s own scope (not inside a nested function, lambda or class)."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def _bindings(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, int]:
    """Name -> how many places bind it in `fn`'s own scope (over-counted where unsure: never under)."""
    counts: dict[str, int] = {}

    def add(name: str | None, n: int = 1) -> None:
        if name:
            counts[name] = counts.get(name, 0) + n

    for name in _params(fn.args):
        add(name)
    for node in _own(fn):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                add(name, 2)
        elif isinstance(node, ast.alias):
            add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler):
            add(node.name)
        elif isinstance(node, SCOPES[:2] + (ast.ClassDef,)):
            add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)):
            add(node.name, 2)
        elif isinstance(node, ast.MatchMapping):
            add(node.rest, 2)
    return counts


def _method(tree: ast.Module | None, cls: str, name: str) -> ast.FunctionDef | None:
    for node in tree.body if tree else ():
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == name), None)
    return None


def _returns_true_instance(fn: ast.FunctionDef, module: str, trees: dict[str, ast.Module]) -> bool:
    body = list(_own(fn))
    if not fn.body or not isinstance(fn.body[-1], ast.Return) or \
            any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in body):
        return False
    counts = _bindings(fn)
    made = {s.targets[0].id: s.value for s in body if isinstance(s, ast.Assign) and len(s.targets) == 1
            and isinstance(s.targets[0], ast.Name) and counts.get(s.targets[0].id) == 1}
    returns = [n.value for n in body if isinstance(n, ast.Return)]

    def true_call(value: ast.expr | None) -> bool:
        if isinstance(value, ast.Name) and value.id in made:
            value = made[value.id]
        return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
            _true_class(value.func.id, module, trees, set())

    return all(true_call(v) for v in returns)


def _true_class(name: str, module: str, trees: dict[str, ast.Module], seen: set[tuple[str, str]]) -> bool:
    found = _class(name, module, trees)
    if found is None or (found[0], name) in seen:
        return False
    (where, node), seen = found, seen | {(found[0], name)}
    defined = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    defined |= {t.id for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    if defined & SPECIAL or node.keywords or not all(_is_dataclass(d) for d in node.decorator_list):
        return False
    return all(isinstance(b, ast.Name) and _true_class(b.id, where, trees, seen) for b in node.bases)


def _class(name: str, module: str, trees: dict[str, ast.Module]) -> Any:
    """(module, ClassDef) of the module-level class `name` as `module` sees it (defined there, or imported by name
    from a bundled module), else None."""
    tree = trees.get(module)
    for node in tree.body if tree else ():
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
        if isinstance(node, ast.ImportFrom) and node.module in trees and not node.level:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _class(alias.name, node.module, trees)
    return None


def _is_dataclass(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "dataclass" or \
        isinstance(target, ast.Attribute) and target.attr == "dataclass"


def _stores_special(trees: Any) -> bool:
    """Whether any bundled code stores `__bool__`/`__len__`/`__new__` as an attribute (`C.__len__ = f`,
    `setattr(C, "__len__", f)`)."""
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in SPECIAL and not isinstance(node.ctx, ast.Load):
                return True
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and \
                    len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in SPECIAL:
                return True
    return False
