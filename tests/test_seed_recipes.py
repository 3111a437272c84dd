"""recipes/pr534.toml, pr609.toml, pr1855.toml: each resolves, trains a few steps at tiny size through
`pgolf train`, and carries its record's hyperparameters — every name the record's Hyperparameters reads is
either mapped to a recipe setting (and equal) or listed with where it lives instead.

PRs #534 and #609 were never merged: their PR heads (refs/pull/534/head, refs/pull/609/head in the
parameter-golf mirror) are the source, and their logs have no Hyperparameters dump, so the values are the
script's defaults plus the run command's overrides. PR #1855's seed-42 log dumps them.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from core.config import load_recipe, resolve
from core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
MIRROR = os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo")
REGISTRY = Registry()
RECIPES = ("pr534", "pr609", "pr1855")

SOURCES = {
    "pr534": ("refs/pull/534/head",
              "records/track_10min_16mb/2026-03-23_11L_PR374Stack_PartialRoPE_XSA4_VE128_TightSWA_GPTQ"),
    "pr609": ("refs/pull/609/head", "records/track_10min_16mb/2026-03-24_XSA-all_FullGPTQ_ParallelMuon_1.1155"),
    "pr1855": ("HEAD", "records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"),
}
COMMAND = {"pr534": {"MLP_HIDDEN": "1408", "VOCAB_SIZE": "1024"}, "pr609": {}}  # the READMEs' run commands

CORE_NAMES = {  # the baseline's names, shared by all three records
    "VOCAB_SIZE": "core.vocab_size", "NUM_LAYERS": "core.num_layers", "MODEL_DIM": "core.model_dim",
    "NUM_HEADS": "core.num_heads", "NUM_KV_HEADS": "core.num_kv_heads", "MLP_MULT": "core.mlp_mult",
    "TIE_EMBEDDINGS": "core.tie_embeddings", "TIED_EMBED_INIT_STD": "core.tied_embed_init_std",
    "LOGIT_SOFTCAP": "core.logit_softcap", "ROPE_BASE": "core.rope_base", "QK_GAIN_INIT": "core.qk_gain_init",
    "TRAIN_SEQ_LEN": "core.train_seq_len", "TRAIN_BATCH_TOKENS": "core.train_batch_tokens",
    "ITERATIONS": "core.iterations", "WARMUP_STEPS": "core.warmup_steps",
    "MAX_WALLCLOCK_SECONDS": "core.max_wallclock_seconds", "VAL_LOSS_EVERY": "core.val_loss_every",
    "TRAIN_LOG_EVERY": "core.train_log_every", "GRAD_CLIP_NORM": "core.grad_clip_norm",
    "EMBED_LR": "core.embed_lr", "HEAD_LR": "core.head_lr", "TIED_EMBED_LR": "core.tied_embed_lr",
    "MATRIX_LR": "core.matrix_lr", "SCALAR_LR": "core.scalar_lr", "MUON_MOMENTUM": "core.muon_momentum",
    "MUON_MOMENTUM_WARMUP_START": "core.muon_momentum_warmup_start",
    "MUON_MOMENTUM_WARMUP_STEPS": "core.muon_momentum_warmup_steps",
    "MUON_BACKEND_STEPS": "core.muon_backend_steps", "BETA1": "core.beta1", "BETA2": "core.beta2",
    "ADAM_EPS": "core.adam_eps", "SEED": "core.seed",
}
PATHS = {"DATA_PATH": "--data", "TOKENIZER_PATH": "TOKENIZER_PATH", "RUN_ID": "core.run_id", "RANK": "torchrun",
         "WORLD_SIZE": "torchrun", "LOCAL_RANK": "torchrun", "CONTROL_TENSOR_NAME_PATTERNS": "core (same list)",
         "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": "core (= the control patterns)"}

HOME = {
    "pr534": {**CORE_NAMES, "MLP_HIDDEN": "core.mlp_hidden", "VAL_BATCH_SIZE": "core.val_batch_size",
              "WARMDOWN_ITERS": "core.warmdown_iters", "MUON_WEIGHT_DECAY": "weight_decay.muon",
              "ROPE_DIMS": "partial_rope.dims", "XSA_LAST_N": "xsa.last_n", "VE_DIM": "value_embeddings.dim",
              "VE_LAYERS": "value_embeddings.layers", "SWA_EVERY": "tight_swa.every",
              "SWA_THRESHOLD": "tight_swa.threshold", "QAT_BITS": "late_qat.bits",
              "QAT_LATE_THRESHOLD": "late_qat.threshold"},
    "pr609": {**CORE_NAMES, "VAL_BATCH_SIZE": "core.val_batch_size", "WARMDOWN_ITERS": "core.warmdown_iters",
              "EVAL_SEQ_LEN": "core.eval_seq_len", "EVAL_STRIDE": "sliding_window.stride",
              "MUON_WD": "weight_decay.muon", "ADAM_WD": "weight_decay.adam",
              "BIGRAM_VOCAB_SIZE": "bigram_hash.buckets", "BIGRAM_DIM": "bigram_hash.dim",
              "XSA_LAST_N": "xsa.last_n", "ROPE_DIMS": "partial_rope.dims", "VE_DIM": "value_embeddings.dim",
              "VE_LAYERS": "value_embeddings.layers", "SWA_EVERY": "tight_swa.every",
              "GPTQ_CALIB_BATCHES": "gptq.calib_batches", "GPTQ_BLOCK_SIZE": "gptq.block_size"},
}
ELSEWHERE = {
    "pr534": {**PATHS, "ADAM_WEIGHT_DECAY": "dead (weight_decay.adam = 0)", "LN_SCALE": "plugin ln_scale",
              "VE_ENABLED": "plugin value_embeddings", "SWA_ENABLED": "plugin tight_swa",
              "QAT_ENABLED": "plugin late_qat", "GPTQ_LITE": "plugin gptq_lite"},
    "pr609": {**PATHS, "MTP_NUM_HEADS": "off", "MTP_LOSS_WEIGHT": "off", "MUON_BETA2": "dead",
              "SWA_ENABLED": "plugin tight_swa (apply=false)", "LAWA_ENABLED": "off", "LAWA_K": "off",
              "LAWA_FREQ": "off", "QAT_ENABLED": "off", "TRIGRAM": "off", "LN_SCALE": "plugin ln_scale",
              "DTG_ENABLED": "off", "LATE_QAT_THRESHOLD": "dead (class attribute folded)",
              "VE_ENABLED": "plugin value_embeddings", "GATED_ATTENTION": "off", "VALUE_RESIDUAL": "off",
              "TARGET_MB": "prune_to_fit.target_bytes (decimal, see the recipe)",
              },
}
# PR #1855: its logged Hyperparameters (lower case) -> the recipe setting.
HOME_1855 = {
    **{k.lower(): v for k, v in CORE_NAMES.items() if k not in ("HEAD_LR", "SEED")},
    "val_batch_tokens": "core.val_batch_size", "eval_seq_len": "core.eval_seq_len",
    "adam_wd": "weight_decay.adam", "embed_wd": "weight_decay.embed", "muon_wd": "muon_eq_r.weight_decay",
    "muon_row_normalize": "muon_eq_r.row_normalize", "ema_decay": "ema.decay",
    "warmdown_frac": "warmdown_frac.frac", "min_lr": "warmdown_frac.min_lr",
    "enable_looping_at": "depth_recurrence.enable_at", "loop_start": "depth_recurrence.loop_start",
    "loop_end": "depth_recurrence.loop_end", "num_loops": "depth_recurrence.num_loops",
    "parallel_start_layer": "parallel_lanes.start", "parallel_final_lane": "parallel_lanes.final_lane",
    "rope_dims": "partial_rope.dims", "rope_train_seq_len": "partial_rope.ntk_train_seq_len",
    "xsa_last_n": "xsa.last_n", "gate_window": "sparse_attn_gate.window",
    "sparse_attn_gate_scale": "sparse_attn_gate.scale", "sparse_attn_gate_init_std": "sparse_attn_gate.init_std",
    "gptq_calibration_batches": "gptq.calib_batches", "gptq_reserve_seconds": "gptq.reserve_seconds",
    "matrix_bits": "gptq.attn_bits", "embed_bits": "gptq.embed_bits",
    "matrix_clip_sigmas": "gptq.matrix_clip_sigmas", "attn_clip_sigmas": "gptq.attn_clip_sigmas",
    "mlp_clip_sigmas": "gptq.mlp_clip_sigmas", "embed_clip_sigmas": "gptq.embed_clip_sigmas",
    "lqer_rank": "lqer.rank", "lqer_top_k": "lqer.top_k", "lqer_factor_bits": "lqer.factor_bits",
    "lqer_asym_enabled": "lqer.asym", "lqer_asym_group": "lqer.asym_group",
    "ttt_lora_rank": "phased_ttt.rank", "ttt_chunk_size": "phased_ttt.chunk_tokens",
    "ttt_batch_size": "phased_ttt.batch_docs", "ttt_lora_lr": "phased_ttt.lr", "ttt_beta1": "phased_ttt.beta1",
    "ttt_beta2": "phased_ttt.beta2", "ttt_weight_decay": "phased_ttt.weight_decay",
    "ttt_eval_seq_len": "core.eval_seq_len", "phased_ttt_prefix_docs": "phased_ttt.prefix_docs",
    "phased_ttt_num_phases": "phased_ttt.num_phases", "global_ttt_lr": "phased_ttt.global_lr",
    "global_ttt_momentum": "phased_ttt.global_momentum", "global_ttt_epochs": "phased_ttt.global_epochs",
    "global_ttt_chunk_tokens": "phased_ttt.global_chunk_tokens",
    "global_ttt_batch_seqs": "phased_ttt.global_batch_seqs", "global_ttt_grad_clip": "phased_ttt.global_grad_clip",
    "global_ttt_respect_doc_boundaries": "phased_ttt.respect_doc_boundaries",
}
ELSEWHERE_1855 = {
    "caseops_enabled": "plugin caseops", "compressor": "plugin compress_pergroup", "ln_scale": "plugin ln_scale",
    "skip_gates_enabled": "plugin skip_gates", "smear_gate_enabled": "plugin smeargate",
    "sparse_attn_gate_enabled": "plugin sparse_attn_gate", "gated_attn_quant_gate": "plugin quant_gate",
    "lqer_enabled": "plugin lqer", "ttt_enabled": "plugin phased_ttt",
    "ttt_k_lora": "phased_ttt.targets", "ttt_mlp_lora": "phased_ttt.targets", "ttt_o_lora": "phased_ttt.targets",
    "ttt_optimizer": "adam (fixed)", "ttt_grad_steps": "1 (fixed)", "ttt_eval_batches": "all",
    "global_ttt_warmup_chunks": "0 (fixed)", "global_ttt_warmup_start_lr": "unused at 0 warm-up chunks",
    "val_doc_fraction": "1.0 (all)", "rope_yarn": "off", "fused_ce_enabled": "not ported (speed)",
    "gated_attn_enabled": "off", "gated_attn_init_std": "off", "attn_out_gate_enabled": "off",
    "attn_out_gate_src": "off", "seed": "core.seed per run", "run_id": "core.run_id",
    "eval_stride": "unused by phased TTT",
    "artifact_dir": "run dir", "logfile": "run dir", "model_path": "run dir", "quantized_model_path": "run dir",
    "data_dir": "--data", "datasets_dir": "--data", "train_files": "--data", "val_files": "--data",
    "val_bytes_files": "--data", "tokenizer_path": "TOKENIZER_PATH", "distributed": "torchrun",
    "rank": "torchrun", "world_size": "torchrun", "local_rank": "torchrun", "is_main_process": "torchrun",
    "grad_accum_steps": "8 // WORLD_SIZE",
}


def recipe_path(name: str) -> Path:
    return ROOT / "recipes" / f"{name}.toml"


def mirror_show(ref: str, rel: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", MIRROR, "show", f"{ref}:{rel}"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is None or proc.returncode != 0:
        pytest.skip(f"{ref}:{rel} not in the parameter-golf mirror at {MIRROR}")
    return proc.stdout


def script_defaults(src: str) -> dict[str, str]:
    """ENV -> default of every `os.environ.get("ENV", default)` the script reads (string form)."""
    out = {}
    for env, default in re.findall(r"""os\.environ\.get\(\s*["']([A-Z0-9_]+)["']\s*,\s*([^)]*?)\)""", src):
        out.setdefault(env, default.strip().strip("'\"").replace("_", ""))
    return out


def same(recipe_value, record_value: str) -> bool:
    if isinstance(recipe_value, bool):
        return recipe_value == (record_value in ("1", "True", "true"))
    try:
        return float(recipe_value) == float(record_value)
    except (TypeError, ValueError):
        return str(recipe_value) == record_value


def recipe_value(data: dict, home: str):
    section, key = home.split(".")
    return data[section][key]


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
    ref, folder = SOURCES[name]
    src = mirror_show(ref, f"{folder}/train_gpt.py")
    defaults = {**script_defaults(src), **COMMAND[name]}
    covered = set(HOME[name]) | set(ELSEWHERE[name])
    assert set(defaults) <= covered, f"unmapped: {sorted(set(defaults) - covered)}"
    data = load_recipe(recipe_path(name))
    for env, home in HOME[name].items():
        assert env in defaults, f"{env} is not read by the record"
        if env == "SEED":
            continue
        assert same(recipe_value(data, home), defaults[env]), f"{env}: recipe {home}={recipe_value(data, home)}, " \
                                                              f"record {defaults[env]}"
    for env, where in ELSEWHERE[name].items():
        if where.startswith("plugin "):
            plugin = where.split()[1]
            on = defaults.get(env, "1") not in ("0", "False")
            assert (plugin in data["plugins"]) == on, f"{env}={defaults.get(env)} but plugin {plugin}"
        elif where == "off":
            assert defaults[env] in ("0", "False", "0.0", "10", "100", "0.2"), env  # a disabled feature's knob


def test_pr1855_recipe_carries_every_logged_hyperparameter():
    ref, folder = SOURCES["pr1855"]
    log = mirror_show(ref, f"{folder}/train_seed42.log")
    block = log.split("Hyperparameters:\n", 1)[1]
    logged = dict(re.findall(r"^  (\w+): (.*)$", block.split("\n" + next(
        line for line in block.splitlines() if not line.startswith("  ")), 1)[0], re.M))
    assert set(logged) == set(HOME_1855) | set(ELSEWHERE_1855), \
        sorted(set(logged) ^ (set(HOME_1855) | set(ELSEWHERE_1855)))
    data = load_recipe(recipe_path("pr1855"))
    for key, home in HOME_1855.items():
        assert same(recipe_value(data, home), logged[key]), f"{key}: recipe {home}, record {logged[key]}"
    for key, where in ELSEWHERE_1855.items():
        if where.startswith("plugin "):
            assert logged[key] == "True" or key == "compressor", key
            assert where.split()[1] in data["plugins"], key
        elif where == "off":
            assert logged[key] in ("False", "proj", "0.01"), key
    targets = data["phased_ttt"]["targets"].split(",")
    assert all(logged[f"ttt_{t}_lora"] == "True" for t in ("k", "mlp", "o")) and {"k", "mlp", "o"} <= set(targets)


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
          "pr1855": ("GPTQ:collected", "phased_ttt")}


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
