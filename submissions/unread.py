"""UNREAD CLASS LITERALS (issue #11): a class-level `name = <literal>` that nothing in the bundle reads goes.

An evaluator keeps `family = "evaluation"` beside the plugin's metadata; in a bundle nothing asks it. The rule is
`specialise.dead_attributes`' for the class level: the class is undecorated, has no bases, no metaclass and is no
other class's base (a subclass's library could read it); nothing in the bundle (nor `extra`, the script's own code)
reads an attribute of that name (`o.name`, `type(o).name`, `super().name`), no class-level code of the class reads the
bare name, no string names it (`getattr(o, "name")`), no `getattr`/`hasattr` f-string could build it (it contains none
of the f-string's literal parts; one without any refuses all), and no code calls
`vars`/`dir`/`getattr_static`/`getmembers` or reads a `__dict__` (what would see the class's namespace) other than as
`exec`/`eval`'s namespace (a dict: a class's is a read-only proxy, an instance's holds no class attribute).
Dunder, sunder and library objects' attribute names (`submissions.absent.library_attributes`) stay.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from submissions.absent import library_attributes
from submissions.lean import FUNCTIONS
from submissions.specialise import IDENT_RX

INTROSPECTION = frozenset({"vars", "dir", "__dict__", "getattr_static", "getmembers", "__getattribute__",
                           "__getattr__", "__init_subclass__", "__class_getitem__"})
BY_NAME = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def _literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) or isinstance(node, ast.Tuple) and all(map(_literal, node.elts))


def unread_class_literals(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` without their unread class-level literal bindings (module docstring); changed modules unparsed."""
    trees = {n: ast.parse(s) for n, s in sources.items() if s}
    everything = [*trees.values(), *(ast.parse(t) for t in extra)]
    read, words, bases, pieces = set(), set(), set(), set()
    calls = named = 0
    for tree in everything:
        namespaces = {id(a) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                      and n.func.id in ("exec", "eval") for a in n.args[1:]}  # a dict: never a class's namespace
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "__dict__" and id(node) in namespaces:
                continue  # the loader's `exec(code, module.__dict__)`
            if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                read.add(node.attr)
            elif isinstance(node, ast.Name) and node.id in INTROSPECTION:
                return sources
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(IDENT_RX.findall(node.value))
            if isinstance(node, ast.ClassDef):
                bases.update(n.id for b in (*node.bases, *(k.value for k in node.keywords))
                             for n in ast.walk(b) if isinstance(n, ast.Name))
            if isinstance(node, (*FUNCTIONS, ast.ClassDef)):
                read.add(node.name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BY_NAME:
                calls += 1
                built = node.args[1] if len(node.args) > 1 else ast.Constant("")
                parts = [p.value for p in ast.walk(built) if isinstance(p, ast.Constant) and isinstance(p.value, str)]
                if isinstance(built, ast.JoinedStr) and not parts:
                    return sources  # `getattr(o, f"{a}{b}")`: any name
                pieces.update(p for p in parts if p and not isinstance(built, ast.Constant))  # f"{a}_bits", "x" + a
            if isinstance(node, ast.Name) and node.id in BY_NAME:
                named += 1
    if INTROSPECTION & read or named != calls:  # `g = getattr`: calls we cannot see
        return sources
    library = library_attributes()

    def unread(name: str) -> bool:
        return not (name.startswith("_") or name in read or name in words or name in library
                    or any(p in name for p in pieces))

    changed = set()
    for module, tree in trees.items():
        for cls in (c for c in ast.walk(tree) if isinstance(c, ast.ClassDef)):
            if cls.bases or cls.keywords or cls.decorator_list or cls.name in bases:
                continue
            names = [n.id for n in ast.walk(cls) if isinstance(n, ast.Name)]
            keep = [s for s in cls.body if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(
                t := s.targets[0], ast.Name) and _literal(s.value) and unread(t.id) and names.count(t.id) == 1)]
            if len(keep) < len(cls.body):
                cls.body = keep or [ast.Pass()]
                changed.add(module)
    return {n: ast.unparse(ast.fix_missing_locations(trees[n])) + "\n" if n in changed else s
            for n, s in sources.items()}
