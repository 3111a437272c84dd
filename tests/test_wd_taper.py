"""wd_taper: the Muon WD each step is the start value times the record's wd_mul(frac) (PR #1729)."""

from __future__ import annotations

import pytest

from core.config import ConfigError, resolve
from core.hookspecs import hookimpl
from core.optim import Muon
from core.registry import Registry
from core.train import setup, train
from plugins.wd_taper import wd_multiplier

REGISTRY = Registry()


def test_multiplier_is_flat_then_linear_to_the_final_value():
    assert [wd_multiplier(f, 0.7, 0.5) for f in (0.0, 0.7, 0.85, 1.0)] == pytest.approx([1.0, 1.0, 0.75, 0.5])
    assert wd_multiplier(0.5, 0.0, 0.0) == pytest.approx(0.5)


class Capture:
    def __init__(self):
        self.wd: dict[int, list[float]] = {}

    @hookimpl(trylast=True)
    def pg_before_step(self, run, step, clock):
        self.wd[step] = [g["weight_decay"] for o in run.optimizers if isinstance(o, Muon) for g in o.param_groups]
        self.adam = [g["weight_decay"] for o in run.optimizers if not isinstance(o, Muon) for g in o.param_groups]


def configure(tiny_sets, plugins, *sets):
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=[*tiny_sets, *sets],
                   check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)


def test_muon_groups_get_the_tapered_decay_each_step(tiny_sets):
    cfg = configure(tiny_sets, ["weight_decay", "wd_taper"], "weight_decay.muon=0.1", "weight_decay.adam=0.03",
                    "weight_decay.embed=0.03", "wd_taper.start_frac=0.5", "wd_taper.final_mult=0.0")
    run = setup(cfg, REGISTRY, make_dir=False)
    cap = Capture()
    run.pm.register(cap, name="capture")
    train(run)
    for s in range(12):  # uncapped: frac = step / 12
        f = s / 12
        expected = 0.1 if f <= 0.5 else 0.1 * (1 - (f - 0.5) / 0.5)
        assert cap.wd[s] == pytest.approx([expected]), s
    assert set(cap.adam) == {0.03}  # the Adam groups keep their decay


def test_nothing_to_taper_is_a_configuration_error(tiny_sets):
    with pytest.raises(ConfigError, match=r"wd_taper: no Muon weight decay to taper \(weight_decay.muon is 0.0\)"):
        configure(tiny_sets, ["weight_decay", "wd_taper"], "weight_decay.muon=0")
    with pytest.raises(ConfigError, match="plugin 'wd_taper' requires plugin 'weight_decay'"):
        configure(tiny_sets, ["wd_taper"])
    with pytest.raises(ConfigError, match=r"wd_taper.start_frac: expected a fraction in \[0, 1\), got 1.0"):
        configure(tiny_sets, ["weight_decay", "wd_taper"], "wd_taper.start_frac=1.0")
    configure(tiny_sets, ["muon_eq_r", "weight_decay", "wd_taper"], "weight_decay.muon=0")  # muon_eq_r owns it
