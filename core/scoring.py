"""The scoring protocol: evaluators report per-position NLL to a ScoreSink; BPB is computed here only.

Positions are indices t ≥ 1 into the validation token stream: position t is the prediction of
`tokens[t]` from `tokens[:t]`. The sink counts each position exactly once (a double or missing score
is an error), accumulates bytes with the tokenizer tables (`core.tokenizer.token_bytes`) or, when the
stream comes with per-position byte counts (a byte sidecar such as CaseOps', `pg_val_byte_counts`),
with those: bytes[t] is what position t's target stands for in the original text. It keeps each
position's NLL — one sink, one behaviour, whether or not the validator watches (validator/THREATS.md);
`evaluate` returns the per-position NLL with the totals. `ScoredTokens` is the
only way test-time training may read validation tokens: it releases the prefix the sink has scored
(stream-order TTT) or checks that every position it trains on is scored (document-batched TTT).

Documents: a BOS token starts each document. Document-isolated evaluators either mask attention at
BOS (`doc_ids_of` -> the model's `doc_ids`) or give each document its own rows (`find_documents`).
Compile warm-up (`synthetic_warmup`) runs on random tokens shaped exactly like the evaluation's batches,
never on validation tokens (rulebook EVAL.TTT), and restores the weights and optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from core.tokenizer import ByteTables, token_bytes


class ScoringError(RuntimeError):
    """A violation of the scoring protocol (a position scored twice, left unscored, or read early)."""


@dataclass
class EvalResult:
    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int
    eval_time_ms: float = 0.0
    nll: Tensor | None = None  # per-position NLL (NaN where unscored), the same in every run: the validator reads it


class ScoreSink:
    """Accumulates NLL and bytes per scored position of `tokens` (a 1-D CPU or device tensor).

    `position_bytes` (1-D, parallel to `tokens`): the bytes of each position's target, used instead of
    the tables when given. `checking` is accepted for compatibility and ignored: a sink behaves, and looks,
    the same whether or not the validator is watching; per-position NLL is always kept."""

    def __init__(self, tokens: Tensor, tables: ByteTables, checking: bool = False,
                 position_bytes: Tensor | None = None):
        del checking
        self.tokens = tokens
        self.tables = tables
        self.device = tables.base_bytes.device
        if position_bytes is not None and position_bytes.shape != tokens.reshape(-1).shape:
            raise ScoringError(f"position_bytes has shape {tuple(position_bytes.shape)}, expected "
                               f"({tokens.numel()},): one byte count per token")
        self.position_bytes = None if position_bytes is None else position_bytes.to(self.device, torch.int64)
        n = tokens.numel()
        self.scored = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.byte_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.checking = False
        self.nll = torch.full((n,), float("nan"), dtype=torch.float64, device=self.device)
        self.lognorm = None
        self._frontier = 1  # every position < frontier is scored (host-side, for ScoredTokens)

    def record(self, positions: Tensor, nll: Tensor, lognorm: Tensor | None = None) -> None:
        """Record NLL (nats) for target positions (any shape, flattened together)."""
        pos = positions.reshape(-1).to(self.device)
        val = nll.reshape(-1).to(self.device, torch.float64)
        del lognorm  # accepted for compatibility; the distribution is checked black-box (EVAL.C2)
        if pos.numel() and (int(pos.min()) < 1 or int(pos.max()) >= self.tokens.numel()):
            raise ScoringError(f"position out of range [1, {self.tokens.numel() - 1}]")
        if bool(self.scored[pos].any()) or pos.unique().numel() != pos.numel():
            raise ScoringError("a position was scored twice")
        self.nll[pos] = val
        self.scored[pos] = True
        self.loss_sum += val.sum()
        self.count += pos.numel()
        if self.position_bytes is not None:
            self.byte_sum += self.position_bytes[pos].to(torch.float64).sum()
            return
        tgt = self.tokens[pos.to(self.tokens.device)].to(self.device, torch.int64)
        prev = self.tokens[(pos - 1).to(self.tokens.device)].to(self.device, torch.int64)
        self.byte_sum += token_bytes(prev, tgt, self.tables).to(torch.float64).sum()

    def advance_frontier(self, upto: int) -> None:
        """Declare that every position < `upto` has been scored (checked); releases them to TTT.

        Collective when distributed: every rank calls it with the same `upto`, and the check covers
        the positions scored by all ranks together.
        """
        if upto <= self._frontier:
            return
        seg = self.scored[self._frontier : upto].to(torch.uint8)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(seg, op=dist.ReduceOp.MAX)
        if not bool(seg.all()):
            raise ScoringError(f"frontier {upto} declared but positions below it are unscored")
        self._frontier = upto

    @property
    def frontier(self) -> int:
        return self._frontier

    def result(self, positions_expected: int | None = None) -> EvalResult:
        """Reduce across ranks and compute val_loss (nats/token) and val_bpb; checks coverage."""
        loss_sum, byte_sum, count = self.loss_sum.clone(), self.byte_sum.clone(), self.count.clone()
        scored = self.scored.to(torch.int32)
        if dist.is_available() and dist.is_initialized():
            for t in (loss_sum, byte_sum, count, scored):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        expected = self.tokens.numel() - 1 if positions_expected is None else positions_expected
        n_scored = int(count.item())
        if n_scored != expected or int((scored[1:] == 1).sum().item()) != expected:
            raise ScoringError(f"expected each of {expected} positions scored once, got {n_scored} scores")
        return bpb_from_sums(float(loss_sum.item()), float(byte_sum.item()), n_scored)


def bpb_from_sums(loss_sum: float, byte_sum: float, count: int) -> EvalResult:
    """val_loss = mean NLL in nats; val_bpb = bits per token × tokens per byte."""
    val_loss = loss_sum / count
    val_bpb = (val_loss / math.log(2.0)) * (count / byte_sum)
    return EvalResult(val_loss=val_loss, val_bpb=val_bpb, tokens=count, bytes=int(round(byte_sum)))


class ScoredTokens:
    """The validation tokens that test-time training may read: only the sink's scored prefix."""

    def __init__(self, sink: ScoreSink):
        self._sink = sink

    def available(self) -> int:
        """Number of tokens readable: tokens[:frontier] (targets of all scored positions)."""
        return self._sink.frontier

    def read(self, start: int, end: int) -> Tensor:
        if end > self._sink.frontier or start < 0:
            raise ScoringError(
                f"test-time training read tokens[{start}:{end}] but only tokens[:{self._sink.frontier}] are scored"
            )
        return self._sink.tokens[start:end]

    def require(self, positions: Tensor) -> None:
        """Raise unless every position in `positions` is already scored (on this rank): document-batched
        TTT calls this before each update with the positions whose targets it trains on."""
        pos = positions.reshape(-1).to(self._sink.device)
        if pos.numel() and not bool(self._sink.scored[pos].all()):
            bad = int(pos[~self._sink.scored[pos]][0])
            raise ScoringError(f"test-time training on position {bad} before it was scored")


def doc_ids_of(x: Tensor, bos_id: int) -> Tensor:
    """(B, T) tokens -> (B, T) document ids within each row: a BOS starts a new document."""
    return torch.cumsum((x == bos_id).to(torch.int32), dim=1)


def find_documents(tokens: Tensor, bos_id: int) -> list[tuple[int, int]]:
    """(start, length) of each document: from its BOS up to and including the next BOS (PR #1530's split).

    A document predicts positions start+1 .. start+length-1, so the next document's BOS is predicted from
    this document's context, and every position 1..N-1 belongs to exactly one document. Tokens before
    the first BOS (a stream that does not start with one) form a first document starting at 0.
    """
    n = tokens.numel()
    starts = (tokens.reshape(-1) == bos_id).nonzero().reshape(-1).cpu().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    docs = []
    for i, s in enumerate(starts):
        end = starts[i + 1] + 1 if i + 1 < len(starts) else n
        if end - s >= 2:
            docs.append((s, end - s))
    return docs


class Evaluator(Protocol):
    """Scores every position of the validation stream into the sink (each exactly once).

    Optional: `warmup(run, model, n_tokens)` compiles every shape the evaluation of an n_tokens stream will
    use, on random tokens (see `synthetic_warmup`); `doc_isolation = True` claims that no score depends on
    another document (the validator's EVAL.DOC_ISOLATION check reads it).
    """

    name: str

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None: ...


def nll_and_lognorm(model, x: Tensor, y: Tensor, autocast: torch.dtype | None,
                    doc_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-position NLL and log-normaliser from full logits (used in checking mode)."""
    with torch.autocast(device_type=x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        logits = (model(x) if doc_ids is None else model(x, doc_ids=doc_ids)).double()
    lognorm = torch.logsumexp(logits, dim=-1)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)
    return nll, lognorm


def rank_span(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    return (n_items * rank) // world_size, (n_items * (rank + 1)) // world_size


def batch_sizes(n_items: int, batch: int) -> set[int]:
    """The distinct batch sizes of `n_items` cut into batches of `batch` (full ones and the last partial)."""
    return {b for b in (batch if n_items >= batch else 0, n_items % batch) if b > 0}


def score_nll(run, model, x: Tensor, y: Tensor, checking: bool, bos_id: int | None = None
              ) -> tuple[Tensor, Tensor | None]:
    """Per-position NLL (and the log-normaliser in checking mode) of a batch, attention masked at BOS when
    `bos_id` is given."""
    doc_ids = None if bos_id is None else doc_ids_of(x, bos_id)
    if checking:
        return nll_and_lognorm(model, x, y, run.autocast_dtype, doc_ids)
    with run.autocast():
        nll = model(x, y, reduce=False) if doc_ids is None else model(x, y, reduce=False, doc_ids=doc_ids)
    return nll.detach(), None


def warm_forward(run, model, shapes: set[tuple[int, int]], bos_id: int | None = None) -> None:
    """Run the scoring forward on random tokens for each (batch, length) shape, so compiled graphs exist;
    twice per shape: the first call fills the model's rotary cache, which the graph then guards on."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b, t in sorted(shapes) * 2:
            x, y = (torch.randint(0, run.core.vocab_size, (b, t), generator=gen).to(run.device) for _ in range(2))
            score_nll(run, model, x, y, False, bos_id)  # contiguous rows, as every evaluator's batches


class PlainEvaluator:
    """The baseline's evaluation: non-overlapping windows of eval_seq_len, split across ranks."""

    name = "plain"

    def __init__(self, seq_len: int, batch_tokens: int, bos_id: int | None = None):
        self.seq_len = seq_len
        self.batch_tokens = batch_tokens
        self.bos_id = bos_id
        self.doc_isolation = bos_id is not None

    def warmup(self, run, model, n_tokens: int) -> None:
        total_seqs = (n_tokens - 1) // self.seq_len
        lo, hi = rank_span(total_seqs, run.rank, run.world_size)
        sizes = batch_sizes(hi - lo, max(1, self.batch_tokens // self.seq_len))
        warm_forward(run, model, {(b, self.seq_len) for b in sizes}, self.bos_id)

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        seq_len = self.seq_len
        total_seqs = (tokens.numel() - 1) // seq_len
        batch_seqs = max(1, self.batch_tokens // seq_len)
        start, end = rank_span(total_seqs, run.rank, run.world_size)
        device = run.device
        with torch.no_grad():
            for s in range(start, end, batch_seqs):
                e = min(s + batch_seqs, end)
                local = tokens[s * seq_len : e * seq_len + 1].to(device=device, dtype=torch.int64, non_blocking=True)
                x = local[:-1].reshape(-1, seq_len)
                y = local[1:].reshape(-1, seq_len)
                positions = torch.arange(s * seq_len + 1, e * seq_len + 1, device=device).view_as(y)
                nll, lognorm = score_nll(run, model, x, y, sink.checking, self.bos_id)
                sink.record(positions, nll, lognorm)
                if run.world_size == 1:
                    sink.advance_frontier(e * seq_len + 1)


@contextmanager
def restored_weights(model: torch.nn.Module) -> Iterator[None]:
    """Snapshot `model`'s state dict and load it back on exit, however the block ends (TTT, warm-up, probes)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)


def synthetic_warmup(run, model, evaluator, n_tokens: int | None = None, max_tokens: int = 65_537) -> float:
    """Compile warm-up on random tokens, never validation tokens (rulebook EVAL.TTT); returns milliseconds.

    An evaluator with `warmup(run, model, n_tokens)` warms exactly the shapes it will meet on a stream of
    `n_tokens` (the validation length: the only thing read from the validation set); otherwise the
    evaluator runs once on a random stream of min(n_tokens, max_tokens) tokens. The model's weights and
    the run's optimizer state are restored afterwards.
    """
    import copy
    import time

    n = run.val_tokens.numel() if n_tokens is None else n_tokens
    saved_opts = [copy.deepcopy(o.state_dict()) for o in run.optimizers]
    run.synchronize()
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with restored_weights(run.model):
            if hasattr(evaluator, "warmup"):
                evaluator.warmup(run, model, n)
            else:
                gen = torch.Generator().manual_seed(0)
                tokens = torch.randint(0, run.core.vocab_size, (min(n, max_tokens),), generator=gen,
                                       dtype=torch.int64)
                evaluator.evaluate(run, model, tokens, ScoreSink(tokens, run.byte_tables))
            run.synchronize()
    finally:
        for opt, st in zip(run.optimizers, saved_opts, strict=True):
            opt.load_state_dict(st)
        model.train(was_training)
    return 1000.0 * (time.perf_counter() - t0)


def evaluate(run, model, evaluator, tokens: Tensor, checking: bool = False,
             position_bytes: Tensor | None = None) -> EvalResult:
    """Run one evaluator over `tokens` through a fresh sink; returns the reduced result. The validation
    stream (`tokens is run.val_tokens`) brings its per-position byte counts (`run.val_bytes`) unless
    `position_bytes` is given."""
    import time

    if position_bytes is None and tokens is getattr(run, "val_tokens", None):
        position_bytes = getattr(run, "val_bytes", None)
    sink = ScoreSink(tokens, run.byte_tables, checking=checking, position_bytes=position_bytes)
    was_training = model.training
    model.eval()
    run.synchronize()
    t0 = time.perf_counter()
    evaluator.evaluate(run, model, tokens, sink)
    run.synchronize()
    result = sink.result()
    result.eval_time_ms = 1000.0 * (time.perf_counter() - t0)
    result.nll = sink.nll
    model.train(was_training)
    return result
