"""EMPTY COMPREHENSIONS (issue #11): what folding leaves of a comprehension that can yield nothing, written empty.

Folding a bundle to its configuration leaves comprehensions over an empty literal (`{k: v for d in [] if d for k, v
in d.items()}`: no plugin answers the hook) or filtered by a constant False (`[g for x in (1, 2) if False …]`: an
absent attribute); `empty_comprehensions` writes them as the empty value and drops the `**{}` they become.

The rule for a constant false condition: the comprehension still evaluates and ITERATES every iterable up to the
generator whose condition is false (and evaluates the conditions before it), so those steps must have no effect.
`lean.pure` judges evaluating an expression, not iterating its value: a pure name may hold a one-shot generator or
iterator that the original consumes and the empty value does not (`[x for x in gen if False]` leaves `gen`
exhausted). So each of those iterables must be a SAFE ITERABLE, one whose iteration is known to run no code:
a list, tuple, set or dict display of pure elements, or a constant, or `range(...)` of pure arguments, with no
unpacking, call, comprehension or `in` test inside (`lean.pure` admits `[*g]`, `{**d}`, `list(g)`, `sorted(g)`,
`x in g`, which iterate `g`; a display's iteration only yields its elements, or its keys); a generator's target is a
plain name unless its iterable is a display whose elements are all list/tuple displays (unpacking an element iterates
it); and the conditions before the false one are pure with no such part either. A name, attribute or call as an
iterable (`for o in run.optimizers if False`) is refused however pure: nothing here proves what it holds. As with
`lean.pure`, an exception the skipped code could raise is not kept.
"""

from __future__ import annotations

import ast
import functools
import re

from submissions.lean import pure

EMPTY = {ast.ListComp: "[]", ast.SetComp: "set()", ast.DictComp: "{}"}
# Parts of a pure expression that may iterate a value (`*g`, `list(g)`, `[x for x in g]`; and `x in g`)
ITERATES = (ast.Starred, ast.Call, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# What such code looks like once unparsed (a text without any is not parsed: a cheap first look)
MAYBE_EMPTY = re.compile(r"\bin (?:\[\]|\(\))|\bif (?:False|None|0|0\.0|''|\(\))(?![\w.])|\*\*\{\}")


def empty_comprehensions(sources: dict[str, str]) -> dict[str, str]:
    """`sources` with each list, set or dict comprehension that yields nothing written `[]`, `set()` or `{}`: its first
    iterable is an empty literal (`[]`, `()`), or one of its generators has a constant false condition and the
    iterables up to it are safe iterables and the conditions before it pure (see the module docstring); and each
    `**{}` in a dict display or a call dropped (it adds no item, passes no argument)."""
    return {name: _emptied(text) if text and MAYBE_EMPTY.search(text) else text for name, text in sources.items()}


@functools.lru_cache(maxsize=256)
def _emptied(text: str) -> str:
    tree = ast.parse(text)
    emptier = _Emptier()
    tree = emptier.visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n" if emptier.changed else text


def _yields_nothing(node: ast.ListComp | ast.SetComp | ast.DictComp) -> bool:
    first = node.generators[0].iter
    if isinstance(first, (ast.List, ast.Tuple)) and not first.elts:
        return True
    for gen in node.generators:
        if not _safe_iteration(gen):
            return False
        for condition in gen.ifs:
            if isinstance(condition, ast.Constant) and not condition.value:
                return True
            if not _consumes_nothing(condition):
                return False
    return False


def _safe_iteration(gen: ast.comprehension) -> bool:
    """Evaluating `gen`'s iterable, iterating it and binding each item to its target runs no code (see the module
    docstring)."""
    it = gen.iter
    if isinstance(it, (ast.List, ast.Tuple, ast.Set)):
        items = it.elts
    elif isinstance(it, ast.Dict):
        if any(k is None for k in it.keys):  # `{**d}` unpacks `d`
            return False
        items = it.keys
    elif isinstance(it, ast.Constant):
        items = []
    elif isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and not it.keywords:
        items = []
    else:
        return False
    if not pure(it) or not all(map(_consumes_nothing, it.args if isinstance(it, ast.Call) else [it])):
        return False
    return isinstance(gen.target, ast.Name) or (
        isinstance(it, (ast.List, ast.Tuple, ast.Set)) and all(isinstance(e, (ast.List, ast.Tuple)) for e in items))


def _consumes_nothing(node: ast.expr) -> bool:
    """`node` is pure and has no part that may iterate a value (`ITERATES`, `x in g`)."""
    return pure(node) and not any(isinstance(n, ITERATES) or isinstance(n, (ast.In, ast.NotIn)) for n in ast.walk(node))


def _empty_dict(node: ast.expr) -> bool:
    return isinstance(node, ast.Dict) and not node.keys


class _Emptier(ast.NodeTransformer):
    """Writes the comprehensions that yield nothing as their empty value, and drops `**{}`; `changed` says whether
    it did."""

    def __init__(self) -> None:
        self.changed = False

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp) -> ast.expr:
        self.generic_visit(node)
        if _yields_nothing(node):
            self.changed = True
            return ast.parse(EMPTY[type(node)], mode="eval").body
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = _comprehension

    def visit_Dict(self, node: ast.Dict) -> ast.expr:
        self.generic_visit(node)
        kept = [(k, v) for k, v in zip(node.keys, node.values, strict=True) if not (k is None and _empty_dict(v))]
        if len(kept) < len(node.keys):
            self.changed = True
            node.keys, node.values = [k for k, _ in kept], [v for _, v in kept]
        return node

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        kept = [k for k in node.keywords if not (k.arg is None and _empty_dict(k.value))]
        if len(kept) < len(node.keywords):
            self.changed = True
            node.keywords = kept
        return node
