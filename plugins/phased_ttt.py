"""Phased TTT: per-document LoRA TTT plus full-model SGD phases on already-scored documents (PR #1610, #1626).

The legal form (rulebook EVAL.C1 / EVAL.DOC_ISOLATION): phases follow the stream. The first
`prefix_docs` documents, in stream order, are split into `num_phases` groups at boundaries
prefix_docs·k/num_phases. Phase k scores its group with per-document LoRA TTT (the `lora_ttt` settings),
then — once every position up to the group's end is scored — trains the base model with SGD(momentum)
on all documents scored so far (the stream prefix, read through `ScoredTokens`), in chunks of
`chunk_tokens` with a cosine LR over chunks, grad clip, the last chunk untrained, attention masked at
BOS (GLOBAL_TTT_RESPECT_DOC_BOUNDARIES). The remaining documents are then scored with the final base
model. Every document is scored by weights trained only on documents before it in the stream.
Left out from the records: their phases are cut in length-sorted queue order (the first documents
*scored*, longest first), so a document could be scored after SGD on documents that follow it in the
stream — that ordering breaks prefix causality and is not ported. PR #1626 settings: 3 phases over
2,000 documents, lr 0.001, momentum 0.9, 1 epoch, 32,768-token chunks, 32 rows a step, clip 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import ScoreSink, restored_weights
from plugins.lib.settings import LR, PASSES, ROWS, WD, range_errors, seq_bound
from plugins.lib.ttt import DocLoRATTT, LoRATTTSettings, ScoredTokens, cosine_lr, find_documents, sgd_rows


@dataclass
class PhasedTTTConfig(LoRATTTSettings):
    """The per-document LoRA settings (`plugins.lib.ttt.LoRATTTSettings`, PR #1530 defaults), then the phases."""

    prefix_docs: int = field(default=2000, metadata={"help": "stream-order documents covered by the SGD phases"})
    num_phases: int = field(default=3, metadata={"help": "SGD phases over the prefix (PR #1610: 1, #1626: 3)"})
    global_lr: float = field(default=0.001, metadata={"help": "global SGD LR (PR #1610: 0.005, #1626: 0.001)"})
    global_momentum: float = field(default=0.9, metadata={"help": "global SGD momentum"})
    global_epochs: int = field(default=1, metadata={"help": "passes over the scored prefix per phase"})
    global_chunk_tokens: int = field(default=32768, metadata={"help": "tokens per cosine-LR chunk of the global SGD"})
    global_batch_seqs: int = field(default=32, metadata={"help": "rows of eval_seq_len per SGD step"})
    global_grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0 = off)"})
    respect_doc_boundaries: bool = field(default=True, metadata={"help": "mask attention at BOS in the SGD rows"})


class PhasedTTTEvaluator:
    name = "phased_ttt"
    family = "evaluation"
    doc_isolation = False  # documents after a phase are scored by weights trained on earlier documents

    def __init__(self, seq_len: int, cfg: PhasedTTTConfig):
        if cfg.num_phases < 1 or cfg.prefix_docs < 0 or cfg.global_chunk_tokens < seq_len:
            raise ValueError(f"phased_ttt: need num_phases >= 1, prefix_docs >= 0, global_chunk_tokens >= "
                             f"eval_seq_len={seq_len}; got {cfg.num_phases}, {cfg.prefix_docs}, "
                             f"{cfg.global_chunk_tokens}")
        self.seq_len, self.cfg = seq_len, cfg
        self.ttt = DocLoRATTT(cfg, seq_len, section="phased_ttt")

    def phases(self, n_docs: int) -> list[int]:
        """Document-count boundaries of the phases (stream order): prefix_docs·k/num_phases, fixed whatever
        the stream's length (the record caps prefix_docs at the document count, a future quantity); a
        boundary at or past the last document has nothing left to help and is dropped."""
        cfg = self.cfg
        bounds = sorted({cfg.prefix_docs * (k + 1) // cfg.num_phases for k in range(cfg.num_phases)})
        return [b for b in bounds if 0 < b < n_docs]

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        with restored_weights(run.model):
            self._evaluate(run, model, run.model, tokens, sink)

    def _evaluate(self, run, model, base, tokens: Tensor, sink: ScoreSink) -> None:
        cfg = self.cfg
        self.ttt.prepare(run, model)
        docs = find_documents(tokens, self.cfg.bos_id)
        bounds = self.phases(len(docs))
        run.log(f"ttt_phased: total_docs:{len(docs)} prefix_docs:{cfg.prefix_docs} "
                f"num_phases:{len(bounds)} boundaries:{bounds}", console=False)
        scored = ScoredTokens(sink)
        lo = 0
        for k, hi in enumerate([*bounds, len(docs)]):
            self.ttt.score_docs(run, tokens, sink, docs[lo:hi])
            if k < len(bounds) and hi > 0:
                start, length = docs[hi - 1]
                sink.advance_frontier(start + length)
                self._global_sgd(run, base, scored.read(0, start + length))
                self.ttt.sync()
                run.log(f"ttpp: phase:{k + 1}/{len(bounds)} docs:{hi}", console=False)
            lo = hi

    def _global_sgd(self, run, base, prefix: Tensor) -> None:
        """PR #1610 `train_val_ttt_global_sgd_distributed`: SGD over the scored prefix in chunks, last one skipped."""
        cfg = self.cfg
        params = [p for p in base.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=cfg.global_lr, momentum=cfg.global_momentum)
        total = prefix.numel() - 1
        n_chunks = (total + cfg.global_chunk_tokens - 1) // cfg.global_chunk_tokens
        bos = self.cfg.bos_id if cfg.respect_doc_boundaries else None
        for ci in range(n_chunks - 1):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(cfg.global_lr, ci, n_chunks)
            size = cfg.global_chunk_tokens
            chunk = prefix[ci * size : min((ci + 1) * size, total) + 1]
            sgd_rows(run, base, opt, params, chunk, self.seq_len, cfg.global_batch_seqs, cfg.global_epochs,
                     cfg.global_grad_clip, bos)
        base.eval()

    def warmup(self, run, model, n_tokens: int) -> None:
        self.ttt.prepare(run, model)
        self.ttt.warmup(run)


class PhasedTTT(Plugin):
    name = "phased_ttt"
    family = "evaluation"
    summary = "Per-document LoRA TTT with full-model SGD phases on the already-scored stream prefix."
    sources = ("openai/parameter-golf#1610", "openai/parameter-golf#1626", "openai/parameter-golf#1530")
    config = PhasedTTTConfig
    provides = ("evaluator",)
    test_settings = {"phased_ttt": {"rank": 4, "chunk_tokens": 16, "batch_docs": 4, "lr": 0.01, "prefix_docs": 4,
                                    "num_phases": 2, "global_lr": 0.01, "global_chunk_tokens": 256}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, rank=(1, core.model_dim), alpha=(0.0, 100 * cfg.rank),
                            chunk_tokens=(1, core.eval_seq_len or core.train_seq_len), batch_docs=(1, ROWS),
                            lr=(0.0, LR), beta1=(0.0, 0.9999), beta2=(0.0, 0.9999), weight_decay=(0.0, WD),
                            bos_id=(-1, core.vocab_size - 1), prefix_docs=(0, 10**6), num_phases=(1, PASSES),
                            global_lr=(0.0, LR), global_momentum=(0.0, 1.0), global_epochs=(0, PASSES),
                            global_chunk_tokens=(1, seq_bound(core)), global_batch_seqs=(1, ROWS),
                            global_grad_clip=(0.0, None)) + cfg.target_errors(cls.name)  # clip: large = off

    @hookimpl
    def pg_evaluator(self, run):
        return PhasedTTTEvaluator(run.eval_seq_len, self.cfg)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update(phased_ttt_prefix_docs=self.cfg.prefix_docs, phased_ttt_num_phases=self.cfg.num_phases,
                      global_ttt_lr=self.cfg.global_lr)
