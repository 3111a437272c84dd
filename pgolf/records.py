"""Record scripts `pgolf bench --vs` knows: which recipe each reproduces, the recipe's values under the
record's own environment names, its eval-skipping knobs, and parsers for the record log formats.

A profile is found by the script's sha256 (the published file, LZMA wrapper included); `--profile generic`
runs any script that reads the official baseline's names (NUM_LAYERS, ITERATIONS, DATA_PATH, …).
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


def pr315_env(cfg: Config, skip_eval: bool) -> dict[str, str]:
    """PR #315's Hyperparameters that the recipe's plugins set (the core ones come from `core_env`)."""
    qat = "late_qat" in cfg.plugins
    return {
        "BIGRAM_VOCAB_SIZE": str(setting(cfg, "bigram_hash.buckets", 0)),
        "BIGRAM_DIM": str(setting(cfg, "bigram_hash.dim", 128)),
        "XSA_LAST_N": str(setting(cfg, "xsa.last_n", 0)), "ROPE_DIMS": str(setting(cfg, "partial_rope.dims", 0)),
        "LN_SCALE": _on("ln_scale" in cfg.plugins), "EMA_ENABLED": _on("ema" in cfg.plugins),
        "EMA_DECAY": str(setting(cfg, "ema.decay", 0.997)), "SWA_ENABLED": "0", "QAT_ENABLED": "0",
        "LATE_QAT": _on(qat), "QAT_THRESHOLD": str(setting(cfg, "late_qat.threshold", 0.1)),
        "MUON_WD": str(setting(cfg, "weight_decay.muon", 0.0)), "ADAM_WD": str(setting(cfg, "weight_decay.adam", 0.0)),
        "EVAL_STRIDE": str(setting(cfg, "sliding_window.stride", 64)), "MTP_NUM_HEADS": "0",
    }  # no knob skips its final evaluations: the validation prefix (--val-tokens) keeps them short


def pr1493_env(cfg: Config, skip_eval: bool) -> dict[str, str]:
    """PR #1493's Hyperparameters that the recipe's plugins set; skip_eval: no sliding window, no TTT (the
    artifact is still written and its bytes logged)."""
    ttt = "score_first_ttt" in cfg.plugins and not skip_eval
    loops = "depth_recurrence" in cfg.plugins
    return {
        "EMBEDDING_DIM": str(cfg.core.model_dim), "VAL_BATCH_TOKENS": str(cfg.core.val_batch_size),
        "XSA_LAST_N": str(setting(cfg, "xsa.last_n", 0)), "SKIP_GATES_ENABLED": _on("skip_gates" in cfg.plugins),
        "ROPE_DIMS": str(setting(cfg, "partial_rope.dims", 0)),
        "ROPE_TRAIN_SEQ_LEN": str(setting(cfg, "partial_rope.ntk_train_seq_len", cfg.core.train_seq_len)),
        "LN_SCALE": _on("ln_scale" in cfg.plugins),
        "NUM_LOOPS": str(setting(cfg, "depth_recurrence.num_loops", 0) if loops else 0),
        "LOOP_START": str(setting(cfg, "depth_recurrence.loop_start", 3)),
        "LOOP_END": str(setting(cfg, "depth_recurrence.loop_end", 5)),
        "ENABLE_LOOPING_AT": str(setting(cfg, "depth_recurrence.enable_at", 0.35)),
        "PARALLEL_RESIDUAL_START": str(setting(cfg, "parallel_residuals.start", cfg.core.num_layers)),
        "WARMDOWN_FRAC": str(setting(cfg, "warmdown_frac.frac", 0.0)),
        "MIN_LR": str(setting(cfg, "warmdown_frac.min_lr", 0.0)),
        "MUON_ROW_NORMALIZE": _on(bool(setting(cfg, "muon_eq_r.row_normalize", False))),
        "MUON_WD": str(setting(cfg, "muon_eq_r.weight_decay", setting(cfg, "weight_decay.muon", 0.0))),
        "ADAM_WD": str(setting(cfg, "weight_decay.adam", 0.0)),
        "EMBED_WD": str(setting(cfg, "weight_decay.embed", 0.0)),
        "EMA_DECAY": str(setting(cfg, "ema.decay", 0.9965)),
        "SLIDING_WINDOW_ENABLED": _on(not skip_eval), "TTT_ENABLED": _on(ttt), "ETLB_ENABLED": "0",
        "EVAL_STRIDE": str(setting(cfg, "score_first_ttt.stride", 64)),
        "TTT_LR": str(setting(cfg, "score_first_ttt.lr", 0.005)),
        "TTT_EPOCHS": str(setting(cfg, "score_first_ttt.epochs", 3)),
        "TTT_MOMENTUM": str(setting(cfg, "score_first_ttt.momentum", 0.9)),
        "TTT_CHUNK_TOKENS": str(setting(cfg, "score_first_ttt.chunk_tokens", 32768)),
        "COMPRESSOR": "brotli", "GPTQ_CALIBRATION_BATCHES": str(setting(cfg, "gptq.calib_batches", 64)),
        "GPTQ_RESERVE_SECONDS": str(setting(cfg, "gptq.reserve_seconds", 12.0)),
        "MATRIX_BITS": str(setting(cfg, "gptq.attn_bits", 6)), "EMBED_BITS": str(setting(cfg, "gptq.embed_bits", 8)),
        "MATRIX_CLIP_SIGMAS": str(setting(cfg, "gptq.matrix_clip_sigmas", 12.85)),
        "EMBED_CLIP_SIGMAS": str(setting(cfg, "gptq.embed_clip_sigmas", 20.0)),
    }


@dataclass(frozen=True)
class RecordProfile:
    name: str
    folder: str  # in the parameter-golf repository
    recipe: str  # the pgolf recipe that reproduces it
    sha256: str  # of the published train_gpt.py
    env: Callable[[Config, bool], dict[str, str]] = field(default=lambda cfg, skip: {})


PROFILES = {
    p.name: p for p in (
        RecordProfile("pr315", f"{RECORDS}/2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248", "recipes/pr315.toml",
                      "cfa93055196182d8187ba29a620d747abd987c02b27f7fba5a54256cfab35bb7", pr315_env),
        RecordProfile("pr1493", f"{RECORDS}/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT",
                      "recipes/pr1493.toml", "477f432097ce619d4080af0a249d29e6e0bf31b7a747ec4e6b509b5be2e202ee",
                      pr1493_env),
        RecordProfile("generic", "", "", ""),
    )
}


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
PEAK = re.compile(r"^peak memory allocated: (\d+) MiB", re.M)
ARTIFACT = re.compile(r"^Serialized model (\S+): (\d+) bytes", re.M)
TOTAL = re.compile(r"^Total submission size (\S+): (\d+) bytes", re.M)
MODE = re.compile(r"^(?:mode:(\S+) on step:(\d+)|layer_loop:enabled() step:(\d+))", re.M)  # pgolf | PR #1493


def parse_log(text: str, tokens_per_step: int) -> dict[str, Any]:
    """Train loss and cumulative train time (ms) per logged step, last-step val_bpb, peak memory, artifact."""
    steps: dict[int, tuple[float, float]] = {}
    for m in STEP_MS.finditer(text):
        steps[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    for m in STEP_TOKS.finditer(text):
        step, rate = int(m.group(1)), float(m.group(3))
        steps[step] = (float(m.group(2)), 1000.0 * step * tokens_per_step / rate if rate > 0 else float("nan"))
    vals = [(int(m.group(1)), float(m.group(4))) for m in VAL.finditer(text)]
    peak, art, total = PEAK.findall(text), ARTIFACT.findall(text), TOTAL.findall(text)
    return {
        "steps": dict(sorted(steps.items())),
        "last_val_bpb": next((bpb for s, bpb in reversed(vals) if s > 0), None),
        "peak_memory_bytes": int(peak[-1]) * 2**20 if peak else None,
        "artifact": {label: int(n) for label, n in art} or None,
        "total_submission_bytes": int(total[-1][1]) if total else None,
        "mode_switches": {m.group(1) or "layer_loop": int(m.group(2) or m.group(4)) for m in MODE.finditer(text)},
    }


def ms_per_step_from_log(steps: dict[int, tuple[float, float]], skip: int) -> dict[str, float | None]:
    """Mean and median ms/step over the logged intervals after step `skip` (cumulative times differenced)."""
    pts = [(s, t) for s, (_, t) in steps.items() if s >= skip]
    if len(pts) < 2:
        return {"mean": None, "median": None, "from_step": None, "to_step": None}
    windows = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in pairwise(pts)]
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    return {"mean": (t1 - t0) / (s1 - s0), "median": statistics.median(windows), "from_step": s0, "to_step": s1}
