"""Sandboxed child of `pgolf validate --run` on a pgolf run directory: retrain the run's configuration
(its plugins and their settings) at a tiny size on a tiny dataset, so the sandbox's audit hook can see
which data files are read before and after the artifact is written.

Usage: python -m validator.trainaudit --run-dir RUN --data DATA_DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

TINY_TRAIN = [
    "core.num_layers=2", "core.model_dim=64", "core.num_heads=4", "core.num_kv_heads=2", "core.vocab_size=1024",
    "core.train_seq_len=64", "core.eval_seq_len=0", "core.train_batch_tokens=1024", "core.grad_accum_steps=1",
    "core.iterations=6", "core.warmdown_iters=2", "core.warmup_steps=2", "core.val_loss_every=0",
    "core.train_log_every=0", "core.val_batch_size=2048", "core.val_max_tokens=2048",
    "core.max_wallclock_seconds=0", "core.muon_momentum_warmup_steps=2", "core.device=cpu", "core.compile=false",
    "core.seed=1337", "core.tokenizer_path=",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m validator.trainaudit")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--plugin-file", action="append", default=[])
    a = p.parse_args(argv)
    import torch

    from core.config import resolve
    from core.train import run_training
    from plugins.lib.loading import load_registry
    from validator.harness import run_dir_recipe

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(1)
    registry = load_registry(a.plugin_file)
    recipe = run_dir_recipe(Path(a.run_dir))
    recipe = {k: v for k, v in recipe.items() if k != "core"}
    sets = [*TINY_TRAIN, f"core.data_path={a.data}", f"core.out_dir={a.out}", "core.run_id=audit"]
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=recipe, env={}, sets=sets,
                  check_plugins=registry.check)
    run_training(cfg, registry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
