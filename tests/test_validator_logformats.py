"""Log parsing of every official log family's line shapes (a fixture per format, tests/fixtures/logs/), the rules
that read them (calibration time, eval phases, MB sizes, pre-quant TTT), the seed-suffix family fix, and the
static path's import weight."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from validator.cli import validate_folder
from validator.logs import parse_file

FIX = Path(__file__).parent / "fixtures" / "logs"
ROOT = Path(__file__).resolve().parent.parent


def parsed(name: str):
    return parse_file(FIX / name)


@pytest.mark.parametrize(("name", "want"), [
    ("gptq_hessians.log", {"hessian_s": 3.5, "gptq_reserve_s": 4.0, "code_kind": "compressed", "code_bytes": 30000,
                           "total_bytes": 15930000, "train_time_ms": 596000.0}),
    ("gptq_calibrated_ms_reserve.log", {"hessian_s": 21.7, "gptq_reserve_s": 14.0, "train_time_ms": 586200.0}),
    ("ar_selfgen_postgptq.log", {"ar_calib_s": 239.9, "post_gptq_elapsed_s": 856.2, "train_budget_s": 600.0,
                                 "hessian_s": None}),
    ("postgptq_over_budget.log", {"post_gptq_elapsed_s": 640.5, "ar_calib_s": None}),
    ("phased_ttt_timestamps.log", {"warmup_s": 137.6, "world_size": 8,
                                   "train_time_ms": 599592.0}),
    ("ttt_sliding_elapsed.log", {"total_bytes": 15700000}),
    ("mb_artifact_line.log", {"total_bytes": 15958442, "code_bytes": 78442}),
    ("mb_only_indented.log", {"total_bytes": None, "total_mb": (15.5, 0.005, "MB", 5)}),
])
def test_fields_per_format(name: str, want: dict) -> None:
    rec = parsed(name)
    for key, value in want.items():
        got = getattr(rec, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, (key, got)


def test_eval_phases_and_units() -> None:
    ttt = parsed("standalone_ttt_pass.log")
    assert ttt.phases == [("ttt", 576.2, 5)]
    assert ttt.scoring_eval_ms() == pytest.approx(40_000 + 576_200)  # the TTT pass feeds the scoring line
    assert parsed("eval_seconds.log").scoring_eval_ms() == pytest.approx(612_400)  # eval_time in seconds
    assert parsed("ttt_sliding_elapsed.log").scoring_eval_ms() == pytest.approx(477_300)
    assert parsed("phased_ttt_timestamps.log").scoring_eval_ms() == pytest.approx(519_546)
    assert parsed("mb_artifact_line.log").final().eval_ms == 300_000  # "(stride=16, T=0.90) time:Nms"
    assert parsed("prequant_ttt.log").prequant_lines == [2, 3]
    assert parsed("gptq_hessians.log").prequant_lines == []  # "pre-quantization post-ema" is a diagnostic eval


def folder_with(tmp: Path, logs: dict[str, str], script: str = "import torch\n", sub: dict | None = None,
                track: str = "track_10min_16mb") -> Path:
    f = tmp / "records" / track / "2026-05-01_Fixture"
    f.mkdir(parents=True)
    (f / "README.md").write_text("# fixture\n")
    (f / "train_gpt.py").write_text(script)
    for name, src in logs.items():
        shutil.copyfile(FIX / src, f / name)
    (f / "submission.json").write_text(json.dumps(sub or {"name": "x", "github_id": "x", "author": "x",
                                                         "date": "2026-05-01"}))
    return f


def rule_findings(folder: Path, rule: str):
    return [f for f in validate_folder(folder) if f.rule == rule]


def errors(folder: Path, rule: str):
    return [f for f in rule_findings(folder, rule) if f.status == "fail" and f.severity == "ERROR"]


@pytest.mark.parametrize(("src", "rule"), [
    ("gptq_calibrated_ms_reserve.log", "TIME.TRAIN_POSTLOOP"),  # 586.2 s + 21.7 s of calibration on train data
    ("postgptq_over_budget.log", "TIME.TRAIN_POSTLOOP"),  # the script's own post-GPTQ wall clock is over budget
    ("standalone_ttt_pass.log", "TIME.EVAL"),  # a 576 s TTT pass logged apart from a 40 s scoring line
    ("eval_seconds.log", "TIME.EVAL"),  # eval time printed in seconds
    ("mb_only_over.log", "SIZE.CAP"),  # total only in MB, over the cap
    ("prequant_ttt.log", "EVAL.PREQUANT_TTT"),  # fine-tuning on val before quantization, seen in the log
])
def test_adversarial_log_formats_are_errors(tmp_path: Path, src: str, rule: str) -> None:
    folder = folder_with(tmp_path, {"train_seed1.log": src})
    assert errors(folder, rule), rule_findings(folder, rule)


@pytest.mark.parametrize(("src", "rule"), [
    ("gptq_hessians.log", "TIME.TRAIN_POSTLOOP"), ("phased_ttt_timestamps.log", "TIME.EVAL"),
    ("mb_only_indented.log", "SIZE.CAP"), ("mb_artifact_line.log", "SIZE.CAP"),
    ("gptq_hessians.log", "EVAL.PREQUANT_TTT"), ("ttt_sliding_elapsed.log", "TIME.EVAL"),
])
def test_clean_log_formats_pass(tmp_path: Path, src: str, rule: str) -> None:
    folder = folder_with(tmp_path, {"train_seed1.log": src})
    assert not errors(folder, rule) and rule_findings(folder, rule)[0].status == "pass", rule_findings(folder, rule)


def test_ar_selfgen_calibration_is_reported_not_failed(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, {"train_seed1.log": "ar_selfgen_postgptq.log"})
    f = rule_findings(folder, "TIME.TRAIN_POSTLOOP")
    assert {x.status for x in f} == {"warn"} and "self-generated" in f[0].message


def test_mb_computed_with_mib_is_caught(tmp_path: Path) -> None:
    """'15.50MB' printed by a script that divides by 2**20 is 16,252,928 bytes: over the cap."""
    script = 'log(f"{model_bytes/2**20:.2f}MB model + {code_bytes/2**20:.3f}MB code = {total/2**20:.2f}/16.00MB")\n'
    folder = folder_with(tmp_path, {"train_seed1.log": "mb_only_indented.log"}, script=script)
    bad = errors(folder, "SIZE.CAP")
    assert bad and "MiB" in bad[0].message


def _rerun_folder(tmp: Path) -> Path:
    """Three original seeds + re-runs of the same seeds with another file-name family (2026-04-29 shape)."""
    f = tmp / "records" / "track_10min_16mb" / "2026-05-01_Reruns"
    f.mkdir(parents=True)
    (f / "README.md").write_text("# x\n")
    (f / "train_gpt.py").write_text("import torch\n")
    vals = {"train_seed42_pr99_original.log": (42, 1.0613, "0.5"), "train_seed314_original.log": (314, 1.0609, "0.5"),
            "train_seed7_original.log": (7, 1.0622, "0.5"), "train_seed42_rerun_gptq8s.log": (42, 1.0608, "8.0"),
            "train_seed314_rerun_gptq8s.log": (314, 1.0609, "8.0"), "train_seed7_rerun_gptq8s.log": (7, 1.0625, "8.0")}
    for name, (seed, bpb, reserve) in vals.items():
        (f / name).write_text("\n".join([
            "Hyperparameters:", f"  seed: {seed}", f"  gptq_reserve_seconds: {reserve}",
            "stopping_early: wallclock_cap train_time: 590000ms step: 4900/20000",
            "Total submission size quantized+brotli: 15950000 bytes",
            f"quantized_ttt_phased val_loss:{bpb * 2.19:.8f} val_bpb:{bpb:.8f} eval_time:500000ms"]) + "\n")
    (f / "submission.json").write_text(json.dumps({"name": "x", "github_id": "x", "val_bpb": 1.06147}))
    return f


def test_reruns_with_a_seed_suffix_family_are_not_extra_seeds(tmp_path: Path) -> None:
    folder = _rerun_folder(tmp_path)
    seeds = rule_findings(folder, "STAT.SEEDS")
    assert [x.status for x in seeds] == ["pass"], seeds
    sub = json.loads((folder / "submission.json").read_text())
    sub["val_bpb"] = 1.0614  # the re-runs' mean (within rounding of the mean of all six too)
    (folder / "submission.json").write_text(json.dumps(sub))
    assert {x.status for x in rule_findings(folder, "STAT.SEEDS")} == {"pass"}  # the re-run family backs it
    sub["val_bpb"] = 1.06157  # reproduced only by mixing originals and re-runs: two configurations
    (folder / "submission.json").write_text(json.dumps(sub))
    bad = [x for x in rule_findings(folder, "STAT.SEEDS") if x.status == "fail" and x.severity == "ERROR"]
    assert bad  # no set of one configuration and three distinct seeds reproduces it


def test_static_path_does_not_import_torch_or_the_plugin_registry() -> None:
    code = ("import sys, runpy; sys.argv = ['validator', sys.argv[1], '--json']\n"
            "try:\n    runpy.run_module('validator', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules\n"
            "             if m == 'torch' or m.startswith(('core.registry', 'plugins', 'numpy')))\n"
            "print(bad, file=sys.stderr)\nsys.exit(1 if bad else 0)\n")
    folder = FIX  # any folder: the imports are the same
    res = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]


def test_claimed_compressed_code_size_must_be_reachable(tmp_path: Path) -> None:
    """'Code size (compressed)' without the wrapper shipped: a size the shipped source cannot compress to fails."""
    import random

    rng = random.Random(0)
    script = "".join(f"v{i} = {rng.getrandbits(64)}  # tuned\n" for i in range(4000))
    from validator.rules.size import wrapper_estimate

    est, parsed = wrapper_estimate(script)
    assert parsed and est > 20_000
    for claimed, bad in ((2_000, True), (int(est * 0.97), False)):
        f = folder_with(tmp_path / str(claimed), {"train_seed1.log": "gptq_hessians.log"}, script=script)
        log = f / "train_seed1.log"
        log.write_text(log.read_text().replace("Code size (compressed): 30000 bytes",
                                               f"Code size (compressed): {claimed} bytes")
                       .replace("15930000", str(15_900_000 + claimed)))
        got = [x for x in rule_findings(f, "SIZE.CODE_WRAPPED") if x.status == "fail" and x.severity == "ERROR"]
        assert bool(got) == bad, rule_findings(f, "SIZE.CODE_WRAPPED")
