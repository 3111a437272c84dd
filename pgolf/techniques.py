"""The technique catalogue as data (plugins/techniques.toml): for every technique of the research catalogue,
the plugins that implement it, the core settings that cover it, or why it has no plugin (issue #15)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import load_recipe

CATALOGUE = Path(__file__).resolve().parent.parent / "plugins" / "techniques.toml"


def load_catalogue(path: Path = CATALOGUE) -> list[dict[str, Any]]:
    """The entries: each has section, title and at least one of plugins / core / reason."""
    entries = load_recipe(path).get("technique", [])
    bad = [e.get("section", "?") for e in entries
           if not e.get("section") or not e.get("title") or not (e.get("plugins") or e.get("reason"))]
    if bad:
        raise ValueError(f"{path}: entries {', '.join(bad)} need section, title and plugins or reason")
    return entries


def without_plugin(entries: list[dict[str, Any]], known: set[str]) -> list[str]:
    """One line per technique none of whose plugins is in `known`: what covers it instead, or why not."""
    lines = []
    for e in entries:
        if any(p in known for p in e.get("plugins", [])):
            continue
        why = [f"core: {e['core']}"] if e.get("core") else []
        if e.get("reason"):
            why.append(e["reason"])
        missing = [p for p in e.get("plugins", []) if p not in known]
        if missing and not e.get("reason"):
            why.append(f"plugin {', '.join(missing)} not in this build")
        lines.append(f"§{e['section']} {e['title']}: {'; '.join(why)}")
    return lines
