"""Where the device sat idle in profiled training steps, and why (issue #14): reads a timeline written by
`benchmarks/kernel_profile.py --trace` (torch.profiler's Chrome trace) and puts every gap between device activities
down to its cause.

    python benchmarks/device_idle.py pgolf.trace.json.gz [--steps 2] [--rows 30] [--json idle.json]

A gap ends when the next kernel, copy or set starts. Its launch call (the runtime/driver event with the same
correlation id) tells which side was late:
- `host`: the launch returned after the device went idle. The host was busy elsewhere; the row names the innermost
  annotation (`Optimizer.step#Muon.step`), the outermost host operator around the launch (`aten::to` of a batch copy,
  a compiled region) and the device op it launched.
- `wait`: the launch was queued before the device went idle, yet the op started later (a stream or event wait, a
  copy from pageable memory, a launch queue drained by a synchronisation).
- `unlinked`: no launch event in the trace.

Session 21 (one H200, PR #1493 fused set, a loop-on step, `--log-every 1`): pgolf idled 23.9 ms a step, 9.0 of it the
shuffled loader building the first micro-batch on the host after each step's synchronisation (`host | aten::to |
Memcpy HtoD`); the record idled 140 ms a step under the profiler, its Muon's per-matrix launches.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
HOST_CATS = ("cpu_op", "user_annotation")
Event = dict[str, Any]
Query = tuple[float, Any]  # (timestamp, thread id)


def load_events(path: Path) -> list[Event]:
    """The complete ("X") events of a Chrome trace, gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"device_idle: {path}: not a readable Chrome trace ({e})") from None
    events = trace.get("traceEvents") if isinstance(trace, dict) else trace
    if not isinstance(events, list):
        raise SystemExit(f"device_idle: {path}: no traceEvents list (expected torch.profiler's export_chrome_trace)")
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "ts" in e and "dur" in e]


def enclosing_host_ops(events: list[Event], queries: list[Query]) -> dict[Query, list[Event]]:
    """For each (timestamp, thread) query, the host operators and annotations open on that thread then, outermost
    first: one sweep over the operators in start order, a stack per thread (a thread's events nest)."""
    ops = sorted((e for e in events if e.get("cat") in HOST_CATS), key=lambda e: (e["ts"], -e["dur"]))
    stacks: dict[Any, list[Event]] = defaultdict(list)
    out, i = {}, 0
    for ts, tid in sorted(set(queries), key=lambda q: q[0]):
        while i < len(ops) and ops[i]["ts"] <= ts:
            op, stack = ops[i], stacks[ops[i]["tid"]]
            while stack and stack[-1]["ts"] + stack[-1]["dur"] < op["ts"]:
                stack.pop()
            stack.append(op)
            i += 1
        stack = stacks[tid]
        while stack and stack[-1]["ts"] + stack[-1]["dur"] < ts:
            stack.pop()
        out[(ts, tid)] = list(stack)
    return out


def idle_gaps(events: list[Event]) -> dict[str, Any]:
    """Span, busy and idle device time (µs) and the gaps: (µs, class, annotation, host op, device op)."""
    device = sorted((e for e in events if e.get("cat") in DEVICE_CATS), key=lambda e: e["ts"])
    if not device:
        raise SystemExit("device_idle: the trace has no device activity (profile a CUDA run)")
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})}
    raw, busy_end, busy = [], device[0]["ts"], 0.0
    for e in device:
        if e["ts"] > busy_end:
            raw.append((e["ts"] - busy_end, busy_end, e, launches.get(e.get("args", {}).get("correlation"))))
        busy += max(0.0, e["ts"] + e["dur"] - max(e["ts"], busy_end))
        busy_end = max(busy_end, e["ts"] + e["dur"])
    def launched_late(launch: Event | None, idle_from: float) -> bool:  # the launch returned once the device idled
        return launch is not None and launch["ts"] + launch["dur"] > idle_from

    late = [(launch["ts"], launch["tid"]) for _, idle_from, _, launch in raw if launched_late(launch, idle_from)]
    around = enclosing_host_ops(events, late)
    gaps = []
    for us, idle_from, op, launch in raw:
        if launch is None:
            gaps.append((us, "unlinked", "-", "-", op["name"]))
        elif launched_late(launch, idle_from):
            stack = around[(launch["ts"], launch["tid"])]
            notes = [e["name"] for e in stack if e.get("cat") == "user_annotation"]
            host = [e["name"] for e in stack if e.get("cat") == "cpu_op"]
            gaps.append((us, "host", notes[-1] if notes else "-", host[0] if host else "-", op["name"]))
        else:
            gaps.append((us, "wait", launch["name"], "-", op["name"]))
    span = busy_end - device[0]["ts"]
    return {"span_us": span, "busy_us": busy, "idle_us": sum(g[0] for g in gaps), "gaps": gaps}


def table(result: dict[str, Any], steps: int, rows: int) -> tuple[str, dict[str, Any]]:
    """The text table and its data: span, busy and idle ms per step, and the gaps grouped by (cause, annotation,
    host op, device op), most idle time first."""
    total: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0])
    for us, *key in result["gaps"]:
        total[tuple(key)][0] += us
        total[tuple(key)][1] += 1
    per_step = {k: result[f"{k}_us"] / 1e3 / steps for k in ("span", "busy", "idle")}
    groups = [{"idle_ms_per_step": us / 1e3 / steps, "gaps_per_step": n / steps, "cause": key[0],
               "annotation": key[1], "host_op": key[2], "device_op": key[3]}
              for key, (us, n) in sorted(total.items(), key=lambda kv: -kv[1][0])]
    lines = [f"device per step: span {per_step['span']:,.2f} ms, busy {per_step['busy']:,.2f}, idle "
             f"{per_step['idle']:,.2f} ({len(result['gaps']) / steps:,.0f} gaps)",
             "idle ms/step  gaps/step  cause     annotation | host op | device op"]
    for g in groups[:rows]:
        lines.append(f"{g['idle_ms_per_step']:12.3f}  {g['gaps_per_step']:9.1f}  {g['cause']:<8}  "
                     f"{g['annotation'][:40]} | {g['host_op'][:40]} | {g['device_op'][:70]}")
    return "\n".join(lines), {"per_step_ms": per_step, "groups": groups}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="a Chrome trace (.json or .json.gz) of profiled training steps")
    parser.add_argument("--steps", type=int, default=2, help="training steps the trace holds (figures are per step)")
    parser.add_argument("--rows", type=int, default=30, help="grouped gaps listed")
    parser.add_argument("--json", type=Path, help="also write the summary and every group as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    result = idle_gaps(load_events(args.trace))
    text, data = table(result, args.steps, args.rows)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
