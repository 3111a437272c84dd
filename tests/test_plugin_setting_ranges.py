"""Plugin settings are range-checked when the configuration is resolved (issue #11: never at build time or after
training): each bad value below used to be accepted and failed only at the final evaluation, at export, or never
(a silently odd run). `plugins.lib.settings.range_errors` is the one helper; a NaN or infinity stays the
resolver's own "expected a finite number" error, which names the environment variable."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from core.config import ConfigError, resolve
from core.registry import Registry
from plugins.lib.settings import range_errors
from tests.conftest import TINY_CORE

REGISTRY = Registry()
BAD = ["ema.decay=5", "sliding_window.batch_seqs=0", "sliding_window.stride=0", "score_first_ttt.chunk_tokens=0",
       "score_first_ttt.batch_seqs=0", "score_first_ttt.epochs=-1", "phased_ttt.num_phases=0",
       "phased_ttt.global_batch_seqs=0", "lora_ttt.beta1=1e9", "lora_ttt.rank=0", "bigram_hash.buckets=0",
       "lqer.factor_bits=1", "partial_rope.dims=0", "prune_to_fit.target_bytes=0", "xsa.last_n=-1",
       "brotli.quality=12", "lzma.preset=10", "zstd.level=0", "smeargate.gate_window=-1", "gptq.calib_batches=0",
       "gptq.matrix_clip_sigmas=-1", "sdclip.embed_clip_sigmas=-1", "quant_mixed.keep_float_max_numel=-1",
       "gptq_lite.keep_float_max_numel=-1", "orthoinit.min_dim=0", "late_qat.threshold=-1",
       "soft_round_qat.threshold=-1"]


def configure(setting: str):
    plugin = setting.split(".")[0]
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[plugin], env={}, sets=[setting],
                   check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)


@pytest.mark.parametrize("setting", BAD)
def test_a_setting_out_of_range_is_a_configuration_error_naming_it(setting):
    name = setting.split("=")[0]
    with pytest.raises(ConfigError) as err:
        configure(setting)
    assert any(line.startswith(f"{name}: expected a number") for line in err.value.errors), err.value.errors


@pytest.mark.parametrize("setting", ["late_qat.threshold=2.0", "partial_rope.ntk_train_seq_len=0", "ema.decay=1",
                                     "score_first_ttt.epochs=0", "sliding_window.bos_id=-1", "zstd.level=22"])
def test_the_edges_that_mean_something_stay_valid(setting):
    """`threshold > 1` is "always on", ntk 0 "no NTK scaling", epochs 0 "score only", bos_id -1 "no BOS"."""
    configure(setting)


def test_range_errors_reads_the_bounds_inclusively_and_leaves_non_finite_values_to_the_resolver():
    cfg = SimpleNamespace(a=0, b=1.5, c=math.nan, d=-2)
    assert range_errors("p", cfg, a=(0, 1), b=(0.0, 1.5), c=(0.0, 1.0)) == []
    assert range_errors("p", cfg, a=(1, None), b=(None, 1.0), d=(0, 9)) == [
        "p.a: expected a number >= 1, got 0", "p.b: expected a number <= 1.0, got 1.5",
        "p.d: expected a number >= 0 and <= 9, got -2"]


# Settings where a huge value means "off" (a gradient-norm clip past any norm never clips, as core.grad_clip_norm).
UNBOUNDED = {"score_first_ttt.grad_clip", "phased_ttt.global_grad_clip"}


def numeric_settings() -> list[str]:
    import dataclasses
    import typing

    out = []
    for name, cls in sorted(REGISTRY.config_classes().items()):
        hints = typing.get_type_hints(cls) if cls is not None else {}
        out += [f"{name}.{f.name}={10**12 if hints[f.name] is int else 1e30}" for f in
                (dataclasses.fields(cls) if cls is not None else ()) if hints[f.name] in (int, float)
                and f"{name}.{f.name}" not in UNBOUNDED]
    return out


@pytest.mark.parametrize("setting", numeric_settings())
def test_every_numeric_plugin_setting_has_an_upper_bound(setting):
    """Session 28 (seventh red team): a size, count or loop without an upper bound allocated past any memory or
    ran for ever after training (bigram_hash.dim, gptq.calib_batches, phased_ttt.num_phases = 1e12), and a scale
    without one trained to nonsense (value_residual.init = 1e30). A new plugin's int or float setting gets a bound
    in its `check_config` (`range_errors`), or a line in UNBOUNDED saying why a huge value is harmless."""
    name = setting.split("=")[0]
    plugin = REGISTRY.plugins[name.split(".")[0]]
    tests = [f"{section}.{key}={value}" for section, table in plugin.test_settings.items()
             for key, value in table.items()]  # valid with the tiny core: only `setting` is not
    with pytest.raises(ConfigError) as err:
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[plugin.name, *plugin.requires], env={},
                sets=[*TINY_CORE, *tests, setting], check_plugins=REGISTRY.check,
                check_settings=REGISTRY.check_settings)
    assert any(line.startswith((name, f"[{name.split('.')[0]}]")) for line in err.value.errors), err.value.errors


def test_a_huge_integer_is_a_range_error_not_an_overflow():
    cfg = SimpleNamespace(a=10**400)
    assert range_errors("p", cfg, a=(0, 9)) == [
        "p.a: expected a number >= 0 and <= 9, got 100000000000000000...0000000000000000000"]
