"""EMPTY COMPREHENSIONS (issue #11): what folding leaves of a comprehension that can yield nothing, written empty.

Folding a bundle to its configuration leaves comprehensions over an empty literal (`{k: v for d in [] if d for k, v
in d.items()}`: no plugin answers the hook) or filtered by a constant False (`{id(p) for o in opts if False …}`: an
absent attribute); `empty_comprehensions` writes them as the empty value and drops the `**{}` they become.
"""

from __future__ import annotations

import ast
import functools
import re

from submissions.lean import pure

EMPTY = {ast.ListComp: "[]", ast.SetComp: "set()", ast.DictComp: "{}"}
# What such code looks like once unparsed (a text without any is not parsed: a cheap first look)
MAYBE_EMPTY = re.compile(r"\bin (?:\[\]|\(\))|\bif (?:False|None|0|0\.0|''|\(\))(?![\w.])|\*\*\{\}")


def empty_comprehensions(sources: dict[str, str]) -> dict[str, str]:
    """`sources` with each list, set or dict comprehension that yields nothing written `[]`, `set()` or `{}`: its first
    iterable is an empty literal (`[]`, `()`), or one of its generators has a constant false condition and the
    iterables and conditions before it are pure (`lean.pure`: evaluating them, and iterating, has no effect); and each
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
        if not pure(gen.iter):
            return False
        for condition in gen.ifs:
            if isinstance(condition, ast.Constant) and not condition.value:
                return True
            if not pure(condition):
                return False
    return False


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
