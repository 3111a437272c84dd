"""One linear's compiled forward+backward in bf16 vs FP8 (plugins/fp8_matmul.py, static and dynamic scales), at the
PR #315 shapes (pgolf issue #14).

For each token count and (in -> out) shape: x (tokens, in) bf16, an fp32 master weight (out, in), and a bf16 output
gradient; each setting is compiled (fullgraph) and timed `--iters` fwd+bwd calls, `--repeats` times, the settings
alternating so drift shows. Also printed: the FP8 output's and gradients' relative error against bf16.

    python benchmarks/fp8_matmul.py --json out.json            (needs an FP8 GPU: sm89+, e.g. H100/H200)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cuda_timing import ms_per_call  # noqa: E402
from plugins.fp8_matmul import FP8MatmulConfig, fp8_linear  # noqa: E402

# PR #315 (d=512, MLP 3x, 8 heads / 4 KV heads of 64, vocab 1024): mlp fc, mlp proj, q+k+v, attn proj, head
SHAPES = "512x1536,1536x512,512x1024,512x512,512x1024"
TOKENS = "98304,393216"  # one micro-step of PR #315's 786,432-token step on 8 GPUs; four of them
SETTINGS = ("bf16", "fp8_static", "fp8_dynamic")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            k, n = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: expected IN x OUT pairs like 512x1536, got {item.strip()!r}") from None
        if k <= 0 or n <= 0 or k % 16 or n % 16:
            raise ValueError(f"--shapes: {item.strip()!r}: sizes must be positive multiples of 16 (_scaled_mm)")
        shapes.append((k, n))
    return shapes


def parse_tokens(text: str) -> list[int]:
    try:
        tokens = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--tokens: expected comma-separated integers, got {text!r}") from None
    if any(t <= 0 or t % 16 for t in tokens):
        raise ValueError(f"--tokens: counts must be positive multiples of 16, got {text!r}")
    return tokens


def linear_fn(setting: str):
    if setting == "bf16":
        return lambda x, w: F.linear(x, w.to(x.dtype))
    cfg = FP8MatmulConfig(scaling=setting.removeprefix("fp8_"))
    return lambda x, w: fp8_linear(x, w, cfg)


def fwd_bwd(fn, x, w, g):
    x.grad = w.grad = None
    out = fn(x, w)
    out.backward(g)
    return out


def time_setting(setting: str, x, w, g, iters: int) -> float:
    """ms per compiled forward+backward of `setting` (compiled afresh)."""
    torch._dynamo.reset()
    fn = torch.compile(linear_fn(setting), fullgraph=True)
    return ms_per_call(lambda: fwd_bwd(fn, x, w, g), iters)


def rel_errors(setting: str, x, w, g) -> list[float]:
    """‖fp8 − bf16‖/‖bf16‖ of (output, dX, dW)."""
    got, ref = [], []
    for s, into in ((setting, got), ("bf16", ref)):
        out = fwd_bwd(linear_fn(s), x, w, g)
        into += [out.float(), x.grad.float(), w.grad.float()]
    return [((a - b).norm() / b.norm()).item() for a, b in zip(got, ref, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default=TOKENS, help="comma-separated token counts (rows of x)")
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated INxOUT linear shapes")
    parser.add_argument("--iters", type=int, default=20, help="timed fwd+bwd calls per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each setting, alternating")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        tokens, shapes = parse_tokens(args.tokens), parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.iters < 1 or args.repeats < 1:
        parser.error("--iters and --repeats must be at least 1")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        sys.exit("benchmarks/fp8_matmul.py: needs a CUDA GPU with FP8 matmuls (sm89+, e.g. H100/H200); none here")
    rows = []
    for t in tokens:
        for k, n in shapes:
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(t, k, device="cuda", generator=gen).bfloat16().requires_grad_()
            w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).requires_grad_()
            g = (torch.randn(t, n, device="cuda", generator=gen) / t).bfloat16()  # a mean loss's per-row scale
            ms: dict[str, list[float]] = {s: [] for s in SETTINGS}
            for _ in range(args.repeats):
                for s in SETTINGS:
                    ms[s].append(time_setting(s, x, w, g, args.iters))
            err = {s: rel_errors(s, x, w, g) for s in SETTINGS[1:]}
            best = {s: min(v) for s, v in ms.items()}
            print(f"tokens {t} {k}->{n}: " + "  ".join(f"{s} {best[s]:.3f} ms" for s in SETTINGS)
                  + "  speedup " + " ".join(f"{s} {best['bf16'] / best[s]:.2f}x" for s in SETTINGS[1:])
                  + "  rel.err(y,dx,dw) " + " ".join(f"{s} " + "/".join(f"{e:.3f}" for e in err[s])
                                                    for s in SETTINGS[1:]), flush=True)
            rows.append({"tokens": t, "in": k, "out": n, "ms": ms, "rel_err_y_dx_dw": err})
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(),
                                         "iters": args.iters, "repeats": args.repeats, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
