"""A Run: resolved config, the run's own plugin manager, device and distributed setup, paths and logs.

The run directory holds config.json (every value with its source), events.jsonl (one structured
event per line), train.log (challenge-compatible lines) and the artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import torch
import torch.distributed as dist

from core.config import Config
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
    if setting == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        from core.config import ConfigError

        raise ConfigError([f"core.device={setting} (PGOLF_DEVICE): no CUDA device is available here "
                           "(torch.cuda.is_available() is False); use auto or cpu"])
    if setting == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(setting)


def attention_shape(core: Any, world_size: int) -> Any:
    """The training attention shape: (micro-batch, heads, kv heads, seq len, head dim)."""
    from core.attention import AttnShape

    accum = core.grad_accum_steps or max(1, 8 // world_size)
    batch = max(1, core.train_batch_tokens // (world_size * accum * core.train_seq_len))
    return AttnShape(batch, core.num_heads, core.num_kv_heads, core.train_seq_len, core.model_dim // core.num_heads)


def pick_attention(setting: str, device: torch.device, shape: Any = None, deterministic: bool = False,
                   measured: dict[str, Any] | None = None) -> str:
    """The backend and the SDPA flags for it. CPU: SDPA (`auto` -> "sdpa", untimed). CUDA `auto`: the fastest of
    fa3, fa4, cuDNN and flash SDPA timed at `shape` (core.attention's measure; their timings go into
    `measured`), or, with no shape or deterministic kernels asked for, fa3 if importable else cuDNN.
    Distributed: rank 0's choice for every rank."""
    from core import attention as attn

    if device.type != "cuda":
        return "sdpa" if setting == "auto" else setting
    choice = setting
    if setting == "auto" and (shape is None or deterministic):
        choice = "fa3" if attn.available("fa3") else "cudnn"
    elif setting == "auto":
        choice, timings = attn.measure(shape, device)
        if dist.is_available() and dist.is_initialized():
            box = [choice, timings]
            dist.broadcast_object_list(box, src=0)
            choice, timings = box
        if measured is not None:
            measured.update(timings)
    if choice in ("fa3", "fa4") and not attn.available(choice):
        module = "flash_attn_interface (flash_attn_3)" if choice == "fa3" else "flash_attn.cute (flash-attn-4)"
        raise RuntimeError(f"core.attention={choice} but {module} is not importable")
    from torch.backends import cuda as bc

    every = choice == "sdpa"  # torch's own dispatch
    bc.enable_cudnn_sdp(every or choice == "cudnn")
    bc.enable_flash_sdp(every or choice in ("flash", "cudnn"))
    bc.enable_mem_efficient_sdp(every or choice == "efficient")
    bc.enable_math_sdp(every or choice == "math")
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
    core_impl: Any
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
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(config.core.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        dist.barrier()
    pm = make_manager(registry, config, core_impl)
    measured: dict[str, Any] = {}
    attention = pick_attention(config.core.attention, device, attention_shape(config.core, world_size),
                               config.core.deterministic, measured)
    if not config.core.run_id:
        config.core.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run = Run(
        config=config, registry=registry, pm=pm, core_impl=core_impl, device=device, rank=rank,
        world_size=world_size, local_rank=local_rank, distributed=distributed,
        attention=attention, attention_measured=measured,
        autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
        progress=progress if progress is not None and rank == 0 else NoProgress,
    )
    if make_dir:
        run.run_dir = Path(config.core.out_dir) / config.core.run_id
        if run.master:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run.run_dir / "config.json", config.to_json() + "\n")
            run._log_path = run.run_dir / "train.log"
            run._events_path = run.run_dir / "events.jsonl"
    if measured:
        from core.attention import describe

        run.log(describe(attention, measured))
        run.event("attention", choice=attention, measured_ms=measured)
    return run
