"""Specialise a bundle to its one configuration (issue #11): bundle-time source transformations, core/ untouched.

- Static hook dispatch (`dispatcher_module`): the bundle knows its plugins, so its `core.registry` is generated:
  the `Plugin` base class and a `make_manager` that builds the plugins and a small dispatcher whose
  `hook.pg_x(**kw)` calls their implementations in exactly the order pluggy would (read from a live
  PluginManager at bundle time: registration order, tryfirst/trylast), with pluggy's result semantics (a list of
  the non-None results; `firstresult`: the first non-None one, or None). Only the hooks the bundled code calls
  are dispatched; `@hookimpl` markers are dropped (`drop_hookimpl_markers`), so pluggy, the hookspecs and the
  registry's discovery/validation leave the bundle, and an implementation of a hook no bundled code calls (e.g.
  `pg_wrap_code`, used at bundle time only) is tree-shaken. A configuration with a hook wrapper is not
  specialised (`None`: the bundle keeps pluggy).
- Frozen configuration (`FROZEN_MAIN`): the script builds its Config from RECIPE (already resolved, validated at
  bundle time) plus the environment variables (each setting's challenge name, as `pgolf train` reads them) and
  `section.key=value` arguments, coerced as `core.config.coerce` does; `config.resolve` and the registry's
  checks are not bundled. What such a script cannot do: change its plugin list (PGOLF_PLUGINS,
  `core.plugins=`), or report every invalid setting at once (a bad value stops it with the first error).
"""

from __future__ import annotations

import ast
import functools
import inspect
from typing import Any

from core.config import Config
from core.registry import Plugin, Registry, make_manager
from submissions.minify import names_in

MARKER = "hookimpl"


def _is_marker(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Name) and target.id == MARKER


@functools.lru_cache(maxsize=256)
def drop_hookimpl_markers(source: str) -> str:
    """`source` without `@hookimpl` / `@hookimpl(...)` decorators, its `core.hookspecs` imports (the static
    dispatcher needs no markers) and `pluggy.*` class-level annotations (`object` instead)."""
    tree = ast.parse(source)
    body = [s for s in tree.body if not (isinstance(s, ast.ImportFrom) and s.module == "core.hookspecs")]
    changed = len(body) != len(tree.body)
    tree.body = body
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and "pluggy" in names_in([node.annotation]):
            node.annotation = ast.Name("object")  # `pm: pluggy.PluginManager` (a Run field): the dispatcher
            changed = True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kept = [d for d in node.decorator_list if not _is_marker(d)]
            changed |= len(kept) != len(node.decorator_list)
            node.decorator_list = kept
    return ast.unparse(tree) + "\n" if changed else source


def called_hooks(sources: dict[str, str]) -> set[str]:
    """`pg_*` names the sources read as attributes (`run.hook.pg_x(...)`): the hooks the bundle calls."""
    return set().union(*map(_hook_attributes, sources.values()))


@functools.lru_cache(maxsize=256)
def _hook_attributes(text: str) -> frozenset[str]:
    return frozenset(node.attr for node in ast.walk(ast.parse(text))
                     if isinstance(node, ast.Attribute) and node.attr.startswith("pg_"))


DISPATCH = '''
class _Hook:
    def __init__(self, first, impls):
        self.first = first
        self.impls = impls

    def get_hookimpls(self):
        return self.impls

    def __call__(self, **kwargs):
        results = []
        for method, names in self.impls:
            value = method(*[kwargs[n] for n in names])
            if value is not None:
                if self.first:
                    return value
                results.append(value)
        return None if self.first else results
'''


def _module(cls: type, modules: dict[str, str]) -> str:
    """The bundle's name of the module defining `cls` (`modules`: a plugin file's module -> its bundled name)."""
    return modules.get(cls.__module__, cls.__module__)


def dispatcher_module(cfg: Config, registry: Registry, hooks: set[str], modules: dict[str, str]) -> str | None:
    """Source of the bundle's `core.registry`: `Plugin`, a `Registry` of the enabled plugins' classes, and a
    `make_manager` whose hooks (those in `hooks`) call the enabled plugins exactly as pluggy would; None when a
    hook wrapper is enabled. `modules` renames plugin-file modules to their bundled names."""
    from core.train import CoreDefaults

    pm = make_manager(registry, cfg, CoreDefaults())
    order = ["core", *registry.registration_order(registry.run_plugins(cfg.plugins))]
    lines = ["def make_manager(registry, config, core_impl=None):", " import types", " c = config.plugin_configs.get"]
    names = []
    for name in order[1:]:
        cls = registry.plugins[name]
        alias = f"P{len(names)}"
        lines.append(f" from {_module(cls, modules)} import {cls.__name__} as {alias}")
        names.append(f"{alias}(c({name!r}))")
    lines.append(f" p = [core_impl, {', '.join(names)}]")
    entries = []
    for hook in sorted(hooks):
        caller = getattr(pm.hook, hook, None)
        if caller is None or caller.spec is None:
            continue
        impls = caller.get_hookimpls()
        if any(i.hookwrapper or i.wrapper for i in impls):
            return None
        calls = [f"(p[{order.index(i.plugin_name)}].{i.function.__name__}, {tuple(i.argnames)!r})"
                 for i in reversed(impls)]  # pluggy calls the last of get_hookimpls() first
        first = int(bool(caller.spec.opts.get("firstresult")))
        entries.append(f"{hook}=_Hook({first}, [{', '.join(calls)}])")
    lines.append(f" return types.SimpleNamespace(hook=types.SimpleNamespace({', '.join(entries)}))")
    registry_cls = ["class Registry:", " @property", " def plugins(self):", *(" " + x for x in lines[3:3 + len(names)]),
                    f"  return {{c.name: c for c in ({''.join(f'P{i}, ' for i in range(len(names)))})}}"]
    return "\n".join([plugin_base(), *registry_cls, DISPATCH, *lines]) + "\n"


def plugin_base() -> str:
    """`core.registry.Plugin` as the bundle needs it: its metadata defaults without annotations, `__init__`."""
    cls = ast.parse(inspect.getsource(Plugin)).body[0]
    assert isinstance(cls, ast.ClassDef)
    body: list[ast.stmt] = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            body.append(ast.Assign(targets=[stmt.target], value=stmt.value, lineno=0))
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
            body.append(stmt)
    cls.body = body
    return ast.unparse(ast.fix_missing_locations(cls))


FROZEN_MAIN = '''
def main(argv):
    import dataclasses
    import typing
    from pathlib import Path

    sys.meta_path.insert(0, _BundledModules())
    from core import train
    from core.config import Config, CoreConfig, coerce, env_name
    SECTION_IMPORTS
    own_size = len(Path(__file__).resolve().read_bytes())
    if os.environ.get("PGOLF_PLUGINS"):
        print("train_gpt.py: PGOLF_PLUGINS: this script's plugins are fixed (bundle another list)", file=sys.stderr)
        return 2
    source = "recipe:" + RECIPE["source"]
    sources = {"plugins": source}
    values = {s: {} for s in classes}
    items = [(s, k, v, source) for s, table in RECIPE.items() if s in classes for k, v in table.items()]
    for s, cls in classes.items():
        for f in dataclasses.fields(cls) if cls else ():
            if (name := env_name(s, f)) in os.environ:
                items.append((s, f.name, os.environ[name], "env:" + name))
    for arg in argv:
        key, _, value = arg.partition("=")
        s, _, key = key.strip().rpartition(".")
        items.append((s or "core", key, value, "--set"))
    try:
        for s, key, value, origin in items:
            values[s][key] = coerce(value, typing.get_type_hints(classes[s])[key], f"{s}.{key}")
            sources[f"{s}.{key}"] = origin
        cfg = Config(core=CoreConfig(**values["core"]), plugins=RECIPE["plugins"],
                     plugin_configs={s: c and c(**values[s]) for s, c in classes.items() if s != "core"},
                     sources=sources)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"train_gpt.py: bad setting {exc}", file=sys.stderr)
        return 2
    train.run_training(cfg, None, code_size=lambda config, registry: own_size)
    return 0
'''


def frozen_main(cfg: Config, registry: Registry, modules: dict[str, str]) -> str:
    """`FROZEN_MAIN` with the imports of the enabled plugins' config classes and the `classes` table."""
    imports, table = [], ["'core': CoreConfig"]
    for name in cfg.plugins:
        cls: Any = registry.plugins[name].config
        if cls is None:
            table.append(f"{name!r}: None")
            continue
        alias = f"C{len(imports)}"
        imports.append(f"from {_module(cls, modules)} import {cls.__name__} as {alias}")
        table.append(f"{name!r}: {alias}")
    body = "\n    ".join([*imports, f"classes = {{{', '.join(table)}}}"])
    return FROZEN_MAIN.replace("SECTION_IMPORTS", body)
