"""A Run: resolved config, the run's own plugin manager, device, attention backend and distributed setup, paths
and logs.

The run directory holds config.json (every value with its source), events.jsonl (one structured
event per line), train.log (challenge-compatible lines) and the artifact.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import time
import uuid
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import torch
import torch.distributed as dist

from core.config import Config, ConfigError
from core.model import attend
from core.registry import Registry, make_manager


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> int:
    """Write `data` (str: UTF-8) to a temp file beside `path`, fsync, rename it into place (no partial file,
    no temp left); returns the bytes written."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(blob)


def pick_device(setting: str, local_rank: int) -> torch.device:
    """core.device: "auto" (this rank's GPU when there is one, else the CPU), "cpu", "cuda" or "cuda:N"."""
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"core.device={setting} (PGOLF_DEVICE): no CUDA device is available here "
                           "(torch.cuda.is_available() is False); use auto or cpu"])
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu" if setting == "auto" else setting)


MEASURED = ("fa3", "cudnn", "flash")  # what attention `auto` times on CUDA, in order of preference on a tie
SDPA_SETS = {"cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION"), "flash": ("FLASH_ATTENTION",),
             "efficient": ("EFFICIENT_ATTENTION",), "math": ("MATH",)}  # the SDPA kernels each choice enables
PACKAGES = {"fa3": ("flash_attn_interface", "flash_attn_3")}
AttnShape = namedtuple("AttnShape", "batch heads kv_heads seq_len head_dim")  # what `auto` times at


def available(name: str) -> bool:
    """Whether attention backend `name` can run here: fa3 when its module imports, SDPA always."""
    try:
        return name not in PACKAGES or importlib.util.find_spec(PACKAGES[name][0]) is not None
    except (ImportError, ValueError):  # a stand-in module without a spec
        return False


def attention_shape(core: Any, world_size: int) -> AttnShape:
    """The training attention shape: (micro-batch, heads, kv heads, seq len, head dim)."""
    accum = core.grad_accum_steps or max(1, 8 // world_size)
    batch = max(1, core.train_batch_tokens // (world_size * accum * core.train_seq_len))
    return AttnShape(batch, core.num_heads, core.num_kv_heads, core.train_seq_len, core.model_dim // core.num_heads)


def time_backend(name: str, shape: AttnShape, device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    """Mean ms of forward+backward of attention backend `name` at `shape`, bf16, after `warmup` calls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, hkv, t, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, n, t, d, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()
               for n in (h, hkv, hkv))
    grad = torch.randn(b, t, h, d, device=device, dtype=torch.bfloat16, generator=gen)
    sdpa = name in SDPA_SETS

    def step() -> None:
        with sdpa_kernel([getattr(SDPBackend, s) for s in SDPA_SETS[name]]) if sdpa else contextlib.nullcontext():
            attend("sdpa" if sdpa else name, q, k, v).backward(grad)

    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / iters


def choose(names: list[str], timer: Callable[[str], float]) -> tuple[str, dict[str, float | str]]:
    """The fastest of `names` by `timer(name) -> ms`; a backend whose timer raises is skipped, its error kept.
    Returns (choice, {name: ms or "error: …"}); raises RuntimeError when every one failed."""
    measured: dict[str, float | str] = {}
    for name in names:
        try:
            measured[name] = float(timer(name))
        except Exception as e:  # noqa: BLE001 - any failure just rules the backend out
            measured[name] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    timed = {n: ms for n, ms in measured.items() if isinstance(ms, float)}
    if not timed:
        raise RuntimeError("attention=auto: no backend ran: " + ", ".join(f"{n} {m}" for n, m in measured.items()))
    return min(timed, key=lambda n: (timed[n], names.index(n))), measured


def describe(choice: str, measured: dict[str, float | str]) -> str:
    """The log line: `attention_backend:cudnn (measured: fa3=2.06ms, cudnn=2.31ms, ...)`."""
    parts = [f"{n}={m:.3f}ms" if isinstance(m, float) else f"{n}={m}" for n, m in measured.items()]
    return f"attention_backend:{choice}" + (f" (measured: {', '.join(parts)})" if parts else "")


def pick_attention(setting: str, device: torch.device, shape: AttnShape | None = None, deterministic: bool = False,
                   measured: dict[str, Any] | None = None) -> str:
    """The attention backend for `setting`, with torch's SDPA flags set for it. CPU: SDPA (`auto` -> "sdpa",
    untimed). CUDA `auto`: the fastest importable backend at `shape` by `time_backend` (its timings go into
    `measured`), or, with no shape or deterministic kernels asked for, fa3 if importable else cuDNN. Distributed:
    rank 0's choice for every rank."""
    if device.type != "cuda":
        return "sdpa" if setting == "auto" else setting
    choice = setting
    if setting == "auto" and (shape is None or deterministic):
        choice = "fa3" if available("fa3") else "cudnn"
    elif setting == "auto":
        box = list(choose([n for n in MEASURED if available(n)], lambda n: time_backend(n, shape, device)))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(box, src=0)
        choice = box[0]
        if measured is not None:
            measured.update(box[1])
    if not available(choice):
        module, package = PACKAGES[choice]
        raise RuntimeError(f"core.attention={choice} but {module} ({package}) is not importable")
    every = choice == "sdpa"  # torch's own dispatch
    torch.backends.cuda.enable_cudnn_sdp(every or choice == "cudnn")
    torch.backends.cuda.enable_flash_sdp(every or choice in ("flash", "cudnn"))
    torch.backends.cuda.enable_mem_efficient_sdp(every or choice == "efficient")
    torch.backends.cuda.enable_math_sdp(every or choice == "math")
    return choice


class NoProgress:
    """The timed loop's live display when there is none; `pgolf train` passes `pgolf.progress.Progress`."""

    def __init__(self, total: int, tokens_per_step: int, cap_ms: float | None) -> None: ...

    def phase(self, name: str) -> None: ...

    def update(self, step: int, elapsed_ms: float, loss: float | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass
class Run:
    config: Config
    registry: Registry
    pm: pluggy.PluginManager
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    run_dir: Path | None = None
    attention: str = "sdpa"
    attention_measured: dict[str, Any] = field(default_factory=dict)  # auto's timings, ms (or the error)
    autocast_dtype: torch.dtype | None = None
    model: Any = None  # the uncompiled module (state dict, hooks)
    train_model: Any = None  # the compiled / DDP-wrapped callable used for training
    eval_model: Any = None
    optimizers: list[Any] = field(default_factory=list)
    byte_tables: Any = None
    val_tokens: Any = None
    val_bytes: Any = None  # per-position byte counts of val_tokens (pg_val_byte_counts), or None: the tables
    tokenizer: Any = None
    state: dict[str, Any] = field(default_factory=dict)  # plugins' per-run state, keyed by plugin name
    progress: Any = NoProgress  # (total, tokens_per_step, cap_ms) -> a display (rank 0 only)
    grad_accum_steps: int = 1
    eval_seq_len: int = 1024
    data_dir: Path | None = None
    tokenizer_path: Path | None = None
    train_files: list[Path] = field(default_factory=list)
    val_files: list[Path] = field(default_factory=list)
    modes: list[Any] = field(default_factory=list)  # core.model.Mode declared by pg_modes, by start fraction
    active_modes: tuple[str, ...] = ()  # the modes entered so far (pg_enter_mode)
    schemes: Any = None  # quantization scheme -> dequantize function (core's + pg_dequantizers)
    code_size: Any = None  # (config, registry) -> code bytes of the submission (core.train.setup sets it)
    _log_path: Path | None = None
    _events_path: Path | None = None

    @property
    def hook(self):
        return self.pm.hook

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def core(self):
        return self.config.core

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def log(self, msg: str, console: bool = True) -> None:
        """A challenge-compatible line to train.log (and the console), on rank 0 only."""
        if not self.master:
            return
        if console:
            print(msg, flush=True)
        if self._log_path is not None:
            with open(self._log_path, "a", encoding="utf-8") as f:
                print(msg, file=f)

    def event(self, kind: str, **fields: Any) -> None:
        """A structured event appended to events.jsonl (rank 0)."""
        if not self.master or self._events_path is None:
            return
        rec = {"event": kind, "time": round(time.time(), 3), **fields}
        with open(self._events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")


def create_run(config: Config, registry: Registry, core_impl: Any, make_dir: bool = True,
               progress: Any = None) -> Run:
    """Set up distributed state, device, the plugin manager and the run directory."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(config.core.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if distributed and not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo", **({"device_id": device} if cuda else {}))
        dist.barrier()
    pm = make_manager(registry, config, core_impl)
    measured: dict[str, Any] = {}
    attention = pick_attention(config.core.attention, device, attention_shape(config.core, world_size),
                               config.core.deterministic, measured)
    if not config.core.run_id:
        config.core.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run = Run(config=config, registry=registry, pm=pm, device=device, rank=rank, world_size=world_size,
              local_rank=local_rank, distributed=distributed, attention=attention, attention_measured=measured,
              autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
              progress=progress if progress is not None and rank == 0 else NoProgress)
    if make_dir:
        run.run_dir = Path(config.core.out_dir) / config.core.run_id
        if run.master:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run.run_dir / "config.json", config.to_json() + "\n")
            run._log_path = run.run_dir / "train.log"
            run._events_path = run.run_dir / "events.jsonl"
    if measured:
        run.log(describe(attention, measured))
        run.event("attention", choice=attention, measured_ms=measured)
    return run
