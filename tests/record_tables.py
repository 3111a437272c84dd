"""Checks of pgolf/records.py's record tables against the published records (the parameter-golf git mirror):
every environment name a record's script reads is in its profile's table, and the recipe's values under those
names equal the values the record ran with (its script defaults plus its run command, or its logged
Hyperparameters dump). Tests skip when the mirror is missing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from core.config import resolve
from core.registry import Registry
from pgolf.records import PROFILES, RecordProfile, decoded_source

ROOT = Path(__file__).resolve().parents[1]
MIRROR = os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo")
READ = re.compile(r"""os\.environ(?:\.get\(\s*|\[\s*)["']([A-Z0-9_]+)["']""")
TRUE = ("1", "True", "true")


def mirror_show(ref: str, rel: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", MIRROR, "show", f"{ref}:{rel}"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is None or proc.returncode != 0:
        pytest.skip(f"{ref}:{rel} not in the parameter-golf mirror at {MIRROR}")
    return proc.stdout


def record_source(profile: RecordProfile) -> str:
    """The record's Python source (its LZMA wrapper undone)."""
    return decoded_source(mirror_show(profile.ref, f"{profile.folder}/train_gpt.py"))


def names_read(src: str) -> set[str]:
    return set(READ.findall(src))


def script_defaults(src: str) -> dict[str, str]:
    """ENV -> default of every `os.environ.get("ENV", default)` the script reads (string form)."""
    out = {}
    for env, default in re.findall(r"""os\.environ\.get\(\s*["']([A-Z0-9_]+)["']\s*,\s*([^)]*?)\)""", src):
        out.setdefault(env, default.strip().strip("'\"").replace("_", ""))
    return out


def logged_hparams(profile: RecordProfile) -> dict[str, str]:
    """The `Hyperparameters:` dump of the profile's published log (attribute -> value)."""
    log = mirror_show(profile.ref, f"{profile.folder}/{profile.log}")
    out, inside = {}, False
    for line in log.splitlines():
        if line.startswith("Hyperparameters:"):
            inside = True
        elif inside and (m := re.fullmatch(r"  (\w+):\s?(.*)", line)):
            out[m.group(1)] = m.group(2).strip()
        elif inside:
            break
    assert out, f"{profile.log}: no Hyperparameters dump"
    return out


def same(env_value: str, record_value: str) -> bool:
    """An environment value as the record parses it equals the record's value."""
    if record_value in ("True", "False"):
        return (env_value in TRUE) == (record_value == "True")
    try:
        return float(env_value) == float(record_value)
    except ValueError:
        return env_value == record_value


def recipe_config(profile: RecordProfile):
    reg = Registry()
    return resolve(plugin_config_classes=reg.config_classes(), recipe=ROOT / profile.recipe, env={},
                   check_plugins=reg.check, check_settings=reg.check_settings)


def check_values(profile: RecordProfile, record: dict[str, str]) -> int:
    """The profile's environment for its recipe (evaluations on) against the record's values by name (upper-
    cased); returns how many were compared. SEED differs on purpose (the recipe's default vs the logs')."""
    cfg = recipe_config(profile)
    env = profile.env(cfg, skip_eval=False)
    record = {k.upper(): v for k, v in record.items()}
    compared = 0
    for name, value in env.items():
        if name in record and name != "SEED":
            assert same(value, record[name]), f"{profile.name} {name}: recipe gives {value}, record {record[name]}"
            compared += 1
    for name, plugin in profile.plugins.items():
        if name in record:
            assert (plugin in cfg.plugins) == (record[name] in TRUE), f"{profile.name} {name}={record[name]}: " \
                                                                     f"plugin {plugin}"
    return compared


def check_script_defaults(name: str) -> None:
    """Every name the script reads is in the table, and the recipe's values equal its defaults + run command."""
    profile = PROFILES[name]
    src = record_source(profile)
    read = names_read(src)
    assert read <= profile.names(), f"{name}: unmapped {sorted(read - profile.names())}"
    defaults = {**script_defaults(src), **profile.command}
    assert set(profile.settings) <= set(defaults), sorted(set(profile.settings) - set(defaults))
    assert check_values(profile, defaults) >= len(profile.settings) - 1  # all but SEED


def check_logged(name: str) -> None:
    """Every logged hyperparameter is in the table, and the recipe's values equal the logged ones."""
    profile = PROFILES[name]
    logged = logged_hparams(profile)
    covered = {n.lower() for n in profile.names()}
    assert set(logged) <= covered, f"{name}: logged but not in its table: {sorted(set(logged) - covered)}"
    assert check_values(profile, logged) >= 50
