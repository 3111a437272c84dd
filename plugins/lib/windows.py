"""Sliding-window scoring shared by the window evaluators (PR #50's windows, PR #1218's tail fix): window
end positions, batched window scoring into a `core.scoring.ScoreSink`, and the batch shapes to warm."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import Tensor

from core.scoring import ScoreSink, batch_sizes, rank_span, score_nll


def window_ends(n_positions: int, seq_len: int, stride: int) -> list[int]:
    """End positions of sliding windows; window k scores positions (ends[k-1], ends[k]] (ends[-1] = 0).

    Windows of `seq_len` tokens end every `stride` positions, the last one at the final position, so
    each position is scored exactly once (PR #1218's fix of PR #50's tail double count); with
    stride == seq_len these are exactly the plain non-overlapping windows.
    """
    if n_positions <= seq_len:
        return [n_positions]
    ends = list(range(seq_len, n_positions + 1, stride))
    if ends[-1] != n_positions:
        ends.append(n_positions)
    return ends


def new_positions(ends: list[int], k: int) -> int:
    """Positions window k scores: those after the previous window's end."""
    return ends[k] - (ends[k - 1] if k > 0 else 0)


def scoring_tail(stride: int, seq_len: int) -> int:
    """The positions a sliding-window forward needs logits for: `stride` (0: all, when windows do not overlap)."""
    return stride if stride < seq_len else 0


def window_tail(tail: int, win: int) -> int:
    """The positions a window forward runs its head on: `tail` when it cuts the window (0 < tail < win), else 0
    (every position)."""
    return tail if 0 < tail < win else 0


def score_windows(run, model, tokens: Tensor, sink: ScoreSink, ends: list[int], which: range, seq_len: int,
                  batch_seqs: int, bos_id: int | None = None, tail: int = 0) -> None:
    """Score windows `which` (indices into `ends`) in batches: each window sees min(seq_len, n) tokens
    ending at its end position and records only the positions the previous window did not score.
    With `bos_id`, attention inside a window stops at BOS (document-masked). Every batch has `batch_seqs`
    rows but a short last one (never padded: a padding row would be a second forward of some window, which
    the validator rightly reads as rescoring); `window_batch_shapes` names both shapes for the warm-up.
    `tail` > 0: the head and loss run on the last `tail` positions of each window only; a window that
    scores more (the stream's first) is scored alone, on the uncompiled `run.model`. The tokens the windows
    span go to the device once; batches are gathered there (no host work between forwards)."""
    n = tokens.numel() - 1
    win = min(seq_len, n)
    cut = window_tail(tail, win)
    tail = cut or win
    device = run.device
    wide = [k for k in which if new_positions(ends, k) > tail]
    narrow = [k for k in which if new_positions(ends, k) <= tail]
    with torch.no_grad():
        for k in wide:  # all positions scored: no tail cut
            x = tokens[ends[k] - win : ends[k]].to(device, torch.int64)[None]
            y = tokens[ends[k] - win + 1 : ends[k] + 1].to(device, torch.int64)[None]
            new = new_positions(ends, k)
            nll = score_nll(run, run.model, x, y, bos_id)[0, win - new :]
            sink.record(torch.arange(ends[k] - new + 1, ends[k] + 1, device=device), nll)
        if not narrow:
            return
        first = ends[narrow[0]] - win
        span = tokens[first : ends[narrow[-1]] + 1].to(device, torch.int64)
        end = torch.tensor([ends[k] - first for k in narrow], device=device)  # window ends within `span`
        offsets = torch.arange(-win, 0, device=device)
        cols = torch.arange(tail, device=device)
        short = [i for i, k in enumerate(narrow) if new_positions(ends, k) < tail]  # the stream's last window
        for b in range(0, len(narrow), batch_seqs):
            m = min(batch_seqs, len(narrow) - b)
            idx = end[b : b + m, None] + offsets[None, :]
            nll = score_nll(run, model, span[idx], span[idx + 1], bos_id, cut)
            pos = end[b : b + m, None] + (first - tail + 1) + cols[None, :]
            if not any(b <= i < b + m for i in short):
                sink.record(pos, nll)
                continue
            new = torch.tensor([new_positions(ends, k) for k in narrow[b : b + m]], device=device)
            keep = cols[None, :] >= (tail - new)[:, None]
            sink.record(pos[keep], nll[keep])


def window_batch_shapes(n_windows: int, rank: int, world_size: int, batch_seqs: int, win: int, tail: int = 0,
                        stream_start: bool = True) -> set[tuple[int, int]]:
    """The (rows, win) shapes `score_windows` runs for this rank's windows: full batches and the remainder;
    with 0 < tail < win the stream's first window (`stream_start`: these windows begin the stream) is scored
    alone on the uncompiled model, so it is not in a batch."""
    lo, hi = rank_span(n_windows, rank, world_size)
    alone = stream_start and lo == 0 and hi > lo and window_tail(tail, win) > 0
    return {(b, win) for b in batch_sizes(hi - lo - alone, batch_seqs)}


def window_batches(n_windows: int, rank: int, world_size: int, batch_seqs: int) -> int:
    """Forward batches `score_windows` runs for this rank's share of `n_windows`."""
    lo, hi = rank_span(n_windows, rank, world_size)
    return -(-(hi - lo) // batch_seqs)


def eager_seconds(run, evaluator, n_tokens: int) -> float:
    """Eager scoring time of an n_tokens pass on this rank (`eval_compile = "auto"`): `forward_plan`'s batch
    count x one eager batch of its shape (random tokens, timed over two calls after an untimed one); the same
    on every rank (the slowest rank's)."""
    (b, t), count = evaluator.forward_plan(run, n_tokens)
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, run.core.vocab_size, (b, t), generator=gen).to(run.device) for _ in range(2))
    tail = window_tail(evaluator.tail, t)
    was_training = run.model.training
    run.model.eval()
    try:
        with torch.no_grad():
            score_nll(run, run.model, x, y, evaluator.bos_id, tail)
            run.synchronize()
            t0 = time.perf_counter()
            for _ in range(2):
                score_nll(run, run.model, x, y, evaluator.bos_id, tail)
            run.synchronize()
    finally:
        run.model.train(was_training)
    seconds = torch.tensor(count * (time.perf_counter() - t0) / 2, dtype=torch.float64, device=run.device)
    if run.distributed:  # every rank decides on the slowest rank's estimate
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(seconds.item())
