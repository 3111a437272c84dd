"""Parallel residuals, GPT-J single lane (PR #1493; from PR #1412): from block `start` on, attention and MLP
both read the block's input and add to it, `x + a·attn(norm(x)) + m·mlp(norm(x))`. No new parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.lib.settings import range_errors


@dataclass
class ParallelResidualsConfig:
    start: int = field(default=7, metadata={"help": "first parallel block (PR #1493: 7 of 11)"})

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError(f"parallel_residuals.start must be >= 0, got {self.start}")


class ParallelResidual(nn.Module):
    """x + a·attn(attn_norm(x)) + m·mlp(mlp_norm(x)): both branches read the same x."""

    def forward(self, block: nn.Module, x: Tensor, x0: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        x = block.mix_x0(x, x0)
        attn = block.attn(block.attn_norm(x), ctx)
        mlp = block.mlp(block.mlp_norm(x))
        return (x + block.attn_scale.to(dtype=x.dtype)[None, None, :] * attn
                + block.mlp_scale.to(dtype=x.dtype)[None, None, :] * mlp)


class ParallelResiduals(Plugin):
    name = "parallel_residuals"
    family = "routing"
    summary = "GPT-J parallel attention+MLP from block 7 on (both read the block input)."
    sources = ("openai/parameter-golf#1493", "openai/parameter-golf#1412")
    config = ParallelResidualsConfig
    provides = ("block_residual",)
    test_settings = {"parallel_residuals": {"start": 0}}

    @classmethod
    def check_config(cls, cfg: ParallelResidualsConfig, core) -> list[str]:
        return range_errors(cls.name, cfg, start=(0, 1024))  # past the model: none (a recipe cut short)

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot == "residual" and layer is not None and layer >= self.cfg.start:
            return ParallelResidual()
        return None
