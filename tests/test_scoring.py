"""The scoring protocol: exactly-once accounting, BPB in one place, sliding window vs plain, causality."""

from __future__ import annotations

import math

import pytest
import torch

from core.config import resolve
from core.registry import Registry
from core.scoring import PlainEvaluator, ScoreSink, ScoringError, evaluate
from core.tokenizer import ByteTables
from core.train import setup, train
from plugins.lib.ttt import ScoredTokens
from plugins.lib.windows import window_ends
from plugins.sliding_window import SlidingWindowEvaluator

REGISTRY = Registry()


def tables(v=16):
    return ByteTables(base_bytes=torch.arange(v, dtype=torch.int16) % 3 + 1,
                      has_leading_space=torch.arange(v) % 2 == 0,
                      is_boundary=torch.arange(v) == 1)


def test_sink_counts_each_position_once_and_bytes():
    toks = torch.tensor([1, 4, 5, 6, 1, 7, 8])
    sink = ScoreSink(toks, tables())
    sink.record(torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ScoringError, match="scored twice"):
        sink.record(torch.tensor([3]), torch.tensor([1.0]))
    with pytest.raises(ScoringError, match="expected each of 6 positions"):
        sink.result()
    sink.record(torch.tensor([4, 5, 6]), torch.tensor([0.5, 0.5, 1.0]))
    res = sink.result()
    t = tables()
    expected_bytes = 0
    for p in range(1, 7):
        prev, tgt = int(toks[p - 1]), int(toks[p])
        expected_bytes += int(t.base_bytes[tgt]) + int(bool(t.has_leading_space[tgt]) and not bool(t.is_boundary[prev]))
    assert res.bytes == expected_bytes
    assert res.val_loss == pytest.approx(8.0 / 6)
    assert res.val_bpb == pytest.approx(8.0 / math.log(2) / expected_bytes)


def test_scored_tokens_release_only_the_scored_prefix():
    toks = torch.arange(10) % 16
    sink = ScoreSink(toks, tables())
    st = ScoredTokens(sink)
    with pytest.raises(ScoringError, match="only tokens\\[:1\\] are scored"):
        st.read(0, 5)
    sink.record(torch.arange(1, 5), torch.zeros(4))
    with pytest.raises(ScoringError, match="unscored"):
        sink.advance_frontier(7)
    sink.advance_frontier(5)
    assert st.read(0, 5).tolist() == [0, 1, 2, 3, 4]


def test_window_ends_cover_each_position_once():
    for n, s, stride in [(100, 16, 4), (97, 16, 5), (16, 16, 16), (10, 16, 4), (64, 16, 16)]:
        ends = window_ends(n, s, stride)
        starts = [0, *ends[:-1]]
        covered = [p for a, b in zip(starts, ends, strict=True) for p in range(a + 1, b + 1)]
        assert covered == list(range(1, n + 1))
        assert all(b - a <= min(s, n) for a, b in zip(starts, ends, strict=True))


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_core):
    sets = [*tiny_core, f"core.data_path={tiny_data}", "core.iterations=120", "core.val_max_tokens=4096",
            "core.train_log_every=0"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=[], sets=sets,
                  check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY, make_dir=False)
    train(run)
    return run


def test_sliding_with_stride_seq_len_equals_plain(trained):
    run = trained
    plain = evaluate(run, run.model, PlainEvaluator(64, 1024), run.val_tokens)
    slide = evaluate(run, run.model, SlidingWindowEvaluator(64, 64, 8), run.val_tokens)
    assert slide.bytes == plain.bytes and slide.tokens == plain.tokens
    assert slide.val_loss == pytest.approx(plain.val_loss, rel=1e-6)


def test_smaller_stride_lowers_loss(trained):
    run = trained
    plain = evaluate(run, run.model, PlainEvaluator(64, 1024), run.val_tokens)
    slide = evaluate(run, run.model, SlidingWindowEvaluator(64, 16, 8), run.val_tokens)
    assert slide.tokens == plain.tokens and slide.bytes == plain.bytes
    assert slide.val_loss < plain.val_loss - 0.01, (slide.val_loss, plain.val_loss)


def _ttt(**kw):
    from plugins.score_first_ttt import ScoreFirstTTTConfig, ScoreFirstTTTEvaluator

    cfg = ScoreFirstTTTConfig(**{"chunk_tokens": 128, "stride": 32, "lr": 0.05, "epochs": 2, "batch_seqs": 4, **kw})
    return ScoreFirstTTTEvaluator(64, cfg)


class AdaptThenScore:
    """A deliberately wrong TTT: trains on each chunk *before* scoring it (reads tokens directly)."""

    name = "adapt_then_score"

    def evaluate(self, run, model, tokens, sink):
        good = _ttt()
        ends, groups = good.chunks(tokens.numel() - 1)
        opt = torch.optim.SGD(run.model.parameters(), lr=0.05)
        from plugins.lib.windows import score_windows

        for group in groups:
            start = ends[group.start - 1] if group.start > 0 else 0
            good._adapt(run, run.model, opt, list(run.model.parameters()), tokens[start : ends[group.stop - 1] + 1])
            score_windows(run, model, tokens, sink, ends, group, 64, 4)


def _scores(run, evaluator, toks):
    sink = ScoreSink(toks, run.byte_tables)
    saved = {k: v.clone() for k, v in run.model.state_dict().items()}
    evaluator.evaluate(run, run.model, toks, sink)
    run.model.load_state_dict(saved)
    return sink


@pytest.mark.parametrize("make", [lambda: PlainEvaluator(64, 1024), lambda: SlidingWindowEvaluator(64, 16, 8), _ttt])
def test_evaluator_causality_prefix_invariance(trained, make):
    """Perturb tokens at positions >= t: scores at positions < t are bit-identical (CPU, float64)."""
    run = trained
    run.model.double()
    try:
        toks = run.val_tokens[:513].to(torch.int64)
        t = 300
        alt = toks.clone()
        alt[t:] = (alt[t:] + 7) % 320
        a, b = _scores(run, make(), toks), _scores(run, make(), alt)
        assert torch.equal(a.nll[1:t], b.nll[1:t])
        assert not torch.equal(a.nll[t:], b.nll[t:])
    finally:
        run.model.float()


def test_adapt_before_scoring_fails_the_causality_test(trained):
    run = trained
    run.model.double()
    try:
        toks = run.val_tokens[:513].to(torch.int64)
        t = 300
        alt = toks.clone()
        alt[t:] = (alt[t:] + 7) % 320
        a, b = _scores(run, AdaptThenScore(), toks), _scores(run, AdaptThenScore(), alt)
        assert not torch.equal(a.nll[1:t], b.nll[1:t])
    finally:
        run.model.float()


def test_ttt_cannot_read_unscored_tokens(trained):
    sink = ScoreSink(trained.val_tokens[:513].to(torch.int64), trained.byte_tables)
    with pytest.raises(ScoringError, match="only tokens"):
        ScoredTokens(sink).read(0, 64)


def test_score_first_ttt_scores_every_position_once_and_restores_weights(trained):
    run = trained
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    plain = evaluate(run, run.model, SlidingWindowEvaluator(64, 32, 4), run.val_tokens)
    ttt = evaluate(run, run.model, _ttt(), run.val_tokens)
    assert ttt.tokens == plain.tokens and ttt.bytes == plain.bytes
    assert ttt.val_loss != plain.val_loss
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
