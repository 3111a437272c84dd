"""Tile configurations of `fused_mlp`'s Triton kernel at a record's shape (pgolf issue #14), against cuBLAS.

The kernel's up-projection (forward: pre and leaky(pre)² from x·W1ᵀ) and its backward epilogue ((g·W2) ⊙ leaky'),
at PR #1493's micro-batch with `auto_micro_batch` (262,144 tokens × 512 → 2,048), timed per call for each tile
configuration (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps, persistent programs per SM); beside it cuBLAS's
plain `x @ W1ᵀ` (the matmul alone, no epilogue), the time to write the epilogue's two (tokens, hidden) outputs alone
(its memory floor) and the unfused pair (matmul + compiled LeakyReLU²). One H200 (sessions 19-20): the plugin's
tiles are the fastest, forward 1.12-1.16 ms and backward 1.17-1.21 ms a call against cuBLAS's 0.80-0.83 ms and a
memory floor of 0.64 ms; two programs an SM (smaller tiles, one's epilogue beside the other's main loop) is no faster
(forward 1.13-1.15, backward 1.33-1.62). `--quack` adds `backend = "quack"` (quack-kernels' CuTe-DSL GEMM with the
same two epilogues): each epilogue per call as the plugin runs it (its first call, JIT compile and autotuning
included, timed apart), the Triton kernel's two at the plugin's tiles in the same process, both epilogues at pinned
tile configurations (`QUACK_TILES`, timed in order and reversed), and the whole MLP's forward + backward on each
backend. One H200 (session 22, quack-kernels 0.6.5, nvidia-cutlass-dsl 4.8.1): forward 0.872 ms (autotuned, 32 s
first call) against cuBLAS's 0.81; backward, D only, autotuned 1.24-1.26 ms, pinned 128×256 without ping-pong 1.154,
128×128 ping-pong 1.156, 128×192 ping-pong 1.212, the Triton kernel 1.181 in the same process (a backward that also
stored leaky(pre)² for dW2, so the forward kept pre alone, took 1.35-1.45 ms: whole MLP 5.80 ms against Triton's
5.40). Session 23, two machines: forward 0.852 / 0.879 (Triton, second: 1.146), whole MLP 5.39 / 5.57 against
Triton's 5.43 / 5.81; the sweep's first entry read 7-12 % slower than when timed later (128×256 without ping-pong
1.264 first, 1.168 second; 128×128 ping-pong 1.307 first, 1.161 second), so the two pins are equal within that order
effect.

    python benchmarks/fused_mlp_tiles.py [--tokens 262144] [--hidden 2048] [--slope 0.5] [--json out.json] [--quack]
        [--no-tiles]   (CUDA, sm90+; PR #315's A=2 micro-batch: --tokens 393216 --hidden 1536 --slope 0)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cuda_timing import ms_per_call  # noqa: E402
from plugins import fused_mlp as FM  # noqa: E402

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps, programs per SM)
CONFIGS = [(128, 256, 64, 4, 8, 1), (128, 256, 64, 3, 8, 1), (128, 256, 64, 2, 8, 1), (256, 128, 64, 3, 8, 1),
           (128, 256, 128, 2, 8, 1), (128, 128, 128, 3, 8, 1), (128, 128, 64, 3, 4, 2), (128, 128, 64, 2, 4, 2),
           (128, 128, 64, 3, 8, 2), (128, 128, 64, 2, 8, 2), (64, 256, 64, 3, 4, 2), (128, 256, 64, 2, 8, 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=262144)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--slope", type=float, default=0.5, help="LeakyReLU slope (PR #1493: 0.5; PR #315's relu²: 0)")
    p.add_argument("--json")
    p.add_argument("--quack", action="store_true", help="also time backend quack (needs quack-kernels)")
    p.add_argument("--no-tiles", action="store_true", help="skip the Triton tile sweep")
    args = p.parse_args()
    if not torch.cuda.is_available() or FM.triton is None:
        raise SystemExit("fused_mlp_tiles: needs a CUDA GPU (sm90+) and triton; found none")
    torch.manual_seed(0)
    dev, bf, slope = "cuda", torch.bfloat16, args.slope
    x = torch.randn(args.tokens, args.dim, device=dev, dtype=bf)
    w1 = torch.randn(args.hidden, args.dim, device=dev, dtype=bf) / args.dim ** 0.5
    g = torch.randn(args.tokens, args.dim, device=dev, dtype=bf)
    w2t = torch.randn(args.hidden, args.dim, device=dev, dtype=bf) / args.dim ** 0.5
    ref_pre, _ = FM.up_reference(x, w1, slope)
    ref_dpre = FM.up_backward_reference(g, w2t.T.contiguous(), ref_pre, slope)
    flops = 2 * args.tokens * args.dim * args.hidden
    rows = {}

    def note(name, ms):
        rows[name] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
        print(f"{name:44s} {ms:8.4f} ms  {flops / ms / 1e9:7.1f} TFLOP/s", flush=True)

    note("cublas x@W1^T (no epilogue)", ms_per_call(lambda: x @ w1.T, 50))
    out = torch.empty(args.tokens, args.hidden, device=dev, dtype=bf)
    stores = ms_per_call(lambda: (out.fill_(1.0), out.fill_(2.0)), 50)  # the epilogue's two outputs, writes only
    rows["two output stores (the epilogue's memory floor)"] = {"ms": round(stores, 4)}
    print(f"{'two output stores (memory floor)':44s} {stores:8.4f} ms", flush=True)
    act = torch.compile(lambda t: F.leaky_relu(t, slope).square())
    note("cublas + compiled leaky^2 (unfused fwd)", ms_per_call(lambda: act(x @ w1.T), 50))
    if args.quack:
        quack_rows(x, w1, g, w2t.T.contiguous(), ref_pre, ref_dpre, note, rows, slope)
    for cfg in [] if args.no_tiles else CONFIGS:
        for name, call, ref in (("fwd", lambda c: FM._launch(x, w1, None, slope, c[:5], c[5])[0], ref_pre),
                                ("bwd", lambda c: FM._launch(g, w2t, ref_pre, slope, c[:5], c[5])[0], ref_dpre)):
            try:
                ok = torch.allclose(call(cfg).float(), ref.float(), atol=5e-2, rtol=5e-2)
                note(f"{name} {cfg}{'' if ok else ' MISMATCH'}", ms_per_call(lambda c=cfg, f=call: f(c), 50))
            except Exception as e:  # a configuration the hardware cannot hold (shared memory, registers)
                print(f"{name} {cfg}: {type(e).__name__}: {str(e)[:100]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


# (tile_m, tile_n, pingpong) of the quack epilogues' pinned-tile sweeps, forward and backward (cluster_m 2)
QUACK_TILES = [(128, 128, True), (128, 256, False), (128, 192, True), (128, 128, False), (256, 128, False)]


def quack_tile_sweep(x, w1, g, w2, ref_pre, note, slope: float) -> None:
    """Both epilogues at each pinned tile configuration (no autotuning), timed twice: the list in order, then
    reversed (the first entry timed read 7-12 % slow in session 23); the faster time is noted."""
    up, up_backward = FM.quack_epilogues(slope)
    pre, post, dpre = (torch.empty_like(ref_pre) for _ in range(3))
    calls = {}
    for tm, tn, pingpong in QUACK_TILES:
        cfg = FM.GemmConfig(tile_m=tm, tile_n=tn, pingpong=pingpong, cluster_m=2)
        tiles = f"{tm}x{tn} pingpong={pingpong}"
        calls[f"quack fwd {tiles}"] = lambda c=cfg: up(x, w1.T, out={"D": pre, "postact": post}, config=c, tuned=False)
        calls[f"quack bwd {tiles}"] = lambda c=cfg: up_backward(g, w2, ref_pre, out={"D": dpre}, config=c, tuned=False)
    times: dict[str, list[float]] = {}
    for order in (list(calls), list(reversed(calls))):
        for name in (n for n in order if times.get(n) != []):
            try:
                calls[name]()
                times.setdefault(name, []).append(ms_per_call(calls[name], 50))
            except Exception as e:  # a configuration the hardware cannot hold
                print(f"{name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                times[name] = []
    for name, ms in times.items():
        if ms:
            note(name, min(ms))


def quack_rows(x, w1, g, w2, ref_pre, ref_dpre, note, rows, slope: float) -> None:
    """backend quack against the references and the Triton kernel: epilogues per call, the MLP's fwd + bwd."""
    if FM.quack_activation is None:
        raise SystemExit("fused_mlp_tiles: --quack needs the quack-kernels package")
    ref_post = F.leaky_relu(ref_pre.float(), slope).square()
    w2t = w2.T.contiguous()
    note("triton fwd (the plugin's tiles)", ms_per_call(lambda: FM._launch(x, w1, None, slope), 50))
    note("triton bwd (the plugin's tiles)", ms_per_call(lambda: FM._launch(g, w2t, ref_pre, slope), 50))
    for name, call, refs in (("quack fwd", lambda: FM._quack_up(x, w1, slope), (ref_pre, ref_post)),
                             ("quack bwd", lambda: (FM._quack_up_backward(g, w2, ref_pre, slope),), (ref_dpre,))):
        start = time.perf_counter()
        got = call()
        torch.cuda.synchronize()
        rows[f"{name} first call s"] = round(time.perf_counter() - start, 2)
        err = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
               for a, b in zip(got, refs, strict=True)]
        rows[f"{name} max rel err"] = err
        print(f"{name}: first call {rows[f'{name} first call s']} s, max error / max |ref| {err}", flush=True)
        note(name, ms_per_call(call, 50))
    quack_tile_sweep(x, w1, g, w2, ref_pre, note, slope)
    for backend in ("triton", "quack"):
        ins = [t.detach().clone().requires_grad_() for t in (x, w1, w2)]
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        out = FM.fused_leaky_relu2_mlp(*ins, slope, backend)
        kept = (torch.cuda.memory_allocated() - before - out.numel() * out.element_size()) / 2**20
        del out
        step = lambda ins=ins, b=backend: torch.autograd.grad(FM.fused_leaky_relu2_mlp(*ins, slope, b), ins, g)  # noqa: E731
        ms = ms_per_call(step, 20)
        rows[f"mlp fwd+bwd {backend}"] = {"ms": round(ms, 4), "kept_for_backward_MiB": round(kept, 1)}
        print(f"{'mlp fwd+bwd ' + backend:44s} {ms:8.4f} ms  kept for backward {kept:8.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
