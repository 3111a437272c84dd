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
import os
import stat
from pathlib import Path
from typing import Any

JSON_ERRORS = (ValueError, RecursionError)
JSON_LIMIT = 64 << 20  # bytes: a config.json or metrics.json is kilobytes; a file past this is no such file
FILE_LIMIT = 1 << 30  # bytes: no file of a submission or run directory is larger (the artifact is under 16 MB)


def read_untrusted(path: Path, limit: int = JSON_LIMIT) -> bytes:
    """The bytes of a file a submission controls: a regular file (links followed) of at most `limit` bytes.
    Opened without blocking and checked on the open descriptor, so a FIFO never hangs the reader and /dev/zero
    (or a link to it) never fills its memory; OSError/ValueError naming the file otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file (a FIFO, a device or a socket)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit:,} bytes (no such file is)")
    return data


def irregular_files(root: Path) -> list[str]:
    """Entries under `root` a reader must not open: FIFOs, devices and sockets (links followed) and files over
    FILE_LIMIT, each as 'path: why'."""
    out = []
    for p in root.rglob("*"):
        try:
            st = p.stat()
        except OSError:  # a dangling link: nothing to read
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            out.append(f"{p}: not a regular file (a FIFO, a device or a socket)")
        elif st.st_size > FILE_LIMIT:
            out.append(f"{p}: {st.st_size:,} bytes, larger than any file a submission or run holds")
    return out


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
    """The `config` object of a pgolf run directory's config.json (`config_recipe`)."""
    return config_recipe(run_dir / "config.json")


def config_recipe(cfg_path: Path) -> dict[str, Any]:
    """The `config` object of a pgolf config.json; ValueError naming the file when it is unreadable, not JSON
    (`parse_json`) or of another shape: `plugins` a list of names, every other key a section object."""
    try:
        data = parse_json(read_untrusted(cfg_path).decode("utf-8"))["config"]
    except (OSError, *JSON_ERRORS, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_path}: not a pgolf config.json ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{cfg_path}: 'config' is not an object")
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ValueError(f"{cfg_path}: config.plugins is not a list of plugin names")
    for key, section in data.items():
        if key != "plugins" and not isinstance(section, dict):
            raise ValueError(f"{cfg_path}: config.{key} is {type(section).__name__}, expected a section object")
    return data


# metrics.json of a finished run: the fields a result needs, and what each must be.
METRICS = {"val_bpb": "positive", "val_loss": "positive", "total_bytes": "count", "code_bytes": "count"}


def run_dir_metrics(run_dir: Path, required: tuple[str, ...] = tuple(METRICS)) -> dict[str, Any]:
    """A run's metrics.json: an object holding the `required` fields, whose val_bpb and val_loss are finite positive
    numbers and whose total_bytes, code_bytes and model_bytes are non-negative integers where present; ValueError
    naming the file and the field otherwise (NaN/Infinity refused: a diverged run is not a result)."""
    path = run_dir / "metrics.json"
    try:
        data = parse_json(read_untrusted(path).decode("utf-8"), parse_constant=_no_constant)
    except (OSError, *JSON_ERRORS) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    for key in required:
        if key not in data:
            raise ValueError(f"{path}: field {key!r} missing (the run did not finish its export)")
    for key, kind in ((k, v) for k, v in {**METRICS, "model_bytes": "count"}.items() if k in data):
        value = data[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "positive" and not (number and value > 0):
            raise ValueError(f"{path}: {key} is {value!r}, expected a positive number")
        if kind == "count" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{path}: {key} is {value!r}, expected a non-negative integer")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite value {name} (the run is not a result)")
