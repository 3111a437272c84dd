"""Time every evaluator on the validation set: plain, sliding_window (stride 64), score_first_ttt, lora_ttt,
phased_ttt, on a saved artifact or a freshly initialised model of a recipe; prints a table (ms, val_bpb).

Each evaluator gets its own run (the recipe's model plugins + that evaluator plugin, the recipe's and
--set settings), the artifact's weights (or the recipe's initialisation), the synthetic compile warm-up
(timed separately, never on validation tokens) and then the timed evaluation, during which any
recompilation is an error (`torch._dynamo.config.error_on_recompile`) when the model is compiled.

    # H100, the PR #315 model of a finished run (eval settings from the run's config.json + --set):
    python benchmarks/eval_bench.py runs/<run_id>
    # 8 GPUs, as the challenge evaluates:
    python -m torch.distributed.run --standalone --nproc_per_node=8 benchmarks/eval_bench.py runs/<run_id>
    # no artifact: a freshly initialised PR #315 model (timings only; its val_bpb is meaningless):
    python benchmarks/eval_bench.py --recipe recipes/pr315.toml --data ./data/datasets/fineweb10B_sp1024
    # CPU smoke test with tiny settings:
    python benchmarks/eval_bench.py --recipe recipes/baseline.toml --tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core import export as ex  # noqa: E402
from core.config import resolve  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.scoring import evaluate, prepare_eval  # noqa: E402
from core.train import set_modes, setup, should_compile  # noqa: E402
from pgolf.bench import attention_kernel  # noqa: E402
from pgolf.evaluate import load_run_config  # noqa: E402
from plugins.lib import codecs  # noqa: E402
from plugins.lib.decoders import read_artifact  # noqa: E402

EVALUATORS = ("plain", "sliding_window", "score_first_ttt", "lora_ttt", "phased_ttt")
TINY = [
    "core.num_layers=2", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2", "core.mlp_mult=2",
    "core.train_seq_len=64", "core.eval_seq_len=64", "core.val_batch_size=2048", "core.val_max_tokens=8192",
    "core.device=cpu", "core.compile=false", "core.warmup_steps=0",
    "sliding_window.stride=16", "score_first_ttt.chunk_tokens=1024", "score_first_ttt.stride=16",
    "score_first_ttt.epochs=1", "lora_ttt.rank=8", "lora_ttt.chunk_tokens=16", "lora_ttt.batch_docs=8",
    "phased_ttt.rank=8", "phased_ttt.chunk_tokens=16", "phased_ttt.batch_docs=8", "phased_ttt.prefix_docs=8",
    "phased_ttt.global_chunk_tokens=1024",
]


def _compile_counts() -> dict[str, int]:
    """Dynamo frames/graphs and AOT-autograd compilations so far (a compile inside the timed eval shows here)."""
    from torch._dynamo.utils import counters

    return {f"{group}.{k}": int(v) for group in ("stats", "aot_autograd") for k, v in counters[group].items()}


def evaluator_plugins(registry: Registry) -> set[str]:
    return {n for n in registry.names() if callable(getattr(registry.plugins[n], "pg_evaluator", None))}


def bench_one(name: str, recipe: dict, sets: list[str], artifact: Path | None, registry: Registry) -> dict:
    """One evaluator: the recipe's model plugins + `name`; settings of the other evaluators are dropped."""
    others = evaluator_plugins(registry) - {name}
    plugins = [p for p in recipe.get("plugins", []) if p not in others]
    if name != "plain" and name not in plugins:
        plugins.append(name)
    recipe = {k: v for k, v in recipe.items() if k not in others}
    sets = [s for s in sets if s.split(".", 1)[0] not in others]
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=recipe, env=os.environ, sets=sets,
                  plugins=plugins, check_plugins=registry.check)
    torch._dynamo.reset()
    run = setup(cfg, registry, make_dir=False)
    if artifact is not None:
        qstate, _ = read_artifact(artifact, codecs.all_decoders())
        run.model.load_state_dict(ex.dequantize_state_dict(qstate, run.schemes), strict=True)
    set_modes(run, tuple(m.name for m in run.modes if m.start_frac <= 1.0))  # the final model's graph (recurrence on)
    evaluator = run.hook.pg_evaluator(run=run)
    compiled = should_compile(run)
    plan = prepare_eval(run, evaluator)  # core.eval_compile: compile | eager | auto
    before = _compile_counts()
    with torch._dynamo.config.patch(error_on_recompile=plan.mode == "compile"):
        res = evaluate(run, plan.model, evaluator, run.val_tokens)
    compiles = {k: v - before.get(k, 0) for k, v in _compile_counts().items() if v != before.get(k, 0)}
    row = {"evaluator": evaluator.name, "warmup_ms": round(plan.warmup_ms), "eval_ms": round(res.eval_time_ms),
           "total_ms": round(plan.warmup_ms + res.eval_time_ms), "eval_compile": run.core.eval_compile,
           "mode": plan.mode, "eager_estimate_s": plan.eager_estimate_s,
           "val_loss": res.val_loss, "val_bpb": res.val_bpb, "tokens": res.tokens, "bytes": res.bytes,
           "world_size": run.world_size, "device": str(run.device), "compiled": compiled,
           "attention": attention_kernel(run.config, run.attention),
           "doc_isolation": bool(getattr(evaluator, "doc_isolation", False)), "compiles_during_eval": compiles}
    del run, evaluator
    gc.collect()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", help="run directory or final_model.ptz (config.json beside it)")
    p.add_argument("--recipe", help="recipe TOML for a freshly initialised model (no artifact)")
    p.add_argument("--evaluators", default=",".join(EVALUATORS))
    p.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value (repeatable)")
    p.add_argument("--data", help="data directory (core.data_path)")
    p.add_argument("--tiny", action="store_true", help="tiny CPU settings (smoke test)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    if (a.path is None) == (a.recipe is None):
        p.error("give exactly one of PATH (run dir / artifact) or --recipe")
    registry = Registry()
    sets = [*(TINY if a.tiny else []), *([f"core.data_path={a.data}"] if a.data else []), *a.sets]
    artifact = None
    if a.path is not None:
        artifact, recipe = load_run_config(Path(a.path))
    else:
        import tomllib

        try:
            recipe = tomllib.loads(Path(a.recipe).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            p.error(f"--recipe {a.recipe}: cannot read a TOML recipe ({exc})")
        recipe["source"] = a.recipe
    names = [n.strip() for n in a.evaluators.split(",") if n.strip()]
    unknown = [n for n in names if n != "plain" and n not in evaluator_plugins(registry)]
    if unknown:
        p.error(f"--evaluators: unknown {unknown}; known: plain, {', '.join(sorted(evaluator_plugins(registry)))}")
    rows = []
    master = int(os.environ.get("RANK", "0")) == 0
    for name in names:
        rows.append(bench_one(name, recipe, sets, artifact, registry))
        if master:
            r = rows[-1]
            print(f"eval_bench {r['evaluator']} mode:{r['mode']} warmup:{r['warmup_ms']}ms eval_time:{r['eval_ms']}ms "
                  f"val_loss:{r['val_loss']:.6f} val_bpb:{r['val_bpb']:.6f} "
                  f"compiles_during_eval:{r['compiles_during_eval'] or 'none'}", flush=True)
    if master:
        r0 = rows[0]
        print(f"\n{r0['device']} x{r0['world_size']} compiled:{r0['compiled']} tokens:{r0['tokens']} "
              f"source:{a.path or a.recipe}")
        print(f"{'evaluator':<16} {'mode':<8} {'warmup ms':>10} {'eval ms':>10} {'val_loss':>10} {'val_bpb':>10}  "
              "isolated")
        for r in rows:
            print(f"{r['evaluator']:<16} {r['mode']:<8} {r['warmup_ms']:>10} {r['eval_ms']:>10} {r['val_loss']:>10.6f} "
                  f"{r['val_bpb']:>10.6f}  {r['doc_isolation']}")
        if a.json:
            tmp = Path(a.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, a.json)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
