"""Sliding-window scoring shared by the window evaluators (PR #50's windows, PR #1218's tail fix): window
end positions, batched window scoring into a `core.scoring.ScoreSink`, and the batch shapes to warm."""

from __future__ import annotations

import torch
from torch import Tensor

from core.scoring import ScoreSink, rank_span, score_nll


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


def score_windows(run, model, tokens: Tensor, sink: ScoreSink, ends: list[int], which: range, seq_len: int,
                  batch_seqs: int, bos_id: int | None = None, tail: int = 0) -> None:
    """Score windows `which` (indices into `ends`) in batches: each window sees min(seq_len, n) tokens
    ending at its end position and records only the positions the previous window did not score.
    With `bos_id`, attention inside a window stops at BOS (document-masked). Every batch has `batch_seqs`
    rows (a short last batch repeats its last window; those rows are dropped), so a compiled forward sees
    one shape. `tail` > 0: the head and loss run on the last `tail` positions of each window only; a window
    that scores more (the stream's first) is scored alone, on the uncompiled `run.model`."""
    n = tokens.numel() - 1
    win = min(seq_len, n)
    tail = tail if 0 < tail < win else win
    device = run.device
    col = torch.arange(tail, device=device)
    wide = [k for k in which if new_positions(ends, k) > tail]
    narrow = [k for k in which if new_positions(ends, k) <= tail]
    with torch.no_grad():
        for k in wide:  # all positions scored: no tail cut
            x = tokens[ends[k] - win : ends[k]].to(device, torch.int64)[None]
            y = tokens[ends[k] - win + 1 : ends[k] + 1].to(device, torch.int64)[None]
            new = new_positions(ends, k)
            nll = score_nll(run, run.model, x, y, bos_id)[0, win - new :]
            sink.record(torch.arange(ends[k] - new + 1, ends[k] + 1, device=device), nll)
        for b in range(0, len(narrow), batch_seqs):
            idx = narrow[b : b + batch_seqs]
            rows = [*idx, *[idx[-1]] * (batch_seqs - len(idx))]
            xs = torch.stack([tokens[ends[k] - win : ends[k]] for k in rows]).to(device, torch.int64)
            ys = torch.stack([tokens[ends[k] - win + 1 : ends[k] + 1] for k in rows]).to(device, torch.int64)
            nll = score_nll(run, model, xs, ys, bos_id, tail if tail < win else 0)[: len(idx)]
            pos = torch.stack([torch.arange(ends[k] - tail + 1, ends[k] + 1) for k in idx]).to(device)
            new = torch.tensor([new_positions(ends, k) for k in idx], device=device)
            keep = col[None, :] >= (tail - new)[:, None]
            sink.record(pos[keep], nll[keep])


def window_batch_shapes(n_windows: int, rank: int, world_size: int, batch_seqs: int, win: int) -> set[tuple[int, int]]:
    """The one (batch_seqs, win) shape `score_windows` runs, when this rank has windows."""
    lo, hi = rank_span(n_windows, rank, world_size)
    return {(batch_seqs, win)} if hi > lo else set()


def window_batches(n_windows: int, rank: int, world_size: int, batch_seqs: int) -> int:
    """Forward batches `score_windows` runs for this rank's share of `n_windows`."""
    lo, hi = rank_span(n_windows, rank, world_size)
    return -(-(hi - lo) // batch_seqs)
