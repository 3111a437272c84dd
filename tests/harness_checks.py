"""Shared set-up of the harness tests: a tiny world built once per module, and rule -> worst status."""

from __future__ import annotations

import copy

import torch

from validator.harness import build_world, check_evaluator
from validator.rules.base import FAIL


def tiny_world(settings):
    """The harness world of `settings`, built with one torch thread (tiny matmuls: faster on a shared box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield build_world(settings)
    finally:
        torch.set_num_threads(threads)


def statuses(world, evaluator, settings) -> dict[str, str]:
    """rule -> worst status of the harness checks of `evaluator` (a fresh deep copy per call)."""
    rep = check_evaluator(world, lambda run: copy.deepcopy(evaluator), evaluator.name, "test", settings)
    assert rep.error is None, rep.error
    out: dict[str, str] = {}
    for c in rep.checks:
        if out.get(c.rule) != FAIL:
            out[c.rule] = c.status
    return out
