"""Muon optimizer step time (issue #14): the per-matrix loop the core used before (kept here as `LoopMuon`) against
the batched `core.optim.Muon.step` (one Newton–Schulz call per same-shape bank, foreach momentum/WD/update).

Matrix set: PR #315's block matrices, per layer q 512x512, k 256x512, v 256x512, o 512x512, MLP up 1536x512,
down 512x1536 (fp32 params, 11 layers: 66 matrices), PR #315's Muon settings (lr 0.025, momentum 0.99, WD 0.04,
5 NS steps). Device cuda when available, else cpu; on cuda both use a compiled NS as the core does
(`LoopMuon`: `torch.compile(zeropower_via_newtonschulz5)` as core.train did, the batched step: the core's
`_compiled_zeropower`, dynamic=False). Median (and min) ms over --steps steps after --warmup steps, plus the
largest parameter difference between the two after the same steps (0 when they agree bit for bit).

    python benchmarks/muon_step.py --json muon_step.json      # GPU: 5 warm-up, 20 timed steps
    python benchmarks/muon_step.py --warmup 1 --steps 3       # CPU smoke run (bf16 matmuls are slow there)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.optim import Muon, zeropower_via_newtonschulz5  # noqa: E402

LAYER = [(512, 512), (256, 512), (256, 512), (512, 512), (1536, 512), (512, 1536)]  # q, k, v, o, up, down
SETTINGS = dict(lr=0.025, momentum=0.99, backend_steps=5, weight_decay=0.04)


class LoopMuon(Muon):
    """The core's `Muon.step` before batching: one NS call and ~8 eager ops per matrix, a flat bf16 buffer."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        distributed = dist.is_available() and dist.is_initialized()
        world_size, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:
            params, lr, momentum = group["params"], group["lr"], group["momentum"]
            updates_flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                                       dtype=torch.bfloat16)
            curr = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    g, state = p.grad, self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=momentum)
                    coeffs = group.get("ns_coeffs")
                    ns = {} if coeffs is None else {"coeffs": coeffs}
                    g = self.zeropower(g, steps=group["backend_steps"], **ns)
                    g *= max(1, g.size(0) / g.size(1)) ** 0.5
                    updates_flat[curr : curr + p.numel()] = g.reshape(-1)
                curr += p.numel()
            if distributed:
                dist.all_reduce(updates_flat, op=dist.ReduceOp.SUM)
            wd, curr = group.get("weight_decay", 0.0), 0
            for p in params:
                if wd > 0.0:
                    p.mul_(1.0 - lr * wd)
                p.add_(updates_flat[curr : curr + p.numel()].view_as(p).to(dtype=p.dtype), alpha=-lr)
                curr += p.numel()


def make(cls, layers: int, device: torch.device, zeropower) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).mul_(0.02).to(device))
              for _ in range(layers) for s in LAYER]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return cls(params, zeropower=zeropower, **SETTINGS), params


def time_steps(opt, device: torch.device, warmup: int, steps: int) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        opt.step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.layers < 1 or args.steps < 1 or args.warmup < 0:
        ap.error(f"expected --layers >= 1, --steps >= 1, --warmup >= 0; got {args.layers}, {args.steps}, "
                 f"{args.warmup}")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        from core.train import _compiled_zeropower

        loop_ns, batched_ns = torch.compile(zeropower_via_newtonschulz5), _compiled_zeropower()
    else:
        loop_ns = batched_ns = zeropower_via_newtonschulz5
    rows, finals = [], []
    for name, cls, ns in (("per-matrix loop (before)", LoopMuon, loop_ns), ("batched Muon.step", Muon, batched_ns)):
        torch._dynamo.reset()  # each row compiles its own graphs (one recompile limit per code object)
        opt, params = make(cls, args.layers, device, ns)
        times = time_steps(opt, device, args.warmup, args.steps)
        finals.append([p.detach().clone() for p in params])
        rows.append({"impl": name, "median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times})
    max_diff = max((a - b).abs().max().item() for a, b in zip(*finals, strict=True))
    result = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
              "matrices": len(LAYER) * args.layers, "warmup": args.warmup, "steps": args.steps, "rows": rows,
              "speedup": rows[0]["median_ms"] / rows[1]["median_ms"], "max_param_diff": max_diff}
    print(f"Muon step, {result['matrices']} matrices (PR #315 shapes), {result['device']}, median of "
          f"{args.steps} steps after {args.warmup} warm-up")
    print(f"{'implementation':<28}{'median ms':>12}{'min ms':>12}")
    for r in rows:
        print(f"{r['impl']:<28}{r['median_ms']:>12.2f}{r['min_ms']:>12.2f}")
    print(f"speedup {result['speedup']:.2f}x; max |param difference| after the same steps: {max_diff:.3g}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
