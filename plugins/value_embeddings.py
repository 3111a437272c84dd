"""Value embeddings, VE128 (PR #374; carried by PR #414 -> record 2026-03-22_11L_EMA_GPTQ-lite_…_1.1233,
PR #534 and PR #609): one shared table `vocab × dim` (N(0, 0.01)), projected to the KV width and scaled by a
learned scalar (init 0.1), is added to the attention values of the chosen layers, each times its own learned
scale (init 1). The record adds it to `c_v(x)` before the head split; the lookup is computed once per forward.

The shared module is the model's `ve_shared`, made while the model is built (`pg_model_modules`) where the
record makes it (`build_at`: after the blocks in PR #374/#609, before them in PR #534), with the record's
draws: nn.Embedding's N(0, 1), re-drawn at `init_std` unless that is 1, then nn.Linear's default projection,
zeroed for `proj_init = "orthogonal"` (re-drawn orthogonal × 1/sqrt(2L) by `orthoinit` in module order, or
here when it is absent) or kept for "linear" (PR #534). Optimizer groups as the record's: table with the
token-embedding Adam, projection with Muon (`proj_group = "scalar"`: the scalar Adam, as the bank records
#549/#609), both scales with the scalars. `frozen = true` is PR #534's
actual training: table and projection join no optimizer group (fixed at init) and there is no shared scale,
only the per-layer scales (init `scale_init`). The record leaves them `requires_grad`, so (`frozen_grads =
"accumulate"`) their gradients are still computed, never zeroed (its zero_grad_all zeroes the optimizers'
parameters only) from the compile warm-up on, and counted — and scaled — by clip_grad_norm_ over all
parameters: a growing norm that clips every real gradient harder. "none" (the default) computes no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import CastedLinear, join_group
from core.registry import Plugin
from plugins.lib.settings import ARTIFACT_BITS, INIT, range_errors


@dataclass
class ValueEmbeddingsConfig:
    dim: int = field(default=128, metadata={"help": "shared table width (VE_DIM; PR #374: 128)"})
    layers: str = field(default="9,10", metadata={"help": "comma-separated block indices (VE_LAYERS; 9,10 of 11)"})
    scale_init: float = field(default=0.1, metadata={"help": "initial shared output scale (record: 0.1)"})
    init_std: float = field(default=0.01, metadata={"help": "std of the table's normal init (record: 0.01; 1 = "
                                                            "nn.Embedding's own draw)"})
    build_at: str = field(default="after_blocks", metadata={
        "help": "where the model makes ve_shared (the record's draw order): after_blocks (#374/#609) | before_blocks "
                "(#534)"})
    proj_init: str = field(default="orthogonal", metadata={
        "help": "projection init: orthogonal × 1/sqrt(2L) (#374's GPT init) | linear (nn.Linear default, #534)"})
    proj_group: str = field(default="matrix", metadata={
        "help": "optimizer group of the projection: matrix (Muon, #374) | scalar (Adam, the bank records #549/#609)"})
    frozen: bool = field(default=False, metadata={
        "help": "PR #534's training: table and projection in no optimizer group, per-layer scales only"})
    frozen_grads: str = field(default="none", metadata={
        "help": "with frozen: none (no gradients) | accumulate (PR #534: gradients computed, never zeroed or "
                "applied, counted by grad clipping)"})

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"value_embeddings.dim: expected a positive width, got {self.dim}")
        if self.build_at not in BUILD_AT:
            raise ValueError(f"value_embeddings.build_at: expected one of {', '.join(BUILD_AT)}, got {self.build_at!r}")
        if self.proj_init not in PROJ_INIT:
            raise ValueError(f"value_embeddings.proj_init: expected one of {', '.join(PROJ_INIT)}, got "
                             f"{self.proj_init!r}")
        if self.proj_group not in ("matrix", "scalar"):
            raise ValueError(f"value_embeddings.proj_group: expected matrix or scalar, got {self.proj_group!r}")
        if self.frozen_grads not in FROZEN_GRADS:
            raise ValueError(f"value_embeddings.frozen_grads: expected one of {', '.join(FROZEN_GRADS)}, got "
                             f"{self.frozen_grads!r}")
        if self.frozen_grads != "none" and not self.frozen:
            raise ValueError("value_embeddings.frozen_grads: applies to frozen = true only (set frozen = true or "
                             "frozen_grads = \"none\")")
        if not self.init_std > 0:
            raise ValueError(f"value_embeddings.init_std: expected a positive std, got {self.init_std}")
        self.layer_list()

    def layer_list(self) -> list[int]:
        try:
            if not str(self.layers).isascii():  # ASCII digits only: int() also reads '٣' as 3
                raise ValueError(self.layers)
            out = [int(s) for s in str(self.layers).split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"value_embeddings.layers: expected comma-separated block indices, got "
                             f"{self.layers!r}") from None
        if not out or len(set(out)) != len(out) or min(out) < 0:
            raise ValueError(f"value_embeddings.layers: expected distinct block indices >= 0, got {self.layers!r}")
        return out


BUILD_AT = ("after_blocks", "before_blocks")
PROJ_INIT = ("orthogonal", "linear")
FROZEN_GRADS = ("none", "accumulate")
NO_OPTIMIZER = "value_embeddings.frozen"  # gradients no optimizer applies (dropped in pg_param_groups)


class ValueEmbedding(nn.Module):
    """proj(embed(ids)) · scale, (B, T) -> (B, T, kv_dim); no projection when dim == kv_dim (the record's), no
    scale when `frozen` (PR #534: table and projection fixed, only the per-layer scales train)."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, scale_init: float, init_std: float = 0.01,
                 proj_init: str = "orthogonal", frozen: bool = False, proj_group: str = "matrix",
                 frozen_grads: str = "none"):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)  # N(0, 1): the record's draw
        if init_std != 1.0:
            nn.init.normal_(self.embed.weight, std=init_std)
        self.proj = CastedLinear(dim, kv_dim, bias=False) if dim != kv_dim else None  # nn.Linear's draw
        if self.proj is not None and proj_init == "orthogonal":
            nn.init.zeros_(self.proj.weight)  # re-drawn by orthoinit / pg_init_weights
        self.scale = None
        if frozen:
            for p in self.parameters():  # no optimizer: fixed at init, still exported
                if frozen_grads == "accumulate":
                    join_group(p, NO_OPTIMIZER)
                else:
                    p.requires_grad_(False)
            return
        if self.proj is not None:
            join_group(self.proj.weight, proj_group)
        join_group(self.embed.weight, "token")
        self.scale = join_group(nn.Parameter(torch.tensor(scale_init, dtype=torch.float32)), "scalar")

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embed(input_ids)
        if self.proj is not None:
            h = self.proj(h)
        return h if self.scale is None else h * self.scale.to(dtype=h.dtype)


class AddValueEmbedding(nn.Module):
    """v (B, T, Hkv, D) + ve_layer_scale · VE(input_ids), the shared lookup cached in `ctx["ve"]`."""

    def __init__(self, shared: ValueEmbedding, scale_init: float = 1.0):
        super().__init__()
        self._shared = (shared,)  # a tuple: the model owns the module (`ve_shared`), this part only reads it
        self.ve_layer_scale = join_group(nn.Parameter(torch.full((1,), scale_init, dtype=torch.float32)), "scalar")

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
    before = ("orthoinit",)  # (draws at build time; kept so a plugin order stays the record's)
    test_settings = {"value_embeddings": {"dim": 16, "layers": "0,1"}}

    @classmethod
    def check_config(cls, cfg: ValueEmbeddingsConfig, core) -> list[str]:
        errors = range_errors(cls.name, cfg, dim=(1, min(4 * core.model_dim, ARTIFACT_BITS // core.vocab_size)),
                              scale_init=(-INIT, INIT), init_std=(0.0, INIT))  # a vocab x dim table
        if bad := [i for i in cfg.layer_list() if i >= core.num_layers]:
            errors.append(f"value_embeddings.layers={cfg.layers} names blocks {bad}: must be < core.num_layers="
                          f"{core.num_layers}")
        return errors

    @hookimpl
    def pg_model_modules(self, where, spec) -> dict[str, nn.Module] | None:
        if where != self.cfg.build_at:
            return None
        kv_dim = spec.num_kv_heads * spec.head_dim
        c = self.cfg
        return {"ve_shared": ValueEmbedding(spec.vocab_size, c.dim, kv_dim, c.scale_init, c.init_std, c.proj_init,
                                            c.frozen, c.proj_group, c.frozen_grads)}

    @hookimpl
    def pg_param_groups(self, model, groups, config) -> None:
        groups.pop(NO_OPTIMIZER, None)  # frozen_grads = accumulate: gradients that no optimizer applies or zeroes

    @hookimpl
    def pg_edit_model(self, model, spec, config) -> None:
        layer_scale = self.cfg.scale_init if self.cfg.frozen else 1.0
        for i in self.cfg.layer_list():
            model.blocks[i].attn.value_parts.append(AddValueEmbedding(model.ve_shared, layer_scale))

    @hookimpl
    def pg_init_weights(self, model, config) -> None:
        ve = model.ve_shared
        if ve.proj is not None and self.cfg.proj_init == "orthogonal" and "orthoinit" not in config.plugins:
            with torch.no_grad():  # the record's GPT init (what `orthoinit` does): orthogonal × 1/sqrt(2L) on a .proj
                nn.init.orthogonal_(ve.proj.weight, gain=1.0)
                ve.proj.weight.mul_(1.0 / math.sqrt(2 * len(model.blocks)))
