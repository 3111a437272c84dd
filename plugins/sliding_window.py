"""Sliding-window evaluation: every scored token sees at least eval_seq_len - stride tokens of context.

PR #50 (stride 64), with the window list of PR #1218 (no tail window scored twice): windows of
eval_seq_len end every `stride` tokens; each scores only the positions the previous window did not.
With stride = eval_seq_len it is exactly the plain non-overlapping evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import ScoreSink, rank_span, score_windows, window_ends


@dataclass
class SlidingWindowConfig:
    stride: int = field(default=64, metadata={"help": "new tokens scored per window"})
    batch_seqs: int = field(default=32, metadata={"help": "windows per forward batch"})


class SlidingWindowEvaluator:
    name = "sliding_window"

    def __init__(self, seq_len: int, stride: int, batch_seqs: int):
        if not 0 < stride <= seq_len:
            raise ValueError(f"sliding_window.stride must be in (0, eval_seq_len={seq_len}], got {stride}")
        self.seq_len, self.stride, self.batch_seqs = seq_len, stride, batch_seqs

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        ends = window_ends(tokens.numel() - 1, self.seq_len, self.stride)
        lo, hi = rank_span(len(ends), run.rank, run.world_size)
        score_windows(run, model, tokens, sink, ends, range(lo, hi), self.seq_len, self.batch_seqs)


class SlidingWindow(Plugin):
    name = "sliding_window"
    summary = "Score with overlapping windows (stride S) so every token has near-full context."
    sources = ("openai/parameter-golf#50", "openai/parameter-golf#1218")
    config = SlidingWindowConfig
    test_settings = {"sliding_window": {"stride": 16}}

    @hookimpl
    def pg_evaluator(self, run):
        return SlidingWindowEvaluator(run.eval_seq_len, self.cfg.stride, self.cfg.batch_seqs)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["eval_stride"] = self.cfg.stride
