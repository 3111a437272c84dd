"""`pgolf bundle`: one self-contained train_gpt.py that trains exactly like `pgolf train`, with pgolf blocked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from core.config import resolve
from core.registry import Plugin, Registry
from core.train import code_bytes, run_training, setup
from pgolf.cli import main as cli_main
from submissions.bundle import BundleError, bundle, bundle_size, imports_of, module_closure, strip_source
from submissions.package import build_files
from validator.sandbox import run_sandboxed

PLUGINS = ["smeargate", "bigram_hash", "ema", "zstd", "sliding_window"]
EXACT = re.compile(r"final_\w+_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)")


def _tokenizer(data: Path) -> Path:
    return next(data.glob("tokenizer/*.model"))


def _probe(script: Path, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python after loading `script` (not as __main__) and installing its import hook."""
    prelude = "import runpy, sys; g = runpy.run_path(sys.argv[1]); sys.meta_path.insert(0, g['_BundledModules']()); "
    return subprocess.run([sys.executable, "-c", prelude + code, str(script)], capture_output=True, text=True,
                          timeout=120)


def test_bundled_script_runs_without_pgolf_and_trains_like_pgolf_train(tiny_sets, tiny_data, tmp_path):
    reg = Registry()
    sets = [*tiny_sets, "core.iterations=4", "sliding_window.stride=32", "bigram_hash.buckets=64"]
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=PLUGINS, sets=sets, check_plugins=reg.check)
    run = setup(cfg, reg, code_size=bundle_size)
    expected_code = code_bytes(run)
    summary = run_training(cfg, reg, code_size=bundle_size)
    log = (run.run_dir / "train.log").read_text()

    folder = tmp_path / "records_folder"
    folder.mkdir()
    assert cli_main(["bundle", str(run.run_dir), "-o", str(folder / "train_gpt.py")]) == 0
    script = folder / "train_gpt.py"
    assert script.stat().st_size == expected_code == summary["code_bytes"]  # the logged code size is the bundle's
    env = {"DATA_PATH": str(tiny_data), "TOKENIZER_PATH": str(_tokenizer(tiny_data)), "PGOLF_DEVICE": "cpu",
           "PGOLF_COMPILE": "false", "RUN_ID": "bundled", "OMP_NUM_THREADS": "2"}
    res = run_sandboxed([sys.executable, "train_gpt.py"], folder, timeout=240, env=env, block_pgolf=True)
    assert res.returncode == 0, res.stderr[-3000:]
    bundled_log = (folder / "runs" / "bundled" / "train.log").read_text()
    assert EXACT.search(bundled_log).groups() == EXACT.search(log).groups()  # same numbers, bit for bit
    assert f"Code size: {script.stat().st_size} bytes" in bundled_log
    assert "plugins:" + ",".join(PLUGINS) in bundled_log
    # the workflow's last step: a record from the bundled script's own run ships that very script
    files = build_files([folder / "runs" / "bundled"], reg, name="2026-11-23_X", author="A", github_id="a",
                        track="non-record")
    assert files["train_gpt.py"] == script.read_text()


def test_the_same_script_without_the_sandbox_still_uses_its_embedded_modules(tiny_sets, tmp_path):
    """Even with pgolf importable, the script's modules are its own and a module it lacks is a clear error."""
    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["ema"], sets=tiny_sets,
                  check_plugins=reg.check)
    script = tmp_path / "train_gpt.py"
    script.write_text(bundle(cfg, reg))
    res = _probe(script, "import core.model, plugins; print(core.model.__file__, plugins.BUNDLED); import plugins.xsa")
    assert str(tmp_path / "core" / "model.py") in res.stdout and "('ema',)" in res.stdout
    assert "plugins.xsa is not bundled in this train_gpt.py" in res.stderr


def test_bundle_holds_only_the_enabled_plugins_and_the_modules_they_reach(tiny_sets):
    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["lora_ttt"], sets=tiny_sets,
                  check_plugins=reg.check)
    text = bundle(cfg, reg)
    embedded = set(re.findall(r"^_MODULES\['([^']+)'\]", text, re.M))
    assert {"plugins.lora_ttt", "plugins.lib.ttt", "core.train", "core.model"} <= embedded
    assert not embedded & {"plugins.ema", "plugins.sliding_window", "pgolf.cli", "dataprep.build", "dataprep.corpus"}
    assert "/home/" not in text and str(tiny_sets[-1]) not in text  # no local paths in the recipe
    assert "'data_path': './data/datasets/fineweb10B_sp320'" in text


def test_module_closure_follows_function_level_imports():
    src = "def f():\n    from plugins.lib.ttt import cosine_lr\n    import plugins.ema\n"
    assert imports_of(src) == {"plugins.lib.ttt", "plugins.ema"}
    closure = module_closure({"x": src})
    assert {"plugins.lib.ttt", "plugins.ema", "core.scoring", "core", "plugins"} <= set(closure)


def test_strip_source_drops_docstrings_comments_annotations_and_help_but_keeps_code():
    src = ('"""Module doc."""\n# comment\nfrom dataclasses import dataclass, field\n\n\n'
           'def f(x: "Annot", *a: "Annot", k: "Annot" = 1, **kw: "Annot") -> "Annot":\n'
           '    """Doc."""\n    return x + 1  # inline\n\n\n'
           '@dataclass\nclass A:\n    """Only a doc."""\n    n: int = field(default=2, metadata={"help": "zzz"})\n'
           '    e: str = field(default="v", metadata={"env": "ENV_NAME"})\n')
    out = strip_source(src)
    for gone in ("doc", "comment", "inline", "Annot", "zzz"):
        assert gone not in out, gone
    assert "ENV_NAME" in out and "n: int" in out  # other metadata and class annotations stay
    mod = types.ModuleType("pgolf_test_stripped")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    try:
        exec(out, mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    assert mod.f(2) == 3 and mod.A().n == 2 and mod.A().e == "v"


def test_bundle_refuses_a_plugin_whose_code_is_not_a_bundlable_file(tiny_sets):
    class FromEntryPoint(Plugin):
        name = "from_entry_point"
        summary = "a plugin installed by another package"
        sources = ("test",)

    reg = Registry()
    reg.add(FromEntryPoint, "entry point from_entry_point = other_pkg.mod:FromEntryPoint")
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["from_entry_point"], sets=tiny_sets,
                  check_plugins=reg.check)
    with pytest.raises(BundleError, match="from_entry_point.*only built-in plugins and plugin files"):
        bundle(cfg, reg)


def test_cli_bundle_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "train_gpt.py"
    out.write_text("mine")
    assert cli_main(["bundle", "--plugins", "ema", "-o", str(out)]) == 2
    assert out.read_text() == "mine" and "pass --force" in capsys.readouterr().err
    assert cli_main(["bundle", "--plugins", "ema", "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith('"""') and "RECIPE = " in out.read_text()
    bad = tmp_path / "not_a_run"
    bad.mkdir()
    assert cli_main(["bundle", str(bad), "-o", str(tmp_path / "x.py")]) == 2
    assert "expected a pgolf run directory" in capsys.readouterr().err


def test_plugin_file_is_bundled_and_registered(tmp_path, tiny_sets):
    src = tmp_path / "my_trick.py"
    src.write_text(
        '"""A user plugin."""\nfrom dataclasses import dataclass\nfrom core.registry import Plugin\n\n\n'
        "@dataclass\nclass Cfg:\n    k: int = 3\n\n\nclass MyTrick(Plugin):\n    name = 'my_trick'\n"
        "    summary = 'test'\n    sources = ('test',)\n    config = Cfg\n")
    reg = Registry(extra_files=[src])
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=["my_trick"], sets=tiny_sets,
                  check_plugins=reg.check)
    script = tmp_path / "train_gpt.py"
    script.write_text(bundle(cfg, reg))
    res = _probe(script, "from core.registry import Registry; print(sorted(Registry(entry_points=False).plugins))")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().replace("'", '"')) == ["my_trick"]


def test_reindent_keeps_the_syntax_tree_and_refuses_multiline_strings():
    from submissions.bundle import reindent

    src = "def f(x):\n    if x:\n        return 1\n    return 2\n"
    assert reindent(src) == "def f(x):\n if x:\n  return 1\n return 2\n"
    tricky = 'def f():\n    return """a\n        b"""\n'
    assert reindent(tricky) == tricky  # re-indenting would change the string: left alone


def _wrapper_config(tiny_sets, plugins, sets=()):
    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=plugins, sets=[*tiny_sets, *sets],
                  check_plugins=reg.check)
    return cfg, reg


def test_code_wrapper_plugin_wraps_the_bundle_and_counts_the_wrapped_bytes(tiny_sets):
    from plugins.code_wrapper import unwrap_lzma_b85

    cfg, reg = _wrapper_config(tiny_sets, ["ema", "code_wrapper"])
    plain, wrapped = bundle(cfg, reg, wrap=False), bundle(cfg, reg)
    assert wrapped.startswith("import lzma as L,base64 as B\nexec(") and wrapped.count("\n") == 2
    assert unwrap_lzma_b85(wrapped) == plain
    from validator.rules.base import unwrap_source

    assert unwrap_source(wrapped) == (plain, True)  # the validator's static rules read the same source
    assert len(wrapped.encode()) < len(plain.encode()) // 2
    assert bundle_size(cfg, reg) == len(wrapped.encode())  # the code size `pgolf train` logs
    run = setup(cfg, reg, code_size=bundle_size, make_dir=False)
    assert code_bytes(run) == len(wrapped.encode())
    cfg_bad, reg = _wrapper_config(tiny_sets, ["code_wrapper"], ["code_wrapper.preset=12"])
    with pytest.raises(ValueError, match="code_wrapper.preset: expected 0..9, got 12"):
        bundle(cfg_bad, reg)


@pytest.mark.slow
def test_wrapped_bundle_runs_without_pgolf_and_trains_like_the_plain_one(tiny_sets, tiny_data, tmp_path):
    cfg, reg = _wrapper_config(tiny_sets, ["ema", "code_wrapper"],
                               ["core.iterations=3", "core.val_max_tokens=1024"])
    logs, sizes = {}, {}
    for kind, text in (("plain", bundle(cfg, reg, wrap=False)), ("wrapped", bundle(cfg, reg))):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "train_gpt.py").write_text(text)
        sizes[kind] = (folder / "train_gpt.py").stat().st_size
        env = {"DATA_PATH": str(tiny_data), "TOKENIZER_PATH": str(_tokenizer(tiny_data)), "PGOLF_DEVICE": "cpu",
               "PGOLF_COMPILE": "false", "RUN_ID": kind, "OMP_NUM_THREADS": "2"}
        res = run_sandboxed([sys.executable, "train_gpt.py"], folder, timeout=240, env=env, block_pgolf=True)
        assert res.returncode == 0, res.stderr[-3000:]
        logs[kind] = (folder / "runs" / kind / "train.log").read_text()
        assert f"Code size: {sizes[kind]} bytes" in logs[kind]  # each script counts its own file
    assert sizes["wrapped"] < sizes["plain"] // 2
    assert EXACT.search(logs["wrapped"]).groups() == EXACT.search(logs["plain"]).groups()
