"""Plugin discovery, metadata, conflicts, file and entry-point plugins, the per-run manager, scaffolding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, resolve
from core.registry import Plugin, PluginError, Registry, make_manager
from pgolf.cli import main
from plugins.lib import loading
from plugins.lib.loading import load_registry

ROOT = Path(__file__).resolve().parent.parent

EXTRA = '''
from dataclasses import dataclass
from core.registry import Plugin

@dataclass
class Cfg:
    k: int = 3

class A(Plugin):
    name = "alpha_x"
    summary = "test plugin a"
    sources = ("test",)
    config = Cfg
    conflicts = ("beta_x",)
    test_settings = {}

class B(Plugin):
    name = "beta_x"
    summary = "test plugin b"
    sources = ("test",)
    requires = ("ema",)
    test_settings = {}
'''


def test_builtin_plugins_are_discovered():
    names = Registry().names()
    assert {"smeargate", "ema", "sliding_window"} <= set(names)


def test_file_plugins_conflicts_and_requirements(tmp_path):
    f = tmp_path / "extra.py"
    f.write_text(EXTRA)
    r = load_registry([f])
    errors = r.check(["alpha_x", "beta_x"])
    assert "plugins 'alpha_x' and 'beta_x' conflict: enable only one of them" in errors
    assert "plugin 'beta_x' requires plugin 'ema': add it to plugins" in errors
    assert r.check(["alpha_x"]) == []
    assert r.check(["beta_x", "ema"]) == []
    with pytest.raises(ConfigError, match="conflict"):
        resolve(plugin_config_classes=r.config_classes(), plugins=["beta_x", "alpha_x", "ema"],
                check_plugins=r.check)
    cfg = resolve(plugin_config_classes=r.config_classes(), plugins=["alpha_x"], check_plugins=r.check,
                  env={"ALPHA_X_K": "9"})
    assert cfg.plugin_configs["alpha_x"].k == 9


def test_unknown_plugin_did_you_mean():
    errors = Registry().check(["smeargat"])
    assert errors == ["unknown plugin 'smeargat' (did you mean 'smeargate'?); see 'pgolf plugins list'"]


def test_bad_metadata_is_rejected(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("from core.registry import Plugin\nclass X(Plugin):\n    name = 'x'\n")
    with pytest.raises(PluginError, match="summary is empty or not text; sources is empty"):
        load_registry([f])
    with pytest.raises(PluginError, match="not found"):
        load_registry([tmp_path / "nope.py"])


def test_entry_point_plugins(monkeypatch, tmp_path):
    f = tmp_path / "ep_mod.py"
    f.write_text(EXTRA)
    monkeypatch.syspath_prepend(str(tmp_path))

    class EP:
        name, value = "ep", "ep_mod"

        def load(self):
            import ep_mod

            return ep_mod

    fake = lambda group: [EP()] if group == loading.ENTRY_POINT_GROUP else []  # noqa: E731
    monkeypatch.setattr(loading.importlib.metadata, "entry_points", fake)
    r = load_registry()
    assert "alpha_x" in r.names() and r.origins["alpha_x"].startswith("entry point ep")


def test_one_manager_per_run_no_shared_state():
    r = Registry()
    cfg1 = resolve(plugin_config_classes=r.config_classes(), plugins=["ema"], check_plugins=r.check)
    cfg2 = resolve(plugin_config_classes=r.config_classes(), plugins=[], check_plugins=r.check)
    pm1, pm2 = make_manager(r, cfg1), make_manager(r, cfg2)
    assert pm1.get_plugin("ema") is not None and pm2.get_plugin("ema") is None
    assert pm1 is not pm2


def test_plugin_base_class_is_not_registered():
    assert all(cls is not Plugin for cls in Registry().plugins.values())


def test_cli_plugins_list_and_show(capsys):
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "smeargate" in out and "openai/parameter-golf#315" in out
    assert main(["plugins", "show", "ema"]) == 0
    assert '"decay"' in capsys.readouterr().out
    assert main(["plugins", "show", "quant_int8"]) == 0
    assert '"default": true' in capsys.readouterr().out
    assert main(["plugins", "show", "emaa"]) == 2
    assert "unknown plugin 'emaa' (did you mean 'ema'?)" in capsys.readouterr().err


def test_plugins_new_writes_a_working_skeleton(tmp_path, capsys):
    assert main(["plugins", "new", "my_gain", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "my_gain.py").is_file() and (tmp_path / "test_my_gain.py").is_file()
    assert main(["plugins", "new", "my_gain", "--dir", str(tmp_path)]) == 2  # no overwrite without --force
    r = load_registry([tmp_path / "my_gain.py"])
    assert "my_gain" in r.names()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_every_builtin_plugin_has_a_family_and_the_list_groups_them_with_their_recipes(capsys):
    from core.registry import FAMILIES
    from pgolf.cli import main

    reg = Registry()
    assert all(reg.plugins[n].family in FAMILIES for n in reg.names()), [
        n for n in reg.names() if reg.plugins[n].family not in FAMILIES]
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    headers = [line[:-1] for line in out.splitlines() if not line.startswith(" ")]
    assert headers[:-1] == [f for f in FAMILIES if any(reg.plugins[n].family == f for n in reg.names())]
    assert headers[-1] == "no plugin (plugins/techniques.toml)"
    row = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    import tomllib

    using = sorted(r.stem for r in (ROOT / "recipes").glob("*.toml")
                   if "depth_recurrence" in tomllib.loads(r.read_text())["plugins"])
    assert "pr1493" in using and row["depth_recurrence"].endswith("recipes: " + ", ".join(using))
    assert "pr315" in row["xsa"] and "pr1493" in row["xsa"]
    assert "recipes:" not in row["value_residual"]  # in no recipe
    with pytest.raises(PluginError, match="family 'modle' is not one of"):
        reg.add(type("Typo", (Plugin,), {"name": "typo", "family": "modle", "summary": "s", "sources": ("x",)}), "t")


def test_every_declared_relation_names_an_existing_plugin_or_role():
    """requires/conflicts/after/before of every built-in plugin name a plugin that exists (or a role some
    plugin provides): a typo or a plugin that was never written would make the declaration a silent no-op."""
    reg = Registry()
    roles = {r for cls in reg.plugins.values() for r in cls.provides}
    dangling = [f"{name}.{attr} -> {other!r}" for name, cls in reg.plugins.items()
                for attr in ("requires", "conflicts", "after", "before") for other in getattr(cls, attr)
                if other not in reg.plugins and other not in roles]
    assert dangling == []
    assert not roles & set(reg.plugins), "a role named like a plugin is ambiguous"


def test_default_plugins_fill_the_roles_no_enabled_plugin_provides():
    """`default = True` (plugins.quant_int8 for "quantizer", plugins.codec_zlib for "codec") is registered only
    while no enabled plugin provides its role; a default without a role, or a second default of one role, is
    refused when added."""
    r = Registry()
    auto = "attention_auto"  # the default provider of "attention_backend", in every run below
    assert r.run_plugins([]) == [auto, "quant_int8", "zlib"]
    assert r.run_plugins(["ema"]) == [auto, "quant_int8", "zlib", "ema"]
    assert r.run_plugins(["quant_mixed"]) == [auto, "zlib", "quant_mixed"]
    assert r.run_plugins(["zlib"]) == [auto, "quant_int8", "zlib"]
    assert r.run_plugins(["brotli"]) == [auto, "quant_int8", "brotli"]
    plain = resolve(plugin_config_classes=r.config_classes(), plugins=[], check_plugins=r.check)
    mixed = resolve(plugin_config_classes=r.config_classes(), plugins=["quant_mixed"], check_plugins=r.check)
    assert plain.plugins == [] and make_manager(r, plain).get_plugin("quant_int8") is not None
    assert make_manager(r, mixed).get_plugin("quant_int8") is None
    assert r.check(["quant_int8", "quant_mixed"]) == [
        "plugins 'quant_int8' and 'quant_mixed' all provide 'quantizer': enable only one of them"]
    meta = {"summary": "s", "sources": ("x",), "test_settings": {}}
    with pytest.raises(PluginError, match="plugin D from t: default is set but it provides no role"):
        r.add(type("D", (Plugin,), {"name": "d", "default": True, **meta}), "t")
    with pytest.raises(PluginError, match="'quant_int8' is already the default provider of quantizer"):
        r.add(type("E", (Plugin,), {"name": "e", "default": True, "provides": ("quantizer",), **meta}), "t")
