"""Overtone spectral embedding init and phase resid_mix (PR #60, record
2026-03-19_SlidingWindow_FP16Emb_10L_MuonWD_OvertoneInit, `GPT._init_weights`). After the tied embedding's
N(0, 0.005) draw, its singular values are reset to a power law, S_k = S_1·k^(-0.5) (U and V kept: "like
guitar harmonics"); and block i's resid_mix starts at [φ_i, 1 - φ_i] with φ_i = σ(3·(i/(L-1) - 0.5)), so
early layers lean on x0 and late layers on the residual stream. Init only; draws no random numbers.
Like the record, the spectrum is reshaped only with tied embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import INIT, range_errors


@dataclass
class OvertoneInitConfig:
    power: float = field(default=0.5, metadata={"help": "singular value k becomes S_1·k^(-power) (PR #60: 0.5)"})
    phase_slope: float = field(default=3.0, metadata={"help": "φ_i = sigmoid(slope·(i/(L-1) - 0.5)) (PR #60: 3)"})

    def __post_init__(self) -> None:
        if not self.power >= 0.0:
            raise ValueError(f"overtone_init.power: expected a power >= 0, got {self.power}")


@torch.no_grad()
def overtone_spectrum(weight: torch.Tensor, power: float) -> torch.Tensor:
    """U · diag(S_1·k^(-power)) · Vᴴ of `weight`'s thin SVD."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    target = s[0] * (1.0 / torch.arange(1, s.shape[0] + 1, dtype=s.dtype)) ** power
    return (u * target[None, :]) @ vh


def phase(i: int, num_layers: int, slope: float) -> float:
    return float(torch.sigmoid(torch.tensor(slope * (i / max(num_layers - 1, 1) - 0.5))))


class OvertoneInit(Plugin):
    name = "overtone_init"
    family = "model"
    summary = "Power-law (k^-0.5) singular values for the tied embedding; resid_mix phased from x0 to residual."
    sources = ("openai/parameter-golf#60",)
    config = OvertoneInitConfig
    test_settings = {"overtone_init": {}}

    @classmethod
    def check_config(cls, cfg: OvertoneInitConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, power=(0.0, INIT), phase_slope=(-100.0, 100.0))

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        with torch.no_grad():
            if model.tie_embeddings:
                w = model.tok_emb.weight
                w.copy_(overtone_spectrum(w.float(), self.cfg.power).to(w.dtype))
            for i, block in enumerate(model.blocks):
                p = phase(i, len(model.blocks), self.cfg.phase_slope)
                block.resid_mix[0].fill_(p)
                block.resid_mix[1].fill_(1.0 - p)
