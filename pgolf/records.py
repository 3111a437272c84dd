"""Record scripts `pgolf bench --vs` knows: which recipe each reproduces, the recipe's values under the
record's own environment names, its eval-skipping knobs, and parsers for the record log formats.

One declarative table per record (PR #315, #534, #609, #1493, #1855): every environment name its script reads
is mapped to the recipe setting that carries it, set to a fixed value, or listed with where it lives instead;
tests/test_bench.py, test_pr1493_parts.py and test_seed_recipes.py read these tables. A profile is found by
the script's sha256 (the published file, LZMA wrapper included); `--profile generic` runs any script that
reads the official baseline's names (NUM_LAYERS, ITERATIONS, DATA_PATH, …).

PR #1855 reads CaseOps data: with CASEOPS_ENABLED=1 it takes DATA_PATH (train, val and the val byte sidecar
`fineweb_val_bytes_*.bin`, the format `pgolf data build --caseops` writes) and TOKENIZER_PATH as given, so the
bench's data folder (the recipe's shards, its val prefix and the sidecar's matching prefix) is what it reads;
its vocabulary check needs the recipe's data to be SP8192 CaseOps. It trains with document-packed varlen
attention (`flash_attn_varlen_func`): without FA3 the bench's stand-in runs it through FlexAttention.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import lzma
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from core.config import CORE_SECTION, Config, env_name

RECORDS = "records/track_10min_16mb"


def _on(b: bool) -> str:
    return "1" if b else "0"


def setting(cfg: Config, key: str, default: Any = None) -> Any:
    """`plugin.key` of an enabled plugin, else `default`."""
    plugin, name = key.split(".")
    pcfg = cfg.plugin_configs.get(plugin) if plugin in cfg.plugins else None
    return default if pcfg is None else getattr(pcfg, name, default)


def core_env(cfg: Config, eval_seq_len: int) -> dict[str, str]:
    """Every core setting under its challenge name (pgolf's core names are the baseline's); PGOLF_* left out."""
    out = {}
    for f in dataclasses.fields(cfg.core):
        name = env_name(CORE_SECTION, f)
        value = getattr(cfg.core, f.name)
        if name.startswith("PGOLF_") or value in ("", None):
            continue
        out[name] = _on(value) if isinstance(value, bool) else str(value)
    out["EVAL_SEQ_LEN"] = str(eval_seq_len)  # pgolf's 0 means "= TRAIN_SEQ_LEN"; the records read it as is
    return out


# ---------------------------------------------------------------- the record <-> recipe tables
# A setting reference is "section.key" (a core setting, or a plugin's: used only while that plugin is enabled)
# or a tuple of references tried in order, whose last item may be a literal: the record's value that turns
# the feature off when no plugin of the tuple is enabled. None of them: the name is not passed (the record's
# own default stands, harmless because the feature is off).
Ref = str | tuple[Any, ...]
_KEY = re.compile(r"[a-z_]\w*\.[a-z_]\w*")


def setting_value(cfg: Config, ref: Ref) -> Any:
    """The recipe's value behind a reference (core.eval_seq_len 0 is the training length), None if none."""
    for cand in ref if isinstance(ref, tuple) else (ref,):
        if not (isinstance(cand, str) and _KEY.fullmatch(cand)):
            return cand
        section, name = cand.split(".")
        if section == CORE_SECTION:
            value = getattr(cfg.core, name)
            return cfg.core.train_seq_len if name == "eval_seq_len" and not value else value
        if section in cfg.plugins:
            return getattr(cfg.plugin_configs[section], name)
    return None


def env_value(value: Any) -> str:
    return _on(value) if isinstance(value, bool) else str(value)


CORE_NAMES: dict[str, Ref] = {  # the baseline's names, which every record reads (pgolf's core names are these)
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
BENCH_NAMES = {"DATA_PATH": "bench: its data folder", "TOKENIZER_PATH": "bench: its tokenizer link",
               "DATA_DIR": "bench: its data root", "RUN_ID": "bench: record", "RANK": "torchrun",
               "WORLD_SIZE": "torchrun", "LOCAL_RANK": "torchrun"}
DERIVED = ("datasets_dir", "train_files", "val_files", "val_bytes_files", "logfile", "model_path",
           "quantized_model_path", "distributed", "is_main_process", "grad_accum_steps")


@dataclass(frozen=True)
class RecordProfile:
    """One record script: where it is published and how the recipe's values reach it.

    settings: record environment name -> the recipe setting whose value it gets (equal by construction).
    plugins: name -> plugin: "1" when the recipe enables the plugin, else "0".
    fixed: name -> the value always passed (a record feature the recipe leaves off, or fixed behaviour).
    skip_eval: name -> the value passed when the bench skips the long evaluations (the default).
    elsewhere: name the record reads but the bench does not pass -> why (paths the bench supplies, torchrun,
        dead knobs, deliberate differences); also logged Hyperparameters attributes no variable sets.
    command: the published run command's overrides of the script's defaults (what the record ran with).
    skip_plugins: plugins the pgolf side leaves out under `bench --finish` while skip_eval applies: the
        evaluations/codecs the skip_eval knobs turn off in the record, so both sides export and score alike.
    dead_params: config -> (count, why) of parameters the record makes but its forward never reads, which
        pgolf does not make: its `model_params` exceeds pgolf's by that count (the bench shows the gap).
    """

    name: str
    folder: str  # in the parameter-golf repository
    recipe: str  # the pgolf recipe that reproduces it
    sha256: str  # of the published train_gpt.py
    ref: str = "HEAD"  # the mirror ref holding `folder` (a PR head for unmerged PRs)
    log: str = ""  # a published log in `folder` (its Hyperparameters dump, where it has one)
    settings: dict[str, Ref] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    skip_eval: dict[str, str] = field(default_factory=dict)
    elsewhere: dict[str, str] = field(default_factory=dict)
    command: dict[str, str] = field(default_factory=dict)
    skip_plugins: tuple[str, ...] = ()
    dead_params: Callable[[Config], tuple[int, str]] | None = None

    def names(self) -> set[str]:
        """Every name this profile accounts for."""
        return set(self.settings) | set(self.plugins) | set(self.fixed) | set(self.skip_eval) | set(self.elsewhere)

    def env(self, cfg: Config, skip_eval: bool) -> dict[str, str]:
        """The recipe's values under the record's names (on top of `core_env`)."""
        out = {k: env_value(v) for k, ref in self.settings.items() if (v := setting_value(cfg, ref)) is not None}
        out.update({k: _on(p in cfg.plugins) for k, p in self.plugins.items()})
        out.update(self.fixed)
        if skip_eval:
            out.update(self.skip_eval)
        return out


PR315 = RecordProfile(
    "pr315", f"{RECORDS}/2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248", "recipes/pr315.toml",
    "cfa93055196182d8187ba29a620d747abd987c02b27f7fba5a54256cfab35bb7",
    settings={**CORE_NAMES, "VAL_BATCH_SIZE": "core.val_batch_size", "WARMDOWN_ITERS": "core.warmdown_iters",
              "EVAL_SEQ_LEN": "core.eval_seq_len", "BIGRAM_VOCAB_SIZE": ("bigram_hash.buckets", 0),
              "BIGRAM_DIM": ("bigram_hash.dim", 128), "XSA_LAST_N": ("xsa.last_n", 0),
              "ROPE_DIMS": ("partial_rope.dims", 0), "EMA_DECAY": ("ema.decay", 0.997),
              "QAT_THRESHOLD": ("late_qat.threshold", 0.1), "MUON_WD": ("weight_decay.muon", 0.0),
              "ADAM_WD": ("weight_decay.adam", 0.0), "EVAL_STRIDE": ("sliding_window.stride", 64)},
    plugins={"LN_SCALE": "ln_scale", "EMA_ENABLED": "ema", "LATE_QAT": "late_qat"},
    fixed={"SWA_ENABLED": "0", "QAT_ENABLED": "0", "MTP_NUM_HEADS": "0"},
    # no knob skips its final evaluations: the validation prefix (--val-tokens) keeps them short
    elsewhere={**BENCH_NAMES, "SWA_EVERY": "off (SWA_ENABLED=0)", "MTP_LOSS_WEIGHT": "off (MTP_NUM_HEADS=0)",
               "MUON_BETA2": "dead", "CONTROL_TENSOR_NAME_PATTERNS": "core (same list)",
               "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": "core (= the control patterns)"},
)

PR534 = RecordProfile(
    "pr534", f"{RECORDS}/2026-03-23_11L_PR374Stack_PartialRoPE_XSA4_VE128_TightSWA_GPTQ", "recipes/pr534.toml",
    "0e76713f3b174e067a27fcade39afd0de1186aa5414e4a79c5dd39f2da7f8049", ref="refs/pull/534/head", log="train.log",
    settings={**CORE_NAMES, "MLP_HIDDEN": "core.mlp_hidden", "VAL_BATCH_SIZE": "core.val_batch_size",
              "WARMDOWN_ITERS": "core.warmdown_iters", "MUON_WEIGHT_DECAY": ("weight_decay.muon", 0.0),
              "ROPE_DIMS": ("partial_rope.dims", 0), "XSA_LAST_N": ("xsa.last_n", 0),
              "VE_DIM": "value_embeddings.dim", "VE_LAYERS": "value_embeddings.layers",
              "SWA_EVERY": "tight_swa.every", "SWA_THRESHOLD": "tight_swa.threshold", "QAT_BITS": "late_qat.bits",
              "QAT_LATE_THRESHOLD": "late_qat.threshold"},
    plugins={"LN_SCALE": "ln_scale", "VE_ENABLED": "value_embeddings", "SWA_ENABLED": "tight_swa",
             "QAT_ENABLED": "late_qat", "GPTQ_LITE": "gptq_lite"},
    # its only final evaluation is the int8 round trip over the validation prefix: nothing to skip
    elsewhere={**BENCH_NAMES, "ADAM_WEIGHT_DECAY": "dead (weight_decay.adam = 0)",
               "CONTROL_TENSOR_NAME_PATTERNS": "core (same list)",
               "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": "core (= the control patterns)"},
    command={"MLP_HIDDEN": "1408", "VOCAB_SIZE": "1024"},  # the README's run command
)

PR609 = RecordProfile(
    "pr609", f"{RECORDS}/2026-03-24_XSA-all_FullGPTQ_ParallelMuon_1.1155", "recipes/pr609.toml",
    "bd7e1b0744e27c8b263de70e65080e46020f3e8a5de6e28b23f563420dbcfc10", ref="refs/pull/609/head",
    log="train_seed314.log",
    settings={**CORE_NAMES, "VAL_BATCH_SIZE": "core.val_batch_size", "WARMDOWN_ITERS": "core.warmdown_iters",
              "EVAL_SEQ_LEN": "core.eval_seq_len", "EVAL_STRIDE": ("sliding_window.stride", 64),
              "MUON_WD": ("weight_decay.muon", 0.0), "ADAM_WD": ("weight_decay.adam", 0.0),
              "BIGRAM_VOCAB_SIZE": ("bigram_hash.buckets", 0), "BIGRAM_DIM": ("bigram_hash.dim", 128),
              "XSA_LAST_N": ("xsa.last_n", 0), "ROPE_DIMS": ("partial_rope.dims", 0),
              "VE_DIM": "value_embeddings.dim", "VE_LAYERS": "value_embeddings.layers",
              "SWA_EVERY": "tight_swa.every", "GPTQ_CALIB_BATCHES": "gptq.calib_batches",
              "GPTQ_BLOCK_SIZE": "gptq.block_size"},
    plugins={"LN_SCALE": "ln_scale", "VE_ENABLED": "value_embeddings", "SWA_ENABLED": "tight_swa"},
    fixed={"MTP_NUM_HEADS": "0", "LAWA_ENABLED": "0", "QAT_ENABLED": "0", "TRIGRAM": "0", "DTG_ENABLED": "0",
           "GATED_ATTENTION": "0", "VALUE_RESIDUAL": "0"},
    # no knob skips its sliding-window evaluation (EVAL_STRIDE 0 still runs the stride-64 one): the
    # validation prefix (--val-tokens) keeps it short
    elsewhere={**BENCH_NAMES, "MTP_LOSS_WEIGHT": "off (MTP_NUM_HEADS=0)", "MUON_BETA2": "dead",
               "LAWA_K": "off (LAWA_ENABLED=0)", "LAWA_FREQ": "off (LAWA_ENABLED=0)",
               "LATE_QAT_THRESHOLD": "dead (class attribute folded)",
               "TARGET_MB": "prune_to_fit.target_bytes (decimal, see the recipe)",
               "CONTROL_TENSOR_NAME_PATTERNS": "core (same list)",
               "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": "core (= the control patterns)"},
)

PR1493 = RecordProfile(
    "pr1493", f"{RECORDS}/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT", "recipes/pr1493.toml",
    "477f432097ce619d4080af0a249d29e6e0bf31b7a747ec4e6b509b5be2e202ee", log="train_seed42.log",
    settings={**CORE_NAMES, "EMBEDDING_DIM": "core.model_dim", "VAL_BATCH_TOKENS": "core.val_batch_size",
              "EVAL_SEQ_LEN": "core.eval_seq_len", "XSA_LAST_N": ("xsa.last_n", 0),
              "ROPE_DIMS": ("partial_rope.dims", 0),
              "ROPE_TRAIN_SEQ_LEN": ("partial_rope.ntk_train_seq_len", "core.train_seq_len"),
              "NUM_LOOPS": ("depth_recurrence.num_loops", 0), "LOOP_START": "depth_recurrence.loop_start",
              "LOOP_END": "depth_recurrence.loop_end", "ENABLE_LOOPING_AT": "depth_recurrence.enable_at",
              "PARALLEL_RESIDUAL_START": ("parallel_residuals.start", "core.num_layers"),
              "WARMDOWN_FRAC": ("warmdown_frac.frac", 0.0), "MIN_LR": ("warmdown_frac.min_lr", 0.0),
              "MUON_ROW_NORMALIZE": ("muon_eq_r.row_normalize", False),
              "MUON_WD": ("muon_eq_r.weight_decay", "weight_decay.muon", 0.0),
              "ADAM_WD": ("weight_decay.adam", 0.0), "EMBED_WD": ("weight_decay.embed", 0.0),
              "EMA_DECAY": ("ema.decay", 0.9965), "EVAL_STRIDE": "score_first_ttt.stride",
              "TTT_LR": "score_first_ttt.lr", "TTT_EPOCHS": "score_first_ttt.epochs",
              "TTT_MOMENTUM": "score_first_ttt.momentum", "TTT_CHUNK_TOKENS": "score_first_ttt.chunk_tokens",
              "GPTQ_CALIBRATION_BATCHES": "gptq.calib_batches", "GPTQ_RESERVE_SECONDS": "gptq.reserve_seconds",
              "MATRIX_BITS": "gptq.attn_bits", "EMBED_BITS": "gptq.embed_bits",
              "MATRIX_CLIP_SIGMAS": "gptq.matrix_clip_sigmas", "EMBED_CLIP_SIGMAS": "gptq.embed_clip_sigmas"},
    plugins={"SKIP_GATES_ENABLED": "skip_gates", "LN_SCALE": "ln_scale", "TTT_ENABLED": "score_first_ttt"},
    fixed={"SLIDING_WINDOW_ENABLED": "1", "ETLB_ENABLED": "0", "COMPRESSOR": "brotli"},
    skip_eval={"SLIDING_WINDOW_ENABLED": "0", "TTT_ENABLED": "0"},
    skip_plugins=("score_first_ttt",),  # the record's SLIDING_WINDOW/TTT off: its final eval is the plain one
    elsewhere={**BENCH_NAMES, "MUON_BETA2": "dead", "ETLB_LR": "not ported (ETLB_ENABLED=0)",
               "ETLB_STEPS": "not ported (ETLB_ENABLED=0)", "ETLB_CLIP": "not ported (ETLB_ENABLED=0)",
               "CONTROL_TENSOR_NAME_PATTERNS": "core (same list)", "ttt_hash_embed": "dead",
               "ttt_hash_buckets": "dead", **dict.fromkeys(DERIVED, "derived")},
)


def _pr1855_dead_lambdas(cfg: Config) -> tuple[int, str]:
    """PR #1855's GPT makes `parallel_post_lambdas` (L, 2, 2) and `parallel_resid_lambdas` (L, 2) for every layer;
    `_parallel_block` (and its TTT twin) reads only rows i >= PARALLEL_START_LAYER. parallel_lanes makes those."""
    start = setting_value(cfg, ("parallel_lanes.start", "core.num_layers"))
    return 6 * start, f"the record's parallel-lane lambdas of blocks 0-{start - 1} (6 each), never read"


PR1855 = RecordProfile(
    "pr1855", f"{RECORDS}/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611", "recipes/pr1855.toml",
    "454f710d174be80f4603069ca952833d694f60d1d34c0c25703528323bc8878b", log="train_seed42.log",
    settings={**{k: v for k, v in CORE_NAMES.items() if k != "HEAD_LR"},
              "VAL_BATCH_TOKENS": "core.val_batch_size", "EVAL_SEQ_LEN": "core.eval_seq_len",
              "TTT_EVAL_SEQ_LEN": "core.eval_seq_len", "ADAM_WD": ("weight_decay.adam", 0.0),
              "EMBED_WD": ("weight_decay.embed", 0.0), "MUON_WD": ("muon_eq_r.weight_decay", "weight_decay.muon", 0.0),
              "MUON_ROW_NORMALIZE": ("muon_eq_r.row_normalize", False), "EMA_DECAY": "ema.decay",
              "WARMDOWN_FRAC": "warmdown_frac.frac", "MIN_LR": ("warmdown_frac.min_lr", 0.0),
              "NUM_LOOPS": ("depth_recurrence.num_loops", 0), "LOOP_START": "depth_recurrence.loop_start",
              "LOOP_END": "depth_recurrence.loop_end", "ENABLE_LOOPING_AT": "depth_recurrence.enable_at",
              "PARALLEL_START_LAYER": ("parallel_lanes.start", "core.num_layers"),
              "PARALLEL_FINAL_LANE": "parallel_lanes.final_lane", "ROPE_DIMS": ("partial_rope.dims", 0),
              "ROPE_TRAIN_SEQ_LEN": "core.train_seq_len",  # read, never used (ROPE_YARN 0: no NTK rescale)
              "XSA_LAST_N": ("xsa.last_n", 0), "GATE_WINDOW": ("sparse_attn_gate.window", "smeargate.gate_window"),
              "SPARSE_ATTN_GATE_SCALE": "sparse_attn_gate.scale",
              "SPARSE_ATTN_GATE_INIT_STD": "sparse_attn_gate.init_std",
              "GPTQ_CALIBRATION_BATCHES": "gptq.calib_batches", "GPTQ_RESERVE_SECONDS": "gptq.reserve_seconds",
              "MATRIX_BITS": "gptq.attn_bits", "EMBED_BITS": "gptq.embed_bits",
              "MATRIX_CLIP_SIGMAS": "gptq.matrix_clip_sigmas", "ATTN_CLIP_SIGMAS": "gptq.attn_clip_sigmas",
              "MLP_CLIP_SIGMAS": "gptq.mlp_clip_sigmas", "EMBED_CLIP_SIGMAS": "gptq.embed_clip_sigmas",
              "LQER_RANK": "lqer.rank", "LQER_TOP_K": "lqer.top_k", "LQER_FACTOR_BITS": "lqer.factor_bits",
              "LQER_ASYM_ENABLED": "lqer.asym", "LQER_ASYM_GROUP": "lqer.asym_group",
              "TTT_LORA_RANK": "phased_ttt.rank", "TTT_LORA_ALPHA": "phased_ttt.alpha",
              "TTT_CHUNK_SIZE": "phased_ttt.chunk_tokens", "TTT_BATCH_SIZE": "phased_ttt.batch_docs",
              "TTT_LORA_LR": "phased_ttt.lr", "TTT_BETA1": "phased_ttt.beta1", "TTT_BETA2": "phased_ttt.beta2",
              "TTT_WEIGHT_DECAY": "phased_ttt.weight_decay", "PHASED_TTT_PREFIX_DOCS": "phased_ttt.prefix_docs",
              "PHASED_TTT_NUM_PHASES": "phased_ttt.num_phases", "GLOBAL_TTT_LR": "phased_ttt.global_lr",
              "GLOBAL_TTT_MOMENTUM": "phased_ttt.global_momentum", "GLOBAL_TTT_EPOCHS": "phased_ttt.global_epochs",
              "GLOBAL_TTT_CHUNK_TOKENS": "phased_ttt.global_chunk_tokens",
              "GLOBAL_TTT_BATCH_SEQS": "phased_ttt.global_batch_seqs",
              "GLOBAL_TTT_GRAD_CLIP": "phased_ttt.global_grad_clip",
              "GLOBAL_TTT_RESPECT_DOC_BOUNDARIES": "phased_ttt.respect_doc_boundaries"},
    plugins={"CASEOPS_ENABLED": "caseops", "LN_SCALE": "ln_scale", "SKIP_GATES_ENABLED": "skip_gates",
             "SMEAR_GATE_ENABLED": "smeargate", "SPARSE_ATTN_GATE_ENABLED": "sparse_attn_gate",
             "GATED_ATTN_QUANT_GATE": "quant_gate", "LQER_ENABLED": "lqer", "TTT_ENABLED": "phased_ttt",
             "FUSED_CE_ENABLED": "fused_ce"},
    fixed={"COMPRESSOR": "pergroup", "ROPE_YARN": "0", "GATED_ATTN_ENABLED": "0", "ATTN_OUT_GATE_ENABLED": "0",
           "TTT_K_LORA": "1", "TTT_MLP_LORA": "1", "TTT_O_LORA": "1", "TTT_OPTIMIZER": "adam",
           "TTT_GRAD_STEPS": "1", "GLOBAL_TTT_WARMUP_CHUNKS": "0", "VAL_DOC_FRACTION": "1.0",
           "TTT_WARM_START_A": "1", "TTT_EVAL_ONLY": "0", "PREQUANT_ONLY": "0"},
    # phased TTT off (its LoRA compile warm-up alone took 138 s); brotli instead of per-group lrzip, which
    # needs the lrzip binary and ~2 min of (de)compression: the artifact is still written and its bytes logged
    skip_eval={"TTT_ENABLED": "0", "COMPRESSOR": "brotli"},
    skip_plugins=("phased_ttt", "compress_pergroup"),  # plain eval; the whole artifact through brotli
    elsewhere={**BENCH_NAMES, "ARTIFACT_DIR": "run dir", "EVAL_STRIDE": "unused by phased TTT",
               "ATTN_OUT_GATE_SRC": "off (ATTN_OUT_GATE_ENABLED=0)",
               "GATED_ATTN_INIT_STD": "off (GATED_ATTN_ENABLED=0)",
               "TTT_EVAL_BATCHES": "all", "GLOBAL_TTT_WARMUP_START_LR": "unused at 0 warm-up chunks",
               "CONTROL_TENSOR_NAME_PATTERNS": "core (same list)", **dict.fromkeys(DERIVED, "derived")},
    dead_params=_pr1855_dead_lambdas,
)

PROFILES = {p.name: p for p in (PR315, PR534, PR609, PR1493, PR1855, RecordProfile("generic", "", "", ""))}


def profile_for(script: Path, name: str | None) -> RecordProfile:
    """The profile named `name`, else the one whose sha256 is the script's; a one-line error otherwise."""
    if name is not None:
        if name not in PROFILES:
            raise ValueError(f"--profile {name}: unknown (known: {', '.join(PROFILES)})")
        return PROFILES[name]
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    for p in PROFILES.values():
        if p.sha256 == digest:
            return p
    raise ValueError(f"--vs {script}: not a known record script (sha256 {digest[:12]}…; known: "
                     f"{', '.join(p.name for p in PROFILES.values() if p.sha256)}); pass --profile NAME "
                     "(generic: a script reading the official baseline's environment names)")


def decoded_source(text: str) -> str:
    """The Python source of a record script, its LZMA/base85 self-extracting wrapper undone if it has one."""
    m = re.search(r'b85decode\((["\'])(.*?)\1\)', text, re.S)
    if not text.lstrip().startswith("import lzma") or m is None:
        return text
    raw = lzma.decompress(base64.b85decode(m.group(2)), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    return raw.decode("utf-8")


# Log formats: PR #315 / the baseline / pgolf `step:N/M train_loss:X train_time:Tms ...`; PR #1493
# `N/M train_loss: X train_time: Tm tok/s: R` (minutes to 0.1: the time comes from the cumulative tok/s).
STEP_MS = re.compile(r"^step:(\d+)/\d+ train_loss:(\S+) train_time:(\d+)ms", re.M)
STEP_TOKS = re.compile(r"^(\d+)/\d+ train_loss: (\S+) train_time: [\d.]+m tok/s: (\d+)", re.M)
VAL = re.compile(r"^(?:step:)?(\d+)/(\d+) val_loss:\s*(\S+) val_bpb:\s*([\d.]+)", re.M)
PARAMS = re.compile(r"^model_params:(\d+)", re.M)
WARMUP = re.compile(r"^warmup_\w+:.* time:([\d.]+)s graphs:(\d+)$", re.M)  # pgolf's warm-up steps
PEAK = re.compile(r"^peak memory allocated: (\d+) MiB", re.M)
ARTIFACT = re.compile(r"^Serialized model (\S+): (\d+) bytes", re.M)
TOTAL = re.compile(r"^Total submission size (\S+): (\d+) bytes", re.M)
# the round-tripped artifact's evaluation: pgolf / PR #315 / #534 / #609 `final_<label>_roundtrip val_loss:X
# val_bpb:Y`, PR #1493 / #1855 `quantized val_loss:X val_bpb:Y` / `diagnostic quantized val_loss:…`; a record
# that also scores it with sliding windows (PR #315 / #609 `final_<label>_sliding_window …`, PR #1493
# `quantized_sliding_window …`) reports that one, as pgolf's recipe's evaluator does (first match of each)
FINAL = re.compile(r"^(?:final_\S+_roundtrip|(?:diagnostic )?quantized) val_loss:\s*\S+ val_bpb:\s*([\d.]+)", re.M)
SLIDING = re.compile(r"^(?:final_\S+_sliding_window|quantized_sliding_window) val_loss:\s*\S+ val_bpb:\s*([\d.]+)",
                     re.M)
# mode switches: pgolf `mode:NAME on step:N`; PR #1493/#1855 `layer_loop:enabled step:N`; PR #315/#609
# `late_qat:enabled step:N`, `swa:start step:N`; PR #534 `late_qat:activated at step N`
MODE = re.compile(r"^(?:mode:(\S+) on step:(\d+)"
                  r"|(layer_loop|late_qat|swa):(?:enabled|activated at|start) step[: ](\d+))", re.M)


def parse_log(text: str, tokens_per_step: int) -> dict[str, Any]:
    """Train loss and cumulative train time (ms) per logged step, last-step val_bpb, peak memory, artifact,
    parameter count, pgolf's warm-up (seconds and graphs compiled at its last step)."""
    steps: dict[int, tuple[float, float]] = {}
    for m in STEP_MS.finditer(text):
        steps[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    for m in STEP_TOKS.finditer(text):
        step, rate = int(m.group(1)), float(m.group(3))
        steps[step] = (float(m.group(2)), 1000.0 * step * tokens_per_step / rate if rate > 0 else float("nan"))
    vals = [(int(m.group(1)), float(m.group(4))) for m in VAL.finditer(text)]
    peak, art, total = PEAK.findall(text), ARTIFACT.findall(text), TOTAL.findall(text)
    final = SLIDING.findall(text) or FINAL.findall(text)
    warm = WARMUP.findall(text)
    return {
        "steps": dict(sorted(steps.items())),
        "last_val_bpb": next((bpb for s, bpb in reversed(vals) if s > 0), None),
        "peak_memory_bytes": int(peak[-1]) * 2**20 if peak else None,
        "artifact": {label: int(n) for label, n in art} or None,
        "total_submission_bytes": int(total[-1][1]) if total else None,
        "final_val_bpb": float(final[0]) if final else None,
        "model_params": int(params[0]) if (params := PARAMS.findall(text)) else None,
        "warmup": {"seconds": float(warm[-1][0]), "graphs": int(warm[-1][1])} if warm else None,
        "mode_switches": {m.group(1) or m.group(3): int(m.group(2) or m.group(4)) for m in MODE.finditer(text)},
    }


def ms_per_step_by_phase(steps: dict[int, tuple[float, float]], skip: int,
                         switches: dict[str, int] | None) -> list[dict[str, Any]]:
    """Mean ms/step of each mode phase (before the first switch: "base"; after each: its mode's name), over the
    logged steps from `skip` on strictly inside the phase, so a window holding a switch (its recompile or new
    graph) counts in neither; a phase with fewer than two such steps has ms None, and one that ends by `skip`
    (a switch during the warm-up steps) is left out."""
    at: dict[int, list[str]] = {}
    for name, step in (switches or {}).items():  # modes switched at one step make one phase
        at.setdefault(step, []).append(name)
    bounds = [(step, "+".join(names)) for step, names in sorted(at.items())]
    edges = [(skip, "base"), *bounds, (max(steps, default=0) + 1, "")]
    out = []
    for (lo, name), (hi, _) in pairwise(edges):
        if hi <= skip:
            continue
        inside = {s: v for s, v in steps.items() if s >= skip and (lo <= s if name == "base" else lo < s) and s < hi}
        rate = ms_per_step_from_log(inside, skip)
        out.append({"phase": name, "from_step": rate["from_step"], "to_step": rate["to_step"], "ms": rate["mean"]})
    return out


def ms_per_step_from_log(steps: dict[int, tuple[float, float]], skip: int) -> dict[str, float | None]:
    """Mean and median ms/step over the logged intervals after step `skip` (cumulative times differenced); the
    median is over steps (an interval of n steps counts n times: a log that prints its first ten steps one by one
    and then every 100th does not weight those ten like ten hundreds)."""
    pts = [(s, t) for s, (_, t) in steps.items() if s >= skip]
    if len(pts) < 2:
        return {"mean": None, "median": None, "from_step": None, "to_step": None}
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in pairwise(pts) for _ in range(s1 - s0)]
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    return {"mean": (t1 - t0) / (s1 - s0), "median": statistics.median(per_step), "from_step": s0, "to_step": s1}
