"""`pgolf bench` on CPU at tiny size: FLOPs/token against a hand count, the hook-time monitor, `--vs` against a
fake record script (ratios and losses from its log), the record log formats, and the record profiles."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from core.config import tomllib
from core.hookspecs import hookimpl
from pgolf.cli import main

TINY = dict(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, train_seq_len=64, vocab_size=320, mlp_mult=2)
SETS = [f"core.{k}={v}" for k, v in TINY.items()] + [
    "core.train_batch_tokens=1024", "core.grad_accum_steps=1", "core.warmup_steps=0", "core.val_batch_size=2048",
    "core.muon_momentum_warmup_steps=4", "core.device=cpu", "core.compile=false"]
MIRROR = Path(os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo"))

SLEEPY_PLUGIN = '''
import time
from core.hookspecs import hookimpl
from core.registry import Plugin


class Sleepy(Plugin):
    """Sleeps 20 ms after every step (a slow hook)."""
    name = "sleepy"
    summary = "test: a slow pg_after_step"
    sources = ("test",)
    test_settings = {}

    @hookimpl
    def pg_after_step(self, run, step):
        time.sleep(0.02)
'''

FAKE_RECORD = '''
import glob, os, sys
n = int(os.environ["ITERATIONS"])
if os.environ["MAX_WALLCLOCK_SECONDS"] not in ("0", "0.0") or os.environ["SEED"] != "1337":
    sys.exit("bad schedule env")
if not glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_train_*.bin")) or not os.path.isfile(
        os.environ["TOKENIZER_PATH"]):
    sys.exit("bad data env")
every = int(os.environ["TRAIN_LOG_EVERY"])
for s in range(1, n + 1):
    if s <= 10 or s % every == 0:
        print(f"step:{s}/{n} train_loss:{6.0 - 0.25 * s:.4f} train_time:{50 * s}ms step_avg:50.00ms")
print(f"step:{n}/{n} val_loss:3.0000 val_bpb:1.2345 train_time:{50 * n}ms step_avg:50.00ms")
print("Serialized model int6+zstd: 12345 bytes")
'''


def bench(tmp_path: Path, data: Path, *extra: str) -> dict:
    out = tmp_path / "result.json"
    argv = ["bench", "--recipe", "baseline", "--data", str(data), "--out", str(tmp_path / "b"), "--json", str(out),
            "--force", *[a for s in SETS for a in ("--set", s)], *extra]  # --force: a test may bench twice
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_bench_reports_the_accumulation_auto_micro_batch_chose(tmp_path, tiny_data, monkeypatch, capsys):
    """The micro-steps per step in the JSON and the table: 8 by default, 2 from the (faked) memory probe (1 GiB held
    + 10 GiB activations at 8 micro-steps, 80 GiB device, limit 0.8: A=1 needs 81 GiB, A=2 41 GiB)."""
    import plugins.auto_micro_batch as amb

    monkeypatch.setattr(amb, "step_memory", lambda run, stepper: (2**30, 10 * 2**30, 80 * 2**30))
    res = bench(tmp_path, tiny_data, "--smoke", "--profile-steps", "0", "--set", "core.grad_accum_steps=0",
                "--plugins", "auto_micro_batch")
    assert res["pgolf"]["grad_accum_steps"] == 2
    assert re.search(r"^micro-steps per step \(grad_accum_steps\)\s+2$", capsys.readouterr().out, re.M)


def test_bench_smoke_reports_flops_equal_to_a_hand_count(tmp_path, tiny_data):
    res = bench(tmp_path, tiny_data, "--smoke")
    pg = res["pgolf"]
    # Hand count (PaLM convention): 6 FLOPs per matmul weight per token (forward 2, backward 4) plus attention
    # 12·L·T·d (QKᵀ and AV over the full T×T, forward 4·T·d per layer, backward twice that).
    d, L, T, V = TINY["model_dim"], TINY["num_layers"], TINY["train_seq_len"], TINY["vocab_size"]
    kv = d // TINY["num_heads"] * TINY["num_kv_heads"]
    matmul_weights = L * (d * d + 2 * d * kv + d * d + 2 * d * TINY["mlp_mult"] * d) + V * d  # + tied head
    assert pg["flops_per_token"]["base"]["matmul"] == 6 * matmul_weights
    assert pg["flops_per_token"]["base"]["attention"] == 12 * L * T * d
    assert pg["steps"] == 3 and len(pg["step_ms"]) == 3 and pg["measured_steps"] == [3, 3]
    assert pg["grad_accum_steps"] == 1
    assert pg["ms_per_step_median"] == pytest.approx(pg["step_ms"][2])
    assert pg["tokens_per_s"] == pytest.approx(1024 / pg["ms_per_step_median"] * 1000)
    assert 0 < pg["mfu"] < 1 and pg["matmul_peak"]["dtype"] == "float32"
    assert pg["peak_memory"]["bytes"] > 0 and pg["warmup_s"] >= 0
    assert set(pg["profile"]["phases_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert pg["profile"]["phases_ms"]["forward"] > 0 and pg["profile"]["phases_ms"]["backward"] > 0
    assert sorted(int(s) for s in pg["log"]["steps"]) == [1, 2, 3]  # --smoke logs every step
    assert pg["host_syncs_per_step"] is None  # counted on CUDA only (its sync debug mode)


def _side_log(steps: dict[int, float]) -> dict:
    return {"log": {"steps": {str(s): [1.0, t] for s, t in steps.items()}, "peak_memory_bytes": None,
                    "last_val_bpb": None}, "peak_memory": {"bytes": None, "kind": None}}


def test_compare_times_both_logs_over_the_intervals_both_logged():
    from pgolf.bench import compare
    from pgolf.records import ms_per_step_from_log

    # pgolf logs each of its first ten steps (100 ms each) then every fifth (300 ms a step after step 10); the
    # record logs every fifth step, 200 ms then 400 ms. Five one-step intervals are not a median of their own.
    pg = {s: 100.0 * s for s in range(1, 11)} | {s: 1000.0 + 300.0 * (s - 10) for s in range(15, 31, 5)}
    rec = {s: 200.0 * s for s in range(5, 11, 5)} | {s: 2000.0 + 400.0 * (s - 10) for s in range(15, 31, 5)}
    assert ms_per_step_from_log({s: (1.0, t) for s, t in pg.items()}, 5)["median"] == 300.0  # 5 x 100, 20 x 300
    vs = compare(_side_log(pg), _side_log(rec), 30)
    assert vs["pgolf_ms_per_step"]["from_step"] == vs["record_ms_per_step"]["from_step"] == 5
    assert vs["pgolf_ms_per_step"]["median"] == 300.0 and vs["record_ms_per_step"]["median"] == 400.0
    assert vs["tokens_per_s_ratio_median"] == pytest.approx(400.0 / 300.0)
    assert vs["tokens_per_s_ratio"] == pytest.approx((rec[30] - rec[5]) / (pg[30] - pg[5]))


def test_bench_vs_a_record_script_times_hooks_and_compares_logs(tmp_path, tiny_data):
    (tmp_path / "sleepy.py").write_text(SLEEPY_PLUGIN)
    (tmp_path / "train_gpt.py").write_text(FAKE_RECORD)
    res = bench(tmp_path, tiny_data, "--steps", "8", "--log-every", "2", "--profile-steps", "0", "--val-tokens", "4096",
                "--plugin-file", str(tmp_path / "sleepy.py"), "--plugins", "sleepy",
                "--vs", str(tmp_path / "train_gpt.py"), "--profile", "generic")
    pg, vs = res["pgolf"], res["vs"]
    assert pg["hook_ms_by_name"]["pg_after_step"] >= 20.0  # 20 ms of sleep per step, all 8 steps
    assert pg["hook_ms_per_step"] >= 20.0 and pg["ms_per_step_median"] >= 20.0
    # pgolf's ms/step from its own train.log, independently: steps 2..8 (the first is warm-up at 8 steps)
    log = (tmp_path / "b" / "runs" / "pgolf" / "train.log").read_text()
    times = {int(s): float(t) for s, t in re.findall(r"^step:(\d+)/8 train_loss:\S+ train_time:(\d+)ms", log, re.M)}
    pgolf_ms = (times[8] - times[2]) / 6
    assert vs["pgolf_ms_per_step"]["mean"] == pytest.approx(pgolf_ms)
    assert vs["record_ms_per_step"]["mean"] == pytest.approx(50.0)
    assert vs["tokens_per_s_ratio"] == pytest.approx(50.0 / pgolf_ms)
    shared = [s for s in sorted(times) if s >= 2]  # both log each of their first ten steps
    per_step = [(times[b] - times[a]) / (b - a) for a, b in itertools.pairwise(shared) for _ in range(b - a)]
    assert vs["tokens_per_s_ratio_median"] == pytest.approx(50.0 / statistics.median(per_step))
    # the record's MFU: the same FLOPs per step (same model and tokens) over its 50 ms steps
    assert vs["mfu"]["record"] == pytest.approx(pg["mfu"] * pgolf_ms / 50.0)
    from pgolf.bench import table

    assert f"{100 * pg['mfu']:.1f} % | {100 * vs['mfu']['record']:.1f} %" in table(res)
    assert sorted(int(s) for s in vs["train_loss"]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert vs["train_loss"]["4"]["record"] == pytest.approx(5.0)
    assert vs["last_val_bpb"]["record"] == pytest.approx(1.2345)
    assert res["record"]["log"]["artifact"] == {"int6+zstd": 12345}
    env = json.loads((tmp_path / "b" / "record_env.json").read_text())
    assert env["ITERATIONS"] == "8" and env["NUM_LAYERS"] == "2" and env["EVAL_SEQ_LEN"] == "64"
    val = tmp_path / "b" / "data" / "datasets" / "fineweb10B_sp320" / "fineweb_val_000000.bin"
    assert val.stat().st_size == 256 * 4 + (4096 + 1) * 2  # the one validation prefix both sides read


def test_bench_finish_exports_the_pgolf_side_and_compares_artifact_bytes(tmp_path, tiny_data):
    """--finish: the pgolf side runs export + final eval; its artifact bytes are the file it wrote, compared with
    the record's last `Serialized model` line; without --finish there is no artifact."""
    (tmp_path / "train_gpt.py").write_text(FAKE_RECORD + 'print("final_int6_roundtrip val_loss:3.1 val_bpb:1.3000")\n')
    res = bench(tmp_path, tiny_data, "--steps", "4", "--profile-steps", "0", "--val-tokens", "4096", "--finish",
                "--vs", str(tmp_path / "train_gpt.py"), "--profile", "generic")
    pg, vs = res["pgolf"], res["vs"]
    artifact = (tmp_path / "b" / "runs" / "pgolf" / "final_model.ptz").stat().st_size
    assert pg["final"]["model_bytes"] == artifact == vs["artifact_bytes"]["pgolf"]
    assert vs["artifact_bytes"]["record"] == 12345 and vs["artifact_bytes_ratio"] == pytest.approx(artifact / 12345)
    assert vs["final_val_bpb"]["pgolf"] == pytest.approx(pg["final"]["val_bpb"], abs=5e-5)
    assert vs["final_val_bpb"]["record"] == pytest.approx(1.3)
    res = bench(tmp_path, tiny_data, "--steps", "4", "--profile-steps", "0", "--val-tokens", "4096", "--side", "pgolf")
    assert res["pgolf"]["final"] is None and res["pgolf"]["log"]["artifact"] is None


def test_final_round_trip_lines_parse():
    from pgolf.records import parse_log

    lines = {"final_int8_zlib_roundtrip val_loss:1.9931 val_bpb:1.1804 eval_time:2215ms\n"
             "final_int8_zlib_roundtrip_exact val_loss:1.99308832 val_bpb:1.18041917\n": 1.1804,
             "diagnostic pre-quantization post-ema val_loss:2.3284 val_bpb:1.0639 eval_time:6718ms\n"
             "diagnostic quantized val_loss:2.34727563 val_bpb:1.07254371 eval_time:49995ms\n"
             "quantized_ttt_phased val_loss:2.31944212 val_bpb:1.05989454 eval_time:508785ms\n": 1.07254371,
             "quantized val_loss:2.3 val_bpb:1.0701 eval_time:9ms\n": 1.0701,
             "final_int6_roundtrip val_loss:1.9225 val_bpb:1.1386 eval_time:6400ms\n"  # PR #609: its sliding score
             "final_int6_roundtrip_exact val_loss:1.92252643 val_bpb:1.13862844\n"
             "final_int6_sliding_window val_loss:1.8827 val_bpb:1.1150 stride:64 eval_time:77437ms\n"
             "final_int6_sliding_window_exact val_loss:1.88268406 val_bpb:1.11503450\n"
             "final_int8_zlib_roundtrip_exact val_loss:1.88268406 val_bpb:1.11503450\n": 1.1150,
             "quantized val_loss:2.84065044 val_bpb:1.09970431 eval_time:25515ms\n"  # PR #1493
             "quantized_sliding_window val_loss:2.79714850 val_bpb:1.08286335 eval_time:120961ms\n"
             "quantized_ttt val_loss:2.79180191 val_bpb:1.08079352 eval_time:366525ms\n": 1.08286335,
             "quantized_ttt_phased val_loss:2.31944212 val_bpb:1.05989454\n": None}
    for text, want in lines.items():
        assert parse_log(text, 1)["final_val_bpb"] == (None if want is None else pytest.approx(want)), text


def test_record_log_formats_parse_to_the_same_times():
    from pgolf.records import ms_per_step_from_log, parse_log

    rate = 786432 * 1000 // 600  # PR #1493 logs the cumulative tokens/s: 600 ms per 786,432-token step
    pr1493 = "\n".join(f"{s}/150 train_loss: {7 - s / 100:.4f} train_time: 0.0m tok/s: {rate}" for s in (1, 2, 10, 20))
    steps = parse_log(pr1493 + "\npeak memory allocated: 22000 MiB reserved: 23000 MiB\n", 786432)
    assert steps["steps"][20][0] == pytest.approx(6.8)
    assert steps["steps"][20][1] == pytest.approx(12000.0, rel=1e-5)
    assert steps["peak_memory_bytes"] == 22000 * 2**20
    switch = "layer_loop:enabled step:53 frac:0.353 encoder:[0, 1]\nmode:recurrence on step:53 frac:0.353\n"
    assert parse_log(switch, 1)["mode_switches"] == {"layer_loop": 53, "recurrence": 53}
    pr315 = "\n".join(f"step:{s}/150 train_loss:6.0 train_time:{600 * s}ms step_avg:600.00ms" for s in (1, 2, 10, 20))
    assert ms_per_step_from_log(parse_log(pr315, 786432)["steps"], 2)["mean"] == pytest.approx(600.0)
    assert ms_per_step_from_log(steps["steps"], 2)["mean"] == pytest.approx(600.0, rel=1e-4)


def test_ms_per_step_by_phase_leaves_out_the_window_holding_the_switch():
    """400 ms/step, a 5 s stall in the step-53 switch's window, 650 ms/step after: each phase's own rate."""
    from pgolf.bench import phases_row
    from pgolf.records import ms_per_step_by_phase

    t, steps = 0.0, {}
    for s in range(1, 151):
        t += (400.0 if s < 53 else 650.0) + (5000.0 if s == 53 else 0.0)
        if s <= 10 or s % 10 == 0:
            steps[s] = (1.0, t)
    phases = ms_per_step_by_phase(steps, 15, {"layer_loop": 53, "recurrence": 53})
    assert [(p["phase"], p["from_step"], p["to_step"]) for p in phases] == [
        ("base", 20, 50), ("layer_loop+recurrence", 60, 150)]
    assert [p["ms"] for p in phases] == [pytest.approx(400.0), pytest.approx(650.0)]
    assert ms_per_step_by_phase(steps, 15, {})[0]["ms"] > 650.0 * 0.6  # one phase: the stall and both rates
    late = ms_per_step_by_phase(steps, 15, {"late_qat": 148})  # no logged step strictly inside the last phase
    assert late[1]["ms"] is None
    # late's base, steps 20-140: 32 steps of 400, step 53 of 650 + 5,000, 87 of 650 = 75,000 ms over 120 steps
    assert phases_row({"pgolf": phases, "record": late}) == "base 400.0 | 625.0; layer_loop+recurrence 650.0 | —"
    early = ms_per_step_by_phase(steps, 15, {"late_qat": 12})  # switched during the skipped warm-up steps
    assert [(p["phase"], p["from_step"], p["to_step"]) for p in early] == [("late_qat", 20, 150)]


RECORDS = ("pr315", "pr534", "pr609", "pr1493", "pr1855")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "record_logs"


def _published_script(name: str, tmp_path: Path) -> Path:
    """The record's train_gpt.py as published (bytes), written by `pgolf bench --extract-record`."""
    if not (MIRROR / "HEAD").exists():
        pytest.skip(f"no parameter-golf git mirror at {MIRROR}")
    out = tmp_path / f"{name}_train_gpt.py"
    assert main(["bench", "--extract-record", str(out), "--profile", name, "--mirror", str(MIRROR)]) == 0
    return out


@pytest.mark.parametrize("name", RECORDS)
def test_profile_is_found_by_the_published_scripts_sha256(name, tmp_path):
    from pgolf.records import PROFILES, profile_for

    script = _published_script(name, tmp_path)
    assert hashlib.sha256(script.read_bytes()).hexdigest() == PROFILES[name].sha256
    assert profile_for(script, None).name == name
    script.write_bytes(script.read_bytes() + b"\n")  # one byte more: not the published script
    with pytest.raises(ValueError, match=r"not a known record script .*pass --profile NAME"):
        profile_for(script, None)


@pytest.mark.parametrize("name", RECORDS)
def test_profile_table_accounts_for_exactly_the_names_its_record_reads(name):
    from record_tables import names_read, record_source

    from pgolf.records import BENCH_NAMES, PROFILES

    profile = PROFILES[name]
    read = names_read(record_source(profile))
    assert read <= profile.names(), f"read by the record, not in its table: {sorted(read - profile.names())}"
    passed = {n for n in profile.names() if n.isupper()} - set(BENCH_NAMES)
    assert passed <= read, f"in the table, never read by the record: {sorted(passed - read)}"
    assert not set(profile.settings) & (set(profile.plugins) | set(profile.fixed))  # one row per name


def _expected(raw: dict, forced: dict, ref):
    """A table reference resolved on the recipe's TOML text (not the resolved config): the first candidate
    that is a core key, an enabled plugin's key, or a literal; None when the TOML leaves it at the default."""
    for cand in ref if isinstance(ref, tuple) else (ref,):
        if not (isinstance(cand, str) and re.fullmatch(r"[a-z_]\w*\.[a-z_]\w*", cand)):
            return cand
        section, key = cand.split(".")
        if section == "core":
            return forced.get(key, raw["core"].get(key))
        if section in raw["plugins"]:
            return raw.get(section, {}).get(key)
    return None


def _commented(recipe: Path) -> list[tuple[str, str, object]]:
    """(record name, section.key, value) of every recipe line `key = value  # NAME …`: the recipe's own notes of
    which record variable each setting carries (independent of pgolf/records.py's tables)."""
    out, section = [], "core"
    for line in recipe.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]\s*", line):
            section = m.group(1)
        elif m := re.fullmatch(r"(\w+)\s*=\s*(.+?)\s+#\s*([A-Z][A-Z0-9_]+)(?=\s|$)(?!=).*", line):
            out.append((m.group(3), f"{section}.{m.group(1)}", tomllib.loads(f"v = {m.group(2)}")["v"]))
    return out


def _same(env_value: str, want) -> bool:
    if isinstance(want, bool):
        return env_value == ("1" if want else "0")
    if isinstance(want, (int, float)):
        return float(env_value) == float(want)
    return env_value == str(want)


@pytest.mark.parametrize("name", ["pr534", "pr609", "pr1855"])
def test_bench_dry_run_gives_the_record_the_recipes_values_under_its_names(name, tmp_path, tiny_data,
                                                                          tiny_caseops_data):
    from core.config import load_recipe
    from pgolf.records import PROFILES

    profile = PROFILES[name]
    script = _published_script(name, tmp_path)
    data = tiny_caseops_data[0] if name == "pr1855" else tiny_data
    out = tmp_path / "b"
    assert main(["bench", "--recipe", name, "--data", str(data), "--set", "core.vocab_size=320", "--out", str(out),
                 "--vs", str(script), "--side", "record", "--dry-run", "--steps", "150", "--seed", "7",
                 "--val-tokens", "4096"]) == 0
    assert not (out / "record.log").exists()  # not run
    env = json.loads((out / "record_env.json").read_text())
    raw = load_recipe(Path(__file__).resolve().parents[1] / profile.recipe)
    # the bench's own: its steps, seed and data, no wall clock, no mid-run validation
    forced = {"iterations": 150, "seed": 7, "max_wallclock_seconds": 0, "val_loss_every": 0, "train_log_every": 10,
              "vocab_size": 320}
    if raw["core"].get("warmdown_iters", 0) > 0:
        forced["warmdown_iters"] = 60  # 0.4 x 150: the core's iteration warmdown scaled to the bench's length
    compared = 0
    for var, ref in profile.settings.items():
        want = _expected(raw, forced, ref)
        if want is not None:
            assert _same(env[var], want), f"{name} {var}={env[var]}, the recipe's {ref}: {want}"
            compared += 1
    assert compared >= len(profile.settings) - 6, compared  # a few are left at their defaults by the TOML
    noted = [(var, key, v) for var, key, v in _commented(Path(__file__).resolve().parents[1] / profile.recipe)
             if var in env and not (key.startswith("core.") and key[5:] in forced)]
    assert len(noted) >= 25, noted
    for var, key, want in noted:  # the recipe's notes agree with what the record is given
        assert _same(env[var], want), f"{name} {var}={env[var]}, the recipe notes {key} = {want} as {var}"
    assert (env["ITERATIONS"], env["SEED"], env["VOCAB_SIZE"]) == ("150", "7", "320")
    assert float(env["MAX_WALLCLOCK_SECONDS"]) == 0 and env["TRAIN_SEQ_LEN"] == "2048"
    assert env["TRAIN_BATCH_TOKENS"] == str(raw["core"]["train_batch_tokens"]) == "786432"
    assert env["WARMUP_STEPS"] == "20"
    assert all(env[k] == v for k, v in profile.fixed.items() if k not in profile.skip_eval)
    assert all(env[k] == v for k, v in profile.skip_eval.items())  # the bench skips the long evaluations
    ds = Path(env["DATA_PATH"])
    assert ds.parent.parent == out / "data" and sorted(ds.glob("fineweb_train_*.bin"))
    assert Path(env["TOKENIZER_PATH"]).resolve().is_file()
    val = ds / "fineweb_val_000000.bin"
    n_val = (val.stat().st_size - 1024) // 2
    assert n_val <= 4096 + 1
    if name == "pr1855":  # CaseOps: the byte sidecar's prefix, token for token
        assert env["CASEOPS_ENABLED"] == "1" and env["TTT_ENABLED"] == "0" and env["COMPRESSOR"] == "brotli"
        sidecar = ds / "fineweb_val_bytes_000000.bin"
        assert sidecar.stat().st_size == val.stat().st_size
        from core.data import read_shard

        src = sorted(Path(data).glob("fineweb_val_bytes_*.bin"))
        want = np.concatenate([read_shard(f, None).numpy() for f in src])[:n_val]
        assert np.array_equal(read_shard(sidecar, None).numpy(), want)


def test_bench_refuses_caseops_record_on_data_without_a_sidecar(tmp_path, tiny_data, capsys):
    script = _published_script("pr1855", tmp_path)
    assert main(["bench", "--recipe", "pr1855", "--data", str(tiny_data), "--set", "core.vocab_size=320", "--out",
                 str(tmp_path / "b"), "--vs", str(script), "--side", "record", "--dry-run", "--val-tokens",
                 "4096"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"\(pr1855\) reads CaseOps data: .* has no byte sidecar "
                                       r"fineweb_val_bytes_\*\.bin", err[0]), err


LOG_EXPECT = {  # from the fixture lines, by hand
    "pr534": dict(steps={1: (6.9328, 150.0), 2: (8.8303, 263.0), 200: (2.4242, 26353.0), 400: (2.4424, 56529.0)},
                  last_val_bpb=1.1770, peak_memory_bytes=20590 * 2**20, artifact={"int8+zstd": 15896909},
                  total_submission_bytes=15949473, mode_switches={"late_qat": 4070}),
    "pr609": dict(steps={1: (6.9302, 127.0), 2: (8.6985, 158.0), 500: (2.3868, 42978.0), 1000: (2.2558, 86080.0)},
                  last_val_bpb=1.1363, peak_memory_bytes=22850 * 2**20, artifact={"int6+lzma": 15825516},
                  total_submission_bytes=15933191, mode_switches={"swa": 6250, "late_qat": 6407}),
    # cumulative tok/s: time = step x 786,432 / rate (8 GPUs' tokens per step)
    "pr1855": dict(steps={s: (loss, 1000.0 * s * 786432 / rate) for s, loss, rate in
                          ((1, 9.0087, 17921784), (2, 12.8281, 4839117), (500, 2.5615, 8217810),
                           (1000, 2.8022, 8195099))},
                   last_val_bpb=1.0756, peak_memory_bytes=41717 * 2**20, artifact={"quantized+pergroup": 15865260},
                   total_submission_bytes=15897259, mode_switches={"layer_loop": 2178}),
}


@pytest.mark.parametrize("name", sorted(LOG_EXPECT))
def test_record_log_lines_parse(name):
    from pgolf.records import parse_log

    got = parse_log((FIXTURES / f"{name}.log").read_text(), 786432)
    want = LOG_EXPECT[name]
    assert got["steps"].keys() == want["steps"].keys()
    for s, (loss, ms) in want["steps"].items():
        assert got["steps"][s] == (pytest.approx(loss), pytest.approx(ms))
    for key in ("last_val_bpb", "peak_memory_bytes", "artifact", "total_submission_bytes", "mode_switches"):
        assert got[key] == want[key], key


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_varlen_stand_in_attends_within_each_packed_document():
    """The shim's flash_attn_varlen_func (PR #1855 trains on packed documents) against SDPA run document by
    document (causal inside each segment; segments cut at 128 tokens, cu_seqlens padded with N as the record's)."""
    import types
    from itertools import pairwise

    import torch
    import torch.nn.functional as F

    from pgolf.bench import SHIM

    shim = types.ModuleType("shim")
    exec(compile(SHIM, "flash_attn_interface.py", "exec"), shim.__dict__)
    gen = torch.Generator().manual_seed(0)
    n, heads, kv_heads, dim = 640, 4, 2, 16
    starts = [0, 100, 228, 300, 301, 517]  # 100..300 cut at 128 (max_seqlen), a one-token document at 300
    cu = torch.full((64,), n, dtype=torch.int32)
    cu[: len(starts) + 1] = torch.tensor([*starts, n])
    q, k, v = (torch.randn(n, h, dim, generator=gen) for h in (heads, kv_heads, kv_heads))
    with torch.no_grad():
        got = shim.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=128,
                                          max_seqlen_k=128, causal=True, window_size=(-1, -1))
    want = torch.cat([F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                     v[a:b].transpose(0, 1), is_causal=True, enable_gqa=True
                                                     ).transpose(0, 1) for a, b in pairwise([*starts, n])])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    whole = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                           enable_gqa=True).transpose(0, 1)
    assert not torch.allclose(got[100:], whole[100:], atol=1e-3)  # not plain causal attention over the pack


def test_attention_flops_count_grouped_query_heads_as_the_query_heads():
    """GQA: 8 query heads over 4 K/V heads is 8 heads of T×T attention (torch's own formula asserts on it)."""
    import torch

    from pgolf.bench import attention_flop_mapping

    aten = torch.ops.aten
    mapping = attention_flop_mapping()
    b, t, d = 2, 128, 64
    q, kv = torch.Size((b, 8, t, d)), torch.Size((b, 4, t, d))
    fwd = 4 * b * 8 * t * t * d
    for op in ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention"):
        assert mapping[getattr(aten, op)](q, kv, kv) == fwd
    assert mapping[aten._scaled_dot_product_cudnn_attention_backward](q, q, kv, kv) == 2 * fwd


PROFILED_RECORD = """
import os
import torch
w = torch.nn.Parameter(torch.ones(4, 4))
b = torch.nn.Parameter(torch.zeros(4))
opts = [torch.optim.SGD([w], lr=0.01), torch.optim.Adam([b], lr=0.01)]
states = [o.state_dict() for o in opts]
n = int(os.environ["ITERATIONS"])

def step(marker):
    marker(torch.ones(3), 0)  # the op that tells the profiled steps apart
    ((torch.ones(2, 4) @ w + b) ** 2).sum().backward()
    for o in opts:
        o.step()
        o.zero_grad()

for _ in range(7):  # a compile warm-up (past the window's start: that window is dropped), then the restore
    step(torch.cumprod)
for o, s in zip(opts, states):
    o.load_state_dict(s)
for s in range(1, n + 1):
    step(torch.cumsum if s > n - 2 else torch.cumprod)
    print(f"step:{s}/{n} train_loss:{6.0 - 0.25 * s:.4f} train_time:{50 * s + (950 * (s - 6) if s > 6 else 0)}ms")
"""


def test_record_profile_covers_exactly_its_last_training_steps(tmp_path):
    """The bench's sitecustomize profiles the record's last N training steps with pgolf.step_profile: counted by its
    first optimizer's steps after the last optimizer restore (a window opened in the warm-up is dropped), so the op
    run only in the last two steps is seen once a step and the op of every other step never; `read_record_profile`
    and `compare` then leave the profiled steps (logged 1,000 ms slower here) out of both sides' ms/step."""
    from pgolf.bench import REPO, SITE, compare, read_record_profile

    (tmp_path / "sitecustomize.py").write_text(SITE)
    out = tmp_path / "profile.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "ITERATIONS": "8", "PGOLF_BENCH_PROFILE_STEPS": "2",
           "PGOLF_BENCH_ITERATIONS": "8", "PGOLF_BENCH_PROFILE_OUT": str(out),
           "PGOLF_BENCH_STEP_PROFILE_PY": str(REPO / "pgolf" / "step_profile.py")}
    proc = subprocess.run([sys.executable, "-c", PROFILED_RECORD], env=env, capture_output=True, text=True, check=True)
    prof = read_record_profile(out)
    assert prof["steps"] == 2 and prof["restores"] == 2 and prof["timed_from_step"] == 6
    calls = prof["calls_per_step"]
    assert calls.get("aten::cumsum") == 1 and "aten::cumprod" not in calls
    assert calls["aten::mm"] == 2  # a step: the forward matmul and the weight gradient's
    from pgolf.records import parse_log

    rec_log = parse_log(proc.stdout, 8192)
    log = {"steps": {s: (6.0 - 0.25 * s, 50.0 * s) for s in range(1, 9)}, "peak_memory_bytes": None,
           "mode_switches": None, "last_val_bpb": None}
    side = {"log": log, "peak_memory": {"bytes": None, "kind": "x"}, "model_params": None}
    res = compare(side, {**side, "log": rec_log, "device_profile": prof}, 8)
    assert res["record_ms_per_step"]["mean"] == pytest.approx(50.0) and res["record_ms_per_step"]["to_step"] == 5
    assert res["pgolf_ms_per_step"]["to_step"] == 5  # both sides over the same steps
    assert compare(side, {**side, "log": rec_log}, 8)["record_ms_per_step"]["mean"] > 50.0  # not left out: slower
    from pgolf.bench import table

    rec = {"profile": "generic", "attention": "cudnn", "wall_s": 1.0, "log": {"artifact": None},
           "device_profile": {**prof, "device_ms_by_kind": {"matmul": 1.5}}}  # CPU: no CUDA kernels to class
    assert "record device matmul ms/step (its last 2 steps, profiled)  1.50" in table({"record": rec})
    rec["device_profile"]["restores"] = 0  # a script that never restores: counted from its first step, said so
    assert "no optimizer restore seen" in table({"record": rec})


def test_record_side_sdpa_kernels_follow_pgolf_whatever_the_record_enables(tmp_path):
    """PR #315 calls enable_cudnn_sdp(False) / enable_flash_sdp(True); under the bench's sitecustomize only the
    kernel pgolf picked stays on."""
    from pgolf.bench import SITE

    (tmp_path / "sitecustomize.py").write_text(SITE)
    code = ("from torch.backends.cuda import enable_cudnn_sdp, enable_flash_sdp, cudnn_sdp_enabled, flash_sdp_enabled\n"
            "enable_cudnn_sdp(False); enable_flash_sdp(True)\n"
            "print(cudnn_sdp_enabled(), flash_sdp_enabled())")
    for choice, want in (("cudnn", "True False"), ("flash", "False True")):
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "PGOLF_BENCH_SDPA": choice}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split(), (choice, out.stdout, out.stderr)


@pytest.mark.parametrize("name", RECORDS)
def test_finish_leaves_out_the_plugins_of_the_evaluations_the_record_skips(name, tmp_path):
    """--finish --vs: the pgolf side drops the profile's skip_plugins (the record's skip_eval turns those
    evaluations/codecs off); the rest of the recipe still resolves; --record-eval or no --finish: nothing dropped."""
    import argparse

    from pgolf.bench import finish_drops
    from pgolf.cli import build_parser, load_config
    from pgolf.records import PROFILES

    profile = PROFILES[name]
    script = tmp_path / "train_gpt.py"
    script.write_text("")
    argv = ["bench", "--recipe", f"recipes/{name}.toml", "--vs", str(script), "--profile", name]
    args = build_parser().parse_args([*argv, "--finish"])
    cfg, _ = load_config(args)
    drop = finish_drops(args, cfg.plugins)
    assert set(drop) == set(profile.skip_plugins) <= set(cfg.plugins)
    assert not profile.skip_plugins or profile.skip_eval  # only records with skip knobs drop anything
    assert finish_drops(build_parser().parse_args(argv), cfg.plugins) == []
    assert finish_drops(build_parser().parse_args([*argv, "--finish", "--record-eval"]), cfg.plugins) == []
    if drop:
        kept = ",".join(p for p in cfg.plugins if p not in drop)
        pg_cfg, _ = load_config(argparse.Namespace(**{**vars(args), "plugins": kept}))
        assert not set(drop) & set(pg_cfg.plugins) and len(pg_cfg.plugins) == len(cfg.plugins) - len(drop)
    expected = {"pr1855": {"phased_ttt", "compress_pergroup"}, "pr1493": {"score_first_ttt"}}
    assert set(drop) == expected.get(name, set())


def test_parameter_gap_to_pr1855_is_its_dead_lane_lambdas():
    """The H200 bench's logs (pgolf `model_params:35945623`, the record's 35945671): the 48 the record has more
    are what its profile names dead at the recipe's shape (6 lambdas per block before PARALLEL_START_LAYER 8,
    its forward never reads them: tests/test_record_init.py); any other gap is shown as unexplained."""
    from core.config import resolve
    from core.registry import Registry
    from pgolf.bench import model_params, params_row
    from pgolf.records import PROFILES, parse_log

    registry, recipe = Registry(), Path(__file__).resolve().parents[1] / "recipes" / "pr1855.toml"
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=recipe, check_plugins=registry.check)
    dead = list(PROFILES["pr1855"].dead_params(cfg))  # as record.json gives it back
    assert dead[0] == 48 and "blocks 0-7" in dead[1]
    pg = {"log": parse_log("seed:1337\nmodel_params:35945623\n", 1)}
    got = model_params(pg, {"log": parse_log("model_params:35945671\n", 1), "dead_params": dead})
    assert (got["pgolf"], got["record"], got["record_dead"], got["unexplained"]) == (35945623, 35945671, 48, 0)
    assert params_row(got) == f"35,945,623 | 35,945,671 (record +48: {dead[1]})"
    other = model_params(pg, {"log": parse_log("model_params:35945672\n", 1), "dead_params": dead})
    assert other["unexplained"] == 1 and params_row(other).endswith("; UNEXPLAINED +1")
    cfg6 = resolve(plugin_config_classes=registry.config_classes(), recipe=recipe, sets=["parallel_lanes.start=6"],
                   check_plugins=registry.check)
    assert PROFILES["pr1855"].dead_params(cfg6)[0] == 36


class _SyncingSteps:
    """Emits torch's sync-debug warning twice in each step body, once at train start (outside the steps) and an
    unrelated warning per step (passed on, not counted)."""

    @hookimpl
    def pg_train_start(self, run):
        warnings.warn("called a synchronizing CUDA operation (train start)", UserWarning, stacklevel=1)

    @hookimpl
    def pg_before_step(self, run, step, clock):
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)


def test_sync_watch_counts_sync_warnings_in_step_bodies_only(tiny_sets):
    """The bench's host-sync count (CUDA's sync debug mode, here a fake one emitting torch's warning): 2 per step
    body; the one at train start is outside; the debug mode is on only inside the steps and off at the end."""
    import warnings

    import core.train as trainer
    from core.config import resolve
    from core.registry import Registry
    from pgolf.bench import SyncWatch, sync_cell

    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), plugins=[], check_plugins=reg.check,
                  sets=[*tiny_sets, "core.iterations=4", "core.train_log_every=1"])
    run = trainer.setup(cfg, reg, make_dir=False)
    run.pm.register(_SyncingSteps(), name="syncing")
    modes: list = []
    watch, make_clock = SyncWatch(modes.append), trainer.make_clock
    with warnings.catch_warnings(record=True) as passed:
        warnings.simplefilter("always")
        loop = watch.watch(run, trainer.timed_loop, trainer.Stepper(run), trainer.Budget.of(run))
    assert loop.steps == 4 and watch.per_step == [2, 2, 2, 2]
    assert modes == ["warn", 0] * 4 and trainer.make_clock is make_clock
    assert [str(w.message) for w in passed].count("something else") == 4
    assert sum("train start" in str(w.message) for w in passed) == 1  # outside the steps: passed on
    summary = watch.summary()
    assert summary["host_syncs_per_step"] == 2.0 and summary["host_sync_steps"] == 4
    (a, n), (b, m) = summary["host_sync_sites"].items()  # the two warning lines of pg_before_step
    assert a.startswith("test_bench.py:") and b.startswith("test_bench.py:") and a != b and n == m == 4
    assert sync_cell(summary) == f"2.00 ({a} ×4, {b} ×4)"
    assert sync_cell({"host_syncs_per_step": None}) == "— (CUDA only)"


def test_kernel_kind_classes_the_kernels_a_profile_shows():
    from pgolf.bench import kernel_kind

    names = {"cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4": "attention",
             "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT": "matmul",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
             "ncclDevKernel_AllReduce_Sum_bf16_RING_LL": "communication",
             "Memcpy DtoD (Device -> Device)": "copy",
             "triton_poi_fused__to_copy__unsafe_view_leaky_relu_pow_15": "fused (triton)",
             "_linear_leaky_relu2_kernel": "matmul",  # fused_mlp's Triton GEMM (130 ms of PR #1493's step)
             "triton_per_fused__scaled_dot_product_cudnn_attention_backward__to_copy": "fused (triton)",
             "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "other",
             "aten::mm": "matmul", "aten::bmm": "matmul",  # host operators: a CPU profile's (host-time) classes
             "aten::mul": "other"}
    assert {n: kernel_kind(n) for n in names} == names


@pytest.mark.parametrize("record", ["pr1493", "pr315"])
def test_the_gpu_pair_script_runs_the_recipe_list_with_the_fused_set(record):
    """benchmarks/gpu/pair.sh (the README's timing pairs) trains the recipe's own plugin list with fused_mlp in
    leaky_relu2's place, plus auto_micro_batch, fused_ce and inductor_options, and nothing else; a record it has no
    data for is a one-line error."""
    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu" / "pair.sh"
    listed = subprocess.run(["bash", str(script), record, "plugins"], capture_output=True, text=True, check=True)
    recipe = tomllib.loads((root / "recipes" / f"{record}.toml").read_text())["plugins"]
    expected = [("fused_mlp" if p == "leaky_relu2" else p) for p in recipe]
    assert listed.stdout.strip().split(",") == [*expected, "auto_micro_batch", "fused_ce", "inductor_options"]
    bad = subprocess.run(["bash", str(script), "pr9999", "pgolf"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "pair.sh: no timing pair for pr9999 (expected pr1493 or pr315)"
