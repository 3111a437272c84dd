"""Decoupled weight decay: Muon WD for the matrices and AdamW for the token and scalar groups.

PR #60/#65 introduced Muon weight decay (p <- p·(1 - lr·wd) before each update, lr the scheduled one; PR #534
decays after it: `muon_after_update`);
PR #86 → #315 use 0.04 for Muon (MUON_WD) and AdamW 0.04 for the embedding and scalar groups (ADAM_WD).
PR #1218 split the embedding off (EMBED_WD 0.085 on the token group, ADAM_WD 0.02 on the scalar group);
PR #1493: MUON_WD 0.095, EMBED_WD 0.085, ADAM_WD 0.02. torch's AdamW decays p·(1 - lr·wd) with the
scheduled lr, as the records. The untied head, when there is one, keeps the core's plain Adam (the records
give it no WD).

The matrix optimizer made here is the core's Muon with `muon` WD; a plugin that brings its own matrix
optimizer answers first (`tryfirst`, e.g. `muon_eq_r` with its own WD setting) and takes the matrix group,
while this plugin keeps the Adam groups. The WD each group really got is logged at train start and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.hookspecs import hookimpl
from core.optim import Muon
from core.registry import Plugin
from plugins.lib.settings import WD, range_errors


@dataclass
class WeightDecayConfig:
    muon: float = field(default=0.04, metadata={
        "help": "Muon (matrix group) decoupled WD (MUON_WD; PR #315 0.04, PR #1493 0.095)"})
    muon_after_update: bool = field(default=False, metadata={
        "help": "Muon decays after the update, p <- (p - lr·u)·(1 - lr·wd) (PR #534's order; default: before)"})
    adam: float = field(default=0.04, metadata={
        "help": "AdamW WD of the scalar group (ADAM_WD; PR #315 0.04, PR #1493 0.02)"})
    embed: float = field(default=0.04, metadata={
        "help": "AdamW WD of the token (embedding) group (EMBED_WD; PR #315: ADAM_WD 0.04, PR #1493 0.085)"})

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)}" for k in ("muon", "adam", "embed") if getattr(self, k) < 0]
        if bad:
            raise ValueError(f"weight_decay: expected decays >= 0, got {', '.join(bad)}")


def group_decays(optimizers: list, names: dict[int, str]) -> dict[str, float]:
    """{group name: weight decay} of the run's optimizers (`names` maps id(first param) -> group name)."""
    out = {}
    for opt in optimizers:
        for g in opt.param_groups:
            if g["params"]:
                out[names.get(id(g["params"][0]), type(opt).__name__)] = float(g.get("weight_decay", 0.0))
    return out


class WeightDecay(Plugin):
    name = "weight_decay"
    family = "training"
    summary = "Decoupled weight decay: Muon WD on matrices, AdamW on embeddings and scalars (split from PR #1218)."
    sources = ("openai/parameter-golf#60", "openai/parameter-golf#65", "openai/parameter-golf#315",
               "openai/parameter-golf#1218", "openai/parameter-golf#1493")
    config = WeightDecayConfig
    test_settings = {"weight_decay": {"muon": 0.5, "adam": 0.5, "embed": 0.25}}

    @classmethod
    def check_config(cls, cfg: WeightDecayConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, muon=(0.0, WD), adam=(0.0, WD), embed=(0.0, WD))

    def __init__(self, cfg: WeightDecayConfig | None = None):
        super().__init__(cfg)
        self.decays: dict[str, float] = {}
        self.group_of: dict[int, str] = {}

    @hookimpl
    def pg_make_optimizer(self, group: str, params: list, config):
        core = config.core
        if group == "matrix":
            opt = Muon(params, lr=core.matrix_lr, momentum=core.muon_momentum, backend_steps=core.muon_backend_steps,
                       weight_decay=self.cfg.muon)
            for g in opt.param_groups:
                g["base_lr"] = core.matrix_lr
                g["decay_after"] = self.cfg.muon_after_update
            return opt
        if group in ("token", "scalar"):
            lr = (core.tied_embed_lr if core.tie_embeddings else core.embed_lr) if group == "token" else core.scalar_lr
            wd = self.cfg.embed if group == "token" else self.cfg.adam
            fused = core.device != "cpu" and torch.cuda.is_available()
            return torch.optim.AdamW([{"params": params, "lr": lr, "base_lr": lr}], betas=(core.beta1, core.beta2),
                                     eps=core.adam_eps, weight_decay=wd, fused=fused)
        return None

    @hookimpl(trylast=True)
    def pg_param_groups(self, model, groups, config) -> None:
        self.group_of = {id(p): name for name, params in groups.items() for p in params}

    @hookimpl
    def pg_train_start(self, run) -> None:
        self.decays = group_decays(run.optimizers, self.group_of)
        run.log("weight_decay:" + " ".join(f"{k}:{v:g}" for k, v in sorted(self.decays.items())))
        if "matrix" in self.decays and self.decays["matrix"] != self.cfg.muon:
            run.log(f"weight_decay:muon={self.cfg.muon:g} unused: the matrix optimizer comes from another plugin "
                    f"(its WD {self.decays['matrix']:g})")

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["muon_wd"] = self.decays.get("matrix", self.cfg.muon)
        fields["adam_wd"] = self.cfg.adam
        fields["embed_wd"] = self.cfg.embed
