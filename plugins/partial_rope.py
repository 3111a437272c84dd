"""Partial RoPE with the NTK-aware base rescale of PR #315.

RoPE on the first `dims` of each head's dimensions (PR #315: 16 of 64); the others carry no position.
Frequencies are spread over those `dims`. When the sequence is longer than `ntk_train_seq_len` the base
becomes base·(seq_len/ntk_train_seq_len)^(dims/(dims-2)). The record builds its Rotary with a hard-coded
train_seq_len=1024 while training and evaluating at 2048, so in PR #315 the rescaled base is what the
model always sees; `ntk_train_seq_len = 1024` reproduces that, 0 turns the rescale off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.hookspecs import hookimpl
from core.model import Rotary
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class PartialRopeConfig:
    dims: int = field(default=16, metadata={"help": "rotated dims per head (even; 0 = all of head_dim)"})
    ntk_train_seq_len: int = field(default=1024, metadata={
        "help": "rescale the base (NTK) above this sequence length; PR #315's hard-coded 1024; 0 = never"})


def ntk_inv_freq(base: float, dims: int, seq_len: int, train_seq_len: int, device: torch.device) -> Tensor:
    """RoPE frequencies over `dims`, with the base NTK-rescaled when seq_len > train_seq_len > 0."""
    if 0 < train_seq_len < seq_len:
        base = base * (seq_len / train_seq_len) ** (dims / (dims - 2))
    return 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32, device=device) / dims))


class PartialRotary(Rotary):
    """cos/sin over the first `dims` head dims (the core's apply_rotary_emb passes the rest through)."""

    def __init__(self, dims: int, base: float, ntk_train_seq_len: int):
        super().__init__(dims, base=base)
        self.dims, self.base, self.ntk_train_seq_len = dims, base, ntk_train_seq_len

    def inv_freq_for(self, seq_len: int, device: torch.device) -> Tensor:
        if 0 < self.ntk_train_seq_len < seq_len:
            return ntk_inv_freq(self.base, self.dims, seq_len, self.ntk_train_seq_len, device)
        return self.inv_freq.to(device)


class PartialRope(Plugin):
    name = "partial_rope"
    family = "model"
    summary = "RoPE on the first `dims` head dims only (16/64 in PR #315), with its NTK base rescale."
    sources = ("openai/parameter-golf#315",)
    config = PartialRopeConfig
    test_settings = {"partial_rope": {"dims": 8, "ntk_train_seq_len": 32}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        head_dim = core.model_dim // max(core.num_heads, 1)
        return range_errors(cls.name, cfg, dims=(2, head_dim), ntk_train_seq_len=(0, 2**20))

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot != "rotary":
            return None
        dims = self.cfg.dims or spec.head_dim
        if dims % 2 or not 0 < dims <= spec.head_dim:
            raise ValueError(f"partial_rope.dims: expected an even number in 2..head_dim={spec.head_dim} "
                             f"(or 0 = all), got {self.cfg.dims}")
        if self.cfg.ntk_train_seq_len < 0 or (self.cfg.ntk_train_seq_len > 0 and dims <= 2):
            raise ValueError(f"partial_rope.ntk_train_seq_len: expected >= 0 (and dims > 2 when > 0), got "
                             f"{self.cfg.ntk_train_seq_len} with dims={dims}")
        return PartialRotary(dims, spec.rope_base, self.cfg.ntk_train_seq_len)
