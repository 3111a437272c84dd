"""Orthogonal init with the muP-style output scale, exactly as PR #315's GPT init (from PR #65/#162).

Every nn.Linear marked `_zero_init` is zeroed; every other one with both dimensions >= 64 gets
orthogonal_(gain=1), and if its name ends in `.proj` (or contains `.proj.`) it is then scaled by
1/sqrt(2·num_layers). The block projections (attn.proj, mlp.proj) are `_zero_init`, so they stay zero
and the scale lands only on extra `*.proj` modules such as the BigramHash projection (techniques §6.2).

`banked = true` is the init of the parameter-bank records (PR #549 -> #609): their blocks hold no nn.Linear
(`torch.empty` banks: no draw while the model is built, so the RNG state is put back after the blocks are
made) and `_init_weights` draws the block matrices first, layer by layer (Q, K, V, MLP up; out/down zero,
whatever their size), then the other linears in module order (those >= min_dim). `bank_order = "attn_first"` is
PR #1855's loop: Q, K, V of every layer, then every layer's MLP up (PR #609 draws them layer by layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class OrthoInitConfig:
    mup_proj_scale: bool = field(default=True, metadata={"help": "scale non-zero-init *.proj by 1/sqrt(2L)"})
    min_dim: int = field(default=64, metadata={"help": "only matrices with both dims >= this are re-initialised"})
    banked: bool = field(default=False, metadata={
        "help": "the bank records' order (#609): block matrices drawn first and only here, then the other linears"})
    bank_order: str = field(default="layer", metadata={"help": "banked: layer (#609) | attn_first (#1855)"})


def is_proj_name(name: str) -> bool:
    return ".proj." in name or name.endswith(".proj")


@torch.no_grad()
def orthogonal_init(model: nn.Module, num_layers: int, mup_proj_scale: bool = True, min_dim: int = 64,
                    banked: bool = False, attn_first: bool = False) -> None:
    """The record's `_init_weights` loop over nn.Linear modules (the token embedding is left alone); `banked`:
    the blocks' linears first, each drawn whatever its size (the bank records' per-layer loop); `attn_first`:
    of those, every block's attention linears before any block's MLP linears (#1855's two loops)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    in_bank = {name for name, _ in linears if banked and name.startswith("blocks.")}
    for name, module in sorted(linears, key=lambda nm: (nm[0] not in in_bank, attn_first and ".mlp." in nm[0])):
        if getattr(module, "_zero_init", False):
            nn.init.zeros_(module.weight)
        elif name in in_bank or min(module.weight.shape) >= min_dim:
            nn.init.orthogonal_(module.weight, gain=1.0)
            if mup_proj_scale and is_proj_name(name) and name not in in_bank:
                module.weight.mul_(1.0 / math.sqrt(2 * num_layers))


class OrthoInit(Plugin):
    name = "orthoinit"
    family = "model"
    summary = "Orthogonal init of large linear weights; 1/sqrt(2L) on non-zero-init *.proj (muP-style)."
    sources = ("openai/parameter-golf#65", "openai/parameter-golf#162", "openai/parameter-golf#315")
    config = OrthoInitConfig
    test_settings = {"orthoinit": {"min_dim": 16}}

    @classmethod
    def check_config(cls, cfg: OrthoInitConfig, core) -> list[str]:
        errors = range_errors(cls.name, cfg, min_dim=(1, 2**20))
        if cfg.bank_order in ("layer", "attn_first"):
            return errors
        return [*errors, f"orthoinit.bank_order: expected layer or attn_first, got {cfg.bank_order!r}"]

    @hookimpl(tryfirst=True)  # the RNG state is put back before any plugin's "after_blocks" module draws
    def pg_model_modules(self, where, spec) -> None:
        if not self.cfg.banked:
            return None
        if where == "before_blocks":
            self._rng_before_blocks = torch.get_rng_state()
        elif where == "after_blocks":
            torch.set_rng_state(self._rng_before_blocks)  # the banks' torch.empty: the blocks drew nothing
        return None

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        if self.cfg.min_dim < 1:
            raise ValueError(f"orthoinit.min_dim: expected a positive size, got {self.cfg.min_dim}")
        orthogonal_init(model, len(model.blocks), self.cfg.mup_proj_scale, self.cfg.min_dim, self.cfg.banked,
                        self.cfg.bank_order == "attn_first")
