"""Kernel-level profile of any training script's steady-state steps, the same way for pgolf and a record (issue #14).

Runs a script (`script.py args…`) or a module (`-m pgolf train …`) in this process under `pgolf.step_profile`'s
`StepProfiler`, a global optimizer step hook: training steps are counted on the first optimizer that steps; after
`--skip` of them (past the records' warm-up steps and the compile) `torch.profiler` records `--steps` steps, then
writes the operators and kernels by device time per step (and host time where there is no device), a summary by
kernel class (`pgolf.step_profile.KERNEL_KINDS`) and the device time per step, as a text table and JSON. Both sides
measured by one mechanism, so the difference between two tables is the difference between two steps
(`pgolf bench --vs --profile-steps N` does the same for the record's last N steps without this script). With
`--trace` the profiled steps' timeline is written too; `benchmarks/device_idle.py` puts its idle gaps down to their
causes.

    python benchmarks/kernel_profile.py --skip 40 --steps 3 --then-exit --out pgolf.json -- -m pgolf train ...
    cd <bench out>/record && env $(<record env>) python <repo>/benchmarks/kernel_profile.py --skip 40 --steps 3 \
        --out record.json -- train_gpt.py        (`pgolf bench --side record --dry-run` writes that env)
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgolf.step_profile import KERNEL_KINDS, StepProfiler, install, is_device_activity, kernel_kind  # noqa: E402

__all__ = ["KERNEL_KINDS", "StepProfiler", "is_device_activity", "kernel_kind", "main"]


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
    parser.add_argument("--from-restore", action="store_true",
                        help="count --skip from the last optimizer load_state_dict (the end of a warm-up that "
                        "restores the optimizers: pgolf's and the records')")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="-- script.py args… or -- -m module args…")
    args = parser.parse_args(argv)
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if not target or args.skip < 1 or args.steps < 1:
        parser.error("expected --skip >= 1, --steps >= 1 and a target: -- script.py args… or -- -m module args…")
    install(args.skip, args.steps, args.out.resolve(), args.rows, then_exit=args.then_exit, stacks=args.stacks,
            trace=args.trace.resolve() if args.trace else None, python_stacks=not args.no_python_stacks,
            from_restore=args.from_restore)
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        sys.path.insert(0, str(Path(target[0]).resolve().parent))
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
