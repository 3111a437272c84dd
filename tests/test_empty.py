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
    ignored = {id(p) for o in opts if False for g in o.groups for p in g}
    return {**SCHEMES, **{k: v for d in [] if d for k, v in d.items()}}, ignored, dict(**{}, b=2)
"""


def _same(a: str, b: str) -> bool:
    return ast.dump(ast.parse(textwrap.dedent(a))) == ast.dump(ast.parse(textwrap.dedent(b)))


def test_a_comprehension_that_yields_nothing_is_written_empty_and_behaves_the_same():
    out = empty_comprehensions({"m": textwrap.dedent(CODE)})["m"]
    assert _same(out, """
    SCHEMES = {'a': 1}

    def schemes(opts):
        ignored = set()
        return {**SCHEMES}, ignored, dict(b=2)
    """), out
    results = []
    for text in (CODE, out):
        ns: dict = {}
        exec(textwrap.dedent(text), ns)
        results.append(ns["schemes"]([object()]))
    assert results[0] == results[1] == ({"a": 1}, set(), {"b": 2})


@pytest.mark.parametrize("code", [
    "def f(make):\n    return [x for x in make() if False]\n",  # the iterable is evaluated: a call
    "def f(xs, seen):\n    return [x for x in xs if seen.add(x) if False]\n",  # a condition before the False one
    "def f(xs):\n    return [x for x in xs if x]\n",  # no constant condition
    "def f(xs):\n    return [x for x in [0] if True]\n",  # a literal that is not empty
])
def test_a_comprehension_whose_skipped_parts_may_act_or_that_may_yield_stays(code):
    assert _same(empty_comprehensions({"m": code})["m"], code), code
