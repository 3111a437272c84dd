"""Test-time-training machinery shared by evaluator plugins: `ScoredTokens` (the only way TTT may read
validation tokens: the sink's scored prefix, or a check that every position it trains on is scored), SGD
over scored tokens, batched per-document LoRA adapters, and the document-batched score-then-adapt loop (PR
#1530's `eval_val_ttt_lora`).

`sgd_rows` is the adaptation step of score-first TTT (PR #549) and of phased TTT's global SGD (PR #1610):
epochs of SGD over rows of `seq_len` tokens split across ranks, gradients summed so every rank applies the
exact full-batch step. `DocLoRATTT` scores documents in batches of rows (one document per row, so nothing
crosses a document boundary whatever the model's token-shift parts do): each document is cut into chunks;
for each chunk the batch is scored once (through the `ScoreSink`), then every document that still has a
chunk to come takes one optimizer step on its own LoRA adapters; adapters are reset for every batch.
Chunk ci is scored from the window ending at (ci+1)·chunk (at most seq_len tokens) for every chunk, the
last one included: PR #1530 anchors the last chunk's window at the document's end, which makes a score
depend on where the next BOS falls (a future token), so that is not ported.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.model import Rotary
from core.scoring import ScoreSink, ScoringError, doc_ids_of, rank_span


class ScoredTokens:
    """The validation tokens that test-time training may read: only the sink's scored prefix."""

    def __init__(self, sink: ScoreSink):
        self._sink = sink

    def available(self) -> int:
        """Number of tokens readable: tokens[:frontier] (targets of all scored positions)."""
        return self._sink.frontier

    def read(self, start: int, end: int) -> Tensor:
        if end > self._sink.frontier or start < 0:
            raise ScoringError(
                f"test-time training read tokens[{start}:{end}] but only tokens[:{self._sink.frontier}] are scored"
            )
        return self._sink.tokens[start:end]

    def require(self, positions: Tensor) -> None:
        """Raise unless every position in `positions` is already scored (on this rank): document-batched
        TTT calls this before each update with the positions whose targets it trains on."""
        pos = positions.reshape(-1).to(self._sink.device)
        if pos.numel() and not bool(self._sink.scored[pos].all()):
            bad = int(pos[~self._sink.scored[pos]][0])
            raise ScoringError(f"test-time training on position {bad} before it was scored")


def find_documents(tokens: Tensor, bos_id: int) -> list[tuple[int, int]]:
    """(start, length) of each document: from its BOS up to and including the next BOS (PR #1530's split).

    A document predicts positions start+1 .. start+length-1, so the next document's BOS is predicted from
    this document's context, and every position 1..N-1 belongs to exactly one document. Tokens before
    the first BOS (a stream that does not start with one) form a first document starting at 0.
    """
    n = tokens.numel()
    starts = (tokens.reshape(-1) == bos_id).nonzero().reshape(-1).cpu().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    docs = []
    for i, s in enumerate(starts):
        end = starts[i + 1] + 1 if i + 1 < len(starts) else n
        if end - s >= 2:
            docs.append((s, end - s))
    return docs


class FixedRotary(nn.Module):
    """A rotary module's cos/sin tables computed once at `seq_len`; shorter rows read a prefix of them, so
    one compiled graph serves every row length."""

    def __init__(self, rotary: nn.Module, seq_len: int, device: torch.device):
        super().__init__()
        cos, sin = rotary(seq_len, device, torch.float32)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return self.cos[:, :seq_len].to(dtype=dtype), self.sin[:, :seq_len].to(dtype=dtype)


def cosine_lr(base: float, chunk: int, n_chunks: int) -> float:
    """lr * 0.5 * (1 + cos(pi * ci / (N - 1))) across chunks."""
    if n_chunks <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * chunk / (n_chunks - 1)))


def sgd_rows(run, model: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor], tokens: Tensor, seq_len: int,
             batch_seqs: int, epochs: int, grad_clip: float, bos_id: int | None = None) -> None:
    """`epochs` passes of SGD over `tokens` cut into rows of seq_len (+1 for targets), `batch_seqs` rows a step.

    Each rank computes the rows of the step that fall in its span; gradients are summed across ranks with
    the loss weighted by row count, so the step equals the single-process one. With `bos_id`, attention
    stays inside each document of a row (PR #1610's GLOBAL_TTT_RESPECT_DOC_BOUNDARIES).
    """
    n_rows = (tokens.numel() - 1) // seq_len
    if n_rows == 0:
        return
    lo, hi = rank_span(n_rows, run.rank, run.world_size)
    model.train()
    for _ in range(epochs):
        for b in range(0, n_rows, batch_seqs):
            rows = range(max(b, lo), min(b + batch_seqs, hi))
            opt.zero_grad(set_to_none=False)
            if len(rows):
                local = tokens[rows.start * seq_len : rows.stop * seq_len + 1].to(run.device, torch.int64)
                x, y = local[:-1].view(-1, seq_len), local[1:].view(-1, seq_len)
                with run.autocast():
                    loss = model(x, y) if bos_id is None else model(x, y, doc_ids=doc_ids_of(x, bos_id))
                (loss * len(rows) / min(batch_seqs, n_rows - b)).backward()
            if run.distributed:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
    model.eval()


# --- batched LoRA adapters -------------------------------------------------------------------------------
class BatchedLoRA(nn.Module):
    """One rank-r adapter per batch row: x (B, ..., in) -> (x A_b^T) B_b^T * scale (PR #1530 `BatchedLinearLoRA`).

    A starts uniform(±1/sqrt(in)) from a fixed seed and is the same for every row, B starts at zero, so
    every document starts from the same adapter wherever it sits in a batch (document-independent).
    Accepts x flattened to (B*T, in) as well (the model's head flattens before the logits).
    """

    def __init__(self, bsz: int, in_features: int, out_features: int, rank: int, scale: float, seed: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(in_features)
        a0 = (torch.rand(rank, in_features, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        self.register_buffer("a0", a0.to(device=device, dtype=dtype), persistent=False)
        self.A = nn.Parameter(self.a0.expand(bsz, -1, -1).clone())
        self.B = nn.Parameter(torch.zeros(bsz, out_features, rank, dtype=dtype, device=device))
        self.scale = scale

    @torch.no_grad()
    def reset(self) -> None:
        self.A.copy_(self.a0.expand_as(self.A))
        self.B.zero_()

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x3 = x.reshape(self.A.size(0), -1, shape[-1])
        out = (x3 @ self.A.to(x.dtype).transpose(1, 2)) @ self.B.to(x.dtype).transpose(1, 2)
        return (out * self.scale).reshape(*shape[:-1], out.size(-1))


class WithLoRA(nn.Module):
    """inner(x, *rest) + lora(x): a linear with an adapter, or the record's side adapters on the attention
    and MLP blocks (input: the block's normed input; output added to the block's output)."""

    def __init__(self, inner: nn.Module, lora: BatchedLoRA):
        super().__init__()
        self.inner = inner
        self.lora = lora

    def forward(self, x: Tensor, *rest: Tensor) -> Tensor:
        return self.inner(x, *rest) + self.lora(x)


TARGETS = ("q", "k", "v", "o", "mlp", "head")


def install_lora(model: nn.Module, targets: tuple[str, ...], bsz: int, rank: int, scale: float,
                 seed: int = 1234) -> list[BatchedLoRA]:
    """Wrap the chosen projections of a GPT (a copy: this edits it in place) with batched adapters.

    q/k/v: the attention's c_q/c_k/c_v; o: side adapter on the attention block (normed input -> attention
    output); mlp: side adapter on the MLP block; head: added to the logits before the softcap.
    """
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"lora targets: unknown {bad}, expected a subset of {list(TARGETS)}")
    ref = model.tok_emb.weight
    dtype = torch.float32 if ref.dtype in (torch.bfloat16, torch.float16) else ref.dtype
    loras: list[BatchedLoRA] = []

    def make(n_in: int, n_out: int) -> BatchedLoRA:
        lora = BatchedLoRA(bsz, n_in, n_out, rank, scale, seed + len(loras), dtype, ref.device)
        loras.append(lora)
        return lora

    dim = model.tok_emb.embedding_dim
    for block in model.blocks:
        attn = block.attn
        for t, name in (("q", "c_q"), ("k", "c_k"), ("v", "c_v")):
            if t in targets:
                lin = getattr(attn, name)
                setattr(attn, name, WithLoRA(lin, make(lin.in_features, lin.out_features)))
        if "o" in targets:
            block.attn = WithLoRA(block.attn, make(dim, dim))
        if "mlp" in targets:
            block.mlp = WithLoRA(block.mlp, make(dim, dim))
    if "head" in targets:
        model.head_add.append(make(dim, model.tok_emb.num_embeddings))
    return loras


# --- the document-batched score-then-adapt loop ----------------------------------------------------------
@dataclass
class LoRATTTSettings:
    """The per-document LoRA TTT settings (PR #1530 defaults); the config of `lora_ttt`, and the first
    fields of `phased_ttt`'s."""

    rank: int = field(default=96, metadata={"help": "adapter rank (PR #1530: 96; PR #1855: 80)"})
    alpha: float = field(default=0.0, metadata={"help": "adapter scale alpha/rank; 0 = unscaled (#1530; #1767: 144)"})
    targets: str = field(default="q,k,v,o,mlp,head", metadata={"help": f"adapted projections ({','.join(TARGETS)})"})
    chunk_tokens: int = field(default=32, metadata={"help": "predictions per score-then-adapt chunk"})
    batch_docs: int = field(default=64, metadata={"help": "documents per batch (one per row)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    beta1: float = field(default=0.0, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    weight_decay: float = field(default=0.5, metadata={"help": "AdamW weight decay"})
    bos_id: int = field(default=1, metadata={"help": "BOS token id (document start)"})

    def target_errors(self, section: str) -> list[str]:
        """`targets` checked at configuration time (one line, or none)."""
        try:
            self.target_list(section)
        except ValueError as exc:
            return [str(exc)]
        return []

    def target_list(self, section: str) -> tuple[str, ...]:
        targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        if not targets or any(t not in TARGETS for t in targets):
            raise ValueError(f"{section}.targets: expected a comma-separated subset of {','.join(TARGETS)}, "
                             f"got {self.targets!r}")
        if self.rank < 1 or self.batch_docs < 1 or self.chunk_tokens < 1:
            raise ValueError(f"{section}.rank, batch_docs and chunk_tokens must be >= 1, got {self.rank}, "
                             f"{self.batch_docs}, {self.chunk_tokens}")
        return targets


def context_width(ci: int, chunk: int, seq_len: int) -> int:
    """Row length for chunk ci: its window, min((ci+1)·chunk, seq_len) tokens (a document's last chunk is
    padded at the end to that width: causal, so padding never changes a scored position)."""
    return min((ci + 1) * chunk, seq_len)


class DocLoRATTT:
    """Per-document LoRA TTT over a set of documents, batched by length (PR #1530); reusable across calls.

    `prepare(run, model)` builds (once) a frozen copy of `run.model` with adapters installed, compiled like
    the evaluation model when that is compiled; `sync()` copies the current base weights into it.
    The copy's rotary tables are fixed at `seq_len` (position t always gets the rotation it has in a
    full window, as in PR #1530) and the row length is a dynamic dimension of the compiled graph, so one
    forward+backward graph serves every chunk window (PR #1530 compiles with `dynamic=True` too).
    """

    backend = "inductor"  # torch.compile backend of the adapter model (tests use "aot_eager")

    def __init__(self, s: LoRATTTSettings, seq_len: int, section: str = "lora_ttt"):
        self.targets = s.target_list(section)
        if seq_len < s.chunk_tokens:
            raise ValueError(f"{section}.chunk_tokens={s.chunk_tokens} must be <= eval_seq_len={seq_len}")
        self.s, self.seq_len, self.chunk = s, seq_len, s.chunk_tokens
        self.scale = s.alpha / s.rank if s.alpha > 0 else 1.0
        self._key: tuple | None = None

    def prepare(self, run, model) -> None:
        key = (id(run.model), model is not run.model)
        if self._key != key:
            base = run.model
            self.copy = copy.deepcopy(base)
            self.pairs = list(zip([*base.parameters(), *base.buffers()],
                                  [*self.copy.parameters(), *self.copy.buffers()], strict=True))
            for p in self.copy.parameters():
                p.requires_grad_(False)
            s = self.s
            self.loras = install_lora(self.copy, self.targets, s.batch_docs, s.rank, self.scale)
            self.params = [p for lo in self.loras for p in lo.parameters()]
            for name, m in list(self.copy.named_modules()):
                if isinstance(m, Rotary):
                    parent, _, attr = name.rpartition(".")
                    setattr(self.copy.get_submodule(parent), attr, FixedRotary(m, self.seq_len, run.device))
            self.forward = self.copy
            if model is not run.model:  # the evaluation model is compiled: compile this one too
                self.forward = torch.compile(self.copy, dynamic=None, fullgraph=True, backend=self.backend)
            self._key = key
        self.sync()

    @property
    def compiled(self) -> bool:
        return self._key is not None and self.forward is not self.copy

    @torch.no_grad()
    def sync(self) -> None:
        for src, dst in self.pairs:
            dst.copy_(src)

    def _optimizer(self, device: torch.device) -> torch.optim.Optimizer:
        s = self.s
        return torch.optim.AdamW(self.params, lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-10,
                                 weight_decay=s.weight_decay, fused=device.type == "cuda")

    def _reset(self) -> None:
        for lo in self.loras:
            lo.reset()

    def batches(self, docs: list[tuple[int, int]], rank: int, world_size: int) -> list[list[tuple[int, int]]]:
        """This rank's batches: documents sorted by length (ties by start), cut into batches of batch_docs,
        longest batch first, batch i to rank i % world_size."""
        order = sorted(docs, key=lambda d: (d[1], d[0]))
        bs = [order[i : i + self.s.batch_docs] for i in range(0, len(order), self.s.batch_docs)]
        bs.sort(key=lambda b: -max(d[1] for d in b))
        return bs[rank::world_size]

    def _row_loss(self, run, x: Tensor, y: Tensor) -> Tensor:
        """(B, T) per-token NLL with grad."""
        if self.compiled:  # row lengths vary by chunk: one graph, symbolic in the length
            torch._dynamo.maybe_mark_dynamic(x, 1)
            torch._dynamo.maybe_mark_dynamic(y, 1)
        with run.autocast():
            return self.forward(x, y, reduce=False)

    def score_docs(self, run, tokens: Tensor, sink: ScoreSink, docs: list[tuple[int, int]],
                   on_batch: Callable[[int], None] | None = None) -> None:
        """Score every position of `docs` (this rank's share) into the sink, adapting per document."""
        s, device = self.s, run.device
        scored = ScoredTokens(sink)
        bsz = s.batch_docs
        for batch in self.batches(docs, run.rank, run.world_size):
            self._reset()
            opt = self._optimizer(device)
            pred = [n - 1 for _, n in batch]
            n_chunks = [(p + self.chunk - 1) // self.chunk for p in pred]
            trains_after = torch.zeros(bsz, dtype=torch.bool)
            for ci in range(max(n_chunks)):
                width = context_width(ci, self.chunk, self.seq_len)
                idx = torch.zeros(bsz, width + 1, dtype=torch.int64)
                valid = torch.zeros(bsz, width + 1, dtype=torch.bool)
                score_mask = torch.zeros(bsz, width, dtype=torch.bool)
                for b, (start, _) in enumerate(batch):
                    if ci >= n_chunks[b]:
                        continue
                    end = pred[b] if ci == n_chunks[b] - 1 else (ci + 1) * self.chunk
                    w0 = max(0, (ci + 1) * self.chunk - self.seq_len)  # never anchored at the document's end
                    idx[b, : end - w0 + 1] = torch.arange(start + w0, start + end + 1)
                    valid[b, : end - w0 + 1] = True
                    score_mask[b, ci * self.chunk - w0 : end - w0] = True
                    trains_after[b] = ci < n_chunks[b] - 1
                row = torch.where(valid, tokens[idx.to(tokens.device)].cpu().long(), 0).to(device, torch.int64)
                x, y = row[:, :-1], row[:, 1:]
                positions = (idx[:, 1:] * score_mask).to(device)
                mask = score_mask.to(device)
                train = bool(trains_after.any())
                with torch.enable_grad():  # always, as the record: one compiled graph per row length
                    nll = self._row_loss(run, x, y)
                sink.record(positions[mask], nll.detach()[mask])
                if train:
                    rows = trains_after.to(device)
                    train_mask = mask & rows[:, None]
                    scored.require(positions[train_mask])
                    per_doc = (nll * train_mask).sum(dim=1) / train_mask.sum(dim=1).clamp(min=1)
                    opt.zero_grad(set_to_none=True)
                    per_doc.sum().backward()
                    opt.step()
                trains_after.zero_()
            if on_batch is not None:
                on_batch(len(batch))

    def warmup(self, run) -> None:
        """Forward + backward + step on random tokens at the shortest, a middle and the longest row length
        (the graph is dynamic in the length), adapters reset after."""
        gen = torch.Generator().manual_seed(0)
        opt = self._optimizer(run.device)
        n_widths = (self.seq_len + self.chunk - 1) // self.chunk
        widths = sorted({context_width(ci, self.chunk, self.seq_len) for ci in (0, n_widths // 2, n_widths - 1)})
        for width in widths:
            x = torch.randint(0, run.core.vocab_size, (self.s.batch_docs, width + 1), generator=gen).to(run.device)
            with torch.enable_grad():
                nll = self._row_loss(run, x[:, :-1], x[:, 1:])
            opt.zero_grad(set_to_none=True)
            nll.mean(dim=1).sum().backward()
            opt.step()
        self._reset()
