"""Where does a recipe's training step do more work than its record's? Compare the traced graphs (issue #14).

Both models are built at the same (reduced) shape with the GPU's dtype policy (bf16 body, fp32 CastedLinear and
control tensors, bf16 autocast) and traced on CPU by dynamo + AOT autograd with inductor's partitioner
(`min_cut_rematerialization_partition`), so the forward graph, the backward graph and the tensors saved between
them are the ones inductor would receive on a GPU (attention aside: CPU SDPA). Printed per side: aten ops by kind,
matmul FLOPs, and the tensors saved for backward; then the kinds whose counts differ. The record is imported as a
module (its `main` does not run) with the `flash_attn_interface` stand-in of `pgolf bench`, configured by the
environment `pgolf bench --vs` gives it; its `GPT` takes its constructor arguments from the record's
`Hyperparameters` by name (or the `Hyperparameters` object itself, PR #1855's `GPT(h)`).

Doc-packed records (PR #1855: `flash_attn_varlen_func` over one flat row with cu_seqlens): both sides get one flat
row of `--batch`·train_seq_len tokens with a BOS every so often, pgolf `doc_ids`/`cu_seqlens` from doc_packing, the
record the same cu_seqlens; the record's varlen call runs pgolf's varlen kernel through the bench's stand-in (give
pgolf `varlen_attention.kernel=chunked`: the one both sides can trace on CPU). The record's Triton kernels (fused
MLP, fused CE) are off (their eager paths: the same math), and so are pgolf's (`fused_mlp` becomes `leaky_relu2`,
`fused_ce` the core's CE; `--keep-fused` traces their CPU torch references instead, not comparable op by op).
`--modes base recurrence` traces both depth-recurrence states: pgolf's switched as the trainer does (`set_modes`),
the record's by `looping_active`.

    python benchmarks/graph_diff.py --record .g5/pr315_train_gpt.py --recipe recipes/pr315.toml --data D \
        --set core.num_layers=3 core.model_dim=128 core.train_seq_len=256
    python benchmarks/graph_diff.py --record .g5/pr1855_train_gpt.py --recipe recipes/pr1855.toml --data D \
        --modes base recurrence --set core.num_layers=6 core.model_dim=128 core.num_heads=4 core.num_kv_heads=2 \
        core.train_seq_len=128 partial_rope.dims=8 depth_recurrence.loop_start=1 depth_recurrence.loop_end=2 \
        parallel_lanes.start=4 xsa.last_n=6 varlen_attention.kernel=chunked
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
    saved_sites = [site_of(o) if o.op == "call_function" else f"input {o.name}" for o in outputs if hasattr(o, "meta")]
    return {"ops": ops, "sites": sites, "flops": flops, "outputs": saved, "saved_sites": saved_sites}


def site_of(node: torch.fx.Node) -> str:
    """`node`'s op and the last source line that made it."""
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    return f"{node.target}: " + " | ".join(line.strip() for line in trace[-2:])[-160:]


def training_step(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, **compile_kwargs: Any) -> None:
    """One training micro-step (loss.backward()) of `model` compiled afresh, fullgraph, under bf16 autocast."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, **compile_kwargs)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = compiled(*args, **(kwargs or {}))
    loss.backward()


def traced(model: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> dict[str, dict[str, Any]]:
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

    training_step(model, args, kwargs, backend=backend)
    return graphs


def inductor_kernels(model: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> int:
    """Kernels inductor generates for one training micro-step (CPU codegen here; the fusion decisions are its
    scheduler's, as on a GPU; the scheduler counts bytes accessed only for GPU kernels)."""
    from torch._inductor import metrics

    metrics.reset()
    training_step(model, args, kwargs)
    return metrics.generated_kernel_count


def pgolf_model(recipe: Path, data: Path, sets: list[str]) -> tuple[torch.nn.Module, Any, Any]:
    """(pgolf's model cast as for training, its config, its Run: `core.train.set_modes(run, …)` switches modes)."""
    from core.config import resolve
    from core.model import cast_for_training
    from core.registry import Registry
    from core.train import setup

    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=recipe, check_plugins=reg.check,
                  sets=[*sets, f"core.data_path={data}", "core.device=cpu", "core.compile=false",
                        "core.val_max_tokens=65536"])
    run = setup(cfg, reg, make_dir=False)
    run.model = cast_for_training(run.model, torch.device("cpu"), bf16=True)
    return run.model, cfg, run


def record_model(script: Path, cfg: Any) -> torch.nn.Module:
    """The record's GPT at the recipe's shape, with its own dtype policy (`.bfloat16()`, CastedLinear and low-dim
    parameters back to fp32); Triton kernels (PR #1855's fused MLP and CE) off: their eager paths."""
    from pgolf.bench import SHIM, VARLEN_MODULES, pgolf_varlen_kernel
    from pgolf.records import core_env, decoded_source, profile_for
    from tests.record_module import TRITON_IMPORTS, _triton_stubs

    profile = profile_for(script, None)
    os.environ.update(core_env(cfg, cfg.core.train_seq_len))
    os.environ.update(profile.env(cfg, True))
    shim = Path(tempfile.mkdtemp(prefix="graph_diff_"))
    (shim / "flash_attn_interface.py").write_text(SHIM, encoding="utf-8")
    os.environ.setdefault("PGOLF_BENCH_SDPA", "sdpa")  # CPU SDPA, as pgolf on CPU
    varlen = pgolf_varlen_kernel(cfg)
    if varlen in VARLEN_MODULES:  # the bench's record stand-in: pgolf's own varlen kernel
        module_file, function = VARLEN_MODULES[varlen]
        os.environ.update(PGOLF_BENCH_VARLEN_PY=str(REPO / "plugins" / "lib" / module_file),
                          PGOLF_BENCH_VARLEN_FN=function)
    sys.path.insert(0, str(shim))
    source = shim / "record_train_gpt.py"
    text, n_triton = TRITON_IMPORTS.subn("", decoded_source(script.read_text(encoding="utf-8")))
    source.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("record_train_gpt", source)
    mod = importlib.util.module_from_spec(spec)
    if n_triton:
        mod.__dict__.update(_triton_stubs())
    spec.loader.exec_module(mod)
    args = mod.Hyperparameters()
    params = inspect.signature(mod.GPT).parameters
    kwargs = ({"h": args} if list(params) == ["h"] else
              {name: getattr(args, name) for name in params if hasattr(args, name)})
    torch.manual_seed(0)
    model = mod.GPT(**kwargs).bfloat16()
    for module in model.modules():
        if isinstance(module, mod.CastedLinear):
            module.float()
        if hasattr(module, "use_fused"):  # PR #1855's Triton LeakyReLU² MLP
            module.use_fused = False
    if hasattr(model, "fused_ce_enabled"):
        model.fused_ce_enabled = False
    (getattr(mod, "restore_low_dim_params_to_fp32", None) or mod.restore_fp32_params)(model)
    model.record_module = mod
    return model


EAGER = {"fused_mlp": "leaky_relu2", "fused_ce": None}  # CUDA-kernel plugin -> its eager equivalent (None: core's)


def eager_plugins(recipe: Path, sets: list[str]) -> list[str]:
    """`plugins=…` (and leaky_relu2's slope) replacing the recipe's CUDA-kernel plugins by their eager equivalents, or
    nothing when it has none or `sets` gives the plugin list."""
    from core.config import load_recipe

    raw = load_recipe(recipe)
    names = raw.get("plugins", [])
    if not set(EAGER) & set(names) or any(item.startswith("plugins=") for item in sets):
        return []
    eager = [EAGER.get(n, n) for n in names if EAGER.get(n, n)]
    slope = raw.get("fused_mlp", {}).get("slope")
    return [f"plugins={','.join(eager)}", *([f"leaky_relu2.slope={slope}"] if slope is not None else [])]


def set_mode(ours: Any, run: Any, theirs: torch.nn.Module, mode: str) -> None:
    """Depth recurrence off ("base") or on ("recurrence") on both sides: pgolf's as the trainer, the record's flag."""
    from core.train import set_modes

    set_modes(run, () if mode == "base" else (mode,))
    if hasattr(theirs, "looping_active"):
        theirs.looping_active = mode != "base"


def batches(cfg: Any, run: Any, n_rows: int, packed: bool) -> tuple[tuple, dict, tuple, dict]:
    """(pgolf's args, kwargs, the record's args, kwargs) of one micro-batch: `n_rows` rows of train_seq_len, or one
    flat row of as many tokens with a BOS (id 1) every 3/8 row and cu_seqlens in buckets of the loader's."""
    gen = torch.Generator().manual_seed(0)
    seq = cfg.core.train_seq_len
    if not packed:
        ids = torch.randint(0, cfg.core.vocab_size, (n_rows, seq + 1), generator=gen)
        return (ids[:, :-1], ids[:, 1:]), {}, (ids[:, :-1], ids[:, 1:]), {}
    from plugins.doc_packing import pack_boundaries, segment_starts

    n = n_rows * seq
    tokens = torch.randint(2, cfg.core.vocab_size, (n + 1,), generator=gen)
    bos = list(range(3, n, 3 * seq // 8 + 1))
    tokens[bos] = 1
    x, y = tokens[:-1][None], tokens[1:][None]
    bucket = cfg.plugin_configs["doc_packing"].cu_bucket_size
    doc_ids, cu = pack_boundaries(segment_starts([b for b in bos if b < n], n, seq), n, bucket)
    return (x, y), {"doc_ids": doc_ids[None], "cu_seqlens": cu}, (x, y), {"cu_seqlens": cu, "max_seqlen": seq}


def saved_summary(outputs: list[Any]) -> tuple[int, int]:
    tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def saved_key(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def saved_kinds(graphs: dict[str, dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(saved_key(t) for t in graphs["forward"]["outputs"] if isinstance(t, torch.Tensor))


def saved_diff(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(shape, dtype) of the forward's outputs (loss + saved for backward) -> (pgolf's count, the record's), where
    they differ."""
    a, b = saved_kinds(ours), saved_kinds(theirs)
    return {key: (a[key], b[key]) for key in sorted(set(a) | set(b)) if a[key] != b[key]}


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
    parser.add_argument("--saved", action="store_true", help="print the saved tensors' (shape, dtype) counts that "
                        "differ between the sides")
    parser.add_argument("--batch", type=int, default=2, help="sequences per micro-batch (doc-packed: rows of "
                        "train_seq_len in the flat row)")
    parser.add_argument("--modes", nargs="*", default=["base"], choices=["base", "recurrence"],
                        help="depth recurrence off (base) and/or on (recurrence), traced one after the other")
    parser.add_argument("--keep-fused", action="store_true", help="keep pgolf's fused_mlp / fused_ce (their CPU torch "
                        "references, not the kernels a GPU runs); by default they become leaky_relu2 / the core's CE, "
                        "the eager paths the record's side runs here")
    args = parser.parse_args()
    sets = args.sets if args.keep_fused else [*eager_plugins(args.recipe, args.sets), *args.sets]
    ours, cfg, run = pgolf_model(args.recipe, args.data, sets)
    theirs = record_model(args.record, cfg)
    packed = "doc_packing" in cfg.plugins
    if packed:
        theirs.record_module.BOS_ID = 1  # set by the record's loader
    ours_args, ours_kwargs, their_args, their_kwargs = batches(cfg, run, args.batch, packed)
    for mode in args.modes:
        set_mode(ours, run, theirs, mode)
        print(f"#### mode {mode}")
        sides = {"pgolf": traced(ours, ours_args, ours_kwargs), "record": traced(theirs, their_args, their_kwargs)}
        for name, graphs in sides.items():
            report(name, graphs)
        for kind in ("forward", "backward"):
            a, b = sides["pgolf"][kind]["ops"], sides["record"][kind]["ops"]
            diff = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
            print(f"-- {kind} ops whose counts differ (pgolf, record):")
            for op, (x, y) in diff.items():
                print(f"   {op:55s} {x:4d} {y:4d}")
        if args.saved:
            print("-- saved tensors (shape, dtype) whose counts differ (pgolf, record):")
            for key, (x, y) in saved_diff(sides["pgolf"], sides["record"]).items():
                print(f"   {key:55s} {x:4d} {y:4d}")
                for name, graphs in sides.items():
                    fw = graphs["forward"]
                    where = collections.Counter(site for t, site in zip(fw["outputs"], fw["saved_sites"], strict=True)
                                                if isinstance(t, torch.Tensor) and saved_key(t) == key)
                    for site, n in where.most_common():
                        print(f"      {name} x{n}: {site}")
        if args.inductor:
            for name, model, a, kw in (("pgolf", ours, ours_args, ours_kwargs),
                                       ("record", theirs, their_args, their_kwargs)):
                print(f"== {name} inductor: {inductor_kernels(model, a, kw)} kernels")
        for op in args.show:
            for name, graphs in sides.items():
                for kind, graph in graphs.items():
                    for site, n in graph["sites"][op].most_common():
                        print(f"{op} {name} {kind} x{n}: {site}")


if __name__ == "__main__":
    main()
