"""benchmarks/device_idle.py: each idle gap of a traced step, put down to the late host or a device-side wait."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_idle.py"
spec = importlib.util.spec_from_file_location("device_idle", SCRIPT)
device_idle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_idle)


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid, "args": args}


# One step on a timeline (µs): kernel a 0-100; the host, inside `Optimizer.step#Opt.step` > aten::to, launches a copy
# at 130-135 that runs 140-150 (idle 100-140: the host was late); kernel b, queued at 20, starts only at 180 (idle
# 150-180: a wait); kernel c has no launch event (idle 200-210), overlapping kernel d (no gap: busy is a union).
TRACE = [
    _x("kernel", "a", 0, 100, tid=7, correlation=1), _x("cuda_runtime", "cudaLaunchKernel", 0, 5, correlation=1),
    _x("user_annotation", "Optimizer.step#Opt.step", 110, 100),
    _x("cpu_op", "aten::to", 120, 20), _x("cpu_op", "aten::copy_", 125, 12),
    _x("cuda_runtime", "cudaMemcpyAsync", 130, 5, correlation=2), _x("gpu_memcpy", "Memcpy HtoD", 140, 10, tid=7,
                                                                     correlation=2),
    _x("cuda_runtime", "cudaLaunchKernel", 20, 5, correlation=3), _x("kernel", "b", 180, 20, tid=7, correlation=3),
    _x("kernel", "c", 210, 30, tid=7, correlation=99), _x("kernel", "d", 220, 40, tid=8, correlation=98),
    _x("cpu_op", "aten::mm", 300, 10, tid=2),
]


def test_gaps_are_measured_and_put_down_to_their_causes():
    res = device_idle.idle_gaps(TRACE)
    assert res["span_us"] == 260 and res["busy_us"] == 100 + 10 + 20 + 50 and res["idle_us"] == 40 + 30 + 10
    assert sorted(res["gaps"]) == sorted([(40, "host", "Optimizer.step#Opt.step", "aten::to", "Memcpy HtoD"),
                                          (30, "wait", "cudaLaunchKernel", "-", "b"), (10, "unlinked", "-", "-", "c")])
    text, data = device_idle.table(res, 2, 10)
    assert data["groups"][0] == {"idle_ms_per_step": 0.02, "gaps_per_step": 0.5, "cause": "host",
                         "annotation": "Optimizer.step#Opt.step", "host_op": "aten::to", "device_op": "Memcpy HtoD"}
    assert text.startswith("device per step: span 0.13 ms, busy 0.09, idle 0.04 (2 gaps)")


def test_enclosing_host_ops_follow_each_thread_nesting():
    ops = [_x("cpu_op", "outer", 0, 100), _x("cpu_op", "inner", 10, 20), _x("cpu_op", "later", 50, 10),
           _x("cpu_op", "other thread", 0, 100, tid=2)]
    got = device_idle.enclosing_host_ops(ops, [(15, 1), (40, 1), (55, 1), (55, 2), (200, 1)])
    assert [[e["name"] for e in got[q]] for q in [(15, 1), (40, 1), (55, 1), (55, 2), (200, 1)]] == [
        ["outer", "inner"], ["outer"], ["outer", "later"], ["other thread"], []]


def test_cli_reads_a_gzipped_trace_and_writes_json(tmp_path, capsys):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump({"traceEvents": TRACE}, f)
    device_idle.main([str(path), "--steps", "1", "--json", str(tmp_path / "idle.json")])
    assert "host      Optimizer.step#Opt.step | aten::to | Memcpy HtoD" in capsys.readouterr().out
    out = json.loads((tmp_path / "idle.json").read_text())
    assert out["per_step_ms"] == {"span": 0.26, "busy": 0.18, "idle": 0.08} and len(out["groups"]) == 3


@pytest.mark.parametrize("content, why", [("{not json", "not a readable Chrome trace"),
                                          ('{"traceEvents": 3}', "no traceEvents list"),
                                          ('{"traceEvents": []}', "no device activity")])
def test_bad_traces_get_one_line_errors(tmp_path, content, why):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=why):
        device_idle.main([str(path)])
