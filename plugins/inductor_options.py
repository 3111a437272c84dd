"""Inductor code-generation options for the compiled training step, measured on one H200 (pgolf issue #14/#15).

`mix_order_reduction` (torch ≥ 2.10, on by default) fuses an RMSNorm backward's row reduction (the input gradient)
with its column reduction (a per-channel weight's gradient) into one Triton kernel that writes per-split partial sums,
then finishes every column sum with an eager `aten::sum` over the (splits, channels) partials. In PR #1855's step that
is 45 `aten::sum` calls per micro-step on (768, 512) fp32 partials (the residual mixes and the attention/MLP scales
of 11 layers), 21 µs each: 7.5 ms per 98,304-token step of device time in a generic reduce kernel (kernel profile,
`benchmarks/kernel_profile.py --stacks aten::sum`). With it off inductor reduces those columns in its own kernels:
`benchmarks/inductor_options.py` (11 blocks of norm → matmul with per-channel scales and a residual mix, 12,288 tokens,
fwd+bwd) measured 8.0–8.2 ms with it on and 5.8–7.1 ms off on one H200.

The option is process-wide (`torch._inductor.config`); it is set when the model is built, before anything compiles,
and a pgolf training process is one run. Only inductor's Triton (GPU) code generation reads it: on CPU nothing
changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.hookspecs import hookimpl
from core.registry import Plugin


@dataclass
class InductorOptionsConfig:
    mix_order_reduction: bool = field(default=False, metadata={
        "help": "inductor's fused row+column reduction with an eager aten::sum finish (torch's default: on); off "
                "measured faster on one H200 for the records' norm + per-channel-scale blocks"})


def apply_inductor_options(cfg: InductorOptionsConfig) -> dict[str, Any]:
    """Set the options this torch has; returns the previous values by option name (for a caller that restores)."""
    import torch._inductor.config as inductor

    previous = {}
    if hasattr(inductor.triton, "mix_order_reduction"):  # torch < 2.10 has no such pass: nothing to turn off
        previous["triton.mix_order_reduction"] = inductor.triton.mix_order_reduction
        inductor.triton.mix_order_reduction = cfg.mix_order_reduction
    return previous


class InductorOptions(Plugin):
    name = "inductor_options"
    family = "other"
    summary = "Inductor options measured faster on the GPU (mix-order reduction off: no eager aten::sum per norm)."
    sources = ("pgolf issue #15 (PR #1855's step: 45 aten::sum per micro-step from mix-order reduction)",)
    config = InductorOptionsConfig
    cuda_only = True  # only inductor's Triton code generation reads the options: off CUDA the run is the core's
    test_settings = {}

    @hookimpl
    def pg_edit_model(self, model: Any, spec: Any, config: Any) -> None:
        apply_inductor_options(self.cfg)  # build time: before the first call compiles anything
