"""The test matrix every plugin joins (like Composer's algorithm settings): each plugin supplies tiny
settings in `Plugin.test_settings`; these generic tests run over all of them."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import pytest
import torch

from core import export as ex
from core.config import resolve
from core.registry import Registry
from core.train import setup, train
from plugins.lib import codecs
from plugins.quant_int8 import int8_quantize

REGISTRY = Registry()
NAMES = REGISTRY.names()


def settings_of(name: str) -> list[str]:
    ts = REGISTRY.plugins[name].test_settings or {}
    return [f"{section}.{k}={v}" for section, kv in ts.items() for k, v in kv.items()]


def companions(name: str) -> list[str]:
    """Plugins the matrix enables with `name`: what it requires, then its `test_with` (e.g. a gate for the gate
    quantizer)."""
    plugin = REGISTRY.plugins[name]
    return list(dict.fromkeys([*plugin.requires, *getattr(plugin, "test_with", ())]))


def with_companions(name: str) -> list[str]:
    return [*companions(name), name]


def companion_settings(name: str) -> list[str]:
    return [s for c in companions(name) for s in settings_of(c)]


def tiny_config(tiny_sets, plugins, extra=()):
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins,
                   sets=[*tiny_sets, *extra], check_plugins=REGISTRY.check)


@pytest.mark.parametrize("name", NAMES)
def test_plugin_has_metadata_and_test_settings(name):
    cls = REGISTRY.plugins[name]
    assert cls.test_settings is not None, f"plugin {name} supplies no test_settings: add them"
    assert cls.summary and cls.sources
    module = __import__(cls.__module__, fromlist=["_"])
    assert module.__doc__ and "PR" in module.__doc__, f"{cls.__module__} needs a docstring naming its source PR"


@pytest.mark.parametrize("name", NAMES)
def test_plugin_config_round_trips(name, tmp_path):
    cls = REGISTRY.plugins[name]
    if cls.config is None:
        pytest.skip("plugin has no settings")
    defaults = cls.config()
    for f in dataclasses.fields(cls.config):
        value = getattr(defaults, f.name)
        toml_value = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) \
            else repr(value)
        recipe = tmp_path / "r.toml"
        env_key = f"{name}_{f.name}".upper()
        text = str(int(value)) if isinstance(value, bool) else str(value)
        enabled = with_companions(name)
        recipe.write_text(f'plugins = {json.dumps(enabled)}\n[{name}]\n{f.name} = {toml_value}\n')
        for kw in ({"recipe": recipe}, {"env": {env_key: text}, "plugins": enabled},
                   {"sets": [f"{name}.{f.name}={text}"], "plugins": enabled}):
            cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), check_plugins=REGISTRY.check, **kw)
            assert getattr(cfg.plugin_configs[name], f.name) == value


def data_for(request, tiny_sets, plugins):
    """`tiny_sets`, on the CaseOps dataset when a plugin needs it (`test_data = "caseops"`)."""
    if any(getattr(REGISTRY.plugins[n], "test_data", None) == "caseops" for n in plugins):
        data, _ = request.getfixturevalue("tiny_caseops_data")
        return [*(s for s in tiny_sets if not s.startswith("core.data_path=")), f"core.data_path={data}"]
    return tiny_sets


_BASE: dict = {}


def _tiny_run(tiny_sets, plugins, extra=()):
    run = setup(tiny_config(tiny_sets, plugins, extra), REGISTRY)
    return run, train(run)


@pytest.mark.parametrize("name", NAMES)
def test_plugin_changes_the_computation(name, tiny_sets, request):
    tiny_sets = data_for(request, tiny_sets, [name])
    key = (*companion_settings(name), *settings_of(name))
    core_extra = [s for s in key if s.startswith("core.")]
    base_extra = [*core_extra, *companion_settings(name)]
    base_key = (*companions(name), *base_extra, *(s for s in tiny_sets if s.startswith("core.data_path=")))
    if base_key not in _BASE:
        _BASE[base_key] = _tiny_run(tiny_sets, companions(name), base_extra)[1]
    base = _BASE[base_key]
    run, with_plugin = _tiny_run(tiny_sets, with_companions(name), key)
    assert math.isfinite(with_plugin["val_loss"])
    cls = REGISTRY.plugins[name]
    if cls.default:  # the run's own provider of its roles when no plugin is enabled: enabling it changes nothing
        assert all(with_plugin[k] == base[k] for k in ("val_loss", "val_bpb", "model_bytes")), name
        return
    if getattr(cls, "cuda_only", False):  # a choice made on CUDA only (auto_micro_batch): off it, the core's run
        assert all(with_plugin[k] == base[k] for k in ("val_loss", "val_bpb", "model_bytes")), name
        return
    if getattr(cls, "same_function", False):  # a kernel: the core's numbers, from its own installed module
        assert any(type(m).__module__ == cls.__module__ for m in run.model.modules()), f"{name} installed nothing"
        assert with_plugin["val_loss"] == pytest.approx(base["val_loss"], abs=1e-4)
        return
    # A codec plugin leaves the weights alone: it must change the artifact bytes instead; a byte-accounting
    # plugin changes val_bpb only; a code wrapper changes the bundled script.
    changed = any(with_plugin[k] != base[k] for k in ("val_loss", "val_bpb", "model_bytes"))
    if not changed and hasattr(REGISTRY.plugins[name], "pg_wrap_code"):
        from submissions.bundle import bundle

        cfg = tiny_config(tiny_sets, with_companions(name), key)
        changed = bundle(cfg, REGISTRY) != bundle(cfg, REGISTRY, wrap=False)
    assert changed, f"{name} left the result, the artifact and the script unchanged (a silent no-op?)"


@pytest.mark.parametrize("name", NAMES)
def test_plugin_compiles_with_zero_graph_breaks_and_exports(name, tiny_sets, request):
    tiny_sets = data_for(request, tiny_sets, with_companions(name))
    torch._dynamo.reset()
    run = setup(tiny_config(tiny_sets, with_companions(name), [*companion_settings(name), *settings_of(name)]),
                REGISTRY, make_dir=False)
    ids = run.val_tokens[:129].long()
    x, y = ids[:-1].view(2, 64), ids[1:].view(2, 64)
    for args in ((x, y), (x,)):
        exp = torch._dynamo.explain(run.model)(*args)
        assert exp.graph_break_count == 0, exp.break_reasons
    result = ex.export_state_dict(run.model.state_dict(), [int8_quantize], codecs.ZlibCodec())
    restored = ex.verify_round_trip(result, {"zlib": codecs.ZlibCodec()})
    run.model.load_state_dict(restored, strict=True)


def test_all_plugins_together_compile_with_zero_graph_breaks(tiny_sets, tiny_core, request):
    """Every plugin traces with zero graph breaks together with the others it can be enabled with: one trace per
    compatible set (`compatible_sets`: a handful cover all plugins, so no plugin drops out for a conflict)."""
    for plugins, settings in compatible_sets(tuple(tiny_core)):
        torch._dynamo.reset()
        run = setup(tiny_config(data_for(request, tiny_sets, plugins), plugins, settings), REGISTRY, make_dir=False)
        ids = run.val_tokens[:129].long()
        exp = torch._dynamo.explain(run.model)(ids[:-1].view(2, 64), ids[1:].view(2, 64))
        assert exp.graph_break_count == 0, (plugins, exp.break_reasons)


@functools.cache
def compatible_sets(core_sets: tuple[str, ...]) -> list[tuple[list[str], list[str]]]:
    """Every plugin (with its companions) placed greedily into the first set it is compatible with: no conflict,
    no second provider of a role, no test setting given two values, and the merged configuration resolves.
    Returns (plugins, settings) per set; a handful of sets for all plugins."""
    sets: list[tuple[list[str], dict[str, str]]] = []
    for name in NAMES:
        mine = dict(s.split("=", 1) for s in [*companion_settings(name), *settings_of(name)])
        for plugins, settings in sets:
            merged = list(dict.fromkeys([*plugins, *with_companions(name)]))
            if any(settings.get(k, v) != v for k, v in mine.items()) or REGISTRY.check(merged):
                continue
            try:
                tiny_config(list(core_sets), merged, [f"{k}={v}" for k, v in {**settings, **mine}.items()])
            except Exception:  # a setting-dependent conflict (check_peers / check_config)
                continue
            plugins[:] = merged
            settings.update(mine)
            break
        else:
            sets.append((with_companions(name), mine))
    return [(plugins, [f"{k}={v}" for k, v in settings.items()]) for plugins, settings in sets]


_BUNDLES: dict[tuple[str, ...], str] = {}


def bundle_with(name: str, core_sets: list[str]) -> str:
    """The plain bundled script of the first compatible set holding `name` (each set bundled once a session)."""
    from submissions.bundle import bundle

    plugins, settings = next(s for s in compatible_sets(tuple(core_sets)) if name in s[0])
    if tuple(plugins) not in _BUNDLES:
        _BUNDLES[tuple(plugins)] = bundle(tiny_config(core_sets, plugins, settings), REGISTRY, wrap=False)
    return _BUNDLES[tuple(plugins)]


def test_compatible_sets_cover_every_plugin_in_few_bundles(tiny_core):
    sets = compatible_sets(tuple(tiny_core))
    assert {n for plugins, _ in sets for n in plugins} == set(NAMES)
    assert all(not REGISTRY.check(plugins) for plugins, _ in sets)
    assert len(sets) <= 6, [plugins for plugins, _ in sets]  # one bundle per plugin would be ~50 (2-4 s each)


@pytest.mark.parametrize("name", NAMES)
def test_bundler_includes_the_plugin(name, tiny_core):
    """`pgolf bundle` embeds the plugin's module (its imports too) and registers it by name: checked in the bundle
    of a compatible set of plugins holding it (`compatible_sets`), the plain script whatever pg_wrap_code would
    make of it."""
    import ast
    import re

    text = bundle_with(name, tiny_core)
    module = REGISTRY.plugins[name].__module__
    assert "def run_training(" in text  # core.train (a minified script's modules share one namespace)
    bundled = re.search(r"BUNDLED ?= ?(\([^)]*\)|(?:'\w+',?)+)", text)  # in parentheses or not (compact printing)
    assert bundled and module.split(".", 1)[1] in ast.literal_eval(bundled.group(1))
    ast.parse(text)
