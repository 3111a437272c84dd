"""The dynamic evaluation harness of rulebook §10: an evaluator's real code path on a tiny model, black-box.

Each evaluator (a `core.scoring.Evaluator`, or any object with `score(tokens) -> nll`) is run many times
on a synthetic stream of BOS-separated documents over a tiny vocabulary, through a checking-mode
`ScoreSink`, and the scores are compared across perturbed inputs:

* EVAL.C1 prefix invariance: randomize tokens[t:] (document layout kept; t = 1 always among the cuts) →
  scores at positions < t equal;
  truncating the stream to tokens[:L] leaves positions < L unchanged (a difference there is a WARN: the
  evaluator depends on the stream length, e.g. an LR schedule over the number of chunks).
* EVAL.C2 normalization: at a few positions t, set tokens[t] to every a in the vocabulary with the prefix
  fixed: Σ_a exp(−nll_t(a)) must be 1 (black-box, catches target-only blends and selections).
* EVAL.C3 score before update: over those V runs the log-normalizer recorded at t (white-box, checking
  mode) and every score before t must not move (x_t may only pick which entry is read).
* EVAL.C4 single pass: every position scored exactly once (the sink), no second scoring pass over the
  stream (a record into any other sink over the same tokens, or a window run through the model twice
  without gradients), and no Σ_a p_t(a) > 1 — the signature of a per-token min over alternatives.
* EVAL.TTT: every optimizer step taken while only positions ≤ m were scored must be independent of
  tokens[m+1:] (gradient fingerprints compared across the C1 perturbations); reads of unscored tokens
  through `ScoredTokens` raise.
* EVAL.DOC_ISOLATION: for an evaluator that claims document isolation (attribute `doc_isolation`,
  `document_isolation`, `isolate_documents` or `doc_isolated` true), randomizing earlier documents leaves
  a document's scores unchanged; for a stream-order evaluator the measurement is reported as INFO.

`python -m validator.harness` is the sandboxed child that `pgolf validate --run` starts: it prints one
JSON report for a pgolf run directory's evaluators (every evaluator plugin of the registry) and for
`--evaluator FILE.py:NAME` objects.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugins.lib.loading import import_path, load_registry
from validator.untrusted_json import run_dir_recipe

BOS = 1
ISOLATION_ATTRS = ("doc_isolation", "document_isolation", "isolate_documents", "doc_isolated")
PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass
class HarnessSettings:
    """Size of the tiny world and of each check (rulebook §10.1: tiny GPT, vocab 32, 8 documents)."""

    vocab: int = 32
    n_docs: int = 8
    doc_len: tuple[int, int] = (50, 300)
    seq_len: int = 64
    num_layers: int = 2
    model_dim: int = 32
    cuts: int = 20
    trunc_cuts: int = 3
    vfold_positions: int = 5
    iso_docs: int = 2
    seed: int | None = None  # None: a fresh random seed per validation (stream, model, cuts, probe positions)
    tol: float = 1e-5
    norm_tol: float = 1e-3
    init_noise: float = 0.3

    def __post_init__(self) -> None:
        if self.seed is None:
            import secrets

            self.seed = secrets.randbelow(2**31 - 64)


@dataclass
class Check:
    rule: str
    status: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluatorReport:
    name: str
    origin: str
    primary: bool = True
    claims_isolation: bool | None = None
    checks: list[Check] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Call:
    """One evaluation of one stream: per-position NLL / log-normalizer (NaN where unscored) and what it did."""

    nll: np.ndarray
    lognorm: np.ndarray
    steps: list[tuple[int, float, float]]
    extra_passes: list[str]
    repeats: list[str] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None  # "scoring" (a protocol violation the sink caught) or "crash"
    result: tuple[float, float] | None = None  # (val_loss, val_bpb) the production sink reported
    recomputed: tuple[float, float] | None = None  # the same, recomputed from the per-position records
    tamper: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)


# --- the tiny world ----------------------------------------------------------------------------------------
def synthetic_stream(s: HarnessSettings) -> torch.Tensor:
    """BOS + document, repeated; documents follow a random sparse Markov chain over tokens 2..V-1 so a
    model (and TTT) has something to learn. Length k * seq_len + 1 (evaluators score whole windows)."""
    g = np.random.default_rng(s.seed)
    body = np.arange(2, s.vocab)
    nxt = {int(a): g.choice(body, size=3) for a in body}
    out: list[int] = []
    for _ in range(s.n_docs):
        n = int(g.integers(s.doc_len[0], s.doc_len[1] + 1))
        tok = int(g.choice(body))
        out.append(BOS)
        for _ in range(n):
            out.append(tok)
            tok = int(g.choice(nxt[tok])) if g.random() < 0.8 else int(g.choice(body))
    usable = ((len(out) - 1) // s.seq_len) * s.seq_len
    if usable <= 0:
        raise ValueError("harness stream shorter than one window: raise n_docs or doc_len")
    return torch.tensor(out[: usable + 1], dtype=torch.int64)


def synthetic_tables(vocab: int):
    """Byte tables of a SentencePiece-free tokenizer: 0 = unknown, 1 = BOS (boundaries, 0 bytes)."""
    from core.tokenizer import ByteTables

    ids = torch.arange(vocab)
    return ByteTables(base_bytes=(1 + ids * 7 % 3).to(torch.int16) * (ids >= 2),
                      has_leading_space=(ids % 3 == 0) & (ids >= 2), is_boundary=ids < 2)


def tiny_sets(s: HarnessSettings) -> list[str]:
    heads = 2 if s.model_dim % 2 == 0 else 1
    return [f"core.num_layers={s.num_layers}", f"core.model_dim={s.model_dim}", f"core.num_heads={heads}",
            "core.num_kv_heads=1", f"core.vocab_size={s.vocab}", f"core.train_seq_len={s.seq_len}",
            "core.eval_seq_len=0", f"core.val_batch_size={8 * s.seq_len}", "core.device=cpu", "core.compile=false",
            "core.attention=auto", f"core.train_batch_tokens={8 * s.seq_len}", "core.grad_accum_steps=1"]


@dataclass
class World:
    run: Any
    stream: torch.Tensor
    tables: Any


def build_world(s: HarnessSettings, plugins: Sequence[str] = (), recipe: dict[str, Any] | None = None,
                sets: Sequence[str] = (), registry: Any = None) -> World:
    """A core Run with a tiny GPT built through the plugins' build hooks, every parameter randomized (so
    zero-initialised gates such as SmearGate's really mix), on CPU."""
    from core.config import resolve
    from core.run import create_run
    from core.train import CoreDefaults, build_model

    registry = registry or load_registry()
    rec = {k: v for k, v in (recipe or {}).items() if k in plugins}  # settings of the enabled plugins only
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=rec or None, env={},
                  sets=[*tiny_sets(s), *sets], plugins=list(plugins), check_plugins=registry.check)
    run = create_run(cfg, registry, CoreDefaults(), make_dir=False)
    run.eval_seq_len = s.seq_len
    run.grad_accum_steps = 1
    tables = synthetic_tables(s.vocab)
    run.byte_tables = tables
    stream = synthetic_stream(s)
    run.val_tokens = stream
    torch.manual_seed(s.seed)
    model = build_model(run)
    gen = torch.Generator().manual_seed(s.seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * s.init_noise)
    model.float()
    run.model = run.eval_model = run.train_model = model
    return World(run, stream, tables)


# --- one instrumented evaluation ---------------------------------------------------------------------------
def _over_stream(t: torch.Tensor, stream: torch.Tensor) -> bool:
    """True if `t` is the stream (same storage) or equal to a prefix of it."""
    if not isinstance(t, torch.Tensor) or t.numel() < 2:
        return False
    try:
        if t.untyped_storage().data_ptr() == stream.untyped_storage().data_ptr():
            return True
    except (RuntimeError, NotImplementedError):
        pass
    n = min(t.numel(), stream.numel())
    return t.numel() <= stream.numel() and bool(torch.equal(t.reshape(-1)[:n].to(torch.int64).cpu(), stream[:n]))


ISOLATE = True  # each evaluation runs in a forked child: no state (module globals, caches) survives a call
# One isolated evaluation of the tiny world takes seconds; a child silent this long is stopped (`run_isolated`).
ISOLATED_SECONDS = 600.0
_IN_CHILD = False


def run_isolated(fn: Callable[[], Any], timeout: float | None = None) -> Any:
    """Run `fn` in a forked child and return its (pickled) result; the child's memory dies with it, so an evaluator
    cannot carry state from one harness call into the next (e.g. replay the scores of an earlier stream on a
    perturbed one). Exceptions come back as RuntimeError, and so does a child that has not answered within `timeout`
    seconds (default `ISOLATED_SECONDS`; an evaluator that never returns, or a child deadlocked on a lock some thread
    held at the fork): it is killed, and the validator goes on."""
    import os
    import pickle
    import signal
    import time

    if not ISOLATE or not hasattr(os, "fork"):
        return fn()
    timeout = ISOLATED_SECONDS if timeout is None else timeout
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        global _IN_CHILD
        _IN_CHILD = True
        try:
            os.close(r)
            # one intra-op thread: a thread pool (OpenMP) the parent used does not survive a fork, and a child that
            # enters it can wait forever on a lock one of the parent's threads held (tiny matmuls: no loss)
            torch.set_num_threads(1)
            try:
                out: tuple[str, Any] = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - report every failure to the parent
                out = ("exc", f"{type(exc).__name__}: {exc}")
            try:
                data = pickle.dumps(out)
            except Exception as exc:  # noqa: BLE001
                data = pickle.dumps(("exc", f"unpicklable result: {exc}"))
            with os.fdopen(w, "wb") as fh:
                fh.write(data)
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while chunk := _read_before(r, deadline):
            chunks.append(chunk)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise RuntimeError(f"the isolated evaluation did not finish within {timeout:g} s (stopped)") from None
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        raise RuntimeError("the isolated evaluation died without a result (killed, or os._exit in the evaluator)")
    kind, val = pickle.loads(data)
    if kind != "ok":
        raise RuntimeError(val)
    return val


def _read_before(fd: int, deadline: float) -> bytes:
    """The next bytes of pipe `fd` (b"" at its end), or TimeoutError once `deadline` (time.monotonic) has passed."""
    import os
    import select
    import time

    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise TimeoutError
    return os.read(fd, 1 << 20)


def warm_parent(world: World) -> None:
    """Run trusted code through the same machinery once in this process (a production evaluation with the core
    evaluator, a forward/backward/optimizer step) so forked children start warm; the model is restored. Never runs
    the evaluator under test here: its state would be inherited by every child."""
    if world.__dict__.get("_warm"):
        return
    from core import scoring

    run = world.run
    with scoring.restored_weights(run.model):
        ev = scoring.PlainEvaluator(world.run.eval_seq_len, 8 * world.run.eval_seq_len)
        scoring.synthetic_warmup(run, run.eval_model, ev)
        scoring.evaluate(run, run.eval_model, ev, world.stream)
        opt = torch.optim.SGD(run.model.parameters(), lr=0.0)
        x = world.stream[: world.run.eval_seq_len + 1].view(1, -1)
        for adam in (False, True):
            if adam:
                opt = torch.optim.AdamW(run.model.parameters(), lr=0.0)
            opt.zero_grad()
            run.model(x[:, :-1], x[:, 1:]).backward()
            opt.step()
        run.model.zero_grad(set_to_none=True)
    world.__dict__["_warm"] = True


def _table_digest(tables: Any) -> list[bytes]:
    return [t.detach().cpu().numpy().tobytes() for t in (tables.base_bytes, tables.has_leading_space,
                                                          tables.is_boundary)]


def score(world: World, make: Callable[[Any], Any], tokens: torch.Tensor, audited: bool = True) -> Call:
    """One evaluation of `tokens` exactly as production runs it (`synthetic_warmup(run, run.eval_model, ev)` with
    `run.val_tokens` = the stream, then `core.scoring.evaluate`, one production-mode ScoreSink), in a forked child.
    `audited`: also capture every per-position record, optimizer step and scoring forward (hooks the evaluator
    could notice — which is why the unaudited production-path run is compared with the audited one)."""
    warm_parent(world)
    try:
        return run_isolated(lambda: _score(world, make, tokens, audited))
    except RuntimeError as exc:
        n = tokens.numel()
        nan = np.full(n, np.nan)
        return Call(nan, nan.copy(), [], [], [], f"{exc}", "crash")


def _score(world: World, make: Callable[[Any], Any], tokens: torch.Tensor, audited: bool) -> Call:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from core import scoring

    run = world.run
    n = tokens.numel()
    run.val_tokens = tokens
    before_tokens = tokens.clone()
    before_tables = _table_digest(run.byte_tables)
    evaluator = make(run)
    nll = np.full(n, np.nan)
    lognorm = np.full(n, np.nan)
    steps: list[tuple[int, float, float]] = []
    extra: list[str] = []
    repeats: list[str] = []
    writes: list[str] = []
    dup: list[str] = []
    sinks: list[Any] = []
    phase: list[str] = []
    handles: list[Any] = []
    original_record = scoring.ScoreSink.record
    if audited:
        def pre_step(opt, args, kwargs):
            sink = sinks[0] if sinks else None
            idx = sink.scored.nonzero() if sink is not None else torch.zeros(0, 1)
            m = int(idx.max()) if idx.numel() else 0
            s1 = s2 = 0.0
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        gd = p.grad.detach().double()
                        s1 += float(gd.sum())
                        s2 += float((gd * gd).sum())
            steps.append((m, s1, s2))
            return None

        def record(self, positions, values, ln=None):
            if self.tokens is tokens and not sinks:
                sinks.append(self)
            if self is (sinks[0] if sinks else None):
                pos = positions.reshape(-1).detach().cpu().to(torch.int64).numpy()
                val = values.reshape(-1).detach().cpu().double().numpy()
                if pos.size and (pos.min() < 1 or pos.max() >= n):
                    raise scoring.ScoringError(f"position out of range [1, {n - 1}]")
                seen = np.isfinite(nll[pos])
                if (seen.any() or np.unique(pos).size != pos.size) and len(dup) < 3:
                    dup.append(f"position {int(pos[seen][0]) if seen.any() else int(pos[0])} scored twice")
                nll[pos] = val
                if ln is not None:
                    lognorm[pos] = ln.reshape(-1).detach().cpu().double().numpy()
            elif _over_stream(self.tokens, tokens):
                pos = positions.reshape(-1)
                if pos.numel():
                    extra.append(f"positions {int(pos.min())}-{int(pos.max())} recorded into a second sink")
            return original_record(self, positions, values, ln)

        seen_rows: set[bytes] = set()

        def pre_forward(module, args, kwargs):
            # a scoring forward (no gradient) over a row of tokens already scored by an earlier no-gradient forward
            x = args[0] if args else kwargs.get("input_ids", kwargs.get("x"))
            if torch.is_grad_enabled() or not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype.is_floating_point:
                return None
            if not phase:  # warm-up forwards (random tokens) are not scoring passes
                return None
            for row in x.detach().cpu().to(torch.int64).numpy():
                key = row.tobytes()
                if key in seen_rows and len(repeats) < 5:
                    repeats.append(f"a window of {row.size} tokens starting {row[:4].tolist()} ran through the model "
                                   "twice without gradients")
                seen_rows.add(key)
            return None

        def audit(event, args):
            if event == "open" and len(args) > 1 and not isinstance(args[0], int) and args[0] is not None:
                mode, flags = args[1], args[2] if len(args) > 2 else 0
                w = bool(mode and any(c in str(mode) for c in "wax+")) or bool(
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                name = os.fsdecode(args[0])
                if w and not name.startswith(("/dev/", "/proc/")) and "__pycache__" not in name and len(writes) < 5:
                    writes.append(name)

        import os
        import sys

        if _IN_CHILD:  # audit hooks cannot be removed: only in a forked child, which exits after the call
            sys.addaudithook(audit)
        handles = [register_optimizer_step_pre_hook(pre_step),
                   run.model.register_forward_pre_hook(pre_forward, with_kwargs=True)]
        scoring.ScoreSink.record = record  # type: ignore[method-assign]
    error = kind = None
    result: tuple[float, float] | None = None
    try:
        scoring.synthetic_warmup(run, run.eval_model, evaluator)
        phase.append("eval")
        res = scoring.evaluate(run, run.eval_model, evaluator, tokens)
        result = (float(res.val_loss), float(res.val_bpb))
    except scoring.ScoringError as exc:
        error, kind = str(exc), "scoring"
    except Exception as exc:  # noqa: BLE001 - the evaluator under test may fail in any way; that is a finding
        error, kind = f"{type(exc).__name__}: {exc}", "crash"
    finally:
        for h in handles:
            h.remove()
        scoring.ScoreSink.record = original_record  # type: ignore[method-assign]
    if dup and error is None:
        error, kind = f"a position was scored twice ({dup[0]})", "scoring"
    tamper = []
    if not torch.equal(tokens, before_tokens):
        tamper.append("the validation tokens were modified in place during evaluation")
    if _table_digest(run.byte_tables) != before_tables:
        tamper.append("the tokenizer byte tables were modified during evaluation (the BPB denominator)")
    recomputed = None
    if audited and result is not None:
        from core.tokenizer import token_bytes

        pos = np.flatnonzero(np.isfinite(nll))
        if pos.size:
            tp = torch.as_tensor(pos)
            nbytes = float(token_bytes(before_tokens[tp - 1], before_tokens[tp], run.byte_tables).double().sum())
            loss = float(np.sum(nll[pos]) / pos.size)
            recomputed = (loss, loss / math.log(2.0) * pos.size / max(nbytes, 1e-9))
    return Call(nll, lognorm, steps, extra, repeats, error, kind, result=result, recomputed=recomputed,
                tamper=tamper, writes=writes)


class BlackBoxAdapter:
    """Wraps an object with `score(tokens) -> per-position NLL` (positions 1..N) as an Evaluator."""

    def __init__(self, obj: Any):
        self.obj = obj
        self.name = getattr(obj, "name", type(obj).__name__)
        for a in ISOLATION_ATTRS:
            if hasattr(obj, a):
                setattr(self, a, getattr(obj, a))

    def evaluate(self, run, model, tokens, sink) -> None:
        nll = torch.as_tensor(self.obj.score(tokens), dtype=torch.float64).reshape(-1)
        if nll.numel() != tokens.numel() - 1:
            raise ValueError(f"score(tokens) returned {nll.numel()} values, expected {tokens.numel() - 1}")
        sink.record(torch.arange(1, tokens.numel()), nll)


def claims_isolation(evaluator: Any) -> bool | None:
    for a in ISOLATION_ATTRS:
        v = getattr(evaluator, a, None)
        if v is not None and not callable(v):
            return bool(v)
    return None


# --- the checks --------------------------------------------------------------------------------------------
def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int | None]:
    """Max |a-b| over positions where either is scored, and the first position that differs by > 0."""
    both = np.isfinite(a) | np.isfinite(b)
    d = np.where(both, np.abs(np.nan_to_num(a, nan=np.inf) - np.nan_to_num(b, nan=-np.inf)), 0.0)
    d = np.where(np.isnan(d), np.inf, d)
    if not both.any():
        return 0.0, None
    m = float(d.max())
    return m, (int(np.argmax(d > 0)) if m > 0 else None)


def _perturb(x: torch.Tensor, start: int, end: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Random non-BOS tokens at positions [start, end) that are not BOS (document layout kept);
    every position changes."""
    y = x.clone()
    seg = y[start:end]
    keep = seg == BOS
    r = torch.randint(2, vocab, seg.shape, generator=gen)
    r = torch.where(r == seg, 2 + (r - 2 + 1) % (vocab - 2), r)
    y[start:end] = torch.where(keep, seg, r)
    return y


class Harness:
    """Runs every check on one evaluator; `make` builds the evaluator for a run (fresh per call)."""

    def __init__(self, world: World, make: Callable[[Any], Any], s: HarnessSettings):
        self.world, self.make, self.s = world, make, s
        self.calls = 0
        self.gen = torch.Generator().manual_seed(s.seed + 7)
        self.rng = np.random.default_rng(s.seed + 11)

    def call(self, tokens: torch.Tensor, audited: bool = True) -> Call:
        self.calls += 1
        return score(self.world, self.make, tokens, audited)

    def run_all(self, report: EvaluatorReport) -> None:
        x = self.world.stream
        base = self.call(x)
        if base.error_kind == "crash":
            report.error = f"could not run: the evaluator raised on the harness stream: {base.error}"
            return
        prod = self.call(x, audited=False)
        c1, ttt, trunc = self.check_c1(x, base)
        c2, c3, c4_probe = self.check_vfold(x, base)
        report.checks += [c1, trunc, c2, c3, self.check_c4(base, c4_probe), ttt, self.check_isolation(x, base),
                          self.check_production(base, prod), self.check_integrity(base)]

    # EVAL.PRODUCTION: the unaudited production-path run reports what the audited run's records add up to
    def check_production(self, base: Call, prod: Call) -> Check:
        ev = {"seed": self.s.seed, "audited": base.result, "recomputed": base.recomputed, "production": prod.result}
        if prod.error_kind or base.error_kind:
            why = prod.error or base.error
            if bool(prod.error_kind) != bool(base.error_kind):
                return Check("EVAL.PRODUCTION", FAIL, f"the production-path run and the audited run disagree on "
                             f"whether evaluation succeeds ({why}): the evaluator behaves differently when audited",
                             ev)
            return Check("EVAL.PRODUCTION", SKIP, f"not checked: {why}", ev)
        assert base.result is not None and prod.result is not None
        d = max(abs(a - b) for a, b in zip(base.result, prod.result, strict=True))
        if d > self.s.tol:
            return Check("EVAL.PRODUCTION", FAIL, f"the production-path run (no hooks, same stream, same warm-up) "
                         f"reports val_loss {prod.result[0]:.6f} / val_bpb {prod.result[1]:.6f}, the audited run "
                         f"{base.result[0]:.6f} / {base.result[1]:.6f}: the evaluator behaves differently when it is "
                         "audited (the audited scores do not describe production)", ev)
        return Check("EVAL.PRODUCTION", PASS, f"production-path run = audited run (val_loss {prod.result[0]:.6f}, "
                     f"|diff| {d:.1e}); harness seed {self.s.seed}", ev)

    # EVAL.C4 (totals) + tampering: what the sink reports is what the per-position records add up to
    def check_integrity(self, base: Call) -> Check:
        if base.tamper:
            return Check("EVAL.C4", FAIL, base.tamper[0] + ": the reported score is not over the validation tokens "
                         "as given", {"tamper": base.tamper})
        if base.writes:
            return Check("EVAL.C4", WARN, f"the evaluator wrote {base.writes[0]} during evaluation (state that can "
                         "outlive the pass: review)", {"writes": base.writes, "info": False})
        if base.error_kind or base.result is None or base.recomputed is None:
            return Check("EVAL.C4", SKIP, f"totals not checked: {base.error or 'no per-position records'}")
        d = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(base.result, base.recomputed, strict=True))
        if d > 1e-9:
            return Check("EVAL.C4", FAIL, f"the sink's totals (val_loss {base.result[0]:.6f}, val_bpb "
                         f"{base.result[1]:.6f}) differ from the per-position records ({base.recomputed[0]:.6f}, "
                         f"{base.recomputed[1]:.6f}): the accumulators were changed outside record()",
                         {"result": base.result, "recomputed": base.recomputed})
        return Check("EVAL.C4", PASS, "reported totals = the sum of the per-position records; tokens and byte tables "
                     "unchanged", {"result": base.result})

    # EVAL.C1 + EVAL.TTT (the same perturbed runs) + truncation
    def check_c1(self, x: torch.Tensor, base: Call) -> tuple[Check, Check, Check]:
        s, n = self.s, x.numel() - 1
        if base.error_kind == "scoring":
            bad = Check("EVAL.C1", SKIP, f"not checked: the base run broke the scoring protocol ({base.error})")
            ttt = self._ttt_from_errors([base]) or Check("EVAL.TTT", SKIP, bad.message)
            return bad, ttt, Check("EVAL.C1", SKIP, "truncation not checked")
        candidates = [t for t in range(2, n) if int(x[t]) != BOS]
        # t = 1 randomizes the whole stream: any step or state fixed before the first score must not move
        cuts = sorted({1, *self.rng.choice(candidates, size=min(s.cuts, len(candidates)), replace=False).tolist()})
        worst: tuple[float, int, int | None] = (0.0, 0, None)
        step_bad: list[str] = []
        calls = [base]
        compared = 0
        for t in cuts:
            alt = _perturb(x, t, x.numel(), s.vocab, self.gen)
            c = self.call(alt)
            calls.append(c)
            if c.error_kind:
                continue
            d, first = _diff(base.nll[1:t], c.nll[1:t])
            if d > worst[0]:
                worst = (d, t, None if first is None else first + 1)
            for i, (m, s1, s2) in enumerate(base.steps):
                if m >= t:
                    break
                compared += 1
                if i >= len(c.steps) or not _close(c.steps[i][1:], (s1, s2), s.tol):
                    step_bad.append(f"optimizer step {i + 1} (taken when positions <= {m} were scored) changed "
                                    f"when tokens[{t}:] (unscored) were randomized")
                    break
        d, t, first = worst
        if d > s.tol:
            c1 = Check("EVAL.C1", FAIL, f"randomizing tokens[{t}:] changed the score at position {first} (< {t}) by "
                       f"{d:.3g} nats: position scores depend on future tokens", {"cut": t, "position": first,
                                                                                   "max_abs_diff": d})
        else:
            c1 = Check("EVAL.C1", PASS, f"{len(cuts)} cuts: randomizing tokens[t:] never moved a score before t "
                       f"(max |diff| {d:.1e} <= {s.tol:g})", {"cuts": cuts, "max_abs_diff": d})
        ttt = self._ttt_from_errors(calls)
        if ttt is None:
            if step_bad:
                ttt = Check("EVAL.TTT", FAIL, step_bad[0] + ": the evaluator trained on validation tokens before "
                            "scoring them (e.g. a val-token warm-up or adapt-then-score)", {"first": step_bad[0]})
            elif base.steps:
                pre = sum(1 for m, _, _ in base.steps if m == 0)
                note = f"; {pre} step(s) before the first score, independent of the stream" if pre else ""
                ttt = Check("EVAL.TTT", PASS, f"{len(base.steps)} optimizer steps, each independent of the tokens not "
                            f"yet scored when it ran ({compared} step comparisons){note}",
                            {"steps": len(base.steps), "compared": compared})
            else:
                ttt = Check("EVAL.TTT", PASS, "no optimizer step during evaluation (no test-time training)",
                            {"steps": 0})
        return c1, ttt, self.check_truncation(x, base)

    def _ttt_from_errors(self, calls: list[Call]) -> Check | None:
        for c in calls:
            if c.error_kind == "scoring" and ("test-time training read" in (c.error or "") or
                                              "frontier" in (c.error or "")):
                return Check("EVAL.TTT", FAIL, f"ScoredTokens refused a read: {c.error}")
        return None

    def check_truncation(self, x: torch.Tensor, base: Call) -> Check:
        s, n = self.s, x.numel() - 1
        lengths = sorted({k * s.seq_len for k in range(1, n // s.seq_len)}, reverse=True)[: s.trunc_cuts]
        worst = (0.0, 0)
        for L in lengths:
            c = self.call(x[: L + 1].clone())
            if c.error_kind:
                return Check("EVAL.C1", WARN, f"truncated stream tokens[:{L + 1}] could not be scored: {c.error}")
            d, _ = _diff(base.nll[1 : L + 1], c.nll[1 : L + 1])
            worst = max(worst, (d, L))
        d, L = worst
        if d > s.tol:
            return Check("EVAL.C1", WARN, f"truncation: scoring only tokens[:{L + 1}] moved earlier scores by {d:.3g} "
                         "nats — the evaluator depends on the stream length (legal if only the length is used, e.g. "
                         "a schedule over the number of chunks; content perturbation is the gate)",
                         {"length": L, "max_abs_diff": d})
        return Check("EVAL.C1", PASS, f"truncation: scores of tokens[:L] equal the full-stream scores ({len(lengths)} "
                     "lengths)", {"lengths": lengths})

    # EVAL.C2 + EVAL.C3 (+ the selection probe used by C4) from V-fold substitutions
    def check_vfold(self, x: torch.Tensor, base: Call) -> tuple[Check, Check, float]:
        s, n = self.s, x.numel() - 1
        if base.error_kind:
            skip = f"not checked: the base run broke the scoring protocol ({base.error})"
            return Check("EVAL.C2", SKIP, skip), Check("EVAL.C3", SKIP, skip), 0.0
        bos = [i for i in range(n) if int(x[i]) == BOS]
        after_bos = [b + 1 for b in bos if 1 < b + 1 <= n]
        # positions drawn at random over the whole stream (per-run seed), one right after a BOS
        pool = [t for t in range(2, n + 1) if int(x[t]) != BOS]
        k = max(s.vfold_positions - 1, 1)
        picks = self.rng.choice(pool, size=min(k, len(pool)), replace=False).tolist()
        if after_bos:
            picks.append(int(self.rng.choice(after_bos)))
        positions = sorted({int(t) for t in picks})
        sums: dict[int, float] = {}
        c3_bad: list[str] = []
        lognorm_seen = False
        for t in positions:
            L = min(n, math.ceil(t / s.seq_len) * s.seq_len)
            probs, lns = [], []
            prefix = None
            for a in range(s.vocab):
                y = x[: L + 1].clone()
                y[t] = a
                c = self.call(y)
                if c.error_kind:
                    return (Check("EVAL.C2", SKIP, f"substituted stream could not be scored: {c.error}"),
                            Check("EVAL.C3", SKIP, "not checked"), 0.0)
                probs.append(math.exp(-float(c.nll[t])))
                lns.append(float(c.lognorm[t]))
                if prefix is None:
                    prefix = c.nll[1:t]
                else:
                    d, first = _diff(prefix, c.nll[1:t])
                    if d > s.tol and len(c3_bad) < 3:
                        at = "?" if first is None else first + 1
                        c3_bad.append(f"setting tokens[{t}] changed the score at position {at} (< {t}) by {d:.3g}")
            sums[t] = sum(probs)
            finite = [v for v in lns if math.isfinite(v)]
            if finite:
                lognorm_seen = True
                spread_ln = max(finite) - min(finite)
                if spread_ln > s.tol and len(c3_bad) < 3:
                    c3_bad.append(f"the log-normalizer at position {t} moved by {spread_ln:.3g} when only tokens[{t}] "
                                  "changed: the distribution used to score x_t depends on x_t")
        bad = {t: v for t, v in sums.items() if abs(v - 1.0) > s.norm_tol}
        ev = {"positions": positions, "sums": {str(k): round(v, 6) for k, v in sums.items()}}
        if bad:
            t, v = max(bad.items(), key=lambda kv: abs(kv[1] - 1))
            c2 = Check("EVAL.C2", FAIL, f"at position {t} the probabilities the evaluator assigns to each of the "
                       f"{s.vocab} possible tokens sum to {v:.4f}, not 1 (a target-only mixture, selection or a "
                       "target-dependent update)", ev)
        else:
            c2 = Check("EVAL.C2", PASS, f"{len(positions)} positions x {s.vocab} substitutions: Σ_a p_t(a) within "
                       f"{s.norm_tol:g} of 1", ev)
        if c3_bad:
            c3 = Check("EVAL.C3", FAIL, "; ".join(c3_bad), {"positions": positions})
        elif lognorm_seen:
            c3 = Check("EVAL.C3", PASS, f"{len(positions)} positions: changing only x_t moved neither the "
                       "log-normalizer at t nor any earlier score", {"positions": positions})
        else:
            c3 = Check("EVAL.C3", PASS, "no log-normalizer recorded (black-box): earlier scores invariant to x_t; "
                       "the distribution itself is covered by EVAL.C2", {"positions": positions})
        over = max(sums.values(), default=1.0)
        return c2, c3, over

    def check_c4(self, base: Call, max_sum: float) -> Check:
        if base.error_kind == "scoring" and ("twice" in (base.error or "") or "expected each" in (base.error or "")
                                             or "out of range" in (base.error or "")):
            return Check("EVAL.C4", FAIL, f"not a single pass: {base.error}")
        if base.extra_passes:
            return Check("EVAL.C4", FAIL, f"a second scoring pass over the validation stream: {base.extra_passes[0]} "
                         f"({len(base.extra_passes)} such records); the reported score must come from one pass",
                         {"extra": base.extra_passes[:5]})
        if base.repeats:
            return Check("EVAL.C4", FAIL, f"a second scoring pass: {base.repeats[0]} (rescoring, min over passes); "
                         "the reported score must come from one pass", {"repeats": base.repeats})
        if max_sum > 1.0 + self.s.norm_tol:
            return Check("EVAL.C4", FAIL, f"the probabilities over the vocabulary at one position sum to {max_sum:.4f} "
                         "> 1: the signature of choosing, per token, the better of several predictions with the "
                         "true token (min over passes / experts, EVAL.NO_SELECTION)", {"max_sum": max_sum})
        if base.error_kind:
            return Check("EVAL.C4", SKIP, f"not checked: {base.error}")
        n = int(np.isfinite(base.nll[1:]).sum())
        return Check("EVAL.C4", PASS, f"each of {n} positions scored exactly once; no second scoring pass",
                     {"positions": n})

    def check_isolation(self, x: torch.Tensor, base: Call) -> Check:
        s, n = self.s, x.numel() - 1
        claim = claims_isolation(self.make(self.world.run))
        if base.error_kind:
            return Check("EVAL.DOC_ISOLATION", SKIP, f"not checked: {base.error}")
        bos = [i for i in range(n + 1) if int(x[i]) == BOS]
        docs = [(bos[k], bos[k + 1] if k + 1 < len(bos) else n + 1) for k in range(1, len(bos))]
        docs = [d for d in docs if d[1] - d[0] > 2]
        picks = docs[len(docs) // 2 :][: s.iso_docs] or docs[:1]
        leaks: list[str] = []
        for b, e in picks:
            alt = _perturb(x, 0, b, s.vocab, self.gen)
            c = self.call(alt)
            if c.error_kind:
                return Check("EVAL.DOC_ISOLATION", SKIP, f"not checked: {c.error}")
            # positions b+1 .. e (e predicts the next BOS) belong to the document starting at b
            d, first = _diff(base.nll[b + 1 : min(e, n) + 1], c.nll[b + 1 : min(e, n) + 1])
            if d > s.tol:
                leaks.append(f"randomizing the documents before BOS@{b} moved the score at position "
                             f"{b + 1 + (first or 0)} by {d:.3g}")
        ev = {"documents": [list(p) for p in picks]}
        if claim:
            if leaks:
                return Check("EVAL.DOC_ISOLATION", FAIL, "claims document isolation but " + leaks[0] +
                             " (cross-BOS leak, e.g. token mixing not masked at BOS)", ev)
            return Check("EVAL.DOC_ISOLATION", PASS, f"claims isolation; {len(picks)} documents' scores unchanged when "
                         "every earlier document was randomized", ev)
        what = ("scores depend on earlier documents" if leaks else "scores happen not to depend on earlier documents")
        return Check("EVAL.DOC_ISOLATION", PASS, f"no isolation claimed (stream order: earlier documents are ordinary "
                     f"prefix context); measured: {what}", {**ev, "info": True})


def _close(a: Sequence[float], b: Sequence[float], tol: float) -> bool:
    return all(abs(x - y) <= tol * max(1.0, abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def check_evaluator(world: World, make: Callable[[Any], Any], name: str, origin: str,
                    s: HarnessSettings | None = None, primary: bool = True) -> EvaluatorReport:
    """Run the whole harness on one evaluator."""
    s = s or HarnessSettings()
    t0 = time.perf_counter()
    report = EvaluatorReport(name=name, origin=origin, primary=primary)
    try:
        report.claims_isolation = claims_isolation(make(world.run))
    except Exception as exc:  # noqa: BLE001 - a constructor failure is a could-not-run
        report.error = f"could not run: building the evaluator raised {type(exc).__name__}: {exc}"
        return report
    h = Harness(world, make, s)
    h.run_all(report)
    report.calls, report.seconds = h.calls, round(time.perf_counter() - t0, 3)
    return report


# --- TOK.BPB: the byte table against the tokenizer's own decoding ----------------------------------------
def byte_audit(tokens: torch.Tensor, tables: Any, decode: Callable[[list[int]], str], bos_id: int = BOS) -> Check:
    """Σ per-token bytes (core.tokenizer.token_bytes, the sink's accounting) over each document must equal
    the UTF-8 length of the decoded document (catches e.g. byte-fallback pieces counted as 3 bytes, PR #1184)."""
    from core.tokenizer import token_bytes

    ids = tokens.to(torch.int64)
    bos = (ids == bos_id).nonzero().reshape(-1).tolist()
    if not bos:
        return Check("TOK.BPB", SKIP, f"no BOS ({bos_id}) in the validation tokens: documents unknown")
    bounds = [*bos, ids.numel()]
    lut_total = dec_total = 0
    first_bad: str | None = None
    n_docs = 0
    for b, e in zip(bounds[:-1], bounds[1:], strict=True):
        if e - b < 2:
            continue
        n_docs += 1
        lut = int(token_bytes(ids[b : e - 1], ids[b + 1 : e], tables).sum())
        dec = len(decode(ids[b + 1 : e].tolist()).encode("utf-8"))
        lut_total += lut
        dec_total += dec
        if lut != dec and first_bad is None:
            first_bad = f"document at token {b}: table {lut} bytes, decoded {dec}"
    ev = {"documents": n_docs, "table_bytes": lut_total, "decoded_bytes": dec_total}
    if lut_total != dec_total or first_bad:
        rel = (lut_total - dec_total) / max(dec_total, 1)
        return Check("TOK.BPB", FAIL, f"byte table counts {lut_total:,} bytes for {n_docs} documents whose decoded "
                     f"UTF-8 is {dec_total:,} bytes ({rel:+.2%}; first: {first_bad}): the BPB denominator is wrong", ev)
    return Check("TOK.BPB", PASS, f"byte table = decoded UTF-8 bytes over {n_docs} documents ({dec_total:,} bytes)", ev)


def run_dir_byte_audit(run_dir: Path, max_tokens: int) -> Check:
    """byte_audit on the run's tokenizer and the first `max_tokens` of its validation shards."""
    from core.data import read_shard, shard_files
    from core.tokenizer import build_byte_tables, load_tokenizer

    core = run_dir_recipe(run_dir).get("core", {})
    vocab = int(core.get("vocab_size", 1024))
    data = Path(core["data_path"]) if core.get("data_path") else None
    if data is None:
        from dataprep.build import ensure_default_data

        data = ensure_default_data(vocab_size=vocab)
    if not data.is_dir():
        return Check("TOK.BPB", SKIP, f"could not run: the run's data path {data} is not on this machine")
    tok = Path(core["tokenizer_path"]) if core.get("tokenizer_path") else next(iter(sorted(
        (data / "tokenizer").glob("*.model"))), data.parent.parent / "tokenizers" / f"fineweb_{vocab}_bpe.model")
    if not tok.is_file():
        return Check("TOK.BPB", SKIP, f"could not run: the run's tokenizer {tok} is not on this machine")
    sp = load_tokenizer(tok, vocab)
    parts, n = [], 0
    for f in shard_files(data, "val"):
        t = read_shard(f)
        parts.append(t[: max_tokens - n])
        n += parts[-1].numel()
        if n >= max_tokens:
            break
    tokens = torch.cat(parts).to(torch.int64)
    check = byte_audit(tokens, build_byte_tables(sp, vocab), lambda ids: sp.decode(ids), int(sp.bos_id()))
    check.message += f" (tokenizer {tok.name}, first {tokens.numel():,} validation tokens)"
    return check


# --- what to check: a run directory's evaluators, user files ------------------------------------------------
def load_object(spec: str) -> tuple[Callable[[Any], Any], str]:
    """`FILE.py:NAME` → a factory run -> evaluator. NAME may be a class or a function taking the run (or
    nothing); the result needs `evaluate(run, model, tokens, sink)` or `score(tokens)`."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"--evaluator {spec!r}: expected FILE.py:NAME")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--evaluator {spec!r}: file {p} not found")
    module = import_path(p, "pgolf_validate_user")
    if module is None:
        raise ValueError(f"--evaluator {spec!r}: {p} cannot be imported")
    obj = getattr(module, name, None)
    if obj is None:
        raise ValueError(f"--evaluator {spec!r}: {p} defines no {name!r}")

    def make(run: Any) -> Any:
        try:
            n_args = len([q for q in inspect.signature(obj).parameters.values()
                          if q.default is inspect.Parameter.empty and q.kind in (q.POSITIONAL_ONLY,
                                                                                 q.POSITIONAL_OR_KEYWORD)])
        except (TypeError, ValueError):
            n_args = 0
        ev = obj(run) if n_args >= 1 else obj()
        if hasattr(ev, "evaluate"):
            return ev
        if hasattr(ev, "score"):
            return BlackBoxAdapter(ev)
        raise ValueError(f"--evaluator {spec!r}: {name} built a {type(ev).__name__} with neither evaluate() nor "
                         "score()")

    return make, f"{p}:{name}"


def evaluator_plugins(registry: Any) -> list[str]:
    """Names of registry plugins that provide an evaluator (implement `pg_evaluator`)."""
    return [n for n in registry.names() if callable(getattr(registry.plugins[n], "pg_evaluator", None))]


def harness_reports(run_dir: Path | None, evaluator_specs: Sequence[str], s: HarnessSettings,
                    plugin_files: Sequence[str] = (), only: Sequence[str] | None = None,
                    shard: tuple[int, int] = (0, 1)) -> list[EvaluatorReport]:
    """Reports for a run directory's evaluators (plain + every evaluator plugin, the run's own one first,
    with the run's other plugins and settings, evaluator settings scaled by the plugin's test_settings) and
    for user evaluator objects (built on the run's model plugins, or the plain core GPT). `shard` (k, n) keeps
    the run's evaluators k, k+n, … so n children can share the work."""
    registry = load_registry(plugin_files)
    recipe = run_dir_recipe(run_dir) if run_dir is not None else {}
    run_plugins = [str(p) for p in recipe.get("plugins", [])]
    unknown = [p for p in run_plugins if p not in registry.plugins]
    if unknown:
        raise ValueError(f"{run_dir}/config.json: plugins {unknown} are not known to this pgolf (pass --plugin-file)")
    ev_plugins = evaluator_plugins(registry)
    model_plugins = [p for p in run_plugins if p not in ev_plugins]
    own = next((p for p in run_plugins if p in ev_plugins), "plain")
    reports: list[EvaluatorReport] = []
    if run_dir is not None:
        names = [own] + [n for n in ["plain", *ev_plugins] if n != own]
        if only is not None:
            if unknown := sorted(set(only) - set(names)):
                raise ValueError(f"--only {','.join(unknown)}: no such evaluator (this run has {', '.join(names)})")
            names = [n for n in names if n in only]
        names = names[shard[0] :: shard[1]]
        for name in names:
            plugins = model_plugins + ([] if name == "plain" else [name])
            errors = registry.check(plugins)
            rep = EvaluatorReport(name=name, origin="pgolf " + ("core" if name == "plain" else "plugin"),
                                  primary=name == own)
            if errors:
                rep.error = f"not checked with this run's plugins: {errors[0]}"
                reports.append(rep)
                continue
            sets = []
            if name != "plain":
                for k, v in ((registry.plugins[name].test_settings or {}).get(name) or {}).items():
                    sets.append(f"{name}.{k}={v}")
            try:
                world = build_world(s, plugins, recipe, sets, registry)
            except Exception as exc:  # noqa: BLE001
                why = " ".join(str(exc).split("\n")[:2])
                rep.error = f"could not run: building the tiny model raised {type(exc).__name__}: {why}"
                reports.append(rep)
                continue
            rep2 = check_evaluator(world, lambda run: run.hook.pg_evaluator(run=run), name, rep.origin, s,
                                   primary=name == own)
            reports.append(rep2)
    for spec in evaluator_specs:
        try:
            make, origin = load_object(spec)
            world = build_world(s, model_plugins, recipe, (), registry)
        except Exception as exc:  # noqa: BLE001
            reports.append(EvaluatorReport(name=spec, origin=spec, error=f"could not run: {type(exc).__name__}: "
                                                                             f"{exc}"))
            continue
        reports.append(check_evaluator(world, make, spec.rpartition(":")[2], origin, s, primary=True))
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m validator.harness", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default=None)
    p.add_argument("--evaluator", action="append", default=[])
    p.add_argument("--plugin-file", action="append", default=[])
    p.add_argument("--only", default=None, help="comma-separated evaluator names to check (run dir)")
    p.add_argument("--settings", default="{}", help="JSON overrides of HarnessSettings")
    p.add_argument("--shard", default="0/1", help="K/N: check only the evaluators K, K+N, ... (parallel children)")
    p.add_argument("--byte-tokens", type=int, default=500_000, help="validation tokens for the TOK.BPB audit")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(1)  # tiny matmuls: extra threads only contend (200x slower on a loaded 2-core box)
    s = HarnessSettings(**json.loads(a.settings))
    k, _, n = a.shard.partition("/")
    t0 = time.perf_counter()
    try:
        reports = harness_reports(Path(a.run_dir) if a.run_dir else None, a.evaluator, s, a.plugin_file,
                                  a.only.split(",") if a.only else None, (int(k), int(n or 1)))
        doc: dict[str, Any] = {"ok": True, "reports": [r.to_dict() for r in reports]}
        if a.run_dir and a.byte_tokens > 0:
            try:
                doc["byte_audit"] = asdict(run_dir_byte_audit(Path(a.run_dir), a.byte_tokens))
            except Exception as exc:  # noqa: BLE001 - report, do not lose the evaluator results
                doc["byte_audit"] = asdict(Check("TOK.BPB", SKIP, f"could not run: {type(exc).__name__}: {exc}"))
    except ValueError as exc:
        doc = {"ok": False, "error": str(exc)}
    doc["seconds"] = round(time.perf_counter() - t0, 2)
    doc["settings"] = asdict(s)
    tmp = Path(a.out + ".tmp")
    tmp.write_text(json.dumps(doc, default=str), encoding="utf-8")
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
