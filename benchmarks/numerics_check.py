"""Numerics of the kernels a record's step runs, eager and compiled, against fp32 references (issue #11's PR #1493
gap, issue #14's backend choice): attention kernels at a model's training shape, and RMSNorm on bf16 inputs.

Each SDPA kernel set pgolf can pick (SDPA_SETS, as core.run.pick_attention enables them: cudnn = cuDNN with flash as
fallback, flash, efficient, math) and fa4 when importable, eager and under torch.compile(fullgraph=True), in the two
layouts models hand to attention — (B, H, T, D) contiguous (pgolf's model until issue #14's layout change), and
(B, T, H, D) tensors viewed as (B, H, T, D) as the FA3-style records and pgolf now do — against an fp32 math
reference on the same inputs: the relative error ||x - ref|| / ||ref|| of the output and of dq, dk, dv, and the CUDA
kernels that ran (profiler names). q and k are RMS-normalised and q scaled by the QK gain, as in the records, so the
logits have the trained model's range.

Why: on one H200 the PR #1493 record compiled trains 0.056 nats below itself run eagerly at step 50, while pgolf
compiled, pgolf eager and the record eager agree within 0.008 (all on pgolf's "cudnn" SDPA set). A kernel that
differs between those paths, or whose gradients are off at GQA shapes, shows up here. RMSNorm: `F.rms_norm` with the
default eps on bf16 rows of RMS 0.005 (the records' tied embedding at init), 0.05 and 1, eager and compiled, against
the fp32 computation (pytorch/pytorch#189581 reports CUDA's bf16 RMSNorm off by ~1.7x at small variance).

    python benchmarks/numerics_check.py --json numerics_check.json           # GPU: PR #1493 shape
    python benchmarks/numerics_check.py --shape 1,4,2,64,16 --device cpu      # CPU smoke run (math only)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.lib import fa4  # noqa: E402

SDPA_SETS = {"cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION"), "flash": ("FLASH_ATTENTION",),
             "efficient": ("EFFICIENT_ATTENTION",), "math": ("MATH",)}  # the SDPA kernels each choice enables

Attention = Callable[[Tensor, Tensor, Tensor], Tensor]  # (B, H, T, D) q, (B, Hkv, T, D) k, v -> (B, H, T, D)


def make_inputs(shape: tuple[int, ...], qk_gain: float, device: torch.device, layout: str, seed: int = 0):
    """bf16 leaf tensors q, k, v (B, H, T, D) — for layout "bthd" views of (B, T, H, D) storage — and a grad."""
    b, h, hkv, t, d = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    raw = [torch.randn(b, t, n, d, generator=gen) for n in (h, hkv, hkv)]
    raw[0] = F.rms_norm(raw[0], (d,)) * qk_gain
    raw[1] = F.rms_norm(raw[1], (d,))
    grad = torch.randn(b, h, t, d, generator=gen).to(device, torch.bfloat16)
    leaves = [x.to(device, torch.bfloat16) for x in raw]
    if layout == "bhtd":
        leaves = [x.transpose(1, 2).contiguous() for x in leaves]
    leaves = [x.requires_grad_() for x in leaves]
    views = leaves if layout == "bhtd" else [x.transpose(1, 2) for x in leaves]
    return leaves, views, grad


def sdpa_on(kernels: tuple[str, ...] | None) -> Attention:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if kernels is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
        with sdpa_kernel([getattr(SDPBackend, s) for s in kernels]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    return attend


def fa4_attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return fa4.fa4_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def reference(shape, qk_gain: float, device: torch.device) -> dict[str, Tensor]:
    """fp32 math SDPA on the bf16 inputs (upcast): out, dq, dk, dv in (B, H, T, D)."""
    leaves, views, grad = make_inputs(shape, qk_gain, device, "bhtd")
    q, k, v = (x.detach().float().requires_grad_() for x in leaves)
    out = sdpa_on(("MATH",))(q, k, v)
    out.backward(grad.float())
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def check(fn: Attention, ref: dict[str, Tensor], shape, qk_gain: float, device: torch.device, layout: str) -> dict:
    """Run `fn` forward+backward on the layout's inputs; relative errors against `ref` and the kernels seen."""
    leaves, views, grad = make_inputs(shape, qk_gain, device, layout)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        out = fn(*views)
        out.backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    grads = [x.grad if layout == "bhtd" else x.grad.transpose(1, 2) for x in leaves]
    got = {"out": out.detach(), "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    errors = {n: float((got[n].float() - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)) for n in ref}
    words = ("attn", "fmha", "flash", "cudnn", "sdpa", "softmax", "cutlass")
    kernels = sorted({e.name[:60] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and any(w in e.name.lower() for w in words)})
    return {"errors": errors, "kernels": kernels}


def rms_norm_rows(device: torch.device, dim: int = 512, rows: int = 4096) -> list[dict]:
    """F.rms_norm (default eps) on bf16 rows of several scales, eager and compiled: relative error of the output
    and of the input gradient against the same computation on the fp32 upcast."""
    def norm(x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),))

    out = []
    for scale in (0.005, 0.05, 1.0):
        gen = torch.Generator(device="cpu").manual_seed(0)
        base = (torch.randn(rows, dim, generator=gen) * scale).to(device, torch.bfloat16)
        grad = torch.randn(rows, dim, generator=gen).to(device, torch.bfloat16)
        ref_x = base.float().requires_grad_()
        ref = norm(ref_x)
        ref.backward(grad.float())
        ref = ref.detach()
        for mode, fn in (("eager", norm), ("compile", torch.compile(norm, fullgraph=True, dynamic=False))):
            x = base.clone().requires_grad_()
            y = fn(x)
            y.backward(grad)
            y = y.detach()
            errors = {"out": float((y.float() - ref).norm() / ref.norm()),
                      "dx": float((x.grad.float() - ref_x.grad).norm() / ref_x.grad.norm())}
            out.append({"op": "rms_norm", "rms": scale, "mode": mode, "errors": errors,
                        "out_rms": float(y.float().pow(2).mean().sqrt())})
    return out


def candidates(device: torch.device) -> dict[str, Attention]:
    sets = {name: sdpa_on(kernels) for name, kernels in SDPA_SETS.items()}
    if device.type != "cuda":
        sets = {"math": sets["math"]}
    if device.type == "cuda" and fa4.available():
        sets["fa4"] = fa4_attend
    return sets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="6,8,4,2048,64", help="B,H,Hkv,T,D (default: PR #1493 at 98,304 tokens/step)")
    ap.add_argument("--qk-gain", type=float, default=5.25)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    shape = tuple(int(x) for x in a.shape.split(","))
    if len(shape) != 5 or shape[1] % shape[2]:
        ap.error(f"--shape: expected B,H,Hkv,T,D with Hkv dividing H, got {a.shape!r}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    ref = reference(shape, a.qk_gain, device)
    rows = []
    for name, fn in candidates(device).items():
        for mode in a.modes.split(","):
            run = torch.compile(fn, fullgraph=True, dynamic=False) if mode == "compile" else fn
            for layout in ("bhtd", "bthd"):
                row = {"backend": name, "mode": mode, "layout": layout}
                try:
                    row.update(check(run, ref, shape, a.qk_gain, device, layout))
                except Exception as e:  # noqa: BLE001 - a kernel that cannot run here is a row, not a crash
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
                rows.append(row)
                err = row.get("errors")
                cells = " ".join(f"{k}={v:.2e}" for k, v in err.items()) if err else row["error"]
                print(f"{name:<10} {mode:<8} {layout:<5} {cells}  {' | '.join(row.get('kernels', []))}", flush=True)
    norms = rms_norm_rows(device)
    for r in norms:
        print(f"rms_norm   {r['mode']:<8} rms={r['rms']:<6} out_rms={r['out_rms']:.4f} "
              + " ".join(f"{k}={v:.2e}" for k, v in r["errors"].items()), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"shape": shape, "qk_gain": a.qk_gain, "device": str(device), "rows": rows,
                                      "rms_norm": norms},
                                     indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
