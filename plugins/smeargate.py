"""SmearGate: blend each position's embedding with the previous position's (a learned bigram shortcut).

v2 (PR #162, carried by PR #315): a per-dimension gate g = sigmoid(p), p initialised to 0, applied
after the first RMSNorm: x_t <- (1 - g) * x_t + g * x_{t-1} (x_{-1} = 0). v4 (PR #1667 + the BOS fix of
PR #1851): input-dependent, on raw embeddings before the norm, x_t <- x_t + lam * sigmoid(W x_t[:w]) *
x_{t-1}, with the previous-token term masked where token t is BOS so documents never leak into each
other; W and lam start at zero (identity at init). v4's W is made as the records' nn.Linear(w, 1) (a kaiming
draw they zero at init): the generator advances as in PR #1855, whose later draws are then its own. `bos_mask`
gives v2 the same BOS fix (not in PR #315: off by default there). `gate_dtype = "body"`: PR #534's v2 gate
trains in bf16 on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import BODY_DTYPE_ATTR
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class SmearGateConfig:
    version: str = field(default="v2", metadata={"help": "v2 (per-dim gate, PR #162/#315) or v4 (PR #1667 + #1851)"})
    gate_window: int = field(default=12, metadata={"help": "v4: leading dims that drive the gate"})
    bos_id: int = field(default=1, metadata={
        "help": "BOS token id; v4 (and v2 with bos_mask) masks the previous token there"})
    bos_mask: bool = field(default=False, metadata={"help": "v2: no blend at BOS (PR #1851's fix; v4 always)"})
    gate_dtype: str = field(default="fp32", metadata={
        "help": "v2 gate's dtype on CUDA: fp32 (a control tensor, PR #315) | body (the model body's, bf16: PR #534's "
                "(1, 1, d) gate escapes its fp32 restore, so the gate and its Adam state train in bf16)"})

    def __post_init__(self) -> None:
        if self.gate_dtype not in ("fp32", "body"):
            raise ValueError(f"smeargate.gate_dtype: expected fp32 or body, got {self.gate_dtype!r}")


def shift_right(x: Tensor) -> Tensor:
    """x_{t-1} along dim 1, zero at t = 0."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class SmearGateV2(nn.Module):
    def __init__(self, dim: int, bos_id: int | None = None, body_dtype: bool = False):
        super().__init__()
        self.bos_id = bos_id
        self.smear_gate = nn.Parameter(torch.zeros(dim, dtype=torch.float32))
        if body_dtype:
            setattr(self.smear_gate, BODY_DTYPE_ATTR, True)  # PR #534: bf16 on CUDA

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        g = torch.sigmoid(self.smear_gate.to(dtype=x.dtype))[None, None, :]
        if self.bos_id is not None:
            g = g * (input_ids != self.bos_id).to(x.dtype).unsqueeze(-1)
        return (1 - g) * x + g * shift_right(x)


class SmearGateV4(nn.Module):
    def __init__(self, dim: int, window: int, bos_id: int):
        super().__init__()
        self.window = min(window, dim)
        self.bos_id = bos_id
        self.smear_proj = nn.Parameter(nn.Linear(self.window, 1, bias=False).weight.data.zero_())
        self.smear_lambda = nn.Parameter(torch.zeros(1, dtype=torch.float32))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        gate = torch.sigmoid(x[..., : self.window] @ self.smear_proj.to(x.dtype).t())
        not_bos = (input_ids != self.bos_id).to(x.dtype).unsqueeze(-1)
        return x + self.smear_lambda.to(x.dtype) * gate * not_bos * shift_right(x)


class SmearGate(Plugin):
    name = "smeargate"
    family = "model"
    summary = "Blend each position with the previous one through a learned gate (token-shift mixing)."
    sources = ("openai/parameter-golf#162", "openai/parameter-golf#315", "openai/parameter-golf#1667",
               "openai/parameter-golf#1851")
    config = SmearGateConfig
    test_settings = {"smeargate": {}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        bad = [] if cfg.version in ("v2", "v4") else [f"smeargate.version: expected v2 or v4, got {cfg.version!r}"]
        return range_errors(cls.name, cfg, gate_window=(1, core.model_dim), bos_id=(-1, core.vocab_size - 1)) + bad

    @hookimpl
    def pg_slot_parts(self, slot: str, spec, layer: int | None):
        version = self.cfg.version
        if version not in ("v2", "v4"):
            raise ValueError(f"smeargate.version: expected v2 or v4, got {version!r}")
        if version == "v2" and slot == "embed_mix_post":
            return SmearGateV2(spec.model_dim, self.cfg.bos_id if self.cfg.bos_mask else None,
                               self.cfg.gate_dtype == "body")
        if version == "v4" and slot == "embed_mix_pre":
            return SmearGateV4(spec.model_dim, self.cfg.gate_window, self.cfg.bos_id)
        return None

    @hookimpl
    def pg_param_groups(self, model, groups, config) -> None:
        """Gate parameters are control tensors: Adam at the scalar LR, never Muon."""
        mine = [p for n, p in model.named_parameters() if ".smear_" in f".{n.rsplit('.', 1)[-1]}"]
        ids = {id(p) for p in mine}
        for name in list(groups):
            groups[name] = [p for p in groups[name] if id(p) not in ids]
        groups["scalar"].extend(mine)
