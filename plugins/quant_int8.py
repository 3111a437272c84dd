"""The official baseline's int8 export rule (openai/parameter-golf `train_gpt.py`; PR #315's mixed policy keeps
it for its 8-bit families): the run's quantizer when no enabled plugin provides one (`default = True`).

Float tensors of at most 65,536 elements pass through (fp32 for control tensors, else fp16); larger ones
become int8 codes in [-127, 127]: matrices per row, clipped at the row's 99.99984th percentile of |w| with an
fp16 scale clip/127 (floored at 1/127), other tensors with one fp32 scale. Non-float tensors pass through.
Dequantized by the core's "int8_per_row" / "int8_per_tensor" schemes, bit-identical to the baseline.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from core.export import QTensor
from core.hookspecs import hookimpl
from core.model import CONTROL_TENSOR_NAME_PATTERNS
from core.registry import Plugin

KEEP_FLOAT_MAX_NUMEL = 65_536
INT8_CLIP_Q = 99.99984 / 100.0
_QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses larger inputs


def dtype_name(t: Tensor) -> str:
    """`t`'s dtype as a QTensor records it ("float32", "bfloat16", ...)."""
    return str(t.dtype).removeprefix("torch.")


def quantile_flat(x: Tensor, q: float, force_manual: bool = False) -> float:
    """torch.quantile(x.flatten(), q) (linear), also past torch's 2**24-element limit, same float32 math."""
    x = x.flatten()
    if x.numel() <= _QUANTILE_MAX_NUMEL and not force_manual:
        return float(torch.quantile(x, q).item())
    if bool(torch.isnan(x).any()):
        return float("nan")
    rank = torch.tensor([q], dtype=x.dtype) * (x.numel() - 1)
    lo, hi = int(rank.item()), int(torch.ceil(rank).item())
    below = torch.kthvalue(x, lo + 1).values.reshape(1)
    above = torch.kthvalue(x, hi + 1).values.reshape(1)
    return float(torch.lerp(below, above, rank - lo).item())


def int8_quantize(name: str, t: Tensor, keep_fp32_patterns: tuple[str, ...] = CONTROL_TENSOR_NAME_PATTERNS) -> QTensor:
    """The baseline's int8 rule for one tensor; dequantized values are bit-identical to its own."""
    t = t.detach().to("cpu").contiguous()
    shape = tuple(t.shape)
    if not t.is_floating_point():
        return QTensor("passthrough", t, None, dtype_name(t), shape)
    if t.numel() <= KEEP_FLOAT_MAX_NUMEL:
        if any(p in name for p in keep_fp32_patterns):
            kept = t.float().contiguous()
        elif t.dtype in (torch.float32, torch.bfloat16):
            kept = t.to(torch.float16).contiguous()
        else:
            kept = t
        return QTensor("passthrough", kept, None, dtype_name(t), shape, {"store": dtype_name(kept)})
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), INT8_CLIP_Q, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        codes = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8).contiguous()
        return QTensor("int8_per_row", codes, scale.to(torch.float16).contiguous(), dtype_name(t), shape)
    clip_abs = quantile_flat(t32.abs(), INT8_CLIP_Q)
    scale_t = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    codes = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale_t), -127, 127)
    return QTensor("int8_per_tensor", codes.to(torch.int8).contiguous(), scale_t, dtype_name(t), shape)


class QuantInt8(Plugin):
    name = "quant_int8"
    family = "export"
    summary = "The baseline's int8 export (per-row int8, fp16 passthrough of small tensors); the default quantizer."
    sources = ("openai/parameter-golf train_gpt.py (baseline)", "openai/parameter-golf#315")
    provides = ("quantizer",)
    default = True
    test_settings: dict[str, dict[str, Any]] = {}

    @hookimpl(trylast=True)
    def pg_quantize_tensor(self, name: str, tensor: Tensor, config: Any) -> QTensor:
        return int8_quantize(name, tensor)
