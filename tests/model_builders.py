"""Tiny models for plugin tests: a run built from a plugin list without data, and random parameters that make
every part of the forward live (zero-initialised projections and gates included)."""

from __future__ import annotations

import math

import torch

from core.config import resolve
from core.registry import Registry
from core.run import Run, create_run
from core.train import CoreDefaults, build_model


def build_tiny(registry: Registry, tiny: list[str], plugins: list[str], sets=(), seed: int | None = None
               ) -> tuple[Run, torch.nn.Module]:
    """A run of `plugins` at the `tiny` core settings (no data, no run folder) and its model, seeded with
    `seed` (default: the configuration's core.seed) just before the model is built."""
    cfg = resolve(plugin_config_classes=registry.config_classes(), plugins=plugins, sets=[*tiny, *sets],
                  check_plugins=registry.check, check_settings=registry.check_settings)
    run = create_run(cfg, registry, CoreDefaults(), make_dir=False)
    torch.manual_seed(cfg.core.seed if seed is None else seed)
    run.model = build_model(run)
    return run, run.model


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (zero-init projections and gates included), so no part of the forward is inert."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim < 2 else 1.0 / math.sqrt(p.shape[-1])))


def graph_recorder() -> tuple:
    """(backend, graphs): a torch.compile backend that runs each graph as traced and appends its text to `graphs`."""
    graphs: list[str] = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    return backend, graphs
