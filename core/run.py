"""A Run: resolved config, the run's own plugin manager, device, attention backend, distributed setup, paths, logs.

The run directory holds config.json (every value with its source), events.jsonl (one structured event per line),
train.log (challenge-compatible lines) and the artifact."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import torch
import torch.distributed as dist

from core.config import Config, ConfigError
from core.registry import Registry, make_manager


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> int:
    """Write `data` (str: UTF-8) to `path` atomically (a temp file beside it, fsync, rename); returns the bytes."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"  # mode 0666 less the umask (mkstemp's is 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


PACKAGES = {"fa3": ("flash_attn_interface", "flash_attn_3")}  # attention backends with a package of their own


def available(name: str) -> bool:
    """Whether attention backend `name` can run here: fa3 when its module imports, SDPA always."""
    try:
        return name not in PACKAGES or importlib.util.find_spec(PACKAGES[name][0]) is not None
    except (ImportError, ValueError):  # a stand-in module without a spec
        return False


def pick_attention(setting: str, device: torch.device, measure: Callable[[], str | None] = lambda: None) -> str:
    """The attention backend for `setting`, with torch's SDPA flags set for it. CPU: SDPA (`auto` -> "sdpa"). CUDA
    `auto`: `measure()` (the run's `pg_attention_backend`), or when that gives none, fa3 if importable else cuDNN."""
    if device.type != "cuda":
        return "sdpa" if setting == "auto" else setting
    choice = (measure() or ("fa3" if available("fa3") else "cudnn")) if setting == "auto" else setting
    if not available(choice):
        module, package = PACKAGES[choice]
        raise RuntimeError(f"core.attention={choice} but {module} ({package}) is not importable")
    kernels = {"cudnn_sdp": ("cudnn",), "flash_sdp": ("flash", "cudnn"), "mem_efficient_sdp": ("efficient",),
               "math_sdp": ("math",)}  # the SDPA kernels each choice enables; "sdpa": all (torch's own dispatch)
    for kernel, choices in kernels.items():
        getattr(torch.backends.cuda, f"enable_{kernel}")(choice == "sdpa" or choice in choices)
    return choice


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
        dtype = self.autocast_dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=self.device.type, dtype=dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def log(self, msg: str, console: bool = True) -> None:
        """A challenge-compatible line to train.log (and the console), on rank 0 only."""
        if console and self.master:
            print(msg, flush=True)
        if self._log_path is not None:  # rank 0's only
            with open(self._log_path, "a", encoding="utf-8") as f:
                print(msg, file=f)

    def event(self, kind: str, **fields: Any) -> None:
        """A structured event appended to events.jsonl (rank 0)."""
        if self._events_path is not None:  # rank 0's only
            with open(self._events_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}, default=str) + "\n")


def create_run(config: Config, registry: Registry, core_impl: Any, make_dir: bool = True) -> Run:
    """Set up distributed state, device, the plugin manager and the run directory."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(config.core.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if distributed and not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo", **({"device_id": device} if cuda else {}))
        dist.barrier()
    pm = make_manager(registry, config, core_impl)
    if not config.core.run_id:
        config.core.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run = Run(config=config, registry=registry, pm=pm, device=device, rank=rank, world_size=world_size,
              local_rank=local_rank, distributed=distributed,
              autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    if make_dir:
        run.run_dir = Path(config.core.out_dir) / config.core.run_id
        if run.master:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run.run_dir / "config.json", config.to_json() + "\n")
            run._log_path, run._events_path = run.run_dir / "train.log", run.run_dir / "events.jsonl"
    measure = lambda: None if config.core.deterministic else run.hook.pg_attention_backend(run=run)
    run.attention = pick_attention(config.core.attention, device, measure)
    return run
