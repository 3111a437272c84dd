"""`auto_micro_batch` (pgolf issue #14): the choice against hand numbers, the counts that keep the global batch, and on
CPU, with the memory probe faked, a run that chose A equals the run with `core.grad_accum_steps = A` set by hand."""

from __future__ import annotations

import re

import pytest
import torch

import plugins.auto_micro_batch as amb
from core.config import resolve
from core.registry import Registry
from core.train import Stepper, new_loader, setup, train

REGISTRY = Registry()
GIB = 2**30


def cfg(sets, plugins=()):
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=list(plugins), sets=sets,
                   check_plugins=REGISTRY.check)


def test_fewest_accum_steps_against_hand_numbers():
    # 2 GiB held, 20 GiB of activations at 8 micro-steps, 139 GiB device, limit 0.8 -> 111.2 GiB:
    # A=1: 2 + 160 = 162 (no), A=2: 2 + 80 = 82 (yes)
    assert amb.fewest_accum_steps(2 * GIB, 20 * GIB, 8, 139 * GIB, 0.8, [1, 2, 4, 8]) == 2
    assert amb.fewest_accum_steps(2 * GIB, 20 * GIB, 8, 139 * GIB, 0.8, [1, 4, 8]) == 4  # 2 is not allowed
    # limit 0.5 -> 69.5 GiB: A=2 (82) no, A=3: 2 + 160/3 = 55.3 yes
    assert amb.fewest_accum_steps(2 * GIB, 20 * GIB, 8, 139 * GIB, 0.5, [1, 2, 3, 4, 6, 8]) == 3
    assert amb.fewest_accum_steps(2 * GIB, 20 * GIB, 8, 139 * GIB, 0.5, [1, 2, 4, 8]) == 4
    # exactly at the limit fits: 10 + 30 * 4 / 2 = 70 = 0.7 * 100
    assert amb.fewest_accum_steps(10, 30, 4, 100, 0.7, [1, 2, 4]) == 2
    assert amb.fewest_accum_steps(10, 30, 4, 100, 0.69, [1, 2, 4]) == 4
    # nothing fits (the weights alone are over): keep the default count
    assert amb.fewest_accum_steps(200 * GIB, 20 * GIB, 8, 139 * GIB, 0.8, [1, 2, 4, 8]) == 8


def test_allowed_counts_keep_the_global_batch_in_whole_rows():
    pr315 = type("C", (), {"train_batch_tokens": 786_432, "train_seq_len": 2048})  # 384 rows
    assert amb.allowed_counts(pr315, 1, 8) == [1, 2, 3, 4, 6, 8]
    assert amb.allowed_counts(pr315, 2, 4) == [1, 2, 3, 4]  # 192 rows per rank
    baseline = type("C", (), {"train_batch_tokens": 524_288, "train_seq_len": 1024})  # 512 rows
    assert amb.allowed_counts(baseline, 1, 8) == [1, 2, 4, 8]
    odd = type("C", (), {"train_batch_tokens": 10 * 64, "train_seq_len": 64})  # 10 rows
    assert amb.allowed_counts(odd, 1, 8) == [1, 2, 5]


def fake_probe(numbers, calls):
    """A probe that really trains two steps and draws random numbers (what the plugin must restore), then reports
    `numbers` (fixed, activations, total bytes) as if measured on a GPU."""

    def probe(run, stepper):
        before = next(run.model.parameters()).detach().clone()
        loader = new_loader(run)
        for _ in range(2):
            stepper.zero_grad()
            stepper.forward_backward(loader)
            stepper.optimizer_step()
        torch.rand(5)
        assert not torch.equal(before, next(run.model.parameters()))  # the steps changed the weights
        calls.append(run.grad_accum_steps)
        return numbers

    return probe


def losses(log: str) -> list[str]:
    return re.findall(r"^step:\d+/\d+ (?:train_loss|val_loss):\S+(?: val_bpb:\S+)?", log, re.M)


def test_a_run_that_chose_a_count_equals_the_run_with_it_set_by_hand(tiny_sets, monkeypatch):
    # 1 GiB held + 10 GiB activations at 8 micro-steps on an 80 GiB device, limit 0.8 (64 GiB):
    # A=1: 81 (no), A=2: 41 (yes); the tiny step (1024 tokens of 64) allows 1, 2, 4, 8
    calls = []
    monkeypatch.setattr(amb, "step_memory", fake_probe((1 * GIB, 10 * GIB, 80 * GIB), calls))
    sets = [*tiny_sets, "core.warmup_steps=2", "core.val_loss_every=6"]
    auto_sets = [s for s in sets if not s.startswith("core.grad_accum_steps")] + ["core.grad_accum_steps=0"]
    run = setup(cfg([*auto_sets, "core.run_id=auto"], ["auto_micro_batch"]), REGISTRY)
    assert run.grad_accum_steps == 8
    auto = train(run)
    assert calls == [8] and run.grad_accum_steps == 2
    log = (run.run_dir / "train.log").read_text()
    assert re.search(r"^auto_micro_batch: grad_accum_steps:8 measured fixed:1\.00GiB activations:10\.00GiB "
                     r"device:80\.00GiB -> grad_accum_steps:2 predicted_peak:41\.00GiB \(limit 0\.8 of the device\)$",
                     log, re.M)
    assert "world_size:1 grad_accum_steps:2" in log and "timed_loop_recompiles:0" in log

    hand_run = setup(cfg([*[s for s in sets if not s.startswith("core.grad_accum_steps")],
                          "core.grad_accum_steps=2", "core.run_id=hand"]), REGISTRY)
    hand = train(hand_run)
    hand_log = (hand_run.run_dir / "train.log").read_text()
    assert losses(log) == losses(hand_log) and len(losses(log)) >= 5
    for key in ("val_loss", "val_bpb", "model_bytes", "steps"):
        assert auto[key] == hand[key], key


def test_the_fraction_setting_reaches_the_choice(tiny_sets, monkeypatch):
    calls = []
    monkeypatch.setattr(amb, "step_memory", fake_probe((1 * GIB, 10 * GIB, 80 * GIB), calls))
    sets = [s for s in tiny_sets if not s.startswith("core.grad_accum_steps")] + ["core.grad_accum_steps=0"]
    # limit 0.3 of 80 = 24 GiB: A=2 (41) no, A=4: 1 + 20 = 21 yes
    run = setup(cfg([*sets, "auto_micro_batch.fraction=0.3"], ["auto_micro_batch"]), REGISTRY, make_dir=False)
    rng, state = torch.get_rng_state(), {k: v.clone() for k, v in run.model.state_dict().items()}
    run.hook.pg_before_warmup(run=run, stepper=Stepper(run))
    assert calls == [8] and run.grad_accum_steps == 4
    assert torch.equal(torch.get_rng_state(), rng)  # the probe's draws are undone
    assert all(torch.equal(state[k], v) for k, v in run.model.state_dict().items())  # and its steps
    assert all(not opt.state for opt in run.optimizers)  # no optimizer state left behind (none before)


def test_nothing_changes_off_cuda_when_set_by_hand_or_at_one_micro_step(tiny_sets, monkeypatch):
    sets = [s for s in tiny_sets if not s.startswith("core.grad_accum_steps")]
    run = setup(cfg([*sets, "core.grad_accum_steps=0"], ["auto_micro_batch"]), REGISTRY, make_dir=False)
    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.hook.pg_before_warmup(run=run, stepper=Stepper(run))  # the real probe: None on CPU
    assert run.grad_accum_steps == 8
    assert all(torch.equal(state[k], v) for k, v in run.model.state_dict().items())

    def never(*_):
        raise AssertionError("the memory probe ran")

    monkeypatch.setattr(amb, "step_memory", never)
    run = setup(cfg([*sets, "core.grad_accum_steps=4"], ["auto_micro_batch"]), REGISTRY, make_dir=False)
    run.hook.pg_before_warmup(run=run, stepper=Stepper(run))
    assert run.grad_accum_steps == 4
    run = setup(cfg([*sets, "core.grad_accum_steps=0"], ["auto_micro_batch"]), REGISTRY, make_dir=False)
    run.grad_accum_steps = 1  # 8 // WORLD_SIZE at 8 processes
    run.hook.pg_before_warmup(run=run, stepper=Stepper(run))
    assert run.grad_accum_steps == 1


def test_fraction_outside_its_range_is_a_config_error(tiny_sets):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=r"auto_micro_batch.fraction must be in \(0, 1\], got 1.5"):
        cfg([*tiny_sets, "auto_micro_batch.fraction=1.5"], ["auto_micro_batch"])


def test_step_memory_reads_the_second_step_after_its_backward(monkeypatch):
    """The probe's CUDA readings, with torch.cuda's allocator statistics scripted: the peak is reset before each
    step, read after its forward/backward (held, and the peak above it), and the second step's values are returned."""
    import contextlib
    from types import SimpleNamespace

    import core.train

    events, allocated, peaks = [], iter([3 * GIB, 4 * GIB]), iter([13 * GIB, 15 * GIB])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: (events.append("read"), next(allocated))[1])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev: next(peaks))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (100 * GIB, 140 * GIB))
    loader = SimpleNamespace(next_batch=lambda *a: (torch.zeros(4, 8, dtype=torch.long),))
    monkeypatch.setattr(core.train, "new_loader", lambda run: loader)
    run = SimpleNamespace(device=SimpleNamespace(type="cuda"), grad_accum_steps=8, autocast=contextlib.nullcontext,
                          core=SimpleNamespace(train_batch_tokens=256, train_seq_len=8), modes=[],
                          model=lambda x: events.append(f"prime {tuple(x.shape)}"))
    stepper = SimpleNamespace(zero_grad=lambda: events.append("zero"), optimizer_step=lambda: events.append("step"),
                              forward_backward=lambda source: events.append("fb") if source is loader else None)
    assert amb.step_memory(run, stepper) == (4 * GIB, 11 * GIB, 140 * GIB)
    assert events == ["prime (1, 8)", *["zero", "reset", "fb", "read", "step"] * 2, "zero", "empty"]


def test_step_memory_reads_the_all_modes_state_too(monkeypatch):
    """With graph modes the probe also steps with every mode on (a mode such as depth recurrence adds activations)
    and returns the larger held bytes and the larger peak above them; it leaves the base state on."""
    import contextlib
    from types import SimpleNamespace

    import core.train

    events = []
    allocated, peaks = iter([3, 4, 6, 5]), iter([13, 15, 20, 30])  # GiB: base 4 + 11; all modes 5 + 25
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: next(allocated) * GIB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev: next(peaks) * GIB)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (100 * GIB, 140 * GIB))
    loader = SimpleNamespace(next_batch=lambda *a: (torch.zeros(4, 8, dtype=torch.long),))
    monkeypatch.setattr(core.train, "new_loader", lambda run: loader)
    monkeypatch.setattr(core.train, "set_modes", lambda run, active: events.append(f"modes {active}"))
    modes = [SimpleNamespace(name="recurrence"), SimpleNamespace(name="wider")]
    run = SimpleNamespace(device=SimpleNamespace(type="cuda"), grad_accum_steps=8, autocast=contextlib.nullcontext,
                          core=SimpleNamespace(train_batch_tokens=256, train_seq_len=8), modes=modes,
                          model=lambda x: None)
    stepper = SimpleNamespace(zero_grad=lambda: None, optimizer_step=lambda: None,
                              forward_backward=lambda source: events.append("fb"))
    assert amb.step_memory(run, stepper) == (5 * GIB, 25 * GIB, 140 * GIB)
    assert events == ["modes ()", "fb", "fb", "modes ('recurrence', 'wider')", "fb", "fb", "modes ()"]
