"""Sliding-window evaluation: every scored token sees at least eval_seq_len - stride tokens of context.

PR #50 (stride 64), with the window list of PR #1218 (no tail window scored twice): windows of
eval_seq_len end every `stride` tokens; each scores only the positions the previous window did not.
With stride = eval_seq_len it is exactly the plain non-overlapping evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import ScoreSink, nll_and_lognorm, rank_span


@dataclass
class SlidingWindowConfig:
    stride: int = field(default=64, metadata={"help": "new tokens scored per window"})
    batch_seqs: int = field(default=32, metadata={"help": "windows per forward batch"})


def window_ends(n_positions: int, seq_len: int, stride: int) -> list[int]:
    """End positions (inclusive) of the windows; window k scores (ends[k-1], ends[k]]."""
    if n_positions <= seq_len:
        return [n_positions]
    ends = list(range(seq_len, n_positions + 1, stride))
    if ends[-1] != n_positions:
        ends.append(n_positions)
    return ends


class SlidingWindowEvaluator:
    name = "sliding_window"

    def __init__(self, seq_len: int, stride: int, batch_seqs: int):
        if not 0 < stride <= seq_len:
            raise ValueError(f"sliding_window.stride must be in (0, eval_seq_len={seq_len}], got {stride}")
        self.seq_len, self.stride, self.batch_seqs = seq_len, stride, batch_seqs

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        n = tokens.numel() - 1
        ends = window_ends(n, self.seq_len, self.stride)
        starts = [0, *ends[:-1]]  # window k scores positions starts[k]+1 .. ends[k]
        lo, hi = rank_span(len(ends), run.rank, run.world_size)
        device = run.device
        with torch.no_grad():
            for b in range(lo, hi, self.batch_seqs):
                idx = range(b, min(b + self.batch_seqs, hi))
                win = min(self.seq_len, n)
                xs = torch.stack([tokens[ends[k] - win : ends[k]] for k in idx]).to(device, torch.int64)
                ys = torch.stack([tokens[ends[k] - win + 1 : ends[k] + 1] for k in idx]).to(device, torch.int64)
                if sink.checking:
                    nll, lognorm = nll_and_lognorm(model, xs, ys, run.autocast_dtype)
                else:
                    with run.autocast():
                        nll = model(xs, ys, reduce=False)
                    lognorm = None
                col = torch.arange(win, device=device)
                pos_all = torch.stack([torch.arange(ends[k] - win + 1, ends[k] + 1) for k in idx]).to(device)
                first_new = torch.tensor([win - (ends[k] - starts[k]) for k in idx], device=device)
                keep = col[None, :] >= first_new[:, None]
                sink.record(pos_all[keep], nll.detach()[keep], None if lognorm is None else lognorm[keep])


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
