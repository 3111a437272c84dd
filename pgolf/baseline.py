"""The unigram baseline of a data set: the bits per byte of predicting every validation token from the
training split's token frequencies (add-one smoothed), with the core's byte accounting. A model that has
learned anything beats it; the demo prints it next to its val_bpb."""

from __future__ import annotations

import math

from core.config import Config


def unigram_bpb(cfg: Config) -> float:
    import numpy as np
    import torch

    from core.data import load_validation_tokens, read_shard, shard_files
    from core.tokenizer import build_byte_tables, load_tokenizer, token_bytes
    from core.train import resolve_data

    class _Run:  # what resolve_data reads
        core = cfg.core

    data_dir, tok_path = resolve_data(_Run())
    vocab = cfg.core.vocab_size
    counts = np.ones(vocab, dtype=np.float64)
    for path in shard_files(data_dir, "train"):
        counts += np.bincount(read_shard(path, vocab).numpy(), minlength=vocab)[:vocab]
    seq = cfg.core.eval_seq_len or cfg.core.train_seq_len
    val = load_validation_tokens(shard_files(data_dir, "val"), seq, vocab)
    if cfg.core.val_max_tokens > 0:
        val = val[: (cfg.core.val_max_tokens // seq) * seq + 1]
    val = val.to(torch.int64)
    logp = torch.from_numpy(np.log(counts / counts.sum()))
    nll = -logp[val[1:]].sum().item()
    tables = build_byte_tables(load_tokenizer(tok_path, vocab), vocab)
    n_bytes = token_bytes(val[:-1], val[1:], tables).sum().item()
    return nll / math.log(2) / max(n_bytes, 1)
