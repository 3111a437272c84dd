"""Config precedence, sources, type coercion and error reporting."""

from __future__ import annotations

import pytest

from core.config import ConfigError, resolve
from core.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _resolve(registry, **kw):
    return resolve(plugin_config_classes=registry.config_classes(), check_plugins=registry.check, **kw)


def test_defaults_are_the_baseline(registry):
    cfg = _resolve(registry)
    c = cfg.core
    assert (c.num_layers, c.model_dim, c.num_heads, c.num_kv_heads, c.mlp_mult) == (9, 512, 8, 4, 2)
    assert (c.matrix_lr, c.scalar_lr, c.tied_embed_lr, c.muon_momentum) == (0.04, 0.04, 0.05, 0.95)
    assert (c.train_batch_tokens, c.train_seq_len, c.warmdown_iters, c.logit_softcap) == (524288, 1024, 1200, 30.0)
    assert cfg.sources == {"plugins": "default"}


def test_precedence_default_recipe_env_set(registry, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('plugins = ["ema"]\n[core]\nnum_layers = 11\nmodel_dim = 256\nseed = 5\n[ema]\ndecay = 0.9\n')
    env = {"NUM_LAYERS": "7", "MODEL_DIM": "384", "EMA_DECAY": "0.8"}
    cfg = _resolve(registry, recipe=recipe, env=env, sets=["core.num_layers=5", "ema.decay=0.7"])
    assert cfg.core.num_layers == 5 and cfg.sources["core.num_layers"] == "--set"
    assert cfg.core.model_dim == 384 and cfg.sources["core.model_dim"] == "env:MODEL_DIM"
    assert cfg.core.seed == 5 and cfg.sources["core.seed"] == f"recipe:{recipe}"
    assert cfg.core.vocab_size == 1024 and "core.vocab_size" not in cfg.sources
    assert cfg.plugin_configs["ema"].decay == 0.7 and cfg.sources["ema.decay"] == "--set"
    assert cfg.plugins == ["ema"] and cfg.sources["plugins"] == f"recipe:{recipe}"


def test_plugin_list_precedence(registry, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('plugins = ["ema"]\n')
    assert _resolve(registry, recipe=recipe, env={"PGOLF_PLUGINS": "smeargate"}).plugins == ["smeargate"]
    assert _resolve(registry, recipe=recipe, plugins=["sliding_window"]).plugins == ["sliding_window"]


def test_coercion_of_env_strings(registry):
    cfg = _resolve(registry, env={"TIE_EMBEDDINGS": "0", "MAX_WALLCLOCK_SECONDS": "12", "ITERATIONS": "1_000"})
    assert cfg.core.tie_embeddings is False
    assert cfg.core.max_wallclock_seconds == 12.0 and isinstance(cfg.core.max_wallclock_seconds, float)
    assert cfg.core.iterations == 1000


def test_all_errors_reported_together(registry, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[core]\nnum_layer = 3\n[emma]\ndecay = 1\n")
    with pytest.raises(ConfigError) as info:
        _resolve(registry, recipe=recipe, env={"ITERATIONS": "many"}, sets=["core.model_dim=abc", "ema.decay=0.5"],
                 plugins=["emma", "smeargate"])
    errors = info.value.errors
    text = "\n".join(errors)
    assert len(errors) == 6, text
    assert "unknown setting core.num_layer (did you mean 'num_layers'?)" in text
    assert "unknown section 'emma'" in text and "did you mean 'ema'" in text
    assert "env ITERATIONS: expected an integer, got 'many'" in text
    assert "--set core.model_dim=abc: expected an integer" in text
    assert "plugin 'ema' is not enabled" in text
    assert "unknown plugin 'emma' (did you mean 'ema'?)" in text
    assert all("\n" not in e for e in errors)


def test_plugin_override_drops_recipe_tables_of_disabled_plugins(registry, tmp_path):
    """--plugins turning a recipe's plugin off ignores its table; the recipe's own list stays strict."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('plugins = ["ema", "smeargate"]\n[ema]\ndecay = 0.9\n')
    cfg = _resolve(registry, recipe=recipe, plugins=["smeargate"])
    assert cfg.plugins == ["smeargate"] and "ema" not in cfg.plugin_configs
    recipe.write_text('plugins = ["smeargate"]\n[ema]\ndecay = 0.9\n')
    with pytest.raises(ConfigError, match="ema.decay: plugin 'ema' is not enabled"):
        _resolve(registry, recipe=recipe)
    with pytest.raises(ConfigError, match="--set ema.decay=0.5: plugin 'ema' is not enabled"):
        _resolve(registry, recipe=recipe, plugins=["smeargate"], sets=["ema.decay=0.5"])


def test_cross_field_validation(registry):
    with pytest.raises(ConfigError, match="model_dim=500 must be divisible by core.num_heads=8"):
        _resolve(registry, sets=["core.model_dim=500"])


def test_bad_recipe_file(registry, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[core\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        _resolve(registry, recipe=bad)
    with pytest.raises(ConfigError, match="missing.toml: file not found"):
        _resolve(registry, recipe=tmp_path / "missing.toml")


def test_shipped_baseline_recipe_is_the_default(registry):
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "baseline.toml"
    a = _resolve(registry, recipe=recipe).to_dict()
    b = _resolve(registry).to_dict()
    assert a == b


def test_smeargate_gate_dtype_is_checked(registry):
    with pytest.raises(ConfigError, match="smeargate.gate_dtype: expected fp32 or body, got 'bf16'"):
        _resolve(registry, plugins=["smeargate"], sets=["smeargate.gate_dtype=bf16"])
