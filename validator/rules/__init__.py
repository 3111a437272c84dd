"""Rules as code + data: every static rule of the rulebook, discoverable as a list (extendable by plugins)."""

from __future__ import annotations

from collections.abc import Iterable

from validator.rules import budget, consistency, data, evalscan, layout, provenance, schema, size, stats, tokenizer
from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule

FAMILIES = (layout, schema, size, budget, consistency, stats, data, tokenizer, evalscan, provenance)

__all__ = ["ERROR", "FAIL", "INFO", "PASS", "SKIP", "WARN", "Finding", "FolderContext", "Rule", "all_rules",
           "builtin_rules"]


def builtin_rules() -> list[Rule]:
    """The built-in rules, in report order."""
    return [r for fam in FAMILIES for r in fam.RULES]


def all_rules(extra: Iterable[Rule] = ()) -> list[Rule]:
    """Built-in rules plus ``extra`` (e.g. pgolf's run rules, ``pgolf.run_rules``); ids are unique."""
    rules = builtin_rules()
    seen = {r.id for r in rules}
    for r in extra:
        if r.id in seen:
            raise ValueError(f"duplicate rule id {r.id}")
        seen.add(r.id)
        rules.append(r)
    return rules
