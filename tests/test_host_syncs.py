"""Issue #14: no host<->device synchronisation inside the timed training step.

On a GPU a host sync in the step (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`, a boolean-mask index, ...) stalls
the CPU until the GPU drains, so the next step's kernels cannot be queued ahead. CUDA's sync debug mode is not
available on CPU, so these tests find the syncs by *provenance* instead:

- A `TorchFunctionMode` is active through the whole timed loop. It marks as "device-side" every tensor that would
  live on the GPU in a CUDA run: the model's parameters, buffers and gradients, the optimizers' state, tensors held
  by the plugins, anything made with an explicit `device=` other than the literal "cpu" or moved with `.to(device)`
  (the loader's batches), and - propagated - every output of an op that takes a device-side input. Host data stays
  unmarked (numpy token windows, Python counters, `torch.tensor(...)` without a device), so a loader building its
  batch on the host before `.to(device)` is not counted: on CPU every tensor is a CPU tensor, provenance is what
  tells the two apart.
- A sync is a host-reading call on a device-side tensor (`item`, `tolist`, `__bool__`, `__float__`, `__int__`,
  `__index__`, `__format__`, `numpy`, `cpu`, `.to("cpu")`, `equal`, ...) or an op whose output shape depends on
  device data (`nonzero`, `masked_select`, `unique`, a boolean-tensor index).
- They are counted only inside each step's body: from the step's clock (`make_clock`, before the mode switches)
  to the end of the last `pg_after_step` (`pgolf.bench.watch_step_bodies`: the bench's window), and in the cap check
  (`reached_cap`). The logging branch between them syncs by design (the loss is read on logging steps), as does
  validation before the step.
- The one sync left by design: a distributed, capped run's cap check reads the ranks' all-reduced stop flag
  every step (the record's own rule: every rank stops on the same step, decided on GPU-drained clocks);
  `test_distributed_cap_check_is_the_known_sync` pins it.
- `core.train.CHECK_LOSS_EVERY_STEP_OFF_GPU` is turned off, so the loop takes its CUDA path: off the GPU it would
  read the loss (`finite_loss`, an `.item()`) every step, by design.
"""

from __future__ import annotations

import functools
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from core import train as core_train
from core.config import resolve
from core.hookspecs import hookimpl
from core.registry import Registry
from pgolf.bench import watch_step_bodies
from tests.test_seed_recipes import TINY as SEED_TINY

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = Registry()
MARK = "_pg_device_side"

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__", "__format__", "__repr__",
         "__str__", "__array__", "numpy", "cpu", "equal", "allclose", "is_nonzero"}
DYNAMIC_SHAPE = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


def _tensors(x: Any):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def is_device_side(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, MARK, False)


def mark(x: Any) -> None:
    for t in _tensors(x):
        try:
            setattr(t, MARK, True)
        except (AttributeError, RuntimeError):  # e.g. a tensor subclass without a __dict__
            pass


def _cpu_literal(d: Any) -> bool:
    return isinstance(d, str) and d.split(":")[0] == "cpu"


def _device_arg(func: Any, args: tuple, kwargs: dict) -> tuple[bool, Any]:
    """(whether a target device is given, the device) for factories and `.to`."""
    if "device" in kwargs and kwargs["device"] is not None:
        return True, kwargs["device"]
    if _name(func) == "to":
        for a in args[1:]:
            if isinstance(a, (str, torch.device)):
                return True, a
    return False, None


def _where() -> str:
    """The innermost repository frame of the call that synced (file:line (function))."""
    for fr in reversed(traceback.extract_stack()[:-2]):  # less _where and __torch_function__
        p = Path(fr.filename)
        if p.is_relative_to(ROOT) and ".venv" not in p.parts:
            return f"{p.relative_to(ROOT)}:{fr.lineno} ({fr.name})"
    return "?"


class SyncCounter(TorchFunctionMode):
    """Propagates the device-side mark and records the syncs made while `self.open` is set."""

    def __init__(self):
        super().__init__()
        self.open = False
        self.syncs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        inputs = [*_tensors(args), *_tensors(kwargs)]
        device_in = any(is_device_side(t) for t in inputs)
        given, target = _device_arg(func, args, kwargs)
        if self.open and device_in:
            sync = (name in READS or name in DYNAMIC_SHAPE or (name == "to" and given and _cpu_literal(target))
                    or (name == "where" and len(args) + len(kwargs) == 1)
                    or (name in ("__getitem__", "__setitem__", "index_put_", "index_put") and any(
                        t.dtype == torch.bool and is_device_side(t) for t in _tensors(args[1:2])))
                    or (name == "repeat_interleave" and "output_size" not in kwargs
                        and any(is_device_side(t) for t in _tensors(args[1:2]))))
            if sync:
                self.syncs.append(f"{name} at {_where()}")
        out = func(*args, **kwargs)
        if name in READS:  # host values
            return out
        to_host = given and _cpu_literal(target)
        if (device_in and not (name == "to" and to_host)) or (given and not to_host):
            mark(out)
        return out


def seed_marks(run: Any) -> None:
    """What lives on the device in a CUDA run: model parameters, buffers, gradients, optimizer state, and the
    tensors plugins hold (their state, switches, averages)."""
    mark(list(run.model.parameters()))
    mark(list(run.model.buffers()))
    for opt in run.optimizers:
        for state in opt.state.values():
            mark(state)
    for plugin in run.pm.get_plugins():
        for value in getattr(plugin, "__dict__", {}).values():
            mark(value)


def host_syncs_per_step(cfg: Any, monkeypatch, cuda_path: bool = True) -> list[list[str]]:
    """Set up and run the warm-up and the timed loop of `cfg`; each step body's syncs (descriptions)."""
    monkeypatch.setattr(core_train, "CHECK_LOSS_EVERY_STEP_OFF_GPU", not cuda_path)
    counter, per_step = SyncCounter(), []

    def opening() -> None:
        counter.syncs.clear()
        counter.open = True

    def closing() -> None:
        per_step.append(list(counter.syncs))
        counter.syncs.clear()
        counter.open = False

    monkeypatch.setattr(core_train, "reached_cap", functools.partial(cap_check, core_train.reached_cap, counter,
                                                                     per_step))
    run = core_train.setup(cfg, REGISTRY, make_dir=False)
    budget, stepper = core_train.Budget.of(run), core_train.Stepper(run)
    core_train.warmup_and_restore(run, stepper)
    with counter:
        seed_marks(run)
        watch_step_bodies(run, core_train.timed_loop, (stepper, budget), opening, closing)  # the bench's window
    assert len(per_step) == cfg.core.iterations
    return per_step


def cap_check(reached_cap: Any, counter: SyncCounter, per_step: list[list[str]], *args: Any) -> bool:
    """The loop's wall-clock cap check, after the logging branch, counted as part of the step it follows."""
    counter.open = True
    try:
        return reached_cap(*args)
    finally:
        counter.open = False
        per_step[-1].extend(counter.syncs)
        counter.syncs.clear()


def report(per_step: list[list[str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for syncs in per_step:
        for s in syncs:
            out[s] = out.get(s, 0) + 1
    return out


# --- the detector itself ------------------------------------------------------------------------------------------


def test_counter_flags_reads_of_device_side_tensors_and_not_host_data():
    counter = SyncCounter()
    w = torch.ones(3, requires_grad=True)
    host = torch.arange(4)
    with counter:
        mark(w)
        counter.open = True
        loss = (w * 2).sum()
        host.tolist(), int(host[0]), torch.from_numpy(host.numpy()).to(torch.device("cpu"))  # host data: free
        moved = torch.arange(3).to(torch.device("cpu"))  # a batch moved to the run's device is device-side
        loss.item()
        bool(loss > 0)
        moved[moved > 0]
        torch.zeros(2, device=torch.device("cpu")).nonzero()
        loss.detach().to("cpu")
        torch.where(loss > 0, loss, -loss)  # no sync: stays on the device
    names = [s.split(" at ")[0] for s in counter.syncs]
    assert names == ["item", "__bool__", "__getitem__", "nonzero", "to"], counter.syncs


# --- every recipe and every plugin with per-step work ---------------------------------------------------------------

RECIPE_TINY = {  # pr534/pr609: test_seed_recipes' tiny settings; pr1855 adds its TTT sizes
    **{k: SEED_TINY[k] for k in ("pr534", "pr609")},
    "baseline": [],
    "pr315": ["core.eval_seq_len=64", "sliding_window.stride=32", "bigram_hash.buckets=64", "bigram_hash.dim=16"],
    "pr1493": ["core.num_layers=6", "core.eval_seq_len=64", "depth_recurrence.loop_start=1",
               "depth_recurrence.loop_end=2", "depth_recurrence.enable_at=0.3", "parallel_residuals.start=4",
               "xsa.last_n=6", "partial_rope.dims=8", "gptq.calib_batches=2", "gptq.reserve_seconds=0",
               "gptq.keep_float_max_numel=0", "score_first_ttt.chunk_tokens=1024", "score_first_ttt.stride=32"],
    "pr1855": ["core.num_layers=4", "xsa.last_n=4", "partial_rope.dims=8", "depth_recurrence.loop_start=1",
               "depth_recurrence.loop_end=2", "depth_recurrence.num_loops=1", "parallel_lanes.start=3",
               "sparse_attn_gate.window=8", "smeargate.gate_window=8", "gptq.calib_batches=2",
               "gptq.reserve_seconds=0", "gptq.keep_float_max_numel=0", "lqer.top_k=2", "lqer.rank=2",
               "phased_ttt.rank=4", "phased_ttt.chunk_tokens=16", "phased_ttt.batch_docs=4",
               "phased_ttt.prefix_docs=2", "phased_ttt.global_chunk_tokens=256", "core.eval_seq_len=64"],
}
LOOP = ["core.train_log_every=1000"]  # logging steps' syncs are outside the window anyway


@pytest.mark.parametrize("name", sorted(RECIPE_TINY))
def test_recipe_step_makes_no_host_sync(name, tiny_sets, tiny_caseops_data, monkeypatch):
    sets = [*tiny_sets, *LOOP, "core.iterations=6", "core.warmdown_iters=3", *RECIPE_TINY[name]]
    if name == "pr1855":
        sets = [*(s for s in sets if not s.startswith("core.data_path=")), f"core.data_path={tiny_caseops_data[0]}"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), recipe=ROOT / "recipes" / f"{name}.toml",
                  sets=sets, check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    assert report(host_syncs_per_step(cfg, monkeypatch)) == {}


STEP_HOOKS = ("pg_before_step", "pg_after_step", "pg_make_optimizer", "pg_train_loader", "pg_enter_mode",
              "pg_train_start")
STEP_PLUGINS = sorted(n for n, cls in REGISTRY.plugins.items() if any(hasattr(cls, h) for h in STEP_HOOKS))


def test_per_step_plugins_are_listed():
    assert {"ema", "swa", "late_qat", "parallel_muon", "muon_eq_r", "doc_packing", "depth_recurrence"} <= set(
        STEP_PLUGINS)


@pytest.mark.parametrize("name", STEP_PLUGINS)
def test_plugin_step_makes_no_host_sync(name, tiny_sets, request, monkeypatch):
    check_plugin(name, tiny_sets, request, monkeypatch)


OTHER_PLUGINS = sorted(set(REGISTRY.names()) - set(STEP_PLUGINS))


@pytest.mark.parametrize("name", OTHER_PLUGINS)
def test_other_plugins_step_makes_no_host_sync(name, tiny_sets, tiny_core, request, monkeypatch):
    """The plugins without step hooks still run in the step (model parts, losses): counted in one run of the
    plugin matrix's compatible set holding `name` (5 runs for the ~40 plugins, each run once a session); only when
    that set syncs, `name` alone (its companions and test settings), so the failure names the plugin."""
    from test_plugin_matrix import compatible_sets

    plugins, settings = next(s for s in compatible_sets(tuple(tiny_core)) if name in s[0])
    if set_syncs(tuple(plugins), tuple(settings), tiny_sets, request, monkeypatch):
        check_plugin(name, tiny_sets, request, monkeypatch)


_SET_SYNCS: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, int]] = {}


def set_syncs(plugins: tuple[str, ...], settings: tuple[str, ...], tiny_sets, request, monkeypatch) -> dict[str, int]:
    """The syncs of one run of a compatible set of plugins with their merged test settings (run once a session)."""
    from test_plugin_matrix import data_for

    if (plugins, settings) not in _SET_SYNCS:
        sets = [*data_for(request, tiny_sets, plugins), *LOOP, *settings]
        cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=list(plugins), sets=sets,
                      check_plugins=REGISTRY.check)
        _SET_SYNCS[(plugins, settings)] = report(host_syncs_per_step(cfg, monkeypatch))
    return _SET_SYNCS[(plugins, settings)]


def check_plugin(name, tiny_sets, request, monkeypatch):
    """`name` with its companions and test settings (the plugin matrix's tiny run): no host sync in any step."""
    from test_plugin_matrix import companion_settings, data_for, settings_of, with_companions

    plugins = with_companions(name)
    sets = [*data_for(request, tiny_sets, plugins), *LOOP, *companion_settings(name), *settings_of(name)]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=sets,
                  check_plugins=REGISTRY.check)
    assert report(host_syncs_per_step(cfg, monkeypatch)) == {}


class Syncing:
    """A plugin that reads a device value in its step hook (the control: the test must see it) and logs the loss
    (the loop reads it on logging steps: outside the window)."""

    @hookimpl
    def pg_before_step(self, run, step: int, clock) -> None:
        if run.model.skip_weights.sum() > 1e9:  # bool() of a device tensor: a sync
            raise AssertionError


def test_loop_window_sees_a_plugins_sync_and_not_the_logging_steps_loss_read(tiny_sets, monkeypatch):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                  sets=[*tiny_sets, "core.iterations=3", "core.train_log_every=1"], check_plugins=REGISTRY.check)
    setup = core_train.setup

    def with_syncing(*a, **kw):
        run = setup(*a, **kw)
        run.pm.register(Syncing(), name="syncing")
        return run

    monkeypatch.setattr(core_train, "setup", with_syncing)
    line = next(i for i, s in enumerate(Path(__file__).read_text().splitlines(), 1) if "1e9:  # bool()" in s)
    # once per step, at the plugin's line; every step is a logging step, its loss read: not counted
    assert report(host_syncs_per_step(cfg, monkeypatch)) == {f"__bool__ at tests/test_host_syncs.py:{line} "
                                                              "(pg_before_step)": 3}


def test_off_gpu_path_reads_the_loss_every_step_and_the_cuda_path_does_not(tiny_sets, monkeypatch):
    """The switch the tests turn: off the GPU the loop reads the loss in every step body (`finite_loss`), the
    CUDA path only on logging steps, outside the step body."""
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[],
                  sets=[*tiny_sets, "core.iterations=3"], check_plugins=REGISTRY.check)
    off_gpu = report(host_syncs_per_step(cfg, monkeypatch, cuda_path=False))
    assert [(k.split(" at ")[0], k.endswith("(finite_loss)"), n) for k, n in off_gpu.items()] == [("item", True, 3)]
    assert report(host_syncs_per_step(cfg, monkeypatch)) == {}


def test_distributed_cap_check_is_the_known_sync(monkeypatch):
    """A distributed, capped run's cap check all-reduces the stop flag and reads it (`.item()`) every step, as the
    record does: kept, so all ranks stop on the same step by clocks that include the GPU's queued work. A
    one-process gloo group stands in for the ranks; the counter sees exactly this sync (and the check is
    still right)."""
    import socket
    from types import SimpleNamespace

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        run = SimpleNamespace(distributed=True, device=torch.device("cpu"))
        budget = core_train.Budget(total_ms=1000.0, loop_ms=1000.0)
        counter, per_step = SyncCounter(), [[]]
        with counter:
            answers = [cap_check(core_train.reached_cap, counter, per_step, run, budget, ms) for ms in (10.0, 2000.0)]
    finally:
        dist.destroy_process_group()
    assert answers == [False, True]
    assert [s.split(" at ")[0] for s in per_step[0]] == ["item", "item"]
    assert all(s.endswith("(reached_cap)") and s.split(" at ")[1].startswith("core/train.py:") for s in per_step[0])
