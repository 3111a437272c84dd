"""Device time of a training script's steps, by kernel class: one profiler for pgolf's side and a record's (issue #14).

`StepProfiler` is a global optimizer step post-hook (`torch.optim.optimizer.register_optimizer_step_post_hook`:
every `torch.optim.Optimizer` calls it, the records' own Muon too). It counts the steps of the first optimizer that
steps; after `skip` of them `torch.profiler` records `steps` steps, then it writes the operators and kernels by
device time per step (host time where there is no device), the total by kernel class (`KERNEL_KINDS`) and the
device time per step, as JSON and a text table beside it. `restart_on_restore` makes the count start again at every
optimizer `load_state_dict` (the records restore their optimizers after the compile warm-up), so `skip` counts
training steps. Users: `benchmarks/kernel_profile.py` (any script, by hand) and `pgolf bench --vs` (the record's
last steps, through the sitecustomize it writes). torch is imported where it is used: `pgolf bench` reads
`kernel_kind` without it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

KERNEL_KINDS = (  # (kind, name fragments) first match wins; lower-case
    ("fused (triton)", ("triton_poi", "triton_per", "triton_red")),  # inductor's: names carry their ops
    ("attention", ("flash", "fmha", "attention", "cudnn")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "wgmma", "matmul", "addmm", "mm_", "linear",  # a plugin's GEMM
                "aten::mm", "aten::bmm")),  # host operators: the classes of a CPU profile (host time)
    ("communication", ("nccl", "allreduce", "all_reduce", "reduce_scatter", "all_gather")),
    ("copy", ("memcpy", "memset", "copy_kernel")),
)


def kernel_kind(name: str) -> str:
    """The profile's coarse kernel class of one device op name (`KERNEL_KINDS`; "other" when none matches)."""
    low = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in low for p in parts)), "other")


def is_device_activity(event: Any) -> bool:
    """A kernel, copy or set on the device itself (not a host operator or an annotation that spans such)."""
    return str(getattr(event, "device_type", "CPU")).rsplit(".", 1)[-1] != "CPU" and not getattr(
        event, "is_user_annotation", False)


class StepProfiler:
    """Counts the first optimizer's steps; profiles steps skip+1 .. skip+steps and writes the tables."""

    def __init__(self, skip: int, steps: int, out: Path, rows: int, then_exit: bool = False,
                 stacks: re.Pattern[str] | None = None, trace: Path | None = None, python_stacks: bool = True):
        self.skip, self.steps, self.out, self.rows, self.then_exit = skip, steps, out, rows, then_exit
        self.stacks, self.trace, self.python_stacks = stacks, trace, python_stacks
        self.first: int | None = None
        self.count = self.restores = 0
        self.prof: Any = None
        self.done = False

    def __call__(self, optimizer: Any, *_: Any) -> None:
        self.first = id(optimizer) if self.first is None else self.first
        if id(optimizer) != self.first or self.done:
            return
        self.count += 1
        if self.count == self.skip:
            self._start()
        elif self.count == self.skip + self.steps and self.prof is not None:
            self._finish()

    def restart(self) -> None:
        """Count from zero again (an optimizer restore: what came before was a warm-up); a window open is dropped.
        Once the tables are written nothing restarts."""
        if self.done:
            return
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.prof = None
        self.count, self.restores = 0, self.restores + 1

    def _start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        self._sync()
        cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
        traced = self.stacks is not None and self.python_stacks  # Python stacks slow a compiled step ~10x
        # stacks need the verbose experimental config (without it key_averages' stacks come back empty)
        verbose = {"experimental_config": torch._C._profiler._ExperimentalConfig(verbose=True)} if traced else {}
        self.prof = profile(activities=[ProfilerActivity.CPU, *cuda], record_shapes=self.stacks is not None,
                            with_stack=traced, **verbose)
        self.prof.__enter__()

    def _finish(self) -> None:
        self._sync()
        self.prof.__exit__(None, None, None)
        self.write(self.prof.key_averages())
        self.done = True
        if self.trace is not None:  # a timeline (chrome://tracing, Perfetto), gzip-compressed
            self.prof.export_chrome_trace(str(self.trace.with_suffix("")))
            with open(self.trace.with_suffix(""), "rb") as raw, gzip.open(self.trace, "wb") as packed:
                shutil.copyfileobj(raw, packed)
            self.trace.with_suffix("").unlink()
        if self.stacks is not None:
            self.write_stacks(self.prof.key_averages(group_by_input_shape=True, group_by_stack_n=8))
        self.prof = None
        if self.then_exit:  # the rest of the script (final export, evaluation) is not what was asked for
            sys.stdout.flush()
            os._exit(0)

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def write(self, events: Any) -> None:
        def device_us(e: Any) -> float:
            return float(getattr(e, "self_device_time_total", 0.0) or 0.0)

        on_device = any(device_us(e) > 0 for e in events)
        weight = device_us if on_device else (lambda e: float(e.self_cpu_time_total))
        rows = sorted((e for e in events if weight(e) > 0), key=weight, reverse=True)
        per_step = {e.key[:120]: weight(e) / 1000.0 / self.steps for e in rows}
        calls = {e.key[:120]: e.count / self.steps for e in rows[:self.rows]}
        # the totals count each device activity once: a host operator's "self device time" is the time of the
        # kernels it launched (listed again as their own rows), and a user annotation spans kernels too
        counted = [e for e in rows if not on_device or is_device_activity(e)]
        kinds: dict[str, float] = {}
        for e in counted:
            kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + weight(e) / 1000.0 / self.steps
        kinds = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        result = {"steps": self.steps, "after_steps": self.skip, "restores": self.restores,
                  "time": "device" if on_device else "host (self)", "ms_per_step": sum(kinds.values()),
                  "by_kind_ms": kinds, "top_ms": dict(list(per_step.items())[:self.rows]),
                  "top_calls_per_step": calls}
        self.out.write_text(json.dumps(result, indent=1) + "\n")
        lines = [f"{result['time']} ms per step over {self.steps} steps after {self.skip}: "
                 f"{result['ms_per_step']:.2f}",
                 "by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in kinds.items())]
        lines += [f"{ms:9.3f}  {kernel_kind(name):14s}  {name}" for name, ms in list(per_step.items())[:self.rows]]
        lines.insert(2, "rows: operators and kernels by self time (an operator's row repeats its kernels' time)")
        self.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        print("step_profile: " + lines[0] + f" -> {self.out}", file=sys.stderr, flush=True)

    def write_stacks(self, events: Any) -> None:
        """The operators matching `stacks`, one row per (input shapes, Python stack): calls and time per step."""
        lines = []
        for e in sorted((e for e in events if self.stacks.search(e.key)),
                        key=lambda e: -(float(getattr(e, "device_time_total", 0.0) or 0.0) + e.cpu_time_total)):
            device = float(getattr(e, "device_time_total", 0.0) or 0.0) / 1000.0 / self.steps
            lines.append(f"{e.key} calls/step {e.count / self.steps:g} device {device:.3f} ms/step "
                         f"host {e.cpu_time_total / 1000.0 / self.steps:.3f} ms/step shapes {e.input_shapes}")
            lines += [f"    {frame}" for frame in (e.stack or [])]
        self.out.with_suffix(".stacks.txt").write_text("\n".join(lines) + "\n")


def restart_on_restore(profiler: StepProfiler) -> None:
    """Every `torch.optim.Optimizer.load_state_dict` from now on restarts `profiler`'s count (its `restart`)."""
    import torch

    load_state_dict = torch.optim.Optimizer.load_state_dict

    def restoring(self: Any, *args: Any, **kwargs: Any) -> Any:
        profiler.restart()
        return load_state_dict(self, *args, **kwargs)

    torch.optim.Optimizer.load_state_dict = restoring


def install(skip: int, steps: int, out: Path, rows: int = 80, *, from_restore: bool = False, **options: Any
            ) -> StepProfiler:
    """A `StepProfiler` registered as the global optimizer post-hook (counting from the last restore if asked)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    profiler = StepProfiler(skip, steps, out, rows, **options)
    if from_restore:
        restart_on_restore(profiler)
    register_optimizer_step_post_hook(profiler)
    return profiler
