"""Value embeddings, VE128 (PR #374; carried by PR #414 -> record 2026-03-22_11L_EMA_GPTQ-lite_…_1.1233 and
PR #534): one shared table `vocab × dim` (N(0, 0.01)), projected to the KV width and scaled by a learned
scalar (init 0.1), is added to the attention values of the chosen layers, each times its own learned scale
(init 1). The record adds it to `c_v(x)` before the head split; the lookup is computed once per forward.

The shared module is the model's `ve_shared` (registered in `pg_edit_model`, after the blocks, where the
record has it, so `orthoinit` re-draws `ve_shared.proj` with ×1/sqrt(2L) in the record's module order);
each chosen layer gets a value part holding its `ve_layer_scale`. Optimizer groups as the record's: table
with the token-embedding Adam, projection with Muon, both scales with the scalars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CastedLinear, join_group
from core.registry import Plugin


@dataclass
class ValueEmbeddingsConfig:
    dim: int = field(default=128, metadata={"help": "shared table width (VE_DIM; PR #374: 128)"})
    layers: str = field(default="9,10", metadata={"help": "comma-separated block indices (VE_LAYERS; 9,10 of 11)"})
    scale_init: float = field(default=0.1, metadata={"help": "initial shared output scale (record: 0.1)"})
    init_std: float = field(default=0.01, metadata={"help": "std of the table's normal init (record: 0.01)"})

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"value_embeddings.dim: expected a positive width, got {self.dim}")
        self.layer_list()

    def layer_list(self) -> list[int]:
        try:
            out = [int(s) for s in str(self.layers).split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"value_embeddings.layers: expected comma-separated block indices, got "
                             f"{self.layers!r}") from None
        if not out or len(set(out)) != len(out) or min(out) < 0:
            raise ValueError(f"value_embeddings.layers: expected distinct block indices >= 0, got {self.layers!r}")
        return out


class ValueEmbedding(nn.Module):
    """proj(embed(ids)) · scale, (B, T) -> (B, T, kv_dim); no projection when dim == kv_dim (the record's)."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, scale_init: float):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # drawn in pg_init_weights, not while the model is edited
            self.embed = nn.Embedding(vocab_size, dim)
            self.proj = CastedLinear(dim, kv_dim, bias=False) if dim != kv_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
            join_group(self.proj.weight, "matrix")
        join_group(self.embed.weight, "token")
        self.scale = join_group(nn.Parameter(torch.tensor(scale_init, dtype=torch.float32)), "scalar")

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embed(input_ids)
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(dtype=h.dtype)


class AddValueEmbedding(nn.Module):
    """v (B, T, Hkv, D) + ve_layer_scale · VE(input_ids), the shared lookup cached in `ctx["ve"]`."""

    def __init__(self, shared: ValueEmbedding):
        super().__init__()
        self._shared = (shared,)  # a tuple: the model owns the module (`ve_shared`), this part only reads it
        self.ve_layer_scale = join_group(nn.Parameter(torch.ones(1, dtype=torch.float32)), "scalar")

    def forward(self, v: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        if "ve" not in ctx:
            ctx["ve"] = self._shared[0](ctx["input_ids"])
        ve = ctx["ve"] * self.ve_layer_scale.to(dtype=ctx["ve"].dtype)
        return v + ve.view_as(v).to(dtype=v.dtype)


class ValueEmbeddings(Plugin):
    name = "value_embeddings"
    family = "model"
    summary = "VE128: a shared token table (projected, scaled) added to the attention values of chosen layers."
    sources = ("openai/parameter-golf#374", "openai/parameter-golf#414", "openai/parameter-golf#534")
    config = ValueEmbeddingsConfig
    before = ("orthoinit",)  # the table's normal draw precedes the orthogonal draws, as in the record
    test_settings = {"value_embeddings": {"dim": 16, "layers": "0,1"}}

    @classmethod
    def check_config(cls, cfg: ValueEmbeddingsConfig, core) -> list[str]:
        bad = [i for i in cfg.layer_list() if i >= core.num_layers]
        if bad:
            return [f"value_embeddings.layers={cfg.layers} names blocks {bad}: must be < core.num_layers="
                    f"{core.num_layers}"]
        return []

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        kv_dim = spec.num_kv_heads * spec.head_dim
        model.ve_shared = ValueEmbedding(spec.vocab_size, self.cfg.dim, kv_dim, self.cfg.scale_init)
        for i in self.cfg.layer_list():
            model.blocks[i].attn.value_parts.append(AddValueEmbedding(model.ve_shared))

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        ve = model.ve_shared
        with torch.no_grad():
            nn.init.normal_(ve.embed.weight, std=self.cfg.init_std)
            if ve.proj is not None and "orthoinit" not in config.plugins:
                # the record's GPT init (what `orthoinit` does): orthogonal × 1/sqrt(2L) on a `.proj`
                nn.init.orthogonal_(ve.proj.weight, gain=1.0)
                ve.proj.weight.mul_(1.0 / math.sqrt(2 * len(model.blocks)))
