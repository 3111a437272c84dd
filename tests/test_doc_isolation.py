"""Document isolation (BOS), lora_ttt / phased_ttt causality, and the synthetic compile warm-up."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from core.config import resolve
from core.model import document_mask
from core.registry import Registry
from core.scoring import (
    PlainEvaluator,
    ScoreSink,
    ScoringError,
    doc_ids_of,
    evaluate,
    synthetic_warmup,
)
from core.train import setup, train
from plugins.lib.ttt import ScoredTokens, find_documents
from plugins.lora_ttt import LoRATTTConfig, LoRATTTEvaluator
from plugins.phased_ttt import PhasedTTTConfig, PhasedTTTEvaluator
from plugins.score_first_ttt import ScoreFirstTTTConfig, ScoreFirstTTTEvaluator
from plugins.sliding_window import SlidingWindowEvaluator

REGISTRY = Registry()
BOS = 1
LENS = [90, 150, 70, 200, 60, 120, 80, 100]  # document bodies (BOS not counted)


def make_run(tiny_data, tiny_core, plugins=(), iterations=120):
    sets = [*tiny_core, f"core.data_path={tiny_data}", f"core.iterations={max(iterations, 1)}",
            "core.val_max_tokens=4096", "core.train_log_every=0"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=list(plugins), sets=sets,
                  check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY, make_dir=False)
    if iterations:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(run)
        finally:
            torch.set_num_threads(threads)
    return run


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_core):
    return make_run(tiny_data, tiny_core)


@contextmanager
def in_float64(model):
    """The model in float64 for bit-exact comparisons, back in float32 after (the fixture run is shared)."""
    model.double()
    try:
        yield model
    finally:
        model.float()


def doc_stream(run, lens=LENS, order=None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """BOS-separated documents cut from the validation text (real structure for the model), trimmed to a
    multiple of 64 tokens + 1; returns the stream and each document's (start, body length) in doc order."""
    body = run.val_tokens[run.val_tokens != BOS].to(torch.int64)
    pieces, at = [], 0
    for n in lens:
        pieces.append(body[at : at + n])
        at += n
    order = list(range(len(lens))) if order is None else order
    out, where = [], {}
    pos = 0
    for i in order:
        where[i] = pos
        out += [torch.tensor([BOS]), pieces[i]]
        pos += 1 + lens[i]
    toks = torch.cat(out)
    toks = toks[: ((toks.numel() - 1) // 64) * 64 + 1]
    return toks, [(where[i], lens[i]) for i in range(len(lens))]


def scores(run, evaluator, toks) -> ScoreSink:
    sink = ScoreSink(toks, run.byte_tables)
    saved = {k: v.clone() for k, v in run.model.state_dict().items()}
    evaluator.evaluate(run, run.model, toks, sink)
    run.model.load_state_dict(saved)
    sink.result()
    return sink


def doc_nll(sink, start, length) -> torch.Tensor:
    """Scores of a document's own positions (its body after the BOS, and the next BOS)."""
    return sink.nll[start + 1 : start + 1 + length]


def perturb_doc(toks, start, length, vocab=320) -> torch.Tensor:
    alt = toks.clone()
    seg = alt[start + 1 : start + 1 + length]
    alt[start + 1 : start + 1 + length] = torch.where(seg == BOS, seg, 2 + (seg + 5) % (vocab - 2))
    return alt


def lora(**kw):
    return LoRATTTEvaluator(64, LoRATTTConfig(**{"rank": 4, "chunk_tokens": 16, "batch_docs": 3, "lr": 0.01, **kw}))


def phased(**kw):
    cfg = {"rank": 4, "chunk_tokens": 16, "batch_docs": 3, "lr": 0.01, "prefix_docs": 5, "num_phases": 2,
           "global_lr": 0.01, "global_chunk_tokens": 128, "global_batch_seqs": 2, **kw}
    return PhasedTTTEvaluator(64, PhasedTTTConfig(**cfg))


# --- core support ------------------------------------------------------------------------------------
def test_find_documents_matches_the_record_split():
    toks = torch.tensor([1, 5, 6, 1, 7, 1, 8, 9, 9])
    assert find_documents(toks, 1) == [(0, 4), (3, 3), (5, 4)]
    assert find_documents(torch.tensor([4, 5, 1, 6, 7]), 1) == [(0, 3), (2, 3)]
    covered = [p for s, n in find_documents(toks, 1) for p in range(s + 1, s + n)]
    assert covered == list(range(1, toks.numel()))


def test_document_mask_is_block_diagonal_causal():
    ids = doc_ids_of(torch.tensor([[3, 1, 4, 4, 1, 5]]), 1)
    assert ids.tolist() == [[0, 1, 1, 1, 2, 2]]
    m = document_mask(ids)[0, 0].int().tolist()
    assert m[3] == [0, 1, 1, 1, 0, 0] and m[5] == [0, 0, 0, 0, 1, 1] and m[0] == [1, 0, 0, 0, 0, 0]


def test_masked_forward_equals_each_document_alone(trained):
    """With doc_ids the second document's logits equal those of the document run on its own (RoPE is
    relative, so the shift does not matter), and without them they differ (the model attends across)."""
    model = trained.model
    toks, docs = doc_stream(trained)
    b0, bn = docs[1]
    x = toks[None, : b0 + 1 + bn]
    with torch.no_grad():
        masked = model(x, doc_ids=doc_ids_of(x, BOS))[0, b0:]
        alone = model(x[:, b0:])[0]
        unmasked = model(x)[0, b0:]
    assert torch.allclose(masked, alone, atol=1e-4)
    assert not torch.allclose(unmasked, alone, atol=1e-3)
    one_doc = torch.zeros_like(x)
    with torch.no_grad():
        assert torch.allclose(model(x, doc_ids=one_doc), model(x), atol=1e-4)


# --- document isolation: perturbing document A never moves document B (float64) -------------------------
ISOLATED = {
    "plain_doc_mask": lambda: PlainEvaluator(64, 256, bos_id=BOS),
    "sliding_doc_mask": lambda: SlidingWindowEvaluator(64, 16, 8, bos_id=BOS),
    "lora_ttt": lora,
}


@pytest.mark.parametrize("name", list(ISOLATED))
def test_isolated_evaluators_never_leak_across_documents(trained, name):
    run = trained
    with in_float64(run.model):
        toks, docs = doc_stream(run)
        a = scores(run, ISOLATED[name](), toks)
        assert ISOLATED[name]().doc_isolation is True
        for k in (1, 3):  # perturb document k: every other document's scores are bit-identical
            b = scores(run, ISOLATED[name](), perturb_doc(toks, *docs[k]))
            for j, (s, n) in enumerate(docs):
                if s + n < toks.numel() and j != k:
                    assert torch.equal(doc_nll(a, s, n), doc_nll(b, s, n)), (name, k, j)
            assert not torch.equal(doc_nll(a, *docs[k]), doc_nll(b, *docs[k]))


def test_core_eval_doc_mask_makes_the_run_evaluator_document_masked(trained, tiny_data, tiny_core):
    """`core.eval_doc_mask` (+ `core.bos_id`) reaches the plain evaluator the run uses, and changes scores."""
    masked_run = make_run(tiny_data, [*tiny_core, "core.eval_doc_mask=true", "core.bos_id=1"], iterations=0)
    ev = masked_run.hook.pg_evaluator(run=masked_run)
    assert isinstance(ev, PlainEvaluator) and ev.doc_isolation and ev.bos_id == BOS
    plain = trained.hook.pg_evaluator(run=trained)
    assert plain.bos_id is None and not plain.doc_isolation
    toks, _ = doc_stream(trained)
    a, b = scores(trained, plain, toks), scores(trained, ev, toks)
    assert not torch.equal(a.nll, b.nll)


def test_stream_order_sliding_window_does_see_the_previous_document(trained):
    """The same check fails without the mask: the test can catch a leak."""
    run = trained
    with in_float64(run.model):
        toks, docs = doc_stream(run)
        ev = SlidingWindowEvaluator(64, 16, 8)
        assert ev.doc_isolation is False
        a, b = scores(run, ev, toks), scores(run, ev, perturb_doc(toks, *docs[1]))
        assert not torch.equal(doc_nll(a, *docs[2]), doc_nll(b, *docs[2]))


def test_lora_ttt_scores_do_not_depend_on_the_other_documents_order(trained):
    run = trained
    with in_float64(run.model):
        toks, docs = doc_stream(run)
        order = [0, 4, 2, 6, 1, 5, 3, 7]
        toks2, docs2 = doc_stream(run, order=order)
        a, b = scores(run, lora(), toks), scores(run, lora(), toks2)
        for j in range(6):  # the last documents may be trimmed at the stream end
            if docs[j][0] + docs[j][1] < toks.numel() and docs2[j][0] + docs2[j][1] < toks2.numel():
                assert torch.equal(doc_nll(a, *docs[j]), doc_nll(b, *docs2[j])), j


def test_lora_ttt_reads_uint16_tokens_like_the_shards(trained):
    """Validation shards load as uint16 (torch 2.11 has no uint16 `where` on CPU: found on the H100 run)."""
    run = trained
    toks, _ = doc_stream(run)
    a, b = scores(run, lora(), toks), scores(run, lora(), toks.to(torch.uint16))
    torch.testing.assert_close(a.nll, b.nll, rtol=0, atol=0, equal_nan=True)


TOKEN_SHIFT = {  # plugins, settings, leaks across BOS under a document-masked packed window
    "smeargate_v2": (["smeargate"], ["smeargate.version=v2"], True),
    "smeargate_v2_bos_mask": (["smeargate"], ["smeargate.version=v2", "smeargate.bos_mask=true"], False),
    "smeargate_v4": (["smeargate"], ["smeargate.version=v4"], False),
    "bigram_hash": (["bigram_hash"], [], True),
    "bigram_hash_bos": (["bigram_hash"], ["bigram_hash.bos_id=1"], False),
    "both_bos": (["bigram_hash", "smeargate"], ["bigram_hash.bos_id=1", "smeargate.bos_mask=true"], False),
}


@pytest.mark.parametrize("name", list(TOKEN_SHIFT))
def test_token_shift_parts_under_document_masked_windows(tiny_data, tiny_core, name):
    """SmearGate v2 and BigramHash as in the records (PR #1797's bug class) carry document A into B's BOS
    position in a packed window even with masked attention; their BOS options (v4 always) stop that, and
    lora_ttt, one document per row, never leaks."""
    plugins, sets, leaks = TOKEN_SHIFT[name]
    run = make_run(tiny_data, [*tiny_core, *sets], plugins=plugins, iterations=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    run.model.double()
    toks, docs = doc_stream(run)
    alt = perturb_doc(toks, *docs[1])
    masked = [scores(run, SlidingWindowEvaluator(64, 16, 8, bos_id=BOS), t) for t in (toks, alt)]
    for j in (0, 2, 3):  # a token-shift leak reaches the next document's first score only
        same = torch.equal(doc_nll(masked[0], *docs[j]), doc_nll(masked[1], *docs[j]))
        assert same is not (leaks and j == 2), (name, j)
    rows = [scores(run, lora(), t) for t in (toks, alt)]
    assert torch.equal(doc_nll(rows[0], *docs[2]), doc_nll(rows[1], *docs[2]))


# --- causality (prefix invariance) of the new evaluators, float64 ----------------------------------------
CAUSAL = {
    "sliding_doc_mask": lambda: SlidingWindowEvaluator(64, 16, 8, bos_id=BOS),
    "score_first_ttt_doc_mask": lambda: ScoreFirstTTTEvaluator(64, ScoreFirstTTTConfig(
        chunk_tokens=128, stride=32, lr=0.05, epochs=1, batch_seqs=4, doc_mask=True)),
    "lora_ttt": lora,
    "phased_ttt": phased,
}


@pytest.mark.parametrize("name", list(CAUSAL))
def test_new_evaluators_are_prefix_invariant(trained, name):
    """Perturb tokens at positions >= t (document layout kept): scores < t bit-identical."""
    run = trained
    with in_float64(run.model):
        toks, docs = doc_stream(run)
        for t in (docs[5][0] + 40, docs[2][0] + 17):
            alt = toks.clone()
            seg = alt[t:]
            alt[t:] = torch.where(seg == BOS, seg, 2 + (seg + 7) % 318)
            a, b = scores(run, CAUSAL[name](), toks), scores(run, CAUSAL[name](), alt)
            assert torch.equal(a.nll[1:t], b.nll[1:t]), name
            assert not torch.equal(a.nll[t:], b.nll[t:])


def test_phased_ttt_phases_change_later_scores_only(trained):
    """Documents before the first boundary score exactly as lora_ttt; later ones through the trained base."""
    run = trained
    with in_float64(run.model):
        toks, docs = doc_stream(run)
        ev = phased()
        assert ev.phases(len(find_documents(toks, BOS))) == [2, 5]
        a, b = scores(run, lora(), toks), scores(run, ev, toks)
        end_first = docs[1][0] + docs[1][1] + 1
        assert torch.equal(a.nll[1:end_first], b.nll[1:end_first])
        assert not torch.equal(a.nll[end_first:], b.nll[end_first:])
        no_phase = scores(run, phased(prefix_docs=0), toks)
        assert torch.equal(no_phase.nll[1:], a.nll[1:])


def test_document_ttt_cannot_train_on_unscored_positions(trained):
    sink = ScoreSink(trained.val_tokens[:129].to(torch.int64), trained.byte_tables)
    sink.record(torch.arange(1, 33), torch.zeros(32))
    ScoredTokens(sink).require(torch.arange(1, 33))
    with pytest.raises(ScoringError, match="position 33 before it was scored"):
        ScoredTokens(sink).require(torch.arange(20, 40))


# --- warm-up: synthetic tokens only, exact shapes, state restored ----------------------------------------
class Poisoned(torch.Tensor):
    """A validation tensor that raises on any use except asking its length."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.numel, torch.Tensor.__len__):
            return super().__torch_function__(func, types, args, kwargs or {})
        raise AssertionError(f"warm-up touched validation tokens via {getattr(func, '__name__', func)}")


class ShapeRecorder(torch.nn.Module):
    """Records (input shape, doc-masked, grad enabled) of every forward call."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x, *args, **kwargs):
        self.calls.add((tuple(x.shape), kwargs.get("doc_ids") is not None, torch.is_grad_enabled()))
        return self.inner(x, *args, **kwargs)


WARM = {
    "plain": lambda: PlainEvaluator(64, 448),
    "sliding_doc_mask": lambda: SlidingWindowEvaluator(64, 16, 12, bos_id=BOS),
    "score_first_ttt": lambda: ScoreFirstTTTEvaluator(64, ScoreFirstTTTConfig(
        chunk_tokens=256, stride=32, epochs=1, batch_seqs=5)),
    "lora_ttt": lora,
    "phased_ttt": phased,
}


def _step_run_optimizers(run, toks) -> None:
    """A step of the run's optimizers so they hold state the warm-up must not touch."""
    run.model.train()
    loss = run.model(toks[None, :64], toks[None, 1:65])
    loss.backward()
    for opt in run.optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)


def _snapshot(run):
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    opts = [{k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
             for k, s in o.state_dict()["state"].items()} for o in run.optimizers]
    return weights, opts


def _assert_restored(run, weights, opt_states) -> None:
    assert all(torch.equal(weights[k], v) for k, v in run.model.state_dict().items())
    for o, before in zip(run.optimizers, opt_states, strict=True):
        after = o.state_dict()["state"]
        assert after.keys() == before.keys()
        for k in before:
            assert all(torch.equal(before[k][n], after[k][n]) if torch.is_tensor(before[k][n])
                       else before[k][n] == after[k][n] for n in before[k])


def _poisoned_val(run, n: int):
    real = run.val_tokens
    run.val_tokens = torch.zeros(n, dtype=torch.int64).as_subclass(Poisoned)
    return real


@pytest.mark.parametrize("name", ["plain", "sliding_doc_mask", "score_first_ttt"])
def test_warmup_reads_no_validation_tokens_covers_every_shape_and_restores_state(trained, name):
    run = trained
    toks, _ = doc_stream(run, lens=[90, 150, 70, 200, 60, 120, 80, 100, 300, 40, 250])
    _step_run_optimizers(run, toks)
    weights, opt_states = _snapshot(run)
    ev = WARM[name]()
    warm_calls: set = set()
    eval_calls: set = set()
    real_val = _poisoned_val(run, toks.numel())
    try:
        synthetic_warmup(run, ShapeRecorder(run.model, warm_calls), ev)
    finally:
        run.val_tokens = real_val
    _assert_restored(run, weights, opt_states)
    evaluate(run, ShapeRecorder(run.model, eval_calls), ev, toks)
    assert eval_calls and eval_calls <= warm_calls, (eval_calls - warm_calls, warm_calls)


@pytest.mark.parametrize("name", ["lora_ttt", "phased_ttt"])
def test_document_ttt_warmup_compiles_one_graph_for_every_row_length(trained, name):
    """lora/phased TTT rows have every length chunk·k ≤ eval_seq_len: the warm-up (random tokens, state
    restored) compiles a graph dynamic in the length, and the evaluation then runs with no recompilation
    (dynamo's error_on_recompile) and scores as the eager adapters do."""
    from torch._dynamo.utils import counters

    run = trained
    toks, _ = doc_stream(run, lens=[90, 150, 70, 200, 60, 120, 80, 100, 300, 40, 250])
    _step_run_optimizers(run, toks)
    weights, opt_states = _snapshot(run)
    eager = evaluate(run, run.model, WARM[name](), toks).val_bpb
    torch._dynamo.reset()
    counters.clear()
    ev = WARM[name]()
    ev.ttt.backend = "aot_eager"
    compiled = torch.compile(run.model, backend="eager")  # "the evaluation model is compiled"
    real_val = _poisoned_val(run, toks.numel())
    try:
        synthetic_warmup(run, compiled, ev)
    finally:
        run.val_tokens = real_val
    _assert_restored(run, weights, opt_states)
    assert ev.ttt.compiled and counters["stats"]["unique_graphs"] == 1  # one graph, every length
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            res = evaluate(run, compiled, ev, toks)
    finally:
        torch._dynamo.reset()
    assert res.val_bpb == pytest.approx(eager, rel=1e-5)


def test_doc_masked_and_lora_forwards_trace_with_zero_graph_breaks(trained):
    torch._dynamo.reset()
    run = trained
    toks, _ = doc_stream(run)
    x, y = toks[:128].view(2, 64), toks[1:129].view(2, 64)
    exp = torch._dynamo.explain(run.model)(x, y, reduce=False, doc_ids=doc_ids_of(x, BOS))
    assert exp.graph_break_count == 0, exp.break_reasons
    ev = lora(batch_docs=2)
    ev.ttt.prepare(run, run.model)
    for args in ((x, y), (x,)):
        exp = torch._dynamo.explain(ev.ttt.copy)(*args)
        assert exp.graph_break_count == 0, exp.break_reasons
    torch._dynamo.reset()
