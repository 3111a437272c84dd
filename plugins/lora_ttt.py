"""LoRA test-time training, per document (PR #77 → PR #1530 `eval_val_ttt_lora`): document-independent.

The stream is split into documents at BOS (each document predicts up to and including the next BOS).
Documents are sorted by length and scored in batches of `batch_docs` rows, one document per row, so no
attention or token-shift mixing crosses a document. Each document is cut into chunks of `chunk_tokens`
predictions; chunk ci is scored (through the `ScoreSink`) from a window of at most `eval_seq_len`
tokens of its own document, then every document with a later chunk takes one AdamW step on its own
rank-r adapters (q, k, v, attention-output and MLP side adapters, head) on that chunk's loss. Adapters
and optimizer state are reset for every batch. PR #1530 settings: rank 96, chunk 32, 64 documents,
lr 1e-4, betas (0, 0.999), weight decay 0.5, eval_seq_len 2048; PR #1767 adds alpha (scale alpha/rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from core.scoring import ScoreSink
from plugins.lib.settings import LR, ROWS, WD, range_errors
from plugins.lib.ttt import DocLoRATTT, LoRATTTSettings, find_documents


@dataclass
class LoRATTTConfig(LoRATTTSettings):
    """All settings live in `plugins.lib.ttt.LoRATTTSettings` (shared with phased_ttt), with PR #1530's defaults."""


class LoRATTTEvaluator:
    name = "lora_ttt"
    family = "evaluation"
    doc_isolation = True

    def __init__(self, seq_len: int, cfg: LoRATTTSettings):
        self.cfg = cfg
        self.ttt = DocLoRATTT(cfg, seq_len)

    def evaluate(self, run, model, tokens: Tensor, sink: ScoreSink) -> None:
        self.ttt.prepare(run, model)
        docs = find_documents(tokens, self.cfg.bos_id)
        run.log(f"ttt_lora:docs:{len(docs)} rank:{self.cfg.rank} lr:{self.cfg.lr} chunk:{self.cfg.chunk_tokens}",
                console=False)
        self.ttt.score_docs(run, tokens, sink, docs)

    def warmup(self, run, model, n_tokens: int) -> None:
        self.ttt.prepare(run, model)
        self.ttt.warmup(run)


class LoRATTT(Plugin):
    name = "lora_ttt"
    family = "evaluation"
    summary = "Per-document LoRA test-time training: score each chunk, then adapt that document's adapters."
    sources = ("openai/parameter-golf#77", "openai/parameter-golf#1530", "openai/parameter-golf#1767")
    config = LoRATTTConfig
    provides = ("evaluator",)
    test_settings = {"lora_ttt": {"rank": 4, "chunk_tokens": 16, "batch_docs": 4, "lr": 0.01}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        return range_errors(cls.name, cfg, rank=(1, core.model_dim), alpha=(0.0, 100 * cfg.rank),
                            chunk_tokens=(1, core.eval_seq_len or core.train_seq_len),
                            batch_docs=(1, ROWS), lr=(0.0, LR), beta1=(0.0, 0.9999), beta2=(0.0, 0.9999),
                            weight_decay=(0.0, WD), bos_id=(-1, core.vocab_size - 1)) + cfg.target_errors(cls.name)

    @hookimpl
    def pg_evaluator(self, run):
        return LoRATTTEvaluator(run.eval_seq_len, self.cfg)

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields.update(ttt_lora_rank=self.cfg.rank, ttt_lora_lr=self.cfg.lr, ttt_chunk_size=self.cfg.chunk_tokens)
