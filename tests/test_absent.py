"""ABSENT ATTRIBUTES (`submissions.absent`, issue #11): `getattr(x, "name", d)` is `d` where nothing in the bundle can
give an object that attribute, and the cases that could are left alone."""

from __future__ import annotations

import ast
import textwrap

import pytest

from submissions.absent import absent_attributes

PLAN = """
class Loader:
    def __init__(self, n):
        self.n = n

    def next_batch(self):
        return self.n

def ready(flag):
    return flag == 'compile'

def plan(loader, flag):
    shapes = getattr(loader, 'warm_batches', None) if ready(flag) else None
    if hasattr(loader, 'warm_batches'):
        return 'declared'
    return shapes(loader.n) if shapes else [loader.next_batch()]
"""


def _absent(code: str, extra: str = "") -> str:
    return absent_attributes({"m": textwrap.dedent(code)}, [textwrap.dedent(extra)] if extra else [])["m"]


def _same(a: str, b: str) -> bool:
    return ast.dump(ast.parse(textwrap.dedent(a))) == ast.dump(ast.parse(textwrap.dedent(b)))


def test_a_name_nothing_gives_an_object_is_answered_by_the_default_and_behaves_the_same():
    out = _absent(PLAN)
    assert _same(out, PLAN.replace("getattr(loader, 'warm_batches', None) if ready(flag) else None", "None")
                 .replace("hasattr(loader, 'warm_batches')", "False")), out
    for text in (PLAN, out):
        ns: dict = {}
        exec(textwrap.dedent(text), ns)
        assert [ns["plan"](ns["Loader"](3), f) for f in ("compile", "eager")] == [[3], [3]]
    # `.upper()` of a built string writes no lower-case name: still folded
    assert "getattr" not in _absent(PLAN + "\ndef env(a, b):\n    return f'{a}_{b}'.upper()\n")


@pytest.mark.parametrize("change", [
    "\nclass Packed(Loader):\n    def warm_batches(self, n):\n        return [n]\n",  # a method of that name
    "\ndef strip(loader):\n    loader.warm_batches = None\n",  # a store (doc_packing's)
    "\ndef wrap(f):\n    return SimpleNamespace(next_batch=f, warm_batches=f)\n",  # a keyword
    "\ndef put(o, f):\n    setattr(o, 'warm_batches', f)\n",  # a string that names it
    "\nFIELDS = 'WARM_BATCHES n'\n",  # in any case
    "\ndef put(o, kind, f):\n    setattr(o, f'warm_{kind}', f)\n",  # an f-string that may write it
    "\ndef put(o, kind, f):\n    setattr(o, 'warm_' + kind, f)\n",  # a concatenation
    "\ndef put(o, kind, f):\n    setattr(o, '%s_batches' % kind, f)\n",  # a %-format
    "\ndef put(o, kind, f):\n    setattr(o, '{}_batches'.format(kind), f)\n",  # a .format
    "\ndef put(o, parts, f):\n    setattr(o, '_'.join(parts), f)\n",  # a join whose separator is in the name
    "\ndef put(o, a, b, f):\n    setattr(o, f'{a}_{b}'.lower(), f)\n",  # .lower() of a string that may be it
    "\nclass Any:\n    def __getattr__(self, name):\n        return len\n",  # answers every name
    "\ngetattr = lambda o, n, d=None: d\n",  # not the builtin
])
def test_a_name_the_bundle_may_give_an_object_is_left_alone(change):
    assert "warm_batches" in _absent(PLAN + change), change


def test_the_scripts_own_code_library_names_and_impure_parts_are_respected():
    assert "warm_batches" in _absent(PLAN, extra="def main(loader):\n    loader.warm_batches = None\n")
    # a name a library object has (a tensor's `shape`), a dunder: the receiver may be one
    for name in ("shape", "__len__", "state_dict"):
        assert name in _absent(f"def f(x):\n    return getattr(x, '{name}', None)\n")
    # a library module's feature (`hasattr(torch, "float8_e4m3fn")`) or an imported object's: the bundle never writes
    # it, but the library has it
    assert "float8_e4m3fn" in _absent("import torch\ndef f():\n    return hasattr(torch, 'float8_e4m3fn')\n")
    assert "Buffer" in _absent("from torch import nn\ndef f():\n    return getattr(nn, 'Buffer', None)\n")
    # the receiver's or the default's evaluation has an effect: kept; an impure test keeps its conditional expression
    assert "getattr" in _absent("def f(make):\n    return getattr(make(), 'warm_batches', None)\n")
    out = _absent("def f(x, step):\n    return getattr(x, 'warm_batches', None) if step() else None\n")
    assert _same(out, "def f(x, step):\n    return None if step() else None\n"), out
