"""Kernel-level profile of any training script's steady-state steps, the same way for pgolf and a record (issue #14).

Runs a script (`script.py args…`) or a module (`-m pgolf train …`) in this process with a global optimizer
step hook (`torch.optim.optimizer.register_optimizer_step_post_hook`: every `torch.optim.Optimizer` calls it, the
records' own Muon too). Training steps are counted on the first optimizer that steps; after `--skip` of them
(past the records' warm-up steps and the compile) `torch.profiler` records `--steps` steps, then writes the
operators and kernels by device time per step (and host time where there is no device), a summary by kind
(matmul, attention, fused triton, copy, other) and the device time per step, as a text table and JSON. Both sides
measured by one mechanism, so the difference between two tables is the difference between two steps.

    python benchmarks/kernel_profile.py --skip 40 --steps 3 --then-exit --out pgolf.json -- -m pgolf train ...
    cd <bench out>/record && env $(<record env>) python <repo>/benchmarks/kernel_profile.py --skip 40 --steps 3 \
        --out record.json -- train_gpt.py        (`pgolf bench --side record --dry-run` writes that env)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile

KINDS = (("matmul", re.compile(r"gemm|xmma|cutlass|nvjet|aten::(mm|addmm|bmm|matmul|linear)\b", re.I)),
         ("attention", re.compile(r"flash|fmha|cudnn|attention|sdpa", re.I)),
         ("fused triton", re.compile(r"^triton_", re.I)),
         ("copy", re.compile(r"memcpy|memset|copy_|_to_copy|elementwise_kernel.*copy", re.I)))


def is_device_activity(event: Any) -> bool:
    """A kernel, copy or set on the device itself (not a host operator or an annotation that spans such)."""
    return str(getattr(event, "device_type", "CPU")).rsplit(".", 1)[-1] != "CPU" and not getattr(
        event, "is_user_annotation", False)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


class StepProfiler:
    """Counts the first optimizer's steps; profiles steps skip+1 .. skip+steps and writes the tables."""

    def __init__(self, skip: int, steps: int, out: Path, rows: int, then_exit: bool = False,
                 stacks: re.Pattern[str] | None = None, trace: Path | None = None, python_stacks: bool = True):
        self.skip, self.steps, self.out, self.rows, self.then_exit = skip, steps, out, rows, then_exit
        self.stacks, self.trace, self.python_stacks = stacks, trace, python_stacks
        self.first: int | None = None
        self.count = 0
        self.prof: Any = None

    def __call__(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.first = id(optimizer) if self.first is None else self.first
        if id(optimizer) != self.first:
            return
        self.count += 1
        if self.count == self.skip:
            self._sync()
            cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            traced = self.stacks is not None and self.python_stacks  # Python stacks slow a compiled step ~10x
            # stacks need the verbose experimental config (without it key_averages' stacks come back empty)
            verbose = {"experimental_config": torch._C._profiler._ExperimentalConfig(verbose=True)} if traced else {}
            self.prof = profile(activities=[ProfilerActivity.CPU, *cuda], record_shapes=self.stacks is not None,
                                with_stack=traced, **verbose)
            self.prof.__enter__()
        elif self.count == self.skip + self.steps and self.prof is not None:
            self._sync()
            self.prof.__exit__(None, None, None)
            self.write(self.prof.key_averages())
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
            kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + weight(e) / 1000.0 / self.steps
        result = {"steps": self.steps, "after_steps": self.skip, "time": "device" if on_device else "host (self)",
                  "ms_per_step": sum(kinds.values()), "by_kind_ms": kinds,
                  "top_ms": dict(list(per_step.items())[:self.rows]), "top_calls_per_step": calls}
        self.out.write_text(json.dumps(result, indent=1) + "\n")
        lines = [f"{result['time']} ms per step over {self.steps} steps after {self.skip}: "
                 f"{result['ms_per_step']:.2f}",
                 "by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))]
        lines += [f"{ms:9.3f}  {kind_of(name):12s}  {name}" for name, ms in list(per_step.items())[:self.rows]]
        lines.insert(2, "rows: operators and kernels by self time (an operator's row repeats its kernels' time)")
        self.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        print("kernel_profile: " + lines[0] + f" -> {self.out}", file=sys.stderr, flush=True)

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", type=int, default=40, help="training steps before the profiled ones")
    parser.add_argument("--steps", type=int, default=3, help="training steps profiled")
    parser.add_argument("--out", type=Path, required=True, help="JSON path (the table goes beside it as .txt)")
    parser.add_argument("--rows", type=int, default=40, help="operators listed")
    parser.add_argument("--then-exit", action="store_true",
                        help="end the process once the tables are written (skips the script's export/evaluation)")
    parser.add_argument("--stacks", type=re.compile, default=None, metavar="REGEX",
                        help="also record shapes and Python stacks; list the operators matching REGEX by (shapes, "
                             "stack) in OUT.stacks.txt (e.g. 'aten::sum|aten::add_')")
    parser.add_argument("--no-python-stacks", action="store_true",
                        help="with --stacks: input shapes only (Python stacks slow a compiled step many times)")
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE.json.gz",
                        help="also write the profiled steps' timeline (Chrome trace format, gzip)")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="-- script.py args… or -- -m module args…")
    args = parser.parse_args(argv)
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if not target or args.skip < 1 or args.steps < 1:
        parser.error("expected --skip >= 1, --steps >= 1 and a target: -- script.py args… or -- -m module args…")
    profiler = StepProfiler(args.skip, args.steps, args.out.resolve(), args.rows, args.then_exit, args.stacks,
                             args.trace.resolve() if args.trace else None, not args.no_python_stacks)
    register_optimizer_step_post_hook(profiler)
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        sys.path.insert(0, str(Path(target[0]).resolve().parent))
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
