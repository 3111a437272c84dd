"""GPTQ-lite: per-matrix clip-percentile search minimizing reconstruction MSE (PR #414, from PR #379).

For each int-k matrix try the row-clip percentiles {0.999, 0.9995, 0.9999, 0.99999, 1.0} of |w| (1.0 is
the row maximum), quantize with scale = clip/31 and codes in [-31, 31], and keep the candidate with the
lowest mean squared reconstruction error: one choice per matrix as in the record, or per row
(`per_row = true`, never worse). Everything else follows the mixed policy of `quant_mixed`; with
`search_int8` 8-bit tensors are searched too, as PR #534 does for its int8 layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.export import QTensor
from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.quant import MixedBitsConfig, dequant_rows, policy_quantize, quantize_rows


@dataclass
class GPTQLiteConfig(MixedBitsConfig):
    percentiles: str = field(default="0.999,0.9995,0.9999,0.99999,1.0", metadata={
        "help": "comma-separated row-clip quantiles of |w| to try (1.0 = row max)"})
    per_row: bool = field(default=False, metadata={"help": "choose the clip per row instead of per matrix"})
    search_int8: bool = field(default=False, metadata={
        "help": "8-bit tensors get the search too (clip/127, codes [-127, 127]; PR #534) instead of the "
                "baseline int8 rule"})


def parse_percentiles(text: str) -> list[float]:
    try:
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


class GPTQLite(Plugin):
    name = "gptq_lite"
    family = "export"
    summary = "Int6 per-row with a clip-percentile search per matrix (lowest reconstruction MSE)."
    sources = ("openai/parameter-golf#414", "openai/parameter-golf#379", "openai/parameter-golf#534")
    config = GPTQLiteConfig
    provides = ("quantizer",)
    test_settings = {"gptq_lite": {"keep_float_max_numel": 0}}

    def __init__(self, cfg: GPTQLiteConfig | None = None):
        super().__init__(cfg)
        self.percentiles = parse_percentiles(self.cfg.percentiles)

    @hookimpl
    def pg_quantize_tensor(self, name: str, tensor, config) -> QTensor:
        def clip(t32: Tensor, qmax: int) -> Tensor:
            return search_clip(t32, qmax, self.percentiles, self.cfg.per_row)

        return policy_quantize(name, tensor, self.cfg, clip, extra_negative=False, method="gptq_lite",
                               baseline_int8=not self.cfg.search_int8)
