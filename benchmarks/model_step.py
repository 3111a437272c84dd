"""Forward+backward time of one compiled micro-step of a recipe's model or of its record's `GPT` (issue #14): the
model alone, no optimizer, data loader or evaluation, so two model codes can be timed against each other.

pgolf's side is built as `core.train.build_model` builds it (plugins, init, dtype policy; no data needed); the
record's as `benchmarks/graph_diff.py` builds it (imported with the bench's `flash_attn_interface` stand-in,
`.bfloat16()`, CastedLinear and low-dim parameters fp32). Both: `torch.compile(fullgraph=True, dynamic=False)`,
bf16 autocast, random token ids, `--batch` sequences of `core.train_seq_len` (48 × 2048: PR #315's micro-batch on
each of 8 GPUs), SDPA restricted to one kernel (`--attention`, flash by default; the record's FA3 call runs on SDPA
through the stand-in).
Prints the median and min ms over --steps timed steps (CUDA events) after --warmup steps (which compile).

    python benchmarks/model_step.py --side pgolf  --recipe recipes/pr315.toml
    python benchmarks/model_step.py --side record --recipe recipes/pr315.toml --record .g5/pr315_train_gpt.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.config import resolve  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.run import create_run  # noqa: E402
from core.train import CoreDefaults, build_model  # noqa: E402


def build(side: str, recipe: Path, record: Path | None, sets: list[str], plugins: list[str] | None,
          attention: str) -> tuple[torch.nn.Module, object]:
    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=recipe, check_plugins=reg.check,
                  plugins=plugins, sets=[*sets, "core.device=cuda", f"core.attention={attention}"])
    if side == "pgolf":
        return build_model(create_run(cfg, reg, CoreDefaults(fused_adam=True), make_dir=False)), cfg
    spec = importlib.util.spec_from_file_location("graph_diff", REPO / "benchmarks" / "graph_diff.py")
    graph_diff = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph_diff)
    return graph_diff.record_model(record, cfg).cuda(), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("pgolf", "record"), required=True)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--record", type=Path, help="the record's train_gpt.py (--side record)")
    parser.add_argument("--set", nargs="*", default=[], dest="sets")
    parser.add_argument("--plugins", help="pgolf side: comma-separated plugin list (default: the recipe's)")
    parser.add_argument("--attention", choices=("flash", "cudnn"), default="flash", help="the SDPA kernel, both sides")
    parser.add_argument("--batch", type=int, default=48, help="sequences per micro-step")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.side == "record" and args.record is None:
        parser.error("--side record needs --record")
    for kernel in ("flash", "cudnn", "mem_efficient", "math"):  # one SDPA kernel, both sides
        getattr(torch.backends.cuda, f"enable_{kernel}_sdp")(kernel == args.attention)
    plugins = args.plugins.split(",") if args.plugins else None
    model, cfg = build(args.side, args.recipe, args.record, args.sets, plugins, args.attention)
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    ids = torch.randint(0, cfg.core.vocab_size, (args.batch, cfg.core.train_seq_len + 1), device="cuda")
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(x, y)
        loss.backward()
        for p in model.parameters():
            p.grad = None

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    print(f"{args.side}: median {times[len(times) // 2]:.2f} ms, min {times[0]:.2f} ms per micro-step "
          f"({args.batch} x {cfg.core.train_seq_len} tokens, {args.steps} steps)")


if __name__ == "__main__":
    main()
