"""Wall-clock milliseconds per call of a CUDA function: warm-up calls, synchronize, time N calls, synchronize.

Shared by the microbenchmarks (`fp8_matmul.py`, `inductor_options.py`), which run as scripts from this folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def ms_per_call(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Mean ms of `fn()` over `iters` calls after `warmup` untimed ones (a fresh compile happens in those)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1000.0
