"""The trainer as named phases: setup, warm-up and restore, timed loop, finish and calibrate, export, final eval.

The official baseline `train_gpt.py` step for step (token order, schedule, warm-up with state restore, wall-clock
cap, export with a verified round trip); plugin hooks run only at build time and at step and phase boundaries."""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import math
import os
import random
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from core import export as ex
from core.config import Config, ConfigError
from core.data import DataError, DistributedTokenLoader, data_directory, load_validation_tokens, shard_files
from core.hookspecs import hookimpl
from core.model import GPT, ModelSpec, cast_for_training
from core.optim import Muon, default_param_groups, make_default_optimizer, zeropower_via_newtonschulz5
from core.registry import Registry
from core.run import Run, create_run, write_atomic
from core.scoring import EvalResult, PlainEvaluator, evaluate, prepare_eval, restored_weights
from core.tokenizer import build_byte_tables, check_position_bytes, load_tokenizer


class CoreDefaults:
    """The core's answers to the single-provider hooks, registered `trylast` so plugins win."""

    def __init__(self, fused_adam: bool = False):
        self.fused_adam = fused_adam

    @hookimpl(trylast=True)
    def pg_make_optimizer(self, group: str, params: list[Any], config: Config) -> Any:
        return make_default_optimizer(group, params, config.core, fused=self.fused_adam)

    @hookimpl(trylast=True)
    def pg_byte_tables(self, run: Run, tokenizer: Any) -> Any:
        return build_byte_tables(tokenizer, run.core.vocab_size)

    @hookimpl(trylast=True)
    def pg_evaluator(self, run: Run) -> Any:
        return plain_evaluator(run)


@dataclass
class Clock:
    """What `pg_before_step` sees and may change."""

    step: int
    elapsed_ms: float
    frac: float
    lr_mul: float
    muon_momentum: float


def plain_evaluator(run: Run) -> PlainEvaluator:
    """The baseline's non-overlapping evaluation; document-masked at `core.bos_id` with `core.eval_doc_mask`."""
    batch_tokens = max(run.core.val_batch_size // (run.world_size * run.grad_accum_steps), run.eval_seq_len)
    return PlainEvaluator(run.eval_seq_len, batch_tokens, bos_id=run.core.bos_id if run.core.eval_doc_mask else None)


def resolve_data(run: Run) -> tuple[Path, Path]:
    """(data_dir, tokenizer_path); without `core.tokenizer_path` the tokenizer is `<data>/tokenizer/*.model`,
    else the challenge's `<data>/../../tokenizers/fineweb_<vocab>_bpe.model`."""
    core = run.core
    if not core.data_path:
        raise DataError("core.data_path is empty: set DATA_PATH / --data (the pgolf command line fills in the "
                        "embedded default corpus)")
    data_dir = data_directory(core.data_path)
    if core.tokenizer_path:
        return data_dir, Path(core.tokenizer_path)
    challenge = data_dir.parent.parent / "tokenizers" / f"fineweb_{core.vocab_size}_bpe.model"
    for candidate in [*sorted((data_dir / "tokenizer").glob("*.model")), challenge]:
        if candidate.is_file():
            return data_dir, candidate
    raise DataError(f"no tokenizer found for data path {data_dir}: looked in {data_dir / 'tokenizer'} and "
                    f"{challenge} (set TOKENIZER_PATH / core.tokenizer_path)")


def build_model(run: Run) -> GPT:
    """Core model (baseline init order) -> plugin parts -> plugin init -> dtype policy."""
    spec = ModelSpec.from_core(run.core)
    spec.attention = "fa3" if run.attention == "fa3" else "sdpa"
    model = GPT(spec, lambda slot: _as_modules(run.hook.pg_slot_parts(slot=slot, spec=spec, layer=None)),
                lambda where: run.hook.pg_model_modules(where=where, spec=spec))
    install_parts(run, model, spec)
    run.hook.pg_edit_model(model=model, spec=spec, config=run.config)
    run.hook.pg_init_weights(model=model, config=run.config)
    return cast_for_training(model, run.device)


def _as_modules(results: list[Any]) -> list[nn.Module]:
    """A hook's answers (a module, a list of them, or None each) as one flat list."""
    return [m for r in results if r is not None for m in (r if isinstance(r, (list, tuple)) else [r])]


LIST_SLOTS_LAYER = {"attn_out": "out_parts", "value": "value_parts"}  # slot -> list on block.attn
REPLACE_SLOTS_LAYER = {"mlp": "block", "attn_norm": "block", "mlp_norm": "block", "residual": "block",
                       "rotary": "attn", "attention": "attn"}  # slot -> owner of the attribute
REPLACE_SLOTS_MODEL = ("skip_merge", "loss")


def install_parts(run: Run, model: GPT, spec: ModelSpec) -> None:
    """Fill the per-layer and per-model slots: `pg_slot_parts` (lists), `pg_build_slot` (replacements)."""
    hook = run.hook
    for i, block in enumerate(model.blocks):
        for slot, attr in LIST_SLOTS_LAYER.items():
            getattr(block.attn, attr).extend(_as_modules(hook.pg_slot_parts(slot=slot, spec=spec, layer=i)))
        for slot, owner in REPLACE_SLOTS_LAYER.items():
            if (module := hook.pg_build_slot(slot=slot, spec=spec, layer=i)) is not None:
                setattr(block if owner == "block" else block.attn, slot, module)
    if (schedule := hook.pg_build_slot(slot="schedule", spec=spec, layer=None)) is not None:
        model.set_schedule(schedule)
    spec.skip_count = model.skip_weights.size(0)
    for slot in REPLACE_SLOTS_MODEL:
        if (module := hook.pg_build_slot(slot=slot, spec=spec, layer=None)) is not None:
            setattr(model, slot, module)


def make_optimizers(run: Run, model: nn.Module) -> list[torch.optim.Optimizer]:
    groups = default_param_groups(model)
    run.hook.pg_param_groups(model=model, groups=groups, config=run.config)
    optimizers = []
    for name, params in ((name, params) for name, params in groups.items() if params):
        opt = run.hook.pg_make_optimizer(group=name, params=params, config=run.config)
        if opt is None:
            raise ConfigError([f"no plugin makes an optimizer for parameter group {name!r}"])
        if isinstance(opt, Muon) and run.device.type == "cuda":
            opt.zeropower = _compiled_zeropower()
        optimizers.append(opt)
    return optimizers


@functools.cache
def _compiled_zeropower() -> Any:
    return torch.compile(zeropower_via_newtonschulz5, dynamic=False)  # one graph per (batched) shape


def should_compile(run: Run) -> bool:
    return bool({"auto": run.device.type == "cuda", "true": 1, "1": 1, "yes": 1, "on": 1}.get(run.core.compile.lower()))


CodeSize = Callable[[Config, Registry], int]  # (config, registry) -> the submission's code bytes
CHECK_LOSS_EVERY_STEP_OFF_GPU = True  # False: the loop's CUDA path, syncs on logging steps only (tests)


def code_bytes(run: Run) -> int:
    """The code size this run counts against the cap: `run.code_size(config, registry)`, 0 when not given."""
    return 0 if run.code_size is None else run.code_size(run.config, run.registry)


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; the run stops before exporting anything."""


def setup(config: Config, registry: Registry, make_dir: bool = True, code_size: CodeSize | None = None) -> Run:
    """Everything before the loop: run, data, tokenizer tables, model, optimizers. `code_size` counts the
    submission's code bytes (a bundled script passes its own size, `pgolf train` the bundle's; core counts no
    code itself)."""
    cuda = torch.cuda.is_available() and config.core.device != "cpu"
    run = create_run(config, registry, CoreDefaults(fused_adam=cuda), make_dir=make_dir)
    run.code_size = code_size
    run.schemes = {**ex.SCHEMES, **{k: v for d in run.hook.pg_dequantizers() if d for k, v in d.items()}}
    core = run.core
    run.grad_accum_steps = core.grad_accum_steps or max(1, 8 // run.world_size)
    if core.grad_accum_steps == 0 and 8 % run.world_size != 0:
        raise ConfigError([f"WORLD_SIZE={run.world_size} must divide 8 (or set PGOLF_GRAD_ACCUM_STEPS)"])
    run.eval_seq_len = core.eval_seq_len or core.train_seq_len
    run.data_dir, run.tokenizer_path = resolve_data(run)
    run.train_files, run.val_files = shard_files(run.data_dir, "train"), shard_files(run.data_dir, "val")
    run.tokenizer = load_tokenizer(run.tokenizer_path, core.vocab_size)
    run.byte_tables = run.hook.pg_byte_tables(run=run, tokenizer=run.tokenizer).to(run.device)
    val = load_validation_tokens(run.val_files, run.eval_seq_len, core.vocab_size)
    if core.val_max_tokens > 0:  # at least one eval sequence (core_errors)
        val = val[: min(val.numel() - 1, core.val_max_tokens // run.eval_seq_len * run.eval_seq_len) + 1]
    run.val_tokens = val
    counts = run.hook.pg_val_byte_counts(run=run, tokens=val)
    run.val_bytes = None if counts is None else check_position_bytes(counts, val, "pg_val_byte_counts").to(run.device)
    if core.deterministic:  # reproducible kernels where the backend has them (the schedule: Budget.of)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    random.seed(core.seed)
    np.random.seed(core.seed)
    torch.manual_seed(core.seed)  # every device's generator
    run.model = build_model(run)
    if should_compile(run):  # a graph per mode x batch shape x grad mode + eval shapes: past dynamo's 8 (PR #1855: 64)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(run.model, dynamic=False, fullgraph=True) if should_compile(run) else run.model
    run.eval_model = run.train_model = compiled
    run.optimizers = make_optimizers(run, run.model)
    if run.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        own = {id(p) for o in run.optimizers if getattr(o, "reduces_own_grads", False)  # e.g. parallel_muon's
               for g in o.param_groups for p in g["params"]}
        DDP._set_params_and_buffers_to_ignore_for_model(compiled, [n for n, p in compiled.named_parameters()
                                                                    if id(p) in own])
        for p in compiled.parameters():  # an empty one (1 layer: no skips) never gets the gradient DDP waits for
            p.requires_grad_(p.requires_grad and p.numel() > 0)
        run.train_model = DDP(compiled, device_ids=[run.local_rank] if run.device.type == "cuda" else None,
                              broadcast_buffers=False)
    run.modes = sorted((m for modes in run.hook.pg_modes(config=run.config) if modes for m in modes),
                       key=lambda m: m.start_frac)  # the order they switch on
    return run


def new_loader(run: Run) -> Any:
    loader = run.hook.pg_train_loader(run=run)
    return loader or DistributedTokenLoader(run.train_files, run.rank, run.world_size, run.device,
                                            vocab_size=run.core.vocab_size)


@dataclass
class Budget:
    """`total_ms`: MAX_WALLCLOCK_SECONDS (None: uncapped); `loop_ms`: what the timed loop and its warmdown may
    use (total less the `pg_train_reserve_seconds` kept for calibration)."""

    total_ms: float | None
    loop_ms: float | None
    reserve_s: float = 0.0

    @classmethod
    def of(cls, run: Run) -> Budget:
        core = run.core
        capped = core.max_wallclock_seconds > 0 and not core.deterministic  # deterministic: by iterations
        total = 1000.0 * core.max_wallclock_seconds if capped else None
        reserve_s = float(sum(r for r in run.hook.pg_train_reserve_seconds(config=run.config) if r))
        loop = total
        if reserve_s > 0 and total is not None:
            loop = max(total - 1000.0 * reserve_s, 0.0)
            run.log(f"calibration:reserving {reserve_s:.1f}s, effective={loop:.0f}ms")
        return cls(total_ms=total, loop_ms=loop, reserve_s=reserve_s)

    def lr_mul(self, core: Any, step: int, elapsed_ms: float) -> float:
        """The baseline's warmdown: linear to zero over the last `warmdown_iters` steps (by iterations when
        uncapped, else over the wall-clock time those steps are projected to take)."""
        if core.warmdown_iters <= 0:
            return 1.0
        if self.loop_ms is None:
            in_warmdown = max(core.iterations - core.warmdown_iters, 0) <= step < core.iterations
            return max((core.iterations - step) / max(core.warmdown_iters, 1), 0.0) if in_warmdown else 1.0
        warmdown_ms = core.warmdown_iters * elapsed_ms / max(step, 1)
        remaining_ms = max(self.loop_ms - elapsed_ms, 0.0)
        return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


class Stepper:
    """One optimizer step: zero grads, forward/backward over the micro-batches, optimizer steps. A batch is built
    while the device runs the previous backward, the next step's first after this step's last (`prefetch`): a step
    after a sync (logged loss, the cap's all-reduce) waits for no host work. The loader's order is unchanged."""

    def __init__(self, run: Run):
        self.run, self.model, self.prefetch = run, run.train_model, True
        self.ahead: tuple[Any, tuple[int, int, int], Any] | None = None  # (loader, next_batch args, its next batch)

    def zero_grad(self) -> None:
        for opt in self.run.optimizers:
            opt.zero_grad(set_to_none=True)

    def forward_backward(self, loader: Any) -> torch.Tensor:
        """Mean training loss over the micro-batches (a device tensor; gradients accumulated)."""
        run, core = self.run, self.run.core
        args = (core.train_batch_tokens, core.train_seq_len, run.grad_accum_steps)
        ahead, self.ahead = self.ahead, None
        batch = ahead[2] if ahead and ahead[0] is loader and ahead[1] == args else loader.next_batch(*args)
        total = torch.zeros((), device=run.device)
        for micro in range(run.grad_accum_steps):
            if run.distributed:
                self.model.require_backward_grad_sync = micro == run.grad_accum_steps - 1
            x, y, *docs = batch
            with run.autocast():  # docs: (), (doc_ids,) or (doc_ids, cu_seqlens)
                loss = self.model(x, y, **dict(zip(("doc_ids", "cu_seqlens"), docs, strict=False)))
            total += loss.detach()
            (loss * (1.0 / run.grad_accum_steps)).backward()  # the count `pg_before_warmup` left
            if self.prefetch or micro + 1 < run.grad_accum_steps:
                batch = loader.next_batch(*args)
        self.ahead = (loader, args, batch) if self.prefetch else None
        return total / run.grad_accum_steps

    def optimizer_step(self) -> None:
        for opt in self.run.optimizers:
            opt.step()
        self.zero_grad()


def log_run_header(run: Run) -> int:
    """The run's opening log lines (the baseline's, plus pgolf's); returns the parameter count."""
    core = run.core  # below: a view into a larger parameter (a row of a parallel_muon bank) is counted there
    n_params = sum(p.numel() for p in run.model.parameters() if p.untyped_storage().nbytes() == p.nbytes)
    run.log(f"run_dir:{run.run_dir}")
    run.log(f"plugins:{','.join(run.config.plugins) or 'none'}")
    run.log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={run.tokenizer_path}")
    run.log(f"train_loader:dataset:{run.data_dir.name} train_shards:{len(run.train_files)}")
    run.log(f"val_loader:shards pattern={run.data_dir}/fineweb_val_*.bin tokens:{run.val_tokens.numel() - 1}")
    run.log(f"model_params:{n_params}")
    run.log(f"world_size:{run.world_size} grad_accum_steps:{run.grad_accum_steps}")
    run.log(f"device:{run.device} attention_backend:{run.attention} compiled:{should_compile(run)}")
    run.log(f"train_batch_tokens:{core.train_batch_tokens} train_seq_len:{core.train_seq_len} "
            f"iterations:{core.iterations} warmup_steps:{core.warmup_steps} "
            f"max_wallclock_seconds:{core.max_wallclock_seconds:.3f}")
    if core.deterministic:
        run.log("deterministic:true schedule:iterations (the wall-clock cap is not applied) kernels:deterministic")
    if run.modes:
        run.log("modes:" + ",".join(f"{m.name}@{m.start_frac:g}" for m in run.modes))
    run.log(f"seed:{core.seed}")
    run.event("start", params=n_params, plugins=run.config.plugins, device=str(run.device),
              attention=run.attention, world_size=run.world_size)
    return n_params


def warmup_and_restore(run: Run, stepper: Stepper) -> None:
    """The baseline's compile warm-up: `warmup_steps` real steps, then (compiled) one step in every cumulative
    mode combination and on every batch shape the loader declares (`warm_batches`, in every mode); then weights,
    optimizer state and modes are restored. Each logged step gives the seconds and graphs compiled so far."""
    run.hook.pg_before_warmup(run=run, stepper=stepper)  # e.g. fewer micro-steps: before any shape is compiled
    core, base = run.core, run.model
    batch_args = (core.train_batch_tokens, core.train_seq_len, run.grad_accum_steps)
    modes = run.modes if should_compile(run) else []
    loader = new_loader(run)
    shapes = getattr(loader, "warm_batches", None) if should_compile(run) else None
    if core.warmup_steps <= 0 and not modes and shapes is None:
        return
    batches = shapes(*batch_args) if shapes else []
    run.log(f"warmup_plan:steps:{core.warmup_steps} modes:{len(modes)} batch_shapes:{len(batches)}x{len(modes) + 1}")
    t0, graphs, n = time.perf_counter(), compiled_graph_count(), core.warmup_steps

    def step(label: str | None, source: Any = loader) -> None:  # a whole step, no schedule or hooks
        stepper.zero_grad()
        stepper.forward_backward(source)
        stepper.optimizer_step()
        if label:
            run.synchronize()
            run.log(f"{label} time:{time.perf_counter() - t0:.1f}s graphs:{compiled_graph_count() - graphs}")

    with restored_weights(base, run.optimizers):
        run.train_model.train()
        with torch.no_grad(), run.autocast():  # prime module caches (rotary tables) at the training length before the
            # first trace, else it recompiles at once: one eager forward on a (packed) row of the first batch of its
            # own loader, so the warm-up reads batches 1..N
            run.model(new_loader(run).next_batch(*batch_args)[0][:1])
        for w in range(n):
            step(f"warmup_step:{w + 1}/{n}" if n <= 20 or (w + 1) % 10 == 0 or w + 1 == n else None)
        for i, mode in enumerate(modes):  # each mode's graph is compiled now, never inside the timed loop
            set_modes(run, tuple(m.name for m in modes[: i + 1]))
            step(f"warmup_mode:{mode.name}")
        if shapes:  # the loader's batch shapes (e.g. cu_seqlens sizes), in every mode
            for k, (i, batch) in itertools.product(range(len(modes) + 1), enumerate(batches)):
                set_modes(run, tuple(m.name for m in modes[:k]))
                dims = ",".join("x".join(map(str, t.shape)) for t in batch)
                step(f"warmup_shape:{i + 1}/{len(batches)} mode:{'+'.join(run.active_modes) or 'base'} batch:{dims}",
                     SimpleNamespace(next_batch=lambda *_, b=batch: b))
        if modes:  # and back to the base mode, as the timed loop starts there
            set_modes(run, ())
            step("warmup_mode:base")
    stepper.zero_grad()
    if run.distributed:
        run.train_model.require_backward_grad_sync = True


def set_modes(run: Run, active: tuple[str, ...]) -> None:
    """Make `active` the model's modes (those whose start fraction has passed) through `pg_enter_mode`."""
    run.active_modes = active
    run.hook.pg_enter_mode(model=run.model, active=active)


def compiled_graph_count() -> int:
    """Graphs torch.compile has produced in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


LoopResult = namedtuple("LoopResult", "steps train_time_ms last_val_bpb", defaults=(None,))  # what timed_loop returns


def timed_loop(run: Run, stepper: Stepper, budget: Budget, progress: Any = None) -> LoopResult:
    """The measured loop (baseline semantics): validation every `val_loss_every` steps and at the end, the
    schedule (warmdown, Muon momentum warm-up, modes by training fraction), the wall-clock cap. `progress` makes
    rank 0's live display, `progress(total, tokens_per_step, cap_ms)`, with `phase(name)`, `update(step,
    elapsed_ms, loss)` and `close()` (`pgolf.progress.Progress`); without one, step lines go to the console."""
    core, base = run.core, run.model
    pending_modes = list(run.modes)
    loader = new_loader(run)
    run.hook.pg_train_start(run=run)
    evaluator_plain = plain_evaluator(run)
    display = progress(core.iterations, core.train_batch_tokens, budget.loop_ms) if progress and run.master else None
    check_every_step = CHECK_LOSS_EVERY_STEP_OFF_GPU and run.device.type != "cuda"  # costs nothing off-GPU
    graphs_at_start, eval_graphs = compiled_graph_count(), 0  # validation shapes compile apart from training
    step, training_time_ms, last_val_bpb, stop_after_step = 0, 0.0, None, None
    run.synchronize()
    t0 = time.perf_counter()
    while True:
        last_step = step == core.iterations or (stop_after_step is not None and step >= stop_after_step)
        if last_step or (core.val_loss_every > 0 and step % core.val_loss_every == 0):
            run.synchronize()
            training_time_ms += 1000.0 * (time.perf_counter() - t0)
            if display:
                display.phase(f"validating at step {step}")
            graphs_before_eval = compiled_graph_count()
            res = evaluate(run, run.eval_model, evaluator_plain, run.val_tokens)
            eval_graphs += compiled_graph_count() - graphs_before_eval
            last_val_bpb = res.val_bpb
            if display:
                display.phase("train")
            run.log(f"step:{step}/{core.iterations} val_loss:{res.val_loss:.4f} val_bpb:{res.val_bpb:.4f} "
                    f"train_time:{training_time_ms:.0f}ms step_avg:{training_time_ms / max(step, 1):.2f}ms")
            run.event("val", step=step, val_loss=res.val_loss, val_bpb=res.val_bpb, train_time_ms=training_time_ms)
            run.synchronize()
            t0 = time.perf_counter()
        if last_step:
            if stop_after_step is not None and step < core.iterations:
                run.log(f"stopping_early: wallclock_cap train_time:{training_time_ms:.0f}ms "
                        f"step:{step}/{core.iterations}")
            break

        elapsed_ms = training_time_ms + 1000.0 * (time.perf_counter() - t0)
        clock = make_clock(run, budget, step, elapsed_ms)
        while pending_modes and clock.frac >= pending_modes[0].start_frac:
            mode = pending_modes.pop(0)
            set_modes(run, (*run.active_modes, mode.name))
            run.log(f"mode:{mode.name} on step:{step} frac:{clock.frac:.3f}")
            run.event("mode", mode=mode.name, step=step, frac=clock.frac)
        stepper.zero_grad()
        train_loss = stepper.forward_backward(loader)
        loss_now = finite_loss(run, display, step + 1, train_loss) if check_every_step else None
        run.hook.pg_before_step(run=run, step=step, clock=clock)
        for opt in run.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * clock.lr_mul
                if isinstance(opt, Muon):
                    group["momentum"] = clock.muon_momentum
        if core.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(base.parameters(), core.grad_clip_norm)
        stepper.optimizer_step()
        step += 1
        run.hook.pg_after_step(run=run, step=step)
        approx_ms = training_time_ms + 1000.0 * (time.perf_counter() - t0)
        if core.train_log_every > 0 and (step <= 10 or step % core.train_log_every == 0 or stop_after_step is not None):
            if loss_now is None:
                loss_now = finite_loss(run, display, step, train_loss)
            run.log(f"step:{step}/{core.iterations} train_loss:{loss_now:.4f} train_time:{approx_ms:.0f}ms "
                    f"step_avg:{approx_ms / step:.2f}ms", console=display is None)
            run.event("step", step=step, train_loss=loss_now, train_time_ms=approx_ms, lr_mul=clock.lr_mul)
        if display:
            display.update(step, approx_ms, loss_now)
        if stop_after_step is None and reached_cap(run, budget, approx_ms):
            stop_after_step = step
    if display:
        display.close()
    recompiles = compiled_graph_count() - graphs_at_start - eval_graphs
    run.log(f"timed_loop_recompiles:{recompiles}")
    run.event("train_end", steps=step, train_time_ms=training_time_ms, recompiles=recompiles)
    if run.device.type == "cuda":
        run.log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 1024 // 1024} MiB "
                f"reserved: {torch.cuda.max_memory_reserved() // 1024 // 1024} MiB")
    return LoopResult(steps=step, train_time_ms=training_time_ms, last_val_bpb=last_val_bpb)


def finite_loss(run: Run, display: Any, step: int, train_loss: torch.Tensor) -> float:
    """The training loss at `step` as a float (a host sync); if it is not finite, close the progress
    `display` (if any), log why and raise TrainingDiverged."""
    loss = float(train_loss.item())
    if math.isfinite(loss):
        return loss
    if display:
        display.close()
    msg = (f"training diverged: train_loss is {loss} at step {step}; stopped before export, nothing written "
           "(lower the learning rates, e.g. core.matrix_lr, or set core.grad_clip_norm)")
    run.log(f"stopping: {msg}")
    run.event("diverged", step=step, train_loss=str(loss))
    raise TrainingDiverged(msg)


def make_clock(run: Run, budget: Budget, step: int, elapsed_ms: float) -> Clock:
    core, warm = run.core, run.core.muon_momentum_warmup_steps
    frac_m = min(step / warm, 1.0) if warm > 0 else 1.0
    frac = elapsed_ms / budget.loop_ms if budget.loop_ms else step / core.iterations
    return Clock(step=step, elapsed_ms=elapsed_ms, frac=min(max(frac, step / core.iterations), 1.0),
                 lr_mul=budget.lr_mul(core, step, elapsed_ms),
                 muon_momentum=(1 - frac_m) * core.muon_momentum_warmup_start + frac_m * core.muon_momentum)


def reached_cap(run: Run, budget: Budget, elapsed_ms: float) -> bool:
    """Whether the loop's wall-clock budget is spent (any rank's clock decides for all)."""
    if budget.loop_ms is None:
        return False
    reached = elapsed_ms >= budget.loop_ms
    if run.distributed:
        flag = torch.tensor(int(reached), device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        reached = bool(flag.item())
    return reached


def finish_and_calibrate(run: Run, loop: LoopResult, budget: Budget) -> float:
    """`pg_train_end` (averaged weights loaded), then `pg_calibrate`, timed as training; its milliseconds."""
    run.hook.pg_train_end(run=run, model=run.model)
    if not run.hook.pg_calibrate.get_hookimpls():
        return 0.0
    run.synchronize()
    t0 = time.perf_counter()
    run.hook.pg_calibrate(run=run, model=run.model)
    run.synchronize()
    calibration_ms = 1000.0 * (time.perf_counter() - t0)
    total_ms = loop.train_time_ms + calibration_ms
    run.log(f"calibration time:{calibration_ms:.0f}ms train_time_with_calibration:{total_ms:.0f}ms")
    run.event("calibration", calibration_ms=calibration_ms, train_time_ms=total_ms, reserve_s=budget.reserve_s)
    if budget.total_ms is not None and total_ms > budget.total_ms:
        run.log(f"calibration:over_budget train_time_with_calibration:{total_ms:.0f}ms > "
                f"{budget.total_ms:.0f}ms (raise the reserve)")
    return calibration_ms


def train(run: Run, progress: Any = None) -> dict[str, Any]:
    """The phases after setup, in order; writes metrics.json. `progress`: the timed loop's live display."""
    n_params = log_run_header(run)
    budget = Budget.of(run)
    stepper = Stepper(run)
    warmup_and_restore(run, stepper)
    loop = timed_loop(run, stepper, budget, progress)
    calibration_ms = finish_and_calibrate(run, loop, budget)
    summary = final_eval(run, *export_artifact(run))
    summary.update(steps=loop.steps, train_time_ms=loop.train_time_ms + calibration_ms,
                   loop_train_time_ms=loop.train_time_ms, calibration_ms=calibration_ms, params=n_params)
    if loop.last_val_bpb is not None and summary["val_bpb"] > loop.last_val_bpb + 0.01:
        run.log(f"note: final val_bpb {summary['val_bpb']:.4f} vs {loop.last_val_bpb:.4f} at the last step: the "
                "final model is the exported one, after the train-end hooks (weight averaging) and quantization; a "
                "short run's average lags its live weights")
    if bad := [k for k in ("val_loss", "val_bpb") if not math.isfinite(summary[k])]:
        raise TrainingDiverged(f"final evaluation: {bad[0]} is {summary[bad[0]]} (non-finite); metrics.json not "
                               "written and the run is not a result")
    if run.master and run.run_dir is not None:
        write_atomic(run.run_dir / "metrics.json", json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
    return summary


def export_artifact(run: Run) -> tuple[str, dict[str, Any]]:
    """Quantize -> refine -> compress -> write the artifact -> decode and verify it, then load the round-tripped
    weights into the model. Returns the artifact's label ("int8+zlib") and the size fields."""
    cfg = run.config
    codec, layout = run.hook.pg_codec(config=cfg), run.hook.pg_state_codec(config=cfg)
    state = dict(run.model.state_dict())
    n_code = code_bytes(run)
    quantize = lambda name, t: run.hook.pg_quantize_tensor(name=name, tensor=t, config=cfg)
    ctx = ex.RefineContext(size_of=ex.artifact_sizer(codec, "int8", layout), code_bytes=n_code, config=cfg,
                           float_state=state)
    result = ex.export_state_dict(state, [quantize], codec, quantizer_name=None, schemes=run.schemes,
                                  refine=lambda qstate: run.hook.pg_refine_quantized(qstate=qstate, ctx=ctx),
                                  state_codec=layout)
    label, n_model = f"{result.quantizer_name}+{result.codec_name}", len(result.blob)
    fields: dict[str, Any] = {"code_bytes": n_code, "model_bytes": n_model}
    if run.master and run.run_dir is not None:
        write_atomic(run.run_dir / "final_model.ptz", result.blob)
        run.log(f"Serialized model {label}: {n_model} bytes "
                f"(payload:{result.payload_bytes} raw_torch:{result.raw_bytes})")
        run.log(f"Code size: {n_code} bytes")
        run.log(f"Total submission size {label}: {n_model + n_code} bytes")
        run.event("size", label=label, code_bytes=n_code, model_bytes=n_model, total=n_model + n_code)
    restored = ex.verify_round_trip(result, ex.decoders_of(codec, layout), schemes=run.schemes)
    run.model.load_state_dict(restored, strict=True)
    return label, fields


def final_eval(run: Run, label: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the round-tripped model with the run's evaluator (`pg_evaluator`); `fields` plus the results."""
    evaluator = run.hook.pg_evaluator(run=run)
    plan = prepare_eval(run, evaluator)
    run.log(f"eval_warmup:synthetic_tokens mode:{plan.mode} time:{plan.warmup_ms:.0f}ms")
    res: EvalResult = evaluate(run, plan.model, evaluator, run.val_tokens)
    tag = label.replace("+", "_")
    run.log(f"final_{tag}_roundtrip val_loss:{res.val_loss:.4f} val_bpb:{res.val_bpb:.4f} "
            f"eval_time:{res.eval_time_ms:.0f}ms evaluator:{evaluator.name}")
    run.log(f"final_{tag}_roundtrip_exact val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f}")
    run.event("final_eval", evaluator=evaluator.name, val_loss=res.val_loss, val_bpb=res.val_bpb, eval_mode=plan.mode,
              eval_time_ms=res.eval_time_ms, eval_warmup_ms=plan.warmup_ms, tokens=res.tokens, bytes=res.bytes)
    fields.update(val_loss=res.val_loss, val_bpb=res.val_bpb, eval_time_ms=res.eval_time_ms, evaluator=evaluator.name,
                  artifact_label=label, total_bytes=fields["model_bytes"] + fields["code_bytes"])
    run.hook.pg_report(run=run, fields=fields)
    return fields


def run_training(config: Config, registry: Registry, code_size: CodeSize | None = None,
                 progress: Any = None) -> dict[str, Any]:
    with process_group(setup(config, registry, code_size=code_size)) as run:
        return train(run, progress)


@contextlib.contextmanager
def process_group(run: Run) -> Iterator[Run]:
    """The body, then every rank leaves the process group together (DDP holds it: release that first, or gloo aborts
    at exit). A body that raises leaves at once: a barrier would wait for ranks waiting for it in a collective."""
    yield run
    if run.distributed:
        run.train_model = None
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
