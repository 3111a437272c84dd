"""benchmarks/kernel_profile.py: profiles exactly the steps it names, of any script, through the optimizer hook."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim import optimizer as optimizer_module

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "kernel_profile.py"
spec = importlib.util.spec_from_file_location("kernel_profile", SCRIPT)
kernel_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel_profile)

TRAIN = """import sys, torch
w = torch.nn.Parameter(torch.randn(32, 32))
opt = torch.optim.SGD([w], lr=0.1)
other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
for step in range(int(sys.argv[1])):
    x = torch.randn(16, 32)
    for _ in range(1 if step < 3 else 5):  # steps 4+ do five matmuls: the profiled steps must be those
        x = x @ w
    x.sum().backward()
    opt.step(); other.step(); opt.zero_grad()
"""


def profile_script(tmp_path, monkeypatch, source: str, flags: list[str], script_args: list[str]) -> None:
    """kernel_profile over `source` as train.py, in this process (its global optimizer hook and any restore wrapper
    removed afterwards)."""
    script = tmp_path / "train.py"
    script.write_text(source)
    monkeypatch.setattr("sys.argv", ["x"])
    hooks = dict(optimizer_module._global_optimizer_post_hooks)
    load_state_dict = torch.optim.Optimizer.load_state_dict
    try:
        kernel_profile.main([*flags, "--out", str(tmp_path / "p.json"), "--", str(script), *script_args])
    finally:
        optimizer_module._global_optimizer_post_hooks.clear()
        optimizer_module._global_optimizer_post_hooks.update(hooks)
        torch.optim.Optimizer.load_state_dict = load_state_dict


def profile_train_script(tmp_path, monkeypatch, *flags: str) -> None:
    """kernel_profile over TRAIN's 8 steps, steps 4-5 profiled."""
    profile_script(tmp_path, monkeypatch, TRAIN, ["--skip", "3", "--steps", "2", *flags], ["8"])


def test_profiles_the_named_steps_of_a_script(tmp_path, monkeypatch):
    profile_train_script(tmp_path, monkeypatch)
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["steps"] == 2 and result["after_steps"] == 3
    # steps 4 and 5: five forward matmuls, five weight-gradient and four input-gradient ones (steps 1-3: two)
    assert result["top_calls_per_step"]["aten::mm"] == 14
    assert result["by_kind_ms"]["matmul"] > 0
    assert "aten::mm" in (tmp_path / "p.txt").read_text()


def test_refuses_a_missing_target(tmp_path):
    with pytest.raises(SystemExit):
        kernel_profile.main(["--out", str(tmp_path / "p.json")])


def test_then_exit_ends_the_script_once_the_tables_are_written(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN + "open(sys.argv[2], 'w').write('the rest ran')\n")
    after = tmp_path / "after.txt"
    for flag, rest_runs in (([], True), (["--then-exit"], False)):
        after.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, str(SCRIPT), "--skip", "2", "--steps", "1", *flag, "--out",
                               str(tmp_path / "p.json"), "--", str(script), "6", str(after)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((tmp_path / "p.json").read_text())["steps"] == 1
        assert after.exists() == rest_runs


def test_device_totals_count_each_kernel_once(tmp_path):
    from types import SimpleNamespace as Event

    from torch.autograd import DeviceType
    events = [Event(key="aten::mm", count=2, self_device_time_total=4000.0, self_cpu_time_total=50.0,
                    device_type=DeviceType.CPU, is_user_annotation=False),  # its kernels' time, again
              Event(key="nvjet_sm90_gemm", count=2, self_device_time_total=4000.0, self_cpu_time_total=0.0,
                    device_type=DeviceType.CUDA, is_user_annotation=False),
              Event(key="Optimizer.step#Muon.step", count=1, self_device_time_total=3000.0, self_cpu_time_total=0.0,
                    device_type=DeviceType.CUDA, is_user_annotation=True),  # spans the next kernel
              Event(key="triton_poi_fused_ns", count=1, self_device_time_total=3000.0, self_cpu_time_total=0.0,
                    device_type=DeviceType.CUDA, is_user_annotation=False)]
    kernel_profile.StepProfiler(40, 2, tmp_path / "p.json", 10).write(events)
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["ms_per_step"] == pytest.approx(3.5)  # (4 ms + 3 ms) / 2 steps, not 7
    assert result["by_kind_ms"] == pytest.approx({"matmul": 2.0, "fused (triton)": 1.5})
    assert result["top_ms"]["aten::mm"] == pytest.approx(2.0)  # the table still lists the operator


def test_stacks_lists_the_matching_operators_with_their_shapes_and_source_line(tmp_path, monkeypatch):
    profile_train_script(tmp_path, monkeypatch, "--stacks", "aten::mm$", "--trace", str(tmp_path / "t.json.gz"))
    text = (tmp_path / "p.stacks.txt").read_text()
    rows = [line for line in text.splitlines() if line.startswith("aten::mm ")]
    # forward x @ w with shapes [16, 32] x [32, 32]: five calls per profiled step, from the script's line 8
    forward = [r for r in rows if "[[16, 32], [32, 32]]" in r]
    assert forward and sum(float(r.split("calls/step ")[1].split()[0]) for r in forward) >= 5
    assert "train.py(" in text  # the Python frame that ran it
    assert "aten::add_" not in text
    with gzip.open(tmp_path / "t.json.gz", "rt") as trace:  # the timeline holds the profiled steps' operators
        names = [event.get("name") for event in json.load(trace)["traceEvents"]]
    assert names.count("aten::mm") == 28


RESTORING = """import sys, torch
w = torch.nn.Parameter(torch.randn(32, 32))
opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
def step(matmuls):
    x = torch.randn(16, 32)
    for _ in range(matmuls):
        x = x @ w
    x.sum().backward()
    opt.step(); opt.zero_grad()
for _ in range(4):  # a warm-up of one-matmul steps, then the optimizer is restored (as pgolf and the records do)
    step(1)
opt.load_state_dict(opt.state_dict())
for _ in range(6):
    step(5)
"""


# --skip 3 --steps 2: from the restore, steps 4-5 after it (five matmuls: 14 mm calls a step); counted from the start,
# the window opens in the warm-up's last step (2 calls) and closes in the first after the restore (14): 8 a step
@pytest.mark.parametrize("flags, mm_per_step", [(["--from-restore"], 14), ([], 8)])
def test_from_restore_counts_the_skip_from_the_optimizer_restore(tmp_path, monkeypatch, flags, mm_per_step):
    profile_script(tmp_path, monkeypatch, RESTORING, [*flags, "--skip", "3", "--steps", "2"], [])
    assert json.loads((tmp_path / "p.json").read_text())["top_calls_per_step"]["aten::mm"] == mm_per_step
