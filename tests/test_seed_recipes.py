"""recipes/pr534.toml, pr609.toml, pr1855.toml: each resolves, trains a few steps at tiny size through
`pgolf train`, and carries its record's hyperparameters — every name the record's Hyperparameters reads is
either mapped to a recipe setting (and equal) or listed with where it lives instead.

PRs #534 and #609 were never merged: their PR heads (refs/pull/534/head, refs/pull/609/head in the
parameter-golf mirror) are the source, and their logs have no Hyperparameters dump, so the values are the
script's defaults plus the run command's overrides. PR #1855's seed-42 log dumps them. The name -> setting
tables are pgolf/records.py's profiles (tests/record_tables.py compares them with the records).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from record_tables import check_logged, check_script_defaults

from core.config import load_recipe, resolve
from core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = Registry()
RECIPES = ("pr534", "pr609", "pr1855")


def recipe_path(name: str) -> Path:
    return ROOT / "recipes" / f"{name}.toml"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves_with_every_plugin_known(name):
    data = load_recipe(recipe_path(name))
    assert set(data["plugins"]) <= set(REGISTRY.plugins), set(data["plugins"]) - set(REGISTRY.plugins)
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=recipe_path(name),
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    assert cfg.plugins == data["plugins"]
    for section, table in data.items():  # every value the recipe writes is the resolved one
        if isinstance(table, dict):
            got = cfg.core if section == "core" else cfg.plugin_configs[section]
            for key, value in table.items():
                assert getattr(got, key) == value, f"{section}.{key}"


@pytest.mark.parametrize("name", ["pr534", "pr609"])
def test_pr_head_recipe_carries_every_hyperparameter_of_its_script(name):
    check_script_defaults(name)  # the table in pgolf/records.py against the script's defaults + run command


def test_pr1855_recipe_carries_every_logged_hyperparameter():
    check_logged("pr1855")  # the table in pgolf/records.py against the seed-42 log's Hyperparameters
    data = load_recipe(recipe_path("pr1855"))
    targets = data["phased_ttt"]["targets"].split(",")
    assert {"k", "mlp", "o"} <= set(targets)  # TTT_K_LORA, TTT_MLP_LORA, TTT_O_LORA = 1 (the profile's fixed)



def test_pr1855_recipe_trains_on_packed_documents_and_calibrates_on_shuffled_rows():
    """As the record: DocumentPackingLoader batches through varlen attention (buckets of 64, max_seqlen =
    train_seq_len), document-masked evaluation, GPTQ calibration from ShuffledSequenceLoader rows."""
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=recipe_path("pr1855"),
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    assert {"doc_packing", "varlen_attention"} <= set(cfg.plugins) and "shuffled_loader" not in cfg.plugins
    dp, gptq = cfg.plugin_configs["doc_packing"], cfg.plugin_configs["gptq"]
    assert (dp.cu_bucket_size, dp.flat, gptq.calibration, cfg.core.eval_doc_mask) == (64, True, "shuffled", True)


TINY = {  # per recipe: shrink the shape-bound settings to the tiny 2-layer, vocab-320 model
    "pr534": ["core.mlp_hidden=96", "value_embeddings.layers=1", "value_embeddings.dim=16", "xsa.last_n=1",
              "partial_rope.dims=8", "gptq_lite.keep_float_max_numel=0", "tight_swa.threshold=2.0",
              "tight_swa.every=1", "late_qat.threshold=0.5"],
    "pr609": ["bigram_hash.buckets=64", "bigram_hash.dim=16", "value_embeddings.layers=1",
              "value_embeddings.dim=16", "xsa.last_n=2", "partial_rope.dims=8", "partial_rope.ntk_train_seq_len=32",
              "gptq.calib_batches=2", "gptq.keep_float_max_numel=0", "prune_to_fit.target_bytes=1000000",
              "tight_swa.threshold=2.0", "tight_swa.every=1", "sliding_window.stride=32", "core.eval_seq_len=64"],
    "pr1855": ["core.num_layers=4", "xsa.last_n=4", "partial_rope.dims=8", "depth_recurrence.loop_start=1",
               "depth_recurrence.loop_end=2", "depth_recurrence.num_loops=1", "parallel_lanes.start=3",
               "sparse_attn_gate.window=8", "smeargate.gate_window=8", "gptq.calib_batches=2",
               "gptq.reserve_seconds=0", "gptq.keep_float_max_numel=0", "lqer.top_k=2", "lqer.rank=2",
               "compress_pergroup.group_codec=zlib", "brotli.quality=5", "phased_ttt.rank=4",
               "phased_ttt.chunk_tokens=16", "phased_ttt.batch_docs=4", "phased_ttt.prefix_docs=2",
               "phased_ttt.global_chunk_tokens=256", "core.eval_seq_len=64", "core.val_max_tokens=0"],
}
EXPECT = {"pr534": ("tight_swa", "final_int8"), "pr609": ("GPTQ:collected", "sliding_window"),
          "pr1855": ("source:shuffled", "phased_ttt")}


def test_pr1855_recipe_traces_a_packed_batch_with_zero_graph_breaks(tiny_caseops_data, tiny_core):
    """The recipe at tiny size: its attention slots are varlen_attention, its MLPs fused_mlp's (the record trains
    with its fused LeakyReLU(0.5)² Triton GEMM; leaky_relu2's unfused activation cost pgolf a kernel pass per MLP
    forward and backward, issue #14), and the whole model traces with zero graph breaks on a doc_packing batch
    (doc_ids and cu_seqlens; the CPU path: the dense document mask), without and with gradients."""
    import torch

    from core.train import setup
    from plugins.fused_mlp import FusedLeakyReLU2MLP
    from plugins.varlen_attention import VarlenAttention

    sets = [*tiny_core, *TINY["pr1855"], f"core.data_path={tiny_caseops_data[0]}"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=recipe_path("pr1855"), sets=sets,
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    run = setup(cfg, REGISTRY, make_dir=False)
    assert all(isinstance(b.attn.attention, VarlenAttention) for b in run.model.blocks)
    assert all(isinstance(b.mlp, FusedLeakyReLU2MLP) and b.mlp.slope == 0.5 for b in run.model.blocks)
    x, y, ids, cu = run.hook.pg_train_loader(run=run).next_batch(1024, 64, 1)
    assert x.shape == (1, 1024) and ids.max() > 0 and cu.numel() % 64 == 0
    for grad in (False, True):
        torch._dynamo.reset()
        with torch.set_grad_enabled(grad):
            exp = torch._dynamo.explain(run.model)(x, y, doc_ids=ids, cu_seqlens=cu)
        torch._dynamo.reset()
        assert exp.graph_break_count == 0, (grad, exp.break_reasons)


@pytest.mark.slow  # 3 tiny runs (export + eval each), ~10-60 s each on 2 shared CPU cores
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_at_tiny_size_through_pgolf_train(name, tiny_data, tiny_caseops_data, tiny_core, tmp_path):
    from pgolf.cli import main

    data = tiny_caseops_data[0] if name == "pr1855" else tiny_data
    args = ["train", "--recipe", str(recipe_path(name)), "--data", str(data)]
    for s in [*tiny_core, "core.iterations=4", "core.warmdown_iters=2", *TINY[name], f"core.out_dir={tmp_path}",
              f"core.run_id={name}"]:
        args += ["--set", s]
    assert main(args) == 0
    run_dir = tmp_path / name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and math.isfinite(metrics["val_bpb"])
    log = (run_dir / "train.log").read_text()
    assert EXPECT[name][0] in log or EXPECT[name][0] in json.dumps(metrics), log[-2000:]


@pytest.mark.slow  # one tiny run, export + eval
def test_pr534_with_the_records_frozen_value_embeddings_trains_and_exports_the_table(tiny_data, tiny_core, tmp_path):
    """value_embeddings.frozen=true (the record's training): the fixed table and projection are still exported."""
    from core import export as ex
    from pgolf.cli import main
    from plugins.lib.codecs import all_decoders

    args = ["train", "--recipe", str(recipe_path("pr534")), "--data", str(tiny_data)]
    for s in [*tiny_core, "core.iterations=3", "core.warmdown_iters=2", *TINY["pr534"], "value_embeddings.frozen=true",
              f"core.out_dir={tmp_path}", "core.run_id=frozen"]:
        args += ["--set", s]
    assert main(args) == 0
    run_dir = tmp_path / "frozen"
    assert math.isfinite(json.loads((run_dir / "metrics.json").read_text())["val_bpb"])
    blob = (run_dir / "final_model.ptz").read_bytes()
    records, _ = ex.decode_artifact(blob, all_decoders())
    assert {"ve_shared.embed.weight", "ve_shared.proj.weight"} <= set(records) and "ve_shared.scale" not in records
