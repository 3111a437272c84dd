"""The scoring protocol: evaluators report per-position NLL to a ScoreSink; BPB is computed here only.

Position t ≥ 1 is the prediction of `tokens[t]` from `tokens[:t]`. The sink counts each position exactly once and sums
its bytes (the tokenizer tables, or the stream's per-position counts from `pg_val_byte_counts`); it behaves the same
whether or not the validator watches (validator/THREATS.md). Its frontier releases the scored prefix to test-time
training, which reads validation tokens only through `plugins.lib.ttt.ScoredTokens`. Compile warm-up runs on random
tokens, never on validation tokens (rulebook EVAL.TTT)."""

from __future__ import annotations

import copy
import math
import time
from collections import namedtuple
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils._pytree import tree_map

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
    """Accumulates NLL and bytes per scored position of `tokens` (a 1-D CPU or device tensor), and keeps
    each position's NLL. `position_bytes` (parallel to `tokens`): each target's bytes, instead of the tables."""

    def __init__(self, tokens: Tensor, tables: ByteTables, position_bytes: Tensor | None = None):
        self.tokens, self.tables, self.device = tokens, tables, tables.base_bytes.device
        if position_bytes is not None and position_bytes.shape != tokens.reshape(-1).shape:
            raise ScoringError(f"position_bytes has shape {tuple(position_bytes.shape)}, expected "
                               f"({tokens.numel()},): one byte count per token")
        self.position_bytes = None if position_bytes is None else position_bytes.to(self.device, torch.int64)
        n = tokens.numel()
        self.scored = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.loss_sum, self.byte_sum, self.count = (torch.zeros((), dtype=torch.float64, device=self.device)
                                                    for _ in range(3))
        self.nll = torch.full((n,), float("nan"), dtype=torch.float64, device=self.device)
        self.frontier = 1  # every position < frontier is scored (host-side; moved by advance_frontier only)

    def record(self, positions: Tensor, nll: Tensor, lognorm: Tensor | None = None) -> None:
        """Record NLL (nats) for target positions (any shape, flattened together); `lognorm` is ignored
        (accepted from older evaluators: the distribution is checked black-box, EVAL.C2)."""
        pos = positions.reshape(-1).to(self.device)
        val = nll.reshape(-1).to(self.device, torch.float64)
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
        """Declare (checked) that every position < `upto` is scored, releasing them to TTT. Collective when
        distributed: every rank calls it with the same `upto`; the check covers all ranks' scores."""
        if upto <= self.frontier:
            return
        seg = self.scored[self.frontier : upto].to(torch.uint8)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(seg, op=dist.ReduceOp.MAX)
        if not bool(seg.all()):
            raise ScoringError(f"frontier {upto} declared but positions below it are unscored")
        self.frontier = upto

    def result(self) -> EvalResult:
        """Reduce across ranks and compute val_loss (nats/token) and val_bpb; checks coverage."""
        loss_sum, byte_sum, count = self.loss_sum.clone(), self.byte_sum.clone(), self.count.clone()
        scored = self.scored.to(torch.int32)
        if dist.is_available() and dist.is_initialized():
            for t in (loss_sum, byte_sum, count, scored):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        expected = self.tokens.numel() - 1
        n_scored = int(count.item())
        if n_scored != expected or int((scored[1:] == 1).sum().item()) != expected:
            raise ScoringError(f"expected each of {expected} positions scored once, got {n_scored} scores")
        val_loss = float(loss_sum.item()) / n_scored  # nats per token; bpb = bits per token × tokens per byte
        val_bpb = val_loss / math.log(2.0) * n_scored / float(byte_sum.item())
        return EvalResult(val_loss=val_loss, val_bpb=val_bpb, tokens=n_scored, bytes=int(round(byte_sum.item())))


def doc_ids_of(x: Tensor, bos_id: int) -> Tensor:
    """(B, T) tokens -> (B, T) document ids within each row: a BOS starts a new document."""
    return torch.cumsum((x == bos_id).to(torch.int32), dim=1)


class Evaluator(Protocol):
    """Scores every position of the validation stream into the sink (each exactly once). Optional:
    `warmup(run, model, n_tokens)` compiles every shape an n_tokens stream will use, on random tokens;
    `eager_seconds(run, n_tokens)`: a timed eager pass estimate, equal on every rank (`eval_compile = "auto"`);
    `doc_isolation = True` claims no score depends on another document (validator EVAL.DOC_ISOLATION)."""

    name: str

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None: ...


def rank_span(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    return (n_items * rank) // world_size, (n_items * (rank + 1)) // world_size


def batch_sizes(n_items: int, batch: int) -> set[int]:
    """The distinct batch sizes of `n_items` cut into batches of `batch` (full ones and the last partial)."""
    return {b for b in (batch if n_items >= batch else 0, n_items % batch) if b > 0}


def score_nll(run, model, x: Tensor, y: Tensor, bos_id: int | None = None, tail: int = 0) -> Tensor:
    """Per-position NLL (B, T) of a batch, attention masked at BOS with `bos_id`; `tail` > 0: (B, tail), the last."""
    kw = {"doc_ids": doc_ids_of(x, bos_id)} if bos_id is not None else {}
    with run.autocast():
        return model(x, y, reduce=False, **kw, **({"tail": tail} if tail else {})).detach()


def warm_forward(run, model, shapes: set[tuple[int, int]], bos_id: int | None = None, tail: int = 0) -> None:
    """Run the scoring forward on random tokens for each (batch, length) shape, so compiled graphs exist;
    twice per shape: the first call fills the model's rotary cache, which the graph then guards on."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b, t in sorted(shapes) * 2:
            x, y = (torch.randint(0, run.core.vocab_size, (b, t), generator=gen).to(run.device) for _ in range(2))
            score_nll(run, model, x, y, bos_id, tail)  # contiguous rows, as every evaluator's batches


class PlainEvaluator:
    """The baseline's evaluation: non-overlapping windows of eval_seq_len, split across ranks."""

    name = "plain"

    def __init__(self, seq_len: int, batch_tokens: int, bos_id: int | None = None):
        self.seq_len = seq_len
        self.batch_tokens = batch_tokens
        self.bos_id = bos_id
        self.doc_isolation = bos_id is not None

    def warmup(self, run, model, n_tokens: int) -> None:
        lo, hi = rank_span((n_tokens - 1) // self.seq_len, run.rank, run.world_size)
        sizes = batch_sizes(hi - lo, max(1, self.batch_tokens // self.seq_len))
        warm_forward(run, model, {(b, self.seq_len) for b in sizes}, self.bos_id)

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        seq_len, device = self.seq_len, run.device
        batch_seqs = max(1, self.batch_tokens // seq_len)
        start, end = rank_span((tokens.numel() - 1) // seq_len, run.rank, run.world_size)
        with torch.no_grad():
            for s in range(start, end, batch_seqs):
                e = min(s + batch_seqs, end)
                local = tokens[s * seq_len : e * seq_len + 1].to(device=device, dtype=torch.int64, non_blocking=True)
                x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
                positions = torch.arange(s * seq_len + 1, e * seq_len + 1, device=device).view_as(y)
                sink.record(positions, score_nll(run, model, x, y, self.bos_id))
                if run.world_size == 1:
                    sink.advance_frontier(e * seq_len + 1)


@contextmanager
def restored_weights(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> Iterator[None]:
    """Snapshot `model`'s state dict (and the optimizers' states) in host memory and load them back on exit,
    however the block ends (TTT, warm-up, probes); host copies keep the snapshot out of the device's peak, as the
    records' warm-up does."""
    host_copy = lambda x: x.detach().to("cpu", copy=True) if isinstance(x, Tensor) else copy.deepcopy(x)
    saved = tree_map(host_copy, model.state_dict())
    saved_opts = [tree_map(host_copy, o.state_dict()) for o in optimizers]
    try:
        yield
    finally:
        model.load_state_dict(saved)
        for opt, state in zip(optimizers, saved_opts, strict=True):
            opt.load_state_dict(state)


def synthetic_warmup(run, model, evaluator, n_tokens: int | None = None, max_tokens: int = 65_537) -> float:
    """Compile warm-up on random tokens (never validation tokens; rulebook EVAL.TTT); returns milliseconds.
    `evaluator.warmup(run, model, n_tokens)` when it has one (n_tokens: the validation length), else one
    evaluation of a random stream of min(n_tokens, max_tokens) tokens; weights and optimizer state restored."""
    n = run.val_tokens.numel() if n_tokens is None else n_tokens
    run.synchronize()
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with restored_weights(run.model, run.optimizers):
            if hasattr(evaluator, "warmup"):
                evaluator.warmup(run, model, n)
            else:
                tokens = torch.randint(0, run.core.vocab_size, (min(n, max_tokens),),
                                       generator=torch.Generator().manual_seed(0), dtype=torch.int64)
                evaluator.evaluate(run, model, tokens, ScoreSink(tokens, run.byte_tables))
            run.synchronize()
    finally:
        model.train(was_training)
    return 1000.0 * (time.perf_counter() - t0)


EAGER_MAX_S = 36.6 * 2.54 / (2.54 - 1)  # break-even, measured (H200, PR #315 sliding): 36.6 s warm-up, 2.54x eager
EvalPlan = namedtuple("EvalPlan", "model mode warmup_ms eager_estimate_s")  # prepare_eval's choice (ms, s)


def prepare_eval(run, evaluator, n_tokens: int | None = None, mode: str | None = None) -> EvalPlan:
    """The evaluating model by `core.eval_compile` (or `mode`), warmed (eval phase): compile (random tokens), eager,
    or auto: eager while the evaluator's `eager_seconds(run, n)` ≤ EAGER_MAX_S (≤ compile + E / speed-up)."""
    if run.eval_model is run.model:
        return EvalPlan(run.model, "eager", 0.0, None)
    chosen, n = mode or run.core.eval_compile, run.val_tokens.numel() if n_tokens is None else n_tokens
    t0, estimate = time.perf_counter(), None
    if chosen == "auto":
        estimate = evaluator.eager_seconds(run, n) if hasattr(evaluator, "eager_seconds") else None
    compiled = chosen == "compile" or chosen == "auto" and (estimate is None or estimate > EAGER_MAX_S)
    if compiled:
        synthetic_warmup(run, run.eval_model, evaluator, n)
    model = run.eval_model if compiled else run.model
    return EvalPlan(model, "compile" if compiled else "eager", 1e3 * (time.perf_counter() - t0), estimate)


def evaluate(run, model, evaluator, tokens: Tensor, position_bytes: Tensor | None = None) -> EvalResult:
    """Run one evaluator over `tokens` through a fresh sink; returns the reduced result. The validation
    stream (`tokens is run.val_tokens`) brings its byte counts (`run.val_bytes`) unless `position_bytes`."""
    if position_bytes is None and tokens is getattr(run, "val_tokens", None):
        position_bytes = getattr(run, "val_bytes", None)
    sink = ScoreSink(tokens, run.byte_tables, position_bytes=position_bytes)
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
