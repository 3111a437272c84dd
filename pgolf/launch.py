"""`pgolf train --nproc N`: N ranks of one command on this machine, in the environment `torchrun --standalone` gives
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT, OMP_NUM_THREADS=1 unless set).

Unlike torchrun, a failed rank ends the job in one line: the rank has printed its own error; the others are stopped
(SIGTERM, then SIGKILL after a grace period) and the job exits with that rank's status, with no launcher traceback.
A SIGINT/SIGTERM to the job stops every rank the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

GRACE_SECONDS = 20.0  # a stopped rank marks its run interrupted and leaves; then it is killed
POLL_SECONDS = 0.1


def rank_environment(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The environment of rank `rank` of `nproc` (single node; the rendezvous on 127.0.0.1:`port`)."""
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several ranks: N processes share the cores
    return env


def die_with_launcher() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the rank gets SIGTERM when the launcher dies, however it dies (SIGKILL, SIGHUP): no orphan ranks
    training on with nobody to collect them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every rank still running, SIGKILL whatever is left after GRACE_SECONDS."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(argv: list[str], nproc: int) -> int:
    """Run `python -m pgolf.cli *argv` as `nproc` ranks; 0 when all succeed, else the first failed rank's status."""
    port = free_port()
    linux = sys.platform.startswith("linux")
    procs = [subprocess.Popen([sys.executable, "-m", "pgolf.cli", *argv], env=rank_environment(r, nproc, port),
                              preexec_fn=die_with_launcher if linux else None) for r in range(nproc)]
    previous = signal.signal(signal.SIGHUP, _hangup)  # a closed terminal stops the ranks as SIGTERM does
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                stop(procs)
                reason = f"signal {-code}" if code < 0 else f"status {code}"
                print(f"pgolf: rank {rank} of {nproc} failed ({reason}); the other ranks were stopped", file=sys.stderr)
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:  # Ctrl-C reaches the ranks too (one process group); SIGTERM (InterruptedRun) does not
        stop(procs)
        raise
    finally:
        signal.signal(signal.SIGHUP, previous)


def _hangup(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise KeyboardInterrupt
