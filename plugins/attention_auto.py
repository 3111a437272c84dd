"""`core.attention = auto` on CUDA by measurement (pgolf issue #14; the PR #315 and PR #1493 records run FA3): time
forward+backward of every importable backend (fa3, cuDNN SDPA, flash SDPA) at the run's training attention shape,
bf16, and keep the fastest; a backend that raises is skipped with its error. The default provider of
"attention_backend" (`pg_attention_backend`); without it `auto` is fa3 when importable, else cuDNN, untimed.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from core.hookspecs import hookimpl
from core.model import attend
from core.registry import Plugin
from core.run import available, pick_attention

MEASURED = ("fa3", "cudnn", "flash")  # what `auto` times, in order of preference on a tie
AttnShape = namedtuple("AttnShape", "batch heads kv_heads seq_len head_dim")


def attention_shape(core: Any, world_size: int) -> AttnShape:
    """The training attention shape: (micro-batch, heads, kv heads, seq len, head dim)."""
    accum = core.grad_accum_steps or max(1, 8 // world_size)
    batch = max(1, core.train_batch_tokens // (world_size * accum * core.train_seq_len))
    return AttnShape(batch, core.num_heads, core.num_kv_heads, core.train_seq_len, core.model_dim // core.num_heads)


def time_backend(name: str, shape: AttnShape, device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    """Mean ms of forward+backward of backend `name` at `shape`, bf16, after `warmup` calls. It leaves torch's SDPA
    flags set for `name` (the run's `pick_attention` then sets them for its choice)."""
    pick_attention(name, device)
    b, h, hkv, t, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, t, n, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
               for n in (h, hkv, hkv))
    grad = torch.randn(b, t, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    for _ in range(warmup):
        attend(name, q, k, v).backward(grad)  # fa3, else SDPA with the kernels set above
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(iters):
        attend(name, q, k, v).backward(grad)
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / iters


def choose(names: list[str], timer: Callable[[str], float]) -> tuple[str, dict[str, float | str]]:
    """The fastest of `names` by `timer(name) -> ms`; a backend whose timer raises is skipped, its error kept.
    Returns (choice, {name: ms or "error: …"}); raises RuntimeError when every one failed."""
    measured: dict[str, float | str] = {}
    for name in names:
        try:
            measured[name] = float(timer(name))
        except Exception as e:  # noqa: BLE001 - any failure just rules the backend out
            measured[name] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    timed = {n: ms for n, ms in measured.items() if isinstance(ms, float)}
    if not timed:
        raise RuntimeError("attention=auto: no backend ran: " + ", ".join(f"{n} {m}" for n, m in measured.items()))
    return min(timed, key=lambda n: (timed[n], names.index(n))), measured


def describe(choice: str, measured: dict[str, float | str]) -> str:
    """The log line: `attention_backend:cudnn (measured: fa3=2.06ms, cudnn=2.31ms, ...)`."""
    parts = [f"{n}={m:.3f}ms" if isinstance(m, float) else f"{n}={m}" for n, m in measured.items()]
    return f"attention_backend:{choice}" + (f" (measured: {', '.join(parts)})" if parts else "")


def measure(core: Any, device: torch.device, world_size: int) -> tuple[str, dict[str, float | str]]:
    """(the fastest importable backend at the training shape, its timings); distributed: rank 0's for every rank."""
    shape = attention_shape(core, world_size)
    box = list(choose([n for n in MEASURED if available(n)], lambda n: time_backend(n, shape, device)))
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0], box[1]


class AttentionAuto(Plugin):
    name = "attention_auto"
    family = "other"
    summary = "core.attention = auto on CUDA: the backend measured fastest at the run's attention shape."
    sources = ("pgolf issue #14",)
    provides = ("attention_backend",)
    default = True
    test_settings = {}

    @hookimpl
    def pg_attention_backend(self, run) -> str:
        choice, measured = measure(run.core, run.device, run.world_size)
        run.state[self.name] = measured
        run.log(describe(choice, measured))
        run.event("attention", choice=choice, measured_ms=measured)
        return choice
