"""CPU count of the gradient accumulation work of one training step with parallel_muon's banks off and on
(issue #15), on the core GPT at PR #1855's block shapes (11 layers, 512 wide, 8/4 heads, MLP x4: 66 block
matrices), compiled fullgraph (backend aot_eager: the training path's one backward graph, without inductor),
a short sequence: the leaves the backward graph accumulates into, and in a profile of one step (`micro`
forward+backward passes, then the optimizer step) the AccumulateGrad calls, the `aten::add_` they run
(every micro-step after the first adds into .grad) and the optimizer's stack copies (`aten::_foreach_copy_`).

    python benchmarks/bank_grads.py [--layers 11] [--micro 2]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from core.model import GPT, ModelSpec
from core.optim import Muon, default_param_groups
from plugins.parallel_muon import ParallelMuon, install_banks


def accumulate_grad_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors autograd accumulates into for `loss` (its AccumulateGrad nodes)."""
    seen, stack, leaves = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "AccumulateGrad":
            leaves.append(node.variable)
        stack.extend(f for f, _ in node.next_functions)
    return leaves


def measure(banks: bool, layers: int, micro: int) -> dict[str, int]:
    torch.manual_seed(0)
    model = GPT(ModelSpec(num_layers=layers, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=4))
    if banks:
        install_banks(model)
    matrix = default_param_groups(model)["matrix"]
    opt = ParallelMuon.from_muon(Muon(matrix, lr=0.02, momentum=0.95, backend_steps=5), torch.bfloat16,
                                 torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randint(0, 1024, (micro, 1, 32))
    nodes = len(accumulate_grad_leaves(compiled(x[0], x[0])))
    model.zero_grad(set_to_none=True)
    for i in range(micro):  # warm-up step (banks built, momentum allocated)
        compiled(x[i], x[i]).backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(micro):
            compiled(x[i], x[i]).backward()
        opt.step()
    events = prof.events()
    acc = [e for e in events if e.name == "torch::autograd::AccumulateGrad"]
    acc_adds = [e for e in events if e.name == "aten::add_" and e.cpu_parent is not None
                and e.cpu_parent.name == "torch::autograd::AccumulateGrad"]
    ops = Counter(e.name for e in events)
    return {"matrices": sum(p.size(0) if p.ndim == 3 else 1 for p in matrix), "matrix_params": len(matrix),
            "leaves_accumulated": nodes, "AccumulateGrad_calls": len(acc), "AccumulateGrad_add_": len(acc_adds),
            "optimizer_foreach_copy_": ops["aten::_foreach_copy_"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--micro", type=int, default=2, help="forward+backward passes per step (grad accumulation)")
    args = ap.parse_args()
    for banks in (False, True):
        print(f"banks={str(banks).lower()}", measure(banks, args.layers, args.micro))


if __name__ == "__main__":
    main()
