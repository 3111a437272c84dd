"""Sliding-window evaluation: every scored token sees at least eval_seq_len - stride tokens of context.

PR #50 (stride 64), with the window list of PR #1218 (no tail window scored twice): windows of
eval_seq_len end every `stride` tokens; each scores only the positions the previous window did not.
With stride = eval_seq_len it is exactly the plain non-overlapping evaluation. `doc_mask` (document
isolation, PR #1530's varlen attention / the BOS fix of PR #1851) masks attention at BOS inside each
window, so a position sees only its own document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import ScoreSink, rank_span, warm_forward
from plugins.lib import windows
from plugins.lib.settings import ROWS, range_errors
from plugins.lib.windows import (
    score_windows,
    scoring_tail,
    window_batch_shapes,
    window_batches,
    window_ends,
    window_tail,
)


@dataclass
class SlidingWindowConfig:
    stride: int = field(default=64, metadata={"help": "new tokens scored per window"})
    batch_seqs: int = field(default=32, metadata={"help": "windows per forward batch"})
    doc_mask: bool = field(default=False, metadata={"help": "no attention across BOS (document isolation)"})
    bos_id: int = field(default=1, metadata={"help": "BOS token id (document start)"})


class SlidingWindowEvaluator:
    name = "sliding_window"
    family = "evaluation"

    def __init__(self, seq_len: int, stride: int, batch_seqs: int, bos_id: int | None = None):
        if not 0 < stride <= seq_len:
            raise ValueError(f"sliding_window.stride must be in (0, eval_seq_len={seq_len}], got {stride}")
        self.seq_len, self.stride, self.batch_seqs, self.bos_id = seq_len, stride, batch_seqs, bos_id
        self.doc_isolation = bos_id is not None
        self.tail = scoring_tail(stride, seq_len)

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        ends = window_ends(tokens.numel() - 1, self.seq_len, self.stride)
        lo, hi = rank_span(len(ends), run.rank, run.world_size)
        score_windows(run, model, tokens, sink, ends, range(lo, hi), self.seq_len, self.batch_seqs, self.bos_id,
                      self.tail)

    def forward_plan(self, run, n_tokens: int) -> tuple[tuple[int, int], int]:
        n_windows = len(window_ends(n_tokens - 1, self.seq_len, self.stride))
        return (self.batch_seqs, min(self.seq_len, n_tokens - 1)), window_batches(
            n_windows, run.rank, run.world_size, self.batch_seqs)

    def eager_seconds(self, run, n_tokens: int) -> float:
        return windows.eager_seconds(run, self, n_tokens)

    def warmup(self, run, model, n_tokens: int) -> None:
        n_windows = len(window_ends(n_tokens - 1, self.seq_len, self.stride))
        win = min(self.seq_len, n_tokens - 1)
        shapes = window_batch_shapes(n_windows, run.rank, run.world_size, self.batch_seqs, win, self.tail)
        warm_forward(run, model, shapes, self.bos_id, window_tail(self.tail, win))


class SlidingWindow(Plugin):
    name = "sliding_window"
    family = "evaluation"
    summary = "Score with overlapping windows (stride S) so every token has near-full context."
    sources = ("openai/parameter-golf#50", "openai/parameter-golf#1218")
    provides = ("evaluator",)
    config = SlidingWindowConfig
    test_settings = {"sliding_window": {"stride": 16}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, stride=(1, core.eval_seq_len or core.train_seq_len), batch_seqs=(1, ROWS),
                            bos_id=(-1, core.vocab_size - 1))

    @hookimpl
    def pg_evaluator(self, run):
        bos = self.cfg.bos_id if self.cfg.doc_mask else None
        return SlidingWindowEvaluator(run.eval_seq_len, self.cfg.stride, self.cfg.batch_seqs, bos)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["eval_stride"] = self.cfg.stride
        fields["eval_doc_mask"] = self.cfg.doc_mask
