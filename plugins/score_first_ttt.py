"""Score-first test-time training: score a chunk, then adapt the model on it with SGD (PR #549, #1413/#1493).

The validation stream is cut into chunks of `chunk_tokens`; each sliding window (stride `stride`) belongs
to the chunk of its first scored position. For each chunk: (1) score its windows with no gradient
through the core `ScoreSink`; (2) unless it is the last chunk, train all (unfrozen) parameters on the
chunk's tokens, read only through `ScoredTokens` (so only tokens already scored), for `epochs` of
SGD(momentum) with a cosine LR across chunks and grad clipping; the adapted weights carry over. PR #549:
lr 0.002, 3 epochs, momentum 0.9, clip 1.0, 32 sequences a batch; PR #1413/#1493: lr 0.005. The model's
weights are restored after evaluation. `doc_mask` (not in the records) masks attention at BOS while
scoring and adapting; adaptation still carries across documents in stream order, as in the source.
Scoring batches: batch_seqs rows and each chunk's short last batch (head on the last `stride` positions); a compiled
evaluation adapts eagerly unless `compile_adapt`, which warms the training graph of each step's row count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import (
    ScoreSink,
    doc_ids_of,
    rank_span,
    restored_weights,
    warm_forward,
)
from plugins.lib import windows
from plugins.lib.settings import LR, PASSES, ROWS, range_errors, seq_bound
from plugins.lib.ttt import ScoredTokens, cosine_lr, sgd_rows
from plugins.lib.windows import (
    score_windows,
    scoring_tail,
    window_batch_shapes,
    window_batches,
    window_ends,
    window_tail,
)


@dataclass
class ScoreFirstTTTConfig:
    chunk_tokens: int = field(default=32768, metadata={"help": "tokens per score-then-adapt chunk"})
    stride: int = field(default=64, metadata={"help": "sliding-window stride used for scoring"})
    lr: float = field(default=0.002, metadata={"help": "SGD learning rate (PR #549: 0.002, #1413/#1493: 0.005)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    epochs: int = field(default=3, metadata={"help": "passes over each scored chunk"})
    batch_seqs: int = field(default=32, metadata={"help": "sequences per SGD step and windows per scoring batch"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0 = off)"})
    freeze_blocks: int = field(default=0, metadata={"help": "leading blocks kept frozen (PR #461 froze 2)"})
    doc_mask: bool = field(default=False, metadata={"help": "no attention across BOS when scoring and adapting"})
    bos_id: int = field(default=1, metadata={"help": "BOS token id (document start)"})
    compile_adapt: bool = field(default=False, metadata={
        "help": "a compiled evaluation also adapts through the compiled model (one fwd+bwd graph, warmed on "
                "random tokens); default: adaptation runs eagerly"})


class ScoreFirstTTTEvaluator:
    name = "score_first_ttt"
    family = "evaluation"
    doc_isolation = False  # adaptation carries across documents (stream order)

    def __init__(self, seq_len: int, cfg: ScoreFirstTTTConfig):
        if not 0 < cfg.stride <= seq_len:
            raise ValueError(f"score_first_ttt.stride must be in (0, eval_seq_len={seq_len}], got {cfg.stride}")
        if cfg.chunk_tokens < seq_len:
            raise ValueError(f"score_first_ttt.chunk_tokens={cfg.chunk_tokens} must be >= eval_seq_len={seq_len}")
        self.seq_len, self.cfg = seq_len, cfg
        self.bos_id = cfg.bos_id if cfg.doc_mask else None
        self.tail = scoring_tail(cfg.stride, seq_len)

    def chunks(self, n_positions: int) -> tuple[list[int], list[range]]:
        """Window ends and, per chunk, the range of window indices whose first scored position is in it."""
        ends = window_ends(n_positions, self.seq_len, self.cfg.stride)
        firsts = [0, *ends[:-1]]  # window k first scores position firsts[k] + 1
        groups: list[range] = []
        start = 0
        for k in range(1, len(ends) + 1):
            if k == len(ends) or firsts[k] // self.cfg.chunk_tokens != firsts[start] // self.cfg.chunk_tokens:
                groups.append(range(start, k))
                start = k
        return ends, groups

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        with restored_weights(run.model):
            self._evaluate(run, model, run.model, tokens, sink)

    def _evaluate(self, run, model, base, tokens: Tensor, sink: ScoreSink) -> None:
        cfg = self.cfg
        ends, groups = self.chunks(tokens.numel() - 1)
        scored = ScoredTokens(sink)
        params = [p for n, p in base.named_parameters() if not _frozen(n, cfg.freeze_blocks)]
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
        for ci, group in enumerate(groups):
            lo, hi = rank_span(len(group), run.rank, run.world_size)
            base.eval()
            score_windows(run, model, tokens, sink, ends, range(group.start + lo, group.start + hi),
                          self.seq_len, cfg.batch_seqs, self.bos_id, self.tail)
            chunk_end = ends[group.stop - 1]
            sink.advance_frontier(chunk_end + 1)
            if ci == len(groups) - 1:
                break
            chunk_start = ends[group.start - 1] if group.start > 0 else 0
            train_tokens = scored.read(chunk_start, chunk_end + 1)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(cfg.lr, ci, len(groups))
            self._adapt(run, model if cfg.compile_adapt else base, opt, params, train_tokens)

    def _adapt(self, run, base, opt, params, chunk: Tensor) -> None:
        """SGD epochs over the chunk's rows of seq_len (+1 for targets), split across ranks."""
        cfg = self.cfg
        sgd_rows(run, base, opt, params, chunk, self.seq_len, cfg.batch_seqs, cfg.epochs, cfg.grad_clip, self.bos_id)

    def forward_plan(self, run, n_tokens: int) -> tuple[tuple[int, int], int]:
        """Scoring forwards only: adaptation runs eagerly whatever the eval mode."""
        _, groups = self.chunks(n_tokens - 1)
        count = sum(window_batches(len(g), run.rank, run.world_size, self.cfg.batch_seqs) for g in groups)
        return (self.cfg.batch_seqs, min(self.seq_len, n_tokens - 1)), count

    def eager_seconds(self, run, n_tokens: int) -> float:
        return windows.eager_seconds(run, self, n_tokens)

    def warmup(self, run, model, n_tokens: int) -> None:
        """Every scoring shape (full batches and each chunk's short last one); adaptation runs on the
        uncompiled model unless `compile_adapt`."""
        _, groups = self.chunks(n_tokens - 1)
        win = min(self.seq_len, n_tokens - 1)
        shapes: set[tuple[int, int]] = set()
        for group in groups:
            shapes |= window_batch_shapes(len(group), run.rank, run.world_size, self.cfg.batch_seqs, win, self.tail,
                                          group.start == 0)
        warm_forward(run, model, shapes, self.bos_id, window_tail(self.tail, win))
        if self.cfg.compile_adapt and model is not run.model:
            self._warm_adapt(run, model, n_tokens)

    def adapt_rows(self, run, n_tokens: int) -> set[int]:
        """Row counts of this rank's SGD steps over every adapted chunk (`sgd_rows`' batches)."""
        ends, groups = self.chunks(n_tokens - 1)
        counts: set[int] = set()
        for group in groups[:-1]:
            n_rows = (ends[group.stop - 1] - (ends[group.start - 1] if group.start > 0 else 0)) // self.seq_len
            lo, hi = rank_span(n_rows, run.rank, run.world_size)
            for b in range(0, n_rows, self.cfg.batch_seqs):
                counts.add(max(0, min(b + self.cfg.batch_seqs, hi) - max(b, lo)))
        return counts - {0}

    def _warm_adapt(self, run, model, n_tokens: int) -> None:
        """Forward + backward of the compiled model in training mode at every step's row count, on random tokens;
        gradients dropped after (weights are restored by the caller, `synthetic_warmup`)."""
        gen = torch.Generator().manual_seed(1)
        model.train()
        for rows in sorted(self.adapt_rows(run, n_tokens)):
            x, y = torch.randint(0, run.core.vocab_size, (2, rows, self.seq_len), generator=gen).to(run.device)
            kw = {} if self.bos_id is None else {"doc_ids": doc_ids_of(x, self.bos_id)}
            with run.autocast():
                model(x, y, **kw).backward()
        model.eval()
        for p in run.model.parameters():
            p.grad = None


def _frozen(name: str, freeze_blocks: int) -> bool:
    parts = name.split(".")
    return freeze_blocks > 0 and parts[0] == "blocks" and int(parts[1]) < freeze_blocks


class ScoreFirstTTT(Plugin):
    name = "score_first_ttt"
    family = "evaluation"
    summary = "Score each chunk first, then adapt the whole model on it with SGD (legal test-time training)."
    sources = ("openai/parameter-golf#461", "openai/parameter-golf#549", "openai/parameter-golf#1413",
               "openai/parameter-golf#1493")
    config = ScoreFirstTTTConfig
    provides = ("evaluator",)
    test_settings = {"score_first_ttt": {"chunk_tokens": 1024, "stride": 32, "lr": 0.01, "epochs": 1}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, chunk_tokens=(1, seq_bound(core)),
                            stride=(1, core.eval_seq_len or core.train_seq_len), lr=(0.0, LR), momentum=(0.0, 1.0),
                            epochs=(0, PASSES), batch_seqs=(1, ROWS),
                            grad_clip=(0.0, None), freeze_blocks=(0, core.num_layers), bos_id=(-1, core.vocab_size - 1))

    @hookimpl
    def pg_evaluator(self, run):
        return ScoreFirstTTTEvaluator(run.eval_seq_len, self.cfg)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update(ttt_lr=self.cfg.lr, ttt_epochs=self.cfg.epochs, ttt_chunk_tokens=self.cfg.chunk_tokens)
