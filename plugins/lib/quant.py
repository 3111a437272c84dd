"""Mixed-precision export policy shared by the quantizer plugins (PR #315 int6, PR #180 int5, PR #414, PR #1394).

A policy decides per state-dict entry, in the records' order (PR #315 `mixed_quantize_int6`): exact
passthrough for non-floats, fp16 passthrough for small tensors (at most `keep_float_max_numel` elements,
control tensors included), fp32 passthrough for larger control tensors, fp16 for families set to 16 bits,
the baseline int8 rule for families set to 8 bits (unless the caller clips int8 rows itself), and per-row
int-k codes (k in 2..8, stored in int8 containers, scheme "intk_per_row"; 1-D tensors get one scale,
"intk_per_tensor") for the others. The plugins differ only in how they choose each row's clip (`RowClip`).
Bits come per family (`attn_bits`, …) or per tensor: `bits_overrides` maps name globs to bits, as PR #534
(blocks 0 and 10 int8, 1-9 int6), PR #39 (int6 on layers 3-6) and PR #180 (fp16 last-layer c_k) set them.

Also here: the full-Hessian GPTQ column solver (PR #1019 / #1060 / #1394 `gptq_quantize_weight`) shared by
the `gptq` plugin and its tests.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core import export as ex
from core.model import CONTROL_TENSOR_NAME_PATTERNS
from plugins import quant_int8 as int8

# A row clip rule: (float32 matrix, qmax) -> per-row clip values (the value that maps to code qmax).
RowClip = Callable[[Tensor, int], Tensor]

FAMILIES = ("attn", "mlp", "embed", "head", "other")


def tensor_family(name: str) -> str:
    """Coarse family of a state-dict entry: control, embed, head, attn, mlp or other."""
    parts = name.split(".")
    if any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS):
        return "control"
    if any("emb" in p for p in parts):
        return "embed"
    if "lm_head" in parts:
        return "head"
    if "attn" in parts:
        return "attn"
    if "mlp" in parts:
        return "mlp"
    return "other"


@dataclass
class MixedBitsConfig:
    """Bits per tensor family (as `tensor_family` names them); 16 = fp16, 8 = baseline int8."""

    attn_bits: int = field(default=6, metadata={"help": "attention matrices (PR #315: int6)"})
    mlp_bits: int = field(default=6, metadata={"help": "MLP matrices (PR #315: 6; PR #180: 5)"})
    embed_bits: int = field(default=8, metadata={"help": "token embedding (8 = baseline int8, 16 = fp16)"})
    head_bits: int = field(default=8, metadata={"help": "untied lm_head (8 = baseline int8)"})
    other_bits: int = field(default=8, metadata={"help": "other large float tensors"})
    keep_float_max_numel: int = field(default=65_536, metadata={
        "help": "float tensors with at most this many elements pass through as fp16"})
    bits_overrides: str = field(default="", metadata={
        "help": "per-tensor bits over the family's: comma-separated glob=bits on state-dict names "
                "(fnmatch, '*' crosses dots; e.g. 'blocks.0.*=8, blocks.1[01].mlp.*=5'); the first "
                "matching pattern wins; bits 2..8 or 16; small and control tensors still pass through"})

    def __post_init__(self) -> None:
        for family in FAMILIES:
            bits = getattr(self, f"{family}_bits")
            if not valid_bits(bits):
                raise ValueError(f"{family}_bits: expected 2..8 or 16, got {bits!r}")
        parse_bits_overrides(self.bits_overrides)


def valid_bits(bits: object) -> bool:
    return isinstance(bits, int) and not isinstance(bits, bool) and (2 <= bits <= 8 or bits == 16)


_GLOB_CHARS = re.compile(r"^[A-Za-z0-9_.*?!\[\]-]+$")
_GLOB_CLASS = re.compile(r"\[!?[^\[\]]+\]")


@functools.lru_cache(maxsize=64)
def parse_bits_overrides(text: str) -> tuple[tuple[str, int], ...]:
    """`"glob=bits, glob=bits"` -> ((glob, bits), ...) in order; a one-line ValueError naming the entry.

    A glob is an fnmatch pattern over state-dict names (letters, digits, `_ . - * ? ! [ ]`, brackets
    balanced and non-empty); bits are 2..8 or 16 (fp16)."""
    out = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        glob, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not glob:
            raise ValueError(f"bits_overrides: entry {entry!r}: expected glob=bits (e.g. 'blocks.0.*=8')")
        if not _GLOB_CHARS.match(glob) or "[" in _GLOB_CLASS.sub("", glob) or "]" in _GLOB_CLASS.sub("", glob):
            raise ValueError(f"bits_overrides: bad glob {glob!r} (expected a name pattern of letters, digits, "
                             f"_ . - * ? and balanced [...] classes)")
        try:
            bits = int(value) if value.isascii() else None  # int() also reads '٨' as 8
        except ValueError:
            bits = None
        if not valid_bits(bits):
            raise ValueError(f"bits_overrides: {glob!r}={value!r}: expected bits in 2..8 or 16")
        assert bits is not None
        out.append((glob, bits))
    return tuple(out)


def override_bits(cfg: MixedBitsConfig, name: str) -> int | None:
    """The bits of the first `bits_overrides` glob matching `name` (None: no override)."""
    for glob, bits in parse_bits_overrides(cfg.bits_overrides):
        if fnmatch.fnmatchcase(name, glob):
            return bits
    return None


def bits_for(cfg: MixedBitsConfig, name: str) -> int:
    """`name`'s bits: the first matching `bits_overrides` glob, else its family's setting."""
    if cfg.bits_overrides and (bits := override_bits(cfg, name)) is not None:
        return bits
    family = tensor_family(name)
    bits = getattr(cfg, f"{family}_bits", cfg.other_bits)
    if not valid_bits(bits):
        raise ValueError(f"{family}_bits must be in 2..8 or 16, got {bits}")
    return int(bits)


def qmax_of(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def passthrough(t: Tensor, fp32: bool = False) -> ex.QTensor:
    """Exact for non-floats; fp32 (control tensors) or fp16 copy for floats."""
    dtype = int8.dtype_name(t)
    if not t.is_floating_point():
        return ex.QTensor("passthrough", t, None, dtype, tuple(t.shape))
    kept = t.float().contiguous() if fp32 else t.to(torch.float16).contiguous()
    return ex.QTensor("passthrough", kept, None, dtype, tuple(t.shape), {"store": int8.dtype_name(kept)})


def rowmax_clip(t32: Tensor, qmax: int) -> Tensor:
    """PR #315: the row's absolute maximum."""
    return t32.abs().amax(dim=1)


def quantize_rows(t32: Tensor, clip: Tensor, bits: int, extra_negative: bool, min_scale: float | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Per-row codes and fp16 scales: scale = max(clip/qmax, min_scale), codes = clamp(round(w/scale)).

    Codes lie in [-qmax-1, qmax] with `extra_negative` (PR #315's [-32, 31]) else [-qmax, qmax].
    `min_scale` defaults to 1/qmax (the records' floor).
    """
    qmax = qmax_of(bits)
    floor = 1.0 / qmax if min_scale is None else min_scale
    scale = (clip / qmax).clamp_min(floor).to(torch.float16)
    lo = -qmax - 1 if extra_negative else -qmax
    codes = torch.clamp(torch.round(t32 / scale.float()[:, None]), lo, qmax).to(torch.int8)
    return codes.contiguous(), scale.contiguous()


def dequant_rows(codes: Tensor, scale: Tensor) -> Tensor:
    return codes.float() * scale.float()[:, None]


def quantize_tensor_amax(t32: Tensor, bits: int, extra_negative: bool) -> tuple[Tensor, Tensor]:
    """One scale for a non-matrix tensor (the records' 1-D branch): amax/qmax in fp16."""
    qmax = qmax_of(bits)
    amax = float(t32.abs().max().item()) if t32.numel() else 0.0
    scale = torch.tensor(amax / qmax if amax > 0 else 1.0, dtype=torch.float16)
    lo = -qmax - 1 if extra_negative else -qmax
    codes = torch.clamp(torch.round(t32 / scale.float()), lo, qmax).to(torch.int8)
    return codes.contiguous(), scale


def baseline_int8_any_size(name: str, t: Tensor) -> ex.QTensor:
    """The baseline int8 rule, also below its own 65,536-element passthrough size (bit-identical above it)."""
    if t.numel() > int8.KEEP_FLOAT_MAX_NUMEL:
        return int8.int8_quantize(name, t)
    t32 = t.float()
    shape, dtype = tuple(t.shape), int8.dtype_name(t)
    if t32.ndim == 2 and t32.shape[0] > 0:
        clip = torch.quantile(t32.abs(), int8.INT8_CLIP_Q, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        codes = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8).contiguous()
        return ex.QTensor("int8_per_row", codes, scale.to(torch.float16).contiguous(), dtype, shape)
    clip_abs = float(torch.quantile(t32.abs().flatten(), int8.INT8_CLIP_Q).item()) if t32.numel() else 0.0
    scale_t = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    codes = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale_t), -127, 127)
    return ex.QTensor("int8_per_tensor", codes.to(torch.int8).contiguous(), scale_t, dtype, shape)


def policy_quantize(name: str, tensor: Tensor, cfg: MixedBitsConfig, row_clip: RowClip, extra_negative: bool,
                    method: str, min_scale: float | None = None, baseline_int8: bool = True,
                    rows: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None) -> ex.QTensor:
    """The mixed policy for one tensor (see the module docstring). `rows(t32, bits)` -> (codes, fp16 scales),
    when given, quantizes the matrices instead of the clip rule, and other shapes take the baseline int8 rule
    (PR #534's `quantize_float_tensor`)."""
    t = tensor.detach().to("cpu").contiguous()
    if not t.is_floating_point():
        return passthrough(t)
    if t.numel() <= cfg.keep_float_max_numel:
        return passthrough(t)
    if any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS):
        return passthrough(t, fp32=True)
    bits = bits_for(cfg, name)
    if bits == 16:
        return passthrough(t)
    if bits == 8 and baseline_int8:
        return baseline_int8_any_size(name, t)
    t32 = t.float()
    shape, dtype = tuple(t.shape), int8.dtype_name(t)
    meta: dict[str, int | float | str] = {"bits": bits, "method": method}
    if rows is not None and (t32.ndim != 2 or t32.shape[0] == 0):
        return baseline_int8_any_size(name, t)
    if t32.ndim == 2 and t32.shape[0] > 0:
        if rows is not None:
            codes, scale = rows(t32, bits)
        else:
            codes, scale = quantize_rows(t32, row_clip(t32, qmax_of(bits)), bits, extra_negative, min_scale)
        return ex.QTensor("intk_per_row", codes, scale, dtype, shape, meta)
    codes, scale = quantize_tensor_amax(t32, bits, extra_negative)
    return ex.QTensor("intk_per_tensor", codes, scale, dtype, shape, meta)


# --- full-Hessian GPTQ ------------------------------------------------------------------------------
@dataclass
class PreparedHessian:
    """A damped, act-ordered Hessian: `u` is the upper Cholesky factor of its inverse (permuted order)."""

    u: Tensor
    perm: Tensor
    invperm: Tensor
    dead: Tensor


def prepare_hessian(hessian: Tensor, damp: float = 0.01) -> PreparedHessian:
    """Dead columns (zero diagonal) get 1 on the diagonal, then damp·mean(diag) is added; columns are
    ordered by descending diagonal (act-order); U = chol(H⁻¹)ᵀ as in the records. Raises
    torch.linalg.LinAlgError when H is not positive definite."""
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h.diagonal().add_(damp * h.diagonal().mean())
    perm = torch.argsort(h.diagonal(), descending=True)
    h = h[perm][:, perm]
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return PreparedHessian(u=u, perm=perm, invperm=torch.argsort(perm), dead=dead)


def gptq_rows(w32: Tensor, prep: PreparedHessian, scale: Tensor, lo: int, hi: int, block_size: int = 128
              ) -> Tensor:
    """GPTQ codes (int8, original column order) for rows `w32` with fixed per-row `scale`.

    Columns are quantized in act order; each column's error (w − q·s)/U_jj is spread over the rest of
    its block along U[j, j:], and each block's errors over the later columns with Err·U[block, rest].
    Rows are independent, so callers may stack several scale candidates as extra rows.
    """
    # Work on the transpose (columns contiguous): each column step and rank-1 update reads contiguous memory.
    wt = w32.float()[:, prep.perm].T.contiguous()
    wt[prep.dead[prep.perm]] = 0
    cols, rows = wt.shape
    s = scale.float().to(wt.device)
    codes_t = torch.empty(cols, rows, dtype=torch.float32, device=wt.device)
    u = prep.u.to(wt.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        block = wt[i1:i2]
        u_block = u[i1:i2, i1:i2]
        err = torch.empty(i2 - i1, rows, dtype=torch.float32, device=wt.device)
        for j in range(i2 - i1):
            col = block[j]
            q = torch.clamp(torch.round(col / s), lo, hi)
            codes_t[i1 + j] = q
            e = (col - q * s) / u_block[j, j]
            err[j] = e
            block[j:].addr_(u_block[j, j:], e, alpha=-1.0)
        if i2 < cols:
            wt[i2:].addmm_(u[i1:i2, i2:].T, err, alpha=-1.0)
    return codes_t.T[:, prep.invperm].to(torch.int8).contiguous()


def gptq_quantize(w32: Tensor, prep: PreparedHessian, candidate_scales: list[Tensor], bits: int,
                  block_size: int = 128, per_row: bool = False) -> tuple[Tensor, Tensor, int]:
    """(codes, fp16 scale, chosen candidate) for one matrix, codes in [-qmax, qmax].

    Every candidate (a per-row fp16 scale) runs through GPTQ in one stacked pass; the one with the lowest
    mean squared weight error wins (per matrix as PR #1060, ties to the earlier one; or per row).
    """
    qmax = qmax_of(bits)
    rows = w32.shape[0]
    scales = torch.stack([s.to(torch.float16).to(w32.device) for s in candidate_scales])  # (k, rows)
    stacked = w32.float().repeat(len(candidate_scales), 1)
    codes = gptq_rows(stacked, prep, scales.reshape(-1).float(), -qmax, qmax, block_size)
    codes = codes.view(len(candidate_scales), rows, -1)
    recon = codes.float() * scales.float()[:, :, None]
    row_err = (recon - w32.float()[None]).pow(2).mean(dim=2)  # (k, rows)
    if per_row:
        best = torch.argmin(row_err, dim=0)
        pick = torch.arange(rows, device=codes.device)
        return codes[best, pick].contiguous(), scales[best, pick].contiguous(), -1
    k = int(torch.argmin(row_err.mean(dim=1)).item())
    return codes[k].contiguous(), scales[k].contiguous(), k
