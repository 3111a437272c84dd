"""Loss curves (train and validation loss against steps) as PNG: `loss_curve.png` in each run directory and
in a records folder. matplotlib is an optional extra (`pip install 'pgolf[plot]'`); without it the curve is
skipped with a one-line note."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

from validator.untrusted_json import JSON_ERRORS

MISSING = "loss curve skipped: matplotlib is not installed (pip install 'pgolf[plot]')"


def read_curves(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train (step, loss), val (step, loss)) from a run directory's events.jsonl, else (a record-profile script's
    run) from its train.log's `step:N/M train_loss:X` and `step:N/M val_loss:X` lines."""
    train, val = [], []
    path = run_dir / "events.jsonl"
    if not path.is_file():
        text = (run_dir / "train.log").read_text(encoding="utf-8")

        def pick(kind: str) -> list[tuple[int, float]]:
            return [(int(m[1]), float(m[2])) for m in re.finditer(rf"^step:(\d+)/\d+ {kind}:(\S+)", text, re.M)]

        return pick("train_loss"), pick("val_loss")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except JSON_ERRORS:
            continue
        if not isinstance(e, dict) or not isinstance(e.get("step"), int) or isinstance(e["step"], bool):
            continue  # a line of another shape draws nothing (the validator names it)
        if e.get("event") == "step" and isinstance(e.get("train_loss"), (int, float)):
            train.append((e["step"], float(e["train_loss"])))
        elif e.get("event") == "val" and isinstance(e.get("val_loss"), (int, float)):
            val.append((e["step"], float(e["val_loss"])))
    return train, val


def loss_curve_png(run_dirs: list[Path]) -> bytes | None:
    """The PNG of the runs' train (lines) and validation (markers) loss curves, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        for i, run_dir in enumerate(run_dirs):
            train, val = read_curves(Path(run_dir))
            color = f"C{i % 10}"
            name = Path(run_dir).name.replace("$", r"\$")  # a run id is text, not matplotlib's $math$
            if train:
                ax.plot(*zip(*train, strict=True), color=color, lw=1.2, label=f"{name} train")
            if val:
                ax.plot(*zip(*val, strict=True), color=color, ls="--", marker="o", label=f"{name} val")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)


def write_loss_curve(run_dir: Path) -> str:
    """Write `run_dir/loss_curve.png` (atomically); returns the line to print."""
    png = loss_curve_png([run_dir])
    if png is None:
        return MISSING
    out = run_dir / "loss_curve.png"
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(png)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"loss curve: {out}"
