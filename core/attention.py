"""Attention backends (FA3, torch SDPA's kernel sets) and `auto`'s choice by measurement.

`auto` on CUDA times forward+backward of every importable backend (fa3, cuDNN SDPA, flash SDPA) at the model's
attention shape, bf16, and keeps the fastest; a backend that raises is skipped with its error. On CPU it is
plain SDPA, untimed. FlashAttention-4 is a plugin (`fa4_attention`: it replaces the "attention" slot).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

MEASURED = ("fa3", "cudnn", "flash")  # what `auto` times on CUDA, in order of preference on a tie
SDPA_SETS = {"cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION"), "flash": ("FLASH_ATTENTION",),
             "efficient": ("EFFICIENT_ATTENTION",), "math": ("MATH",)}  # the SDPA kernels each choice enables
PACKAGES = {"fa3": ("flash_attn_interface", "flash_attn_3")}


class AttnShape(NamedTuple):
    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    head_dim: int


def available(name: str) -> bool:
    """Whether backend `name` can run here: fa3 when its module imports, SDPA always."""
    try:
        return name not in PACKAGES or importlib.util.find_spec(PACKAGES[name][0]) is not None
    except (ImportError, ValueError):  # a stand-in module without a spec
        return False


def attention_shape(core: Any, world_size: int) -> AttnShape:
    """The training attention shape: (micro-batch, heads, kv heads, seq len, head dim)."""
    accum = core.grad_accum_steps or max(1, 8 // world_size)
    batch = max(1, core.train_batch_tokens // (world_size * accum * core.train_seq_len))
    return AttnShape(batch, core.num_heads, core.num_kv_heads, core.train_seq_len, core.model_dim // core.num_heads)


def attend(name: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, H, T, D) q and (B, Hkv, T, D) k, v -> (B, T, H, D), causal, on backend `name` (fa3, or SDPA with
    whatever kernels are enabled)."""
    if name == "fa3":
        from flash_attn_interface import flash_attn_func  # type: ignore[import-not-found]

        y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return y[0] if isinstance(y, tuple) else y
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    return y.transpose(1, 2)


def time_backend(name: str, shape: AttnShape, device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    """Mean ms of forward+backward of backend `name` at `shape`, bf16, after `warmup` calls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, hkv, t, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, n, t, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
               for n in (h, hkv, hkv))
    grad = torch.randn(b, t, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    sdpa = name in SDPA_SETS

    def step() -> None:
        with sdpa_kernel([getattr(SDPBackend, s) for s in SDPA_SETS[name]]) if sdpa else contextlib.nullcontext():
            attend("sdpa" if sdpa else name, q, k, v).backward(grad)

    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(iters):
        step()
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


def pick_attention(setting: str, device: torch.device, shape: AttnShape | None = None, deterministic: bool = False,
                   measured: dict[str, Any] | None = None) -> str:
    """The backend, with torch's SDPA flags set for it. CPU: SDPA (`auto` -> "sdpa", untimed). CUDA `auto`: the
    fastest importable backend at `shape` by `time_backend` (its timings go into `measured`), or, with no shape or
    deterministic kernels asked for, fa3 if importable else cuDNN. Distributed: rank 0's choice for every rank."""
    if device.type != "cuda":
        return "sdpa" if setting == "auto" else setting
    choice = setting
    if setting == "auto" and (shape is None or deterministic):
        choice = "fa3" if available("fa3") else "cudnn"
    elif setting == "auto":
        box = list(choose([n for n in MEASURED if available(n)], lambda n: time_backend(n, shape, device)))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(box, src=0)
        choice = box[0]
        if measured is not None:
            measured.update(box[1])
    if not available(choice):
        module, package = PACKAGES[choice]
        raise RuntimeError(f"core.attention={choice} but {module} ({package}) is not importable")
    every = choice == "sdpa"  # torch's own dispatch
    torch.backends.cuda.enable_cudnn_sdp(every or choice == "cudnn")
    torch.backends.cuda.enable_flash_sdp(every or choice in ("flash", "cudnn"))
    torch.backends.cuda.enable_mem_efficient_sdp(every or choice == "efficient")
    torch.backends.cuda.enable_math_sdp(every or choice == "math")
    return choice
