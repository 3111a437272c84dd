"""Run a command in a sandbox: a subprocess in its own session with wall-time and memory limits
(resource.setrlimit), network disabled and file access audited by validator/sandbox_site/sitecustomize.py."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SITE_DIR = Path(__file__).resolve().parent / "sandbox_site"
PGOLF_MODULES = ("core", "plugins", "validator", "submissions", "pgolf")
DEFAULT_MEMORY = 12 * 2**30


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tail(self) -> str:
        """The last meaningful line of stderr (the exception of a traceback), else of stdout."""
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1][:400]
        return ""


def _limits(memory: int | None, cpu_seconds: int | None):
    def apply() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_sandboxed(cmd: Sequence[str], cwd: Path, *, timeout: float, memory: int | None = DEFAULT_MEMORY,
                  env: Mapping[str, str] | None = None, block_pgolf: bool = False, audit: Path | None = None,
                  keep_pythonpath: Sequence[str] = ()) -> SandboxResult:
    """Run `cmd` in `cwd`; PYTHONPATH is the sandbox site dir (+ `keep_pythonpath`), nothing else."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PGOLF_", "PYTHON", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    base.update(env or {})
    base["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *keep_pythonpath])
    base["PYTHONDONTWRITEBYTECODE"] = "1"
    base["PYTHONNOUSERSITE"] = "1"
    base["PYTHONUNBUFFERED"] = "1"
    if block_pgolf:
        base["PGOLF_SANDBOX_BLOCK"] = ",".join(PGOLF_MODULES)
        base["PGOLF_SANDBOX_FOLDER"] = str(cwd)
    if audit is not None:
        base["PGOLF_SANDBOX_AUDIT"] = str(audit)
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True,
                            preexec_fn=_limits(memory, int(timeout * 2) + 10))
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    events = read_events(audit) if audit is not None else []
    return SandboxResult(None if timed_out else proc.returncode, out, err, time.perf_counter() - t0, timed_out,
                         events)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The audit events the sandboxed process wrote (malformed lines skipped)."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out


def python() -> str:
    return sys.executable
