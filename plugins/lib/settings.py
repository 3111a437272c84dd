"""Range checks of numeric plugin settings at configuration time (issue #11: a plugin validates its settings when
the configuration is resolved, never at build time or after training: `sliding_window.batch_seqs=0` used to fail
after the whole run, at the final evaluation)."""

from __future__ import annotations

import math
import reprlib
from typing import Any

Bound = tuple[float | None, float | None]  # (lowest, highest) allowed, both included; None: unbounded

# Upper bounds shared by the plugins (session 28: a size, a loop or a count without one allocated past any memory,
# or ran for ever after training, losing the trained model). A plugin derives its own from the core settings where
# it can (a length from the sequence lengths, a layer from num_layers, a width from model_dim); these are the rest.
STEPS = 10**7  # training steps, as core.iterations: 500x the records' 20,000
ARTIFACT_BITS = 8 * 16_000_000  # no table of more elements fits the 16 MB artifact, even at one bit each
MAX_NUMEL = 2**32  # a numel threshold past every tensor the core allows (vocab_size x model_dim < 2**32)
PASSES = 32  # epochs, phases, loops over the data or the model: the records use 1-3 (x10)
ROWS = 1024  # sequences or documents in one forward batch: the records use 32-64
LR = 10.0  # a learning rate (as the core's): the records' largest is 0.6
WD = 1.0  # a decoupled weight decay (p <- p·(1 - lr·wd)): the records' largest is 0.5
INIT = 10.0  # an initial scale, gain, std or lambda: the records' are <= 1.1 (nn.Embedding's own std is 1)
EPS = 0.01  # an epsilon added for stability: the records' are <= 1e-7
SIGMAS = 100.0  # a clip at k standard deviations: the records' k are 11.5-20


def seq_bound(core: Any, times: int = 1024) -> int:
    """The most tokens a chunk setting may ask for: `times` the longer of the training and evaluation sequence
    lengths (the records' chunks are at most 32 of theirs: 32,768-token TTT chunks at 1,024)."""
    return times * max(core.train_seq_len, core.eval_seq_len)


def range_errors(section: str, cfg: Any, **bounds: Bound) -> list[str]:
    """One line per setting of `cfg` outside its bounds, naming `section.setting` (a NaN or infinity is the
    resolver's error: "expected a finite number", with the environment variable)."""
    errors = []
    for name, (low, high) in bounds.items():
        value = getattr(cfg, name)
        finite = not isinstance(value, float) or math.isfinite(value)  # an int of any size is finite
        inside = not finite or ((low is None or value >= low) and (high is None or value <= high))
        if not inside:
            want = " and ".join(p for p in (f">= {low}" if low is not None else "",
                                             f"<= {high}" if high is not None else "") if p)
            errors.append(f"{section}.{name}: expected a number {want}, got {reprlib.repr(value)}")
    return errors
