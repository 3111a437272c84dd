"""Fewer accumulation steps where the GPU has memory to spare (pgolf issue #14; measured on PR #315's step).

Without it a step is 8 // WORLD_SIZE micro-steps (the baseline's `grad_accum_steps`): 8 on one GPU, where PR #315's
786,432-token step runs 48 x 2048 rows at a time and peaks at 21.4 GiB of an H200's ~139 GiB. Before the compile
warm-up fixes the batch shapes (`pg_before_warmup`), this plugin runs two whole steps at that count (the first compiles
and makes the optimizer state) and reads the second's memory: what is held after its forward/backward (weights,
optimizer state, gradients: `fixed`) and the peak above that (one micro-batch's activations). Weights, optimizer state
and torch's generators are then restored, so the run is the one `core.grad_accum_steps = A` gives by hand, and A is
the fewest micro-steps that keep the global batch in whole rows and whose predicted peak, `fixed` plus the activations
scaled to the larger micro-batch, is at most `fraction` of the device (`fewest_accum_steps`). It acts in one process
on CUDA when `core.grad_accum_steps` is 0 (unset) and the default is above one; anywhere else nothing changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import restored_weights


@dataclass
class AutoMicroBatchConfig:
    fraction: float = field(default=0.8, metadata={
        "help": "the share of the device's memory (torch.cuda.mem_get_info's total) the predicted peak may take"})

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"auto_micro_batch.fraction must be in (0, 1], got {self.fraction}")


def fewest_accum_steps(fixed: float, activations: float, accum: int, total: float, fraction: float,
                       allowed: Iterable[int]) -> int:
    """The fewest micro-steps A of `allowed` whose predicted peak, `fixed` bytes plus the `activations` bytes measured
    at `accum` micro-steps scaled to A's micro-batch (x accum / A), is at most `fraction` of `total`; else `accum`."""
    return min((a for a in allowed if fixed + activations * accum / a <= fraction * total), default=accum)


def allowed_counts(core: Any, world_size: int, accum: int) -> list[int]:
    """The micro-step counts 1..`accum` whose micro-batch is whole `train_seq_len` rows per rank of the same global
    batch (what `core.data.DistributedTokenLoader.next_batch` requires, with nothing left over)."""
    return [a for a in range(1, accum + 1) if core.train_batch_tokens % (world_size * a * core.train_seq_len) == 0]


def step_memory(run: Any, stepper: Any) -> tuple[int, int, int] | None:
    """(bytes held after a step's forward/backward, the peak above that, the device's total bytes), read on the second
    of two whole steps at `run.grad_accum_steps`, or None off CUDA. With graph modes (`run.modes`, cumulative: the
    last state has every mode on) it reads the base state and the all-modes state and returns the larger of each
    figure, then leaves the base state on: a mode can add activations (PR #1493's recurrence runs 17 layers
    instead of 11, and a count chosen in the base state ran out of memory at its mode's warm-up). The caller
    restores what the steps change."""
    if run.device.type != "cuda":
        return None
    from core.train import new_loader, set_modes

    loader, dev, core = new_loader(run), run.device, run.core
    with torch.no_grad(), run.autocast():  # prime the rotary tables before the first trace, as the warm-up does
        run.model(new_loader(run).next_batch(core.train_batch_tokens, core.train_seq_len, run.grad_accum_steps)[0][:1])
    states = [()] + ([tuple(m.name for m in run.modes)] if run.modes else [])
    held, activations = 0, 0
    for active in states:
        if run.modes:
            set_modes(run, active)
        for _ in range(2):
            stepper.zero_grad()
            torch.cuda.reset_peak_memory_stats(dev)
            stepper.forward_backward(loader)
            now, peak = torch.cuda.memory_allocated(dev), torch.cuda.max_memory_allocated(dev)
            stepper.optimizer_step()
        held, activations = max(held, now), max(activations, peak - now)
    if run.modes:
        set_modes(run, ())
    stepper.zero_grad()
    torch.cuda.empty_cache()  # the probe's cached blocks, sized for its smaller micro-batch
    return held, activations, torch.cuda.mem_get_info(dev)[1]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}GiB"


class AutoMicroBatch(Plugin):
    name = "auto_micro_batch"
    family = "other"
    summary = "Fewer accumulation steps (same global batch) when one micro-step's measured memory leaves room."
    sources = ("pgolf issue #14 (PR #315 on one H200: 8 micro-steps peak at 21.4 GiB)",)
    config = AutoMicroBatchConfig
    cuda_only = True  # off CUDA the run is the core's (the matrix checks it)
    test_settings = {}

    @hookimpl
    def pg_before_warmup(self, run: Any, stepper: Any) -> None:
        accum = run.grad_accum_steps
        if run.core.grad_accum_steps != 0 or accum <= 1 or run.distributed:
            return
        cuda = [run.device] if run.device.type == "cuda" else []
        with restored_weights(run.model, run.optimizers), torch.random.fork_rng(cuda):
            measured = step_memory(run, stepper)
        if measured is None:
            return
        fixed, act, total = measured
        frac = self.cfg.fraction
        a = fewest_accum_steps(fixed, act, accum, total, frac, allowed_counts(run.core, run.world_size, accum))
        run.grad_accum_steps = a
        run.log(f"auto_micro_batch: grad_accum_steps:{accum} measured fixed:{gib(fixed)} activations:{gib(act)} "
                f"device:{gib(total)} -> grad_accum_steps:{a} predicted_peak:{gib(fixed + act * accum / a)} "
                f"(limit {frac:g} of the device)")
        run.log(f"world_size:{run.world_size} grad_accum_steps:{a}")
        run.event("auto_micro_batch", measured_at=accum, grad_accum_steps=a, fixed_bytes=fixed,
                  activation_bytes=act, total_bytes=total, fraction=frac)
