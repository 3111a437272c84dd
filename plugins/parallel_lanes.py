"""Two-lane parallel residuals (PR #1529 -> #1530 and every later stack to PR #1855, record
2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611, `_parallel_block`; from modded-nanogpt #230
via PR #1204). From block `start` on the stream splits in two lanes, both the stream entering block `start`
(before its U-Net skip, which lane 0 alone then receives). Attention reads lane 0 mixed with x0
(resid_mix), the MLP reads lane 1 as it is; each output is written into both lanes:
  lane0 <- r0·lane0 + p[0,0]·a + p[1,0]·m,  lane1 <- r1·lane1 + p[0,1]·a + p[1,1]·m
(a = attn_scale·attn, m = mlp_scale·mlp), with per-layer `parallel_post_lambdas` p (2×2, init 1) and
`parallel_resid_lambdas` r (2, init 1.1), scalar group. After the last block the lanes merge
(PARALLEL_FINAL_LANE: mean, or the attn/mlp lane) before the final norm.

As a `residual` slot: the block before `start` keeps its body and also keeps its output as lane 1
(`ctx["lane1"]`), the stream is lane 0, and the last block returns the merged lanes. The record makes the
lambdas for every layer (66 scalars at 11 layers); only those of parallel blocks, which alone train, are
made here. PR #1204's variant (a) (MLP reads lane 1 mixed with x0, sequential lane updates, skips into
both lanes) is a different routing and not ported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from core.hookspecs import hookimpl
from core.model import SequentialResidual, join_group
from core.registry import Plugin
from plugins.lib.settings import INIT, range_errors

FINAL_LANES = ("mean", "attn", "mlp")


@dataclass
class ParallelLanesConfig:
    start: int = field(default=8, metadata={"help": "first two-lane block (PARALLEL_START_LAYER; PR #1855: 8 of 11)"})
    resid_init: float = field(default=1.1, metadata={"help": "initial lane residual lambdas (record: 1.1)"})
    final_lane: str = field(default="mean", metadata={"help": "lane merge after the last block: mean, attn or mlp"})

    def __post_init__(self) -> None:
        if self.final_lane not in FINAL_LANES:
            raise ValueError(f"parallel_lanes.final_lane: expected one of {', '.join(FINAL_LANES)}, "
                             f"got {self.final_lane!r}")


class KeepLane(SequentialResidual):
    """The block before `start`: the core's body, its output also kept as lane 1."""

    def forward(self, block, x: Tensor, x0: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        out = super().forward(block, x, x0, ctx)
        ctx["lane1"] = out
        return out


class TwoLaneResidual(nn.Module):
    """One two-lane block: the stream x is lane 0, `ctx["lane1"]` lane 1; the last block merges them."""

    def __init__(self, resid_init: float, final_lane: str | None):
        super().__init__()
        self.parallel_post_lambdas = join_group(nn.Parameter(torch.ones(2, 2, dtype=torch.float32)), "scalar")
        self.parallel_resid_lambdas = join_group(nn.Parameter(torch.full((2,), resid_init, dtype=torch.float32)),
                                                 "scalar")
        self.final_lane = final_lane  # None except on the last block

    def forward(self, block, x: Tensor, x0: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        lane0, lane1 = x, ctx["lane1"]
        attn = block.attn_scale.to(dtype=x.dtype)[None, None, :] * block.attn(block.attn_norm(block.mix_x0(lane0, x0)),
                                                                             ctx)
        mlp = block.mlp_scale.to(dtype=x.dtype)[None, None, :] * block.mlp(block.mlp_norm(lane1))
        r = self.parallel_resid_lambdas.to(dtype=x.dtype)
        p = self.parallel_post_lambdas.to(dtype=x.dtype)
        lane0 = r[0] * lane0 + p[0, 0] * attn + p[1, 0] * mlp
        lane1 = r[1] * lane1 + p[0, 1] * attn + p[1, 1] * mlp
        ctx["lane1"] = lane1
        if self.final_lane == "mean":
            return 0.5 * (lane0 + lane1)
        if self.final_lane == "mlp":
            return lane1
        return lane0

    def extra_repr(self) -> str:
        return f"final_lane={self.final_lane}"


class ParallelLanes(Plugin):
    name = "parallel_lanes"
    family = "routing"
    summary = "Two-lane parallel residuals from block 8: attention and MLP lanes with learned cross-writes."
    sources = ("openai/parameter-golf#1529", "openai/parameter-golf#1530", "openai/parameter-golf#1855",
               "openai/parameter-golf#1204")
    config = ParallelLanesConfig
    provides = ("block_residual",)
    test_settings = {"parallel_lanes": {"start": 1, "resid_init": 0.9}}

    @classmethod
    def check_config(cls, cfg: ParallelLanesConfig, core) -> list[str]:
        lo = max(1, core.num_layers // 2)  # the record's lanes start in the decoder (after block 0)
        if not lo <= cfg.start < core.num_layers:
            return [f"parallel_lanes.start={cfg.start} must be in [{lo}, core.num_layers={core.num_layers}): "
                    f"a decoder block after the first"]
        return range_errors(cls.name, cfg, resid_init=(-INIT, INIT))

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot != "residual" or layer is None or layer < self.cfg.start - 1:
            return None
        if layer == self.cfg.start - 1:
            return KeepLane()
        return TwoLaneResidual(self.cfg.resid_init, self.cfg.final_lane if layer == spec.num_layers - 1 else None)
