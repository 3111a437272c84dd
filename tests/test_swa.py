"""swa / tight_swa: the loaded weights are the mean of the checkpoints taken where lr_mul < threshold and
step % every == 0 (PR #180's rule), apply=false leaves the live weights, the EMA relation is checked at
configuration time."""

from __future__ import annotations

import pytest
import torch

from core.config import ConfigError, resolve
from core.hookspecs import hookimpl
from core.registry import Registry
from core.train import setup, train

REGISTRY = Registry()


class Capture:
    def __init__(self):
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.lr: dict[int, float] = {}

    @hookimpl(tryfirst=True)
    def pg_before_step(self, run, step, clock):
        self.lr[step] = clock.lr_mul

    @hookimpl
    def pg_after_step(self, run, step):
        self.after[step] = {k: v.double().clone() for k, v in run.model.state_dict().items()}

    @hookimpl(trylast=True)
    def pg_train_end(self, run, model):
        self.final = {k: v.double().clone() for k, v in model.state_dict().items()}


def configure(tiny_sets, plugins, *sets):
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=[*tiny_sets, *sets],
                   check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)


def run_with_capture(cfg):
    run = setup(cfg, REGISTRY, make_dir=False)
    cap = Capture()
    run.pm.register(cap, name="capture")
    train(run)
    return run, cap


@pytest.mark.parametrize("name", ["swa", "tight_swa"])
def test_swa_loads_the_mean_of_the_checkpoints_under_the_threshold(tiny_sets, name):
    # 12 iterations, warmdown over the last 4: lr_mul(s) = (12 - s)/4 for s >= 8 -> 1, .75, .5, .25 at s = 8..11.
    # Checkpoint after step n = s + 1 when lr_mul(s) < 0.8 and n % 2 == 0: n = 10 and 12.
    run, cap = run_with_capture(configure(tiny_sets, [name], f"{name}.every=2", f"{name}.threshold=0.8"))
    assert [cap.lr[s] for s in range(8, 12)] == [1.0, 0.75, 0.5, 0.25]
    for k, v in cap.final.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (cap.after[10][k] + cap.after[12][k]) / 2, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(cap.final[k], cap.after[12][k]) for k in cap.final)


def test_swa_apply_false_collects_but_keeps_the_live_weights(tiny_sets, tmp_path):
    cfg = configure(tiny_sets, ["tight_swa"], "tight_swa.every=2", "tight_swa.threshold=0.8", "tight_swa.apply=false")
    run = setup(cfg, REGISTRY)
    cap = Capture()
    run.pm.register(cap, name="capture")
    train(run)
    for k, v in cap.final.items():
        torch.testing.assert_close(v, cap.after[12][k])
    log = (run.run_dir / "train.log").read_text()
    assert "tight_swa:start step:10" in log and "tight_swa:collected 2 checkpoints, not applied" in log


def test_swa_relation_to_ema_and_bad_settings_are_configuration_errors(tiny_sets):
    configure(tiny_sets, ["ema", "tight_swa"], "tight_swa.apply=false")  # the PR #414-#1204 pairing
    with pytest.raises(ConfigError, match=r"plugins 'swa' and 'ema' both load averaged weights.*swa.apply=false"):
        configure(tiny_sets, ["ema", "swa"])
    with pytest.raises(ConfigError, match="conflict"):
        configure(tiny_sets, ["swa", "tight_swa"])
    with pytest.raises(ConfigError, match=r"swa.every: expected an integer >= 1, got 0"):
        configure(tiny_sets, ["swa"], "swa.every=0")
    with pytest.raises(ConfigError, match=r"tight_swa.threshold: expected a positive"):
        configure(tiny_sets, ["tight_swa"], "tight_swa.threshold=0")
