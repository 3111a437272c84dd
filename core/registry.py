"""Plugin discovery (the built-in `plugins/` package; files and entry points: `plugins.lib.loading`), metadata,
requires/conflicts/roles/order checks, and the per-run pluggy PluginManager. No global state."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any, ClassVar

import pluggy

from core import hookspecs
from core.config import did_you_mean

FAMILIES = ("model", "routing", "training", "data", "export", "evaluation", "other")


class PluginError(ValueError):
    """A plugin could not be loaded or its metadata is invalid."""


class Plugin:
    """Base class of every technique plugin. Subclasses set the metadata and implement hooks."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # one of FAMILIES: where `pgolf plugins list` and the README put it
    summary: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()
    config: ClassVar[type | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()  # roles ("quantizer", "codec", …): two providers conflict
    default: ClassVar[bool] = False  # registered in every run where no enabled plugin provides its roles
    after: ClassVar[tuple[str, ...]] = ()  # this plugin's hooks run after those plugins' (tryfirst/trylast aside)
    before: ClassVar[tuple[str, ...]] = ()
    # {"core": {...}, "<name>": {...}}: overrides that show the plugin's effect on a tiny model in a few CPU
    # steps (the generic test matrix; every plugin supplies them).
    test_settings: ClassVar[dict[str, dict[str, Any]] | None] = None

    def __init__(self, cfg: Any = None):
        """`cfg`: an instance of `config` (None: its defaults; a plugin without settings keeps None)."""
        self.cfg = cfg if cfg is not None or self.config is None else self.config()

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        """Errors of this plugin's settings against the core's (one line each), at configuration time;
        single-field checks belong in the config dataclass's `__post_init__`."""
        return []

    @classmethod
    def check_peers(cls, cfg: Any, peers: dict[str, Any]) -> list[str]:
        """Errors of this plugin's settings against the other enabled plugins (`peers`: name -> settings), at
        configuration time: for a conflict that depends on a setting (e.g. swa with apply=true and ema)."""
        return []


def plugin_classes(module: ModuleType) -> list[type[Plugin]]:
    """The Plugin subclasses `module` defines (not those it imports)."""
    return [obj for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, Plugin)
            and obj is not Plugin and obj.__module__ == module.__name__]


def _check_metadata(cls: type[Plugin], origin: str) -> None:
    problems = [problem for bad, problem in (
        (not cls.name.isidentifier() or cls.name == "core" or cls.name[0] == "_",  # core: the settings section's
         f"name {cls.name!r} is not an identifier, or is reserved (core, names starting with _)"),
        (not cls.summary or not isinstance(cls.summary, str), "summary is empty or not text"),
        (any(not isinstance(v, (tuple, list)) or not all(isinstance(x, str) for x in v) for v in (
            cls.sources, cls.requires, cls.conflicts, cls.provides, cls.after, cls.before)),
         "sources, requires, conflicts, provides, after and before must be tuples of names"),
        (cls.family and cls.family not in FAMILIES, f"family {cls.family!r} is not one of {', '.join(FAMILIES)}"),
        (not cls.sources, "sources is empty (name the PR or paper it ports)"),
        (cls.config is not None and not dataclasses.is_dataclass(cls.config), "config is not a dataclass"),
        (cls.default and not cls.provides, "default is set but it provides no role")) if bad]
    if problems:
        raise PluginError(f"plugin {cls.__name__} from {origin}: " + "; ".join(problems))


class Registry:
    """The known plugins (built-in + entry points + files) and their validation rules."""

    def __init__(self, extra: Iterable[tuple[type[Plugin], str]] = ()):
        """The built-in plugins, then `extra` (class, origin) pairs (`plugins.lib.loading`: files, entry points)."""
        self.plugins: dict[str, type[Plugin]] = {}
        self.origins: dict[str, str] = {}
        for cls, origin in [*((c, "built-in") for c in self._builtin()), *extra]:
            self.add(cls, origin)

    @staticmethod
    def _builtin() -> Iterable[type[Plugin]]:
        import plugins as package

        bundled = getattr(package, "BUNDLED", None)  # a bundled train_gpt.py lists its plugin modules
        names = bundled if bundled is not None else [
            i.name for i in pkgutil.iter_modules(package.__path__) if not i.ispkg]  # plugins.lib is no plugin
        for name in sorted(n for n in names if not n.startswith("_")):
            yield from plugin_classes(importlib.import_module(f"plugins.{name}"))

    def add(self, cls: type[Plugin], origin: str) -> None:
        _check_metadata(cls, origin)
        if cls.name in self.plugins and self.plugins[cls.name] is not cls:
            raise PluginError(f"plugin name {cls.name!r} of class {cls.__name__} ({origin}) is already taken by "
                              f"{self.plugins[cls.name].__name__} ({self.origins[cls.name]})")
        for other in (o for o in self.plugins.values() if cls.default and o.default and o.name != cls.name):
            if shared := set(cls.provides) & set(other.provides):
                raise PluginError(f"plugin {cls.name!r} from {origin}: {other.name!r} is already the default "
                                  f"provider of {', '.join(sorted(shared))}")
        self.plugins[cls.name] = cls
        self.origins[cls.name] = origin

    def names(self) -> list[str]:
        return sorted(self.plugins)

    def config_classes(self) -> dict[str, type | None]:
        return {n: c.config for n, c in self.plugins.items()}

    def run_plugins(self, enabled: Sequence[str]) -> list[str]:
        """What a run registers: the default plugins of the roles no enabled plugin provides, then `enabled`."""
        taken = {r for n in enabled if n in self.plugins for r in self.plugins[n].provides}
        defaults = [n for n, c in sorted(self.plugins.items()) if c.default and n not in enabled
                    and not taken & set(c.provides)]
        return [*defaults, *enabled]

    def check(self, enabled: Sequence[str]) -> list[str]:
        """Errors for unknown names, conflicts and missing requirements (all of them, one line each)."""
        errors = [f"unknown plugin {name!r}{did_you_mean(name, self.names())}; see 'pgolf plugins list'"
                  for name in enabled if name not in self.plugins]
        known = list(dict.fromkeys(n for n in enabled if n in self.plugins))
        reported: set[frozenset[str]] = set()
        for i, name in enumerate(known):
            cls = self.plugins[name]
            for other in known[i + 1:]:
                if other in cls.conflicts or name in self.plugins[other].conflicts:
                    reported.add(frozenset((name, other)))
                    errors.append(f"plugins {name!r} and {other!r} conflict: enable only one of them")
            errors += [f"plugin {name!r} requires plugin {req!r}: add it to plugins" for req in cls.requires
                       if req not in known]
        for role in sorted({r for n in known for r in self.plugins[n].provides}):
            providers = [n for n in known if role in self.plugins[n].provides]
            if len(providers) > 1 and frozenset(providers[:2]) not in reported:
                errors.append(f"plugins {' and '.join(repr(p) for p in providers)} all provide {role!r}: "
                              f"enable only one of them")
        try:
            self.registration_order(known)
        except PluginError as exc:
            errors.append(str(exc))
        return errors

    def check_settings(self, core: Any, plugin_configs: dict[str, Any]) -> list[str]:
        """Errors of the enabled plugins' settings against the core settings (`Plugin.check_config`)."""
        errors: list[str] = []
        for name, cfg in ((n, c) for n, c in plugin_configs.items() if n in self.plugins):
            cls = self.plugins[name]
            errors.extend(cls.check_config(cfg, core))
            errors.extend(cls.check_peers(cfg, {n: c for n, c in plugin_configs.items() if n != name}))
            try:
                cls(cfg)  # a plugin that checks its settings when made fails here, not at build time
            except (ValueError, TypeError) as exc:
                errors.append(f"[{name}]: {exc}")
        return errors

    def registration_order(self, enabled: Sequence[str]) -> list[str]:
        """The order to register `enabled` in: pluggy calls the last registered first, so a plugin that must
        run before another (its `before`, the other's `after`) is registered after it. No constraints: `enabled`
        itself; a cycle is a PluginError naming the plugins."""
        names = list(enabled)
        must_follow: dict[str, set[str]] = {n: set() for n in names}  # a: plugins registered before a
        for n in names:
            must_follow[n].update(o for o in self.plugins[n].before if o in must_follow)
            for other in (o for o in self.plugins[n].after if o in must_follow):
                must_follow[other].add(n)
        order: list[str] = []
        while len(order) < len(names):
            ready = [n for n in names if n not in order and must_follow[n] <= set(order)]
            if not ready:
                cycle = sorted(n for n in names if n not in order)
                raise PluginError(f"plugins {', '.join(cycle)}: their after/before declarations form a cycle")
            order.append(ready[0])
        return order


def make_manager(registry: Registry, config: Any, core_impl: object | None = None) -> pluggy.PluginManager:
    """A fresh PluginManager for one run: hookspecs, the core defaults, then the run's plugins (`run_plugins`)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if core_impl is not None:
        pm.register(core_impl, name="core")
    for name in registry.registration_order(registry.run_plugins(config.plugins)):
        pm.register(registry.plugins[name](config.plugin_configs.get(name)), name=name)
    pm.check_pending()
    return pm
