"""`pgolf bench` on CPU at tiny size: FLOPs/token against a hand count, the hook-time monitor, `--vs` against a
fake record script (ratios and losses from its log), the record log formats, and the record profiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

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
            *[a for s in SETS for a in ("--set", s)], *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


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
    assert pg["ms_per_step_median"] == pytest.approx(pg["step_ms"][2])
    assert pg["tokens_per_s"] == pytest.approx(1024 / pg["ms_per_step_median"] * 1000)
    assert 0 < pg["mfu"] < 1 and pg["matmul_peak"]["dtype"] == "float32"
    assert pg["peak_memory"]["bytes"] > 0 and pg["warmup_s"] >= 0
    assert set(pg["profile"]["phases_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert pg["profile"]["phases_ms"]["forward"] > 0 and pg["profile"]["phases_ms"]["backward"] > 0
    assert sorted(int(s) for s in pg["log"]["steps"]) == [1, 2, 3]  # --smoke logs every step


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
    assert sorted(int(s) for s in vs["train_loss"]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert vs["train_loss"]["4"]["record"] == pytest.approx(5.0)
    assert vs["last_val_bpb"]["record"] == pytest.approx(1.2345)
    assert res["record"]["log"]["artifact"] == {"int6+zstd": 12345}
    env = json.loads((tmp_path / "b" / "record_env.json").read_text())
    assert env["ITERATIONS"] == "8" and env["NUM_LAYERS"] == "2" and env["EVAL_SEQ_LEN"] == "64"
    val = tmp_path / "b" / "data" / "datasets" / "fineweb10B_sp320" / "fineweb_val_000000.bin"
    assert val.stat().st_size == 256 * 4 + (4096 + 1) * 2  # the one validation prefix both sides read


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


def _mirror_file(rel: str) -> str:
    if not (MIRROR / "HEAD").exists():
        pytest.skip(f"no parameter-golf git mirror at {MIRROR}")
    return subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{rel}"], capture_output=True, text=True,
                          check=True).stdout


def _recipe_env(name: str, core: bool = True) -> dict[str, str]:
    """The record's environment for its recipe (the core settings under their names + the profile's)."""
    from core.config import resolve
    from core.registry import Registry
    from pgolf.records import PROFILES, core_env

    reg = Registry()
    profile = PROFILES[name]
    cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=profile.recipe, env={},
                  check_plugins=reg.check, check_settings=reg.check_settings)
    return {**(core_env(cfg, 2048) if core else {}), **profile.env(cfg, False)}


@pytest.mark.parametrize("name", ["pr315", "pr1493"])
def test_profile_sets_only_names_its_record_reads(name):
    from pgolf.records import PROFILES, decoded_source

    src = decoded_source(_mirror_file(f"{PROFILES[name].folder}/train_gpt.py"))
    read = set(re.findall(r"""os\.environ\.get\(\s*["']([A-Z0-9_]+)["']""", src))
    profile_keys = set(_recipe_env(name, core=False))
    assert profile_keys and profile_keys <= read, sorted(profile_keys - read)


def test_pr1493_recipe_maps_to_the_hyperparameters_its_record_logged():
    from pgolf.records import PROFILES

    log = _mirror_file(f"{PROFILES['pr1493'].folder}/train_seed42.log")
    logged = {k.upper(): v for k, v in re.findall(r"^  (\w+): (.*)$", log, re.M)}
    env = _recipe_env("pr1493")
    compared = 0
    for key, value in env.items():
        if key not in logged or key == "SEED":  # the logs are seeds 42/314/999; the recipe's default is 1337
            continue
        want = logged[key]
        same = (want == "True") == (value == "1") if want in ("True", "False") else float(want) == float(value) \
            if re.fullmatch(r"[-\d.e+]+", want) else want == value
        assert same, (key, value, want)
        compared += 1
    assert compared >= 60


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
