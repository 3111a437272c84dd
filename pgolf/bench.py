"""`pgolf bench`: how fast a recipe trains, measured (issue #14), and against a record's own train_gpt.py.

pgolf side (in this process, the trainer's own phases): tokens/s and ms/step (median after warm-up, per-step
times from CUDA events / the host clock at `pg_after_step`), model FLOPs per token (FlopCounterMode over one
forward+backward of the built model at the training sequence length, in every graph mode), MFU against a
matmul peak timed in the same run (bf16 on CUDA, fp32 on CPU), peak memory, warm-up/compile time, host time
in hooks per step (pluggy hook-call monitoring), host syncs per step on CUDA (the sync debug mode's warnings in
the timed steps' bodies, `SyncWatch`), and a per-phase breakdown (data, forward, backward,
optimizer) from torch.profiler over a few extra steps with a synchronization at each phase boundary.

`--vs SCRIPT` runs the record on the same data (a folder of links to the training shards, the validation
prefix written once for both), steps, seed and schedule (MAX_WALLCLOCK_SECONDS=0: step/ITERATIONS), on the
same attention backend (a `flash_attn_interface` stand-in calling SDPA with pgolf's backend when FA3 is
missing), and prints the ratios and the train loss at matching steps. Both sides' ms/step for the ratios come
from their logs, computed the same way. With --profile-steps N the record's last N training steps run under
`pgolf.step_profile`'s profiler too (installed by the bench's sitecustomize), for the same device time by kernel
class as pgolf's side; those steps are left out of both sides' ms/step (the ratios cover the same steps).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise, zip_longest
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core.hookspecs import hookimpl
from pgolf.step_profile import is_device_activity, kernel_kind

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MIRROR = "/work/.mirror/openai+parameter-golf/repo"
SMOKE = dict(steps=3, warmup_steps=1, val_tokens=65536, profile_steps=1, log_every=1)

SITE = '''"""sitecustomize written by `pgolf bench`: a record that picks its SDPA kernels itself (PR #315 turns cuDNN
off and flash on) runs on the kernels pgolf's run picked (PGOLF_BENCH_SDPA), whatever it asks for; with
PGOLF_BENCH_PROFILE_STEPS=N, pgolf's StepProfiler (pgolf/step_profile.py, loaded from PGOLF_BENCH_STEP_PROFILE_PY)
profiles the record's last N of PGOLF_BENCH_ITERATIONS training steps into PGOLF_BENCH_PROFILE_OUT, the steps
counted from the last optimizer restore (the records restore theirs after the compile warm-up)."""
import os

if int(os.environ.get("PGOLF_BENCH_PROFILE_STEPS", "0")) > 0:
    import importlib.util as _util
    from pathlib import Path as _Path

    _spec = _util.spec_from_file_location("pgolf_bench_step_profile", os.environ["PGOLF_BENCH_STEP_PROFILE_PY"])
    _step_profile = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_step_profile)
    _steps = int(os.environ["PGOLF_BENCH_PROFILE_STEPS"])
    _step_profile.install(int(os.environ["PGOLF_BENCH_ITERATIONS"]) - _steps, _steps,
                          _Path(os.environ["PGOLF_BENCH_PROFILE_OUT"]), from_restore=True)

_WANT = {"cudnn": "cudnn", "flash": "flash", "efficient": "mem_efficient", "math": "math"}.get(
    os.environ.get("PGOLF_BENCH_SDPA", ""))
if _WANT:
    import torch.backends.cuda as _cuda

    _ENABLE = {n: getattr(_cuda, f"enable_{n}_sdp") for n in ("cudnn", "flash", "mem_efficient", "math")}

    def _pinned(name):
        def enable(flag):  # the record's request is ignored: only pgolf's kernel stays on
            _ENABLE[name](name == _WANT)
        return enable

    for _n, _fn in _ENABLE.items():
        _fn(_n == _WANT)
        setattr(_cuda, f"enable_{_n}_sdp", _pinned(_n))
'''

SHIM = '''"""flash_attn_interface stand-in written by `pgolf bench`: FA3's flash_attn_func on the backend pgolf's run
picked (PGOLF_BENCH_SDPA): fa4 through pgolf's own FA4 op (plugins/lib/fa4.py, PGOLF_BENCH_ATTENTION_PY), else torch
SDPA with the kernels pgolf's run enabled; FA3's flash_attn_varlen_func (PR #1855's packed documents) through
the varlen kernel pgolf's run uses when it is one of pgolf's (PGOLF_BENCH_VARLEN_PY: plugins/lib/fa4_varlen.py's FA4
op or plugins/lib/chunked_varlen.py's chunked SDPA; PGOLF_BENCH_VARLEN_FN its function), else FlexAttention."""
import contextlib
import importlib.util
import os
import sys

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

_SETS = {"cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
         "efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH], "sdpa": None}
_CHOICE = os.environ.get("PGOLF_BENCH_SDPA", "flash")  # the backend pgolf's run picked


def _load(name, path):
    """pgolf's torch-only kernel module at `path`, as sys.modules[name]."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FA4 = _load("pgolf_bench_attention", os.environ["PGOLF_BENCH_ATTENTION_PY"]) if _CHOICE == "fa4" else None
_BACKENDS = _SETS.get(_CHOICE)
_VARLEN_PY = os.environ.get("PGOLF_BENCH_VARLEN_PY")
_VARLEN = _load("pgolf_bench_varlen", _VARLEN_PY) if _VARLEN_PY else None
_VARLEN_FN = getattr(_VARLEN, os.environ.get("PGOLF_BENCH_VARLEN_FN", "fa4_varlen_func"), None)


def flash_attn_func(q, k, v, causal=True, **unused):
    """(B, T, H, D) q and (B, T, Hkv, D) k, v -> (B, T, H, D)."""
    if _FA4 is not None:
        assert causal, "the fa4 stand-in is causal only"
        return _FA4.fa4_func(q, k, v)
    with sdpa_kernel(_BACKENDS) if _BACKENDS else contextlib.nullcontext():
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, causal=True,
                           **unused):
    """Packed documents: (N, H, D) q and (N, Hkv, D) k, v with segment starts cu_seqlens (int32, padded with N)
    -> (N, H, D), causal attention inside each segment, through FlexAttention with a block mask built from the
    segment starts (every query block sees the key blocks from its first token's segment start on)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    assert causal, "the varlen stand-in is causal only"
    if _VARLEN_FN is not None:
        return _VARLEN_FN(q, k, v, cu_seqlens_q, cu_seqlens_q, max_seqlen_q, max_seqlen_q)
    n, block = q.size(0), 128
    nb = -(-n // block)
    doc = torch.searchsorted(cu_seqlens_q, torch.arange(n, device=q.device, dtype=cu_seqlens_q.dtype), right=True)
    first = cu_seqlens_q[doc[::block] - 1].to(torch.int32) // block
    rows = torch.arange(nb, device=q.device, dtype=torch.int32)
    idx = first[:, None] + rows[None]
    idx = torch.where(idx <= rows[:, None], idx, 0)

    def same_doc_causal(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (qi >= ki)

    mask = BlockMask.from_kv_blocks((rows - first + 1)[None, None], idx[None, None], BLOCK_SIZE=block,
                                    mask_mod=same_doc_causal, seq_lengths=(n, n))
    y = flex_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask,
                       enable_gqa=k.size(1) != q.size(1))
    return y[0].transpose(0, 1)
'''


class BenchError(ValueError):
    """A bench input or a side's run went wrong; one line naming what."""


# ---------------------------------------------------------------- measurements

def attention_flop_mapping() -> dict[Any, Any]:
    """FlopCounterMode formulas that make attention "model FLOPs" on every backend: forward 4·B·H·T²·D (full
    T×T, causal not halved, as in the PaLM MFU convention), backward twice that (no flash recompute); the CPU
    flash kernel, unknown to the counter, counted the same."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    aten = torch.ops.aten

    def heads_of(q, kv):  # grouped-query attention: K/V heads count as the query heads they serve
        return (*kv[:-3], q[-3], *kv[-2:])

    def fwd(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, heads_of(q, k), heads_of(q, v))

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return 2 * sdpa_flop_count(q, heads_of(q, k), heads_of(q, v))

    ops_fwd = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"]
    ops_bwd = ["_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
               "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward"]
    out = {getattr(aten, n): fwd for n in ops_fwd if hasattr(aten, n)}
    out.update({getattr(aten, n): bwd for n in ops_bwd if hasattr(aten, n)})
    return out


def count_flops(run: Any) -> dict[str, dict[str, float]]:
    """Model FLOPs per token of one forward+backward at (1, train_seq_len), per combination of graph modes
    (in the order the loop enters them): {"base" | "mode1+mode2": {"total", "matmul", "attention"}}."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.train import set_modes

    seq = run.core.train_seq_len
    x = (torch.arange(seq, device=run.device) % run.core.vocab_size).view(1, seq)
    y = torch.roll(x, -1, dims=1)
    combos = [()] + [tuple(m.name for m in run.modes[: i + 1]) for i in range(len(run.modes))]
    mapping = attention_flop_mapping()
    attention_ops = {str(op).split(".")[-1] for op in mapping}
    out = {}
    for active in combos:
        set_modes(run, active)
        with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
            with run.autocast():
                loss = run.model(x, y)
            loss.backward()
        counts = {(str(op).split(".") + [""])[1]: n for op, n in fc.get_flop_counts()["Global"].items()}
        attention = sum(n for op, n in counts.items() if op in attention_ops)
        total = fc.get_total_flops()  # the rest are matmuls: mm, addmm, bmm, a plugin's GEMM with a flop formula
        out["+".join(active) or "base"] = {"total": total / seq, "matmul": (total - attention) / seq,
                                          "attention": attention / seq}
    set_modes(run, ())
    for p in run.model.parameters():
        p.grad = None
    return out


def matmul_peak(device: Any) -> dict[str, Any]:
    """FLOP/s of a large square matmul on `device` (bf16 on CUDA, fp32 on CPU), best of a few timed repeats."""
    import torch

    cuda = device.type == "cuda"
    n, dtype, reps = (8192, torch.bfloat16, 20) if cuda else (1024, torch.float32, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(2):
        a @ b
    for _ in range(3):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                a @ b
            end.record()
            end.synchronize()
            sec = start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            sec = time.perf_counter() - t0
        best = min(best, sec / reps)
    return {"flops_per_s": 2 * n**3 / best, "n": n, "dtype": str(dtype).replace("torch.", "")}


class HookMonitor:
    """Times every hook call (outermost only) through pluggy's hook-call monitoring, and marks step boundaries:
    a CUDA event (no host sync) or the host clock at `pg_train_start` and at each `pg_after_step`."""

    def __init__(self, run: Any):
        self.cuda = run.device.type == "cuda"
        self.steps = run.core.iterations
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.marks: list[Any] = []  # [train start, after step 1, …, after step N]
        self.modes: list[tuple[str, ...]] = []  # active modes of step i+1
        self.in_loop = False
        self._depth = 0
        self._t0 = 0.0
        self.undo = run.pm.add_hookcall_monitoring(self.before, self.after)

    def _mark(self) -> Any:
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def before(self, name: str, impls: Any, kwargs: dict[str, Any]) -> None:
        if name == "pg_train_start":
            self.in_loop = True
            self.marks = [self._mark()]
        elif name == "pg_after_step" and self.in_loop:
            self.marks.append(self._mark())
            self.modes.append(tuple(kwargs["run"].active_modes))
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def after(self, outcome: Any, name: str, impls: Any, kwargs: dict[str, Any]) -> None:
        self._depth -= 1
        loop_call = self.in_loop and (len(self.marks) - 1 < self.steps or name == "pg_after_step")
        if self._depth == 0 and loop_call:  # the final validation's hooks are not per-step costs
            self.seconds[name] += time.perf_counter() - self._t0
            self.calls[name] += 1

    def step_ms(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in pairwise(self.marks)]
        return [1000.0 * (b - a) for a, b in pairwise(self.marks)]


class _StepBodyEnd:
    """Calls `close` after every other `pg_after_step` (the end of a step's body)."""

    def __init__(self, close: Callable[[], None]):
        self.close = close

    @hookimpl(trylast=True)
    def pg_after_step(self, run: Any, step: int) -> None:
        self.close()


def watch_step_bodies(run: Any, timed_loop: Any, args: tuple, open_: Callable[[], None],
                      close: Callable[[], None]) -> Any:
    """`timed_loop(run, *args)` with `open_()` at each timed step's clock (`core.train.make_clock`, after any
    validation) and `close()` after its last `pg_after_step` (before the logging branch, which reads the loss on
    purpose): the step body, without warm-up, validation or logging. `SyncWatch` and tests/test_host_syncs.py
    watch the same window."""
    import core.train as trainer

    make_clock, end = trainer.make_clock, _StepBodyEnd(close)

    def opening(*a: Any, **kw: Any) -> Any:
        open_()
        return make_clock(*a, **kw)

    trainer.make_clock = opening
    run.pm.register(end, name="pgolf_step_body_end")
    try:
        return timed_loop(run, *args)
    finally:
        trainer.make_clock = make_clock
        run.pm.unregister(end)


SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's sync debug mode warning (issue #14)


class SyncWatch:
    """Counts host<->device syncs in the timed steps' bodies (`watch_step_bodies`): `set_mode`
    (torch.cuda.set_sync_debug_mode) is "warn" there and its warnings are recorded; other warnings are passed on."""

    def __init__(self, set_mode: Any):
        self.set_mode = set_mode
        self.per_step: list[int] = []
        self.sites: dict[str, int] = defaultdict(int)
        self._caught: Any = None
        self._records: list[Any] = []

    def open(self) -> None:
        self._caught = warnings.catch_warnings(record=True)
        self._records = self._caught.__enter__()
        warnings.simplefilter("always")
        self.set_mode("warn")

    def close(self) -> None:
        if self._caught is None:
            return
        self.set_mode(0)
        self._caught.__exit__(None, None, None)
        self._caught, n = None, 0
        for w in self._records:
            if SYNC_WARNING in str(w.message):
                n += 1
                self.sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.per_step.append(n)

    def watch(self, run: Any, timed_loop: Any, *args: Any) -> Any:
        """`timed_loop(run, *args)` with each step's body watched."""
        try:
            return watch_step_bodies(run, timed_loop, args, self.open, self.close)
        finally:
            self.close()

    def summary(self) -> dict[str, Any]:
        steps = max(len(self.per_step), 1)
        top = sorted(self.sites.items(), key=lambda kv: -kv[1])[:10]
        return {"host_syncs_per_step": sum(self.per_step) / steps, "host_sync_steps": len(self.per_step),
                "host_sync_sites": dict(top)}


class _Labelled:
    """Calls `fn` inside a profiler range, then waits for the device (so the range holds the phase's work)."""

    def __init__(self, fn: Any, label: str, run: Any):
        self.fn, self.label, self.run = fn, label, run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.profiler import record_function

        with record_function(self.label):
            out = self.fn(*args, **kwargs)
            self.run.synchronize()
        return out


def profile_phases(run: Any, stepper: Any, steps: int) -> dict[str, Any]:
    """Per-step ms of data, forward, backward (forward_backward less the two) and optimizer (grad clip +
    optimizer steps) over `steps` extra training steps under torch.profiler; the top device kernels on CUDA."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from core.train import new_loader

    if steps <= 0:
        return {}
    loader = new_loader(run)
    labelled = SimpleNamespace(next_batch=_Labelled(loader.next_batch, "data", run))
    model, prefetch = stepper.model, stepper.prefetch
    stepper.model, stepper.prefetch = _Labelled(model, "forward", run), False  # each phase whole, in its range
    clip = run.core.grad_clip_norm

    def optimizer() -> None:
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        stepper.optimizer_step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            for _ in range(steps):
                stepper.zero_grad()
                _Labelled(stepper.forward_backward, "forward_backward", run)(labelled)
                _Labelled(optimizer, "optimizer", run)()
    finally:
        stepper.model, stepper.prefetch = model, prefetch
    def span(e: Any) -> float:  # host time of the range; on CUDA its device-side annotation may carry it
        return max(float(e.cpu_time_total), float(getattr(e, "device_time_total", 0.0)))

    ms = {e.key: span(e) / 1000.0 / steps for e in prof.key_averages()
          if e.key in ("data", "forward", "forward_backward", "optimizer")}
    fb = ms.pop("forward_backward", 0.0)
    phases = {"data": ms.get("data", 0.0), "forward": ms.get("forward", 0.0),
              "backward": max(fb - ms.get("data", 0.0) - ms.get("forward", 0.0), 0.0),
              "optimizer": ms.get("optimizer", 0.0)}
    out: dict[str, Any] = {"steps": steps, "phases_ms": phases}
    if run.device.type == "cuda":
        def dev(e: Any) -> float:
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

        labels = {e.name for e in prof.events() if e.is_user_annotation}  # ranges (ours, Optimizer.step#…)
        kernels = sorted((e for e in prof.key_averages() if dev(e) > 0 and e.key not in labels), key=dev, reverse=True)
        out["top_device_ops_ms"] = {e.key: dev(e) / 1000.0 / steps for e in kernels[:80]}
        by_kind: dict[str, float] = {}
        for e in (e for e in kernels if is_device_activity(e)):  # kernels, not the aten ops above them
            kind = kernel_kind(e.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + dev(e) / 1000.0 / steps
        out["device_ms_by_kind"] = dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))
    return out


def peak_memory(device: Any) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda max_memory_allocated"}
    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "max RSS (host)"}


# ---------------------------------------------------------------- data

BENCH_MARK = ".pgolf-bench"  # in a --out folder bench made: only there are data/, runs/pgolf and record/ replaced


def claim_out(out: Path) -> Path:
    """`out`, made or checked: new, empty or made by bench (BENCH_MARK), since bench replaces folders in it."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / BENCH_MARK).is_file():
        raise BenchError(f"--out {out}: holds files bench did not make (no {BENCH_MARK}); bench replaces data/, runs/ "
                         "and record/ in its folder: give a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / BENCH_MARK).is_file():
        (out / BENCH_MARK).write_text("a pgolf bench working folder: data/, runs/pgolf and record/ are replaced\n")
    return out


def earlier_side(path: Path) -> dict[str, Any]:
    """A side's result from an earlier call (`--side`): a JSON object, or a one-line error naming the file."""
    from validator.untrusted_json import JSON_ERRORS, parse_json

    try:
        res = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *JSON_ERRORS) as exc:
        raise BenchError(f"{path}: an earlier side's result that cannot be read ({exc}); delete it or run both "
                         "sides") from None
    log = res.get("log") if isinstance(res, dict) else None
    if not (isinstance(log, dict) and isinstance(log.get("steps"), dict) and isinstance(res.get("peak_memory"), dict)):
        raise BenchError(f"{path}: not a bench side's result (expected the JSON object an earlier --side wrote); "
                         "delete it or run both sides")
    return res


def data_folder(cfg: Any, out: Path, val_tokens: int, eval_seq_len: int) -> tuple[Path, Path, Path]:
    """A challenge-layout folder both sides read: datasets/fineweb10B_sp<V>/ (links to the training shards,
    one validation shard holding the first `val_tokens` tokens, whole sequences + 1, and the same prefix of a
    CaseOps byte sidecar `fineweb_val_bytes_*.bin` where the data has one) and tokenizers/
    fineweb_<V>_bpe.model. Returns (root, dataset dir, tokenizer)."""
    import numpy as np

    from core.data import read_shard, shard_files
    from core.train import resolve_data
    from dataprep.build import write_shard

    src, tok = resolve_data(SimpleNamespace(core=cfg.core))
    vocab = cfg.core.vocab_size
    root = out / "data"
    if Path(src).resolve().is_relative_to(root) or Path(tok).resolve().is_relative_to(root):
        raise BenchError(f"--data {src}: inside {root}, the folder bench rebuilds from the data (give the dataset "
                         "itself, not a bench folder's copy)")
    shutil.rmtree(root, ignore_errors=True)
    ds = root / "datasets" / f"fineweb10B_sp{vocab}"
    ds.mkdir(parents=True)
    (root / "tokenizers").mkdir()
    for f in shard_files(src, "train"):
        (ds / f.name).symlink_to(f.resolve())
    val_files = shard_files(src, "val")
    sidecars = sorted(Path(src).glob("fineweb_val_bytes_*.bin"))
    if val_tokens > 0:
        parts, have = [], 0
        for f in val_files:
            parts.append(read_shard(f, vocab).numpy())
            have += parts[-1].size
            if have > val_tokens:
                break
        val = np.concatenate(parts)
        usable = min(val.size - 1, (val_tokens // eval_seq_len) * eval_seq_len)
        if usable <= 0:
            raise BenchError(f"--val-tokens {val_tokens}: shorter than one eval sequence ({eval_seq_len})")
        write_shard(ds / "fineweb_val_000000.bin", val[: usable + 1].astype(np.uint16))
        if sidecars:  # CaseOps: the byte counts of exactly those tokens
            counts = np.concatenate([read_shard(f, None).numpy() for f in sidecars])
            if counts.size < usable + 1:
                raise BenchError(f"{sidecars[0].parent}: the byte sidecar ({counts.size} tokens) is shorter than the "
                                 f"validation prefix ({usable + 1} tokens)")
            write_shard(ds / "fineweb_val_bytes_000000.bin", counts[: usable + 1].astype(np.uint16))
    else:
        for f in [*val_files, *sidecars]:
            (ds / f.name).symlink_to(f.resolve())
    tok_link = root / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    tok_link.symlink_to(Path(tok).resolve())
    return root, ds, tok_link


# ---------------------------------------------------------------- the pgolf side

def skip_of(steps: int) -> int:
    """Steps left out of the medians as warm-up: a tenth of the run, at least 2 (fewer on a tiny run)."""
    return min(max(2, steps // 10), steps - 1)


def summarize_steps(step_ms: list[float], flops_by_mode: dict[str, dict[str, float]], modes: list[tuple],
                    tokens_per_step: int, skip: int) -> dict[str, Any]:
    kept = list(range(skip, len(step_ms)))
    times = [step_ms[i] for i in kept]
    med, mean = statistics.median(times), statistics.fmean(times)
    flops = sum(flops_by_mode["+".join(modes[i]) or "base"]["total"] for i in kept) * tokens_per_step
    return {"ms_per_step_median": med, "ms_per_step_mean": mean, "tokens_per_s": tokens_per_step / med * 1000.0,
            "tokens_per_s_mean": tokens_per_step / mean * 1000.0, "measured_steps": [skip + 1, len(step_ms)],
            "model_flops_per_s": flops / (sum(times) / 1000.0)}


def run_pgolf(args: argparse.Namespace, cfg: Any, registry: Any, out: Path) -> dict[str, Any]:
    import torch

    from core.train import (
        Budget,
        Stepper,
        export_artifact,
        final_eval,
        finish_and_calibrate,
        log_run_header,
        process_group,
        setup,
        timed_loop,
        warmup_and_restore,
    )

    with process_group(setup(cfg, registry)) as run:
        monitor = HookMonitor(run)
        flops = count_flops(run)
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        log_run_header(run)
        budget, stepper = Budget.of(run), Stepper(run)
        t0 = time.perf_counter()
        warmup_and_restore(run, stepper)
        run.synchronize()
        warmup_s = time.perf_counter() - t0
        syncs = SyncWatch(torch.cuda.set_sync_debug_mode) if run.device.type == "cuda" else None  # CUDA only
        loop = syncs.watch(run, timed_loop, stepper, budget) if syncs else timed_loop(run, stepper, budget)
        monitor.in_loop = False
        step_ms = monitor.step_ms()
        memory = peak_memory(run.device)
        final = None
        if args.finish:  # the trainer's last phases, as `pgolf train` runs them: artifact bytes, final val_bpb
            calibration_ms = finish_and_calibrate(run, loop, budget)
            final = final_eval(run, *export_artifact(run))
            final["calibration_ms"] = calibration_ms
        phases = profile_phases(run, stepper, args.profile_steps)  # after the export: it trains further
        peak = matmul_peak(run.device)
        tps = run.core.train_batch_tokens
        compiled = run.eval_model is not run.model
        res: dict[str, Any] = {"device": str(run.device), "attention": attention_kernel(run.config, run.attention),
                               "attention_measured": run.state.get("attention_auto", {}), "compiled": compiled,
                               "steps": loop.steps, "tokens_per_step": tps, "step_ms": step_ms,
                               "grad_accum_steps": run.grad_accum_steps,  # after auto_micro_batch's choice
                               "flops_per_token": flops}
        res.update(summarize_steps(step_ms, flops, monitor.modes, tps, skip_of(loop.steps)))
        res["mfu"] = res["model_flops_per_s"] / peak["flops_per_s"]
        res["matmul_peak"] = peak
        res["peak_memory"] = memory
        warm_steps = run.core.warmup_steps + (len(run.modes) + 1 if run.modes and compiled else 0)
        res["warmup_s"] = warmup_s
        res["compile_s_est"] = max(warmup_s - warm_steps * res["ms_per_step_median"] / 1000.0, 0.0)
        hook_s = sum(monitor.seconds.values())
        res["hook_ms_per_step"] = 1000.0 * hook_s / max(loop.steps, 1)
        res["hook_share"] = res["hook_ms_per_step"] / res["ms_per_step_mean"]
        res["hook_ms_by_name"] = {k: 1000.0 * v / max(loop.steps, 1) for k, v in sorted(monitor.seconds.items())}
        res.update(syncs.summary() if syncs else {"host_syncs_per_step": None})
        res["profile"] = phases
        res["last_val_bpb"] = loop.last_val_bpb
        res["final"] = final
        res["run_dir"] = str(run.run_dir)
        monitor.undo()
    from pgolf.records import parse_log

    log = parse_log((Path(res["run_dir"]) / "train.log").read_text(encoding="utf-8"), res["tokens_per_step"])
    res["log"] = log
    return res


def release_device_memory() -> None:
    """Drop compiled graphs and cached CUDA blocks, so the record's process gets the whole GPU."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the record side

def run_record(args: argparse.Namespace, cfg: Any, out: Path, data_root: Path, dataset: Path, tokenizer: Path,
               attention: str, eval_seq_len: int) -> dict[str, Any] | None:
    from pgolf.records import core_env, decoded_source, parse_log, profile_for

    script = Path(args.vs).expanduser()
    if not script.is_file():
        raise BenchError(f"--vs {args.vs}: no such file (expected a record's train_gpt.py)")
    profile = profile_for(script, args.profile)
    rec_dir = out / "record"
    shutil.rmtree(rec_dir, ignore_errors=True)
    rec_dir.mkdir(parents=True)
    shutil.copyfile(script, rec_dir / "train_gpt.py")
    source = decoded_source(script.read_text(encoding="utf-8", errors="replace"))
    env = dict(os.environ)
    env.update(core_env(cfg, eval_seq_len))
    env.update(profile.env(cfg, not args.record_eval))
    if env.get("CASEOPS_ENABLED") == "1" and not any(dataset.glob("fineweb_val_bytes_*.bin")):
        raise BenchError(f"--vs {script} ({profile.name}) reads CaseOps data: {dataset} has no byte sidecar "
                         "fineweb_val_bytes_*.bin (expected data built with `pgolf data build --caseops`)")
    env.update(DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), DATA_DIR=str(data_root) + os.sep,
               RUN_ID="record", PYTHONUNBUFFERED="1", PGOLF_BENCH_SDPA=attention)
    fa3 = attention == "fa3" and importlib.util.find_spec("flash_attn_interface") is not None
    shim = out / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITE, encoding="utf-8")  # SDPA records: pgolf's kernels; the profile
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)
    profiled = record_profile_steps(args)
    profile_out = out / "record_profile.json"
    profile_out.unlink(missing_ok=True)
    if profiled:
        env.update(PGOLF_BENCH_PROFILE_STEPS=str(profiled), PGOLF_BENCH_ITERATIONS=str(args.steps),
                   PGOLF_BENCH_PROFILE_OUT=str(profile_out),
                   PGOLF_BENCH_STEP_PROFILE_PY=str(REPO / "pgolf" / "step_profile.py"))
    if not fa3:  # the stand-in, over a real FA3 too: both sides on the backend pgolf picked
        (shim / "flash_attn_interface.py").write_text(SHIM, encoding="utf-8")
        env["PGOLF_BENCH_ATTENTION_PY"] = str(REPO / "plugins" / "lib" / "fa4.py")
        varlen = pgolf_varlen_kernel(cfg)
        if varlen in VARLEN_MODULES:
            module, function = VARLEN_MODULES[varlen]
            env.update(PGOLF_BENCH_VARLEN_PY=str(REPO / "plugins" / "lib" / module), PGOLF_BENCH_VARLEN_FN=function)
    (out / "record_env.json").write_text(json.dumps({k: env[k] for k in sorted(env) if k not in os.environ
                                                     or os.environ[k] != env[k]}, indent=2) + "\n")
    if args.dry_run:
        print(f"bench: --dry-run: the record ({profile.name}) would run `{sys.executable} train_gpt.py` in {rec_dir} "
              f"with (besides the inherited environment) {out / 'record_env.json'}:", flush=True)
        print((out / "record_env.json").read_text(), end="", flush=True)
        return None
    log_path = out / "record.log"
    print(f"bench: running the record ({profile.name}) in {rec_dir}; log {log_path}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "train_gpt.py"], cwd=rec_dir, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(text[-3000:])
        raise BenchError(f"--vs {script}: the record exited with status {proc.returncode} (log {log_path})")
    parsed = parse_log(text, cfg.core.train_batch_tokens)
    if not parsed["steps"]:
        raise BenchError(f"--vs {script}: no train_loss lines in its log {log_path} (expected 'step:N/M train_loss:X "
                         "train_time:Tms …' or 'N/M train_loss: X train_time: Tm tok/s: R')")
    memory = {"bytes": parsed["peak_memory_bytes"], "kind": "cuda max_memory_allocated (its log)"}
    if parsed["peak_memory_bytes"] is None:
        memory = {"bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "kind": "max RSS (host)"}
    return {"profile": profile.name, "script": str(script.resolve()),
            "attention": record_attention_label(attention, fa3, "flash_attn_varlen_func" in source,
                                                None if fa3 else pgolf_varlen_kernel(cfg)), "wall_s": wall,
            "log": parsed, "peak_memory": memory, "device_profile": read_record_profile(profile_out),
            "dead_params": profile.dead_params(cfg) if profile.dead_params else (0, "")}


def record_profile_steps(args: argparse.Namespace) -> int:
    """How many of the record's last training steps its sitecustomize profiles: --profile-steps, leaving at least
    the measured steps' first two (0: no profile)."""
    return max(0, min(args.profile_steps, args.steps - skip_of(args.steps) - 2))


def read_record_profile(path: Path) -> dict[str, Any] | None:
    """The record's profiled steps (`pgolf.step_profile`'s JSON) in the keys pgolf's side reports its own under;
    None when the record wrote none (no profile asked, or its training never reached the window). A script that
    never restores its optimizers (`restores` 0) had its steps counted from its first, warm-up included: the window
    then sits that many steps earlier than `timed_from_step` says."""
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    # the profiler starts inside step `after_steps` (after its first optimizer step): that step's time is off too
    return {"steps": raw["steps"], "timed_from_step": raw["after_steps"], "restores": raw["restores"],
            "time": raw["time"], "device_ms_by_kind": raw["by_kind_ms"], "top_device_ops_ms": raw["top_ms"],
            "calls_per_step": raw["top_calls_per_step"]}


def attention_kernel(cfg: Any, picked: str) -> str:
    """The kernel pgolf's layers run: "fa4" with the `fa4_attention` plugin (it replaces the attention slot on
    CUDA), else the core's backend `picked`."""
    return "fa4" if "fa4_attention" in cfg.plugins and picked != "sdpa" else picked


# pgolf's packed-document kernels the record's varlen stand-in can run too: (module in plugins/lib, function)
VARLEN_MODULES = {"fa4": ("fa4_varlen.py", "fa4_varlen_func"), "chunked": ("chunked_varlen.py", "chunked_varlen_func")}


def pgolf_varlen_kernel(cfg: Any) -> str | None:
    """The packed-document kernel pgolf's `varlen_attention` runs on a GPU here: its `kernel` setting, where kernel
    auto means "fa4" with no FA3 and flash_attn.cute importable, else "flex"; None without the plugin. The record's
    varlen stand-in runs the same one where pgolf has it as a module (VARLEN_MODULES), else FlexAttention."""
    from pgolf.records import setting
    from plugins.lib.fa4 import available as fa4_available

    if "varlen_attention" not in cfg.plugins:
        return None
    kernel = setting(cfg, "varlen_attention.kernel", "auto")
    if kernel != "auto":
        return kernel
    return "fa4" if importlib.util.find_spec("flash_attn_interface") is None and fa4_available() else "flex"


def record_attention_label(attention: str, real_fa3: bool, varlen: bool = False, varlen_kernel: str | None = None
                           ) -> str:
    """What the record ran: real FA3, FA4 through the stand-in, or SDPA with pgolf's kernels; `varlen`: its
    packed-document attention went through the stand-in, running `varlen_kernel` ("fa4", "chunked"; else
    FlexAttention: on an H200 at PR #1855's shape, 98,304 tokens in ≤ 2,048-token documents, about 2.2× the time of
    SDPA flash over fixed 2,048-token rows)."""
    label = "fa3" if real_fa3 else "fa4" if attention == "fa4" else f"sdpa-{attention}"
    kernel = varlen_kernel if varlen_kernel in VARLEN_MODULES else "flex"
    return label + (f"+{kernel}-varlen" if varlen and not real_fa3 else "")


def phases_row(phases: dict[str, list[dict[str, Any]]] | None) -> str:
    """'base 442.1 | 430.2; recurrence 660.0 | 643.1': each phase's mean ms/step (steps strictly inside it)."""
    if not phases:
        return "—"
    cells = []
    for a, b in zip_longest(phases["pgolf"], phases["record"], fillvalue={}):
        name = a.get("phase") or b.get("phase")
        cells.append(f"{name} {_fmt(a.get('ms'), ',.1f')} | {_fmt(b.get('ms'), ',.1f')}")
    return "; ".join(cells)


def compare(pg: dict[str, Any], rec: dict[str, Any], steps: int) -> dict[str, Any]:
    """Ratios pgolf/record from both logs by one method, and the train loss at the steps both logged."""
    from pgolf.records import ms_per_step_by_phase, ms_per_step_from_log

    skip = skip_of(steps)
    pg_steps = {int(k): tuple(v) for k, v in pg["log"]["steps"].items()}  # JSON keys are strings
    rec_steps = {int(k): tuple(v) for k, v in rec["log"]["steps"].items()}
    profiled = rec.get("device_profile")
    rec_timed = ({s: v for s, v in rec_steps.items() if s < profiled["timed_from_step"]} if profiled else rec_steps)
    last = max(rec_timed, default=0)  # the record's profiled tail left out: pgolf's ratio over the same steps
    pg_timed = {s: v for s, v in pg_steps.items() if s <= last} if profiled else pg_steps
    shared = set(pg_timed) & set(rec_timed)  # one grid of intervals for both (pgolf logs its first ten steps)
    if sum(s >= skip for s in shared) >= 2:
        pg_timed, rec_timed = ({s: v for s, v in t.items() if s in shared} for t in (pg_timed, rec_timed))
    a = ms_per_step_from_log(pg_timed, skip)
    b = ms_per_step_from_log(rec_timed, skip)
    out: dict[str, Any] = {"pgolf_ms_per_step": a, "record_ms_per_step": b}
    if a["mean"] and b["mean"]:
        out["tokens_per_s_ratio"] = b["mean"] / a["mean"]
        out["ms_per_step_ratio"] = a["mean"] / b["mean"]
        out["tokens_per_s_ratio_median"] = b["median"] / a["median"]  # steady state: a recompile stall barely moves it
        if pg.get("mfu") is not None:  # the same model, tokens and mode steps: pgolf's FLOPs per step, its time
            out["mfu"] = {"pgolf": pg["mfu"], "record": pg["mfu"] * a["mean"] / b["mean"]}
    ma, mb = pg["peak_memory"], rec["peak_memory"]
    if pg["log"]["peak_memory_bytes"] and rec["log"]["peak_memory_bytes"]:  # both logs' CUDA line: one method
        out["peak_memory_ratio"] = pg["log"]["peak_memory_bytes"] / rec["log"]["peak_memory_bytes"]
    elif ma["bytes"] and mb["bytes"] and ma["kind"] == mb["kind"]:
        out["peak_memory_ratio"] = ma["bytes"] / mb["bytes"]
    out["model_params"] = model_params(pg, rec)
    out["mode_switch_step"] = {"pgolf": pg["log"].get("mode_switches"), "record": rec["log"].get("mode_switches")}
    out["ms_per_step_by_phase"] = {"pgolf": ms_per_step_by_phase(pg_timed, skip, pg["log"].get("mode_switches")),
                                   "record": ms_per_step_by_phase(rec_timed, skip, rec["log"].get("mode_switches"))}
    common = sorted(set(pg_steps) & set(rec_steps))
    out["train_loss"] = {s: {"pgolf": pg_steps[s][0], "record": rec_steps[s][0],
                             "diff": pg_steps[s][0] - rec_steps[s][0]} for s in common}
    out["last_val_bpb"] = {"pgolf": pg["log"]["last_val_bpb"], "record": rec["log"]["last_val_bpb"]}
    out["final_val_bpb"] = {"pgolf": pg["log"].get("final_val_bpb"), "record": rec["log"].get("final_val_bpb")}
    a_bytes, b_bytes = model_bytes(pg["log"]), model_bytes(rec["log"])
    out["artifact_bytes"] = {"pgolf": a_bytes, "record": b_bytes}
    if a_bytes and b_bytes:
        out["artifact_bytes_ratio"] = a_bytes / b_bytes
    return out


def model_params(pg: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """Both logs' `model_params` and the gap the record's profile explains (parameters it makes but never reads,
    which pgolf does not make); `unexplained` is what is left (0 when the models match)."""
    a, b = pg["log"].get("model_params"), rec["log"].get("model_params")
    dead, why = rec.get("dead_params") or (0, "")
    gap = None if a is None or b is None else b - a - dead
    return {"pgolf": a, "record": b, "record_dead": dead, "why": why, "unexplained": gap}


def model_bytes(log: dict[str, Any]) -> int | None:
    """The compressed model's bytes a log reports: its last `Serialized model LABEL: N bytes` line (records
    first log the raw torch.save size, unlabelled, then the quantized artifact's)."""
    art = log.get("artifact") or {}
    return list(art.values())[-1] if art else None


# ---------------------------------------------------------------- report

def _fmt(v: Any, spec: str = ",.1f") -> str:
    return "—" if v is None else format(v, spec)


def params_row(mp: dict[str, Any] | None) -> str:
    if not mp or mp["pgolf"] is None or mp["record"] is None:
        return "—"
    row = f"{mp['pgolf']:,d} | {mp['record']:,d}"
    if mp["record_dead"]:
        row += f" (record {mp['record_dead']:+,d}: {mp['why']})"
    return row + (f"; UNEXPLAINED {mp['unexplained']:+,d}" if mp["unexplained"] else "")


def sync_cell(pg: dict[str, Any]) -> str:
    """The table's host-sync cell: per step, and the busiest sites; "— (CUDA only)" off the GPU."""
    n = pg.get("host_syncs_per_step")
    if n is None:
        return "— (CUDA only)"
    sites = ", ".join(f"{k} ×{v}" for k, v in list(pg.get("host_sync_sites", {}).items())[:3])
    return f"{n:,.2f}" + (f" ({sites})" if sites else "")


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    pg, rec, vs = res.get("pgolf"), res.get("record"), res.get("vs")
    if pg:
        rows += [("device / attention / compiled", f"{pg['device']} / {pg['attention']} / {pg['compiled']}"),
                 ("ms/step median (mean), steps " + "-".join(map(str, pg["measured_steps"])),
                  f"{pg['ms_per_step_median']:,.2f} ({pg['ms_per_step_mean']:,.2f})"),
                 ("tokens/s (median step)", f"{pg['tokens_per_s']:,.0f}"),
                 ("micro-steps per step (grad_accum_steps)", _fmt(pg.get("grad_accum_steps"), "d"))]
        rows += [(f"model FLOPs/token [{mode}]", f"{f['total'] / 1e6:,.2f} M (matmul {f['matmul'] / 1e6:,.2f} M, "
                                                 f"attention {f['attention'] / 1e6:,.2f} M)")
                 for mode, f in pg["flops_per_token"].items()]
        peak = pg["matmul_peak"]
        rows += [(f"matmul peak ({peak['dtype']}, n={peak['n']})", f"{peak['flops_per_s'] / 1e12:,.2f} TFLOP/s"),
                 ("MFU", f"{100 * pg['mfu']:.1f} %"),
                 (f"peak memory ({pg['peak_memory']['kind']})", f"{pg['peak_memory']['bytes'] / 2**30:,.2f} GiB"),
                 ("warm-up s (compile, est.)", f"{pg['warmup_s']:,.1f} ({pg['compile_s_est']:,.1f})"),
                 ("warm-up graphs compiled", _fmt((pg.get("log", {}).get("warmup") or {}).get("graphs"), "d")),
                 ("hooks ms/step (share of step)", f"{pg['hook_ms_per_step']:,.3f} ({100 * pg['hook_share']:.2f} %)"),
                 ("host syncs per step (timed steps)", sync_cell(pg))]
        for name, ms in pg.get("profile", {}).get("phases_ms", {}).items():
            rows.append((f"phase {name} ms/step (synchronized)", f"{ms:,.2f}"))
        for kind, ms in pg.get("profile", {}).get("device_ms_by_kind", {}).items():
            rows.append((f"device {kind} ms/step (profiled kernels)", f"{ms:,.2f}"))
    if rec:
        rows += [("record", f"{rec['profile']} ({rec['attention']}), wall {rec['wall_s']:,.0f} s"),
                 ("record artifact bytes", str(rec["log"]["artifact"] or "—"))]
        prof = rec.get("device_profile")
        which = "its last {} steps" if prof and prof["restores"] else "{} steps, counted from its first (no restore)"
        for kind, ms in (prof or {}).get("device_ms_by_kind", {}).items():
            rows.append((f"record device {kind} ms/step ({which.format(prof['steps'])}, profiled)", f"{ms:,.2f}"))
        if prof and not prof["restores"]:
            rows.append(("record profile", "no optimizer restore seen: the profiled steps may lie inside the "
                         "timed ones (the ratios then carry the profiler's cost); time with --profile-steps 0"))
    if vs:
        a, b = vs["pgolf_ms_per_step"], vs["record_ms_per_step"]
        both = [f"{_fmt(m['mean'], ',.2f')} ({_fmt(m['median'], ',.2f')})" for m in (a, b)]
        ratios = (_fmt(vs.get(k), ".3f") + "×" for k in ("tokens_per_s_ratio", "tokens_per_s_ratio_median"))
        rows += [("log ms/step mean (median step) pgolf | record", " | ".join(both)),
                 ("tokens/s pgolf / record: whole loop (median step)", "{} ({})".format(*ratios)),
                 ("MFU pgolf | record (record: pgolf's FLOPs/step over its log's ms/step)",
                  " | ".join(f"{100 * m:.1f} %" if m is not None else "—"
                             for m in (vs.get("mfu") or {"pgolf": None, "record": None}).values())),
                 ("peak memory pgolf / record", _fmt(vs.get("peak_memory_ratio"), ".3f")),
                 ("model params pgolf | record", params_row(vs.get("model_params"))),
                 ("mode switch steps pgolf | record",
                  f"{vs['mode_switch_step']['pgolf'] or '—'} | {vs['mode_switch_step']['record'] or '—'}"),
                 ("ms/step by mode phase pgolf | record", phases_row(vs.get("ms_per_step_by_phase"))),
                 ("last-step val_bpb pgolf | record",
                  f"{_fmt(vs['last_val_bpb']['pgolf'], '.4f')} | {_fmt(vs['last_val_bpb']['record'], '.4f')}")]
        fin, art = vs.get("final_val_bpb", {}), vs.get("artifact_bytes", {})
        if fin.get("pgolf") is not None or art.get("pgolf") is not None:  # --finish
            rows += [("final (round-trip) val_bpb pgolf | record",
                      f"{_fmt(fin.get('pgolf'), '.4f')} | {_fmt(fin.get('record'), '.4f')}"),
                     ("artifact bytes pgolf | record (ratio)",
                      f"{_fmt(art.get('pgolf'), ',d')} | {_fmt(art.get('record'), ',d')} "
                      f"({_fmt(vs.get('artifact_bytes_ratio'), '.4f')})")]
        for s, d in vs["train_loss"].items():
            rows.append((f"train_loss step {s} pgolf | record",
                         f"{d['pgolf']:.4f} | {d['record']:.4f} ({d['diff']:+.4f})"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


# ---------------------------------------------------------------- command

def resolve_recipe(recipe: str | None) -> str:
    if recipe is None:
        raise BenchError("--recipe is required (a TOML file or a name in recipes/: "
                         + ", ".join(sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))) + ")")
    path = Path(recipe).expanduser()
    if path.is_file():
        return str(path)
    named = REPO / "recipes" / f"{recipe}.toml"
    if named.is_file():
        return str(named)
    known = ", ".join(sorted(p.stem for p in (REPO / "recipes").glob("*.toml")))
    raise BenchError(f"--recipe {recipe}: no such file or recipe name (known: {known})")


def extract_record(args: argparse.Namespace) -> int:
    from pgolf.records import PROFILES

    name = args.profile
    if name not in PROFILES or not PROFILES[name].folder:
        raise BenchError(f"--extract-record needs --profile one of "
                         f"{', '.join(n for n, p in PROFILES.items() if p.folder)}")
    rel = f"{PROFILES[name].ref}:{PROFILES[name].folder}/train_gpt.py"
    proc = subprocess.run(["git", "-C", args.mirror, "show", rel], capture_output=True)
    if proc.returncode != 0:
        raise BenchError(f"--extract-record: cannot read {rel} from the git mirror {args.mirror}")
    out = Path(args.extract_record)
    out.parent.mkdir(parents=True, exist_ok=True)
    from core.run import write_atomic

    write_atomic(out, proc.stdout)
    print(f"wrote {out} ({len(proc.stdout):,} bytes, {name})")
    return 0


def finish_drops(args: argparse.Namespace, plugins: list[str]) -> list[str]:
    """The recipe's plugins the pgolf side leaves out: with --finish against a record whose long evaluations
    are skipped (no --record-eval), its profile's `skip_plugins`, so both sides export and evaluate alike."""
    if not (args.finish and args.vs) or args.record_eval:
        return []
    from pgolf.records import profile_for

    profile = profile_for(Path(args.vs).expanduser(), args.profile)
    return [p for p in plugins if p in profile.skip_plugins]


def run_bench(args: argparse.Namespace) -> int:
    from pgolf.cli import check_output, load_config, with_default_data
    from pgolf.records import PROFILES

    if args.profile and args.profile not in PROFILES:
        raise BenchError(f"--profile {args.profile}: expected one of {', '.join(PROFILES)}")
    for flag, target in (("--extract-record", args.extract_record), ("--json", args.json)):  # before anything runs
        if target:
            check_output(Path(target), args.force, flag)
    if args.extract_record:
        return extract_record(args)
    if (args.side == "record" or args.dry_run) and not args.vs:
        raise BenchError(f"{'--dry-run' if args.dry_run else '--side record'} runs the record's script: give it with "
                         "--vs RECORD/train_gpt.py")
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    if args.steps < 2:
        raise BenchError(f"--steps {args.steps}: at least 2 (the first is left out as warm-up)")
    if args.vs:  # checked before anything runs
        from pgolf.records import profile_for

        if not Path(args.vs).expanduser().is_file():
            raise BenchError(f"--vs {args.vs}: no such file (expected a record's train_gpt.py)")
        profile_for(Path(args.vs).expanduser(), args.profile)
    args.recipe = resolve_recipe(args.recipe)
    out = claim_out(Path(args.out).expanduser().resolve())
    sides = {"both": ("pgolf", "record"), "pgolf": ("pgolf",), "record": ("record",)}[args.side]
    if args.dry_run:
        sides = ("record",)
    earlier = {side: earlier_side(out / f"{side}.json") for side in ("pgolf", "record")  # before anything runs
               if side not in sides and (out / f"{side}.json").is_file()}  # a side not run now: an earlier call's
    cfg, registry = load_config(args)
    cfg = with_default_data(cfg)
    eval_seq_len = cfg.core.eval_seq_len or cfg.core.train_seq_len
    root, dataset, tokenizer = data_folder(cfg, out, args.val_tokens, eval_seq_len)
    forced = [f"core.iterations={args.steps}", "core.max_wallclock_seconds=0", "core.val_loss_every=0",
              f"core.train_log_every={args.log_every}", f"core.data_path={dataset}", f"core.tokenizer_path={tokenizer}",
              "core.val_max_tokens=0", "core.run_id=pgolf", f"core.out_dir={out / 'runs'}", f"core.seed={args.seed}"]
    if args.warmup_steps is not None:
        forced.append(f"core.warmup_steps={args.warmup_steps}")
    if cfg.core.warmdown_iters > 0:  # the core's iteration warmdown, scaled to the bench's length
        forced.append(f"core.warmdown_iters={max(1, round(args.warmdown_frac * args.steps))}")
    args.sets, args.data = list(args.sets) + forced, str(dataset)
    cfg, registry = load_config(args)
    shutil.rmtree(out / "runs" / "pgolf", ignore_errors=True)
    res: dict[str, Any] = {"recipe": args.recipe, "steps": args.steps, "seed": args.seed, "val_tokens": args.val_tokens,
                           "data": str(dataset), **earlier}
    if "pgolf" in sides:
        pg_cfg, pg_registry = cfg, registry
        drop = finish_drops(args, cfg.plugins)
        if drop:
            print(f"bench: --finish: the pgolf side leaves out {', '.join(drop)} (the record skips those "
                  "evaluations/codecs: --record-eval keeps both)", flush=True)
            pg_args = argparse.Namespace(**{**vars(args), "plugins": ",".join(p for p in cfg.plugins if p not in drop)})
            pg_cfg, pg_registry = load_config(pg_args)
        res["pgolf"] = run_pgolf(args, pg_cfg, pg_registry, out)
        res["pgolf"]["left_out_plugins"] = drop
        release_device_memory()
        (out / "pgolf.json").write_text(json.dumps(res["pgolf"], indent=2, default=str) + "\n")
    if "pgolf" in res:
        attention = res["pgolf"]["attention"]
    else:  # what pgolf's run would pick (auto: measured at its shape)
        from core.run import pick_attention, pick_device
        from plugins.attention_auto import measure

        device = pick_device(cfg.core.device, 0)
        auto = lambda: None if cfg.core.deterministic else measure(cfg.core, device, 1)[0]
        attention = attention_kernel(cfg, pick_attention(cfg.core.attention, device, auto))
    if "record" in sides and args.vs:
        rec = run_record(args, cfg, out, root, dataset, tokenizer, attention, eval_seq_len)
        if rec is None:  # --dry-run
            return 0
        res["record"] = rec
        (out / "record.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
    if "pgolf" in res and "record" in res:
        res["vs"] = compare(res["pgolf"], res["record"], args.steps)
    print(table(res), flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        from core.run import write_atomic

        write_atomic(path, json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return 0


def add_bench_parser(sub: Any, add_config_args: Any) -> None:
    from pgolf.cli import at_least

    p = sub.add_parser("bench", help="training speed of a recipe (tokens/s, MFU, memory, hooks, phases), "
                                     "optionally against a record's train_gpt.py (--vs)")
    add_config_args(p)
    p.add_argument("--steps", type=at_least(2), default=150,
                   help="timed training steps (iteration schedule; default 150)")
    p.add_argument("--vs", metavar="SCRIPT", help="a record's train_gpt.py, run on the same data/steps/seed")
    p.add_argument("--profile", help="the record's profile (pr315, pr534, pr609, pr1493, pr1855, generic); "
                   "default: by the script's sha256")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json or --extract-record file")
    p.add_argument("--out", default="bench_out", help="working folder (data links, runs, logs; default bench_out)")
    p.add_argument("--side", choices=["both", "pgolf", "record"], default="both",
                   help="run one side only; the other's result is read from an earlier call's --out")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--val-tokens", type=at_least(0), default=1_048_576,
                   help="validation prefix both sides evaluate (0: all; default 1,048,576)")
    p.add_argument("--log-every", type=at_least(1), default=10, help="TRAIN_LOG_EVERY for both sides (default 10)")
    p.add_argument("--warmup-steps", type=at_least(0), default=None,
                   help="compile warm-up steps (default: the recipe's)")
    p.add_argument("--warmdown-frac", type=at_least(0.0, float, 1.0), default=0.4,
                   help="WARMDOWN_ITERS = frac × steps for recipes with the core's iteration warmdown (default 0.4)")
    p.add_argument("--profile-steps", type=at_least(0), default=5,
                   help="extra profiled steps for the phase breakdown (0: none); with --vs the record's last as many "
                   "training steps are profiled too (kernel classes), and left out of both sides' ms/step")
    p.add_argument("--finish", action="store_true",
                   help="pgolf side: after the timed loop run the trainer's last phases (weight averaging, "
                   "calibration, export, final evaluation of the round-tripped model), so its artifact bytes and "
                   "final val_bpb compare with the record's")
    p.add_argument("--record-eval", action="store_true",
                   help="keep the record's sliding-window/TTT evaluations (default: off where it has a knob)")
    p.add_argument("--smoke", action="store_true",
                   help="a quick end-to-end check: 3 steps, 1 warm-up step, 65,536 validation tokens")
    p.add_argument("--dry-run", action="store_true", help="with --vs --side record: write the data folder and "
                   "record_env.json, print the record's environment and exit without running it (no GPU needed)")
    p.add_argument("--extract-record", metavar="OUT", help="write --profile's published train_gpt.py from the "
                   "parameter-golf git mirror to OUT and exit")
    p.add_argument("--mirror", default=os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", DEFAULT_MIRROR))
    p.set_defaults(func=run_bench)
