"""Attention backends: FA4 (flash_attn.cute) as a traceable custom op, and `auto`'s choice by measurement.

`auto` on CUDA times forward+backward of every importable backend (fa3, fa4, cuDNN SDPA, flash SDPA) at the
model's attention shape, bf16, and keeps the fastest; a backend that raises is skipped with its error. On
CPU it is plain SDPA, untimed. This module imports only torch: `pgolf bench` loads it by path into a
record's process (its `flash_attn_interface` stand-in) so both sides run the same backend.
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

MEASURED = ("fa3", "fa4", "cudnn", "flash")  # what `auto` times on CUDA, in order of preference on a tie
SDPA_SETS = {"cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION"), "flash": ("FLASH_ATTENTION",),
             "efficient": ("EFFICIENT_ATTENTION",), "math": ("MATH",)}  # the SDPA kernels each choice enables
PACKAGES = {"fa3": ("flash_attn_interface", "flash_attn_3"), "fa4": ("flash_attn.cute", "flash-attn-4")}


class AttnShape(NamedTuple):
    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    head_dim: int


def available(name: str) -> bool:
    """Whether backend `name` can run here: fa3 and fa4 when their module imports, SDPA always."""
    try:
        return name not in PACKAGES or importlib.util.find_spec(PACKAGES[name][0]) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        return False


def attention_shape(core: Any, world_size: int) -> AttnShape:
    """The training attention shape: (micro-batch, heads, kv heads, seq len, head dim)."""
    accum = core.grad_accum_steps or max(1, 8 // world_size)
    batch = max(1, core.train_batch_tokens // (world_size * accum * core.train_seq_len))
    return AttnShape(batch, core.num_heads, core.num_kv_heads, core.train_seq_len, core.model_dim // core.num_heads)


# ---------------------------------------------------------------- FA4 as a custom op
# flash_attn.cute JIT-compiles CuTe DSL kernels: dynamo cannot trace it, so the forward and backward are
# torch.library ops with fake implementations (torch.compile(fullgraph=True) keeps them as single nodes).
# KERNELS is the seam: fwd(q, k, v) -> (out, lse) and bwd(q, k, v, out, dout, lse) -> (dq, dk, dv), all in
# (B, T, H, D) / (B, T, Hkv, D) layout, lse (B, H, T) float32; tests put a stand-in here.


def _fa4_fwd_kernel(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    from flash_attn.cute import flash_attn_func  # type: ignore[import-not-found]

    with torch.no_grad():
        return flash_attn_func(q, k, v, causal=True, return_lse=True)


def _fa4_bwd_kernel(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor):
    # flash_attn.cute has no public backward: FlashAttnFunc.backward calls this (4.0.0b36)
    from flash_attn.cute.interface import _flash_attn_bwd  # type: ignore[import-not-found]

    return _flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]


KERNELS: dict[str, Callable] = {"fwd": _fa4_fwd_kernel, "bwd": _fa4_bwd_kernel}


@torch.library.custom_op("pgolf::fa4_fwd", mutates_args=())
def fa4_fwd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    out, lse = KERNELS["fwd"](q, k, v)
    return out.contiguous(), lse.contiguous()


@fa4_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    b, t, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((b, h, t), dtype=torch.float32)


@torch.library.custom_op("pgolf::fa4_bwd", mutates_args=())
def fa4_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = KERNELS["bwd"](q, k, v, out, dout, lse)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@fa4_bwd.register_fake
def _(q, k, v, out, dout, lse):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _fa4_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)  # q, k, v, out, lse


def _fa4_backward(ctx, dout: Tensor, dlse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    return fa4_bwd(q, k, v, out, dout.contiguous(), lse)


fa4_fwd.register_autograd(_fa4_backward, setup_context=_fa4_setup)


def fa4_func(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FA3's interface on FA4: (B, T, H, D) q and (B, T, Hkv, D) k, v (Hkv divides H) -> (B, T, H, D), causal."""
    return fa4_fwd(q.contiguous(), k.contiguous(), v.contiguous())[0]


# ---------------------------------------------------------------- the backends as the model calls them
def attend(name: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, H, T, D) q and (B, Hkv, T, D) k, v -> (B, T, H, D), causal, on backend `name` (fa3, fa4, or SDPA
    with whatever kernels are enabled)."""
    if name == "fa4":
        return fa4_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
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
    """The log line: `attention_backend:cudnn (measured: fa4=2.06ms, cudnn=2.31ms, ...)`."""
    parts = [f"{n}={m:.3f}ms" if isinstance(m, float) else f"{n}={m}" for n, m in measured.items()]
    return f"attention_backend:{choice}" + (f" (measured: {', '.join(parts)})" if parts else "")


def measure(shape: AttnShape, device: torch.device) -> tuple[str, dict[str, float | str]]:
    """`auto` on CUDA: time every importable backend at `shape` and pick the fastest."""
    return choose([n for n in MEASURED if available(n)], lambda n: time_backend(n, shape, device))


def pick_attention(setting: str, device: torch.device, shape: AttnShape | None = None, deterministic: bool = False,
                   measured: dict[str, Any] | None = None) -> str:
    """The backend, with torch's SDPA flags set for it. CPU: SDPA (`auto` -> "sdpa", untimed). CUDA `auto`: the
    fastest at `shape` (`measure`; its timings go into `measured`), or, with no shape or deterministic kernels
    asked for, fa3 if importable else cuDNN. Distributed: rank 0's choice for every rank."""
    if device.type != "cuda":
        return "sdpa" if setting == "auto" else setting
    choice = setting
    if setting == "auto" and (shape is None or deterministic):
        choice = "fa3" if available("fa3") else "cudnn"
    elif setting == "auto":
        box = list(measure(shape, device))
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
