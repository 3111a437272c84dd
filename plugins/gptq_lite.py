"""GPTQ-lite: per-matrix clip-percentile search minimizing reconstruction MSE (PR #414, from PR #379).

For each int-k matrix try the row-clip percentiles {0.999, 0.9995, 0.9999, 0.99999, 1.0} of |w| (1.0 is
the row maximum), quantize with scale = clip/31 and codes in [-31, 31], and keep the candidate with the
lowest mean squared reconstruction error: one choice per matrix as in the record, or per row
(`per_row = true`, never worse). Everything else follows the mixed policy of `quant_mixed`; with
`search_int8` 8-bit tensors are searched too, as PR #534 does for its int8 layers.

`variant = "pr534"` is PR #534's quantizer exactly (its `quantize_float_tensor(gptq_lite=True)` and "int6 step
rounding"): every searched matrix is quantized on the int8 grid (values clamped to the row clip, fp32 scale
clip/127 floored at 1/127, codes in [-127, 127], the candidate with the lowest whole-matrix MSE), and a k-bit
tensor's codes are then rounded to multiples of 2^(8-k) (int6: 4, the record's blocks 1-9) — not an int6 grid
of its own. Where the floor binds (row clip < 1, nearly every row) PR #414's rule clips nothing and its search
is a no-op; PR #534's clamps at the clip, so its search picks among real clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.export import QTensor
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.quant import MixedBitsConfig, dequant_rows, policy_quantize, quantize_rows
from plugins.lib.settings import MAX_NUMEL, range_errors

VARIANTS = ("pr414", "pr534")


@dataclass
class GPTQLiteConfig(MixedBitsConfig):
    percentiles: str = field(default="0.999,0.9995,0.9999,0.99999,1.0", metadata={
        "help": "comma-separated row-clip quantiles of |w| to try (1.0 = row max)"})
    per_row: bool = field(default=False, metadata={"help": "choose the clip per row instead of per matrix"})
    search_int8: bool = field(default=False, metadata={
        "help": "8-bit tensors get the search too (clip/127, codes [-127, 127]; PR #534) instead of the "
                "baseline int8 rule"})
    variant: str = field(default="pr414", metadata={
        "help": "pr414: an int-k grid per tensor (clip/qmax); pr534: the int8 grid searched, then codes "
                "rounded to multiples of 2^(8-bits) (see the module docstring; implies search_int8)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"gptq_lite.variant: expected one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.variant == "pr534" and self.per_row:
            raise ValueError("gptq_lite.per_row: PR #534's variant chooses one clip per matrix (set per_row = false)")


def parse_percentiles(text: str) -> list[float]:
    try:
        if not text.isascii():  # ASCII digits only: float() also reads '٠.٩' as 0.9
            raise ValueError(text)
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ValueError(f"gptq_lite.percentiles must be comma-separated numbers, got {text!r}") from exc
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise ValueError(f"gptq_lite.percentiles must be in (0, 1], got {text!r}")
    return values


def row_clips(t32: Tensor, percentiles: list[float]) -> list[Tensor]:
    """Per-row clip for each percentile: |w|'s row quantile (one sort for all), the row max for 1.0."""
    a = t32.abs()
    inner = [p for p in percentiles if p < 1.0]
    qs = torch.quantile(a, torch.tensor(inner, dtype=a.dtype, device=a.device), dim=1) if inner else None
    out, k = [], 0
    for p in percentiles:
        if p >= 1.0:
            out.append(a.amax(dim=1))
        else:
            assert qs is not None
            out.append(qs[k])
            k += 1
    return out


def search_clip(t32: Tensor, qmax: int, percentiles: list[float], per_row: bool) -> Tensor:
    """The per-row clip of the candidate with the lowest squared reconstruction error."""
    bits = (qmax + 1).bit_length()
    best_clip: Tensor | None = None
    best_err: Tensor | None = None
    for clip in row_clips(t32, percentiles):
        codes, scale = quantize_rows(t32, clip, bits, extra_negative=False)
        row_err = (t32 - dequant_rows(codes, scale)).pow(2).mean(dim=1)
        err = row_err if per_row else row_err.mean().expand_as(row_err)
        if best_clip is None or best_err is None:
            best_clip, best_err = clip, err
            continue
        better = err < best_err
        best_clip = torch.where(better, clip, best_clip)
        best_err = torch.where(better, err, best_err)
    assert best_clip is not None
    return best_clip


def int8_grid_search(t32: Tensor, percentiles: list[float], bits: int) -> tuple[Tensor, Tensor]:
    """PR #534's row quantizer: for each clip candidate, values clamped to the row clip, scale = clip/127
    floored at 1/127 (fp32), codes in [-127, 127]; the candidate with the lowest whole-matrix MSE (the first on
    ties); then codes rounded to multiples of 2^(8-bits). Returns (int8 codes, fp16 scales)."""
    best: tuple[Tensor, Tensor] | None = None
    best_err = float("inf")
    for clip in row_clips(t32, percentiles):
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        clipped = torch.clamp(t32, -clip[:, None], clip[:, None])
        codes = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127)
        err = float((t32 - codes * scale[:, None]).square().mean())
        if err < best_err:
            best, best_err = (codes, scale), err
    assert best is not None, "no clip candidates"
    codes, scale = best
    step = 2 ** (8 - bits)
    if step > 1:
        codes = ((codes / step).round() * step).clamp(-127, 127)
    return codes.to(torch.int8).contiguous(), scale.to(torch.float16).contiguous()


class GPTQLite(Plugin):
    name = "gptq_lite"
    family = "export"
    summary = "Int6 per-row with a clip-percentile search per matrix (lowest reconstruction MSE)."
    sources = ("openai/parameter-golf#414", "openai/parameter-golf#379", "openai/parameter-golf#534")
    config = GPTQLiteConfig
    provides = ("quantizer",)
    test_settings = {"gptq_lite": {"keep_float_max_numel": 0}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, keep_float_max_numel=(0, MAX_NUMEL))

    def __init__(self, cfg: GPTQLiteConfig | None = None):
        super().__init__(cfg)
        self.percentiles = parse_percentiles(self.cfg.percentiles)

    @hookimpl
    def pg_quantize_tensor(self, name: str, tensor, config) -> QTensor:
        def clip(t32: Tensor, qmax: int) -> Tensor:
            return search_clip(t32, qmax, self.percentiles, self.cfg.per_row)

        def int8_grid(t32: Tensor, bits: int) -> tuple[Tensor, Tensor]:
            return int8_grid_search(t32, self.percentiles, bits)

        pr534 = self.cfg.variant == "pr534"
        return policy_quantize(name, tensor, self.cfg, clip, extra_negative=False, method="gptq_lite",
                               baseline_int8=not (self.cfg.search_int8 or pr534), rows=int8_grid if pr534 else None)
