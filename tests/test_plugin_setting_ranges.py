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
