"""End-to-end tiny runs: run directory contents, challenge log lines, wall-clock cap, input errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
from nproc_runs import train_on_1_and_2_processes

from core.config import resolve
from core.data import DataError
from core.registry import Registry
from core.train import setup, train
from pgolf.cli import main

REGISTRY = Registry()


def cfg(sets, plugins=()):
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=list(plugins), sets=sets,
                   check_plugins=REGISTRY.check)


def test_train_writes_a_complete_run_dir(tiny_sets):
    run = setup(cfg([*tiny_sets, "core.run_id=r1", "core.val_loss_every=6"]), REGISTRY)
    summary = train(run)
    d = run.run_dir
    assert d.name == "r1"
    for f in ("config.json", "events.jsonl", "train.log", "final_model.ptz", "metrics.json"):
        assert (d / f).is_file(), f
    conf = json.loads((d / "config.json").read_text())
    assert conf["config"]["core"]["iterations"] == 12 and conf["sources"]["core.iterations"] == "--set"
    log = (d / "train.log").read_text()
    assert re.search(r"^step:4/12 train_loss:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d{2}ms$", log, re.M)
    assert re.search(r"^step:6/12 val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} train_time:", log, re.M)
    m = re.search(r"^final_int8_zlib_roundtrip_exact val_loss:(\d+\.\d{8}) val_bpb:(\d+\.\d{8})$", log, re.M)
    assert m and abs(float(m.group(2)) - summary["val_bpb"]) < 1e-7
    assert re.search(r"^Serialized model int8\+zlib: \d+ bytes", log, re.M)
    assert re.search(r"^Total submission size int8\+zlib: \d+ bytes$", log, re.M)
    events = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "final_eval" in kinds and "size" in kinds
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
    assert summary["model_bytes"] == (d / "final_model.ptz").stat().st_size


def test_training_lowers_the_loss(tiny_sets):
    run = setup(cfg([*tiny_sets, "core.iterations=40", "core.val_loss_every=40"]), REGISTRY, make_dir=False)
    from core.scoring import PlainEvaluator, evaluate

    ev = PlainEvaluator(64, 2048)
    before = evaluate(run, run.model, ev, run.val_tokens).val_loss
    after = train(run)["val_loss"]
    assert after < before - 0.5, (before, after)
    assert before == pytest.approx(torch.log(torch.tensor(320.0)).item(), abs=0.1)


def test_wallclock_cap_stops_early(tiny_sets):
    run = setup(cfg([*tiny_sets, "core.iterations=100000", "core.max_wallclock_seconds=1.5"]), REGISTRY)
    summary = train(run)
    assert 0 < summary["steps"] < 100000
    assert "stopping_early: wallclock_cap" in (run.run_dir / "train.log").read_text()


def test_same_seed_same_curve(tiny_sets):
    a = train(setup(cfg([*tiny_sets, "core.iterations=5"]), REGISTRY, make_dir=False))
    b = train(setup(cfg([*tiny_sets, "core.iterations=5"]), REGISTRY, make_dir=False))
    c = train(setup(cfg([*tiny_sets, "core.iterations=5", "core.seed=2"]), REGISTRY, make_dir=False))
    assert a["val_loss"] == b["val_loss"] != c["val_loss"]


def test_missing_data_path(tiny_sets, tmp_path):
    with pytest.raises(DataError, match=r"data path .*nowhere does not exist"):
        setup(cfg([*tiny_sets, f"core.data_path={tmp_path / 'nowhere'}"]), REGISTRY)


def test_vocab_size_mismatch(tiny_sets):
    with pytest.raises(ValueError, match="vocab_size 320 but config vocab_size is 512"):
        setup(cfg([*tiny_sets, "core.vocab_size=512"]), REGISTRY)


def test_cli_errors_are_one_line(tiny_sets, capsys, tmp_path):
    args = [a for s in tiny_sets for a in ("--set", s)]
    assert main(["train", *args, "--plugins", "smeargat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pgolf: config error: unknown plugin 'smeargat' (did you mean 'smeargate'?); "
                   "see 'pgolf plugins list'"]
    assert main(["train", *args, "--plugins", "ema,swa_missing", "--set", "core.num_heads=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("pgolf: config error:") for line in err)  # plugin + 2 shape
    assert main(["train", *args, "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_config_show_prints_sources(capsys, monkeypatch):
    monkeypatch.setenv("NUM_LAYERS", "11")
    assert main(["config", "show", "--plugins", "ema", "--set", "ema.decay=0.99"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^core\.num_layers\s+11\s+env:NUM_LAYERS$", out, re.M)
    assert re.search(r"^ema\.decay\s+0\.99\s+--set$", out, re.M)
    assert re.search(r"^core\.model_dim\s+512\s+default$", out, re.M)


def test_nproc_2_on_cpu_matches_one_process(tiny_sets, tmp_path):
    """`pgolf train --nproc 2` (torchrun, gloo on CPU): same global batch, same result up to float order."""

    sets = [s for s in tiny_sets if not s.startswith(("core.out_dir", "core.grad_accum_steps"))]
    args = [a for s in [*sets, f"core.out_dir={tmp_path}", "core.val_max_tokens=2048"] for a in ("--set", s)]
    out = train_on_1_and_2_processes(args, tmp_path)
    log2 = (tmp_path / "n2" / "train.log").read_text()
    assert "world_size:2 grad_accum_steps:4" in log2
    assert out[1]["val_loss"] == pytest.approx(out[2]["val_loss"], abs=2e-3)


def test_nproc_2_trains_a_one_layer_model(tiny_sets, tmp_path):
    """One layer has no U-Net skips: its empty skip_weights never gets a gradient, which DDP waited for (a crash in
    the first step: 'Expected to have finished reduction in the prior iteration')."""
    sets = [s for s in tiny_sets if not s.startswith(("core.out_dir", "core.grad_accum_steps", "core.num_layers"))]
    args = [a for s in [*sets, "core.num_layers=1", f"core.out_dir={tmp_path}", "core.val_max_tokens=2048"]
            for a in ("--set", s)]
    out = train_on_1_and_2_processes(args, tmp_path)
    assert out[1]["val_loss"] == pytest.approx(out[2]["val_loss"], abs=2e-3)


FAILING_RANK_PLUGIN = '''
import os
from core.hookspecs import hookimpl
from core.registry import Plugin


class FailOnRank1(Plugin):
    name = "fail_on_rank1"
    summary = "raises on rank 1 after its second step (test)"
    sources = ("test",)

    @hookimpl
    def pg_after_step(self, run, step):
        if os.environ.get("RANK") == "1" and step >= 2:
            raise RuntimeError("rank 1 failed on purpose")
'''


def test_nproc_2_a_failed_rank_stops_the_job_in_one_line(tiny_sets, tmp_path):
    """A rank that fails mid-run ends the job at once (its barrier on the way out waited for the other rank, which
    waited for it in an all-reduce: the job hung until gloo's 30-minute timeout), with the rank's own error and one
    launcher line, no torchrun traceback."""
    import os
    import subprocess
    import sys

    (tmp_path / "fail.py").write_text(FAILING_RANK_PLUGIN)
    sets = [s for s in tiny_sets if not s.startswith(("core.out_dir", "core.grad_accum_steps"))]
    args = [a for s in [*sets, f"core.out_dir={tmp_path / 'runs'}"] for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "pgolf.cli", "train", "--nproc", "2", "--plugin-file",
                           str(tmp_path / "fail.py"), "--plugins", "fail_on_rank1", *args], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 70, proc.stderr[-3000:]
    assert "rank 1 failed on purpose" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "pgolf: rank 1 of 2 failed (status 70); the other ranks were stopped"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_data_build(tmp_path, capsys):
    src = tmp_path / "text"
    src.mkdir()
    from dataprep.corpus import generate_documents

    for i, doc in enumerate(generate_documents(60, seed=3)):
        (src / f"{i}.txt").write_text(doc)
    assert main(["data", "build", str(src), "--vocab", "320", "--out", str(tmp_path / "d"), "--val-docs", "5"]) == 0
    assert (tmp_path / "d" / "fineweb_train_000000.bin").is_file()
    assert (tmp_path / "d" / "tokenizer" / "fineweb_320_bpe.model").is_file()
    assert main(["data", "build", str(tmp_path / "nothing"), "--vocab", "320", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0]


def test_sigterm_marks_the_run_interrupted(tiny_sets, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sets = [s for s in tiny_sets if not s.startswith("core.out_dir")]
    argv = [sys.executable, "-m", "pgolf.cli", "train", *[a for s in sets for a in ("--set", s)],
            "--set", f"core.out_dir={tmp_path}", "--set", "core.run_id=term", "--set", "core.iterations=100000",
            "--set", "core.train_log_every=1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    log = tmp_path / "term" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "step:3/" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted by SIGTERM" in err
    status = json.loads((tmp_path / "term" / "status.json").read_text())
    assert status["status"] == "interrupted" and not (tmp_path / "term" / "final_model.ptz").exists()
    assert "run_status:interrupted" in log.read_text()


def test_the_warmup_trains_on_the_loaders_first_batches(tiny_sets, monkeypatch):
    """The compile warm-up's steps read batches 1..N of their loader, as the records' warm-up does (the cache-priming
    forward reads a loader of its own): what the warm-up leaves behind — PR #534's never-zeroed frozen VE gradients
    (value_embeddings.frozen_grads = accumulate) — is then the record's."""
    import core.train as T

    run = setup(cfg([*tiny_sets, "core.warmup_steps=2", "core.grad_accum_steps=1"]), REGISTRY, make_dir=False)
    stepper, seen = T.Stepper(run), []
    model = stepper.model
    stepper.model = lambda x, y, **kw: (seen.append(x.clone()), model(x, y, **kw))[1]  # what is trained on
    T.warmup_and_restore(run, stepper)
    fresh, core = T.new_loader(run), run.core
    assert len(seen) == 2
    for x in seen:
        assert torch.equal(x, fresh.next_batch(core.train_batch_tokens, core.train_seq_len, 1)[0])


class _CountingLoader:
    """Batch k (k = 1, 2, ...) is a (1, 4) tensor of k; `log` records each call in order."""

    def __init__(self, log: list):
        self.log, self.k = log, 0

    def next_batch(self, *args):
        self.k += 1
        self.log.append(("fetch", self.k))
        x = torch.full((1, 4), self.k, dtype=torch.long)
        return x, x


def test_stepper_takes_each_batch_after_the_previous_backward_and_the_next_steps_first_one_early(tiny_sets):
    """The loader's order is unchanged; only when a batch is built moves: micro-batch k+1 after micro-step k's
    backward is launched, and the next step's first after this step's last (a step after a sync waits for no host
    work). A prefetched batch is used only by the same loader with the same arguments."""
    import core.train as T

    run = setup(cfg([*tiny_sets, "core.grad_accum_steps=2"]), REGISTRY, make_dir=False)
    stepper, log = T.Stepper(run), []

    def model(x, y, **kw):
        k = int(x[0, 0])
        log.append(("forward", k))
        loss = torch.zeros((), requires_grad=True)
        loss.register_hook(lambda g: log.append(("backward", k)))
        return loss

    stepper.model = model
    loader = _CountingLoader(log)
    stepper.forward_backward(loader)
    stepper.forward_backward(loader)
    assert log == [("fetch", 1), ("forward", 1), ("backward", 1), ("fetch", 2), ("forward", 2), ("backward", 2),
                   ("fetch", 3),  # the next step's first batch, before this step returns (and its optimizer step)
                   ("forward", 3), ("backward", 3), ("fetch", 4), ("forward", 4), ("backward", 4), ("fetch", 5)]
    del log[:]
    other = _CountingLoader(log)  # another loader: its own first batch; the first loader's batch 5 is not used
    stepper.forward_backward(other)
    stepper.prefetch = False  # (the bench's phase profile): no batch taken past the step's last micro-step
    stepper.forward_backward(other)
    assert [e for e in log if e[0] != "backward"] == [("fetch", 1), ("forward", 1), ("fetch", 2), ("forward", 2),
                                                      ("fetch", 3), ("forward", 3), ("fetch", 4), ("forward", 4)]


def test_compiled_model_takes_more_graphs_than_dynamos_default_limit(tiny_sets, monkeypatch):
    """Modes x batch shapes x grad modes + the eval shapes pass dynamo's default 8 graphs per code object (PR
    #1855's stack with varlen buckets and the recurrence mode did on an H200): with fullgraph=True the 9th graph
    was a hard error. Compiled with the eager backend (fast on CPU); the limit logic is dynamo's, not inductor's."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    torch._dynamo.reset()
    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), sets=[*tiny_sets, "core.compile=true"])
    run = setup(cfg, reg, make_dir=False)
    ids = run.val_tokens[:2 * 64 + 1].long()
    with torch.no_grad():
        for length in range(4, 64, 5):  # 12 shapes, a graph each (dynamic=False)
            run.eval_model(ids[:length].view(1, length), ids[1:length + 1].view(1, length))
    torch._dynamo.reset()


def test_nproc_ranks_stop_when_the_launcher_is_killed(tiny_sets, tmp_path):
    """SIGKILL (or SIGHUP) to `pgolf train --nproc 2` left both ranks training as orphans with nobody to collect
    them; now each rank gets SIGTERM when the launcher dies (PR_SET_PDEATHSIG) and marks its run interrupted."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    sets = [s for s in tiny_sets if not s.startswith(("core.out_dir", "core.grad_accum_steps", "core.iterations"))]
    args = [a for s in [*sets, f"core.out_dir={tmp_path}", "core.run_id=orphan", "core.iterations=100000"]
            for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    launcher = subprocess.Popen([sys.executable, "-m", "pgolf.cli", "train", "--nproc", "2", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, log = tmp_path / "orphan" / "status.json", tmp_path / "orphan" / "train.log"
    deadline = time.monotonic() + 180  # until both ranks train (a rank blocked in the rendezvous ignores SIGTERM)
    while time.monotonic() < deadline and not (log.is_file() and "step:2/" in log.read_text()):
        time.sleep(0.5)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and json.loads(status.read_text())["status"] == "running":
        time.sleep(0.5)
    assert json.loads(status.read_text())["status"] == "interrupted"
