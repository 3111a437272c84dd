"""Muon (Newton–Schulz 5 orthogonalised momentum, from modded-nanogpt) and the baseline's Adam groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.model import CONTROL_TENSOR_NAME_PATTERNS, GROUP_ATTR

NS5_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G: Tensor, steps: int = 10, eps: float = 1e-7,
                                coeffs: tuple[tuple[float, float, float], ...] | None = None,
                                dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Orthogonalise each matrix of G (..., rows, cols) by the quintic Newton–Schulz iteration in `dtype`, each over
    its own norm. `coeffs` (a Muon group's "ns_coeffs"): one (a, b, c) per iteration, the first `steps`, as c·(A@A)
    (PR #1855's Polar Express order); None: NS5_COEFFS for all `steps`, as (c·A)@A (the baseline's order)."""
    schedule = (NS5_COEFFS,) * steps if coeffs is None else coeffs[:steps]
    X = G.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    for a, b, c in schedule:
        A = X @ X.mT
        B = b * A + (c * A @ A if coeffs is None else c * (A @ A))
        X = a * X + B @ X
    return X.mT if transposed else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, NS5-orthogonalised (same-shape matrices in one batched call), scaled by
    sqrt(max(1, rows/cols)); matrix i of a group is computed by rank i % world, the bf16 updates all-reduced.

    A param group's "ns_coeffs" (default absent: NS5) is passed to the Newton–Schulz function as `coeffs`.
    `weight_decay` > 0 is decoupled decay before each update, p <- p·(1 - lr·wd) with the scheduled lr
    (PR #60/#65 on; 0.04 in PR #315)."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float, backend_steps: int, nesterov: bool = True,
                 zeropower: Callable[..., Tensor] = zeropower_via_newtonschulz5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.zeropower = zeropower

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        with torch.enable_grad():
            loss = None if closure is None else closure()
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            lr, momentum, wd = group["lr"], group["momentum"], group.get("weight_decay", 0.0)
            mine = [p for i, p in enumerate(params) if i % world_size == rank and p.grad is not None]
            for p in (p for p in mine if "momentum_buffer" not in self.state[p]):
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            grads, bufs = [p.grad for p in mine], [self.state[p]["momentum_buffer"] for p in mine]
            if mine:  # (the foreach ops refuse empty lists)
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                if group["nesterov"]:
                    grads = torch._foreach_add(grads, bufs, alpha=momentum)
            update = dict(zip(map(id, mine), grads, strict=True))  # the Nesterov gradient of each param
            coeffs = group.get("ns_coeffs")  # a per-iteration schedule (polar_express), else NS5
            ns = {"steps": group["backend_steps"], **({} if coeffs is None else {"coeffs": coeffs})}
            banks: dict[tuple, list[Tensor]] = {}  # same-shape params in group order: one batched NS each
            for p in params:
                banks.setdefault((p.shape, p.dtype, p.device), []).append(p)
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.bfloat16)
            sizes = [len(ps) * ps[0].numel() for ps in banks.values()]  # bank by bank: the same on all ranks
            blocks = [(b.view(-1, *ps[0].shape), ps) for b, ps in zip(flat.split(sizes), banks.values(), strict=True)]
            for block, ps in blocks:
                if ks := [k for k, p in enumerate(ps) if id(p) in update]:
                    g = torch.stack([update[id(ps[k])] for k in ks])
                    g = self.zeropower(g if len(ks) > 1 else g[0], **ns)  # a lone matrix in 2-D, bits as before
                    g *= max(1, g.size(-2) / g.size(-1)) ** 0.5
                    torch._foreach_copy_([block[k] for k in ks], list(g) if g.ndim == 3 else [g])
            if distributed:  # each rank filled its own matrices (i % world == rank), zeros elsewhere
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for block, ps in blocks:
                if wd > 0.0 and not group.get("decay_after"):
                    torch._foreach_mul_(ps, 1.0 - lr * wd)
                torch._foreach_add_(ps, list(block.to(ps[0].dtype)), alpha=-lr)
                if wd > 0.0 and group.get("decay_after"):  # PR #534: p <- (p - lr·update)·(1 - lr·wd)
                    torch._foreach_mul_(ps, 1.0 - lr * wd)
        return loss


def default_param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The baseline split: token embedding, untied head, block matrices (Muon), everything else (scalar).

    Parameters of plugin modules follow the same shape rule: embedding tables join "token", other
    matrices "matrix", vectors and control tensors "scalar", unless marked with `join_group`; plugins
    refine this in `pg_param_groups`. Frozen parameters (requires_grad False) join no group."""
    groups: dict[str, list[nn.Parameter]] = {"token": [], "head": [], "matrix": [], "scalar": []}
    embedding_params = {id(m.weight) for name, m in model.named_modules()
                        if isinstance(m, nn.Embedding) and name != "tok_emb"}
    for name, p in [(n, p) for n, p in model.named_parameters() if p.requires_grad]:
        token = name == "tok_emb.weight" or id(p) in embedding_params
        matrix = p.ndim == 2 and not any(pat in name for pat in CONTROL_TENSOR_NAME_PATTERNS)
        group = getattr(p, GROUP_ATTR, None) or (
            "head" if name.startswith("lm_head.") else "token" if token else "matrix" if matrix else "scalar")
        groups.setdefault(group, []).append(p)
    return groups


def make_default_optimizer(group: str, params: list[Tensor], core, fused: bool) -> torch.optim.Optimizer | None:
    """The baseline's optimizer for one of the four default groups (None for an unknown group)."""
    adam_lrs = {"token": core.tied_embed_lr if core.tie_embeddings else core.embed_lr, "head": core.head_lr,
                "scalar": core.scalar_lr}
    if group in adam_lrs:
        lr = adam_lrs[group]
        return torch.optim.Adam([{"params": params, "lr": lr, "base_lr": lr}], betas=(core.beta1, core.beta2),
                                eps=core.adam_eps, fused=fused)
    if group == "matrix":
        return Muon([{"params": params, "base_lr": core.matrix_lr}], lr=core.matrix_lr, momentum=core.muon_momentum,
                    backend_steps=core.muon_backend_steps)
