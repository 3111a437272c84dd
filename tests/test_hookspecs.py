"""Every hook in core/hookspecs.py has a contract (docstring) and an implementer: the core or a plugin."""

from __future__ import annotations

import inspect

from core import hookspecs
from core.registry import Registry
from core.train import CoreDefaults

SPECS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("pg_") and inspect.isfunction(f))


def test_every_hook_is_documented_and_implemented():
    registry = Registry()
    implemented = {n for n in SPECS if hasattr(CoreDefaults, n)}
    implemented |= {n for cls in registry.plugins.values() for n in SPECS if hasattr(cls, n)}
    assert [n for n in SPECS if not (getattr(hookspecs, n).__doc__ or "").strip()] == []
    assert sorted(set(SPECS) - implemented) == []
