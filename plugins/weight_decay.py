"""Decoupled weight decay: Muon WD for the matrices and AdamW for the token and scalar groups.

PR #60/#65 introduced Muon weight decay (p <- p·(1 - lr·wd) before each update, lr the scheduled one);
PR #86 → #315 use 0.04 for Muon (MUON_WD) and AdamW 0.04 for the embedding and scalar groups (ADAM_WD).
The untied head, when there is one, keeps the core's plain Adam, as in the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.hookspecs import hookimpl
from core.optim import Muon
from core.registry import Plugin


@dataclass
class WeightDecayConfig:
    muon: float = field(default=0.04, metadata={"help": "Muon (matrix group) decoupled WD (record MUON_WD)"})
    adam: float = field(default=0.04, metadata={"help": "AdamW WD of the token and scalar groups (ADAM_WD)"})


class WeightDecay(Plugin):
    name = "weight_decay"
    summary = "Decoupled weight decay: Muon WD on matrices, AdamW on embeddings and scalars (0.04 in PR #315)."
    sources = ("openai/parameter-golf#60", "openai/parameter-golf#65", "openai/parameter-golf#315")
    config = WeightDecayConfig
    test_settings = {"weight_decay": {"muon": 0.5, "adam": 0.5}}

    def __init__(self, cfg: WeightDecayConfig | None = None):
        super().__init__(cfg or WeightDecayConfig())

    @hookimpl
    def pg_make_optimizer(self, group: str, params: list, config):
        for key in ("muon", "adam"):
            if getattr(self.cfg, key) < 0:
                raise ValueError(f"weight_decay.{key}: expected >= 0, got {getattr(self.cfg, key)}")
        core = config.core
        if group == "matrix":
            opt = Muon(params, lr=core.matrix_lr, momentum=core.muon_momentum, backend_steps=core.muon_backend_steps,
                       weight_decay=self.cfg.muon)
            for g in opt.param_groups:
                g["base_lr"] = core.matrix_lr
            return opt
        if group in ("token", "scalar"):
            lr = (core.tied_embed_lr if core.tie_embeddings else core.embed_lr) if group == "token" else core.scalar_lr
            fused = core.device != "cpu" and torch.cuda.is_available()
            return torch.optim.AdamW([{"params": params, "lr": lr, "base_lr": lr}], betas=(core.beta1, core.beta2),
                                     eps=core.adam_eps, weight_decay=self.cfg.adam, fused=fused)
        return None

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["muon_wd"] = self.cfg.muon
        fields["adam_wd"] = self.cfg.adam
