"""Inductor's mix-order reduction on and off for the records' block pattern, compiled fwd+bwd (pgolf issue #15).

The block: a residual mix with the first layer's input (a (2, d) parameter), RMSNorm → matmul scaled by a per-channel
vector, RMSNorm → LeakyReLU² MLP scaled by another; `--layers` of them over `--tokens` tokens, bf16 activations. The
per-channel weights' gradients are the column reductions that mix-order reduction fuses with the norms' row
reductions (and finishes with an eager `aten::sum`, plugins/inductor_options.py). Each setting is compiled afresh
and timed `--repeats` times, alternating, so drift between them shows:

    python benchmarks/inductor_options.py --json out.json      (CUDA; one H200: on 8.0–8.2 ms, off 5.8–7.1 ms)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cuda_timing import ms_per_call  # noqa: E402


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mix = nn.Parameter(torch.stack([torch.ones(dim), torch.zeros(dim)]))
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.proj = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.up = nn.Parameter(torch.randn(4 * dim, dim) / dim**0.5)
        self.down = nn.Parameter(torch.randn(dim, 4 * dim) / (4 * dim) ** 0.5)

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix, d = self.mix.to(x.dtype), (x.shape[-1],)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * F.linear(F.rms_norm(x, d), self.proj.to(x.dtype))
        h = F.leaky_relu(F.linear(F.rms_norm(x, d), self.up.to(x.dtype)), 0.5).square()
        return x + self.mlp_scale.to(x.dtype) * F.linear(h, self.down.to(x.dtype))


class Stack(nn.Module):
    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x
        for block in self.blocks:
            x = block(x, x0)
        return F.rms_norm(x, (x.shape[-1],)).float().square().mean()


def time_setting(model: nn.Module, x: torch.Tensor, mix_order: bool, iters: int) -> float:
    """ms per compiled forward+backward with `triton.mix_order_reduction = mix_order` (compiled afresh)."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    with inductor.patch({"triton.mix_order_reduction": mix_order}):
        step = torch.compile(model, fullgraph=True)
        return ms_per_call(lambda: step(x).backward(), iters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=12288, help="tokens per micro-step (PR #1855 on one GPU)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--iters", type=int, default=50, help="timed fwd+bwd calls per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each setting, alternating")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs CUDA: the option changes inductor's Triton code generation only")
    import torch._inductor.config as inductor

    if not hasattr(inductor.triton, "mix_order_reduction"):
        parser.error(f"torch {torch.__version__} has no mix-order reduction (added in 2.10)")
    torch.manual_seed(0)
    model = Stack(args.dim, args.layers).cuda()
    x = torch.randn(1, args.tokens, args.dim, device="cuda", dtype=torch.bfloat16)
    results: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for mix_order, key in ((True, "on"), (False, "off")):
            results[key].append(time_setting(model, x, mix_order, args.iters))
            print(f"mix_order_reduction {key}: {results[key][-1]:.3f} ms fwd+bwd "
                  f"({args.layers} blocks, {args.tokens} tokens, dim {args.dim})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(),
                                         **vars(args), "json": str(args.json), "ms": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
