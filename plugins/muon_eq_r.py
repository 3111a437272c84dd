"""MuonEq-R: row-normalised Muon for the block matrices (arXiv:2603.28254; PRs #1217/#1260, #1394 → #1493).

After the Nesterov momentum update, each row of the update is divided by its L2 norm (fp32, clamped at
1e-7) before the Newton–Schulz orthogonalisation (PR #1493 `Muon.step`, `MUON_ROW_NORMALIZE=1`); the rest
is the core's Muon: NS5, the sqrt(max(1, rows/cols)) scale, and decoupled weight decay
p <- p·(1 − lr·wd) with the scheduled lr before each update (PR #1493: MUON_WD 0.095).

The learning rate, momentum and its warm-up and the NS steps are the core's settings (MATRIX_LR,
MUON_MOMENTUM, MUON_MOMENTUM_WARMUP_START/_STEPS, MUON_BACKEND_STEPS; PR #1493: 0.022, 0.99, 0.92 over
1500 steps, 5), which the core schedules every step; this plugin brings the row normalisation and the
weight decay. The row normalisation wraps whatever Newton–Schulz function the core installs (it compiles
its own on CUDA), so it cannot be dropped by that assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import Tensor

from core.hookspecs import hookimpl
from core.optim import Muon, zeropower_via_newtonschulz5
from core.registry import Plugin
from plugins.lib.settings import EPS, WD, range_errors


@dataclass
class MuonEqRConfig:
    weight_decay: float = field(default=0.095, metadata={
        "help": "decoupled WD of the matrix group, p·(1 - lr·wd) per step (PR #1493 MUON_WD: 0.095)"})
    row_normalize: bool = field(default=True, metadata={
        "help": "divide each update row by its L2 norm before Newton-Schulz (MUON_ROW_NORMALIZE)"})
    eps: float = field(default=1e-7, metadata={"help": "floor of the row norms"})

    def __post_init__(self) -> None:
        if self.weight_decay < 0 or not self.eps > 0:
            raise ValueError(f"muon_eq_r: expected weight_decay >= 0 and eps > 0, got {self.weight_decay} "
                             f"and {self.eps}")


def normalize_rows(g: Tensor, eps: float) -> Tensor:
    """Each row of `g` divided by its fp32 L2 norm (clamped at eps), in g's dtype (PR #1493)."""
    return g / g.float().norm(dim=-1, keepdim=True).clamp_min(eps).to(g.dtype)


class MuonEqR(Muon):
    """`core.optim.Muon` whose orthogonalisation sees row-normalised updates.

    `zeropower` is a property: assigning it (the core assigns a compiled NS5 on CUDA) replaces the inner
    Newton–Schulz function and keeps the row normalisation in front of it.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float, backend_steps: int,
                 weight_decay: float = 0.0, row_normalize: bool = True, eps: float = 1e-7,
                 zeropower: Callable[..., Tensor] = zeropower_via_newtonschulz5):
        self.row_normalize, self.eps = row_normalize, eps
        super().__init__(params, lr=lr, momentum=momentum, backend_steps=backend_steps, zeropower=zeropower,
                         weight_decay=weight_decay)

    @property
    def zeropower(self) -> Callable[..., Tensor]:
        return self._row_normalized_zeropower

    @zeropower.setter
    def zeropower(self, fn: Callable[..., Tensor]) -> None:
        self.inner_zeropower = fn

    def _row_normalized_zeropower(self, g: Tensor, steps: int, **kw) -> Tensor:
        if self.row_normalize:
            g = normalize_rows(g, self.eps)
        return self.inner_zeropower(g, steps=steps, **kw)


class MuonEqRPlugin(Plugin):
    name = "muon_eq_r"
    family = "training"
    summary = "MuonEq-R: Muon with each update row L2-normalised before Newton-Schulz, plus Muon WD (0.095)."
    sources = ("openai/parameter-golf#1217", "openai/parameter-golf#1260", "openai/parameter-golf#1394",
               "openai/parameter-golf#1493", "arXiv:2603.28254")
    config = MuonEqRConfig
    provides = ("matrix_optimizer",)
    test_settings = {"muon_eq_r": {"weight_decay": 0.0}}

    @classmethod
    def check_config(cls, cfg: MuonEqRConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, weight_decay=(0.0, WD), eps=(1e-30, EPS))

    @hookimpl(tryfirst=True)  # before `weight_decay`, which also answers for the matrix group
    def pg_make_optimizer(self, group: str, params: list, config):
        if group != "matrix":
            return None
        core = config.core
        opt = MuonEqR(params, lr=core.matrix_lr, momentum=core.muon_momentum, backend_steps=core.muon_backend_steps,
                      weight_decay=self.cfg.weight_decay, row_normalize=self.cfg.row_normalize, eps=self.cfg.eps)
        for g in opt.param_groups:
            g["base_lr"] = core.matrix_lr
        return opt

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update(muon_row_normalize=self.cfg.row_normalize, muon_wd=self.cfg.weight_decay)
