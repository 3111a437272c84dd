"""Fused softcapped cross-entropy: the training loss without materialising fp32 softcapped logits (PR #1787,
carried into PR #1855's record `softcapped_cross_entropy`).

The core's loss computes `c·tanh(x/c)` on the head's output, casts it to fp32 and runs `F.cross_entropy`,
which keeps its own fp32 log-softmax for the backward. Here the softcap is applied in fp32 registers as
`z = 2c·σ(2x/c)` (= `c·tanh(x/c) + c`: a constant shift, the same cross-entropy), one pass keeps the row's
log-sum-exp, and the loss is `lse − z[target]`; the backward recomputes `p = exp(z − lse)` from the saved
pre-softcap logits and multiplies `p − onehot` by `dz/dx = 4·σ·(1 − σ)`. Only the logits and one fp32 LSE
per row are kept for the backward.

Two implementations of that math:
- "triton" (CUDA, when `triton` imports): the record's row kernels (one program per row streaming the
  vocabulary in blocks of 1024), registered as a `torch.library.custom_op` with a fake and an autograd
  formula, so the model still traces with `fullgraph=True`.
- "torch": an `autograd.Function` over row chunks (`chunk_rows` at a time, so the fp32 temporaries are one
  chunk's), traced and fused by torch.compile; used on CPU and where triton is missing.
The record keeps eager softcap + CE for evaluation; this slot serves every `model(x, y)` call, so the
evaluator's per-token NLL (`reduce=False`) goes through it too (the same values up to fp32 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import range_errors

try:  # the CUDA kernels exist only where triton does
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None

BACKENDS = ("auto", "triton", "torch")


@dataclass
class FusedCEConfig:
    backend: str = field(default="auto", metadata={
        "help": "auto: the Triton kernels for CUDA tensors when triton imports, else the chunked torch path; "
                "triton / torch force one (PR #1855 FUSED_CE_ENABLED=1: Triton)"})
    chunk_rows: int = field(default=4096, metadata={
        "help": "rows (tokens) per chunk of the torch path: its fp32 temporaries are chunk_rows x vocab"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"fused_ce.backend: expected one of {BACKENDS}, got {self.backend!r}")
        if self.chunk_rows < 1:
            raise ValueError(f"fused_ce.chunk_rows: expected a positive row count, got {self.chunk_rows}")


# --- the torch path ----------------------------------------------------------------------------------
class ChunkedSoftcappedCE(torch.autograd.Function):
    """Per-row softcapped CE of `logits` (N, V) against `targets` (N,): fp32 losses (N,)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, softcap: float, chunk_rows: int) -> Tensor:
        scale, inv = 2.0 * softcap, 2.0 / softcap
        losses, lses = [], []
        for start in range(0, logits.size(0), chunk_rows):
            z = scale * torch.sigmoid(logits[start:start + chunk_rows].float() * inv)
            lse = torch.logsumexp(z, dim=-1)
            target_z = z.gather(1, targets[start:start + chunk_rows, None]).squeeze(1)
            losses.append(lse - target_z)
            lses.append(lse)
        ctx.save_for_backward(logits, targets, torch.cat(lses))
        ctx.softcap, ctx.chunk_rows = softcap, chunk_rows
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_losses: Tensor):
        logits, targets, lse = ctx.saved_tensors
        scale, inv, step = 2.0 * ctx.softcap, 2.0 / ctx.softcap, ctx.chunk_rows
        grads = []
        for start in range(0, logits.size(0), step):
            rows = slice(start, start + step)
            sig = torch.sigmoid(logits[rows].float() * inv)
            probs = torch.exp(scale * sig - lse[rows, None])
            probs = probs.scatter_add(1, targets[rows, None], -torch.ones_like(probs[:, :1]))
            grad_z = grad_losses[rows, None].float() * probs
            grads.append((grad_z * (scale * inv) * sig * (1.0 - sig)).to(logits.dtype))
        return torch.cat(grads), None, None, None


def torch_softcapped_ce(logits: Tensor, targets: Tensor, softcap: float, chunk_rows: int = 4096) -> Tensor:
    return ChunkedSoftcappedCE.apply(logits, targets, float(softcap), int(chunk_rows))


# --- the Triton path (the record's kernels) ------------------------------------------------------------
BLOCK_SIZE, NUM_WARPS = 1024, 4

if triton is not None:

    @triton.jit
    def _ce_forward_kernel(logits_ptr, losses_ptr, lse_ptr, targets_ptr, stride_row, stride_col, n_cols, softcap,
                           block: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride_row
        scale = 2.0 * softcap
        inv = 2.0 / softcap
        running_max = -float("inf")
        running_sum = 0.0
        for off in range(0, n_cols, block):
            cols = off + tl.arange(0, block)
            inside = cols < n_cols
            x = tl.load(base + cols * stride_col, mask=inside, other=0.0).to(tl.float32)
            z = tl.where(inside, scale * tl.sigmoid(x * inv), -float("inf"))
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        target = tl.load(targets_ptr + row).to(tl.int64)
        target_x = tl.load(base + target * stride_col).to(tl.float32)
        tl.store(lse_ptr + row, lse)
        tl.store(losses_ptr + row, lse - scale * tl.sigmoid(target_x * inv))

    @triton.jit
    def _ce_backward_kernel(grad_ptr, grad_losses_ptr, lse_ptr, logits_ptr, targets_ptr, stride_row, stride_col,
                            grad_stride_row, grad_stride_col, n_cols, softcap, block: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride_row
        grad_base = grad_ptr + row * grad_stride_row
        lse = tl.load(lse_ptr + row)
        grad_loss = tl.load(grad_losses_ptr + row).to(tl.float32)
        target = tl.load(targets_ptr + row).to(tl.int64)
        scale = 2.0 * softcap
        inv = 2.0 / softcap
        for off in range(0, n_cols, block):
            cols = off + tl.arange(0, block)
            inside = cols < n_cols
            x = tl.load(base + cols * stride_col, mask=inside, other=0.0).to(tl.float32)
            sig = tl.sigmoid(x * inv)
            probs = tl.exp(scale * sig - lse)
            grad_z = grad_loss * (probs - tl.where(cols == target, 1.0, 0.0))
            tl.store(grad_base + cols * grad_stride_col, grad_z * (scale * inv) * sig * (1.0 - sig), mask=inside)

    @torch.library.custom_op("pgolf_fused_ce::forward", mutates_args=())
    def _triton_forward(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
        logits, targets = logits.contiguous(), targets.contiguous()
        n_rows, n_cols = logits.shape
        losses = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
        lse = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
        _ce_forward_kernel[(n_rows,)](logits, losses, lse, targets, logits.stride(0), logits.stride(1), n_cols,
                                      softcap, block=BLOCK_SIZE, num_warps=NUM_WARPS)
        return losses, lse

    @_triton_forward.register_fake
    def _(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
        n_rows = logits.shape[0]
        return logits.new_empty(n_rows, dtype=torch.float32), logits.new_empty(n_rows, dtype=torch.float32)

    @torch.library.custom_op("pgolf_fused_ce::backward", mutates_args=())
    def _triton_backward(logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor,
                         softcap: float) -> Tensor:
        logits, targets = logits.contiguous(), targets.contiguous()
        grad_losses = grad_losses.contiguous().float()
        grad = torch.empty_like(logits)
        n_rows, n_cols = logits.shape
        _ce_backward_kernel[(n_rows,)](grad, grad_losses, lse.contiguous(), logits, targets, logits.stride(0),
                                       logits.stride(1), grad.stride(0), grad.stride(1), n_cols, softcap,
                                       block=BLOCK_SIZE, num_warps=NUM_WARPS)
        return grad

    @_triton_backward.register_fake
    def _(logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor, softcap: float) -> Tensor:
        return logits.new_empty(logits.shape)

    def _setup_context(ctx, inputs, output) -> None:
        logits, targets, softcap = inputs
        ctx.save_for_backward(logits, targets, output[1])
        ctx.softcap = softcap

    def _backward(ctx, grad_losses: Tensor, grad_lse: Tensor | None):
        logits, targets, lse = ctx.saved_tensors
        return _triton_backward(logits, targets, lse, grad_losses, ctx.softcap), None, None

    _triton_forward.register_autograd(_backward, setup_context=_setup_context)


def triton_softcapped_ce(logits: Tensor, targets: Tensor, softcap: float) -> Tensor:
    if triton is None:
        raise RuntimeError("fused_ce: backend 'triton' needs the triton package")
    if not logits.is_cuda:
        raise RuntimeError(f"fused_ce: backend 'triton' needs CUDA tensors, got logits on {logits.device}")
    return _triton_forward(logits, targets, float(softcap))[0]


def softcapped_cross_entropy(logits: Tensor, targets: Tensor, softcap: float, backend: str = "auto",
                             chunk_rows: int = 4096) -> Tensor:
    """Per-row `cross_entropy(softcap·tanh(logits/softcap), targets)` in fp32; logits (N, V), targets (N,)."""
    if backend == "triton" or (backend == "auto" and triton is not None and logits.is_cuda):
        return triton_softcapped_ce(logits, targets, softcap)
    return torch_softcapped_ce(logits, targets, softcap, chunk_rows)


class FusedSoftcapCrossEntropy(nn.Module):
    """The "loss" slot: the core's head (`model.project`), then the fused softcapped CE."""

    def __init__(self, backend: str, chunk_rows: int):
        super().__init__()
        self.backend, self.chunk_rows = backend, chunk_rows

    def forward(self, model: nn.Module, h: Tensor, target_ids: Tensor, reduce: bool) -> Tensor:
        proj = model.project(h.reshape(-1, h.size(-1)))
        losses = softcapped_cross_entropy(proj, target_ids.reshape(-1), model.logit_softcap, self.backend,
                                          self.chunk_rows)
        return losses.mean() if reduce else losses.view_as(target_ids)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, chunk_rows={self.chunk_rows}"


class FusedCE(Plugin):
    name = "fused_ce"
    family = "training"
    summary = "Softcap + cross-entropy fused (Triton kernels on CUDA, chunked torch elsewhere): no fp32 logits kept."
    sources = ("openai/parameter-golf#1787", "openai/parameter-golf#1855")
    config = FusedCEConfig
    provides = ("loss",)  # the model's loss slot has one provider
    test_settings = {"fused_ce": {"chunk_rows": 48}}

    @classmethod
    def check_config(cls, cfg: FusedCEConfig, core) -> list[str]:
        if cfg.backend == "triton" and triton is None:
            return ["fused_ce.backend: 'triton' needs the triton package (not importable here); use auto or torch"]
        return range_errors(cls.name, cfg, chunk_rows=(1, 2**24))  # past a batch's rows: one chunk

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot != "loss" or layer is not None:
            return None
        return FusedSoftcapCrossEntropy(self.cfg.backend, self.cfg.chunk_rows)
