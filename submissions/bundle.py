"""Bundle a configuration into one self-contained `train_gpt.py` (DESIGN.md "Runs and records").

The script holds the core modules the trainer imports, the enabled plugins' modules, and the resolved
configuration as its recipe. The modules are embedded as source text and served by an import hook, so
the script runs in a records folder with no pgolf installed (`python train_gpt.py`, or torchrun), reads
the challenge's environment variables (DATA_PATH, TOKENIZER_PATH, SEED, ITERATIONS, …) over its recipe,
and accepts `section.key=value` overrides as arguments. Its own size is the code size it reports.
Docstrings, comments, function annotations and settings' help texts are dropped (`strip=True`, the
default), and indentation is one space per level (checked: the same syntax tree): the code bytes count
against the cap. A plugin answering `pg_wrap_code` (e.g. `code_wrapper`: brotli or LZMA, printable
base-93 self-extractor) turns the finished script into its wrapped form; that file's bytes are the code size.
Modules are found by following `core.*` / `plugins.*` imports from `core.train` and the enabled
plugins (function-level imports too): the import graph decides, no list of modules is kept by hand.
With `minify` (the default when stripping; issue #11) the modules are tree-shaken and their local and
module-level names shortened (`submissions.minify`), modules no kept import reaches are left out, and the
RECIPE holds only the settings that differ from their defaults; `embedded_modules` gives the modules for measuring
(`minify.measure`: bytes per module and definition, plain and after LZMA). The minified script's code (below its
docstring and RECIPE lines) is laid out by `compact`: python-minifier's printer, none of its transforms.
A minified bundle is also specialised to its configuration (`submissions.specialise`): its hooks are dispatched
statically in pluggy's order (no pluggy, hookspecs or registry discovery in it) and its Config is built from
RECIPE < environment variables < `section.key=value` arguments without `config.resolve`; its plugin list is
fixed (PGOLF_PLUGINS and `core.plugins=` are refused), its structural settings are folded into the code and dead
branches dropped (the rule, what stays overridable: `submissions.specialise`). A configuration with a hook wrapper
keeps pluggy and the full resolution. A specialised bundle is LEAN (`submissions.lean`): it does not re-check what
the bundle-time resolution checked (asserts, pure input guards and error-translating `try`s go where no recovering
handler could catch them). An optional part no bundled object can have is answered by its default
(`submissions.absent`: `getattr(loader, "warm_batches", None)` where no bundled loader declares batch shapes),
and a comprehension folding leaves without anything to yield is written empty (`submissions.empty`).
A specialised script has no module loader where `submissions.merge` proves it the same: its modules' code runs
in the script's own namespace in import order (no embedded sources, import hook or bundled import lines).

Profiles (`PROFILES`; `bundle(..., profile=)`, `pgolf bundle --profile`, or a recipe's `code_wrapper.profile`):
"full" (the default) is all of the above; "record" is the smallest script that still trains, exports and scores
the configuration (a specialised bundle only: `BundleError` otherwise). A record-profile script drops, on purpose:
- `section.key=value` arguments: settings are RECIPE < environment variables only, like the records' Hyperparameters
  (`specialise.RECORD_MAIN`): each setting that is not folded reads the variable `pgolf train` reads (core's challenge
  names and `PGOLF_*` machine switches, `PLUGIN_KEY` for a plugin's: `core.config.env_name`), converted by the type of
  its value (`int(…)`, `float(…)`, `str`; a bool from 0/1 only).
- Refusals and error translation: PGOLF_PLUGINS and the variables of folded settings are not read at all (the full
  script refuses them), and a malformed value is Python's traceback, not a one-line `bad setting` message.
- Bookkeeping: `Config.sources` (config.json's "sources", `specialise.without_sources`), `plugins.BUNDLED`, the type
  annotations and readable names of the settings classes (nothing coerces by them or names them in an error), and the
  settings of plugins the script never builds (`specialise.record_sections`): plugins without settings and those at
  their defaults have no section in `Config.plugin_configs` and config.json, the others keep only their changed
  settings (`code_wrapper.profile = "record"`, so that the run's config.json rebuilds the same script).
- Bookkeeping output: events.jsonl (`specialise.without_events`: train.log is the run's record) and `pg_report`'s
  metrics.json fields (`specialise.RECORD_SILENT_HOOKS`).
- The artifact's framing (`submissions.record_export`, without a state codec): the artifact is the codec's stream
  of the records alone, which `plugins.lib.decoders.read_artifact` detects.
- `attention_auto`'s timing probe (`RECORD_WITHOUT`): `core.attention = auto` is fa3 when importable, else cuDNN.
- Overrides of more settings (`specialise.fold_sources(switches=True)`): a plugin's zero or empty setting that decides
  a branch (the feature it sizes is off) and `core.eval_compile` (`specialise.RECORD_CORE`) are folded, and a plugin
  setting nothing reads any more, at its default, leaves its settings class (`specialise.unread_fields`).
Its configured values sit where each setting is declared, as the records' Hyperparameters hold them: the field's
default in its settings class (`recipe_defaults`), so RECIPE lists the plugins alone (-252 B wrapped on pr1493).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import io
import json
import os
import pprint
import sys
import tokenize
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import python_minifier

from core.config import Config
from core.registry import Registry, make_manager
from submissions import record_export, specialise
from submissions.absent import absent_attributes
from submissions.empty import empty_comprehensions
from submissions.fallbacks import truthy_hooks, without_fallbacks
from submissions.lean import drop_unused_parameters, lean_sources
from submissions.merge import Unmergeable, merge_modules
from submissions.minify import (
    drop_future_annotations,
    minify_modules,
    names_in,
    prune_unused_imports,
    rename_globals,
    rename_locals,
    rename_private_attributes,
    return_directly,
    shake,
    shorten_messages,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "plugins")
# Machine- and run-specific settings the bundle leaves to the environment / the script's defaults.
MACHINE_KEYS = ("data_path", "tokenizer_path", "run_id", "out_dir", "device", "compile", "attention")
# Settings that differ between runs of one script: not in its RECIPE (SEED chooses; the default is 1337).
PER_RUN_KEYS = (*MACHINE_KEYS, "seed")
OFFICIAL_DATA = "./data/datasets/fineweb10B_sp{vocab}"
OFFICIAL_TOKENIZER = "./data/tokenizers/fineweb_{vocab}_bpe.model"
# Bundle profiles (the module docstring says what "record" drops); `code_wrapper.profile` chooses one in a recipe.
PROFILES = ("full", "record")
# Settings only the bundler reads ("section", "key"): at their default, a specialised script's config class has no
# such field (an override is refused as an unknown setting rather than silently not honoured).
BUNDLE_TIME_SETTINGS = (("code_wrapper", "profile"),)
# Default plugins a record-profile script leaves out: attention_auto's timing probe (`core.attention = auto` is then
# fa3 when importable, else cuDNN, untimed: `core.run.pick_attention`).
RECORD_WITHOUT = frozenset({"attention_auto"})


class _RecordRegistry:
    """`registry` as a record-profile bundle sees it: its run registers no `RECORD_WITHOUT` default plugin."""

    def __init__(self, registry: Registry):
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def run_plugins(self, enabled: Iterable[str]) -> list[str]:
        return [n for n in self._registry.run_plugins(enabled) if n in enabled or n not in RECORD_WITHOUT]


class BundleError(ValueError):
    """The configuration cannot be bundled (a plugin whose code is not a single module file, …)."""


def module_file(name: str) -> Path | None:
    """Source file of `core.x` / `plugins.x` (a package's __init__.py), or None."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=256)
def _imported_names(source: str) -> frozenset[str]:
    """Every dotted name a source imports, or imports a name from, at any depth (memoized: a function of the
    text alone; bundling parses the same modules for every configuration)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return frozenset(out)


def imports_of(source: str) -> set[str]:
    """`core.*` / `plugins.*` modules a source imports, at any depth (`from core import export` included)."""
    return {m for m in _imported_names(source) if m.split(".")[0] in PACKAGES and module_file(m) is not None}


def module_closure(roots: dict[str, str]) -> dict[str, str]:
    """name -> source for `roots` (name -> source) and every bundlable module they import, transitively."""
    sources = dict(roots)
    todo = list(roots)
    while todo:
        for dep in sorted(imports_of(sources[todo.pop()])):
            if dep in sources:
                continue
            path = module_file(dep)
            assert path is not None
            sources[dep] = path.read_text(encoding="utf-8")
            todo.append(dep)
    for name in list(sources):  # parent packages
        parts = name.split(".")
        for i in range(1, len(parts)):
            sources.setdefault(".".join(parts[:i]), "")
    return sources


def _help_only(keyword: ast.keyword) -> bool:
    """`metadata={"help": ...}` of a dataclass field (read by `pgolf plugins show`, never by training)."""
    v = keyword.value
    return keyword.arg == "metadata" and isinstance(v, ast.Dict) and bool(v.keys) and all(
        isinstance(k, ast.Constant) and k.value == "help" for k in v.keys)


@functools.lru_cache(maxsize=256)
def reindent(source: str, width: int = 1) -> str:
    """`source` (canonical `ast.unparse` layout: 4 spaces per level) with `width` spaces per level; the
    source unchanged if that would change its syntax tree (a multi-line string literal, other layouts)."""
    lines = []
    for line in source.splitlines(keepends=True):
        body = line.lstrip(" ")
        depth, extra = divmod(len(line) - len(body), 4)
        lines.append(" " * (depth * width + extra) + body)
    out = "".join(lines)
    return out if _same_tree(out, source) else source


def _same_tree(text: str, source: str) -> bool:
    """Whether `text` parses to `source`'s syntax tree (False where it does not parse)."""
    try:
        return ast.dump(ast.parse(text)) == ast.dump(ast.parse(source))
    except SyntaxError:
        return False


# python-minifier as a printer only: every transform off (the bundler's own passes decide what the code says).
_PRINTER_ONLY = dict(remove_annotations=False, remove_pass=False, remove_literal_statements=False,
                     combine_imports=False, hoist_literals=False, rename_locals=False, rename_globals=False,
                     remove_object_base=False, convert_posargs_to_args=False, remove_explicit_return_none=False,
                     remove_builtin_exception_brackets=False, constant_folding=False, remove_dead_branches=False,
                     prefer_single_line=True)


def compact(source: str) -> str:
    """`source` laid out as tightly as Python allows: no spaces around operators or after commas, simple
    statements joined by `;`, a one-statement body on its header's line, one tab a level (python-minifier's
    printer). The same syntax tree, checked (else `source` unchanged). PR #1493's record-profile script: 75,391 →
    67,210 characters, brotli 22,050 → 21,317 bytes."""
    try:
        out = python_minifier.minify(source, **_PRINTER_ONLY)
    except Exception:  # noqa: BLE001 - any printer failure keeps the canonical layout
        return source
    return out if _same_tree(out, source) else source


def _reads_annotations(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a decorator reads the function's annotations at run time (torch.library.custom_op)."""
    return any("custom_op" in ast.unparse(d) for d in fn.decorator_list)


@functools.lru_cache(maxsize=256)
def strip_source(source: str) -> str:
    """The same module without docstrings, comments, function annotations and field help texts
    (`ast.unparse`: same code, canonical layout), indented one space per level (`reindent`).
    Class-level annotations stay (dataclasses read them), and so do those of `torch.library.custom_op`
    functions (it infers the operator's schema from them). Memoized, like the other pure text-to-text steps
    here: every training run bundles its configuration to log the code size."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _reads_annotations(node):
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is not None:
                    arg.annotation = None
            node.returns = None
        elif isinstance(node, ast.Call) and any(_help_only(k) for k in node.keywords):
            node.keywords = [k for k in node.keywords if not _help_only(k)]
    for node in ast.walk(tree):  # after the help texts: `x: int = field(default=3)` -> `x: int = 3`
        if isinstance(node, ast.ClassDef) and any(_is_dataclass(d) for d in node.decorator_list):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and (default := _plain_field_default(stmt.value)) is not None:
                    stmt.value = default
    _drop_variable_annotations(tree)
    return reindent(ast.unparse(tree) + "\n") if tree.body else ""


def _is_dataclass(decorator: ast.expr) -> bool:
    """`@dataclass` or `@dataclass(...)` (imported by that name)."""
    d = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(d, ast.Name) and d.id == "dataclass"


def _plain_field_default(value: ast.expr | None) -> ast.expr | None:
    """`v` of a dataclass field `field(default=v)` with no other argument (the same field as `= v`), else None."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field" \
            and not value.args and [k.arg for k in value.keywords] == ["default"]:
        return value.keywords[0].value
    return None


def _drop_variable_annotations(node: ast.AST, in_class: bool = False) -> None:
    """`x: T = v` -> `x = v` outside class bodies (a function never evaluates a local's annotation; nothing reads
    a module's `__annotations__`). A class body keeps them (dataclass fields), and so does a bare `x: T` (in a
    function it makes `x` local)."""
    for _, value in ast.iter_fields(node):
        if not isinstance(value, list):
            if isinstance(value, ast.AST):
                _drop_variable_annotations(value, in_class)
            continue
        for i, child in enumerate(value):
            if isinstance(child, ast.AnnAssign) and child.value is not None and not in_class:
                value[i] = ast.copy_location(ast.Assign(targets=[child.target], value=child.value), child)
            elif isinstance(child, ast.AST):
                scope = isinstance(child, ast.ClassDef) or (in_class and not isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
                _drop_variable_annotations(child, scope)


def bundle_recipe(cfg: Config) -> dict[str, Any]:
    """The resolved configuration as the bundle's recipe: machine-specific keys and the seed dropped (every
    seed of a record runs the same script, SEED chooses; the default is the baseline's 1337), the data paths
    set to the official layout (./data/…, overridable by DATA_PATH / TOKENIZER_PATH)."""
    recipe = json.loads(json.dumps(cfg.to_dict(), default=str))
    core = recipe["core"]
    for key in PER_RUN_KEYS:
        core.pop(key, None)
    core["data_path"] = OFFICIAL_DATA.format(vocab=cfg.core.vocab_size)
    core["tokenizer_path"] = OFFICIAL_TOKENIZER.format(vocab=cfg.core.vocab_size)
    return recipe


def without_defaults(recipe: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """`recipe` (a `bundle_recipe`) less the settings equal to their defaults: the script's embedded config
    classes resolve them to the same values (its config.json then names them "default")."""
    from core.config import CoreConfig

    def defaults(cls: Any) -> dict[str, Any] | None:
        try:
            return json.loads(json.dumps(dataclasses.asdict(cls()), default=str))
        except (TypeError, ValueError):
            return None

    out: dict[str, Any] = {}
    for section, values in recipe.items():
        cls = CoreConfig if section == "core" else getattr(registry.plugins.get(section), "config", None)
        base = defaults(cls) if isinstance(values, dict) and cls is not None else None
        if base is None:
            out[section] = values
        elif kept := {k: v for k, v in values.items() if k not in base or base[k] != v}:
            out[section] = kept
    return out


def _plugin_module(registry: Registry, name: str) -> tuple[str, str]:
    """(bundle module name, source) of an enabled plugin: built-in `plugins.x`, or a plugin file."""
    cls = registry.plugins[name]
    module = cls.__module__
    if module.startswith("plugins.") and module_file(module) is not None:
        return module, module_file(module).read_text(encoding="utf-8")  # type: ignore[union-attr]
    origin = registry.origins.get(name, "")
    path = Path(inspect.getsourcefile(cls) or "")
    if origin.startswith("entry point") or not path.is_file():
        raise BundleError(f"plugin {name!r} ({origin or module}): only built-in plugins and plugin files "
                          f"(--plugin-file) can be bundled into train_gpt.py")
    return f"plugins.file_{name}", path.read_text(encoding="utf-8")


def _literal(source: str) -> str:
    """A readable string literal of a module's source."""
    if "'''" not in source and not source.endswith(("\\", "'")) and "\r" not in source:
        return "r'''" + source + "'''"
    return repr(source)


LOADER = '''
import importlib.abc
import importlib.util
import linecache
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


class _BundledModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the modules embedded above; a core/plugins module not embedded is a clear ImportError."""

    def find_spec(self, name, path=None, target=None):
        if name in _MODULES:
            return importlib.util.spec_from_loader(name, self, is_package=name in _PACKAGES)
        if name.split(".")[0] in ("core", "plugins"):
            raise ImportError(f"{name} is not bundled in this train_gpt.py (bundled: {', '.join(sorted(_MODULES))})")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        if name in _PACKAGES:
            module.__path__ = []
        filename = os.path.join(_HERE, *name.split(".")) + ".py"  # where the file would be (in tracebacks)
        module.__file__ = filename
        linecache.cache[filename] = (len(_MODULES[name]), None, _MODULES[name].splitlines(True), filename)
        exec(compile(_MODULES[name], filename, "exec"), module.__dict__)


def main(argv):
    from pathlib import Path

    sys.meta_path.insert(0, _BundledModules())
    from core import train
    from core.config import ConfigError, resolve
    from core.registry import PluginError, Registry

    own_size = len(Path(__file__).resolve().read_bytes())
    try:
        registry = Registry()
        cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=RECIPE, env=os.environ,
                      sets=argv, check_plugins=registry.check, check_settings=registry.check_settings)
    except (ConfigError, PluginError) as exc:
        print(f"train_gpt.py: {exc}", file=sys.stderr)
        return 2
    train.run_training(cfg, registry, code_size=lambda config, registry: own_size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def minified(sources: dict[str, str], roots: list[str], scanned: list[str], loader: str = LOADER) -> dict[str, str]:
    """`sources` minified (`minify.minify_modules`: tree-shaken with the loader's names as roots, short local
    names) without the modules no kept import reaches from `roots` (module names), one space per level.
    Memoized on the texts: runs of the same plugin list minify the same sources with the same loader."""
    return dict(_minified(tuple(sources.items()), tuple(roots), tuple(scanned), loader))


@functools.lru_cache(maxsize=16)
def _minified(items: tuple[tuple[str, str], ...], roots: tuple[str, ...], scanned: tuple[str, ...],
              loader: str) -> tuple[tuple[str, str], ...]:
    sources = dict(items)
    tree = ast.parse(loader)
    names = names_in([tree], attributes=False) | {"BUNDLED"}  # plugins.BUNDLED: the script's plugin modules
    small = minify_modules(sources, roots=names, scanned=scanned, extra=[loader],
                           attribute_roots=names_in([tree]) - names)
    keep, todo = set(), [*roots, *(m for m in imports_of(loader) if m in small)]
    while todo:
        name = todo.pop()
        if name in keep or name not in small:
            continue
        keep.add(name)
        todo.extend(imports_of(small[name]))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return tuple((n, reindent(s)) for n, s in small.items() if n in keep)


@functools.lru_cache(maxsize=16)
def _shaken(items: tuple[tuple[str, str], ...], scanned: tuple[str, ...], loader: str) -> dict[str, str]:
    """`minify.shake` of the sources with the loader's names as roots (as `minified` does), names unchanged."""
    tree = ast.parse(loader)
    names = names_in([tree], attributes=False) | {"BUNDLED"}
    return shake(dict(items), roots=names, scanned=scanned, attribute_roots=names_in([tree]) - names)


def bundle_sources(cfg: Config, registry: Registry) -> tuple[dict[str, str], list[str]]:
    """(module name -> source of every module the bundle embeds, the run's plugins' module names: the enabled
    ones and the default providers of the roles they leave open, `Registry.run_plugins`)."""
    roots: dict[str, str] = {"core.train": (ROOT / "core" / "train.py").read_text(encoding="utf-8")}
    plugin_modules = []
    for name in registry.run_plugins(cfg.plugins):
        module, source = _plugin_module(registry, name)
        roots[module] = source
        plugin_modules.append(module.split(".", 1)[1])
    return module_closure(roots), plugin_modules


# Import name -> distribution on PyPI.
DISTRIBUTIONS = {"flash_attn_interface": "flash-attn-3", "quack": "quack-kernels[cu13]"}
# Packages a plugin's codec imports only when it runs (plugins.lib.codecs imports them lazily).
CODEC_PACKAGES = {"zstd": ("zstandard",), "brotli": ("brotli",), "compress_auto": ("zstandard", "brotli")}
# Extras the script works without: imported lazily, or at module level under `except ImportError`.
OPTIONAL = {"tqdm": "a live progress line on a terminal", "triton": "fused kernels; torch code paths without it",
            "quack": "fused_mlp.backend = quack"}
CONDITIONAL = {"tomli": "python_version < '3.11'"}


def _guards_import_error(node: ast.Try) -> bool:
    """A `try` with a handler for ImportError or ModuleNotFoundError (alone or in a tuple)."""
    types = [h.type for h in node.handlers]
    caught = {getattr(t, "id", None) for t in types} | {
        getattr(e, "id", None) for t in types if isinstance(t, ast.Tuple) for e in t.elts}
    return bool(caught & {"ImportError", "ModuleNotFoundError"})


def _third_party(source: str) -> tuple[set[str], set[str]]:
    """(module-level imports, imports the script works without: inside functions, or at module level in a `try`
    whose handler catches ImportError) of `source`: top-level names outside the standard library and the bundled
    packages."""
    tree = ast.parse(source)

    def names(nodes) -> set[str]:
        out = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out.add(node.module.split(".")[0])
        return {n for n in out if n not in sys.stdlib_module_names and n not in PACKAGES and n != "__future__"}

    guarded = [s for s in tree.body if isinstance(s, ast.Try) and _guards_import_error(s)]
    top = names(n for stmt in tree.body for n in ast.walk(stmt) if stmt not in guarded
                and not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    return top, names(ast.walk(tree)) - top


def requirements(cfg: Config, script: str) -> str:
    """requirements.txt of a bundled script (`script`: its text before `pg_wrap_code`): the packages its code and
    the modules it embeds as string literals import at module level (torch, numpy, sentencepiece; pluggy only where
    the script dispatches hooks through it), the enabled codecs' packages, and optional extras as comments."""
    tree = ast.parse(script)
    embedded = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Subscript) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)]
    required: set[str] = set()
    lazy: set[str] = set()
    for text in (script, *embedded):
        top, inner = _third_party(text)
        required |= top
        lazy |= inner
    for name in cfg.plugins:
        required.update(CODEC_PACKAGES.get(name, ()))
    lines = [DISTRIBUTIONS.get(t, t) + (f"; {CONDITIONAL[t]}" if t in CONDITIONAL else "") for t in sorted(required)]
    lines += [f"# optional: {DISTRIBUTIONS.get(t, t)} ({why})" for t, why in OPTIONAL.items()
              if t in lazy and t not in required]
    return "\n".join(lines) + "\n"


def bundle_with_requirements(cfg: Config, registry: Registry, **options: Any) -> tuple[str, str]:
    """(the script `bundle(cfg, registry, **options)` returns, its requirements.txt) from one bundling."""
    plain = bundle(cfg, registry, wrap=False, **options)
    return wrap_code(cfg, registry, plain), requirements(cfg, plain)


def _bundled_modules(registry: Registry, cfg: Config) -> dict[str, str]:
    """A plugin file's module -> its name in the bundle, for the run's plugins."""
    return {registry.plugins[n].__module__: _plugin_module(registry, n)[0] for n in registry.run_plugins(cfg.plugins)}


def specialised_loader(cfg: Config, registry: Registry, sources: dict[str, str], profile: str = "full") -> str | None:
    """Specialise stripped `sources` in place to this configuration (`submissions.specialise`: a generated
    static-dispatch `core.registry`, no `@hookimpl` markers) and return the script's loader with the frozen
    configuration (`profile`: its full or its record main); None (sources unchanged) when the configuration cannot
    be specialised (a hook wrapper)."""
    modules = _bundled_modules(registry, cfg)
    work = {n: specialise.drop_hookimpl_markers(s) for n, s in sources.items()}
    work.update(_without_default_fields(cfg, work, modules, BUNDLE_TIME_SETTINGS))
    work.update(specialise.drop_plugin_metadata(work))
    typed = specialise.config_class_names(cfg, registry) if profile == "full" else set()  # record: no type hints read
    work.update(specialise.erase_field_types(work, typed))
    if profile == "record" and work.get("core.config"):
        work["core.config"] = specialise.without_sources(work["core.config"])
    if profile == "record":
        work.update({n: specialise.without_events(s) for n, s in work.items() if s and "run.event(" in s})
    work.pop("core.registry", None)  # replaced by the generated dispatcher below: not code the bundle runs
    silent = specialise.RECORD_SILENT_HOOKS if profile == "record" else ()
    work, fixed = specialise.fold_sources(cfg, registry, work, silent, switches=profile == "record")
    noops = specialise.noop_implementations(cfg, registry, work)
    if noops:  # implementations that only return None: a hook that has nothing else is folded like an empty one
        work, more = specialise.fold_sources(cfg, registry, work, silent, switches=profile == "record", noops=noops)
        fixed.update(more)
    hooks = specialise.called_hooks(work)
    registry_source = specialise.dispatcher_module(cfg, registry, hooks, modules, specialise.direct_calls(work),
                                                   noops)
    if registry_source is None:
        return None
    sections = specialise.record_sections(cfg, registry, work, hooks) if profile == "record" else None
    if sections is not None and (odd := _not_scalar(cfg, sections)):
        raise BundleError(f"profile 'record' converts a setting's variable by the type of its value (int, float, str, "
                          f"bool): {', '.join(odd)} (bundle with profile 'full')")
    if sections:  # a plugin the script never builds: config.json alone reads its settings, only those changed matter
        unread = [(n, f.name) for n, built in sections.items() if not built
                  for f in dataclasses.fields(cfg.plugin_configs[n])]
        work.update(_without_default_fields(cfg, work, modules, unread))
    sources.update(work)
    sources["core.registry"] = strip_source(registry_source)
    main = specialise.frozen_main(cfg, registry, modules, fixed, profile, sections)
    tail = LOADER[LOADER.index("\n\nif __name__"):] if profile == "full" else specialise.RECORD_TAIL
    return LOADER[:LOADER.index("def main(")] + main.lstrip("\n") + tail


def bare_export(source: str) -> str:
    """`core.export`'s source with `submissions.record_export`'s functions in place of those of the same names: a
    record-profile script writes the BARE artifact (no MAGIC/header framing)."""
    tree = ast.parse(source)
    bare = {n.name: n for n in ast.parse((ROOT / "submissions" / "record_export.py").read_text(encoding="utf-8")).body
            if isinstance(n, ast.FunctionDef)}
    missing = set(record_export.REPLACED) - {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    if missing or set(bare) != set(record_export.REPLACED):
        raise BundleError(f"core.export: cannot replace {sorted(missing or set(bare))} with the bare artifact's")
    tree.body = [bare.get(n.name, n) if isinstance(n, ast.FunctionDef) else n for n in tree.body]
    return ast.unparse(tree) + "\n"


def _not_scalar(cfg: Config, sections: Iterable[str]) -> list[str]:
    """The settings of core and of `sections` whose type or value is not int, float, str or bool (one type)."""
    out = []
    for name in ("core", *sections):
        settings = cfg.section(name)
        if settings is None:
            continue
        hints = typing.get_type_hints(type(settings))
        out += [f"{name}.{f.name}" for f in dataclasses.fields(settings) if not (
            hints[f.name] in (int, float, str, bool) and type(getattr(settings, f.name)) is hints[f.name])]
    return out


def _without_default_fields(cfg: Config, sources: dict[str, str], modules: dict[str, str],
                            fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The modules of the settings `fields` ("section", "key") whose value is the default, without that field in their
    config class (`BUNDLE_TIME_SETTINGS`: a specialised script neither reads nor honours them; its RECIPE leaves
    defaults out)."""
    out: dict[str, str] = {}
    fields = list(fields)
    for section, key in fields:
        settings = cfg.plugin_configs.get(section)
        if section not in cfg.plugins or settings is None or getattr(settings, key) != getattr(type(settings)(), key):
            continue
        owner = next((c for c in type(settings).__mro__ if key in vars(c).get("__annotations__", {})), None)
        if owner is None:
            continue
        sharing = [n for n in cfg.plugins if isinstance(cfg.plugin_configs.get(n), owner)]  # a base: all agree
        if any((n, key) not in fields or getattr(c := cfg.plugin_configs[n], key) != getattr(type(c)(), key)
               for n in sharing):
            continue
        module = modules.get(owner.__module__, owner.__module__)
        if module not in sources:
            continue
        tree = ast.parse(out.get(module, sources[module]))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner.__name__):
            cls.body = [s for s in cls.body if not (isinstance(s, ast.AnnAssign) and ast.unparse(s.target) == key)] \
                or [ast.Pass()]
        out[module] = ast.unparse(tree) + "\n"
    return out


def record_recipe(cfg: Config, registry: Registry, sections: Iterable[str]) -> dict[str, Any]:
    """A record-profile script's recipe before `recipe_defaults`: the plugin list and the changed settings of the
    `sections` its main builds (`specialise.main_sections`, core first)."""
    sections = set(sections)
    recipe = {k: v for k, v in bundle_recipe(cfg).items() if k == "plugins" or k in sections}
    return without_defaults(recipe, registry)


def recipe_defaults(cfg: Config, registry: Registry,
                    recipe: dict[str, Any]) -> dict[tuple[str, str], tuple[type, Any]]:
    """("section", "key") -> (owner class, value) of the settings of `recipe` (a `record_recipe`) a record-profile
    script writes as
    their field's default instead of a RECIPE entry (the records' Hyperparameters form: the value sits where the
    setting is declared; its environment variable still overrides it). A setting stays in RECIPE when its field has a
    `default_factory`, or when its class (the one that declares the field) also serves another enabled section whose
    value differs: that section's settings would change with it."""
    from core.config import CoreConfig

    as_json = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731 - the RECIPE's own conversion
    users = [(n, s) for n in ("core", *cfg.plugins) if (s := cfg.section(n)) is not None]
    out: dict[tuple[str, str], tuple[type, Any]] = {}
    for section, values in recipe.items():
        cls = CoreConfig if section == "core" else getattr(registry.plugins.get(section), "config", None)
        if not isinstance(values, dict) or cls is None:
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in fields or fields[key].default is dataclasses.MISSING:
                continue
            owner = next(c for c in cls.__mro__ if key in vars(c).get("__annotations__", {}))
            shared = [s for n, s in users if n != section and isinstance(s, owner)]
            if all(as_json(getattr(s, key)) == value for s in shared):
                out[section, key] = owner, value
    return out


def _with_recipe_defaults(sources: dict[str, str], modules: dict[str, str],
                          folds: dict[tuple[str, str], tuple[type, Any]]) -> dict[str, str]:
    """The modules of the config classes of `folds` (`recipe_defaults`) with each folded field's default (`key: T =
    v`, or `field(default=v, …)`'s keyword) the configured value."""
    out: dict[str, str] = {}
    for (section, key), (owner, value) in folds.items():
        module = modules.get(owner.__module__, owner.__module__)
        tree = ast.parse(out.get(module, sources.get(module, "")))
        targets = [s for c in tree.body if isinstance(c, ast.ClassDef) and c.name == owner.__name__ for s in c.body
                   if isinstance(s, ast.AnnAssign) and ast.unparse(s.target) == key and s.value is not None]
        if len(targets) != 1:
            raise BundleError(f"setting {section}.{key}: no single field {key!r} with a default in class "
                              f"{owner.__name__} of module {module}")
        default = next((k for k in getattr(targets[0].value, "keywords", ()) if k.arg == "default"), None)
        if default is not None:
            default.value = ast.Constant(value)
        else:
            targets[0].value = ast.Constant(value)
        out[module] = ast.unparse(tree) + "\n"
    return out


# `_embedded`'s recent results by the digest of what they were made from, oldest first.
_EMBEDDED: dict[str, tuple[dict[str, str], str]] = {}
HEX = set("0123456789abcdef")  # a cache entry is named by its key, a sha256
CACHED_BUNDLES = 64  # entries `bundle_cache_dir` keeps, newest first


def per_run_neutral(cfg: Config) -> Config:
    """`cfg` with its per-run settings (`PER_RUN_KEYS`: seed, machine paths, device) at their defaults and no
    record of where its values came from (`Config.sources`): a script leaves those settings to its environment
    (they are not in its RECIPE), so it is bundled from what it runs without one, and every seed and machine of
    one configuration gets the same script."""
    from core.config import CoreConfig

    default = CoreConfig()
    core = dataclasses.replace(cfg.core, **{k: getattr(default, k) for k in PER_RUN_KEYS})
    return dataclasses.replace(cfg, core=core, sources={})


def bundle_cache_dir() -> Path | None:
    """Where specialised bundles are kept between processes: `$PGOLF_BUNDLE_CACHE`, else `$PGOLF_CACHE/bundles`,
    else `~/.cache/pgolf/bundles`; None (no cache) when `PGOLF_BUNDLE_CACHE` is `off`."""
    env = os.environ.get("PGOLF_BUNDLE_CACHE", "")
    if env == "off":
        return None
    if env:
        return Path(env)
    root = os.environ.get("PGOLF_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "pgolf") / "bundles"


@functools.cache
def _bundler_digest() -> str:
    """The bundler's own code and the printer it uses: a cached bundle is only as good as what made it."""
    own = sorted(Path(__file__).parent.glob("*.py"))
    parts = [sys.version, importlib.metadata.version("python-minifier"), *(p.read_text(encoding="utf-8") for p in own)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _cached(key: str) -> tuple[dict[str, str], str] | None:
    """The bundle cache's entry for `key` (None when absent or not a well-formed entry)."""
    folder = bundle_cache_dir()
    try:
        data = json.loads((folder / f"{key}.json").read_text(encoding="utf-8")) if folder else None
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("loader"), str) and isinstance(data.get("sources"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in data["sources"].items())):
        return None
    return data["sources"], data["loader"]


def _cache(key: str, sources: dict[str, str], loader: str) -> None:
    """Stores an entry atomically (a temporary file renamed into place); keeps the newest `CACHED_BUNDLES`. A cache
    that cannot be written is no error: the bundle is made again next time."""
    folder = bundle_cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"sources": sources, "loader": loader}), encoding="utf-8")
        os.replace(tmp, folder / f"{key}.json")
        entries = sorted((p for p in folder.glob("*.json") if len(p.stem) == 64 and set(p.stem) <= HEX),  # only its own
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CACHED_BUNDLES:]:
            old.unlink(missing_ok=True)
    except OSError:
        return


def _embedded(cfg: Config, registry: Registry, strip: bool, minify: bool, profile: str = "full") -> tuple[
        dict[str, str], str]:
    """(module name -> embedded source, the script's loader code) of `per_run_neutral(cfg)`. Memoized, in this
    process and in `bundle_cache_dir`, on the texts of the modules it embeds, the run's plugin classes, the
    configuration (`Config.to_json`), the options and the bundler's own code: `pgolf train` bundles to log its
    code size, each seed's run bundles the same script, and one configuration is often bundled wrapped and plain."""
    cfg = per_run_neutral(cfg)
    registry = _RecordRegistry(registry) if profile == "record" else registry
    sources, plugin_modules = bundle_sources(cfg, registry)
    classes = [(c.__module__, c.__qualname__) for c in map(registry.plugins.get, registry.run_plugins(cfg.plugins))]
    key = hashlib.sha256(repr((cfg.to_json(), strip, minify, profile, sorted(sources.items()), plugin_modules,
                               classes, _bundler_digest())).encode()).hexdigest()
    if key not in _EMBEDDED:
        made = _cached(key)
        if made is None:
            made = _embed(cfg, registry, sources, plugin_modules, strip, minify, profile)
            _cache(key, *made)
        _EMBEDDED[key] = made
        if len(_EMBEDDED) > 8:
            del _EMBEDDED[next(iter(_EMBEDDED))]
    out, loader = _EMBEDDED[key]
    return dict(out), loader


def _embed(cfg: Config, registry: Registry, sources: dict[str, str], plugin_modules: list[str], strip: bool,
           minify: bool, profile: str) -> tuple[dict[str, str], str]:
    """`_embedded` of the modules `bundle_sources` found."""
    record = profile == "record"
    if record and not specialise.hook_counts(cfg, registry)["pg_state_codec"][0]:
        sources["core.export"] = bare_export(sources["core.export"])
    sources["plugins"] = "" if record else f"BUNDLED = {tuple(sorted(set(plugin_modules)))!r}\n"
    loader = LOADER
    if strip:
        sources = {n: strip_source(s) for n, s in sources.items()}
    if minify:
        loader = specialised_loader(cfg, registry, sources, profile) or LOADER
    if record and loader is LOADER:
        raise BundleError("profile 'record' needs a specialised bundle: stripped and minified, and no hook wrapper "
                          "among the plugins (bundle with profile 'full')")
    if minify:
        if loader is not LOADER:  # a specialised script runs the configuration validated at bundle time
            sources = lean_sources(sources, extra=[loader])
        scanned = [] if loader is not LOADER else [f"plugins.{m}" for m in plugin_modules]  # static dispatch: no scan
        roots = ["core.train", "plugins", *(f"plugins.{m}" for m in plugin_modules)]
        for _ in range(3 if loader is not LOADER else 0):  # literal arguments and settings only the shaken code shows
            live = _shaken(tuple(sources.items()), tuple(scanned), loader)
            answered = empty_comprehensions(absent_attributes(live, [loader]))  # `getattr(x, "name", d)`: `d`
            again, more = specialise.fold_sources(cfg, registry, specialise.fold_arguments(answered, [loader]),
                                                  switches=record)
            again = without_fallbacks(again, truthy_hooks(cfg, registry, again))  # `loader or default`: `loader`
            loader = specialise.with_fixed(loader, more)
            if again == live:
                break
            sources = again
        if loader is not LOADER:
            sources = specialise.without_fixed_checks(cfg, registry, sources, specialise.fixed_of(loader))
            sources = drop_unused_parameters(sources, [loader])
            sources, (loader,) = specialise.rename_hooks(sources, [loader], specialise.hook_names())
            sources, (loader,) = rename_private_attributes(sources, [loader])
        sources = minified(sources, roots=roots, scanned=scanned, loader=loader)
        if record:  # settings nothing reads any more, at their defaults: out of their class (and config.json)
            unread = specialise.unread_fields(cfg, sources, specialise.main_sections(loader)[1:])
            modules = _bundled_modules(registry, cfg)
            sources.update(_without_default_fields(cfg, sources, modules, unread))
            folds = recipe_defaults(cfg, registry, record_recipe(cfg, registry, specialise.main_sections(loader)))
            sources.update(_with_recipe_defaults(sources, modules, folds))  # RECIPE's values, where they are declared
            loader = specialise.prune_fixed(sources, loader)
        keep = frozenset() if record else frozenset({"BUNDLED", *specialise.config_class_names(cfg, registry)})
        sources, loader = _renamed_globals(tuple(sources.items()), loader, keep)
    return sources, loader


@functools.lru_cache(maxsize=16)
def _renamed_globals(items: tuple[tuple[str, str], ...], loader: str, keep: frozenset[str]) -> tuple[
        dict[str, str], str]:
    """`minify.rename_globals` of the modules and the loader (short module-level names), one space per level,
    imports nothing uses any more dropped (`minify.prune_unused_imports`), error messages without their asides
    (`minify.shorten_messages`), `from __future__ import annotations` where it changes nothing
    (`minify.drop_future_annotations`), and `x = v; return x` as `return v` (`minify.return_directly`);
    `keep`: plugins.BUNDLED (what the script bundles, for inspection) and the settings classes, whose names a bad
    setting's error message shows."""
    sources, (loader,) = rename_globals(dict(items), [loader], keep=keep)
    sources = prune_unused_imports(sources, [loader])
    return {n: reindent(return_directly(drop_future_annotations(shorten_messages(s)))) for n, s in sources.items()}, \
        shorten_messages(loader)


def embedded_modules(cfg: Config, registry: Registry, strip: bool = True, minify: bool | None = None,
                     profile: str | None = None) -> dict[str, str]:
    """module name -> the source the bundle embeds for it (stripped, and minified as asked: by default when
    stripped; minified bundles are specialised to the configuration: `specialised_loader`)."""
    return _embedded(cfg, registry, strip, strip if minify is None else minify, bundle_profile(cfg, profile))[0]


def bundle_profile(cfg: Config, profile: str | None = None) -> str:
    """`profile`, or when None the configuration's own choice (`code_wrapper.profile`, "full" without it)."""
    if profile is None:
        profile = getattr(cfg.plugin_configs.get("code_wrapper"), "profile", "full")
    if profile not in PROFILES:
        raise BundleError(f"bundle profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return profile


def bundle(cfg: Config, registry: Registry, strip: bool = True, wrap: bool = True, minify: bool | None = None,
           profile: str | None = None) -> str:
    """The text of a self-contained train_gpt.py for `cfg` (its enabled plugins and settings); with `wrap`,
    in the form a plugin's `pg_wrap_code` gives it (the plain script when no plugin answers); `minify`
    (default: as `strip`) tree-shakes the modules and shortens local names (`submissions.minify`); `profile`:
    "full" or "record" (`PROFILES`; None: the configuration's `code_wrapper.profile`, else "full")."""
    minify = strip if minify is None else minify
    profile = bundle_profile(cfg, profile)
    sources, loader = _embedded(cfg, registry, strip, minify, profile)
    packages = sorted(n for n in sources if any(m.startswith(n + ".") for m in sources))
    if profile == "record":  # the sections its main reads, no source name, less the values its classes declare
        recipe = record_recipe(cfg, registry, specialise.main_sections(loader))
        folds = recipe_defaults(cfg, registry, recipe)
        recipe = {s: v if s == "plugins" else kept for s, v in recipe.items()
                  if s == "plugins" or (kept := {k: x for k, x in v.items() if (s, k) not in folds})}
    else:
        recipe = {**bundle_recipe(cfg), "source": "train_gpt.py RECIPE"}
        recipe = without_defaults(recipe, registry) if minify else recipe
    recipe_text = repr(recipe) if minify else pprint.pformat(recipe, width=110, sort_dicts=False)
    if ast.literal_eval(recipe_text) != recipe:
        raise BundleError("the configuration has values that are not Python literals")
    plugin_list = ", ".join(cfg.plugins) or "(none)"
    lines = [  # a minified script: one line (its plugins are in RECIPE)
        '"""Parameter Golf train_gpt.py by `pgolf bundle --profile record`: RECIPE < environment variables."""'
        if profile == "record" else
        '"""Parameter Golf train_gpt.py by `pgolf bundle`: RECIPE < environment variables < section.key=value."""',
    ] if minify else [
        f'"""Parameter Golf train_gpt.py: pgolf core + plugins {plugin_list}.',
        "",
        "Generated by `pgolf bundle`. Runs with no pgolf installed: the modules below are",
        "embedded source served by an import hook. Settings: RECIPE < environment variables (DATA_PATH,",
        "TOKENIZER_PATH, SEED, ITERATIONS, MAX_WALLCLOCK_SECONDS, …) < arguments section.key=value.",
        '"""',
    ]
    lines += ["", f"RECIPE = {recipe_text}", ""]
    loader = strip_source(loader) if strip or minify else loader
    loader = rename_locals(loader) if minify else loader
    merged = _merged(sources, loader) if minify and "def main(" in loader and LOADER_CLASS not in loader else None
    tight = compact if minify else (lambda source: source)  # the header lines stay as they are (`needs_brotli`)
    if merged is not None:
        text = "\n".join(lines) + "\n" + tight(merged)
    else:
        lines += [f"_PACKAGES = {tuple(packages)!r}", "_MODULES = {}"]
        lines += [f"_MODULES[{name!r}] = {_literal(tight(sources[name]))}" for name in sorted(sources)]
        text = "\n".join(lines) + "\n" + (tight(reindent(loader)) if minify else loader)
    ast.parse(text)  # the bundle is valid Python (a broken literal would be a pgolf bug)
    return wrap_code(cfg, registry, text) if wrap else text


# The generic loader's main (it resolves with pluggy: a hook wrapper's bundle) needs its import hook.
LOADER_CLASS = "registry = Registry()"


def _merged(sources: dict[str, str], loader: str) -> str | None:
    """A specialised script's modules and its main in one namespace (`submissions.merge`), one space per level;
    None where that cannot be proven the same (the script keeps its module loader)."""
    main = ast.parse(loader)
    main.body = [s for s in main.body if isinstance(s, ast.Import) and s.names[0].name in ("os", "sys")
                 or isinstance(s, ast.FunctionDef) and s.name == "main" or isinstance(s, ast.If)]
    for fn in (s for s in main.body if isinstance(s, ast.FunctionDef)):
        fn.body = [s for s in fn.body if "_BundledModules" not in ast.unparse(s)]
    try:
        return reindent(merge_modules(sources, ast.unparse(main), ["core.train"]))
    except Unmergeable:
        return None


def wrap_code(cfg: Config, registry: Registry, text: str) -> str:
    """`text` as the enabled plugins' `pg_wrap_code` returns it (unchanged when none answers)."""
    pm = make_manager(registry, cfg)
    wrapped = pm.hook.pg_wrap_code(source=text)
    if wrapped is None:
        return text
    if not isinstance(wrapped, str):
        raise BundleError(f"pg_wrap_code returned {type(wrapped).__name__}, expected the wrapped script as str")
    try:
        ast.parse(wrapped)
    except SyntaxError as exc:
        raise BundleError(f"pg_wrap_code returned a script that is not valid Python ({exc.msg}, "
                          f"line {exc.lineno})") from None
    return wrapped


def script_bytes(text: str) -> bytes:
    """`text` as its file's bytes: in the encoding its PEP 263 line declares (`code_wrapper`'s latin-1 form: one
    byte a character), else UTF-8."""
    head = "\n".join(text.split("\n", 2)[:2]).encode("utf-8")
    return text.encode(tokenize.detect_encoding(io.BytesIO(head).readline)[0])


def source_bytes(cfg: Config, registry: Registry) -> int:
    """An over-estimate of the bundle's size: the bytes of the core modules and the run's plugins' files
    (unstripped)."""
    files = sorted((ROOT / "core").glob("*.py"))
    files += [Path(inspect.getsourcefile(registry.plugins[n]) or "") for n in registry.run_plugins(cfg.plugins)]
    return sum(len(p.read_bytes()) for p in files if p.is_file())


def bundle_size(cfg: Config, registry: Registry) -> int:
    """Bytes of the train_gpt.py `bundle` writes for `cfg` (what `pgolf train` logs as its code size);
    `source_bytes` when a plugin cannot be bundled (an entry-point plugin)."""
    try:
        return len(script_bytes(bundle(cfg, registry)))
    except BundleError:
        return source_bytes(cfg, registry)
