"""Black-box dynamic checks of a records script that does not use pgolf (validator/THREATS.md §3).

The script runs in the sandbox (validator/smoke.py: copy of the folder, tiny dataset, network off, data reads
audited by inode) on validation shards the validator perturbs, and only the score its log reports is read:

* **uniform** — the validation shard is i.i.d. uniform over an alphabet A of the vocabulary. For *any* predictor
  that is causal and normalized over the vocabulary — adaptive or not (TTT, caches) — the likelihood ratio
  Π_t |A|·p_t(x_t) is a non-negative (super)martingale with mean ≤ 1, so by Ville's inequality
  P(N·(ln|A| − mean NLL) ≥ ln(1/α)) ≤ α. A reported loss below ln|A| − ln(1/α)/N is therefore not a causal,
  normalized single-pass score: target peeking, unnormalized mixtures, min over passes, adapt-then-score,
  statistics of the whole stream (EVAL.C2 / C3 / C4 class). α = 1e-6.
* **copy** — the shard is U followed by U again, U i.i.d. uniform of length M ("future tokens changed": the
  future now holds every answer). A causal evaluator cannot use the second copy while scoring the first, so the
  first copy alone costs ≥ (M−1)·ln|A| − ln(1/α) nats w.p. ≥ 1−α (same martingale), and the total S = N·loss is
  at least that whatever it does with the second copy (a memorising cache may score it at ~0: legal, it is past).
  An evaluator that reads ahead finds the first copy's targets in the second and reports less (EVAL.C1:
  look-ahead, bidirectional context, whole-stream caches, two-pass rescoring).
* **copy, reordered by document** — the same, with U cut into BOS-led documents and the copy holding them in
  another order ("tokens reordered by document"): the future holds every answer again, but not at a fixed
  offset and not as a periodic stream, so a cheat that recognises the plain copy (or reads ahead by a fixed
  distance) and behaves only then is still caught. BOS targets may cost nothing: the floor counts only the
  first half's uniform targets.

A run that fails or prints no score is "could not run" for that check, never a pass.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path

from validator.logs import parse_text
from validator.rules.base import FAIL, PASS, Finding
from validator.sandbox import run_sandboxed
from validator.smoke import SMOKE_ENV, could_not_run, finding, smoke_data

ALPHA = 1e-6


def reported(work: Path, stdout: str) -> tuple[float, int | None] | None:
    """(val_loss, val_tokens) of the script's final scoring line: its stdout, else the newest log it wrote."""
    cands = [stdout] + [p.read_text(encoding="utf-8", errors="replace")
                        for p in sorted(work.rglob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
                        if p.is_file() and p.suffix in (".log", ".txt") and p.name != "requirements.txt"]
    for text in cands:
        rec = parse_text(text)
        fin = rec.final()
        if fin is not None:
            return fin.val_loss, rec.val_tokens
    return None


def _uniform(val, vocab):  # i.i.d. uniform over 2..V-1 (BOS and 0 excluded: documents stay well-formed)
    import numpy as np

    return np.random.default_rng(12345).integers(2, vocab, val.size)


def _copy(val, vocab):
    import numpy as np

    u = np.random.default_rng(54321).integers(2, vocab, val.size // 2)
    return np.concatenate([u, u])


BOS = 1


def reordered_layout(size: int, vocab: int) -> tuple[object, int, int]:
    """(stream, half, documents in the first half): BOS-led documents of uniform tokens (lengths 8..64) filling
    the first half, then the same documents in a random other order (padded with uniform tokens to `size`)."""
    import numpy as np

    rng = np.random.default_rng(98765)
    half = size // 2
    docs, n = [], 0
    while n < half:
        length = min(int(rng.integers(8, 65)), half - n)
        docs.append(np.concatenate([[BOS], rng.integers(2, vocab, length - 1)])[:length])
        n += length
    order = rng.permutation(len(docs))
    if len(docs) > 1 and (order == np.arange(len(docs))).all():
        order = np.roll(order, 1)
    out = np.concatenate([*docs, *(docs[i] for i in order)])
    out = np.concatenate([out, rng.integers(2, vocab, size - out.size)])
    return out, half, len(docs)


def _copy_reordered(val, vocab):
    return reordered_layout(val.size, vocab)[0]


def copy_finding(loss: float, logged: int | None, n_val: int, vocab: int, uniform_targets: int, what: str) -> Finding:
    """EVAL.C1 from a copied-future run: the total must cover what the first copy's uniform targets cost."""
    n = max(1, (logged or n_val) - 1)
    total = loss * n
    floor = uniform_targets * math.log(vocab - 2) - math.log(1 / ALPHA)
    if total < floor:
        return finding("EVAL.C1", FAIL, f"black-box: on {what} the script reports {total:,.1f} nats in total, less "
                       f"than the {floor:,.1f} any causal evaluator must pay for the first copy alone: it scored "
                       "tokens with later ones in view (look-ahead, whole-stream cache, two-pass rescoring)")
    return finding("EVAL.C1", PASS, f"black-box: {what} totals {total:,.1f} nats >= {floor:,.1f} (the first copy's "
                   "cost for a causal evaluator): no look-ahead into the copied future")


def blackbox_findings(folder: Path, timeout: float, memory: int | None, extra_env: dict[str, str] | None = None,
                      data: Path | None = None) -> list[Finding]:
    """EVAL.C2 (uniform bound) and EVAL.C1 (copy test) from sandboxed runs of train_gpt.py on perturbed shards."""
    import secrets

    env = {**SMOKE_ENV, **(extra_env or {})}
    offset = secrets.randbelow(1 << 30)

    def one(transform) -> tuple[tuple[float, int | None] | None, int, str]:
        tmp = Path(tempfile.mkdtemp(prefix="pgolf_validate_bb_"))
        work = tmp / folder.resolve().name.replace(" ", "_")
        shutil.copytree(folder, work, symlinks=False)
        try:
            data_env = smoke_data(work, False, data, offset, transform)
            import numpy as np

            n_val = int(np.fromfile(next(Path(data_env["DATA_PATH"]).glob("fineweb_val_*.bin")), dtype="<u2",
                                    offset=1024).size)
            res = run_sandboxed([sys.executable, "train_gpt.py"], work, timeout=timeout, memory=memory,
                                env={**env, **data_env}, block_pgolf=True, audit=tmp / "audit.jsonl")
            why = "" if res.returncode == 0 else (
                "timed out" if res.timed_out else f"exit {res.returncode}: {res.tail}")
            return (reported(work, res.stdout) if res.returncode == 0 else None), n_val, why
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    out = []
    vocab = int(env.get("VOCAB_SIZE", "1024"))
    got, n_val, why = one(_uniform)
    if got is None:
        out.append(could_not_run("EVAL.C2", f"black-box: the run on a uniform validation shard printed no score "
                                 f"({why or 'no final val_loss line'})"))
    else:
        loss, logged = got
        n = max(1, min(n_val, logged or n_val) - 1)
        alphabet = vocab - 2
        bound = math.log(alphabet) - math.log(1 / ALPHA) / n
        if loss < bound:
            out.append(finding("EVAL.C2", FAIL, f"black-box: on i.i.d. uniform validation tokens (alphabet "
                               f"{alphabet}) the script reports val_loss {loss:.6f} < {bound:.6f} = ln {alphabet} - "
                               f"ln(1/{ALPHA:g})/{n}: no causal, normalized, single-pass predictor does better "
                               "than chance with probability > 1e-6 (target peeking, unnormalized mixture, "
                               "selection over passes, adapt-then-score, whole-stream statistics)"))
        else:
            out.append(finding("EVAL.C2", PASS, f"black-box: uniform validation tokens: val_loss {loss:.6f} >= "
                               f"{bound:.6f} (chance bound at alpha {ALPHA:g}, {n:,} positions)"))
    for transform, what in ((_copy, "U followed by a copy of U (U i.i.d. uniform)"),
                            (_copy_reordered, "BOS-led uniform documents followed by the same documents reordered")):
        got, n_val, why = one(transform)
        if got is None:
            out.append(could_not_run("EVAL.C1", f"black-box: the run on {what} printed no score "
                                     f"({why or 'no final val_loss line'})"))
            continue
        loss, logged = got
        if transform is _copy:
            uniform_targets = n_val // 2 - 1
        else:
            _, half, n_docs = reordered_layout(n_val, vocab)
            uniform_targets = half - n_docs  # targets 1..half-1, less the BOS that start documents 2..n_docs
        out.append(copy_finding(loss, logged, n_val, vocab, uniform_targets, what))
    return out
