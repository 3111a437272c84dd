"""The LEAN profile of a specialised bundle: it does not re-check what `pgolf train`/`validate` checked (issue #11).

A specialised bundle runs one configuration that was resolved and validated at bundle time, on data the
challenge's harness provides. `lean_sources` removes, across all the bundle's modules at once:

- every `assert` statement (what `python -O` does);
- every INPUT GUARD: an `if` statement (with its `elif` chain) each of whose branches ends in `raise X(...)` or
  `raise X`, replaced by its final `else` body (or by nothing), when every condition is PURE (names, attributes,
  constants, comparisons, `and`/`or`/`not`, arithmetic, subscripts, literals, comprehensions, and calls of
  `PURE_CALLS` builtins / `PURE_METHODS` methods / the bundle's PURE FUNCTIONS, whose body is `return <pure>`,
  and plain dataclasses, by name or through their module object: `pure_functions`; a lambda is pure where its
  defaults are) and the guard is not PROTECTED (below);
- every TRANSLATING `try` (each handler ends in `raise X(...)`/`raise X`: it only turns one error into another;
  no `else`/`finally`), replaced by its body, where no recovering handler's reach (below) holds it.

Contract: on an input for which no removed guard or assert would have raised, the script does exactly what it did
(same statements, same values, same order); on an input one of them would have refused, it no longer promises
the one-line error. What is never removed, because a removal could change the normal path:
- a bare `raise` (re-raising inside a handler is control flow, not a check), and guards raising exceptions
  Python itself catches in protocols (`IMPLICITLY_CAUGHT`: `getattr`/`hasattr` catch AttributeError, `Mapping.get`
  KeyError, iteration StopIteration …), and every guard in a dunder method other than `CHECKING_DUNDERS`;
- a PROTECTED guard: one in the reach of an `except` clause that RECOVERS (its body does not end in `raise`, nor,
  in the script's `main`, in `return <nonzero exit status>`: reporting a bad setting is not recovering), whatever
  the guard raises and the handler names (its condition could raise what the handler catches). A guard is in
  reach of such a handler when it is inside its `try` body, or in a function reachable by name from that body (a name or
  attribute naming a function, method or class anywhere in the bundle, transitively; a class reaches all its
  methods; a call of anything but a known name also reaches every `__call__` and `forward`, and a function that
  calls one of its own parameters also reaches what its callers' bodies name).

A DEAD PURE STORE goes too: `x = <pure>`, `x += <pure>`, `x, y = <pure>`, or the `x` pair of `x, y = (<pure>, v)`,
in a function none of whose code (nested scopes included) reads `x` or declares it global/nonlocal, and that calls
no `locals`/`vars`/`eval`/`exec`, when the statement is not protected nor in a dunder that keeps its guards (what a
removed guard leaves: `ok = isinstance(...)`).
So does a DEAD ACCUMULATOR: a local only ever bound to a fresh container and only read as the receiver of
`x.append(<pure>)` statements (what a removed `if errors: raise …` leaves), with those statements.
A `for` loop over a pure iterable and an `if` on a pure condition whose bodies are left empty go too; an emptied
function keeps `pass`, and its calls go where they are statements with pure arguments and its name is used no other
way, like an empty `__post_init__` of a class with no bases (`_drop_empty_calls`).
After the bundle's settings are folded, `drop_unused_parameters` drops the parameters no code reads any more (and
the pure argument each direct call passes for them): its docstring says where.
The exception classes nothing raises any more are then left to the tree-shaker.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import contextvars
import re
from collections.abc import Iterable, Iterator

PURE_CALLS = {"len", "isinstance", "issubclass", "callable", "hasattr", "getattr", "type", "int", "float", "str",
              "bool", "abs",
              "min", "max", "all", "any", "sorted", "set", "frozenset", "tuple", "list", "dict", "round", "sum",
              "repr", "range", "zip", "enumerate", "divmod"}
PURE_METHODS = {"numel", "dim", "size", "element_size", "is_file", "is_dir", "exists", "startswith", "endswith",
                "get", "keys", "values", "items", "isdigit", "isidentifier", "isalnum", "strip", "lower", "upper",
                "split", "issubset", "issuperset", "isdisjoint", "is_floating_point", "count", "index", "join",
                # reductions and queries of tensors, arrays, devices and codecs (a guard's condition: `bool(t.any())`)
                "any", "all", "unique", "item", "min", "max", "sum", "reshape", "is_available", "is_finished",
                "sha256", "hexdigest", "match", "fullmatch", "search", "sub"}
IMPLICITLY_CAUGHT = {"AttributeError", "KeyError", "IndexError", "LookupError", "StopIteration",
                     "StopAsyncIteration", "GeneratorExit", "SystemExit", "KeyboardInterrupt", "BaseException",
                     "Exception"}
# Dunder methods no protocol calls under a handler of its own (the others keep their guards: `__getattr__` …).
CHECKING_DUNDERS = {"__init__", "__post_init__", "__call__"}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


# Expressions that are pure when all their parts are (operators and contexts are parts too).
COMPOSITE = (ast.Attribute, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare,
             ast.Subscript, ast.Slice, ast.IfExp, ast.Starred, ast.JoinedStr, ast.FormattedValue, ast.GeneratorExp,
             ast.ListComp, ast.SetComp, ast.comprehension, ast.expr_context, ast.operator, ast.unaryop, ast.cmpop,
             ast.boolop)


# The bundle's PURE FUNCTIONS while `lean_sources` runs (`pure_functions`): their calls are pure too.
_PURE_FUNCTIONS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("pure_functions", default=frozenset())
# ... and the ids of the attribute nodes that read a module-level definition through its module object (`ex.f`).
_QUALIFIED: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("qualified", default=frozenset())


def pure(node: ast.AST) -> bool:
    """An expression whose evaluation has no effect but its value (or an exception): names, constants, the
    `COMPOSITE` forms of pure parts, and calls of `PURE_CALLS` builtins / `PURE_METHODS` / the bundle's pure
    functions (`pure_functions`, inside `lean_sources`) with pure arguments."""
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.Lambda):  # makes a function: only its defaults are evaluated
        return all(pure(d) for d in (*node.args.defaults, *node.args.kw_defaults) if d is not None)
    if isinstance(node, ast.Call):
        f = node.func
        known = (isinstance(f, ast.Name) and (f.id in PURE_CALLS or f.id in _PURE_FUNCTIONS.get())) or (
            isinstance(f, ast.Attribute) and id(f) in _QUALIFIED.get() and f.attr in _PURE_FUNCTIONS.get()) or (
            isinstance(f, ast.Attribute) and f.attr in PURE_METHODS and pure(f.value))
        return known and all(pure(a) for a in node.args) and all(pure(k.value) for k in node.keywords)
    return isinstance(node, COMPOSITE) and all(pure(c) for c in ast.iter_child_nodes(node))


def _tail(node: ast.expr | None) -> str | None:
    """The class name a `raise`/`except` expression names (`X`, `X(...)`, `mod.X`), or None."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


class _Bundle:
    """What the whole bundle defines: functions/methods and classes by name, each node's parent, callers."""

    def __init__(self, trees: Iterable[ast.Module]):
        self.defs: dict[str, list[ast.AST]] = {}
        self.parent: dict[ast.AST, ast.AST] = {}
        self.trees = list(trees)
        for tree in self.trees:
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    self.parent[child] = node
                if isinstance(node, (*FUNCTIONS, ast.ClassDef)):
                    self.defs.setdefault(node.name, []).append(node)

    def function_of(self, node: ast.AST) -> ast.AST | None:
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, FUNCTIONS):
                return node
        return None

    def callers(self, fn: ast.AST) -> list[ast.AST]:
        name = fn.name
        return [self.function_of(n) or tree for tree in self.trees for n in ast.walk(tree)
                if isinstance(n, ast.Name) and n.id == name or isinstance(n, ast.Attribute) and n.attr == name]

    def reach(self, body: list[ast.stmt], where: ast.AST | None) -> set[ast.AST]:
        """The functions (nodes) reachable by name from `body` (in function `where`)."""
        seen: set[ast.AST] = set()
        todo: list[tuple[list[ast.AST], ast.AST | None]] = [(list(body), where)]
        while todo:
            nodes, fn = todo.pop()
            params = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)} if isinstance(
                fn, FUNCTIONS) else set()
            names: set[str] = set()
            for node in (n for top in nodes for n in ast.walk(top)):
                if isinstance(node, ast.Name):
                    names.add(node.id)
                elif isinstance(node, ast.Attribute):
                    names.add(node.attr)
                if isinstance(node, ast.Call):
                    f = node.func
                    if not (isinstance(f, ast.Name) and (f.id in self.defs or hasattr(builtins, f.id))
                            or isinstance(f, ast.Attribute)):
                        names |= {"__call__", "forward"}
                    if isinstance(f, ast.Name) and f.id in params and fn not in seen:
                        todo.extend((c.body if hasattr(c, "body") else [c], self.function_of(c))
                                    for c in self.callers(fn))
            for name in names:
                for d in self.defs.get(name, ()):
                    if d in seen:
                        continue
                    seen.add(d)
                    inner = d.body if isinstance(d, FUNCTIONS) else [
                        s for s in d.body if isinstance(s, (*FUNCTIONS, ast.ClassDef))]
                    if isinstance(d, ast.ClassDef):
                        seen.update(s for s in d.body if isinstance(s, FUNCTIONS))
                        todo.extend((s.body, s) for s in d.body if isinstance(s, FUNCTIONS))
                    else:
                        todo.append((inner, d))
        return seen


def _recovers(handler: ast.ExceptHandler, where: ast.AST | None) -> bool:
    """Whether the program goes on normally after `handler` (in function `where`): its body does not end in
    `raise`, nor, in the script's `main`, in `return <nonzero exit status>`."""
    last = handler.body[-1] if handler.body else None
    exits = isinstance(where, FUNCTIONS) and where.name == "main" and isinstance(last, ast.Return) and isinstance(
        last.value, ast.Constant) and type(last.value.value) is int and last.value.value != 0
    return not (isinstance(last, ast.Raise) or exits)


class _Protection:
    """Where a recovering handler could see an exception: the nodes of its `try` bodies and the functions they
    reach."""

    def __init__(self, bundle: _Bundle):
        self.bundle = bundle
        self.nodes: set[ast.AST] = set()
        self.functions: set[ast.AST] = set()
        for tree in bundle.trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.Try) and type(node).__name__ != "TryStar":
                    continue
                where = bundle.function_of(node)
                if any(_recovers(h, where) for h in node.handlers):
                    self.nodes.update(n for s in node.body for n in ast.walk(s))
                    self.functions |= bundle.reach(node.body, where)

    def protects(self, node: ast.stmt) -> bool:
        return node in self.nodes or self.bundle.function_of(node) in self.functions


def _guard_chain(node: ast.If) -> tuple[list[ast.If], list[ast.stmt]] | None:
    """(the `if`/`elif` nodes, the final `else` body) when every branch of the chain raises; else None."""
    chain = []
    while True:
        last = node.body[-1] if node.body else None
        if not (isinstance(last, ast.Raise) and last.exc is not None):
            return None
        chain.append(node)
        if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):
            node = node.orelse[0]
            continue
        return chain, node.orelse


class _Lean(ast.NodeTransformer):
    def __init__(self, protection: _Protection):
        self.protection = protection
        self.dunder = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        dunder = node.name.startswith("__") and node.name.endswith("__") and node.name not in CHECKING_DUNDERS
        self.dunder += dunder
        self.generic_visit(node)
        self.dunder -= dunder
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assert(self, node: ast.Assert) -> None:
        return None

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt] | None:
        chain = None if self.dunder else _guard_chain(node)
        if chain is not None:
            guards, rest = chain
            classes = {_tail(g.body[-1].exc) for g in guards}
            if (all(pure(g.test) for g in guards) and not classes & IMPLICITLY_CAUGHT
                    and not self.protection.protects(node)):
                return self._statements(rest)
        ast.NodeTransformer.generic_visit(self, node)
        if not node.body and not node.orelse and pure(node.test):
            return None
        if not node.body:
            node.body = [ast.Pass()]
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST | list[ast.stmt]:
        translates = node.handlers and all(h.body and isinstance(h.body[-1], ast.Raise) and h.body[-1].exc is not None
                                           for h in node.handlers)
        if translates and not node.orelse and not node.finalbody and not self.protection.protects(node):
            return self._statements(node.body) or [ast.Pass()]
        self.generic_visit(node)
        return node

    def visit_For(self, node: ast.For) -> ast.AST | None:
        ast.NodeTransformer.generic_visit(self, node)
        if not node.body and not node.orelse and pure(node.iter):
            return None
        node.body = node.body or [ast.Pass()]
        return node

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out = []
        for stmt in body:
            new = self.visit(stmt)
            out.extend(new if isinstance(new, list) else [] if new is None else [new])
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and not body and not isinstance(node, (ast.Module, ast.If, ast.For)):
            body.append(ast.Pass())  # an emptied `with`, `try`, handler, class or function body
        return node


SCOPE_READERS = {"locals", "vars", "eval", "exec"}  # a function calling one can read any of its locals


ADDERS = {"append", "extend", "add", "update", "insert"}  # what a DEAD ACCUMULATOR's only uses may call


def _fresh_container(node: ast.expr) -> bool:
    """A new, empty-or-pure list/dict/set display (`[]`, `{}`, `[x]`) or `list()`/`dict()`/`set()` of pure
    arguments: a container no other name can hold yet."""
    if isinstance(node, (ast.List, ast.Dict, ast.Set)):
        return pure(node)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
        "list", "dict", "set") and pure(node)


def _accumulation(stmt: ast.stmt) -> str | None:
    """The name `x` of a statement `x.append(<pure>)` (an `ADDERS` method, pure arguments), else None."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in ADDERS \
            and isinstance(call.func.value, ast.Name) and all(pure(a) for a in call.args) \
            and all(pure(k.value) for k in call.keywords):
        return call.func.value.id
    return None


def _dead_names(fn: ast.AST) -> set[str]:
    """The names `fn` stores but nothing in it reads (nor a nested scope, nor `locals()` …): parameters, globals
    and nonlocals excluded. A DEAD ACCUMULATOR counts as unread: a name every binding of which is a fresh
    container (`errors = []`) and every read of which is the receiver of an `x.append(<pure>)` statement (what
    a removed guard leaves of `if errors: raise …`); those statements are dropped with the bindings."""
    stored, read = set(), {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    fresh, added, other = set(), set(), set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            (stored if isinstance(node.ctx, ast.Store) else read).add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            read.update(node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SCOPE_READERS:
            return set()
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            (fresh if _fresh_container(node.value) else other).add(node.targets[0].id)
        elif isinstance(node, ast.stmt) and (name := _accumulation(node)) is not None:
            added.add(name)
    accumulators = set()
    for name in (fresh - other) & stored:
        loads = [n for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]
        stores = [n for n in ast.walk(fn)
                  if isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load)]
        binds = [n for n in ast.walk(fn) if isinstance(n, ast.Assign) and len(n.targets) == 1
                 and isinstance(n.targets[0], ast.Name) and n.targets[0].id == name]
        adds = [n for n in ast.walk(fn) if isinstance(n, ast.stmt) and _accumulation(n) == name]
        if len(stores) == len(binds) and len(loads) == len(adds):
            accumulators.add(name)
    return (stored - read) | accumulators


class _DeadStores(ast.NodeTransformer):
    """Drops the dead pure stores (module docstring) of every function; bodies it empties stay empty for `_Lean`."""

    def __init__(self, protection: _Protection):
        self.protection = protection
        self.dead: list[set[str]] = []
        self.removed = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        keeps_guards = node.name.startswith("__") and node.name.endswith("__") and node.name not in CHECKING_DUNDERS
        self.dead.append(set() if keeps_guards else _dead_names(node))
        self.generic_visit(node)
        self.dead.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.dead.append(set())  # class-body assignments are attributes, not locals
        self.generic_visit(node)
        self.dead.pop()
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        self.generic_visit(node)
        if not node.handlers and not node.finalbody:
            node.finalbody = [ast.Pass()]  # `try`/`finally` keeps its `finally:`
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | None:
        target = node.targets[0] if len(node.targets) == 1 else None
        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) and len(target.elts) == len(
                node.value.elts) and not any(isinstance(e, ast.Starred) for e in (*target.elts, *node.value.elts)):
            return self._unpacking(node, target, node.value)
        if isinstance(target, ast.Tuple) and target.elts and all(self._dead(e) for e in target.elts):
            target = target.elts[0]  # every name dead: the statement goes if its value is pure
        return self._store(node, target)

    def _dead(self, target: ast.expr) -> bool:
        return bool(self.dead) and isinstance(target, ast.Name) and target.id in self.dead[-1]

    def _unpacking(self, node: ast.Assign, target: ast.Tuple, value: ast.Tuple) -> ast.AST | None:
        """`a, b = (x, y)`: the pairs whose name is dead and whose value is pure go (`a = x`, or nothing)."""
        keep = [(t, v) for t, v in zip(target.elts, value.elts, strict=True) if not (self._dead(t) and pure(v))]
        if len(keep) == len(target.elts) or self.protection.protects(node):
            return node
        self.removed += 1
        if not keep:
            return None
        if len(keep) == 1:
            node.targets, node.value = [keep[0][0]], keep[0][1]
        else:
            target.elts, value.elts = [t for t, _ in keep], [v for _, v in keep]
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | None:
        return self._store(node, node.target)

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        name = _accumulation(node)
        if name is not None and self._dead(ast.Name(name)) and not self.protection.protects(node):
            self.removed += 1
            return None
        return self.generic_visit(node)

    def _store(self, node: ast.Assign | ast.AugAssign, target: ast.expr | None) -> ast.AST | None:
        if target is None:
            return node
        if self._dead(target) and pure(node.value) and not self.protection.protects(node):
            self.removed += 1
            return None
        return node


def lean_sources(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` (module name -> code) without asserts and unprotected pure input guards (the module docstring);
    `extra`: the script's other code (its main), whose handlers protect too but which stays as it is."""
    trees = {name: ast.parse(text) for name, text in sources.items()}
    others = [ast.parse(t) for t in extra]
    protection = _Protection(_Bundle([*trees.values(), *others]))
    qualified = _QUALIFIED.set(frozenset(_module_qualified(trees)))
    token = _PURE_FUNCTIONS.set(pure_functions([*trees.values(), *others]))
    try:
        for name, tree in trees.items():
            trees[name] = _leaner(_Lean(protection).visit(tree), protection)
        while _drop_empty_calls(trees, others):  # what is left of a checking function: its calls go too
            trees = {name: _leaner(_Lean(protection).visit(tree), protection) for name, tree in trees.items()}
    finally:
        _PURE_FUNCTIONS.reset(token)
        _QUALIFIED.reset(qualified)
    return {name: ast.unparse(ast.fix_missing_locations(tree)) for name, tree in trees.items()}


def _plain_dataclass(cls: ast.ClassDef) -> list[ast.expr] | None:
    """The expressions building a `cls()` evaluates (its fields' defaults) when `cls` is a `@dataclass` with no
    base, no metaclass, no `__init__`/`__post_init__`/`__new__`/`__setattr__` of its own and only `dict`/`list`/
    `set` as default factories (its constructor then only stores its arguments); else None."""
    d = cls.decorator_list
    if len(d) != 1 or not (isinstance(d[0], ast.Name) and d[0].id == "dataclass") or cls.bases or cls.keywords:
        return None
    values: list[ast.expr] = []
    for stmt in cls.body:
        if isinstance(stmt, FUNCTIONS) and stmt.name not in ("__init__", "__post_init__", "__new__", "__setattr__") \
                and not stmt.decorator_list:
            continue
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            return None
        v = stmt.value
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "field":
            factory = next((k.value for k in v.keywords if k.arg == "default_factory"), None)
            if v.args or (factory is not None and not (isinstance(factory, ast.Name) and factory.id in (
                    "dict", "list", "set"))):
                return None
            values += [k.value for k in v.keywords if k.arg != "default_factory"]
        elif v is not None:
            values.append(v)
    return values


def pure_functions(trees: list[ast.Module]) -> frozenset[str]:
    """The bundle's PURE FUNCTIONS: module-level functions whose body is `return <pure expression>` (a call of one
    is then pure too: found to a fixed point), undecorated, without `*args`/`**kwargs`, with pure defaults, defined
    once and their name bound nowhere else (no other definition, assignment, parameter or `import … as` of it), so
    that a call of the name anywhere is a call of that function; and the plain dataclasses (`_plain_dataclass`)
    with pure defaults, whose construction only stores its arguments."""
    defs: dict[str, list[ast.AST]] = {}
    bound: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (*FUNCTIONS, ast.ClassDef)):
                defs.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                bound.add(node.id)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                bound.add(node.asname)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                bound.update(node.names)
    candidates: dict[str, ast.expr] = {}
    for tree in trees:
        for fn in tree.body:
            if isinstance(fn, ast.ClassDef) and len(defs[fn.name]) == 1 and fn.name not in bound and (
                    values := _plain_dataclass(fn)) is not None:
                candidates[fn.name] = ast.Tuple(values, ast.Load())
            a = fn.args if isinstance(fn, ast.FunctionDef) else None
            if a is None or fn.decorator_list or a.vararg or a.kwarg or len(defs[fn.name]) != 1 or fn.name in bound:
                continue
            body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(
                fn.body[0].value, ast.Constant) else fn.body
            if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None and all(
                    pure(d) for d in (*a.defaults, *(d for d in a.kw_defaults if d is not None))):
                candidates[fn.name] = body[0].value
    found: set[str] = set()
    token = _PURE_FUNCTIONS.set(frozenset())
    try:
        while True:
            _PURE_FUNCTIONS.set(frozenset(found))
            new = {n for n, value in candidates.items() if n not in found and pure(value)}
            if not new:
                return frozenset(found)
            found |= new
    finally:
        _PURE_FUNCTIONS.reset(token)


def _leaner(tree: ast.Module, protection: _Protection) -> ast.Module:
    while True:  # a dropped store can leave another dead (`n = len(x); m = n + 1`) or a loop empty
        stores = _DeadStores(protection)
        tree = stores.visit(tree)
        if not stores.removed:
            return tree
        tree = _Lean(protection).visit(tree)


def _empty(fn: ast.AST) -> bool:
    return isinstance(fn, ast.FunctionDef) and not fn.decorator_list and all(isinstance(s, ast.Pass) for s in fn.body)


def _drop_empty_calls(trees: dict[str, ast.Module], others: list[ast.Module]) -> bool:
    """Drops, in place, the EMPTY CALLS: statements `f(<pure>)` calling a module-level function `f` whose body is
    only `pass` (undecorated, defined once in the bundle; its name used nowhere but in such statements and plain
    `from … import f`, never as a parameter, an attribute, a keyword or a word of a string), and the empty
    `__post_init__` of a class with no bases (a dataclass calls it only where it exists). Their effect is at most
    the call's argument-count error (lean: the configuration's calls were made at bundle time). The tree-shaker
    then drops the function. True when something was dropped."""
    every = [*trees.values(), *others]
    uses, elsewhere = _identifier_uses(every)
    params = {a.arg for t in every for a in ast.walk(t) if isinstance(a, ast.arg)}
    defs = [fn for t in trees.values() for fn in t.body if _empty(fn)]
    parents = {c: p for t in every for p in ast.walk(t) for c in ast.iter_child_nodes(p)}

    def dropped_call(node: ast.AST) -> bool:
        call = parents.get(node)
        return isinstance(call, ast.Call) and call.func is node and isinstance(parents.get(call), ast.Expr) and all(
            pure(a) and not isinstance(a, ast.Starred) for a in call.args) and all(
            k.arg and pure(k.value) for k in call.keywords)

    names = set()
    for fn in defs:
        nodes = uses.get(fn.name, [])
        if fn.name in elsewhere or fn.name in params or sum(
                isinstance(n, (*FUNCTIONS, ast.ClassDef)) for n in nodes) != 1:
            continue
        if all(n is fn or (isinstance(n, ast.alias) and not n.asname and isinstance(parents.get(n), ast.ImportFrom))
               or (isinstance(n, ast.Name) and dropped_call(n)) for n in nodes):
            names.add(fn.name)
    changed = False
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not node.bases and not node.keywords:
                kept = [s for s in node.body if not (_empty(s) and s.name == "__post_init__")]
                changed |= len(kept) != len(node.body)
                node.body = kept or [ast.Pass()]
            for field in ("body", "orelse", "finalbody"):
                body = getattr(node, field, None)
                if not isinstance(body, list) or not names:
                    continue
                kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
                                                and isinstance(s.value.func, ast.Name) and s.value.func.id in names)]
                if len(kept) != len(body):
                    changed = True
                    body[:] = kept or ([] if isinstance(node, (ast.Module, ast.If, ast.For)) else [ast.Pass()])
    return changed


def _identifier_uses(trees: Iterable[ast.AST], qualified: set[int] = frozenset()) -> tuple[
        dict[str, list[ast.AST]], set[str]]:
    """(name -> the nodes that use it as a plain name, an import or a definition, or as a `qualified` attribute
    (node ids: `mod.f` read through its module object); names that also show as another attribute, a keyword or a
    word of a string)."""
    uses: dict[str, list[ast.AST]] = {}
    elsewhere: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                uses.setdefault(node.id, []).append(node)
            elif isinstance(node, (*FUNCTIONS, ast.ClassDef)):
                uses.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.alias):
                uses.setdefault(node.asname or node.name, []).append(node)
                elsewhere.update([node.name] if node.asname else [])
            elif isinstance(node, ast.Attribute) and id(node) in qualified:
                uses.setdefault(node.attr, []).append(node)
            elif isinstance(node, ast.Attribute):
                elsewhere.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                elsewhere.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                elsewhere.update(re.findall(r"[A-Za-z_]\w*", node.value))
    return uses, elsewhere


def _unused_parameters(fn: ast.FunctionDef) -> list[int]:
    """Indexes of `fn`'s positional parameters nothing in it reads, each with a pure default (or none)."""
    a = fn.args
    if fn.decorator_list or a.vararg or a.kwarg or a.posonlyargs or any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in SCOPE_READERS
            for n in ast.walk(fn)):
        return []
    read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    defaults = dict(zip(range(len(a.args) - len(a.defaults), len(a.args)), a.defaults, strict=True))
    return [i for i, p in enumerate(a.args) if p.arg not in read and (i not in defaults or pure(defaults[i]))]


def drop_unused_parameters(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` with each UNUSED PARAMETER of a module-level function dropped, with the argument every call passes
    for it: a positional parameter its body never reads (nor a nested scope, nor `locals()` …), with a pure default,
    of an undecorated function defined once in the bundle whose name is only ever called directly, by its name or
    through its module object (`ex.f(…)`: `_module_qualified`), never another attribute, a value, a keyword or a
    word of a string, nor named in `extra`, the script's own code, when every
    call passes it a pure argument (or none) without `*`/`**` unpacking. So does a parameter after `self` of the
    `__init__` of an undecorated class whose name is only ever called so (no subclass, no isinstance, no classmethod:
    `self_constructed`). Lean contract: only the evaluation of
    pure arguments goes (folded settings leave `where` / `name` parameters no code reads any more)."""
    trees = {name: ast.parse(text) for name, text in sources.items()}
    others = [ast.parse(t) for t in extra]
    uses, elsewhere = _identifier_uses([*trees.values(), *others], _module_qualified(trees))
    elsewhere |= {n.id for t in others for n in ast.walk(t) if isinstance(n, ast.Name)}
    parents = {c: p for t in trees.values() for p in ast.walk(t) for c in ast.iter_child_nodes(p)}
    owner = {n: name for name, t in trees.items() for n in ast.walk(t) if isinstance(n, ast.Call)}
    changed: set[str] = set()
    constructed = self_constructed([*trees.values(), *others])
    for tree_name, tree in trees.items():
        for top in tree.body:
            fn, offset = top, 0
            if isinstance(top, ast.ClassDef) and not top.decorator_list and top.name not in constructed:
                inits = [f for f in top.body if isinstance(f, FUNCTIONS) and f.name == "__init__"]
                fn, offset = (inits[0], 1) if len(inits) == 1 else (top, 0)  # a call passes what follows `self`
            if not isinstance(fn, ast.FunctionDef) or top.name in elsewhere:
                continue
            nodes = uses.get(top.name, [])
            if sum(isinstance(n, (*FUNCTIONS, ast.ClassDef)) for n in nodes) != 1:
                continue
            refs = [n for n in nodes if isinstance(n, (ast.Name, ast.Attribute))]
            calls = [parents.get(n) for n in refs]
            if not all(isinstance(c, ast.Call) and c.func is n for c, n in zip(calls, refs, strict=True)):
                continue
            if any(isinstance(n, ast.alias) and not isinstance(parents.get(n), ast.ImportFrom) for n in nodes):
                continue
            drop = [i for i in _unused_parameters(fn) if i >= offset]
            names = {fn.args.args[i].arg for i in drop}
            if not drop or not all(_drops_cleanly(c, [i - offset for i in drop], names) for c in calls):
                continue
            for call in calls:
                call.args = [x for i, x in enumerate(call.args, offset) if i not in drop]
                call.keywords = [k for k in call.keywords if k.arg not in names]
            first_default = len(fn.args.args) - len(fn.args.defaults)
            fn.args.defaults = [d for i, d in enumerate(fn.args.defaults, first_default) if i not in drop]
            fn.args.args = [p for i, p in enumerate(fn.args.args) if i not in drop]
            changed |= {tree_name, *(owner[c] for c in calls)}
    return {n: ast.unparse(t) + "\n" if n in changed else sources[n] for n, t in trees.items()}


def self_constructed(trees: Iterable[ast.Module]) -> set[str]:
    """Classes whose instances may come from a call that does not name them: those with a classmethod (`cls(…)`),
    and every class where some code calls `type(x)(…)` or `x.__class__(…)`."""
    classes, anonymous = [], False
    for node in (n for t in trees for n in ast.walk(t)):
        if isinstance(node, ast.ClassDef):
            classes.append(node)
        elif isinstance(node, ast.Call) and not anonymous:
            anonymous = isinstance(node.func, ast.Call) and ast.unparse(node.func.func) == "type" \
                or isinstance(node.func, ast.Attribute) and node.func.attr == "__class__"
    if anonymous:
        return {c.name for c in classes}
    return {c.name for c in classes if any(isinstance(d, ast.Name) and d.id == "classmethod"
                                           for f in c.body if isinstance(f, FUNCTIONS) for d in f.decorator_list)}


def _module_qualified(trees: dict[str, ast.Module]) -> set[int]:
    """Ids of the attribute nodes `m.f` that read a module-level definition `f` of a bundled module through its
    module object (`from core import export as m`, `import core.export as m`; `m` bound nowhere else in that
    module): uses of `f` as its plain name would be."""
    defined = {name: {s.name for s in tree.body if isinstance(s, (*FUNCTIONS, ast.ClassDef))}
               for name, tree in trees.items()}
    out: set[int] = set()
    for tree in trees.values():
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname})
        aliases = {k: m for k, m in aliases.items() if m in trees}
        rebound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        rebound |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
        bindings = [a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.value.id not in rebound and bindings.count(node.value.id) == 1 \
                    and node.attr in defined[aliases[node.value.id]]:
                out.add(id(node))
    return out


def _drops_cleanly(call: ast.Call, drop: list[int], names: set[str]) -> bool:
    """`call` passes the dropped parameters (by position or keyword) only pure values, and unpacks nothing."""
    if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
        return False
    return all(pure(x) for i, x in enumerate(call.args) if i in drop) and all(
        pure(k.value) for k in call.keywords if k.arg in names)



@contextlib.contextmanager
def purity(functions: frozenset[str]) -> Iterator[None]:
    """Inside it, `pure` counts calls of the module-level `functions` as pure (as it does the bundle's
    `pure_functions` inside `lean_sources`)."""
    token = _PURE_FUNCTIONS.set(functions)
    try:
        yield
    finally:
        _PURE_FUNCTIONS.reset(token)
