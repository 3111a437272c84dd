"""submissions.fallbacks: `x or default` after a hook whose answer is always a true object (issue #11)."""

from __future__ import annotations

import ast

from core.config import resolve
from core.registry import Registry
from submissions.bundle import bundle, bundle_sources
from submissions.fallbacks import _returns_true_instance, truthy_hooks, without_fallbacks

CORE = "def new_loader(run):\n    loader = run.hook.pg_x(run=run)\n    return loader or Default(run)\n"


def _impl(body: str, classes: str = "class L:\n    pass\n") -> bool:
    """Whether `P.pg_x` (its body `body`) always returns a true instance, with `classes` beside it."""
    src = classes + "class P:\n    def pg_x(self, run):\n" + "".join(f"        {line}\n" for line in body.split("\n"))
    tree = ast.parse(src)
    fn = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "P").body[0]
    return _returns_true_instance(fn, "m", {"m": tree, "n": ast.parse("class Imported:\n    x = 1\n")})


def test_a_new_instance_of_a_plain_class_is_a_true_answer_and_the_refusals():
    assert _impl("return L(run)")
    assert _impl("loader = L(run)\nif run.flag:\n    loader.extra = None\nreturn loader")
    assert _impl("return L(1) if False else L(2)") is False  # not a call of a class: refused
    assert _impl("if run.flag:\n    return L(1)\nreturn L(2)")
    assert _impl("return Imported()", "from n import Imported\n")
    assert _impl("return D()", "@dataclass\nclass D:\n    a: int = 1\n")
    assert _impl("return C()", "class B:\n    pass\nclass C(B):\n    pass\n")
    refused = {
        "a __len__": ("return L()", "class L:\n    def __len__(self):\n        return 0\n"),
        "a __bool__ in a base": ("return C()", "class B:\n    __bool__ = lambda self: False\nclass C(B):\n    pass\n"),
        "a __new__": ("return L()", "class L:\n    def __new__(cls):\n        return None\n"),
        "a library base": ("return L()", "class L(nn.ModuleList):\n    pass\n"),
        "a metaclass": ("return L()", "class L(metaclass=M):\n    pass\n"),
        "another decorator": ("return L()", "@wrap\nclass L:\n    pass\n"),
        "an unknown class": ("return Elsewhere()", ""),
        "a branch falling through": ("if run.flag:\n    return L()", "class L:\n    pass\n"),
        "a None return": ("if run.flag:\n    return None\nreturn L()", "class L:\n    pass\n"),
        "a local bound twice": ("x = L()\nx = run.other\nreturn x", "class L:\n    pass\n"),
        "a loop target": ("x = L()\nfor x in run.items:\n    pass\nreturn x", "class L:\n    pass\n"),
        "a generator": ("yield 1\nreturn L()", "class L:\n    pass\n"),
    }
    for why, (body, classes) in refused.items():
        assert not _impl(body, classes), why


def test_without_fallbacks_drops_only_an_or_after_the_named_hooks_answer():
    hooks = frozenset({"pg_x"})
    out = without_fallbacks({"m": CORE}, hooks)["m"]
    assert "Default" not in out and "return loader" in out
    direct = "def f(run):\n    return run.hook.pg_x(run=run) or Default(run)\n"
    assert "Default" not in without_fallbacks({"m": direct}, hooks)["m"]
    kept = {
        "another hook": CORE.replace("pg_x", "pg_y"),
        "a rebound local": CORE.replace("    return", "    loader = run.other\n    return"),
        "a parameter": "def f(run, loader):\n    loader = run.hook.pg_x(run=run)\n    return loader or Default(run)\n",
        "an and": CORE.replace(" or ", " and "),
        "another first operand": "def f(run):\n    loader = run.hook.pg_x(run=run)\n    return run.a or loader\n",
    }
    for why, src in kept.items():
        assert without_fallbacks({"m": src}, hooks)["m"] == src, why


def _cfg(plugins, sets):
    reg = Registry()
    return reg, resolve(plugin_config_classes=reg.config_classes(), plugins=plugins, sets=sets,
                        check_plugins=reg.check)


def test_a_plugin_loader_leaves_the_core_loader_out_of_the_bundle(tiny_sets):
    """`shuffled_loader` answers pg_train_loader with a new ShuffledSequenceLoader: the core's sequential loader
    (its `file_idx` cursor) leaves the specialised script; without the plugin it is the loader and stays."""
    reg, cfg = _cfg(["shuffled_loader"], tiny_sets)
    assert "pg_train_loader" in truthy_hooks(cfg, reg, bundle_sources(cfg, reg)[0])
    assert "file_idx" not in bundle(cfg, reg, wrap=False)
    reg, plain = _cfg([], tiny_sets)
    assert "pg_train_loader" not in truthy_hooks(plain, reg, bundle_sources(plain, reg)[0])
    assert "file_idx" in bundle(plain, reg, wrap=False)
