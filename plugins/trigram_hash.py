"""TrigramHash (PR #1019, record 2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072, flag TRIGRAM=1, off there:
"risky"): the (t-2, t-1, t) triple hashed as (36313·t_i XOR 27191·t_{i-1} XOR 51497·t_{i-2}) mod
(buckets - 1), the first two positions of each row in the reserved bucket `buckets - 1`, looked up in the
*same* table as `bigram_hash` and added before its projection. Zero extra parameters; needs `bigram_hash`.
No merged record enabled it. Like the record it ignores `bigram_hash.bos_id`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.bigram_hash import HASH_CUR, HASH_PREV, BigramHashEmbedding

HASH_PREV2 = 51497


def trigram_buckets(ids: Tensor, buckets: int) -> Tensor:
    """(36313·t_i XOR 27191·t_{i-1} XOR 51497·t_{i-2}) mod (buckets-1); buckets-1 at positions 0 and 1.

    int64 arithmetic: equal to the record's int32 version while 51497·(vocab-1) < 2**31 (vocab ≤ 41,701).
    """
    t = ids.long()
    mod = buckets - 1
    tri = torch.bitwise_xor(torch.bitwise_xor(HASH_CUR * t[..., 2:], HASH_PREV * t[..., 1:-1]),
                            HASH_PREV2 * t[..., :-2]) % mod
    return torch.cat((torch.full_like(t[..., :2], mod), tri), dim=-1)[..., : t.size(-1)]


class TrigramHash(Plugin):
    name = "trigram_hash"
    family = "model"
    summary = "Hashed (t-2, t-1, t) lookups in the BigramHash table, summed before its projection."
    sources = ("openai/parameter-golf#1019",)
    requires = ("bigram_hash",)
    test_settings = {"trigram_hash": {}}
    test_with = ("bigram_hash",)

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        for part in model.embed_add:
            if isinstance(part, BigramHashEmbedding):
                part.extra_hashes = (*part.extra_hashes, trigram_buckets)
