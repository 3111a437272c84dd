"""Muon (Newton–Schulz 5 orthogonalised momentum, from modded-nanogpt) and the baseline's Adam groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.model import CONTROL_TENSOR_NAME_PATTERNS, GROUP_ATTR

NS5_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G: Tensor, steps: int = 10, eps: float = 1e-7,
                                coeffs: tuple[tuple[float, float, float], ...] | None = None) -> Tensor:
    """Approximately orthogonalise a 2-D matrix (bf16 quintic Newton–Schulz iteration).

    `coeffs`: one (a, b, c) per iteration, the first `steps` of them (so at most len(coeffs) iterations);
    None: NS5_COEFFS for all `steps`. A Muon param group's "ns_coeffs" arrives here.
    """
    schedule = (NS5_COEFFS,) * steps if coeffs is None else coeffs[:steps]
    X = G.bfloat16()
    X /= X.norm() + eps
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for a, b, c in schedule:
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, NS5-orthogonalised, scaled by sqrt(max(1, rows/cols)); work split over ranks.

    A param group's "ns_coeffs" (default absent: NS5) is passed to the Newton–Schulz function as `coeffs`.
    `weight_decay` > 0 is decoupled decay before each update, p <- p·(1 - lr·wd) with the scheduled lr
    (PR #60/#65 on; 0.04 in PR #315).
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float, backend_steps: int, nesterov: bool = True,
                 zeropower: Callable[..., Tensor] = zeropower_via_newtonschulz5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.zeropower = zeropower

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            total = sum(int(p.numel()) for p in params)
            updates_flat = torch.zeros(total, device=params[0].device, dtype=torch.bfloat16)
            curr = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=momentum)
                    coeffs = group.get("ns_coeffs")  # a per-iteration schedule (polar_express), else NS5
                    ns = {} if coeffs is None else {"coeffs": coeffs}
                    g = self.zeropower(g, steps=group["backend_steps"], **ns)
                    g *= max(1, g.size(0) / g.size(1)) ** 0.5
                    updates_flat[curr : curr + p.numel()] = g.reshape(-1)
                curr += p.numel()
            if distributed:
                dist.all_reduce(updates_flat, op=dist.ReduceOp.SUM)
            wd = group.get("weight_decay", 0.0)
            curr = 0
            for p in params:
                if wd > 0.0:
                    p.mul_(1.0 - lr * wd)
                g = updates_flat[curr : curr + p.numel()].view_as(p).to(dtype=p.dtype)
                p.add_(g, alpha=-lr)
                curr += p.numel()
        return loss


def default_param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The baseline split: token embedding, untied head, block matrices (Muon), everything else (scalar).

    Parameters of plugin modules follow the same shape rule: embedding tables join "token", other
    matrices "matrix", vectors and control tensors "scalar", unless marked with `join_group`; plugins
    refine this in `pg_param_groups`.
    """
    groups: dict[str, list[nn.Parameter]] = {"token": [], "head": [], "matrix": [], "scalar": []}
    embedding_params = {
        id(m.weight) for name, m in model.named_modules() if isinstance(m, nn.Embedding) and name != "tok_emb"
    }
    for name, p in model.named_parameters():
        if getattr(p, GROUP_ATTR, None):
            groups.setdefault(getattr(p, GROUP_ATTR), []).append(p)
        elif name == "tok_emb.weight":
            groups["token"].append(p)
        elif name.startswith("lm_head."):
            groups["head"].append(p)
        elif id(p) in embedding_params:
            groups["token"].append(p)
        elif p.ndim == 2 and not any(pat in name for pat in CONTROL_TENSOR_NAME_PATTERNS):
            groups["matrix"].append(p)
        else:
            groups["scalar"].append(p)
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
        opt = Muon(params, lr=core.matrix_lr, momentum=core.muon_momentum, backend_steps=core.muon_backend_steps)
        for g in opt.param_groups:
            g["base_lr"] = core.matrix_lr
        return opt
    return None
