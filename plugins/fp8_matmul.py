"""FP8 (e4m3) training matmuls for chosen linears, forward and backward, with `torch._scaled_mm` (pgolf issue #14;
modded-nanogpt's `nanogpt::mm` / `mm_t` custom ops by @YouJiacheng, its record 2025-01-13 "FP8 head", and the
head's `CastedLinear(use_fp8=True)` scales of its PR #175 "Retie Embedding and LM Head" / PR #186).

In training mode a target's `y = x·Wᵀ` runs as one autograd.Function:
- forward: x and W cast to float8_e4m3fn with per-tensor scales (x8 = x/x_s, W8 = W/w_s), `_scaled_mm(x8, W8ᵀ,
  scale_a=x_s, scale_b=w_s, out_dtype=bf16, use_fast_accum=True)`; x8 and W8 are what the backward keeps;
- backward: the output gradient cast to float8_e5m2 (g8 = g/grad_s); dX = `_scaled_mm(g8, W8)` in bf16 and
  dW = `_scaled_mm(g8ᵀ, x8)` in fp32, both with `use_fast_accum=False` — modded-nanogpt's choices (it computes
  dWᵀ = x8ᵀ·g8 and transposes, "faster for (50304, 768)"; here dW comes out in the weight's layout). Master weights
  stay fp32 (the gradient is returned in the weight's dtype); the optimizer sees an ordinary gradient.

Scales (`scaling`):
- "static" (modded-nanogpt's): fixed x_s, w_s, grad_s. The defaults are its current head's (`x_s=100/448,
  w_s=1.6/448, grad_s=0.75/448`, tuned in PR #175/#186 for a tied embedding/head after a final RMSNorm; the
  2025-01-13 record had x·2, W·32, g·2^29). Its training loss there is a sum over the micro-batch's tokens,
  pgolf's a mean, so here grad_s is per token: the matmul divides it by its rows (the micro-step's 1/accumulation
  factor is left in: floating point keeps its relative precision, and e5m2 has 2^7 of headroom above 448).
  They are the head's (its input is RMS-normed): for "mlp"/"attn" targets (the MLP's down projection sees the
  unbounded squared activation) use "dynamic", or set scales that fit.
- "dynamic": per-tensor amax scales computed on the device every call (x_s = amax|x|/448, w_s = amax|W|/448,
  grad_s = amax|g|/57344), no host sync.
Casts saturate (clamp to ±448 / ±57344 before the cast) in both modes; modded-nanogpt casts unclamped. The op is
an autograd.Function rather than modded-nanogpt's custom_op pair with an inner `torch.compile`: the model's
compile traces it whole (fullgraph, zero breaks) and fuses the casts and amaxes into the neighbouring kernels.

Targets (`targets`): "head" (the output projection: `lm_head`, or the tied embedding's `F.linear(h, tok_emb.weight)`),
"mlp" (each block's `mlp.fc`/`mlp.proj`), "attn" (each block's `attn.c_q/c_k/c_v/proj`). The default is "head",
as modded-nanogpt: there the head is the one linear with the FP8 forward+backward op; its MLP runs an FP8 forward
only (per-layer weight scales refreshed after each optimizer step, a dynamic input amax, delayed activation scales,
inside its fused Triton MLP kernel) with a bf16 backward, which this plugin does not copy ("mlp" here is the full
op above). Evaluation, GPTQ calibration and export see the ordinary bf16 modules (the FP8 path is training-only);
test-time training's SGD steps run in training mode, so they use it too (as fused_mlp's kernel), its scoring does not.
Measured on one H200 (README, "FP8 matmuls"): slower than bf16 at PR #315's K = 512 shapes (0.53-0.87x), so no
recipe enables it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CastedLinear
from core.registry import Plugin
from plugins.lib.settings import range_errors

TARGETS = ("head", "mlp", "attn")
SCALINGS = ("static", "dynamic")
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
E4M3_MAX, E5M2_MAX = torch.finfo(E4M3).max, torch.finfo(E5M2).max  # 448, 57344
MODULE_TARGETS = {"mlp": ("fc", "proj"), "attn": ("c_q", "c_k", "c_v", "proj")}


@dataclass
class FP8MatmulConfig:
    targets: str = field(default="head", metadata={
        "help": f"which linears train in FP8, comma-separated, of {TARGETS} (modded-nanogpt: head)"})
    scaling: str = field(default="static", metadata={
        "help": "static: the fixed x_s/w_s/grad_s below (modded-nanogpt); dynamic: per-tensor amax scales on device"})
    x_s: float = field(default=100 / 448, metadata={"help": "static input scale: x8 = x/x_s (modded-nanogpt head)"})
    w_s: float = field(default=1.6 / 448, metadata={"help": "static weight scale: W8 = W/w_s (modded-nanogpt head)"})
    grad_s: float = field(default=0.75 / 448, metadata={
        "help": "static scale of a per-token gradient (divided by the matmul's rows: pgolf's loss is a mean)"})

    @property
    def target_set(self) -> set[str]:
        return {t.strip() for t in self.targets.split(",") if t.strip()}

    def __post_init__(self) -> None:
        if not self.target_set or not self.target_set <= set(TARGETS):
            raise ValueError(f"fp8_matmul.targets: expected a comma-separated list of {TARGETS}, got {self.targets!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"fp8_matmul.scaling: expected one of {SCALINGS}, got {self.scaling!r}")
        bad = [k for k in ("x_s", "w_s", "grad_s") if not getattr(self, k) > 0]
        if bad:
            raise ValueError(f"fp8_matmul.{bad[0]}: expected a positive scale, got {getattr(self, bad[0])}")


def fp8_scale(t: Tensor, static: float, fmt_max: float, dynamic: bool) -> Tensor:
    """The per-tensor scale as a 0-dim fp32 tensor on t's device: amax|t|/fmt_max (dynamic) or `static`."""
    if dynamic:
        return t.detach().abs().amax().float().clamp_min(1e-30) / fmt_max
    return torch.full((), static, dtype=torch.float32, device=t.device)


def to_fp8(t: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """t/scale, saturated to the format's range, cast to `dtype` (division in fp32: one rounding)."""
    fmt_max = torch.finfo(dtype).max
    return (t.float() / scale).clamp(-fmt_max, fmt_max).to(dtype)


class FP8LinearFunction(torch.autograd.Function):
    """x·Wᵀ (x (..., K), W (N, K)) with e4m3 operands, an e5m2 output gradient; a bf16 output (modded-nanogpt's
    out_dtype), gradients in the inputs' dtypes; see the module doc."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, x_s: float, w_s: float, grad_s: float, dynamic: bool) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        sx, sw = fp8_scale(x2, x_s, E4M3_MAX, dynamic), fp8_scale(w, w_s, E4M3_MAX, dynamic)
        x8, w8 = to_fp8(x2, sx, E4M3).contiguous(), to_fp8(w, sw, E4M3).contiguous()  # row-major, as _scaled_mm
        out = torch._scaled_mm(x8, w8.T, scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16, use_fast_accum=True)
        ctx.save_for_backward(x8, w8, sx, sw)
        ctx.grad_s, ctx.dynamic, ctx.x_dtype, ctx.w_dtype = grad_s / x2.shape[0], dynamic, x.dtype, w.dtype
        return out.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x8, w8, sx, sw = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        sg = fp8_scale(g, ctx.grad_s, E5M2_MAX, ctx.dynamic)
        g8 = to_fp8(g, sg, E5M2).contiguous()  # an incoming gradient may be strided
        # _scaled_mm takes a row-major first and a column-major second operand
        dx = torch._scaled_mm(g8, w8.T.contiguous().T, scale_a=sg, scale_b=sw, out_dtype=torch.bfloat16,
                              use_fast_accum=False)
        dw = torch._scaled_mm(g8.T.contiguous(), x8.T.contiguous().T, scale_a=sg, scale_b=sx,
                              out_dtype=torch.float32, use_fast_accum=False)
        return (dx.view(*grad_out.shape[:-1], x8.shape[1]).to(ctx.x_dtype), dw.to(ctx.w_dtype),
                None, None, None, None)


def fp8_linear(x: Tensor, w: Tensor, cfg: FP8MatmulConfig) -> Tensor:
    """`F.linear(x, w)` (no bias) through FP8LinearFunction with `cfg`'s scaling, in the dtype F.linear would return
    (the autocast dtype under autocast, else x's)."""
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    return FP8LinearFunction.apply(x, w, cfg.x_s, cfg.w_s, cfg.grad_s, cfg.scaling == "dynamic").to(dtype)


class FP8Linear(CastedLinear):
    """A CastedLinear whose training-mode matmul is FP8 (installed by class swap: parameters and names untouched;
    `fp8_cfg` holds the settings). Eval mode is the CastedLinear's bf16 path."""

    fp8_cfg: FP8MatmulConfig

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        out = fp8_linear(x, self.weight, self.fp8_cfg)
        return out if self.bias is None else out + self.bias.to(out.dtype)


class FP8TiedHead:
    """Mixed into the model's class when the head is the tied embedding: `project` runs the FP8 matmul in training
    (then the core's `head_add` parts, as `GPT.project`)."""

    fp8_cfg: FP8MatmulConfig

    def project(self, h: Tensor) -> Tensor:
        if not self.training:
            return super().project(h)
        proj = fp8_linear(h, self.tok_emb.weight, self.fp8_cfg)
        for part in self.head_add:
            proj = proj + part(h)
        return proj


def fp8_modules(model: nn.Module, targets: set[str]) -> list[tuple[str, CastedLinear]]:
    """(name, module) of the CastedLinears the targets name: `lm_head`, and `blocks.N.{mlp,attn}.<linear>`."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, CastedLinear):
            continue
        parts = name.split(".")
        if "head" in targets and name == "lm_head":
            found.append((name, module))
        elif len(parts) == 4 and parts[0] == "blocks" and parts[2] in targets \
                and parts[3] in MODULE_TARGETS.get(parts[2], ()):
            found.append((name, module))
    return found


def install_fp8(model: nn.Module, cfg: FP8MatmulConfig) -> list[str]:
    """Swap the targets' classes (FP8Linear; the model's class for a tied head); returns what was swapped."""
    installed = []
    for name, module in fp8_modules(model, cfg.target_set):
        if type(module) is not CastedLinear:
            raise TypeError(f"fp8_matmul: {name} is a {type(module).__name__}, not a plain CastedLinear "
                            f"(another plugin replaced it)")
        module.__class__, module.fp8_cfg = FP8Linear, cfg
        installed.append(name)
    if "head" in cfg.target_set and getattr(model, "lm_head", None) is None:
        cls = type(model)
        model.__class__ = type(f"FP8Head{cls.__name__}", (FP8TiedHead, cls), {"__module__": __name__})
        model.fp8_cfg = cfg
        installed.append("tok_emb (tied head)")
    if not installed:
        raise ValueError(f"fp8_matmul.targets: {cfg.targets!r} matched no CastedLinear of this model")
    return installed


class FP8Matmul(Plugin):
    name = "fp8_matmul"
    family = "training"
    summary = "FP8 e4m3 forward / e5m2-gradient backward matmuls (torch._scaled_mm) for the head, MLP or attention."
    sources = ("KellerJordan/modded-nanogpt train_gpt.py: nanogpt::mm / mm_t FP8 custom ops (@YouJiacheng, record "
               "2025-01-13_Fp8LmHead); head scales of KellerJordan/modded-nanogpt#175 and #186", "pgolf issue #14")
    config = FP8MatmulConfig
    # both swap CastedLinear's class for a fake-quantized weight: one swap would silently undo the other
    conflicts = ("late_qat", "soft_round_qat")
    test_settings = {"fp8_matmul": {"targets": "head,mlp,attn", "scaling": "dynamic"}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, x_s=(1e-8, 100.0), w_s=(1e-8, 100.0), grad_s=(1e-8, 100.0))  # fp8's range

    @classmethod
    def check_peers(cls, cfg: FP8MatmulConfig, peers: dict[str, Any]) -> list[str]:
        if "mlp" in cfg.target_set and "fused_mlp" in peers:
            return ["fp8_matmul.targets: 'mlp' with plugin 'fused_mlp' (its fused kernel reads the fc/proj weights "
                    "directly: the FP8 path would never run); drop 'mlp' or fused_mlp"]
        return []

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        self.installed = install_fp8(model, self.cfg)
