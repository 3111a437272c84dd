"""Plugins from outside the built-in package: `.py` files (`--plugin-file`) and entry points `pgolf.plugins`.

Also each plugin's description for listings. Used by the command line, the validator and scaffolding; a run
only sees the resulting `Registry`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from core.registry import Plugin, PluginError, Registry, plugin_classes

ENTRY_POINT_GROUP = "pgolf.plugins"


def import_path(p: Path, prefix: str) -> ModuleType | None:
    """Import the Python file `p` as module `<prefix>_<hash of its path>` (registered in sys.modules);
    None when Python cannot make a module of it. Errors raised by the file's own code propagate."""
    mod_name = f"{prefix}_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def load_file(path: str | Path) -> list[type[Plugin]]:
    """Import a plugin file by path and return its Plugin classes."""
    p = Path(path)
    if not p.is_file():
        what = "a directory" if p.is_dir() else "not a regular file" if p.exists() else "not found"
        raise PluginError(f"plugin file {p}: {what} (expected a Python file)")
    try:
        module = import_path(p, "pgolf_user_plugin")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # GeneratorExit or a BaseException of its own too: a plugin file's failure
        raise PluginError(f"plugin file {p}: import failed: {type(exc).__name__}: {exc}") from exc
    if module is None:
        raise PluginError(f"plugin file {p}: cannot be imported")
    classes = plugin_classes(module)
    if not classes:
        raise PluginError(f"plugin file {p}: defines no Plugin subclass")
    return classes


def entry_point_plugins() -> Iterable[tuple[type[Plugin], str]]:
    """(class, origin) of every plugin the installed distributions declare under `pgolf.plugins`."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise PluginError(f"{origin}: import failed: {type(exc).__name__}: {exc}") from exc
        if inspect.ismodule(obj):
            for cls in plugin_classes(obj):
                yield cls, origin
        elif inspect.isclass(obj) and issubclass(obj, Plugin):
            yield obj, origin
        else:
            raise PluginError(f"{origin}: is neither a Plugin subclass nor a module")


def describe(cls: type[Plugin]) -> dict[str, Any]:
    """A plugin's metadata and settings (with defaults and help) as plain data, for `pgolf plugins show`."""
    fields = []
    if cls.config is not None:
        for f in dataclasses.fields(cls.config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            fields.append({"name": f.name, "default": default, "help": f.metadata.get("help", "")})
    return {
        "name": cls.name,
        "family": cls.family or "other",
        "summary": cls.summary,
        "sources": list(cls.sources),
        "requires": list(cls.requires),
        "conflicts": list(cls.conflicts),
        "provides": list(cls.provides),
        "default": cls.default,  # registered when no enabled plugin provides its roles
        "after": list(cls.after),
        "before": list(cls.before),
        "settings": fields,
        "module": cls.__module__,
        "file": inspect.getsourcefile(cls) or "",
    }


def load_registry(files: Sequence[str | Path] = (), entry_points: bool = True) -> Registry:
    """The built-in plugins, then the entry points' (unless `entry_points` is False), then the files'."""
    extra = list(entry_point_plugins()) if entry_points else []
    extra += [(cls, str(f)) for f in files for cls in load_file(f)]
    return Registry(extra)
