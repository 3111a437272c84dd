"""Where does a recipe's training step do more work than its record's? Compare the traced graphs (issue #14).

Both models are built at the same (reduced) shape with the GPU's dtype policy (bf16 body, fp32 CastedLinear and
control tensors, bf16 autocast) and traced on CPU by dynamo + AOT autograd with inductor's partitioner
(`min_cut_rematerialization_partition`), so the forward graph, the backward graph and the tensors saved between
them are the ones inductor would receive on a GPU (attention aside: CPU SDPA). Printed per side: aten ops by kind,
matmul FLOPs, and the tensors saved for backward; then the kinds whose counts differ. The record is imported as a
module (its `main` does not run) with the `flash_attn_interface` stand-in of `pgolf bench`, configured by the
environment `pgolf bench --vs` gives it; its `GPT` takes its constructor arguments from the record's
`Hyperparameters` by name.

    python benchmarks/graph_diff.py --record .g5/pr315_train_gpt.py --recipe recipes/pr315.toml --data D \
        --set core.num_layers=3 core.model_dim=128 core.train_seq_len=256
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import inspect
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch._functorch.aot_autograd import aot_module_simplified
from torch._functorch.partitioners import min_cut_rematerialization_partition

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MATMULS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default"}


def graph_stats(gm: torch.fx.GraphModule) -> dict[str, Any]:
    ops: collections.Counter[str] = collections.Counter()
    sites: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    flops = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        ops[name] += 1
        trace = (node.meta.get("stack_trace") or "").strip().splitlines()
        sites[name][" | ".join(line.strip() for line in trace[-2:])[-160:]] += 1
        if name in MATMULS:
            a, b = (arg.meta["val"] for arg in node.args[-2:])
            flops += 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    saved = [o.meta.get("val") for o in outputs if hasattr(o, "meta")]
    return {"ops": ops, "sites": sites, "flops": flops, "outputs": saved}


def training_step(model: torch.nn.Module, args: tuple, **compile_kwargs: Any) -> None:
    """One training micro-step (loss.backward()) of `model` compiled afresh, fullgraph, under bf16 autocast."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, **compile_kwargs)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = compiled(*args)
    loss.backward()


def traced(model: torch.nn.Module, args: tuple) -> dict[str, dict[str, Any]]:
    """Forward and backward graphs of one training micro-step, as AOT autograd hands them to inductor."""
    graphs: dict[str, dict[str, Any]] = {}

    def capture(kind: str):
        def compiler(gm: torch.fx.GraphModule, _inputs: Any):
            graphs[kind] = graph_stats(gm)
            return gm.forward
        return compiler

    def backend(gm: torch.fx.GraphModule, inputs: Any):
        return aot_module_simplified(gm, inputs, fw_compiler=capture("forward"), bw_compiler=capture("backward"),
                                     partition_fn=min_cut_rematerialization_partition)

    training_step(model, args, backend=backend)
    return graphs


def inductor_kernels(model: torch.nn.Module, args: tuple) -> int:
    """Kernels inductor generates for one training micro-step (CPU codegen here; the fusion decisions are its
    scheduler's, as on a GPU; the scheduler counts bytes accessed only for GPU kernels)."""
    from torch._inductor import metrics

    metrics.reset()
    training_step(model, args)
    return metrics.generated_kernel_count


def pgolf_model(recipe: Path, data: Path, sets: list[str]) -> tuple[torch.nn.Module, Any]:
    from core.config import resolve
    from core.model import cast_for_training
    from core.registry import Registry
    from core.train import setup

    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=recipe, check_plugins=reg.check,
                  sets=[*sets, f"core.data_path={data}", "core.device=cpu", "core.compile=false",
                        "core.val_max_tokens=65536"])
    run = setup(cfg, reg, make_dir=False)
    return cast_for_training(run.model, torch.device("cpu"), bf16=True), cfg


def record_model(script: Path, cfg: Any) -> torch.nn.Module:
    """The record's GPT at the recipe's shape, with its own dtype policy (`.bfloat16()`, CastedLinear and low-dim
    parameters back to fp32)."""
    from pgolf.bench import SHIM
    from pgolf.records import core_env, decoded_source, profile_for

    profile = profile_for(script, None)
    os.environ.update(core_env(cfg, cfg.core.train_seq_len))
    os.environ.update(profile.env(cfg, True))
    shim = Path(tempfile.mkdtemp(prefix="graph_diff_"))
    (shim / "flash_attn_interface.py").write_text(SHIM, encoding="utf-8")
    os.environ.setdefault("PGOLF_BENCH_SDPA", "sdpa")  # CPU SDPA, as pgolf on CPU
    sys.path.insert(0, str(shim))
    source = shim / "record_train_gpt.py"
    source.write_text(decoded_source(script.read_text(encoding="utf-8")), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("record_train_gpt", source)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.Hyperparameters()
    kwargs = {name: getattr(args, name) for name in inspect.signature(mod.GPT).parameters if hasattr(args, name)}
    torch.manual_seed(0)
    model = mod.GPT(**kwargs).bfloat16()
    for module in model.modules():
        if isinstance(module, mod.CastedLinear):
            module.float()
    mod.restore_low_dim_params_to_fp32(model)
    return model


def saved_summary(outputs: list[Any]) -> tuple[int, int]:
    tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def report(name: str, graphs: dict[str, dict[str, Any]]) -> None:
    fw, bw = graphs["forward"], graphs["backward"]
    n_saved, saved_bytes = saved_summary(fw["outputs"])
    print(f"== {name}: forward {sum(fw['ops'].values())} ops, {fw['flops'] / 1e9:.3f} GFLOP matmul; backward "
          f"{sum(bw['ops'].values())} ops, {bw['flops'] / 1e9:.3f} GFLOP; forward outputs (loss + saved) "
          f"{n_saved} tensors, {saved_bytes / 2**20:.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a data folder of the recipe's vocabulary")
    parser.add_argument("--set", nargs="*", default=[], dest="sets")
    parser.add_argument("--show", nargs="*", default=[], help="aten ops (e.g. aten.clone.default) whose source "
                        "lines to print, per side and graph")
    parser.add_argument("--inductor", action="store_true", help="also compile each side with inductor (CPU) and "
                        "print how many kernels it generates")
    parser.add_argument("--batch", type=int, default=2, help="sequences per micro-batch")
    args = parser.parse_args()
    ours, cfg = pgolf_model(args.recipe, args.data, args.sets)
    theirs = record_model(args.record, cfg)
    ids = torch.randint(0, cfg.core.vocab_size, (args.batch, cfg.core.train_seq_len + 1))
    batch = (ids[:, :-1], ids[:, 1:])
    sides = {"pgolf": traced(ours, batch), "record": traced(theirs, batch)}
    for name, graphs in sides.items():
        report(name, graphs)
    for kind in ("forward", "backward"):
        a, b = sides["pgolf"][kind]["ops"], sides["record"][kind]["ops"]
        diff = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
        print(f"-- {kind} ops whose counts differ (pgolf, record):")
        for op, (x, y) in diff.items():
            print(f"   {op:55s} {x:4d} {y:4d}")
    if args.inductor:
        for name, model in (("pgolf", ours), ("record", theirs)):
            print(f"== {name} inductor: {inductor_kernels(model, batch)} kernels")
    for op in args.show:
        for name, graphs in sides.items():
            for kind, graph in graphs.items():
                for site, n in graph["sites"][op].most_common():
                    print(f"{op} {name} {kind} x{n}: {site}")


if __name__ == "__main__":
    main()
