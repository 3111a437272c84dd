"""`pgolf plugins new NAME`: write a working skeleton plugin and its test."""

from __future__ import annotations

import os
from pathlib import Path

PLUGIN_TEMPLATE = '''"""{title}: a learned per-dimension gain on the normed embedding (replace with your technique).

Source: <the PR or paper this ports, e.g. openai/parameter-golf#NNN>.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.registry import Plugin


@dataclass
class {cls}Config:
    init: float = field(default=1.5, metadata={{"help": "initial gain"}})


class {cls}Gain(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.{name}_gain = nn.Parameter(torch.full((dim,), init, dtype=torch.float32))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        return x * self.{name}_gain.to(x.dtype)


class {cls}(Plugin):
    name = "{name}"
    family = "model"  # model, routing, training, data, export, evaluation or other (pgolf plugins list)
    summary = "Learned per-dimension gain on the token embedding (skeleton: replace with your technique)."
    sources = ("your-paper-or-PR",)
    config = {cls}Config
    test_settings = {{"{name}": {{"init": 1.5}}}}

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer):
        if slot == "embed_mix_post":
            return {cls}Gain(spec.model_dim, self.cfg.init)
        return None
'''

TEST_TEMPLATE = '''"""Tests for the {name} plugin: it loads, and it changes the model's output."""

from pathlib import Path

import torch

from core.config import resolve
from core.model import GPT, ModelSpec
from plugins.lib.loading import load_registry

PLUGIN_FILE = Path(__file__).with_name("{name}.py")


def test_{name}_changes_the_forward():
    registry = load_registry([PLUGIN_FILE])
    cfg = resolve(plugin_config_classes=registry.config_classes(), plugins=["{name}"],
                  check_plugins=registry.check)
    plugin = registry.plugins["{name}"](cfg.plugin_configs["{name}"])
    spec = ModelSpec(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    model = GPT(spec)
    for p in model.parameters():  # a trained-looking model: the core zero-inits output projections
        torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(0, 64, (2, 16))
    before = model(ids)
    part = plugin.pg_slot_parts(slot="embed_mix_post", spec=spec, layer=None)
    model.embed_mix_post.append(part)
    after = model(ids)
    assert not torch.allclose(before, after)
'''


def write_plugin_skeleton(name: str, directory: Path, force: bool = False) -> list[Path]:
    """Write NAME.py and test_NAME.py into `directory`; refuses to overwrite without force."""
    directory.mkdir(parents=True, exist_ok=True)
    cls = "".join(part.capitalize() for part in name.split("_")) or "MyPlugin"
    files = {
        directory / f"{name}.py": PLUGIN_TEMPLATE.format(name=name, cls=cls, title=cls),
        directory / f"test_{name}.py": TEST_TEMPLATE.format(name=name),
    }
    for path in files:
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists (use --force to overwrite)")
    for path, text in files.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return list(files)
