"""Evaluation speed (issue #14): one compiled scoring shape, eval modes compile / eager / auto, no recompiles."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

import core.scoring
import core.train
from core.config import ConfigError, resolve
from core.registry import Registry
from core.scoring import evaluate, prepare_eval
from core.train import compiled_graph_count, setup

REGISTRY = Registry()
SETTINGS = {
    "sliding_window": ["sliding_window.stride=16", "sliding_window.batch_seqs=32"],  # 253 windows: 8 batches
    "score_first_ttt": ["score_first_ttt.chunk_tokens=1024", "score_first_ttt.stride=32",
                        "score_first_ttt.batch_seqs=12", "score_first_ttt.epochs=1", "score_first_ttt.lr=0.01"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def compiled_run(tiny_data, tiny_core, monkeypatch, plugin: str, extra=()):
    """A compiled (aot_eager on CPU) untrained run evaluating with `plugin` on 4,096 validation tokens."""
    monkeypatch.setattr(core.train.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    sets = [*tiny_core, f"core.data_path={tiny_data}", "core.compile=true", "core.val_max_tokens=4096",
            *SETTINGS[plugin], *extra]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[plugin], sets=sets,
                  check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY, make_dir=False)
    assert run.eval_model is not run.model
    return run


@pytest.mark.parametrize("plugin", ["sliding_window", "score_first_ttt"])
def test_compiled_eval_warms_its_shapes_never_recompiles_and_matches_eager(tiny_data, tiny_core, monkeypatch, plugin):
    run = compiled_run(tiny_data, tiny_core, monkeypatch, plugin)
    ev = run.hook.pg_evaluator(run=run)
    (batch, _), count = ev.forward_plan(run, run.val_tokens.numel())
    assert count > 4  # several batches (and several TTT chunks), the last of each group short
    if plugin == "score_first_ttt":
        assert len(ev.chunks(run.val_tokens.numel() - 1)[1]) == 4
    eager = evaluate(run, run.model, ev, run.val_tokens)
    graphs = compiled_graph_count()
    plan = prepare_eval(run, ev, mode="compile")
    assert plan.mode == "compile" and plan.model is run.eval_model and plan.warmup_ms > 0
    assert compiled_graph_count() > graphs  # every scoring shape (full batches, each short last one) warmed
    graphs = compiled_graph_count()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = evaluate(run, plan.model, ev, run.val_tokens)
    assert compiled_graph_count() == graphs
    assert compiled.tokens == eager.tokens == run.val_tokens.numel() - 1
    assert abs(compiled.val_bpb - eager.val_bpb) < 1e-6
    torch._dynamo.reset()


def test_batched_windows_score_exactly_like_windows_one_at_a_time(tiny_data, tiny_core, monkeypatch):
    """Batches of 7 windows (a short last batch, never padded) give every position the NLL of one-window batches."""
    from plugins.sliding_window import SlidingWindowEvaluator

    run = compiled_run(tiny_data, tiny_core, monkeypatch, "sliding_window")
    tokens = run.val_tokens[:1025]
    batched = evaluate(run, run.model, SlidingWindowEvaluator(64, 16, 7), tokens)
    single = evaluate(run, run.model, SlidingWindowEvaluator(64, 16, 1), tokens)
    assert torch.allclose(batched.nll[1:], single.nll[1:], rtol=1e-5, atol=1e-6)
    assert batched.tokens == single.tokens == 1024


def test_auto_picks_eager_for_a_short_pass_and_compile_when_compiling_is_cheap(tiny_data, tiny_core, monkeypatch):
    run = compiled_run(tiny_data, tiny_core, monkeypatch, "sliding_window")
    ev = run.hook.pg_evaluator(run=run)
    graphs = compiled_graph_count()
    plan = prepare_eval(run, ev)  # core.eval_compile defaults to auto
    assert plan.mode == "eager" and plan.model is run.model and compiled_graph_count() == graphs
    assert plan.eager_estimate_s is not None and 0 < plan.eager_estimate_s < 60
    monkeypatch.setattr(core.scoring, "EAGER_MAX_S", plan.eager_estimate_s / 1000)  # compiling "free": compile wins
    plan = prepare_eval(run, ev)
    assert plan.mode == "compile" and plan.model is run.eval_model and compiled_graph_count() > graphs
    torch._dynamo.reset()


def test_eager_estimate_scales_with_the_planned_batch_count(tiny_data, tiny_core, monkeypatch):
    run = compiled_run(tiny_data, tiny_core, monkeypatch, "sliding_window")
    ev = run.hook.pg_evaluator(run=run)
    import plugins.lib.windows

    calls = []
    monkeypatch.setattr(plugins.lib.windows, "score_nll", lambda *a, **k: calls.append(a[3].shape))
    (shape, count) = ev.forward_plan(run, run.val_tokens.numel())
    ev.eager_seconds(run, run.val_tokens.numel())
    assert calls == [shape] * 3 and shape == (32, 64)
    assert count == -(-253 // 32)  # windows ending every 16 tokens from 64 to 4,095, the last at 4,095


def test_bad_eval_compile_is_a_one_line_config_error(tiny_core):
    with pytest.raises(ConfigError, match=r"core\.eval_compile: expected auto, compile or eager, got 'fast'"):
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[], sets=[*tiny_core,
                "core.eval_compile=fast"], check_plugins=REGISTRY.check)


def test_final_eval_logs_its_mode_and_phase_time(tiny_data, tiny_core, monkeypatch, tmp_path):
    run = compiled_run(tiny_data, tiny_core, monkeypatch, "sliding_window",
                       ["core.eval_compile=eager", f"core.out_dir={tmp_path}"])
    run = setup(run.config, REGISTRY)
    graphs = compiled_graph_count()
    fields = core.train.final_eval(run, *core.train.export_artifact(run))
    log = (run.run_dir / "train.log").read_text()
    events = [json.loads(line) for line in (run.run_dir / "events.jsonl").read_text().splitlines()]
    final = next(e for e in events if e["event"] == "final_eval")
    assert "eval_warmup:synthetic_tokens mode:eager" in log and final["eval_mode"] == "eager"
    assert compiled_graph_count() == graphs and fields["val_bpb"] > 0
    torch._dynamo.reset()


def test_tail_scoring_runs_the_head_on_the_new_positions_only_and_scores_like_the_full_head(
        tiny_data, tiny_core, monkeypatch):
    """Windows of 64 with stride 16: the loss sees 16 positions per row (the first window, which scores all
    64, runs alone and whole), and every position's NLL equals the full-head evaluation's."""
    from plugins.sliding_window import SlidingWindowEvaluator

    run = compiled_run(tiny_data, tiny_core, monkeypatch, "sliding_window")
    tokens = run.val_tokens[:1025]
    seen = []
    hook = run.model.loss.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[1].shape[:2])))
    try:
        tailed = evaluate(run, run.model, SlidingWindowEvaluator(64, 16, 8), tokens)
        full_ev = SlidingWindowEvaluator(64, 16, 8)
        full_ev.tail = 0
        seen_tail, seen[:] = list(seen), []
        full = evaluate(run, run.model, full_ev, tokens)
    finally:
        hook.remove()
    assert seen_tail[0] == (1, 64) and seen_tail[1:] == [(8, 16)] * 7 + [(4, 16)]  # 60 more windows, unpadded
    assert seen == [(8, 64)] * 7 + [(5, 64)]  # all 61 windows whole
    assert torch.allclose(tailed.nll[1:], full.nll[1:], rtol=1e-5, atol=1e-6)
    assert abs(tailed.val_bpb - full.val_bpb) < 1e-6 and tailed.tokens == full.tokens == 1024


def test_compiled_ttt_adaptation_is_warmed_and_adapts_like_eager(tiny_data, tiny_core, monkeypatch):
    """score_first_ttt.compile_adapt: the warm-up compiles the scoring graph and the training-mode graphs of the
    steps' row counts (16 rows per 1,024-token chunk in steps of 12: 12 and 4), the 4-chunk pass recompiles
    nothing and scores as the eager run (which adaptation moved away from the unadapted scores)."""
    from dataclasses import replace

    from plugins.score_first_ttt import ScoreFirstTTTEvaluator

    run = compiled_run(tiny_data, tiny_core, monkeypatch, "score_first_ttt", ["score_first_ttt.compile_adapt=true"])
    ev = run.hook.pg_evaluator(run=run)
    assert ev.adapt_rows(run, run.val_tokens.numel()) == {12, 4}
    eager = evaluate(run, run.model, ev, run.val_tokens)
    unadapted = evaluate(run, run.model, ScoreFirstTTTEvaluator(64, replace(ev.cfg, epochs=0)), run.val_tokens)
    graphs = compiled_graph_count()
    plan = prepare_eval(run, ev, mode="compile")
    assert compiled_graph_count() - graphs == 5  # scoring (full batches + 2 short-last sizes) + training at 12, 4 rows
    assert all(p.grad is None for p in run.model.parameters())
    graphs = compiled_graph_count()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = evaluate(run, plan.model, ev, run.val_tokens)
    assert compiled_graph_count() == graphs
    assert abs(compiled.val_bpb - eager.val_bpb) < 1e-6 and abs(eager.val_bpb - unadapted.val_bpb) > 1e-4
    torch._dynamo.reset()


def test_eval_speed_bench_rejects_bad_modes_and_a_missing_data_root(tmp_path, capsys):
    import importlib.util

    root = Path(core.train.__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("eval_speed", root / "benchmarks" / "eval_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit):
        bench.main(["--modes", "compile,fast", "--data-root", str(tmp_path)])
    assert "unknown case/mode ['fast']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--cases", "pr315", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert f"{tmp_path}/datasets/fineweb10B_sp1024 not found (expected the challenge layout)" in err
    rows = [{"case": "pr315", "side": "pgolf", "mode_asked": "auto", "mode": "eager", "warmup_ms": 120,
             "eval_ms": 5400, "total_ms": 5520, "tokens": 524288, "val_bpb": 4.1, "speedup_vs_record": 4.89},
            {"case": "pr315", "side": "record", "mode_asked": "record", "error": "exit 1 (log x): boom"}]
    text = bench.table(rows)
    assert "auto>eager" in text and "5.5" in text and "4.89x" in text and "ERROR exit 1 (log x): boom" in text
