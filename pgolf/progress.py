"""The live progress line of `pgolf train` on a terminal (tqdm): step/total, steps/s, ETA, tokens/s, loss."""

from __future__ import annotations

import sys


class Progress:
    """The timed loop's display (`core.train.timed_loop`'s `progress`); `phase` names a stretch without steps
    (validation) so the line never sits silent. Without tqdm it shows nothing."""

    def __init__(self, total: int, tokens_per_step: int, cap_ms: float | None):
        self.total, self.tps, self.cap_ms = total, tokens_per_step, cap_ms
        self.bar = None
        self.loss: float | None = None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True, desc="train",
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n}/{total} "
                        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(name, refresh=True)

    def update(self, step: int, elapsed_ms: float, loss: float | None = None) -> None:
        if self.bar is None or step == 0:
            return
        self.loss = loss if loss is not None else self.loss
        rate = step * self.tps / max(elapsed_ms / 1000.0, 1e-9)
        post = f"{rate:,.0f} tok/s" + (f", loss {self.loss:.3f}" if self.loss is not None else "")
        if self.cap_ms:
            post += f", cap in {max(self.cap_ms - elapsed_ms, 0) / 1000:.0f}s"
        self.bar.set_description_str("train", refresh=False)
        self.bar.set_postfix_str(post, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
