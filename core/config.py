"""Typed run configuration: defaults < recipe TOML < environment (challenge names) < --set key=value.

Core settings live in `CoreConfig`, named like the official `train_gpt.py` hyperparameters so the challenge's
environment variables (NUM_LAYERS, ITERATIONS, MAX_WALLCLOCK_SECONDS, ...) work unchanged. Each plugin brings its own
dataclass; its fields are `[plugin]` tables in a recipe, `PLUGIN_KEY` environment variables and `--set
plugin.key=value`. Every value remembers where it came from, and all errors of one resolution are reported together."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import re
import reprlib
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """One or more configuration errors, each one line naming the input."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def _env(name: str) -> dict[str, str]:
    return {"env": name}


@dataclass
class CoreConfig:
    """Core trainer settings; defaults are the official baseline's (train_gpt.py, 1.2244 bpb)."""

    # Data. An empty data_path means the embedded default corpus (built on first use).
    data_path: str = ""
    tokenizer_path: str = ""
    run_id: str = ""
    seed: int = 1337
    # Validation cadence and batch size.
    val_batch_size: int = 524_288
    val_loss_every: int = 1000
    train_log_every: int = 200
    val_max_tokens: int = field(default=0, metadata=_env("PGOLF_VAL_MAX_TOKENS"))
    # Training length.
    iterations: int = 20_000
    warmdown_iters: int = 1200
    warmup_steps: int = 20
    train_batch_tokens: int = 524_288
    train_seq_len: int = 1024
    eval_seq_len: int = 0
    # Plain evaluation: with eval_doc_mask, attention stops at each BOS (document-masked windows).
    eval_doc_mask: bool = False
    bos_id: int = 1
    max_wallclock_seconds: float = 600.0
    grad_accum_steps: int = field(default=0, metadata=_env("PGOLF_GRAD_ACCUM_STEPS"))
    # Model shape.
    vocab_size: int = 1024
    num_layers: int = 9
    num_kv_heads: int = 4
    model_dim: int = 512
    num_heads: int = 8
    mlp_mult: int = 2
    mlp_hidden: int = 0  # explicit MLP width (PR #534: 1408); 0 = mlp_mult · model_dim
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    # Optimizers.
    embed_lr: float = 0.6
    head_lr: float = 0.008
    tied_embed_lr: float = 0.05
    tied_embed_init_std: float = 0.005
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_backend_steps: int = 5
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0
    # Machine. "auto" picks CUDA when present, compiles on CUDA, and the attention backend measured fastest at
    # the run's shape (fa3, cuDNN or flash SDPA; CPU: SDPA). FlashAttention-4 is the fa4_attention plugin.
    device: str = field(default="auto", metadata=_env("PGOLF_DEVICE"))
    compile: str = field(default="auto", metadata=_env("PGOLF_COMPILE"))
    # How a compiled run scores its artifact: compile, eager or auto (core.scoring.prepare_eval).
    eval_compile: str = field(default="auto", metadata=_env("PGOLF_EVAL_COMPILE"))
    attention: str = field(default="auto", metadata=_env("PGOLF_ATTENTION"))
    out_dir: str = field(default="runs", metadata=_env("PGOLF_OUT_DIR"))
    # Reproducible runs: the schedule follows iterations, not the wall clock (MAX_WALLCLOCK_SECONDS is
    # ignored), and torch uses deterministic kernels where the backend has them.
    deterministic: bool = field(default=False, metadata=_env("PGOLF_DETERMINISTIC"))


CORE_SECTION = "core"
PLUGINS_ENV = "PGOLF_PLUGINS"


def env_name(section: str, f: dataclasses.Field) -> str:
    """The environment variable that sets `section.f`."""
    return f.metadata.get("env") or (f.name.upper() if section == CORE_SECTION else f"{section}_{f.name}".upper())


@dataclass
class Config:
    """A fully resolved configuration: core settings, enabled plugins and their settings, sources."""

    core: CoreConfig
    plugins: list[str]
    plugin_configs: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        return self.core if name == CORE_SECTION else self.plugin_configs[name]

    def to_dict(self) -> dict[str, Any]:
        return {"plugins": list(self.plugins), CORE_SECTION: dataclasses.asdict(self.core),
                **{n: dataclasses.asdict(c) if c is not None else {} for n, c in self.plugin_configs.items()}}

    def to_json(self) -> str:
        return json.dumps({"config": self.to_dict(), "sources": self.sources}, indent=2, default=str)


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a TOML value or a string from env/--set to the field type; ValueError names `where`."""
    origin = typing.get_origin(typ)
    if origin in (list, tuple) or typ in (list, tuple):
        item = (typing.get_args(typ) or (str,))[0]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except (ValueError, RecursionError) as exc:  # any text json refuses (a huge integer, deep nesting)
                    raise ValueError(f"{where}: expected a list, got {value!r}") from exc
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        items = [coerce(v, item, where) for v in value]
        return tuple(items) if (origin is tuple or typ is tuple) else items
    if typ is bool:
        text = value.strip().lower() if isinstance(value, str) else value
        if isinstance(value, bool) or text in (0, 1, "1", "true", "yes", "on", "0", "false", "no", "off"):
            return text in (True, 1, "1", "true", "yes", "on")
        raise ValueError(f"{where}: expected a boolean (1/0/true/false), got {value!r}")
    if typ in (int, float):  # ASCII only (int() also reads '٣', '１２'); an integer past a float's range is no number
        with contextlib.suppress(ValueError, OverflowError):
            if isinstance(value, str) and value.isascii():
                return typ(value.strip())  # Python's own digit grouping (1_000) only
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (typ is float or value % 1 == 0):
                return typ(value)
        raise ValueError(f"{where}: expected {'an integer' if typ is int else 'a number'}, got {reprlib.repr(value)}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_recipe(path: str | Path) -> dict[str, Any]:
    if not (p := Path(path)).is_file():
        what = "a directory" if p.is_dir() else "not a regular file" if p.exists() else "file not found"
        raise ConfigError([f"recipe {p}: {what} (expected a TOML file)"])
    try:
        return tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark opens many Windows files
    except (ValueError, RecursionError) as exc:  # TOML or UTF-8 errors, a huge integer, nesting past the stack
        raise ConfigError([f"recipe {p}: invalid TOML: {exc}"]) from None


def resolve(*, plugin_config_classes: Mapping[str, type | None], recipe: str | Path | Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None, sets: Sequence[str] = (), plugins: Sequence[str] | None = None,
            check_plugins: Any = None, check_settings: Any = None) -> Config:
    """Resolve a configuration. `plugin_config_classes` maps every *known* plugin to its config class.

    `check_plugins(names) -> list[str]` (errors) validates the enabled list (unknown names, conflicts,
    requirements); `check_settings(core, plugin_configs) -> list[str]` validates the plugins' settings
    against the core's. Both are supplied by the registry, so this module knows no plugin by name."""
    env, errors, data, recipe_name = dict(env or {}), [], {}, ""
    if isinstance(recipe, Mapping):  # an already-parsed recipe, e.g. a run's config.json
        data, recipe_name = {k: v for k, v in recipe.items() if k != "source"}, f"recipe:{recipe.get('source', 'dict')}"
        recipe = recipe.get("source", "recipe")
    elif recipe is not None:
        data, recipe_name = load_recipe(recipe), f"recipe:{recipe}"

    # 1. The plugin list: recipe < PGOLF_PLUGINS < --set plugins=... < --plugins (the last one given wins).
    Item = tuple[str, str, Any, str, str]  # (section, key, raw value, source, where: for errors)
    layers: list[tuple[Any, str, str]] = []  # (plugin list, source, where)
    if "plugins" in data:
        layers.append((data["plugins"], recipe_name, f"{recipe}: plugins"))
    if env.get(PLUGINS_ENV):
        layers.append((env[PLUGINS_ENV], f"env:{PLUGINS_ENV}", f"env {PLUGINS_ENV}"))
    set_items: list[Item] = []
    for item in sets:  # 'section.key=value'; a bare 'key=value' means core
        key, eq, value = item.partition("=")
        if not eq:
            errors.append(f"--set {item!r}: expected section.key=value")
            continue
        section, _, name = key.strip().rpartition(".")
        section = section or CORE_SECTION
        if (section, name) == (CORE_SECTION, "plugins"):
            layers.append((value, "--set", f"--set {item}"))
        else:
            set_items.append((section, name, value, "--set", f"--set {item}"))
    if plugins is not None:
        layers.append((list(plugins), "--plugins", "--plugins"))
    enabled, sources = [], {"plugins": "default"}
    for value, source, where in layers:
        try:
            enabled, sources["plugins"] = [n for n in coerce(value, list[str], where) if n], source
        except ValueError as exc:
            errors.append(str(exc))
    enabled = list(dict.fromkeys(enabled))
    if check_plugins is not None:
        errors.extend(check_plugins(enabled))
    known_enabled = [n for n in enabled if n in plugin_config_classes]

    # 2. Section values: recipe < environment < --set.
    section_classes = {CORE_SECTION: CoreConfig, **{n: plugin_config_classes[n] for n in known_enabled}}
    items: list[Item] = []
    for section, table in ((k, v) for k, v in data.items() if k != "plugins"):
        if not isinstance(table, dict):
            errors.append(f"{recipe}: top-level key {section!r}: expected a [section] table or 'plugins'")
            continue
        if section not in section_classes and section in data.get("plugins", ()) and sources["plugins"] != recipe_name:
            continue  # the recipe's table of a plugin that an override (env, --set, --plugins) turned off
        items += [(section, key, raw, recipe_name, f"{recipe}: {section}.{key}") for key, raw in table.items()]
    items += [(section, f.name, env[name], f"env:{name}", f"env {name}") for section, cls in section_classes.items()
              for f in (dataclasses.fields(cls) if cls is not None else ()) if (name := env_name(section, f)) in env]
    values: dict[str, dict[str, Any]] = {s: {} for s in section_classes}
    for section, key, raw, source, where in items + set_items:
        if section not in section_classes:
            hint = did_you_mean(section, [*section_classes, *plugin_config_classes])
            errors.append(f"{where}: plugin {section!r} is not enabled (add it to plugins)" if section in
                          plugin_config_classes else f"{where}: unknown section {section!r}{hint}")
            continue
        cls = section_classes[section]
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
        if key not in fields:
            errors.append(f"{where}: unknown setting {section}.{key}{did_you_mean(key, list(fields))}")
            continue
        try:
            values[section][key] = coerce(raw, typing.get_type_hints(cls)[key], where)
            sources[f"{section}.{key}"] = source
        except ValueError as exc:
            errors.append(str(exc))

    # 3. Build and check.
    built: dict[str, Any] = {}
    for section, cls in section_classes.items():
        try:
            built[section] = None if cls is None else cls(**values[section])
        except (TypeError, ValueError) as exc:
            errors.append(f"[{section}]: {exc}")
    for section, obj in ((s, o) for s, o in built.items() if o is not None):  # NaN/inf first: no range check reads it
        bad = [f"{section}.{f.name} ({env_name(section, f)}): expected a finite number, got {v}" for f in
               dataclasses.fields(obj) if isinstance(v := getattr(obj, f.name), float) and not math.isfinite(v)]
        errors += bad or (core_errors(obj) if section == CORE_SECTION else [])
    if check_settings is not None and not errors:
        errors.extend(check_settings(built[CORE_SECTION], {n: built[n] for n in known_enabled}))
    if errors:
        raise ConfigError(errors)
    return Config(core=built[CORE_SECTION], plugins=enabled, plugin_configs={n: built[n] for n in known_enabled},
                  sources=sources)


def core_errors(c: CoreConfig) -> list[str]:
    """Cross-field checks on the core settings (each error one line naming the setting)."""
    errors = [f"core.{n} must be in (0, {hi}), got {getattr(c, n)}" for n, hi in (("num_kv_heads", 1025),
              ("logit_softcap", 1000), ("rope_base", 10**9), ("adam_eps", 0.01)) if not 0 < getattr(c, n) < hi]
    errors += [f"core.{n} must be >= 0, got {getattr(c, n)}" for n in ("val_loss_every", "train_log_every",
               "val_max_tokens", "max_wallclock_seconds", "grad_clip_norm") if getattr(c, n) < 0]
    # uint16 token ids; no GPU holds 2**20; 10**7 steps or 2**24-token batches (500x, 21x the records') never end
    ids, big, steps, tokens = 2**16 + 1, 2**20 + 1, 10**7 + 1, 2**24 + 1
    errors += [f"core.{n} must be in [{lo}, {hi}), got {getattr(c, n)}" for n, lo, hi in (
        ("beta1", 0, 1), ("beta2", 0, 1), ("muon_momentum", 0, 1), ("muon_momentum_warmup_start", 0, 1),
        ("seed", 0, 2**32), ("bos_id", 0, max(c.vocab_size, 1)), ("vocab_size", 1, ids), ("model_dim", 1, ids),
        ("num_layers", 1, 1025), ("num_heads", 1, 1025), ("mlp_mult", 1, 65), ("mlp_hidden", 0, big),
        ("train_seq_len", 1, big), ("eval_seq_len", 0, big), ("warmup_steps", 0, max(c.iterations, 20) + 1),
        ("muon_backend_steps", 1, 101), ("iterations", 1, steps), ("warmdown_iters", 0, steps),
        ("muon_momentum_warmup_steps", 0, steps), ("train_batch_tokens", 1, tokens), ("val_batch_size", 1, tokens),
        ("grad_accum_steps", 0, 1025), ("qk_gain_init", 0, 100), ("tied_embed_init_std", 0, 10), *((f"{g}_lr", 0, 10)
        for g in ("embed", "head", "tied_embed", "matrix", "scalar"))) if not lo <= getattr(c, n) < hi]  # LRs, inits
    if c.num_heads > 0 and c.model_dim > 0 and (c.model_dim % c.num_heads or c.model_dim // c.num_heads % 2):
        errors.append(f"core.model_dim={c.model_dim} must be divisible by core.num_heads={c.num_heads} into an even "
                      "head_dim (RoPE)")
    if 0 < c.val_max_tokens < (c.eval_seq_len or c.train_seq_len):
        errors.append(f"core.val_max_tokens={c.val_max_tokens} must be 0 (all) or at least one eval sequence length")
    if c.num_heads > 0 and c.num_kv_heads > 0 and c.num_heads % c.num_kv_heads != 0:
        errors.append(f"core.num_heads={c.num_heads} must be divisible by core.num_kv_heads={c.num_kv_heads}")
    if not re.fullmatch("auto|cpu|cuda(:[0-9]+)?", c.device):  # ASCII digits ('²' is one to str.isdigit())
        errors.append(f"core.device: expected auto, cpu or cuda[:N], got {c.device!r}")
    if c.compile.lower() not in ("auto", "true", "false", "1", "0", "yes", "no", "on", "off"):
        errors.append(f"core.compile (PGOLF_COMPILE): expected auto or a boolean (1/0/true/false), got {c.compile!r}")
    if c.eval_compile not in ("auto", "compile", "eager"):
        errors.append(f"core.eval_compile: expected auto, compile or eager, got {c.eval_compile!r}")
    if c.attention not in ("auto", "fa3", "cudnn", "flash", "efficient", "math", "sdpa"):
        hint = " (FlashAttention-4 is the fa4_attention plugin: enable it instead)" if c.attention == "fa4" else ""
        errors.append("core.attention (PGOLF_ATTENTION): expected auto, fa3, cudnn, flash, efficient, math or sdpa, "
                      f"got {c.attention!r}{hint}")
    return errors
