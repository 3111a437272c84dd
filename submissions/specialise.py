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
- Short hook names (`rename_hooks`): with dispatch static, a hook's `pg_*` name is only an identifier (the
  dispatcher's attribute, the implementations' method names), so each gets a short fresh name everywhere.
- Plugin metadata (`PLUGIN_METADATA`: summaries, sources, roles, `check_config`/`check_peers`) is dropped, and
  the field types of dataclasses other than the configs become `0` (`erase_field_types`).
- Constant folding (`fold_sources`), by this rule: STRUCTURAL settings are folded into literals and the script
  refuses an override to another value (`FIXED`: "gptq.clip: fixed to 'sdclip' in this script"), like its plugin
  list: a plugin's bool settings, its str settings where the code compares them with literals (a choice of scheme,
  backend, mode: `self.cfg.clip == "sdclip"`), and the core's bool model switches (`STRUCTURAL_CORE`). Everything
  else stays OVERRIDABLE (RECIPE < env < arguments): numbers (learning rates, iterations, sizes, wall clock,
  seeds), free-form strings (paths, run id, percentiles) and the machine switches (device, compile, attention,
  deterministic). The record profile (`switches`) folds more: a plugin's setting at zero or empty ("off") that
  decides a branch, and `RECORD_CORE`. A setting is found as `self.cfg.x` in the plugin's class, `<…>.core.x`, a
  local bound once to either, and a parameter of a function or class that every call passes the plugin's `self.cfg`
  or such a parameter of its own (`config_parameters`); folding runs again on the tree-shaken sources (calls from
  dropped code no longer count; `with_fixed` adds what it folds to `FIXED`). Hooks no enabled plugin implements
  are answered by their constant (`None` / `[]`),
  `not run.hook.pg_x.get_hookimpls()` by its truth; literal arguments every call of a function passes become
  constants inside it (`constant_arguments`, also after tree-shaking: `fold_arguments`; a class's calls too, for its
  `__init__`), an instance attribute only ever stored once, to a literal, in its class's `__init__` is that literal
  in the class's methods (`constant_attributes`), and an attribute store nothing can read goes (`dead_attributes`).
  Then comparisons, `not`,
  `and`/`or`, `x if c else y` and `if` on constants are evaluated, dead branches and statements after a
  `return`/`raise` dropped, locals bound once to a constant (alone or
  as a pair of a tuple assignment) replaced; the tree-shaker then removes what only those
  branches used.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
from collections.abc import Iterable
from typing import Any

from core.config import Config
from core.registry import Plugin, Registry, make_manager
from submissions.lean import FUNCTIONS, pure, self_constructed
from submissions.minify import names_in, short_names

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
        for method in self.impls:
            code = method.__code__
            value = method(*[kwargs[n] for n in code.co_varnames[1:code.co_argcount - len(method.__defaults__ or ())]])
            if value is not None:
                if self.first:
                    return value
                results.append(value)
        return None if self.first else results
'''


def direct_calls(sources: dict[str, str]) -> dict[str, tuple[frozenset[str], bool]]:
    """For each hook whose every use in `sources` is a call with keyword arguments only (`run.hook.pg_x(a=…)`):
    (the one set of keywords every call passes, whether any call uses the result). Hooks used otherwise
    (`.get_hookimpls()`, passed as a value, `*`/`**` or varying keywords) are left out."""
    seen: dict[str, tuple[frozenset[str], bool] | None] = {}
    for text in sources.values():
        for hook, use in _hook_calls(text):
            old = seen.get(hook, use)
            seen[hook] = None if old is None or use is None or old[0] != use[0] else (use[0], old[1] or use[1])
    return {h: v for h, v in seen.items() if v is not None}


@functools.lru_cache(maxsize=256)
def _hook_calls(text: str) -> tuple[tuple[str, tuple[frozenset[str], bool] | None], ...]:
    tree = ast.parse(text)
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("pg_"):
            call = parents.get(node)
            if isinstance(call, ast.Call) and call.func is node and not call.args \
                    and all(k.arg for k in call.keywords):
                read = not isinstance(parents[call], ast.Expr)
                out.append((node.attr, (frozenset(k.arg for k in call.keywords), read)))
            else:
                out.append((node.attr, None))
    return tuple(out)


def _module(cls: type, modules: dict[str, str]) -> str:
    """The bundle's name of the module defining `cls` (`modules`: a plugin file's module -> its bundled name)."""
    return modules.get(cls.__module__, cls.__module__)


def dispatcher_module(cfg: Config, registry: Registry, hooks: set[str], modules: dict[str, str],
                      direct: dict[str, tuple[frozenset[str], bool]] | None = None,
                      noops: dict[str, frozenset[str]] | None = None) -> str | None:
    """Source of the bundle's `core.registry`: `Plugin`, a `Registry` of the enabled plugins' classes, and a
    `make_manager` whose hooks (those in `hooks`) call the enabled plugins exactly as pluggy would; None when a
    hook wrapper is enabled. `modules` renames plugin-file modules to their bundled names. Only the plugins that
    implement a dispatched hook are built (`code_wrapper`'s `pg_wrap_code` runs at bundle time only), and each
    implementation gets its arguments by the names of its parameters without defaults (pluggy's `argnames`:
    checked here against pluggy's own list). A hook with ONE implementation that every call (`direct`:
    `direct_calls`) passes exactly its arguments is that bound method itself, where pluggy's result is the method's
    (`firstresult`) or no call reads it."""
    from core.train import CoreDefaults

    pm = make_manager(registry, cfg, CoreDefaults())
    order = ["core", *registry.registration_order(registry.run_plugins(cfg.plugins))]
    entries, used = [], {"core"}
    for hook in sorted(hooks):
        caller = getattr(pm.hook, hook, None)
        if caller is None or caller.spec is None:
            continue
        impls = caller.get_hookimpls()
        if any(i.hookwrapper or i.wrapper for i in impls):
            return None
        impls = [i for i in impls if i.plugin_name not in (noops or {}).get(hook, ())]  # they return None only
        for i in impls:
            code = i.function.__code__
            if tuple(i.argnames) != code.co_varnames[1:code.co_argcount - len(i.function.__defaults__ or ())]:
                return None  # an implementation pluggy calls otherwise (not a plain method): keep pluggy
        used.update(i.plugin_name for i in impls)
        entries.append((hook, int(bool(caller.spec.opts.get("firstresult"))), [i for i in reversed(impls)]))
    lines = ["def make_manager(registry, config, core_impl=None):", " import types", " c = config.plugin_configs.get"]
    imports, built, index = [], [], {"core": 0}
    for name in order[1:]:
        cls = registry.plugins[name]
        imports.append(f" from {_module(cls, modules)} import {cls.__name__} as P{len(imports)}")
        if name in used:
            lines.append(imports[-1])
            index[name] = len(built) + 1
            built.append(f"P{len(imports) - 1}(c({name!r}))")
    lines.append(f" p = [core_impl, {', '.join(built)}]")
    def dispatch(hook: str, first: int, impls: list) -> str:
        methods = [f"p[{index[i.plugin_name]}].{i.function.__name__}" for i in impls]  # pluggy calls the last first
        calls = (direct or {}).get(hook)
        if len(impls) == 1 and calls and calls[0] == set(impls[0].argnames) and (first or not calls[1]):
            return f"{hook}={methods[0]}"
        return f"{hook}=_Hook({first}, [{', '.join(methods)}])"

    hook_table = ", ".join(dispatch(*entry) for entry in entries)
    lines.append(f" return types.SimpleNamespace(hook=types.SimpleNamespace({hook_table}))")
    registry_cls = ["class Registry:", " @property", " def plugins(self):", *(" " + x for x in imports),
                    f"  return {{c.name: c for c in ({''.join(f'P{i}, ' for i in range(len(imports)))})}}"]
    return "\n".join([plugin_base(), *registry_cls, DISPATCH, *lines]) + "\n"


# Plugin class attributes only the registry reads (discovery, ordering, checks, `pgolf plugins`), and the
# configuration-time validators: the static dispatcher and the frozen, already validated Config need none of them.
PLUGIN_METADATA = frozenset({"family", "summary", "sources", "requires", "conflicts", "provides", "default", "after",
                             "before", "test_settings", "check_config", "check_peers"})


def plugin_classes(sources: dict[str, str]) -> set[str]:
    """Names of the classes that derive from `Plugin`, directly or through another such class (to a fixpoint)."""
    bases = [cb for text in sources.values() for cb in _class_bases(text)]
    names = {"Plugin"}
    while True:
        more = {name for name, base in bases if base & names} - names
        if not more:
            return names
        names |= more


@functools.lru_cache(maxsize=256)
def _class_bases(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((n.name, frozenset(b.id for b in n.bases if isinstance(b, ast.Name)))
                 for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ClassDef))


def drop_plugin_metadata(sources: dict[str, str]) -> dict[str, str]:
    """`sources` without the `PLUGIN_METADATA` attributes and methods of their plugin classes (summaries,
    sources, roles, `check_config` …): text that never runs in a specialised bundle, and whose words would keep
    definitions alive in the tree-shaker (it keeps what a string names)."""
    plugins = frozenset(plugin_classes(sources) - {"Plugin"})
    return {name: _drop_metadata(text, plugins) for name, text in sources.items()}


@functools.lru_cache(maxsize=256)
def _drop_metadata(text: str, plugins: frozenset[str]) -> str:
    tree = ast.parse(text)
    changed = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in plugins:
            kept = [s for s in node.body if _bound_name(s) not in PLUGIN_METADATA]
            changed |= len(kept) != len(node.body)
            node.body = kept or [ast.Pass()]
    return ast.unparse(tree) + "\n" if changed else text


def erase_field_types(sources: dict[str, str], typed: set[str]) -> dict[str, str]:
    """`sources` with the field annotations of their dataclasses written `0` (with `from __future__ import
    annotations` they are strings nobody evaluates), except in the `typed` classes (the configs: the script coerces
    settings by `typing.get_type_hints`) and ClassVar / InitVar / KW_ONLY fields (dataclasses reads those)."""
    return {name: _erase_types(text, frozenset(typed)) for name, text in sources.items()}


@functools.lru_cache(maxsize=256)
def _erase_types(text: str, typed: frozenset[str]) -> str:
    if "from __future__ import annotations" not in text:
        return text
    tree = ast.parse(text)
    changed = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name not in typed and "dataclass" in names_in(node.decorator_list):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and not names_in([stmt.annotation]) & SPECIAL_FIELDS \
                        and not (isinstance(stmt.annotation, ast.Constant) and stmt.annotation.value == 0):
                    stmt.annotation = ast.Constant(0)
                    changed = True
    return ast.unparse(tree) + "\n" if changed else text


SPECIAL_FIELDS = {"ClassVar", "InitVar", "KW_ONLY"}


def config_class_names(cfg: Config, registry: Registry) -> set[str]:
    """Names of the configuration classes (and their bases) whose annotations the script evaluates."""
    from core.config import CoreConfig

    classes = [CoreConfig, *(registry.plugins[n].config for n in cfg.plugins if registry.plugins[n].config)]
    return {c.__name__ for cls in classes for c in cls.__mro__}


def _bound_name(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return stmt.name
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    return None


def plugin_base() -> str:
    """`core.registry.Plugin` as the bundle needs it: `name` and `config` without annotations, `__init__` (the
    rest of its metadata is read by the registry only, `PLUGIN_METADATA`)."""
    cls = ast.parse(inspect.getsource(Plugin)).body[0]
    assert isinstance(cls, ast.ClassDef)
    body: list[ast.stmt] = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None \
                and stmt.target.id not in PLUGIN_METADATA:
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
            if f"{s}.{key}" in FIXED and values[s][key] != FIXED[f"{s}.{key}"]:
                raise ValueError(f"{s}.{key}: fixed to {FIXED[f'{s}.{key}']!r} in this script (bundle another)")
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


# The record profile's main (`submissions.bundle` lists what the profile drops): like the records' Hyperparameters,
# each setting that is not folded reads its environment variable (the names `pgolf train` reads: `env_name`) over
# RECIPE and the class default, converted by the type of that value (a bool from 0/1); no arguments, no sources, no
# refusals, no error translation. The full main's PGOLF_PLUGINS refusal and source bookkeeping are not in it.
RECORD_MAIN = '''
def main():
    import dataclasses

    sys.meta_path.insert(0, _BundledModules())
    from core import train
    from core.config import Config, CoreConfig, env_name
    SECTION_IMPORTS
    values = {}
    for s, cls in classes.items():
        kw = {**RECIPE.get(s, {})}
        for f in dataclasses.fields(cls) if cls else ():
            name = env_name(s, f)
            if name in os.environ and s + "." + f.name not in FIXED:
                t = type(kw.get(f.name, f.default))
                kw[f.name] = t(int(os.environ[name])) if t is bool else t(os.environ[name])
        values[s] = cls and cls(**kw)
    size = os.path.getsize(__file__)
    train.run_training(Config(values.pop("core"), RECIPE["plugins"], values), None, lambda *_: size)
'''
RECORD_TAIL = '''

if __name__ == "__main__":
    main()
'''


def frozen_main(cfg: Config, registry: Registry, modules: dict[str, str], fixed: dict[str, Any] | None = None,
                profile: str = "full", sections: set[str] | None = None) -> str:
    """`FROZEN_MAIN` (the "record" profile: `RECORD_MAIN`) with the imports of the enabled plugins' config classes,
    the `classes` table and `FIXED` (the folded settings, "section.key" -> value: an override to another value is
    refused; in `RECORD_MAIN` the set of their names: their variables are not read). `sections`: the plugins whose
    settings the table lists (default: every enabled plugin; `record_sections`)."""
    imports, table = [], ["'core': CoreConfig"]
    for name in (n for n in cfg.plugins if sections is None or n in sections):
        cls: Any = registry.plugins[name].config
        if cls is None and profile == "record":  # `plugin_configs.get(name)` is None all the same
            continue
        if cls is None:
            table.append(f"{name!r}: None")
            continue
        alias = f"C{len(imports)}"
        imports.append(f"from {_module(cls, modules)} import {cls.__name__} as {alias}")
        table.append(f"{name!r}: {alias}")
    fixed = dict(sorted((fixed or {}).items()))
    names = f"{{{', '.join(map(repr, fixed))}}}" if fixed else "set()"  # sorted: no hash-seed order in the text
    fixed_table = f"FIXED = {fixed!r}" if profile == "full" else f"FIXED = {names}"
    body = "\n    ".join([*imports, f"classes = {{{', '.join(table)}}}", fixed_table])
    return (FROZEN_MAIN if profile == "full" else RECORD_MAIN).replace("SECTION_IMPORTS", body)


def record_sections(cfg: Config, registry: Registry, sources: dict[str, str], hooks: set[str]) -> dict[str, bool]:
    """The enabled plugins whose settings a record-profile script reads: those the dispatcher builds (they implement
    a hook in `hooks`: `self.cfg`) and those whose settings differ from the defaults (the run's config.json then
    still rebuilds this very script); every enabled plugin when code other than `core.config` reads `plugin_configs`
    or calls a `section` method (it might look any section up). A plugin left out (e.g. `code_wrapper`, bundle time
    only, at its defaults) has no entry in the script's `Config.plugin_configs`, nor in its config.json.
    Section -> whether the dispatcher builds its plugin (if not, nothing but config.json reads its settings)."""
    if any("plugin_configs" in text or ".section(" in text for name, text in sources.items() if name != "core.config"):
        return dict.fromkeys(cfg.plugins, True)
    from core.train import CoreDefaults

    pm = make_manager(registry, cfg, CoreDefaults())
    built = {i.plugin_name for h in hooks if (c := getattr(pm.hook, h, None)) is not None and c.spec is not None
             for i in c.get_hookimpls()}
    changed = {n for n in cfg.plugins if (c := cfg.plugin_configs.get(n)) is not None and c != type(c)()}
    return {n: n in built for n in cfg.plugins if n in built or n in changed}


def without_sources(source: str) -> str:
    """`core.config` for the record profile: its `Config` without the `sources` field (where each value came from: a
    record script resolves nothing) and without the "sources" entry of the dicts it dumps (config.json); the source
    unchanged where `Config` reads `.sources` otherwise."""
    tree = ast.parse(source)
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config"):
        cls.body = [s for s in cls.body if not (isinstance(s, ast.AnnAssign) and ast.unparse(s.target) == "sources")]
        for d in (n for n in ast.walk(cls) if isinstance(n, ast.Dict)):
            pairs = [(k, v) for k, v in zip(d.keys, d.values, strict=True)
                     if not (isinstance(k, ast.Constant) and k.value == "sources" and isinstance(v, ast.Attribute)
                             and v.attr == "sources")]
            d.keys, d.values = [k for k, _ in pairs], [v for _, v in pairs]
        if any(isinstance(n, ast.Attribute) and n.attr == "sources" for n in ast.walk(cls)):
            return source
    return ast.unparse(tree) + "\n"


def main_sections(loader: str) -> list[str]:
    """The sections of a specialised main's `classes` table (`frozen_main`), in order."""
    for node in ast.walk(ast.parse(loader)):
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["classes"] \
                and isinstance(node.value, ast.Dict):
            return [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    raise ValueError("no `classes` table in the script's main")


def prune_fixed(sources: dict[str, str], loader: str) -> str:
    """The record main's `FIXED` (names of folded settings: their variables are not read) less the settings no code
    of `sources` reads any more: no attribute and no string of that field's name (after tree-shaking the folded
    reads are gone, and a setting nothing reads needs no guard), and those of sections its `classes` table leaves
    out."""
    tree = ast.parse(loader)
    read = {n.attr for text in sources.values() for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute)}
    read |= {w for text in sources.values() for n in ast.walk(ast.parse(text))
             if isinstance(n, ast.Constant) and isinstance(n.value, str) for w in IDENT_RX.findall(n.value)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["FIXED"] \
                and isinstance(node.value, (ast.Set, ast.Call)):
            sections = main_sections(loader)  # a section the table leaves out is not read at all
            kept = [e.value for e in getattr(node.value, "elts", [])
                    if e.value.split(".", 1)[0] in sections and e.value.split(".", 1)[1] in read]
            node.value = ast.Set([ast.Constant(k) for k in kept]) if kept else ast.parse("set()").body[0].value
            return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return loader


def _fixed_assignment(tree: ast.AST) -> ast.Assign | None:
    """The specialised main's `FIXED = …` statement (the full main's dict of values, the record main's set of names)."""
    return next((n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and [ast.unparse(t) for t in n.targets] == ["FIXED"]), None)


def _fixed_value(node: ast.Assign) -> dict[str, Any] | set[str]:
    return set() if isinstance(node.value, ast.Call) else ast.literal_eval(node.value)  # `set()` is a call


def with_fixed(loader: str, more: dict[str, Any]) -> str:
    """The specialised main `loader` with the settings `more` ("section.key" -> value) added to its `FIXED`:
    settings a later folding pass folded."""
    tree = ast.parse(loader)
    node = _fixed_assignment(tree)
    if node is None:
        return loader
    old = _fixed_value(node)
    if isinstance(old, dict):
        node.value = ast.parse(repr(dict(sorted({**old, **more}.items())))).body[0].value  # type: ignore[attr-defined]
    else:
        names = sorted({*old, *more})
        node.value = ast.parse(f"{{{', '.join(map(repr, names))}}}" if names else "set()").body[0].value  # type: ignore[attr-defined]
    if ast.dump(node.value) != ast.dump(ast.parse(repr(old) if old else "set()").body[0].value):  # type: ignore[attr-defined]
        return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return loader


def fixed_of(loader: str) -> set[str]:
    """The "section.key" names in the specialised main's `FIXED`."""
    node = _fixed_assignment(ast.parse(loader))
    return set(_fixed_value(node)) if node else set()


def without_fixed_checks(cfg: Config, registry: Registry, sources: dict[str, str], fixed: set[str]) -> dict[str, str]:
    """`sources` without the statements of a settings class's `__post_init__` that only pass folded settings to a
    function (`parse_bits_overrides(self.bits_overrides)`: a check of a value the script cannot change, made at bundle
    time), and the method when nothing else is left in it."""
    fields: dict[str, set[str]] = {}  # settings class (or a base of one) -> its fields whose setting is fixed
    for name in cfg.plugins:
        cls = registry.plugins[name].config
        for c in cls.__mro__ if cls else ():
            fields.setdefault(c.__name__, set()).update(k.split(".", 1)[1] for k in fixed if k.startswith(name + "."))
    return {n: _drop_fixed_checks(t, {c: frozenset(f) for c, f in fields.items() if f}) if t else t
            for n, t in sources.items()}


def _drop_fixed_checks(text: str, fields: dict[str, frozenset[str]]) -> str:
    tree = ast.parse(text)
    changed = False

    def only_fixed(stmt: ast.stmt, names: frozenset[str]) -> bool:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        args = [*call.args, *(k.value for k in call.keywords)] if isinstance(call, ast.Call) else []
        return isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and bool(args) and all(
            isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id == "self"
            and a.attr in names for a in args)

    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in fields):
        for fn in [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__post_init__"]:
            kept = [st for st in fn.body if not only_fixed(st, fields[cls.name])]
            if len(kept) != len(fn.body):
                changed = True
                fn.body = kept
                if not kept:
                    cls.body.remove(fn)
                    cls.body = cls.body or [ast.Pass()]
    return ast.unparse(tree) + "\n" if changed else text


def unread_fields(cfg: Config, sources: dict[str, str], sections: Iterable[str]) -> list[tuple[str, str]]:
    """("section", "key") of the settings of `sections` that no code of `sources` reads: no attribute, keyword or
    string names the field, and no f-string builds it (`getattr(cfg, f"{family}_bits")`: a name ending "_bits")."""
    read: set[str] = set()
    ends: set[str] = set()  # f"{family}_bits": a name ending "_bits" may be read; f"bits_{x}": one beginning "bits_"
    starts: set[str] = set()
    for text in sources.values():
        for n in ast.walk(ast.parse(text)):
            if isinstance(n, ast.Attribute):
                read.add(n.attr)
            elif isinstance(n, ast.keyword) and n.arg:
                read.add(n.arg)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                read.update(IDENT_RX.findall(n.value))
            elif isinstance(n, ast.JoinedStr):
                for a, b in zip(n.values, n.values[1:], strict=False):
                    if isinstance(a, ast.FormattedValue) and isinstance(b, ast.Constant):
                        ends.add(re.match(r"\w*", b.value)[0])  # type: ignore[index]
                    elif isinstance(b, ast.FormattedValue) and isinstance(a, ast.Constant):
                        starts.add(re.search(r"\w*$", a.value)[0])  # type: ignore[index]
    ends = {w for w in ends if w.startswith("_")}  # a name glued to a value: "_bits", "bits_" ("s" of "…:.1f}s": no)
    starts = {w for w in starts if w.endswith("_")}
    out = []
    for name in sections:
        settings = cfg.plugin_configs.get(name)
        for f in dataclasses.fields(settings) if dataclasses.is_dataclass(settings) else ():
            if f.name not in read and not any(f.name.endswith(w) for w in ends) \
                    and not any(f.name.startswith(w) for w in starts):
                out.append((name, f.name))
    return out


def without_events(source: str) -> str:
    """`source` without its `run.event(...)` statements: a record-profile script's only bookkeeping output is its
    train.log (no events.jsonl; `pgolf record`/`validate` read the log where events.jsonl is absent)."""
    tree = ast.parse(source)

    class Drop(ast.NodeTransformer):
        def visit_Expr(self, node: ast.Expr) -> Any:
            call = node.value
            if isinstance(call, ast.Call) and isinstance(f := call.func, ast.Attribute) and f.attr == "event" \
                    and isinstance(f.value, ast.Name) and f.value.id == "run":
                return None
            return node

    tree = Drop().visit(tree)
    _fill_empty_bodies(tree)
    return ast.unparse(tree) + "\n"


# Hooks a record-profile script does not call (`fold_sources(silent=)`): `pg_report`'s fields go to metrics.json
# only, where `pgolf record` reads none of them (it reads val_loss, val_bpb, code_bytes and total_bytes).
RECORD_SILENT_HOOKS = frozenset({"pg_report"})


# --- Constant folding (issue #11; the rule is in the module docstring) -----------------------------------------
STRUCTURAL_CORE = frozenset({"tie_embeddings", "eval_doc_mask"})
# And in a record-profile script (`fold_sources(switches=True)`): how the final evaluation runs, compiled or eager (the
# records compile theirs); at "auto" its eager-time probe stays, at "compile" or "eager" it leaves the script.
RECORD_CORE = frozenset({"eval_compile"})
_CMP = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b, ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b,
        ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
        ast.GtE: lambda a, b: a >= b}


def _const(node: ast.AST) -> tuple[bool, Any]:
    """(is a literal, its value) of a constant or a tuple of constants."""
    if isinstance(node, ast.Constant):
        return True, node.value
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return True, tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    return False, None


def _literal_comparison(node: ast.Compare) -> bool:
    return len(node.ops) == 1 and type(node.ops[0]) in _CMP and _const(node.comparators[0])[0]


class Folder(ast.NodeTransformer):
    """One folding pass over a module (see the rules above). `core`: structural core setting -> value;
    `plugin`: class name -> (its settings -> value) for the enabled plugins' classes; `empty`: hook -> the constant
    it returns. `folded` collects the "section.key" settings whose reads were replaced."""

    def __init__(self, core: dict[str, Any], plugin: dict[str, tuple[str, dict[str, Any]]], empty: dict[str, Any],
                 counts: dict[str, int] | None = None, switches: bool = False):
        self.core, self.plugin, self.empty, self.counts = core, plugin, empty, counts or {}
        self.switches = switches  # a plugin's zero or empty setting that decides a branch is structural
        self.folded: set[str] = set()
        self.section: tuple[str, dict[str, Any]] | None = None  # the enclosing plugin class's settings
        self.aliases: dict[str, str] = {}  # local name -> "core" / "cfg" (a `x = run.core` / `x = self.cfg`)
        self.in_class = False
        self.cls_name = ""  # the enclosing class
        self.literals: dict[str, ast.expr] = {}  # module-level names bound once to a literal (tuple), never rebound

    def visit_Module(self, node: ast.Module) -> ast.AST:
        self.literals = _module_literals(node)
        self.generic_visit(node)
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        outer, self.section = self.section, self.plugin.get(node.name)
        in_class, self.in_class = self.in_class, True
        cls_name, self.cls_name = self.cls_name, node.name
        self.generic_visit(node)
        self.section, self.in_class, self.cls_name = outer, in_class, cls_name
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        outer = self.aliases
        self.aliases = {**outer, **_aliases(node)}
        # A module-level function, or a class's __init__, whose parameter always receives a plugin's `self.cfg`.
        key = node.name if not self.in_class else f"{self.cls_name}.__init__" if node.name == "__init__" else None
        for param in (a.arg for a in [*node.args.args, *node.args.kwonlyargs]) if key else ():
            if (found := self.plugin.get(f"{key}({param})")) is not None:
                self.aliases[param] = found
        in_class, self.in_class = self.in_class, True  # nested functions: not module-level
        self.generic_visit(node)
        self.aliases, self.in_class = outer, in_class
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def _section_of(self, base: ast.expr) -> Any:
        """"core", a plugin's (section, settings), or None: what `base` (in `base.setting`) is."""
        if isinstance(base, ast.Name):
            kind = self.aliases.get(base.id)
            return self._self_attribute("cfg") if kind == "cfg" else kind
        if isinstance(base, ast.Attribute) and base.attr == "core":
            return "core"
        if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "self":
            return self._self_attribute(base.attr)
        return None

    def _self_attribute(self, attr: str) -> Any:
        if attr == "cfg" and self.section is not None:
            return self.section  # a plugin's own settings
        return self.plugin.get(f"{self.cls_name}.self.{attr}")  # a class that keeps a plugin's settings

    def _setting(self, node: ast.expr, needs_literal_use: bool) -> tuple[bool, Any]:
        if not isinstance(node, ast.Attribute):
            return False, None
        section = self._section_of(node.value)
        if section == "core" and node.attr in self.core:
            self.folded.add(f"core.{node.attr}")
            return True, self.core[node.attr]
        if isinstance(section, tuple) and node.attr in section[1]:
            value = section[1][node.attr]
            off = self.switches and isinstance(value, (int, float, str)) and not value  # 0, 0.0, "": a feature off
            if isinstance(value, bool) or (needs_literal_use and (isinstance(value, str) or off)):
                self.folded.add(f"{section[0]}.{node.attr}")
                return True, value
        return False, None

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        if len(node.comparators) == 1 and isinstance(c := node.comparators[0], ast.Name) and c.id in self.literals:
            node.comparators = [self.literals[c.id]]  # `x in CLIPS`, CLIPS a module-level tuple of literals
        if _literal_comparison(node):
            ok, value = self._setting(node.left, True)
            if ok:
                node.left = ast.Constant(value)
        self.generic_visit(node)
        left, right = _const(node.left), _const(node.comparators[0])
        if len(node.ops) == 1 and type(node.ops[0]) in _CMP and left[0] and right[0]:
            return ast.Constant(_CMP[type(node.ops[0])](left[1], right[1]))
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        ok, value = self._setting(node, False) if isinstance(node.ctx, ast.Load) else (False, None)
        if ok:
            return ast.Constant(value)
        self.generic_visit(node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in self.empty and isinstance(f.value, ast.Attribute) \
                and f.value.attr == "hook" and all(_side_effect_free(a) for a in [*node.args, *node.keywords]):
            value = self.empty[f.attr]
            return ast.Constant(None) if value is None else ast.List(elts=[], ctx=ast.Load())
        return node

    def _switch(self, node: ast.expr) -> ast.expr:
        """`node` folded where it is a plugin's setting read for its truth (with `switches`), else `node`."""
        ok, value = self._setting(node, True) if self.switches else (False, None)
        return ast.Constant(value) if ok else node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        if isinstance(node.op, ast.Not):
            node.operand = self._switch(node.operand)
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and (hook := _impls_query(node.operand)) in self.counts:
            return ast.Constant(not self.counts[hook])  # `not run.hook.pg_x.get_hookimpls()`
        if isinstance(node.op, ast.Not):
            node.operand = _truth(node.operand)
        if isinstance(node.op, ast.Not) and isinstance(node.operand, ast.Constant):
            return ast.Constant(not node.operand.value)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        node.values = [self._switch(v) for v in node.values]
        self.generic_visit(node)
        values: list[ast.expr] = []
        for i, v in enumerate(node.values):
            if isinstance(v, ast.Constant) and (not values or i < len(node.values) - 1):
                decides = bool(v.value) if isinstance(node.op, ast.Or) else not v.value
                if decides:  # `x and False and y` -> `x and False`; a leading constant decides alone
                    values.append(v)
                    break
                continue  # `True and y` -> `y`, `x and True and y` -> `x and y` (not a last value: `x and True`)
            values.append(v)
        if not values:
            return node.values[-1]
        return values[0] if len(values) == 1 else ast.BoolOp(op=node.op, values=values)

    def visit_IfExp(self, node: ast.IfExp | ast.If) -> Any:
        """`x if c else y` and `if c: … else: …` on a constant test: the side it takes (an `if`'s statements)."""
        node.test = self._switch(node.test)
        self.generic_visit(node)
        node.test = _test_value(_truth(node.test))
        if isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        if isinstance(node, ast.IfExp) and isinstance(node.body, ast.Constant) and _side_effect_free(node.test) \
                and ast.dump(node.body) == ast.dump(node.orelse):
            return node.body  # `v if c else v` (a folded side): `v`
        return node

    visit_If = visit_IfExp

    def visit_While(self, node: ast.While | ast.Assert) -> ast.AST:
        self.generic_visit(node)
        node.test = _truth(node.test)
        return node

    visit_Assert = visit_While  # type: ignore[assignment]

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs = [_truth(c) for c in node.ifs]
        return node

    def visit_Expr(self, node: ast.Expr) -> Any:
        self.generic_visit(node)
        if isinstance(node.value, (ast.Constant, ast.List)) and not getattr(node.value, "elts", None):
            return None  # a folded hook call used as a statement
        return node


def _module_literals(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level `NAME = <constant or tuple of constants>` whose name no other code in the module binds (no
    other assignment, parameter, import, `global`) -> the literal."""
    bound: dict[str, int] = {}
    for node in ast.walk(tree):
        names = [node.id] if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) else \
            [node.arg] if isinstance(node, ast.arg) else [a.asname or a.name for a in node.names] \
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal)) and \
            not isinstance(node, (ast.Global, ast.Nonlocal)) else list(node.names) \
            if isinstance(node, (ast.Global, ast.Nonlocal)) else \
            [node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []
        for n in names:
            bound[n] = bound.get(n, 0) + 1
    return {s.targets[0].id: s.value for s in tree.body if isinstance(s, ast.Assign) and len(s.targets) == 1
            and isinstance(s.targets[0], ast.Name) and _const(s.value)[0] and bound.get(s.targets[0].id) == 1}


def _truth(test: ast.expr) -> ast.expr:
    """`test` where only its truth is read (an if/while/assert/ternary/comprehension test, `not`'s operand) without
    a last `and`/`or` operand that cannot change that truth: `x and True` -> `x`, `x or False` -> `x` (in a value,
    `x and True` is `x` or True: never folded there). The operands of an `and`/`or` read for truth are read for
    truth too; the operands left are evaluated as before."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return ast.UnaryOp(op=test.op, operand=_truth(test.operand))
    if not isinstance(test, ast.BoolOp):
        return test
    values = [_truth(v) for v in test.values]
    while len(values) > 1 and isinstance(values[-1], ast.Constant) \
            and bool(values[-1].value) == isinstance(test.op, ast.And):
        values.pop()
    return values[0] if len(values) == 1 else ast.BoolOp(op=test.op, values=values)


def _test_value(test: ast.expr) -> ast.expr:
    """A condition's truth as a constant where a constant operand decides an `and`/`or` after operands that have no
    effect (`x == 8 and False`: False), else the condition."""
    if isinstance(test, ast.BoolOp):
        for v in test.values:
            if isinstance(v, ast.Constant) and bool(v.value) == isinstance(test.op, ast.Or):
                return ast.Constant(bool(v.value))
            if not _side_effect_free(v):
                break
    return test


def _impls_query(node: ast.AST) -> str | None:
    """`pg_x` of a `<...>.hook.pg_x.get_hookimpls()` call, else None."""
    if isinstance(node, ast.Call) and not node.args and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "get_hookimpls" and isinstance(node.func.value, ast.Attribute) \
            and isinstance(node.func.value.value, ast.Attribute) and node.func.value.value.attr == "hook":
        return node.func.value.attr
    return None


def _side_effect_free(node: ast.AST) -> bool:
    """Names, attributes, constants, tuples and comparisons of those (`==`, `in`, `is`, their negations)."""
    value = node.value if isinstance(node, ast.keyword) else node
    return all(isinstance(n, (ast.Name, ast.Attribute, ast.Constant, ast.Load, ast.keyword, ast.Tuple, ast.Compare,
                              ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot, ast.UnaryOp, ast.Not))
               for n in ast.walk(value))


def _aliases(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Locals of `fn` bound once, to `<x>.core` ("core") or `self.cfg` ("cfg"), and a parameter named `core`."""
    stores: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            stores[node.id] = stores.get(node.id, 0) + 1
        elif isinstance(node, ast.arg):
            stores[node.arg] = stores.get(node.arg, 0) + 1
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            v = node.value
            if isinstance(v, ast.Attribute) and v.attr == "core":
                kinds[node.targets[0].id] = "core"
            elif isinstance(v, ast.Attribute) and v.attr == "cfg" and isinstance(v.value, ast.Name) \
                    and v.value.id == "self":
                kinds[node.targets[0].id] = "cfg"
    out = {n: k for n, k in kinds.items() if stores.get(n) == 1}
    if stores.get("core") == 1 and "core" in {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}:
        out["core"] = "core"
    return out


class _Substitute(ast.NodeTransformer):
    """Replace loads of the names in `consts` (name -> its one binding to a constant: `name = <constant>`, or its
    pair of `a, name = (x, <constant>)`) and drop those bindings (the pair only: `a = x`)."""

    def __init__(self, consts: dict[str, ast.Assign]):
        self.consts = consts
        self.values = {n: _constant_binding(a, n).value for n, a in consts.items()}  # type: ignore[union-attr]
        self.bindings = {id(a) for a in consts.values()}

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.consts:
            return ast.Constant(self.values[node.id])
        return node

    def visit_Assign(self, node: ast.Assign) -> Any:
        if id(node) not in self.bindings:
            return self.generic_visit(node)
        target = node.targets[0]
        if isinstance(target, ast.Name):
            return None
        keep = [(t, self.visit(v)) for t, v in zip(target.elts, node.value.elts, strict=True)  # type: ignore[attr-defined]
                if not (isinstance(t, ast.Name) and t.id in self.consts and self.consts[t.id] is node)]
        if not keep:
            return None
        if len(keep) == 1:
            node.targets, node.value = [keep[0][0]], keep[0][1]
        else:
            target.elts, node.value.elts = [t for t, _ in keep], [v for _, v in keep]  # type: ignore[attr-defined]
        return node


def _constant_binding(node: ast.Assign, name: str) -> ast.Constant | None:
    """The constant `node` binds to `name`: `name = <constant>`, or `name`'s pair in `a, name = (x, <constant>)`
    (a tuple of as many elements, none starred: the pair is its own assignment); None otherwise."""
    if len(node.targets) != 1:
        return None
    target, value = node.targets[0], node.value
    if isinstance(target, ast.Name):
        return value if target.id == name and isinstance(value, ast.Constant) else None
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts) \
            and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts)):
        return next((v for t, v in zip(target.elts, value.elts, strict=True)
                     if isinstance(t, ast.Name) and t.id == name and isinstance(v, ast.Constant)), None)
    return None


def _propagate(tree: ast.Module) -> bool:
    """Replace the locals of each function bound exactly once, by `name = <constant>` or as a constant's pair of a
    tuple assignment (`codec, layout = (f(), None)`), with the constant (and drop the binding). True when something
    changed."""
    changed = False
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        stores: dict[str, int] = {}
        consts: dict[str, ast.Assign] = {}
        for node in ast.walk(fn):
            if node is fn:
                continue
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                stores[node.id] = stores.get(node.id, 0) + 1
            elif isinstance(node, (ast.arg, ast.FunctionDef, ast.ClassDef, ast.alias)):
                name = getattr(node, "arg", None) or getattr(node, "name", None) or ""
                stores[name] = stores.get(name, 0) + 2
            elif isinstance(node, ast.ExceptHandler) and node.name:
                stores[node.name] = stores.get(node.name, 0) + 2
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                for n in node.names:
                    stores[n] = stores.get(n, 0) + 2
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                for name in [target.id] if isinstance(target, ast.Name) else [
                        t.id for t in getattr(target, "elts", ()) if isinstance(t, ast.Name)]:
                    if _constant_binding(node, name) is not None:
                        consts[name] = node
        for a in ast.walk(fn.args):
            if isinstance(a, ast.arg):
                stores[a.arg] = stores.get(a.arg, 0) + 2
        consts = {n: a for n, a in consts.items() if stores.get(n) == 1}
        if not consts:
            continue
        changed = True
        _Substitute(consts).visit(fn)
    return changed


def fold_sources(cfg: Config, registry: Registry, sources: dict[str, str], silent: Iterable[str] = (),
                 switches: bool = False, noops: dict[str, frozenset[str]] | None = None) -> tuple[
        dict[str, str], dict[str, Any]]:
    """(`sources` folded to this configuration, "section.key" -> value of every setting folded somewhere);
    `silent`: hooks answered by their constant as if no plugin implemented them (`RECORD_SILENT_HOOKS`); `switches`
    (the record profile): a plugin's setting at zero or empty (0, 0.0, "": the feature it sizes is off) that decides
    a branch (compared with a literal, or read for its truth: `cfg.hessian_clip_lambda > 0`, `if cfg.bits_overrides`)
    is structural as well; `noops`: implementations not counted (`noop_implementations`)."""
    hooks = hook_counts(cfg, registry)
    hooks.update({h: (hooks[h][0] - len(n), hooks[h][1]) for h, n in (noops or {}).items() if h in hooks})
    hooks.update({h: (0, hooks[h][1]) for h in silent if h in hooks})
    empty = {h: v for h, (n, v) in hooks.items() if not n}
    counts = {h: n for h, (n, _) in hooks.items()}
    core = {k: getattr(cfg.core, k) for k in STRUCTURAL_CORE | (RECORD_CORE if switches else frozenset())}
    by_module: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for name in registry.run_plugins(cfg.plugins):
        cls, settings = registry.plugins[name], cfg.plugin_configs.get(name)
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)} \
            if dataclasses.is_dataclass(settings) else {}
        by_module.setdefault(cls.__module__, {})[cls.__name__] = (name, values)
    params = config_parameters(sources, {c: v for m in by_module.values() for c, v in m.items()})
    out, folded = dict(sources), set()
    for _ in range(3):  # folding, then the literal arguments that folding exposed, then folding again
        for module, text in out.items():
            if text:
                out[module], done = fold_module(text, core, {**params, **by_module.get(module, {})}, empty, counts,
                                                switches)
                folded |= done
        before, out = out, attribute_passes(out)
        if out == before:
            break
    values = {f"core.{k}": v for k, v in core.items()}
    for name in cfg.plugins:
        settings = cfg.plugin_configs.get(name)
        if dataclasses.is_dataclass(settings):
            values.update({f"{name}.{f.name}": getattr(settings, f.name) for f in dataclasses.fields(settings)})
    return out, {k: values[k] for k in folded}


def noop_implementations(cfg: Config, registry: Registry, sources: dict[str, str]) -> dict[str, frozenset[str]]:
    """hook -> the enabled plugins whose implementation of it does nothing in folded `sources` (its body, past a
    docstring, is `return None`, `return` or `pass`: e.g. `orthoinit.pg_model_modules` without banks). Pluggy drops a
    None result, so not calling it changes nothing (`fold_sources(noops=)`, `dispatcher_module(noops=)`)."""
    out: dict[str, set[str]] = {}
    for name in registry.run_plugins(cfg.plugins):
        cls = registry.plugins[name]
        text = sources.get(cls.__module__)
        if not text:
            continue
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                for fn in node.body:
                    if isinstance(fn, ast.FunctionDef) and fn.name.startswith("pg_") and _does_nothing(fn):
                        out.setdefault(fn.name, set()).add(name)
    return {h: frozenset(n) for h, n in out.items()}


def _does_nothing(fn: ast.FunctionDef) -> bool:
    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) \
        else fn.body
    return len(body) == 1 and (isinstance(body[0], ast.Pass) or isinstance(body[0], ast.Return) and (
        body[0].value is None or isinstance(body[0].value, ast.Constant) and body[0].value.value is None))


def hook_counts(cfg: Config, registry: Registry) -> dict[str, tuple[int, Any]]:
    """Every hook -> (how many implementations the run registers, what calling it returns when there are none:
    None for a firstresult hook, else [])."""
    from core.train import CoreDefaults

    pm = make_manager(registry, cfg, CoreDefaults())
    return {hook: (len(caller.get_hookimpls()), None if caller.spec.opts.get("firstresult") else [])
            for hook, caller in vars(pm.hook).items() if hook.startswith("pg_") and caller.spec is not None}


def fold_module(source: str, core: dict[str, Any], plugin: dict[str, tuple[str, dict[str, Any]]],
                empty: dict[str, Any], counts: dict[str, int] | None = None, switches: bool = False) -> tuple[
        str, set[str]]:
    """(`source` folded to a fixpoint, the settings whose reads it replaced). Memoized on the text and a
    repr of the values (every training run bundles its configuration to log the code size)."""
    args = (core, plugin, empty, counts or {}, switches)
    text, folded = _fold_cached(source, repr(args), _Args(args))
    return text, set(folded)


class _Args:
    """Carries the real arguments past `lru_cache`, which keys on their repr alone."""

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Args)


@functools.lru_cache(maxsize=256)
def _fold_cached(source: str, key: str, args: _Args) -> tuple[str, frozenset[str]]:
    text, folded = _fold(source, *args.value)
    return text, frozenset(folded)


def _fold(source: str, core: dict[str, Any], plugin: dict[str, tuple[str, dict[str, Any]]],
          empty: dict[str, Any], counts: dict[str, int], switches: bool = False) -> tuple[str, set[str]]:
    tree = ast.parse(source)
    before = ast.dump(tree)
    folded: set[str] = set()
    for _ in range(4):
        folder = Folder(core, plugin, empty, counts, switches)
        tree = ast.fix_missing_locations(folder.visit(tree))
        folded |= folder.folded
        _fill_empty_bodies(tree)
        if not _propagate(tree):
            break
        _fill_empty_bodies(tree)
    if ast.dump(tree) == before:
        return source, folded
    return ast.unparse(tree) + "\n", folded


TERMINAL = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def _fill_empty_bodies(tree: ast.AST) -> None:
    """Statements after a return/raise/continue/break in the same body dropped (a folded `if` can leave them), and
    an emptied body made `pass`."""
    for node in ast.walk(tree):
        for field_name in ("body", "orelse", "finalbody"):
            body = getattr(node, field_name, None)
            if isinstance(body, list):
                end = next((i for i, stmt in enumerate(body) if isinstance(stmt, TERMINAL)), len(body))
                del body[end + 1:]
            if isinstance(body, list) and not body and field_name == "body" and not isinstance(node, ast.Module):
                node.body = [ast.Pass()]  # type: ignore[attr-defined]
        if isinstance(node, ast.Try) and not node.handlers and not node.finalbody:
            node.finalbody = [ast.Pass()]


def constant_arguments(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` after `constant_arguments_in` (one parse, changed modules unparsed)."""
    trees = _parsed(sources)
    return _unparsed(sources, trees, constant_arguments_in(trees, [ast.parse(t) for t in extra]))


def constant_arguments_in(trees: dict[str, ast.Module], extra: list[ast.Module]) -> set[str]:
    """The modules changed in `trees` (in place; `extra`: the script's own code, whose calls count too) by replacing the
    parameters of module-level functions that every call in the bundle passes the same literal (or leaves at the same
    literal default) with that literal inside the function (`baseline_int8=False` at each call of
    `policy_quantize`): then `fold_module` drops the branches on it. A function qualifies only when every occurrence of
    its name is its definition, a plain `from … import` of it or a direct call without `*`/`**` arguments (a local
    variable of that name in a function is another variable), and no string in the bundle names it where a lookup
    by a computed name could reach it (`_looked_up_by_string`: its module held as a value, `globals()`, `eval`,
    `sys.modules` …; otherwise `'train'` as a split or `'train.log'` is data); the parameter is never rebound in
    its body. The signature stays (callers still pass the
    argument). An undecorated class with an `__init__` qualifies the same way (its name only ever called: no subclass,
    no isinstance), for the parameters of its `__init__` after `self`."""
    callers = {**trees, **{f" extra{i}": t for i, t in enumerate(extra)}}  # the script's main calls too
    candidates, calls, bad = _direct_calls(callers, classes=True)
    bad |= self_constructed(callers.values())
    changed: set[int] = set()
    for name, fn in candidates.items():
        if name in bad or not calls[name]:
            continue
        # a class's calls pass its `__init__`'s parameters after `self`
        params = [*fn.args.args[fn.name == "__init__":], *fn.args.kwonlyargs]
        defaults = dict(zip([a.arg for a in fn.args.args][len(fn.args.args) - len(fn.args.defaults):],
                            fn.args.defaults, strict=True))
        defaults.update({a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True) if d})
        stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        stored |= {a.arg for inner in ast.walk(fn) if inner is not fn and isinstance(inner, (ast.FunctionDef,
                   ast.Lambda)) for a in ast.walk(inner.args) if isinstance(a, ast.arg)}
        consts: dict[str, Any] = {}
        for i, param in enumerate(params):
            if param.arg in stored:
                continue
            seen = set()
            for call in calls[name]:
                kw = next((k.value for k in call.keywords if k.arg == param.arg), None)
                value = call.args[i] if param in fn.args.args and i < len(call.args) else kw
                value = defaults.get(param.arg) if value is None else value
                seen.add((type(value.value), value.value) if isinstance(value, ast.Constant) else ("?", id(call)))
            if len(seen) == 1 and (only := next(iter(seen)))[0] != "?":
                consts[param.arg] = only[1]
        if consts:
            _SubstituteParams(consts).visit(fn)
            changed.add(id(fn))
    return {module for module, tree in trees.items()
            if any(id(s) in changed for top in tree.body for s in (top, *getattr(top, "body", ())))}


def constant_attributes(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` after `constant_attributes_in` (one parse, changed modules unparsed)."""
    trees = _parsed(sources)
    return _unparsed(sources, trees, constant_attributes_in(trees, [ast.parse(t) for t in extra]))


def constant_attributes_in(trees: dict[str, ast.Module], extra: list[ast.Module]) -> set[str]:
    """The modules changed in `trees` (in place) by folding CONSTANT ATTRIBUTES: in the methods (not `__init__`) of an
    undecorated class with no bases, no subclass and no class-level binding of the name, a read `self.x` (`self`: the
    method's first parameter, never rebound) becomes the literal `v` when the only store of an attribute `x` on its
    instances is the statement `self.x = v` at the top level of that class's `__init__` (every other store of an `x` in
    the bundle and `extra`, the script's own code, is one on `self` in the `__init__` of another class with no bases),
    before which `__init__` uses `self` only to store attributes, and no string names `x` (`setattr`/`getattr` by a name
    built from one): every instance has `x == v` from its construction on (what `constant_arguments` leaves of
    `self.bos_id = bos_id` when every call passes None). Then `fold_module` drops the branches on it."""
    everything = [*trees.values(), *extra]
    stores: dict[str, list[ast.Attribute]] = {}
    words: set[str] = set()
    bases, on_self = set(), set()
    for tree in everything:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load):
                stores.setdefault(node.attr, []).append(node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(IDENT_RX.findall(node.value))
            elif isinstance(node, ast.ClassDef):
                bases |= {w for b in node.bases for w in IDENT_RX.findall(ast.unparse(b))}
                if not node.bases and not node.keywords:  # stores on its own instances, no other class's
                    on_self |= {id(n) for f in node.body if isinstance(f, FUNCTIONS) and f.name == "__init__"
                            and f.args.args for n in ast.walk(f) if isinstance(n, ast.Attribute)
                            and isinstance(n.value, ast.Name) and n.value.id == f.args.args[0].arg}
    changed = set()
    for module, tree in trees.items():
        for cls in (c for c in ast.walk(tree) if isinstance(c, ast.ClassDef)):
            if cls.bases or cls.keywords or cls.decorator_list or cls.name in bases:
                continue
            inits = [f for f in cls.body if isinstance(f, FUNCTIONS) and f.name == "__init__"]
            bound = {n.id for s in cls.body if not isinstance(s, FUNCTIONS)
                     for n in ast.walk(s) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
            bound |= {f.name for f in cls.body if isinstance(f, (*FUNCTIONS, ast.ClassDef))}
            if len(inits) != 1 or not inits[0].args.args:
                continue
            init, consts = inits[0], {}
            me = init.args.args[0].arg
            for stmt in init.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == me \
                        and isinstance(stmt.value, ast.Constant) and target in stores[target.attr] \
                        and all(id(n) in on_self for n in stores[target.attr]) \
                        and sum(n.value.id == me for n in stores[target.attr] if n in ast.walk(init)) == 1 \
                        and target.attr not in words and target.attr not in bound:
                    consts[target.attr] = stmt.value.value
                elif any(isinstance(n, ast.Name) and n.id == me and not _stored_attribute(n, stmt)
                         for n in ast.walk(stmt)):
                    break  # `self` used otherwise: a method might read what is not stored yet
            if not consts:
                continue
            for fn in cls.body:
                if not isinstance(fn, FUNCTIONS) or fn is init or not fn.args.args or fn.decorator_list:
                    continue
                own = fn.args.args[0].arg
                if own in _rebound(fn):
                    continue
                _SelfConstants(own, consts).visit(fn)
                changed.add(module)
    return changed


def dead_attributes(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` after `dead_attributes_in` (one parse, changed modules unparsed)."""
    trees = _parsed(sources)
    return _unparsed(sources, trees, dead_attributes_in(trees, [ast.parse(t) for t in extra]))


def dead_attributes_in(trees: dict[str, ast.Module], extra: list[ast.Module]) -> set[str]:
    """The modules changed in `trees` (in place) by dropping their DEAD ATTRIBUTE STORES: a statement `self.x = <pure>`
    (`lean.pure`; `self`: the first parameter of a method of an undecorated class with no bases, never rebound in it)
    when nothing in the bundle (and `extra`, the script's own code) reads an attribute `x` (`o.x`, `del o.x`), nothing
    defines a function, class or class-level name `x` (a property's setter would run), no string names `x` (`getattr` by
    name), and no code reads an object's `__dict__`, calls `vars` or defines `__getstate__`/`__setattr__` (what would
    see the stored value). What `constant_attributes` leaves (`self.bos_id = None` that no method reads any more)."""
    everything = [*trees.values(), *extra]
    read, defined, words = set(), set(), set()
    for tree in everything:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                read.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(IDENT_RX.findall(node.value))
            elif isinstance(node, (*FUNCTIONS, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and node.id == "vars":
                return set()
    if {"__dict__", "__getstate__", "__setattr__", "__reduce__"} & (read | defined):
        return set()
    dead = lambda t: isinstance(t, ast.Attribute) and t.attr not in read | defined | words  # noqa: E731
    changed = set()
    for module, tree in trees.items():
        for cls in (c for c in ast.walk(tree) if isinstance(c, ast.ClassDef)):
            if cls.bases or cls.keywords or cls.decorator_list:
                continue
            level = {n.id for b in cls.body if not isinstance(b, (*FUNCTIONS, ast.ClassDef))  # a descriptor there
                     for n in ast.walk(b) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
            for fn in (f for f in cls.body if isinstance(f, FUNCTIONS) and f.args.args and not f.decorator_list):
                me = fn.args.args[0].arg
                if me in _rebound(fn):
                    continue
                bodies = [getattr(n, f) for n in ast.walk(fn) for f in ("body", "orelse", "finalbody")
                          if isinstance(getattr(n, f, None), list) and getattr(n, f)]
                gone = functools.partial(_gone, dead=dead, level=level, me=me)
                for body in bodies:
                    keep = []
                    for stmt in body:
                        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                            t, v = stmt.targets[0], stmt.value
                            if gone(t) and pure(v):
                                continue
                            if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts) \
                                    and not any(isinstance(e, ast.Starred) for e in (*t.elts, *v.elts)):
                                pairs = [(a, b) for a, b in zip(t.elts, v.elts, strict=True)
                                         if not gone(a) or not pure(b)]
                                if not pairs:
                                    continue
                                if len(pairs) < len(t.elts):
                                    stmt = ast.Assign([pairs[0][0]], pairs[0][1]) if len(pairs) == 1 else \
                                        ast.Assign([ast.Tuple([a for a, _ in pairs], ast.Store())],
                                                   ast.Tuple([b for _, b in pairs], ast.Load()))
                        keep.append(stmt)
                    if len(keep) < len(body) or any(a is not b for a, b in zip(keep, body, strict=True)):
                        body[:] = keep or [ast.Pass()]
                        changed.add(module)
    return changed


def attribute_passes(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`sources` after `constant_arguments_in`, `constant_attributes_in` and `dead_attributes_in` in turn, on one
    parse (each pass sees the trees the one before left), the modules any of them changed unparsed once."""
    trees, others = _parsed(sources), [ast.parse(t) for t in extra]
    changed = constant_arguments_in(trees, others)
    changed |= constant_attributes_in(trees, others)
    return _unparsed(sources, trees, changed | dead_attributes_in(trees, others))


def _parsed(sources: dict[str, str]) -> dict[str, ast.Module]:
    return {n: ast.parse(s) for n, s in sources.items() if s}


def _unparsed(sources: dict[str, str], trees: dict[str, ast.Module], changed: set[str]) -> dict[str, str]:
    """`sources` with each module in `changed` replaced by its tree's text."""
    return {n: ast.unparse(ast.fix_missing_locations(trees[n])) + "\n" if n in changed else s
            for n, s in sources.items()}


def _gone(t: ast.expr, dead: Any, level: set[str], me: str) -> bool:
    """`t` stores a dead attribute on `me` (`dead_attributes`) that no class-level name of its class shadows."""
    return dead(t) and t.attr not in level and isinstance(t.value, ast.Name) and t.value.id == me


def _rebound(fn: ast.AST) -> set[str]:
    """The names `fn` rebinds, or a nested scope of it shadows (its parameters)."""
    out = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    return out | {a.arg for i in ast.walk(fn) if i is not fn and isinstance(i, (*FUNCTIONS, ast.Lambda))
                  for a in ast.walk(i.args) if isinstance(a, ast.arg)}


def _stored_attribute(name: ast.Name, stmt: ast.stmt) -> bool:
    """`name` is the object of an attribute that the assignment `stmt` stores (`self.a, self.b = (a, b)`)."""
    return isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Attribute) and t.value is name
                                                for target in stmt.targets for t in ast.walk(target))


class _SelfConstants(ast.NodeTransformer):
    def __init__(self, me: str, consts: dict[str, Any]):
        self.me, self.consts = me, consts

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) and node.value.id == self.me \
                and node.attr in self.consts:
            return ast.Constant(self.consts[node.attr])
        return self.generic_visit(node)


# decorators whose wrapper calls the function with the arguments it was given, unchanged (torch's grad modes)
ARGUMENT_TRANSPARENT_DECORATORS = frozenset({"torch.no_grad()", "torch.inference_mode()", "torch.enable_grad()"})


def _passes_arguments_through(decorators: list[ast.expr], tree: ast.Module) -> bool:
    """Whether a module-level function with these decorators receives exactly the arguments its callers pass: no
    decorator, or only `ARGUMENT_TRANSPARENT_DECORATORS` in a module that binds the name `torch` by `import torch`
    (or `import torch.x`) only: no other import, assignment, definition or parameter of that name."""
    if not decorators:
        return True
    if not all(ast.unparse(d) in ARGUMENT_TRANSPARENT_DECORATORS for d in decorators):
        return False
    imported = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= any(a.name.split(".")[0] == "torch" and not a.asname for a in node.names)
            if any(a.asname == "torch" for a in node.names):
                return False
        elif isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "torch" for a in node.names) \
                or isinstance(node, ast.Name) and node.id == "torch" and not isinstance(node.ctx, ast.Load) \
                or isinstance(node, (*FUNCTIONS, ast.ClassDef)) and node.name == "torch" \
                or isinstance(node, ast.arg) and node.arg == "torch":
            return False
    return imported


def _direct_calls(trees: dict[str, ast.Module], classes: bool = False) -> tuple[
        dict[str, ast.FunctionDef], dict[str, list[ast.Call]], set[str]]:
    """(module-level functions by name (undecorated, or only with torch's grad modes: `_passes_arguments_through`),
    the calls of each, the names that are also used otherwise: passed as a
    value, imported under another name, named in a string that could look it up (`_looked_up_by_string`), defined
    twice, or called with `*`/`**`). With `classes`, undecorated classes with an `__init__` too (name -> that
    `__init__`: a call of the class calls it; a subclass or an isinstance names the class otherwise). A name a
    function binds for itself (`_function_locals`: a local `train = …`, a parameter) is another variable, not a use."""
    defs: dict[str, list[ast.FunctionDef]] = {}
    home: dict[str, str] = {}
    for module, tree in trees.items():
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef) and _passes_arguments_through(stmt.decorator_list, tree):
                defs.setdefault(stmt.name, []).append(stmt)
                home[stmt.name] = module
            elif isinstance(stmt, ast.ClassDef) and classes and not stmt.decorator_list:
                init = [f for f in stmt.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
                defs.setdefault(stmt.name, []).extend(init or [stmt])  # type: ignore[list-item]
                home[stmt.name] = module
    defs = {n: d for n, d in defs.items() if all(isinstance(f, ast.FunctionDef) for f in d)}
    candidates = {n: d[0] for n, d in defs.items() if len(d) == 1 and not d[0].args.vararg and not d[0].args.kwarg
                  and not d[0].args.posonlyargs}
    calls: dict[str, list[ast.Call]] = {n: [] for n in candidates}
    bad: set[str] = set()
    in_strings: set[str] = set()
    for tree in trees.values():
        call_funcs: dict[int, ast.Call] = {}  # a call's function node -> the call (the walk meets a call first)
        own = _function_locals(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                call_funcs[id(node.func)] = node
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else \
                node.name if isinstance(node, ast.alias) else None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                in_strings.update(w for w in IDENT_RX.findall(node.value) if w in candidates)
            if name not in candidates or id(node) in own:
                continue
            if isinstance(node, ast.alias):
                if node.asname:
                    bad.add(name)
                continue
            call = call_funcs.get(id(node))
            if call is None or any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in
                                                                                        call.keywords):
                bad.add(name)
            else:
                calls[name].append(call)
    if in_strings:
        anywhere, held = _string_reachable(trees)
        bad |= {n for n in in_strings if _looked_up_by_string(home[n], anywhere, held)}
    return candidates, calls, bad


# What can find a module-level definition from a computed name without its module object: the namespace itself
# (`globals()`, `vars()`, `locals()`, `f.__globals__`, a frame's `f_globals`, `__dict__`), code (`eval`/`exec`),
# and the import system (`__import__`, `importlib.import_module`, `sys.modules`); `operator.attrgetter` /
# `methodcaller` and `dir`/`getmembers` are getattr by another name.
NAMESPACE_BUILTINS = {"globals", "vars", "locals", "eval", "exec", "compile", "__import__", "dir"}
NAMESPACE_ATTRIBUTES = {"__dict__", "__globals__", "f_globals", "_getframe", "import_module", "attrgetter",
                        "methodcaller", "getmembers", "__getattribute__"}


def _string_reachable(trees: dict[str, ast.Module]) -> tuple[bool, set[str]]:
    """(whether some code uses a lookup by a computed name that needs no module object, or imports relatively, or
    imports a module a bundled module itself imported: then every definition is reachable; the dotted paths of the
    module objects some code holds as values: a name an import binds, with the attributes read from it, that is
    not read further by a literal attribute — `import core.train` then `f(core.train)` holds `core.train`,
    `core.train.run(…)` holds nothing but a call). An import Loader's `exec_module` (the import system's protocol:
    run a module's code in its own namespace, `exec(code, module.__dict__)`) is not such a lookup: the code it runs
    is the bundled modules', read here as they are."""
    held: set[str] = set()
    imported = {m: {(a.asname or a.name).split(".")[0] for s in t.body if isinstance(s, (ast.Import, ast.ImportFrom))
                    for a in s.names} for m, t in trees.items()}
    for tree in trees.values():
        nodes, parent = _nodes_and_parents(tree)  # one traversal: the bundler runs this for every candidate pass
        calls = {id(c.func) for c in nodes if isinstance(c, ast.Call)}
        loading = {id(n) for f in nodes if isinstance(f, FUNCTIONS) and f.name == "exec_module"
                   for n in ast.walk(f)}  # an import Loader running a module's code in the module's namespace
        origin: dict[str, set[str]] = {}  # a name an import binds -> the module paths it may hold
        for node in nodes:
            if id(node) in loading and (isinstance(node, ast.Name) and node.id in ("exec", "compile") or isinstance(
                    node, ast.Attribute) and node.attr == "__dict__"):
                pass
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in NAMESPACE_BUILTINS | \
                    NAMESPACE_ATTRIBUTES or isinstance(node, ast.Attribute) and (node.attr in NAMESPACE_ATTRIBUTES or (
                        node.attr == "modules" and id(node) not in calls)):  # `sys.modules`, not `model.modules()`
                return True, held
            elif isinstance(node, ast.ImportFrom):
                if node.level or any(a.name in (*NAMESPACE_ATTRIBUTES, "modules", "*") or a.name in imported.get(
                        node.module or "", ()) for a in node.names):
                    return True, held
                for a in node.names:
                    origin.setdefault(a.asname or a.name, set()).add(f"{node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    origin.setdefault(a.asname or a.name.split(".")[0], set()).add(a.name if a.asname else
                                                                                   a.name.split(".")[0])
        for node in nodes if origin else ():
            if isinstance(node, ast.Name) and node.id in origin and isinstance(node.ctx, ast.Load):
                path, top = "", node
                while isinstance(up := parent.get(id(top)), ast.Attribute) and up.value is top:
                    path, top = f"{path}.{up.attr}", up
                held.update(o + path for o in origin[node.id])
    return False, held


def _nodes_and_parents(tree: ast.AST) -> tuple[list[ast.AST], dict[int, ast.AST]]:
    """Every node of `tree` (as `ast.walk` gives them, in another order) and each one's parent by id, in one pass."""
    nodes, parent, stack = [tree], {}, [tree]
    while stack:
        for child in ast.iter_child_nodes(above := stack.pop()):
            parent[id(child)] = above
            nodes.append(child)
            stack.append(child)
    return nodes, parent


def _looked_up_by_string(module: str, anywhere: bool, held: set[str]) -> bool:
    """Whether a string equal to the name of a definition of `module` could be used to look it up (`anywhere`,
    `held`: `_string_reachable`): some code uses a lookup that needs no module object (`NAMESPACE_BUILTINS`,
    `NAMESPACE_ATTRIBUTES`, an uncalled attribute `.modules`: `sys.modules`) or imports relatively, or holds that
    module, or a package above it, as an object (`import core.train`, `import core`, `from core import train`:
    then `getattr(m, s)`, `dir(m)`, the module registered as a plugin). Otherwise a string reaches the definition
    only through getattr on an object that holds it, and holding it takes a use of its name as a value, which
    refuses it anyway: every string (a file name `'train.log'`, a split `'train'`, a log line) is then data."""
    return anywhere or any(module == h or module.startswith(f"{h}.") for h in held)


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
           ast.GeneratorExp, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _function_locals(tree: ast.Module) -> frozenset[int]:
    """Ids of the `Name`s in `tree` that Python resolves to a variable of a function, lambda or comprehension
    (bound in it, or in one enclosing it, and not declared `global` there), never to a module-level definition.
    A name in a class body, or at module level, is not among them (a class attribute of that name refuses it)."""
    found: set[int] = set()

    def visit(node: ast.AST, chain: tuple[dict[str, bool], ...]) -> None:
        if isinstance(node, ast.Name):
            for scope in reversed(chain):
                if node.id in scope:
                    if scope[node.id]:
                        found.add(id(node))
                    break
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            outer = [*a.defaults, *(d for d in a.kw_defaults if d is not None)]
            if not isinstance(node, ast.Lambda):
                outer += [*node.decorator_list, *(x.annotation for x in ast.walk(a) if isinstance(x, ast.arg)
                                                   and x.annotation), *([node.returns] if node.returns else [])]
            for part in outer:
                visit(part, chain)
            body = [node.body] if isinstance(node, ast.Lambda) else node.body
            inner = (*chain, _bindings(node, body))
            for part in body:
                visit(part, inner)
            return
        if isinstance(node, _COMPREHENSIONS):
            first, *rest = node.generators
            visit(first.iter, chain)
            inner = (*chain, _bindings(node, []))
            parts = [first.target, *first.ifs, *rest,
                     *([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt])]
            for part in parts:
                visit(part, inner)
            return
        if isinstance(node, ast.ClassDef):  # its body's names are class attributes, its methods skip it
            for part in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
                visit(part, chain)
            for part in node.body:
                visit(part, chain)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, chain)

    visit(tree, ())
    return frozenset(found)


def _bindings(scope: ast.AST, body: list[ast.AST]) -> dict[str, bool]:
    """The names `scope` (a function, lambda or comprehension) binds itself -> True, and those it declares
    `global` (-> False: a read of one is the module's) or `nonlocal` (absent: an enclosing function's)."""
    names: dict[str, bool] = {}
    if isinstance(scope, _COMPREHENSIONS):
        for gen in scope.generators:
            names.update({n.id: True for n in ast.walk(gen.target) if isinstance(n, ast.Name)})
        return names
    names.update({x.arg: True for x in ast.walk(scope.args) if isinstance(x, ast.arg)})
    declared: dict[str, bool] = {}
    todo = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update({n: isinstance(node, ast.Nonlocal) for n in node.names})
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names[node.id] = True
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = True
        elif isinstance(node, ast.alias):
            names[(node.asname or node.name).split(".")[0]] = True
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names[node.name] = True
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names[node.name] = True
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names[node.rest] = True
        if isinstance(node, _COMPREHENSIONS):  # its first iterable is evaluated here (an assignment expression in
            todo.append(node.generators[0].iter)  # it would bind here too: left out, so such a name is not local)
            continue
        if isinstance(node, (*_SCOPES[:3], ast.ClassDef)):  # their own names only (above); not their bodies
            if not isinstance(node, ast.Lambda):
                todo.extend(node.decorator_list)
            continue
        todo.extend(ast.iter_child_nodes(node))
    for name, is_nonlocal in declared.items():
        if is_nonlocal:
            names.pop(name, None)
        else:
            names[name] = False
    return names


def config_parameters(sources: dict[str, str], classes: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """"function(param)" -> a plugin's (section, settings) for the parameters of module-level functions that every
    call passes `self.cfg` from that plugin's class (`classes`: class name -> (section, settings)), e.g.
    `collect_hessians(run, model, self.cfg)` in GPTQ: `fold_module` folds their structural settings too. The same
    for a class built with it ("Class.__init__(param)"), and "Class.self.attr" where its `__init__` keeps it as
    `self.attr = param` (the class has no base, sets `self.attr` nowhere else, and no code sets `.attr` on an
    object other than `self`)."""
    trees = {n: ast.parse(s) for n, s in sources.items() if s}
    candidates, calls, bad = _direct_calls(trees, classes=True)
    owner: dict[int, str] = {}
    for tree in trees.values():
        for cls in tree.body:
            if isinstance(cls, ast.ClassDef) and cls.name in classes:
                owner.update({id(n): cls.name for n in ast.walk(cls) if isinstance(n, ast.Call)})
    # (attribute, the class whose `self.attribute` it is, or "" for a store on another object) -> stores
    attribute_stores: dict[tuple[str, str], int] = {}
    for tree in trees.values():
        in_class = {id(n): c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in ast.walk(c)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load):
                on_self = isinstance(n.value, ast.Name) and n.value.id == "self"
                key = (n.attr, in_class.get(id(n), "") if on_self else "")
                attribute_stores[key] = attribute_stores.get(key, 0) + 1
    bases = {c.name: c.bases for tree in trees.values() for c in tree.body if isinstance(c, ast.ClassDef)}
    # the module-level function each call is in: a parameter found to hold a plugin's `self.cfg` passes it on
    caller = {id(n): f.name for tree in trees.values() for f in tree.body if isinstance(f, ast.FunctionDef)
              for n in _own_scope(f) if isinstance(n, ast.Call)}
    holds: dict[str, str] = {}  # "function(param)" -> the plugin class whose `self.cfg` every call passes it
    out: dict[str, Any] = {}
    while True:
        before = len(holds)
        for name, fn in candidates.items():
            if name not in bad and calls[name]:
                _cfg_parameters(name, fn, calls[name], owner, caller, holds, classes, out, bases, attribute_stores)
        if len(holds) == before:
            return out


def _cfg_parameters(name: str, fn: ast.FunctionDef, calls: list[ast.Call], owner: dict[int, str],
                    caller: dict[int, str], holds: dict[str, str], classes: dict[str, tuple[str, dict[str, Any]]],
                    out: dict[str, Any], bases: dict[str, list[ast.expr]],
                    attribute_stores: dict[tuple[str, str], int]) -> None:
    """One pass of `config_parameters` over the function (or class) `name`: its parameters that every call passes
    a plugin's `self.cfg`, or a parameter of the calling function already known to hold it (`holds`)."""
    is_init = fn.name == "__init__"
    stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    positional = fn.args.args[1:] if is_init else fn.args.args
    for i, param in enumerate([*positional, *fn.args.kwonlyargs]):
        sections = set()
        for call in calls:
            kw = next((k.value for k in call.keywords if k.arg == param.arg), None)
            value = call.args[i] if param in positional and i < len(call.args) else kw
            is_cfg = isinstance(value, ast.Attribute) and value.attr == "cfg" \
                and isinstance(value.value, ast.Name) and value.value.id == "self"
            passed = holds.get(f"{caller.get(id(call))}({value.id})") if isinstance(value, ast.Name) else None
            sections.add(owner.get(id(call)) if is_cfg else passed)
        if len(sections) != 1 or None in sections or param.arg in stored:
            continue
        cls_name = sections.pop()
        section = classes[cls_name]
        key = f"{name}.__init__({param.arg})" if is_init else f"{name}({param.arg})"
        holds.setdefault(key, cls_name)
        out[key] = section
        # `self.attr = param` in a class of no base: its only store of `.attr`, and no other object's is set
        for target, value in _assignments(fn.body) if is_init else ():
            if isinstance(value, ast.Name) and value.id == param.arg and isinstance(target, ast.Attribute) \
                    and isinstance(target.value, ast.Name) and target.value.id == "self" and not bases[name] \
                    and attribute_stores[(target.attr, name)] == 1 and (target.attr, "") not in attribute_stores:
                out[f"{name}.self.{target.attr}"] = section


def _own_scope(fn: ast.FunctionDef) -> Iterable[ast.AST]:
    """The nodes of `fn`'s body outside nested functions, lambdas, classes and comprehensions (whose names may shadow
    its parameters)."""
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
                                 ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            todo.extend(ast.iter_child_nodes(node))


def _assignments(body: list[ast.stmt]) -> Iterable[tuple[ast.expr, ast.expr]]:
    """(target, value) of the statements `t = v` and `t1, t2 = v1, v2` in `body` (not nested)."""
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                yield from zip(target.elts, value.elts, strict=True)
            else:
                yield target, value


IDENT_RX = re.compile(r"[A-Za-z_]\w*")


class _SubstituteParams(ast.NodeTransformer):
    def __init__(self, consts: dict[str, Any]):
        self.consts = consts

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.body = [self.visit(s) for s in node.body]  # not the signature
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.consts:
            return ast.Constant(self.consts[node.id])
        return node


def fold_arguments(sources: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """`constant_arguments`, then `fold_module` (constants only) on the modules it changed: run again on shaken
    sources, where the calls from code the shaker dropped no longer count."""
    out = attribute_passes(sources, extra)
    return {n: fold_module(s, {}, {}, {})[0] if s != sources[n] else s for n, s in out.items()}


class _HookRenamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node.attr = self.mapping.get(node.attr, node.attr)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        node.arg = self.mapping.get(node.arg, node.arg) if node.arg else None
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self.mapping.get(node.name, node.name)
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.mapping.get(node.arg, node.arg)
        return self.generic_visit(node)

    def visit_alias(self, node: ast.alias) -> ast.AST:  # `from m import pg_x [as pg_y]` (a module plugin's hook)
        node.name = self.mapping.get(node.name, node.name)
        node.asname = node.asname and self.mapping.get(node.asname, node.asname)
        return node


def rename_hooks(sources: dict[str, str], extra: list[str], hooks: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """(`sources`, `extra`) with each hook name in `hooks` that the code uses renamed to a short name that occurs
    nowhere in it: as an attribute, a method or function name, a keyword, a parameter or a name, all at once. For a
    statically dispatched bundle only (pluggy matches implementations to hooks by name). A hook whose name shows
    in a string (`getattr(x, "pg_x")`, a message) keeps it; a string that begins one (`"pg_"`) stops all renaming."""
    trees = {n: ast.parse(t) for n, t in sources.items()}
    others = [ast.parse(t) for t in extra]
    texts = [*sources.values(), *extra]
    strings = [node.value for tree in (*trees.values(), *others) for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    used = names_in([*trees.values(), *others], messages=False) - names_in(
        [ast.Module([ast.Expr(ast.Constant(v)) for v in strings], [])])
    counts = {h: sum(len(re.findall(rf"\b{h}\b", t)) for t in texts) for h in set(hooks) & used}
    if any(v.startswith("pg") and h.startswith(v) and v != h for h in hooks for v in strings):
        return dict(sources), list(extra)  # a name built at run time (`getattr(hook, "pg_" + kind)`)
    names = sorted((h for h in counts if not any(h in v for v in strings)), key=lambda h: (-counts[h], h))
    fresh = short_names({w for t in texts for w in re.findall(r"[A-Za-z_]\w*", t)})
    renamer = _HookRenamer({h: next(fresh) for h in names})
    return ({n: ast.unparse(renamer.visit(t)) + "\n" if sources[n] else "" for n, t in trees.items()},
            [ast.unparse(renamer.visit(t)) + "\n" for t in others])


def hook_names() -> set[str]:
    """The names of the hooks `core.hookspecs` declares."""
    import core.hookspecs as specs

    return {n for n, f in vars(specs).items() if n.startswith("pg_") and callable(f)}
