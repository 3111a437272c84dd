"""Range checks of numeric plugin settings at configuration time (issue #11: a plugin validates its settings when
the configuration is resolved, never at build time or after training: `sliding_window.batch_seqs=0` used to fail
after the whole run, at the final evaluation)."""

from __future__ import annotations

import math
from typing import Any

Bound = tuple[float | None, float | None]  # (lowest, highest) allowed, both included; None: unbounded


def range_errors(section: str, cfg: Any, **bounds: Bound) -> list[str]:
    """One line per setting of `cfg` outside its bounds, naming `section.setting` (a NaN or infinity is the
    resolver's error: "expected a finite number", with the environment variable)."""
    errors = []
    for name, (low, high) in bounds.items():
        value = getattr(cfg, name)
        inside = not math.isfinite(value) or ((low is None or value >= low) and (high is None or value <= high))
        if not inside:
            want = " and ".join(p for p in (f">= {low}" if low is not None else "",
                                             f"<= {high}" if high is not None else "") if p)
            errors.append(f"{section}.{name}: expected a number {want}, got {value!r}")
    return errors
