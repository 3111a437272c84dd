"""`Switch`: the mid-run on/off switch that plugins flip in compiled code (late QAT, soft-round QAT).

DESIGN.md "Compiled-graph safety": a switch that flips mid-run is a registered buffer read in the forward,
never a Python attribute the compiler may fold.
"""

from __future__ import annotations

import torch
from torch import nn


class Switch(nn.Module):
    """A mid-run on/off switch read by compiled code: a float buffer flipped in place. A Python attribute may
    be constant-folded (the record bug that kept late QAT off); a buffer is a graph input, so `set()` changes
    the compiled output with no recompile. Read it as a tensor: `w + self.switch.value * delta`."""

    def __init__(self, on: bool = False):
        super().__init__()
        self.register_buffer("value", torch.tensor(1.0 if on else 0.0), persistent=False)

    @torch.no_grad()
    def set(self, on: bool | float) -> None:
        self.value.fill_(float(on))

    def is_on(self) -> bool:
        return bool(self.value.item() != 0.0)
