"""EMPTY COMPREHENSIONS (`submissions.empty`, issue #11): a comprehension that can yield nothing is written empty, and
`**{}` goes; one whose skipped parts could have an effect stays."""

from __future__ import annotations

import ast
import textwrap

import pytest

from submissions.empty import empty_comprehensions

CODE = """
SCHEMES = {'a': 1}

def schemes(opts):
    ignored = {id(p) for o in (opts, [1]) if False for g in o.groups for p in g} | {i for i in range(2) if 0}
    return {**SCHEMES, **{k: v for d in [] if d for k, v in d.items()}}, ignored, dict(**{}, b=2)
"""


def _same(a: str, b: str) -> bool:
    return ast.dump(ast.parse(textwrap.dedent(a))) == ast.dump(ast.parse(textwrap.dedent(b)))


def test_a_comprehension_that_yields_nothing_is_written_empty_and_behaves_the_same():
    out = empty_comprehensions({"m": textwrap.dedent(CODE)})["m"]
    assert _same(out, """
    SCHEMES = {'a': 1}

    def schemes(opts):
        ignored = set() | set()
        return {**SCHEMES}, ignored, dict(b=2)
    """), out
    results = []
    for text in (CODE, out):
        ns: dict = {}
        exec(textwrap.dedent(text), ns)
        results.append(ns["schemes"]([object()]))
    assert results[0] == results[1] == ({"a": 1}, set(), {"b": 2})


def test_a_name_bound_to_a_generator_is_not_folded_away():
    """The original consumes the generator; an empty literal in its place would not (review of issue #11)."""
    code = "def f(xs):\n    seen = [x for x in xs if False]\n    return seen, list(xs)\n"
    out = empty_comprehensions({"m": code})["m"]
    assert _same(out, code), out
    ns: dict = {}
    exec(out, ns)
    assert ns["f"](iter([1, 2])) == ([], [])  # the comprehension exhausted the iterator


def test_safe_literals_and_ranges_still_fold():
    code = ("def f(n, a):\n    return [x for x in range(n) if False], {k: 1 for k in {a: 1} if False}, "
            "[a for a, b in [(1, 2)] if False]\n")
    out = empty_comprehensions({"m": code})["m"]
    assert _same(out, "def f(n, a):\n    return [], {}, []\n"), out


@pytest.mark.parametrize("code", [
    "def f(make):\n    return [x for x in make() if False]\n",  # the iterable is evaluated: a call
    "def f(xs, seen):\n    return [x for x in xs if seen.add(x) if False]\n",  # a condition before the False one
    "def f(xs):\n    return [x for x in xs if x]\n",  # no constant condition
    "def f(xs):\n    return [x for x in [0] if True]\n",  # a literal that is not empty
    "def f(xs):\n    return [x for x in xs if False]\n",  # a pure name: it may hold a one-shot iterator
    "def f(o):\n    return {p for g in o.groups if False}\n",  # an attribute: the same
    "def f(g):\n    return [x for x in [*g] if False]\n",  # a display that unpacks (iterates) `g`
    "def f(g):\n    return [x for x in [sorted(g)] if False]\n",  # a display with a call that may iterate `g`
    "def f(g):\n    return [x for x in range(sum(g)) if False]\n",  # range of a call
    "def f(g):\n    return [x for x in [1] if 1 in g if False]\n",  # an `in` test before the False one
    "def f(g):\n    return [y for x in [g] for y in x if False]\n",  # a later iterable bound to an outer element
    "def f(g):\n    return [a for a, b in [g] if False]\n",  # unpacking the element iterates it
])
def test_a_comprehension_whose_skipped_parts_may_act_or_that_may_yield_stays(code):
    assert _same(empty_comprehensions({"m": code})["m"], code), code
