"""`pgolf train --nproc N` in a subprocess for N = 1 and 2 (CPU, gloo), each run's metrics.json returned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from pgolf.launch import free_port  # noqa: F401 (the spawned gloo tests import it from here)

ROOT = Path(__file__).resolve().parent.parent


def train_on_1_and_2_processes(args: list[str], out_dir: Path) -> dict[int, dict]:
    """Runs n1 and n2 (`core.run_id`) with `args` (their out_dir must be `out_dir`); {n: metrics}."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    out = {}
    for n in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "pgolf.cli", "train", "--nproc", str(n), *args,
                               "--set", f"core.run_id=n{n}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        out[n] = json.loads((out_dir / f"n{n}" / "metrics.json").read_text())
    return out


def end_gloo_worker() -> NoReturn:
    """Ends a spawned gloo test worker whose results are written: every rank past a barrier, then `os._exit(0)`.

    The teardown is skipped on purpose. A spawned worker otherwise leaves through `destroy_process_group` and the
    interpreter's exit, where torch's C++ threads can abort it under load ("terminate called without an active
    exception", SIGABRT: seen in CI on 2 cores) after its work is done and checked. `pgolf train`'s own shutdown is
    covered by the `--nproc 2` runs above, which exit normally.
    """
    import torch.distributed as dist

    dist.barrier()  # no rank leaves while another still waits on a collective with it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
