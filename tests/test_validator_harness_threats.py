"""Threat class 1 (validator/THREATS.md): evaluators written to defeat the naive harness — each told apart from
production, cheating only where it is not probed, carrying state between calls, reading val tokens in warmup(),
or editing the totals — is rejected; its honest twin passes. Each evaluator is a subclass of the shared fixtures
in test_validator_dynamic.py and cheats by the same means an earlier harness could not see."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from harness_checks import statuses as harness_statuses
from harness_checks import tiny_world

from core import scoring
from tests.test_validator_dynamic import Windows, record, spans, window_logp
from validator.harness import HarnessSettings
from validator.rules.base import FAIL, PASS

# smaller than test_validator_dynamic's world: every evaluator runs ~30 forked evaluations
SETTINGS = HarnessSettings(vocab=10, n_docs=4, doc_len=(20, 60), seq_len=16, cuts=4, trunc_cuts=1,
                           vfold_positions=2, iso_docs=1, seed=0)
pytestmark = pytest.mark.slow  # ~30 forked evaluations per evaluator: 3-8 s on a quiet 2-core box, ~16 s at load 8


@pytest.fixture(scope="module")
def world():
    yield from tiny_world(SETTINGS)


def statuses(world, evaluator) -> dict[str, str]:
    return harness_statuses(world, evaluator, SETTINGS)


def watched() -> bool:
    """What an evaluator can read about its surroundings: a wrapped record(), optimizer/forward hooks."""
    from torch.optim import optimizer

    return (scoring.ScoreSink.record.__qualname__ != "ScoreSink.record"
            or bool(getattr(optimizer, "_global_optimizer_pre_hooks", {})))


def peek(model, tokens, s, e):
    """A cheat: the target's probability pushed up after seeing it (not a distribution over the vocabulary)."""
    logp = window_logp(model, tokens, s, e)
    y = tokens[s + 1 : e + 1]
    boosted = logp.clone()
    boosted[torch.arange(y.numel()), y] = torch.logaddexp(logp[torch.arange(y.numel()), y],
                                                          torch.tensor(-0.5, dtype=torch.float64))
    return boosted


class Small(Windows):
    seq_len = SETTINGS.seq_len


class HonestWhenWatched(Small):
    """Cheats only when nothing is hooked: the production path."""

    name = "honest_when_watched"

    def logp(self, model, tokens, s, e):
        return window_logp(model, tokens, s, e) if watched() else peek(model, tokens, s, e)


class CheatsWhenNotChecking(Small):
    """Cheats whenever the sink is in production mode (the old harness used a checking-mode sink)."""

    name = "cheats_unless_checking"

    def evaluate(self, run, model, tokens, sink) -> None:
        self.cheat = not getattr(sink, "checking", False)
        super().evaluate(run, model, tokens, sink)

    def logp(self, model, tokens, s, e):
        return peek(model, tokens, s, e) if self.cheat else window_logp(model, tokens, s, e)


class CheatsAwayFromEarlyProbes(Small):
    """Honest in the first four windows (where the old V-fold probes sat), a target-dependent boost after."""

    name = "cheats_late"

    def logp(self, model, tokens, s, e):
        return window_logp(model, tokens, s, e) if s < 4 * self.seq_len else peek(model, tokens, s, e)


class WarmupReadsVal(Small):
    """warmup() reads run.val_tokens (production passes the run) and builds a whole-stream unigram table."""

    name = "warmup_reads_val"

    def warmup(self, run, model, n_tokens: int) -> None:
        v = SETTINGS.vocab
        counts = torch.bincount(run.val_tokens.to(torch.int64), minlength=v).double()
        self.table = ((counts + 1) / (counts.sum() + v)).log()

    def logp(self, model, tokens, s, e):
        table = getattr(self, "table", torch.full((SETTINGS.vocab,), -torch.log(torch.tensor(SETTINGS.vocab * 1.0))))
        return torch.logaddexp(window_logp(model, tokens, s, e) + torch.log(torch.tensor(0.7)),
                               table.expand(e - s, -1) + torch.log(torch.tensor(0.3)))


class WarmupSynthetic(WarmupReadsVal):
    """Good twin: the table comes from random tokens of the announced length."""

    name = "warmup_synthetic"

    def warmup(self, run, model, n_tokens: int) -> None:
        gen = torch.Generator().manual_seed(0)
        v = SETTINGS.vocab
        counts = torch.bincount(torch.randint(0, v, (1000,), generator=gen), minlength=v).double()
        self.table = ((counts + 1) / (counts.sum() + v)).log()


_MEMORY: dict[bytes, torch.Tensor] = {}


class ReplaysFirstStream(Small):
    """Keeps the scores it computed with look-ahead on the first stream it sees (a module global) and replays them
    for any later stream with the same prefix — so a perturbed future never moves an earlier score."""

    name = "replays_first_stream"

    def logp(self, model, tokens, s, e):
        key = tokens[: e + 1].numpy().tobytes()[: 8 * (s + 1)]  # keyed by the prefix only
        if key not in _MEMORY:
            look = torch.roll(tokens, -2)[s:e]  # peeks at the token after the target
            lp = window_logp(model, tokens, s, e)
            _MEMORY[key] = F.log_softmax(lp + 0.5 * F.one_hot(look, SETTINGS.vocab).double(), -1)
        return _MEMORY[key]


class EditsTheTotals(Small):
    """Scores honestly, then lowers the sink's accumulated loss."""

    name = "edits_totals"

    def evaluate(self, run, model, tokens, sink) -> None:
        super().evaluate(run, model, tokens, sink)
        sink.loss_sum -= 0.05 * sink.count


class InflatesBytes(Small):
    """Scores honestly, then adds a byte to every token of the tokenizer table the sink counts with."""

    name = "inflates_bytes"

    def evaluate(self, run, model, tokens, sink) -> None:
        sink.tables.base_bytes.add_(1)
        super().evaluate(run, model, tokens, sink)


class SecondPassIntoTheSink(Small):
    """Scores every window twice and records the better half of the second pass over positions never recorded:
    uses the sink's fields directly, not record()."""

    name = "writes_sink_fields"

    def evaluate(self, run, model, tokens, sink) -> None:
        with torch.no_grad():
            for s, e in spans(tokens, self.seq_len):
                logp = window_logp(model, tokens, s, e)
                y = tokens[s + 1 : e + 1]
                nll = -logp.gather(1, y.view(-1, 1)).view(-1)
                record(sink, s, e, tokens, logp)
                sink.loss_sum -= 0.1 * nll.sum()
                sink.advance_frontier(e + 1)


@pytest.mark.parametrize(("bad", "rule"), [
    (HonestWhenWatched(), "EVAL.PRODUCTION"),
    (CheatsWhenNotChecking(), "EVAL.C2"),
    (CheatsAwayFromEarlyProbes(), "EVAL.C2"),
    (WarmupReadsVal(), "EVAL.C1"),
    (ReplaysFirstStream(), "EVAL.C1"),
    (EditsTheTotals(), "EVAL.C4"),
    (InflatesBytes(), "EVAL.C4"),
    (SecondPassIntoTheSink(), "EVAL.C4"),
], ids=lambda v: getattr(v, "name", None) or v)
def test_harness_evasion_is_caught(world, bad, rule):
    st = statuses(world, bad)
    assert st.get(rule) == FAIL, (rule, st)


@pytest.mark.parametrize("good", [Small(), WarmupSynthetic()], ids=lambda v: v.name)
def test_honest_twins_pass_every_check(world, good):
    st = statuses(world, good)
    assert st.get("EVAL.PRODUCTION") == PASS and all(v == PASS for v in st.values()), st


def test_probe_positions_change_with_the_seed(world):
    """Cuts and V-fold positions come from the per-run seed: two seeds, two sets (no fixed list to dodge)."""
    from validator.harness import Harness, HarnessSettings

    picks = []
    for seed in (1, 2):
        s = HarnessSettings(**{**SETTINGS.__dict__, "seed": seed})
        h = Harness(world, lambda run: Small(), s)
        picks.append(h.rng.choice(1000, size=5, replace=False).tolist())
    assert picks[0] != picks[1]
    assert HarnessSettings().seed != HarnessSettings().seed or HarnessSettings().seed != HarnessSettings().seed


def test_an_isolated_evaluation_that_never_answers_is_stopped_at_its_deadline():
    """An evaluator that never returns (or a child deadlocked on a lock held at the fork) no longer hangs the
    validator: `run_isolated` kills the child at the deadline and reports it as a failed evaluation."""
    import time

    from validator.harness import run_isolated

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish within 1 s"):
        run_isolated(lambda: time.sleep(120), timeout=1)
    assert time.monotonic() - start < 30
    assert run_isolated(lambda: bytes(3_000_000)) == bytes(3_000_000)  # a result larger than one pipe read
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_isolated(lambda: 1 / 0)
