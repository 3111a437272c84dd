"""Log parsing of every rulebook §9 format (synthetic excerpts) and exact events.jsonl parsing."""

from __future__ import annotations

import json
from pathlib import Path

from validator.logs import parse_events, parse_folder, parse_text, scoring_logs, seed_from_name

BASELINE = """\
import os
log0(f"final_int8_zlib_roundtrip val_loss:{q_val_loss:.4f} val_bpb:{q_val_bpb:.4f}")
    print("final_int8_zlib_roundtrip val_loss:9.9 val_bpb:9.9")
====================================================================================================
world_size:8 grad_accum_steps:1
val_loader:shards pattern=./data/fineweb_val_*.bin tokens:62021632
train_loader:dataset:fineweb10B_sp1024 train_shards:80
seed:1337
step:1/20000 train_loss:6.9 train_time:120ms step_avg:120.00ms
step:2979/20000 val_loss:2.0089 val_bpb:1.1898 train_time:600055ms
step:13780/20000 val_loss:2.0727 val_bpb:1.2270 train_time:600038ms step_avg:43.54ms
stopping_early: wallclock_cap train_time:600038ms step:13780/20000
Serialized model: 67224983 bytes
Code size: 47642 bytes
Total submission size: 68588410 bytes
Serialized model int8+zlib: 15815847 bytes (payload:17178912 raw_torch:17224025 payload_ratio:3.91x)
Total submission size int8+zlib: 15863489 bytes
final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1401ms
final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570
"""

TTT_ERA = """\
1714000000.123 Hyperparameters:
1714000000.124   seed: 42
1714000000.125   matrix_lr: 0.022
1714000000.126 val_tokens: 47851520
1714000000.127 train_shards: 1499
1714000000.128 val_bpb:byte_sidecar:enabled
1714000000.129 gptq:reserving 8.0s, effective=592000ms
1714000000.130 stopping_early: wallclock_cap train_time: 591968ms step: 4945/20000
1714000000.131 GPTQ:collected 67 Hessians in 3.5s
1714000000.132 Serialize: per-group compression done in 99.9s
1714000000.133 Serialized model quantized+pergroup: 15920836 bytes
1714000000.134 Code size (uncompressed): 151766 bytes
1714000000.135 Code size (compressed): 31250 bytes
1714000000.136 Total submission size quantized+pergroup: 15952086 bytes
1714000000.137 diagnostic quantized val_loss:2.33 val_bpb:1.07
1714000000.138 pre-quantization post-ema val_loss:2.30 val_bpb:1.05 eval_time:2000ms
1714000000.139 quantized val_loss:2.3389 val_bpb:1.0686 eval_time:9000ms
1714000000.140 ttt_lora:warming up compile (random tokens, no val data)
1714000000.141 ttt_lora:compile warmup done (137.6s)
1714000000.142 quantized_ttt_phased val_loss:2.32172411 val_bpb:1.06107568 eval_time:508785ms
1714000000.143 total_eval_time:508.8s
"""


def test_baseline_family_log() -> None:
    r = parse_text(BASELINE, "train.log")
    assert r.world_size == 8 and r.val_tokens == 62_021_632 and r.train_shards == 80 and r.seed == 1337
    assert r.train_time_ms == 600_055 and r.steps == 13780  # the largest figure (step 2979's), not the last line's
    assert r.total_bytes == 15_863_489 and r.total_kind == "int8+zlib"  # last S1 line, not the raw torch.save one
    assert r.model_bytes == 15_815_847 and r.code_bytes == 47_642 and r.code_kind == "raw"
    assert [e.label for e in r.evals] == ["final_int8_zlib_roundtrip", "final_int8_zlib_roundtrip_exact"]
    fin = r.final()
    assert fin is not None and fin.label.endswith("_exact") and fin.val_bpb == 1.2243657
    assert r.scoring_eval_ms() == 1401  # the timed twin of the _exact line


def test_ttt_era_log_with_timestamps() -> None:
    r = parse_text(TTT_ERA, "train_seed42.log")
    assert r.seed == 42 and r.hparams["matrix_lr"] == "0.022"
    assert r.val_tokens == 47_851_520 and r.train_shards == 1499 and r.sidecar
    assert r.gptq_reserve_s == 8.0 and r.hessian_s == 3.5 and r.serialize_s == [99.9]
    assert r.train_time_ms == 591_968 and r.steps == 4945
    assert r.code_bytes == 31_250 and r.code_kind == "compressed" and r.code_bytes_uncompressed == 151_766
    assert r.total_bytes == 15_952_086 and r.model_bytes == 15_920_836
    labels = [e.label for e in r.evals]
    assert "diagnostic quantized" not in labels and "pre-quantization post-ema" not in labels
    assert r.final().label == "quantized_ttt_phased" and r.final().val_bpb == 1.06107568
    assert 508_800 in [ms for ms, _ in r.eval_figures] and r.warmup_s == 137.6  # total_eval_time:508.8s
    assert r.final("quantized").val_bpb == 1.0686  # val_bpb_method selects a label


def test_other_eval_shapes() -> None:
    text = "\n".join([
        "final_sliding_window_eval_exact stride:64 val_loss:1.95110428 val_bpb:1.15555486",
        "ttt_sliding:done val_loss=1.887101 val_bpb=1.117650 elapsed=477.3s",
        "final_int8_zlib_roundtrip sliding val_loss:2.01 sliding val_bpb:1.19 eval_time:70000ms",
        "final_sliding val_loss:2.2 val_bpb:1.30 (stride=16, T=0.90) eval_time:768782ms",
        "4000/20000 val_loss: 2.6414 val_bpb: 1.1479",
    ])
    r = parse_text(text)
    assert [e.label for e in r.evals] == ["final_sliding_window_eval_exact", "ttt_sliding:done",
                                          "final_int8_zlib_roundtrip sliding", "final_sliding"]
    assert r.evals[1].eval_ms == 477_300 and r.evals[3].eval_ms == 768_782
    assert r.final().label == "ttt_sliding:done"  # ttt > sliding > roundtrip


def test_size_and_time_variants() -> None:
    r = parse_text("4500/20000 train_loss: 2.2771 train_time: 9.0m tok/s: 6589668\n"
                   "budget:15995705/16000000 (16.00/16.00MB) FITS\n")
    assert r.train_time_ms == 540_000 and r.steps == 4500 and r.total_bytes == 15_995_705
    r = parse_text("INT7+zlib model: 15400000 bytes | Total submission: 15441941 bytes\n"
                   "Raw model: 60000000 bytes | Code: 41941 bytes\n")
    assert r.model_bytes == 15_400_000 and r.total_bytes == 15_441_941 and r.code_bytes == 41_941
    r = parse_text("artifact_bytes:   15555017\nartifact:15.9MB int6 code:66000\n")
    assert r.total_bytes == 15_555_017 and r.code_bytes == 66_000
    r = parse_text("serialize_wallclock: 80.5s\nartifact_production_wallclock: 825.352s\n")
    assert r.serialize_s == [80.5, 825.352]


def test_seed_sources() -> None:
    assert seed_from_name("train_seed1337.log") == 1337
    assert seed_from_name("seed-42.txt") == 42
    assert seed_from_name("train2.txt") == 2
    assert seed_from_name("ternary_log_7.txt") == 7
    assert seed_from_name("train.log") is None


def test_folder_dedupe_and_scoring(tmp_path: Path) -> None:
    (tmp_path / "train_seed1337.log").write_text(BASELINE)
    (tmp_path / "train.log").write_text(BASELINE)  # byte-identical copy
    (tmp_path / "requirements.txt").write_text("brotli\n")
    sub = tmp_path / "logs"
    sub.mkdir()
    (sub / "seed_42.txt").write_text(TTT_ERA)
    recs = parse_folder(tmp_path)
    assert len(recs) == 2
    assert len(scoring_logs(recs)) == 2


def test_events_jsonl_exact() -> None:
    events = [
        {"event": "start", "time": 1.0, "params": 123, "world_size": 1},
        {"event": "step", "step": 4, "train_loss": 5.1, "train_time_ms": 400.0, "lr_mul": 1.0},
        {"event": "val", "step": 4, "val_loss": 5.0, "val_bpb": 2.9, "train_time_ms": 400.0},
        {"event": "train_end", "steps": 12, "train_time_ms": 1200.0},
        {"event": "size", "code_bytes": 60000, "model_bytes": 900000, "total_bytes": 960000, "cap": 16000000,
         "headroom": 15040000, "fits": True, "label": "int8+zlib"},
        {"event": "final_eval", "val_loss": 4.5, "val_bpb": 2.5, "eval_time_ms": 321.0, "evaluator": "sliding"},
    ]
    r = parse_events("\n".join(json.dumps(e) for e in events) + "\n", seed=7)
    assert r.fmt == "events" and r.seed == 7 and r.world_size == 1
    assert r.train_time_ms == 1200.0 and r.steps == 12 and r.step_avg_ms == 100.0
    assert (r.code_bytes, r.model_bytes, r.total_bytes, r.cap) == (60000, 900000, 960000, 16000000)
    fin = r.final()
    assert fin.val_bpb == 2.5 and fin.val_loss == 4.5 and r.scoring_eval_ms() == 321.0
