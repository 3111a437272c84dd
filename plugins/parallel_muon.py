"""Parallel Muon with parameter banks: same-shape matrices orthogonalised together, sharded over ranks (PR #399
→ #549, the optimizer of PR #609/#1019's `Muon` and PR #1855's record).

The records store the block matrices as four 3-D banks (`qo_bank`, `kv_bank`, `mlp_up_bank`,
`mlp_down_bank`). With `banks` (default) so does the model: at build time (`pg_edit_model`, after the other
plugins' class swaps) the blocks' CastedLinear matrices become one (B, rows, cols) parameter per shape in
`model.param_banks` (role-major, as the record: the Q of every layer, then every out projection), and each linear
reads its row `bank[i]` in the forward (`BankedWeight`: a property, nothing inside the compiled region), so autograd
accumulates one gradient per bank (PR #1855 on one H200: 924 AccumulateGrad `add_` per step over 66 matrices). The
linear keeps its `weight` Parameter as a frozen alias of that row's storage (re-pointed after any move or cast;
the banks keep their dtype: fp32 master weights), so everything that names per-layer weights is unaware: the
state_dict and the artifact hold per-layer keys and bytes (the banks write nothing; loading a per-layer weight
writes the bank row), GPTQ's targets and write-back, EMA/SWA, init hooks and QAT (which read `module.weight`).
Only the optimizer groups see the banks (the "matrix" group). `banks = false` keeps per-layer parameters and
the optimizer stacks their gradients into banks each step. Same-shape matrices are orthogonalised together by
batched Newton–Schulz (the core's `zeropower_via_newtonschulz5`, or the compiled one the core assigns on CUDA).
With W ranks, as the record's `Muon`:
1. `launch_reduce_scatters`: each bank's gradient (bf16, B padded to a multiple of W, biggest bank first) is
   reduce-scattered asynchronously (mean over ranks), so each rank holds B/W matrices of the batch gradient;
2. `step`: per bank, wait for its shard, Nesterov momentum on the shard (the momentum lives only there),
   batched NS, an async all-gather of the orthogonalised shard; the previous bank's gathered update is
   applied (decoupled WD, then `p -= lr·sqrt(max(1, rows/cols))·update`) while this one computes.
The core's DDP all-reduce skips these parameters (the optimizer's `reduces_own_grads`; `core.train.setup`),
so the gradient is reduced once. The reduce-scatters start in `pg_before_step`, before the other groups'
Adam steps. With GRAD_CLIP_NORM > 0 on W ranks the clip needs the reduced gradient: `pg_before_step` waits
for the shards, computes the global norm (shards all-reduced plus the DDP-reduced rest) and scales both;
the records clip each rank's local gradients before reducing, which gives ranks different clip factors.

It wraps whichever Muon makes the matrix group: hyperparameters (lr, momentum, nesterov, backend steps,
weight decay, Polar Express `ns_coeffs`) come from its param groups, `muon_eq_r`'s row normalisation from
the optimizer. Precision follows the record: gradients are communicated and momentum is kept in bf16, NS
runs in bf16 (`grad_dtype`, `ns_dtype`: float32 gives the core Muon's fp32 momentum).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import GROUP_ATTR, CastedLinear, join_group
from core.optim import Muon, default_param_groups
from core.registry import Plugin

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ParallelMuonConfig:
    grad_dtype: str = field(default="bfloat16", metadata={
        "help": "dtype of the communicated gradient and the momentum (PR #609/#1855: bfloat16)"})
    ns_dtype: str = field(default="bfloat16", metadata={
        "help": "dtype of the batched Newton-Schulz iteration and the gathered update (records: bfloat16)"})
    banks: bool = field(default=True, metadata={
        "help": "the block matrices are 3-D bank parameters, one per shape (PR #1855's qo/kv/mlp_up/mlp_down); "
                "false: per-layer parameters, stacked by the optimizer each step"})

    def __post_init__(self) -> None:
        for name in ("grad_dtype", "ns_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"parallel_muon.{name}: expected one of {tuple(DTYPES)}, got {getattr(self, name)!r}")


class BankedWeight:
    """Mixin for a CastedLinear (or its QAT subclass) whose `weight` is row `_pg_index` of a bank parameter:
    the forward reads the bank, so autograd accumulates one gradient per bank. The module keeps its own
    `weight` Parameter (requires_grad False) as an alias of that row's storage, so named_parameters, the
    state_dict, load_state_dict and in-place edits keep per-layer names and bytes."""

    @property
    def weight(self) -> Tensor:
        return getattr(self._pg_banks, self._pg_bank)[self._pg_index]

    def _apply(self, fn, recurse=True):  # a cast of this module alone (CastedLinear.float()) keeps the alias
        out = super()._apply(fn, recurse)
        self._pg_banks.realias(self)
        return out

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._pg_banks.realias(self)


_BANKED_CLASSES: dict[type, type] = {}


def banked_class(cls: type) -> type:
    if cls not in _BANKED_CLASSES:
        name = f"Banked{cls.__name__}"
        _BANKED_CLASSES[cls] = globals()[name] = type(name, (BankedWeight, cls), {"__module__": __name__})
    return _BANKED_CLASSES[cls]  # (a module global: a pickled model finds its class)


class ParamBanks(nn.Module):
    """The banks: one (B, rows, cols) parameter per weight shape of the blocks' matrices, in module order.
    It writes nothing to the state_dict (the per-layer aliases carry the values) and keeps its dtype under
    casts (fp32 master weights, as the core keeps CastedLinear's); after any move it re-points the aliases."""

    def __init__(self, members: dict[str, list[nn.Module]]):
        super().__init__()
        for key, modules in members.items():
            bank = torch.stack([m.weight.detach() for m in modules])
            self.register_parameter(key, join_group(nn.Parameter(bank), "matrix"))
        self.members = members  # a plain dict: the linears stay where they are in the module tree
        for key, modules in members.items():
            for i, m in enumerate(modules):
                m._parameters["weight"].requires_grad_(False)
                object.__setattr__(m, "_pg_banks", self)  # not a submodule
                m._pg_bank, m._pg_index = key, i
                m.__class__ = banked_class(type(m))
        self.realias()

    def realias(self, only: nn.Module | None = None) -> None:
        """Point each member's weight at its bank row (a deepcopy restores modules in any order: one not restored
        yet is skipped here and re-points itself in its own `__setstate__`)."""
        if "_parameters" not in self.__dict__:
            return
        for key, modules in self.members.items():
            bank = self._parameters[key]
            for i, m in enumerate(modules):
                w = m.__dict__.get("_parameters", {}).get("weight")
                if (only is None or m is only) and w is not None and w.data_ptr() != bank[i].data_ptr():
                    w.data = bank.data[i]

    def aliased(self) -> bool:
        return all(m._parameters["weight"].data_ptr() == getattr(self, key)[i].data_ptr()
                   for key, modules in self.members.items() for i, m in enumerate(modules))

    def __setstate__(self, state) -> None:  # a deepcopy or unpickling makes new aliases: re-point them
        super().__setstate__(state)
        self.realias()

    def _apply(self, fn, recurse=True):
        def keep_dtype(t: Tensor) -> Tensor:  # a move applies, a cast does not (the values stay fp32)
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(out.device)

        out = super()._apply(keep_dtype, recurse)
        self.realias()
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        pass  # the per-layer weights load into the aliases, i.e. into the banks


def install_banks(model: nn.Module) -> ParamBanks | None:
    """Bank the blocks' matrix weights (CastedLinear weights in the core's "matrix" group without a group mark:
    trainable, 2-D, not a control tensor) by shape, as `model.param_banks`; None when there are none."""
    found: dict[str, list[tuple[str, int, nn.Module]]] = {}
    roles: dict[str, int] = {}  # "attn.c_q" ..., in first-seen order
    matrices = {id(p) for p in default_param_groups(model)["matrix"]}
    for name, m in model.named_modules():
        w = m._parameters.get("weight") if isinstance(m, CastedLinear) else None
        if not name.startswith("blocks.") or w is None or id(w) not in matrices or getattr(w, GROUP_ATTR, None):
            continue
        _, layer, role = name.split(".", 2)
        roles.setdefault(role, len(roles))
        found.setdefault("bank_{}x{}".format(*w.shape), []).append((role, int(layer), m))
    if not found:
        return None
    # role-major, as the record's banks: qo_bank = Q of every layer, then every out projection
    members = {k: [m for _, _, m in sorted(v, key=lambda t: (roles[t[0]], t[1]))] for k, v in found.items()}
    model.param_banks = ParamBanks(members)
    return model.param_banks


@dataclass
class Bank:
    """Same-shape matrices of one param group, stacked: `grads` (padded B, r, c) is the reduce-scatter input,
    `shard` this rank's rows of the mean gradient, `gathered` the all-gathered update."""

    group: int  # index into param_groups (load_state_dict replaces the group dicts)
    params: list[Tensor]
    grads: Tensor
    shard: Tensor
    gathered: Tensor
    scale: float
    has_grad: list[bool] = field(default_factory=list)
    work: Any = None
    real: bool = False  # params is one 3-D bank parameter (ParamBanks): its gradient is the stack already


class ParallelMuon(Muon):
    """Muon over parameter banks: batched Newton–Schulz, sharded over the process group's ranks."""

    reduces_own_grads = True  # core.train.setup leaves these parameters out of DDP's gradient all-reduce

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True,
                 weight_decay: float = 0.0, row_normalize: bool = False, eps: float = 1e-7,
                 grad_dtype: torch.dtype = torch.bfloat16, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                         weight_decay=weight_decay)
        for p in (p for g in self.param_groups for p in g["params"]):
            if p.ndim not in (2, 3):
                raise ValueError(f"parallel_muon: Muon parameters must be matrices or banks of them, got shape "
                                 f"{tuple(p.shape)}")
        self.row_normalize, self.eps = row_normalize, eps
        self.grad_dtype, self.ns_dtype = grad_dtype, ns_dtype
        self.banks: list[Bank] | None = None  # built at the first step, once the process group exists
        self.launched = False
        self.reduced = False

    @classmethod
    def from_muon(cls, opt: Muon, grad_dtype: torch.dtype, ns_dtype: torch.dtype) -> ParallelMuon:
        """The same param groups and settings as `opt` (the core's Muon, or `muon_eq_r`'s)."""
        if type(opt) is not Muon and not hasattr(opt, "row_normalize"):
            raise ValueError(f"parallel_muon: cannot bank {type(opt).__name__}: it changes Muon in a way the "
                             f"banked update does not reproduce (supported: core Muon, muon_eq_r)")
        first = opt.param_groups[0]
        new = cls(opt.param_groups[0]["params"], lr=first["lr"], momentum=first["momentum"],
                  backend_steps=first["backend_steps"], nesterov=first["nesterov"],
                  row_normalize=getattr(opt, "row_normalize", False), eps=getattr(opt, "eps", 1e-7),
                  grad_dtype=grad_dtype, ns_dtype=ns_dtype)
        new.param_groups[0].update({k: v for k, v in first.items() if k != "params"})
        for g in opt.param_groups[1:]:
            new.add_param_group(dict(g))
        return new

    # --- banks and communication ---------------------------------------------------------------------
    @staticmethod
    def _world() -> tuple[int, bool]:
        on = dist.is_available() and dist.is_initialized()
        return (dist.get_world_size() if on else 1), on

    def _build(self) -> list[Bank]:
        world, _ = self._world()
        banks = []
        for gi, group in enumerate(self.param_groups):
            by_shape: dict[tuple, list[Tensor]] = {}
            for p in group["params"]:
                key = (tuple(p.shape), p.device) if p.ndim == 2 else (id(p), p.device)  # a bank is its own
                by_shape.setdefault(key, []).append(p)
            for (_, device), params in by_shape.items():
                real = params[0].ndim == 3
                count, shape = (params[0].size(0), params[0].shape[1:]) if real else (len(params), params[0].shape)
                padded = -(-count // world) * world
                grads = torch.zeros(padded, *shape, device=device, dtype=self.grad_dtype)
                shard = grads if world == 1 else grads.new_zeros(padded // world, *shape)
                gathered = torch.zeros(padded, *shape, device=device, dtype=self.ns_dtype)
                banks.append(Bank(gi, params, grads, shard, gathered, max(1.0, shape[0] / shape[1]) ** 0.5,
                                  real=real))
        banks.sort(key=lambda b: -b.grads.numel())  # biggest reduce-scatter first, as the record
        return banks

    @torch.no_grad()
    def launch_reduce_scatters(self) -> None:
        """Stack each bank's gradients (a missing gradient counts as zeros) and start its reduce-scatter."""
        if self.banks is None:
            self.banks = self._build()
        world, distributed = self._world()
        nccl = distributed and dist.get_backend() == "nccl"
        for bank in self.banks:
            bank.has_grad = [p.grad is not None for p in bank.params]
            if bank.real:  # the bank's own gradient: used as it is on one rank, else one copy (cast, padding)
                grad = bank.params[0].grad
                if world == 1 and grad is not None and grad.dtype == self.grad_dtype:
                    bank.grads = bank.shard = grad
                elif grad is not None:
                    bank.grads[: grad.size(0)].copy_(grad)
                else:
                    bank.grads.zero_()
            else:
                rows = [bank.grads[i] for i in range(len(bank.params))]
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bank.params]
                torch._foreach_copy_(rows, grads)
            if world > 1:  # gloo has no AVG: SUM here, divided by W when the shard arrives
                op = dist.ReduceOp.AVG if nccl else dist.ReduceOp.SUM
                bank.work = _reduce_scatter(bank.shard, bank.grads, op)
        self.launched, self.reduced = True, False

    def _wait(self, bank: Bank) -> None:
        if bank.work is not None:
            bank.work.wait()
            bank.work = None
            if dist.get_backend() != "nccl":
                bank.shard.div_(self._world()[0])

    @torch.no_grad()
    def finish_reduce_scatters(self) -> None:
        for bank in self.banks or []:
            self._wait(bank)
        self.reduced = True

    @torch.no_grad()
    def reduced_grad_sq_norm(self) -> Tensor:
        """Squared L2 norm of the rank-mean gradient of every banked matrix (all ranks agree; no host sync)."""
        self.finish_reduce_scatters()
        total = sum(b.shard.float().square().sum() for b in self.banks)
        if self._world()[0] > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @torch.no_grad()
    def scale_reduced_grads(self, factor: Tensor) -> None:
        for bank in self.banks:
            bank.shard.mul_(factor.to(bank.shard.dtype))

    # --- the step ------------------------------------------------------------------------------------
    def _momentum(self, bank: Bank) -> Tensor:
        state = self.state[bank.params[0]]
        buf = state.get("bank_momentum")
        if buf is None or buf.shape != bank.shard.shape or buf.dtype != self.grad_dtype:
            # absent, or cast to the parameter's dtype by load_state_dict
            buf = torch.zeros_like(bank.shard) if buf is None else buf.to(self.grad_dtype)
            state["bank_momentum"] = buf
        return buf

    def _apply(self, bank: Bank, update: Tensor) -> None:
        group = self.param_groups[bank.group]
        lr, wd = group["lr"], group.get("weight_decay", 0.0)
        if wd > 0.0 and not group.get("decay_after"):
            torch._foreach_mul_(bank.params, 1.0 - lr * wd)
        dtype = bank.params[0].dtype
        if bank.real:
            if bank.has_grad[0]:
                p = bank.params[0]
                p.add_(update[: p.size(0)].to(dtype), alpha=-lr * bank.scale)
        else:
            live = [i for i, has in enumerate(bank.has_grad) if has]
            torch._foreach_add_([bank.params[i] for i in live], [update[i].to(dtype) for i in live],
                                alpha=-lr * bank.scale)
        if wd > 0.0 and group.get("decay_after"):  # weight_decay.muon_after_update (PR #534)
            torch._foreach_mul_(bank.params, 1.0 - lr * wd)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.launched:
            self.launch_reduce_scatters()
        world, _ = self._world()
        previous = None
        for bank in self.banks:
            group = self.param_groups[bank.group]
            self._wait(bank)
            g, momentum = bank.shard, group["momentum"]
            buf = self._momentum(bank)
            buf.mul_(momentum).add_(g)
            update = g.add(buf, alpha=momentum) if group["nesterov"] else buf
            if self.row_normalize:  # muon_eq_r: each row over its fp32 L2 norm
                update = update / update.float().norm(dim=-1, keepdim=True).clamp_min(self.eps).to(update.dtype)
            ns = {} if group.get("ns_coeffs") is None else {"coeffs": group["ns_coeffs"]}
            update = self.zeropower(update, steps=group["backend_steps"], dtype=self.ns_dtype, **ns)
            if world == 1:
                self._apply(bank, update)
                continue
            work = _all_gather(bank.gathered, update.contiguous())
            if previous is not None:  # the previous bank's update lands while this one's gathers
                previous[1].wait()
                self._apply(previous[0], previous[0].gathered)
            previous = (bank, work)
        if previous is not None:
            previous[1].wait()
            self._apply(previous[0], previous[0].gathered)
        self.launched = self.reduced = False
        return loss


def _reduce_scatter(out: Tensor, inp: Tensor, op: Any) -> Any:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, inp, op=op, async_op=True)


def _all_gather(out: Tensor, inp: Tensor) -> Any:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, async_op=True)


@torch.no_grad()
def clip_global_grad_norm(opt: ParallelMuon, others: list[Tensor], max_norm: float) -> Tensor:
    """Clip the batch gradient as one process would: the norm of the banked shards (all ranks) and of the
    other (already reduced, replicated) gradients `others`; scales both in place and returns the norm."""
    sq = opt.reduced_grad_sq_norm()
    if others:
        sq = sq + torch.stack(torch._foreach_norm([g.float() for g in others])).square().sum()
    norm = sq.sqrt()
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    opt.scale_reduced_grads(factor)
    if others:
        torch._foreach_mul_(others, factor)
    return norm


class ParallelMuonPlugin(Plugin):
    name = "parallel_muon"
    family = "training"
    summary = ("Muon over parameter banks: batched Newton-Schulz per matrix shape; on W ranks reduce-scatter, "
               "sharded NS, all-gather (PR #549/#609).")
    sources = ("openai/parameter-golf#399", "openai/parameter-golf#549", "openai/parameter-golf#609",
               "openai/parameter-golf#1019", "openai/parameter-golf#1855")
    config = ParallelMuonConfig
    test_settings = {"parallel_muon": {}}

    @classmethod
    def check_peers(cls, cfg: ParallelMuonConfig, peers: dict[str, Any]) -> list[str]:
        ttt = peers.get("score_first_ttt")
        if cfg.banks and ttt is not None and getattr(ttt, "freeze_blocks", 0) > 0:
            return ["parallel_muon.banks: true with score_first_ttt.freeze_blocks > 0 (a bank holds every layer's "
                    "matrix: the first blocks cannot be frozen alone); set parallel_muon.banks=false"]
        return []

    @hookimpl(trylast=True)  # after the class swaps of other plugins' pg_edit_model (late_qat, soft_round_qat)
    def pg_edit_model(self, model, spec, config) -> None:
        if self.cfg.banks:
            install_banks(model)

    @hookimpl(wrapper=True)
    def pg_make_optimizer(self, group: str, params: list, config):
        opt = yield
        if group == "matrix" and isinstance(opt, Muon) and not isinstance(opt, ParallelMuon):
            opt = ParallelMuon.from_muon(opt, DTYPES[self.cfg.grad_dtype], DTYPES[self.cfg.ns_dtype])
        return opt

    @hookimpl
    def pg_train_start(self, run) -> None:
        for opt in run.optimizers:
            if isinstance(opt, ParallelMuon):
                params = [p for g in opt.param_groups for p in g["params"]]
                skipped = len(getattr(run.train_model, "parameters_to_ignore", ()))  # DDP's set of names
                shapes = {tuple(p.shape[-2:]) for p in params}
                matrices = sum(p.size(0) if p.ndim == 3 else 1 for p in params)
                run.log(f"parallel_muon:banks:{len(shapes)} matrices:{matrices} params:{len(params)} "
                        f"world_size:{run.world_size} ddp_skips:{skipped}")
        banks = getattr(run.model, "param_banks", None)
        if isinstance(banks, ParamBanks) and not banks.aliased():
            raise RuntimeError("parallel_muon: a per-layer weight no longer shares its bank's storage (was the "
                               "model cast or moved by .data assignment outside Module._apply?)")

    @hookimpl
    def pg_before_step(self, run, step: int, clock) -> None:
        if not run.distributed:
            return
        for opt in run.optimizers:
            if not isinstance(opt, ParallelMuon):
                continue
            opt.launch_reduce_scatters()
            if run.core.grad_clip_norm > 0:  # the core's clip must not see the local (unreduced) bank grads
                banked = {id(p) for g in opt.param_groups for p in g["params"]}
                others = [p.grad for p in run.model.parameters() if p.grad is not None and id(p) not in banked]
                clip_global_grad_norm(opt, others, run.core.grad_clip_norm)
                for g in opt.param_groups:
                    for p in g["params"]:
                        p.grad = None
