"""Quant gate (PR #1736; window widened in PR #1787/#1855): the attention gate matrices `*.attn_gate_w`
(`gated_attn` heads × dim, `sparse_attn_gate` heads × window) are exported as int8 rows, scale =
rowmax/127 in fp16 (floored at 1e-10 before the cast), codes round(w/scale) in [-127, 127], instead of
the fp16 passthrough small tensors get. It answers before the run's quantizer (`tryfirst`), for 2-D float
tensors of `min_numel`..`max_numel` elements (PR #1855: 32..8192; PR #1736: 1024..8192). Dequantized by
the core's int8_per_row rule (codes × scale per row), as the record's. A no-op without a gate plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from core import export as ex
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import MAX_NUMEL, range_errors
from plugins.quant_int8 import dtype_name


@dataclass
class QuantGateConfig:
    min_numel: int = field(default=32, metadata={"help": "smallest gate routed to int8 rows (PR #1855: 32)"})
    max_numel: int = field(default=8192, metadata={"help": "largest gate routed to int8 rows (PR #1855: 8192)"})

    def __post_init__(self) -> None:
        if not 0 <= self.min_numel <= self.max_numel:
            raise ValueError(f"quant_gate.min_numel..max_numel: expected 0 <= min <= max, got "
                             f"{self.min_numel}..{self.max_numel}")


def gate_int8_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """(R, C) -> int8 codes (R, C) and fp16 scales (R,): symmetric per row, rowmax/127."""
    w32 = w.float().contiguous()
    scale = (w32.abs().amax(dim=1).clamp_min(1e-10) / 127.0).to(torch.float16)
    codes = torch.clamp(torch.round(w32 / scale.float()[:, None]), -127, 127).to(torch.int8)
    return codes.contiguous(), scale.contiguous()


class QuantGate(Plugin):
    name = "quant_gate"
    family = "export"
    summary = "Export attention gate matrices (attn_gate_w) as int8 rows (rowmax/127) instead of fp16."
    sources = ("openai/parameter-golf#1736", "openai/parameter-golf#1787", "openai/parameter-golf#1855")
    config = QuantGateConfig
    test_settings = {"quant_gate": {"min_numel": 8}}

    @classmethod
    def check_config(cls, cfg: QuantGateConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, min_numel=(0, MAX_NUMEL), max_numel=(0, MAX_NUMEL))
    test_with = ("sparse_attn_gate",)  # the plugin matrix enables a gate with it (alone it has nothing to do)

    @hookimpl(tryfirst=True)
    def pg_quantize_tensor(self, name: str, tensor: Tensor, config) -> ex.QTensor | None:
        t = tensor.detach().to("cpu")
        if not (name.endswith(".attn_gate_w") and t.is_floating_point() and t.ndim == 2
                and self.cfg.min_numel <= t.numel() <= self.cfg.max_numel):
            return None
        codes, scale = gate_int8_rows(t)
        return ex.QTensor("int8_per_row", codes, scale, dtype_name(t), tuple(t.shape), {"method": "gate_rowmax"})
