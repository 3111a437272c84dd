"""JSON a user or a submission wrote, read the one way every reader agrees on (THREATS.md §4).

`JSON_ERRORS`: what Python's parser raises on such a text. `json.JSONDecodeError` alone is not enough. A text that is
not UTF-8 raises UnicodeDecodeError, an integer longer than `sys.get_int_max_str_digits()` (4,300) digits a plain
ValueError, and nesting deeper than the interpreter's recursion limit (`[` × 100,000) RecursionError, which escaped as
a traceback before. Every reader of config.json, metrics.json, status.json, events.jsonl or submission.json catches
these; core (a recipe's TOML, an artifact header, a `--set` list) and dataprep (a JSONL corpus), which sit below this
package, name the same pair where they parse.

`parse_json`: what the validator reads. An object that names a key twice is refused: Python keeps the last value,
other readers (a leaderboard script, jq, a reviewer's tool) may keep the first, so such a submission.json could claim
one score to the validator and another to them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JSON_ERRORS = (ValueError, RecursionError)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):  # linear: a huge object with one repeat costs no more than reading it
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice!r} appears twice in one object (readers disagree on which value counts)")
    return out


def parse_json(text: str, **options: Any) -> Any:
    """`json.loads(text)` that refuses duplicate keys; raises one of `JSON_ERRORS`."""
    return json.loads(text, object_pairs_hook=_unique_keys, **options)


def run_dir_recipe(run_dir: Path) -> dict[str, Any]:
    """The `config` object of a pgolf run directory's config.json; ValueError naming the file when it is unreadable,
    not JSON (`parse_json`) or of another shape."""
    cfg_path = run_dir / "config.json"
    try:
        data = parse_json(cfg_path.read_text(encoding="utf-8"))["config"]
    except (OSError, *JSON_ERRORS, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_path}: not a pgolf config.json ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{cfg_path}: 'config' is not an object")
    return data
