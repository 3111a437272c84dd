"""UNREAD CLASS LITERALS (`submissions.unread`, issue #11): a class-level literal nothing reads goes; one that
something could read (an attribute, a string, a built name, a subclass, the class namespace) stays."""

from __future__ import annotations

import textwrap

import pytest

from submissions.unread import unread_class_literals

CODE = textwrap.dedent("""
class Evaluator:
    name = 'ttt'
    family = 'evaluation'
    sizes = (1, 2)

    def __init__(self, n):
        self.n = n

    def score(self):
        return self.name, self.n
""")


def _run(src: str) -> tuple:
    ns: dict = {}
    exec(src, ns)
    return ns["Evaluator"](3).score()


def test_an_unread_class_literal_goes_and_the_class_behaves_the_same():
    out = unread_class_literals({"m": CODE})["m"]
    assert "family" not in out and "sizes" not in out and "name = 'ttt'" in out  # `self.name` is read: kept
    assert _run(out) == _run(CODE) == ("ttt", 3)


@pytest.mark.parametrize("other", [
    "x = Evaluator(1).family",  # an attribute read
    "x = getattr(Evaluator, 'family')",  # a string names it
    "def f(o, k):\n    return getattr(o, f'fam{k}')",  # a built name containing a literal part of it
    "def f(o, a, b):\n    return getattr(o, f'{a}{b}')",  # a built name with no literal part: anything
    "g = getattr",  # getattr rebound: calls not visible
    "x = vars(Evaluator)",
    "x = Evaluator.__dict__",
    "class Sub(Evaluator):\n    pass",  # a subclass (a library base of it could read by name)
])
def test_a_class_literal_something_could_read_stays(other):
    src = CODE + "\n" + other + "\n"
    assert "family = 'evaluation'" in unread_class_literals({"m": src})["m"]
    assert "family = 'evaluation'" in unread_class_literals({"m": CODE}, [other])["m"]  # the script's own code


@pytest.mark.parametrize("cls", [
    "class E(Base):\n    family = 'x'\n",  # a base (a library's) may read it
    "@deco\nclass E:\n    family = 'x'\n",  # a decorator may
    "class E(metaclass=M):\n    family = 'x'\n",
    "class E:\n    family = 'x'\n    other = family\n",  # read by the class body
    "class E:\n    __slots__ = ()\n    _family = 'x'\n",  # dunder / private names
])
def test_a_class_whose_literals_could_be_read_otherwise_keeps_them(cls):
    assert unread_class_literals({"m": cls})["m"] == cls


def test_the_loaders_exec_namespace_does_not_refuse():
    loader = "import types\nm = types.ModuleType('m')\nexec('x = 1', m.__dict__)\n"
    assert "family" not in unread_class_literals({"m": CODE}, [loader])["m"]
