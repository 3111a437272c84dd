"""Fused LeakyReLU² MLP: up-projection + activation in one Triton GEMM, forward and backward (PR #1530's
`linear_leaky_relu_square_kernel`, from modded-nanogpt / PR #1105).

The function is `leaky_relu2`'s, proj(leaky_relu(fc(x), slope)²). In training mode it runs as one
autograd.Function: a persistent TMA GEMM (128×256×64 tiles, 8 warps) computes `pre = x·W1ᵀ` and its epilogue
also writes `post = leaky(pre)²`; `out = post·W2ᵀ`. The backward reuses the kernel with `pre` as input, the
epilogue forming `dpre = (g·W2) ⊙ (2·pre if pre > 0 else 2·slope²·pre)` (the record hard-codes slope 0.5:
`0.5·pre`); dW2, dW1 and dx are plain matmuls. The kernel (bf16, sm90+) serves bf16 CUDA tensors when triton
imports, as `torch.library.custom_op`s, so torch.compile(fullgraph=True) traces the Function whole; elsewhere
the same Function runs the torch reference of both epilogues (which multiply in fp32 and round once; the
record rounds g·W2 to bf16 first). `backend = "quack"` (opt-in) runs both epilogues on quack's CuTe-DSL GEMM
(`quack-kernels`, Dao-AILab: persistent, warp-specialized, its epilogue stores overlapping the next tile's main
loop). One H200, PR #1493's micro-batch (262,144 × 512 → 2,048; `benchmarks/fused_mlp_tiles.py --quack`, session 23):
forward 0.879 ms a call against the Triton kernel's 1.146 (cuBLAS's plain matmul: 0.817); backward 1.17-1.22 ms with
its tiles pinned (128×128, ping-pong; 128×256 without is as fast) against the Triton kernel's 1.211; the MLP's
forward + backward 5.57 against 5.81 ms; PR #1493's fused set end to end 823.8 against 831.3 ms a step (steps 10-25,
one machine). `auto` stays on the Triton kernel: quack's forward is autotuned per exact input shape (its autotuner
keys on every tensor's shape; 18-34 s on the first call), so test-time training's SGD steps (training mode,
`plugins/lib/ttt.py`'s `sgd_rows`) would tune again inside the timed evaluation at each row count training never
ran (a chunk's last, partial batch).
Training-only, as the record: in eval mode (GPTQ calibration, evaluation) the MLP runs through its `fc`/`proj`
modules, so forward hooks see the hidden activation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from core.hookspecs import hookimpl
from core.registry import Plugin
from plugins.leaky_relu2 import LeakyReLU2MLP

try:  # the CUDA kernel exists only where triton (with host tensor descriptors) does
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
try:  # quack-kernels (CuTe DSL, sm90+): not a dependency; `backend = "quack"` needs it
    import quack.activation as quack_activation
    from quack.epilogue.frontend import gemm_epilogue
    from quack.gemm_config import GemmConfig
except ImportError:
    quack_activation = None

BACKENDS = ("auto", "triton", "quack", "torch")
# a forced kernel backend -> (the package it needs, its module here or None)
KERNEL_PACKAGES = {"triton": ("triton", triton), "quack": ("quack-kernels", quack_activation)}
BLOCK_M, BLOCK_N, BLOCK_K = 128, 256, 64  # the record's tiles


@dataclass
class FusedMLPConfig:
    slope: float = field(default=0.5, metadata={"help": "negative slope before squaring (PR #1530: 0.5)"})
    backend: str = field(default="auto", metadata={
        "help": "auto: the Triton kernel for bf16 CUDA tensors when triton imports, else the torch reference; "
                "triton / quack (quack-kernels' CuTe-DSL GEMM; its forward autotunes per input shape) / torch "
                "force one"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"fused_mlp.slope: expected a slope in [0, 1), got {self.slope}")
        if self.backend not in BACKENDS:
            raise ValueError(f"fused_mlp.backend: expected one of {BACKENDS}, got {self.backend!r}")


# --- the torch reference of the two epilogues ------------------------------------------------------------
def up_reference(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """(pre, post) = (x·W1ᵀ, leaky_relu(pre, slope)²); x (M, K), w1 (N, K)."""
    pre = x @ w1.T
    return pre, F.leaky_relu(pre, negative_slope=slope).square()


def up_backward_reference(g: Tensor, w2: Tensor, pre: Tensor, slope: float) -> Tensor:
    """dpre = (g·W2) ⊙ d leaky(pre)²/d pre, in fp32 and rounded once; g (M, D), w2 (D, N), pre (M, N)."""
    pre32 = pre.float()
    grad = (g @ w2).float() * torch.where(pre32 > 0, 2.0 * pre32, (2.0 * slope * slope) * pre32)
    return grad.to(pre.dtype)


def tma_aligned(a: Tensor, b: Tensor) -> bool:
    """a (M, K) · bᵀ with b (N, K): 16-byte aligned row strides for TMA (bf16: K and N multiples of 8)."""
    return a.shape[1] % 8 == 0 and b.shape[0] % 8 == 0


def up_fake(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """The up op's outputs for tracing (torch.library fake): (pre, post), each (M, N)."""
    shape = (x.shape[0], w1.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


def up_backward_fake(g: Tensor, w2: Tensor, pre: Tensor, slope: float) -> Tensor:
    """The up_backward op's output for tracing: dpre, shaped as pre."""
    return pre.new_empty(pre.shape)


def up_flops(x_shape: tuple[int, ...], w1_shape: tuple[int, ...], *args, **kwargs) -> int:
    """FLOPs of `pgolf_fused_mlp::up` for `torch.utils.flop_counter` (`pgolf bench`'s model FLOPs): the GEMM x·W1ᵀ."""
    return 2 * x_shape[0] * x_shape[1] * w1_shape[0]


def up_backward_flops(g_shape: tuple[int, ...], w2_shape: tuple[int, ...], *args, **kwargs) -> int:
    """FLOPs of `pgolf_fused_mlp::up_backward`: the GEMM g·W2 (the epilogue's elementwise work not counted)."""
    return 2 * g_shape[0] * g_shape[1] * w2_shape[1]


# --- the Triton kernel -------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _linear_leaky_relu2_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K, slope,
                                   BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr,
                                   BLOCK_SIZE_K: tl.constexpr, NUM_PROGRAMS: tl.constexpr, FORWARD: tl.constexpr):
        """C = A·Bᵀ tile by tile (persistent: program p takes tiles p, p + NUM_PROGRAMS, ...). FORWARD: C = pre and
        aux <- leaky(pre)²; else aux holds pre and C = (A·Bᵀ) ⊙ leaky'(pre)·2·leaky(pre)."""
        half: tl.constexpr = BLOCK_SIZE_N // 2
        num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
        num_tiles = tl.cdiv(M, BLOCK_SIZE_M) * num_pid_n
        k_tiles = tl.cdiv(K, BLOCK_SIZE_K)
        for tile in tl.range(tl.program_id(axis=0), num_tiles, NUM_PROGRAMS, flatten=True):
            row = (tile // num_pid_n) * BLOCK_SIZE_M
            col = (tile % num_pid_n) * BLOCK_SIZE_N
            acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
            for ki in range(k_tiles):
                a = a_desc.load([row, ki * BLOCK_SIZE_K])
                b = b_desc.load([col, ki * BLOCK_SIZE_K])
                acc = tl.dot(a, b.T, acc)
            # the two column halves of the tile, stored separately (the record's register/smem saving)
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_SIZE_M, 2, half)), (0, 2, 1)))
            if FORWARD:
                pre_l, pre_r = left.to(tl.bfloat16), right.to(tl.bfloat16)
                c_desc.store([row, col], pre_l)
                c_desc.store([row, col + half], pre_r)
                act_l = tl.where(pre_l > 0, pre_l.to(tl.float32), slope * pre_l.to(tl.float32))
                act_r = tl.where(pre_r > 0, pre_r.to(tl.float32), slope * pre_r.to(tl.float32))
                aux_desc.store([row, col], (act_l * act_l).to(tl.bfloat16))
                aux_desc.store([row, col + half], (act_r * act_r).to(tl.bfloat16))
            else:
                pre_l = aux_desc.load([row, col]).to(tl.float32)
                pre_r = aux_desc.load([row, col + half]).to(tl.float32)
                neg = 2.0 * slope * slope
                c_desc.store([row, col], (left * tl.where(pre_l > 0, 2.0 * pre_l, neg * pre_l)).to(tl.bfloat16))
                c_desc.store([row, col + half],
                             (right * tl.where(pre_r > 0, 2.0 * pre_r, neg * pre_r)).to(tl.bfloat16))

    def _launch(a: Tensor, b: Tensor, aux: Tensor | None, slope: float,
                tiles: tuple[int, int, int, int, int] | None = None, ctas_per_sm: int = 1) -> tuple[Tensor, Tensor]:
        """The kernel on a (M, K) and b (N, K), bf16 and contiguous: (pre, post) when aux is None, else
        (dpre, aux) with aux = pre. `tiles`: (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps), by default the
        record's (4 stages forward, 3 backward); `ctas_per_sm`: persistent programs per SM (2 lets one program's
        epilogue overlap another's main loop where both fit); `benchmarks/fused_mlp_tiles.py` times others."""
        (m, k), n = a.shape, b.shape[0]
        forward = aux is None
        bm, bn, bk, stages, warps = tiles or (BLOCK_M, BLOCK_N, BLOCK_K, 4 if forward else 3, 8)
        c = torch.empty((m, n), device=a.device, dtype=a.dtype)
        if aux is None:
            aux = torch.empty((m, n), device=a.device, dtype=a.dtype)
        programs = ctas_per_sm * torch.cuda.get_device_properties(a.device).multi_processor_count
        grid = (min(programs, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
        _linear_leaky_relu2_kernel[grid](
            TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(b, [bn, bk]),
            TensorDescriptor.from_tensor(c, [bm, bn // 2]), TensorDescriptor.from_tensor(aux, [bm, bn // 2]),
            m, n, k, slope, BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, NUM_PROGRAMS=grid[0], FORWARD=forward,
            num_stages=stages, num_warps=warps)
        return c, aux

    def _kernel_fits(a: Tensor, b: Tensor) -> bool:
        """The Triton kernel's TMA: sm90+ and `tma_aligned`."""
        return torch.cuda.get_device_capability(a.device)[0] >= 9 and tma_aligned(a, b)

    @torch.library.custom_op("pgolf_fused_mlp::up", mutates_args=())
    def _triton_up(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
        x, w1 = x.contiguous(), w1.contiguous()
        if not _kernel_fits(x, w1):
            pre, post = up_reference(x, w1, slope)
            return pre.contiguous(), post.contiguous()
        return _launch(x, w1, None, slope)

    _triton_up.register_fake(up_fake)

    @torch.library.custom_op("pgolf_fused_mlp::up_backward", mutates_args=())
    def _triton_up_backward(g: Tensor, w2: Tensor, pre: Tensor, slope: float) -> Tensor:
        g, w2t = g.contiguous(), w2.T.contiguous()
        if not _kernel_fits(g, w2t):
            return up_backward_reference(g, w2, pre, slope)
        return _launch(g, w2t, pre.contiguous(), slope)[0]

    _triton_up_backward.register_fake(up_backward_fake)

    from torch.utils.flop_counter import register_flop_formula

    register_flop_formula(torch.ops.pgolf_fused_mlp.up)(up_flops)
    register_flop_formula(torch.ops.pgolf_fused_mlp.up_backward)(up_backward_flops)


# --- the quack epilogues ------------------------------------------------------------------------------------
def quack_up_math(acc, slope: float, relu):
    """The quack forward epilogue per element, over any number type with its `relu`: acc = x·W1ᵀ -> (pre,
    leaky(pre)²), leaky(p) = slope·p + relu((1 - slope)·p) (exact at the records' slopes 0 and 0.5)."""
    act = acc * slope + relu(acc * (1.0 - slope))
    return acc, act * act


def quack_up_backward_math(acc, pre, slope: float, drelu):
    """The quack backward epilogue per element: acc = g·W2, pre -> dpre = 2·leaky(p)·(slope·acc + (1 - slope)·acc·
    [p > 0]), `drelu(p, a)` = (a·[p > 0], relu(p)): the Triton epilogue's product, bitwise, at slopes 0 and 0.5."""
    acc_pos, relu_pre = drelu(pre, acc)
    act = pre * slope + relu_pre * (1.0 - slope)
    return 2.0 * act * (acc * slope + acc_pos * (1.0 - slope))


if quack_activation is not None:

    @functools.cache
    def quack_epilogues(slope: float):
        """quack `gemm_epilogue` mods for one slope: up (D = pre, postact = leaky(pre)²) and up_backward (D = dpre;
        c, the GEMM's C operand, is pre)."""

        @gemm_epilogue(outputs=("postact",))
        def leaky_relu2_up(acc):
            pre, post = quack_up_math(acc, slope, quack_activation.relu)
            return {"D": pre, "postact": post}

        @gemm_epilogue()
        def leaky_relu2_up_backward(acc, c):
            return {"D": quack_up_backward_math(acc, c, slope, quack_activation.drelu)}

        return leaky_relu2_up, leaky_relu2_up_backward

    @functools.cache
    def quack_backward_config(device: torch.device) -> dict:
        """Pinned tiles for the backward on sm90 (measured above: quack's own autotuner chose 1.24-1.26 ms); elsewhere
        quack's autotuner."""
        if torch.cuda.get_device_capability(device)[0] != 9:
            return {}
        return {"config": GemmConfig(tile_m=128, tile_n=128, pingpong=True, cluster_m=2), "tuned": False}

    @torch.library.custom_op("pgolf_fused_mlp::quack_up", mutates_args=())
    def _quack_up(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
        if not tma_aligned(x, w1):
            return tuple(t.contiguous() for t in up_reference(x, w1, slope))
        pre, post = (x.new_empty((x.shape[0], w1.shape[0])) for _ in range(2))
        quack_epilogues(slope)[0](x.contiguous(), w1.contiguous().T, out={"D": pre, "postact": post})
        return pre, post

    _quack_up.register_fake(up_fake)

    @torch.library.custom_op("pgolf_fused_mlp::quack_up_backward", mutates_args=())
    def _quack_up_backward(g: Tensor, w2: Tensor, pre: Tensor, slope: float) -> Tensor:
        if not tma_aligned(g, w2.T):
            return up_backward_reference(g, w2, pre, slope)
        dpre = torch.empty_like(pre)
        quack_epilogues(slope)[1](g.contiguous(), w2.contiguous(), pre.contiguous(), out={"D": dpre},
                                  **quack_backward_config(g.device))
        return dpre

    _quack_up_backward.register_fake(up_backward_fake)

    from torch.utils.flop_counter import register_flop_formula

    register_flop_formula(torch.ops.pgolf_fused_mlp.quack_up)(up_flops)
    register_flop_formula(torch.ops.pgolf_fused_mlp.quack_up_backward)(up_backward_flops)


def kernel_for(x: Tensor, backend: str) -> str:
    """The path that serves `x`: "triton", "quack" or "torch" (decided from device and dtype: a constant when
    traced); a forced kernel that cannot serve `x` is an error."""
    fits = x.is_cuda and x.dtype == torch.bfloat16
    if backend in KERNEL_PACKAGES:
        package, module = KERNEL_PACKAGES[backend]
        if module is None:
            raise RuntimeError(f"fused_mlp: backend {backend!r} needs the {package} package")
        if not fits:
            raise RuntimeError(f"fused_mlp: backend {backend!r} needs bf16 CUDA tensors, got {x.dtype} on {x.device}")
        return backend
    return "triton" if backend == "auto" and triton is not None and fits else "torch"


def epilogues(kernel: str) -> tuple[Callable, Callable]:
    """(up, up_backward) of a path `kernel_for` picked."""
    if kernel == "triton":
        return _triton_up, _triton_up_backward
    if kernel == "quack":
        return _quack_up, _quack_up_backward
    return up_reference, up_backward_reference


class FusedLeakyReLU2Function(torch.autograd.Function):
    """proj(leaky(x·W1ᵀ)²) with the hand-written backward above; x (..., K), w1 (N, K), w2 (D, N)."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, w2: Tensor, slope: float, kernel: str) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        pre, post = epilogues(kernel)[0](x2, w1, slope)
        ctx.save_for_backward(x2, w1, w2, pre, post)
        ctx.slope, ctx.kernel = slope, kernel
        return (post @ w2.T).view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x2, w1, w2, pre, post = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        dpre = epilogues(ctx.kernel)[1](g, w2, pre, ctx.slope)
        dx = (dpre @ w1).view(*grad_out.shape[:-1], w1.shape[1])
        return dx, dpre.T @ x2, g.T @ post, None, None


def fused_leaky_relu2_mlp(x: Tensor, w1: Tensor, w2: Tensor, slope: float, backend: str = "auto") -> Tensor:
    """proj(leaky_relu(x·W1ᵀ, slope)²) through the fused Function (on the kernel `kernel_for` picks)."""
    return FusedLeakyReLU2Function.apply(x, w1, w2, slope, kernel_for(x, backend))


def _matmul_dtype(x: Tensor) -> torch.dtype:
    """The dtype F.linear would compute in: the autocast dtype when autocast is on for x's device."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class FusedLeakyReLU2MLP(LeakyReLU2MLP):
    """`leaky_relu2`'s MLP (same parameters, names and init); training mode runs the fused Function."""

    def __init__(self, spec, slope: float, backend: str):
        super().__init__(spec, slope)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:  # eager, through fc/proj: calibration hooks and TTT see the hidden activation
            return super().forward(x)
        dtype = _matmul_dtype(x)
        return fused_leaky_relu2_mlp(x.to(dtype), self.fc.weight.to(dtype), self.proj.weight.to(dtype), self.slope,
                                     self.backend)

    def extra_repr(self) -> str:
        return f"slope={self.slope}, backend={self.backend}"


class FusedMLP(Plugin):
    name = "fused_mlp"
    family = "model"
    summary = "LeakyReLU² MLP whose up-projection + activation (and backward) is one GEMM (Triton/quack) in training."
    sources = ("openai/parameter-golf#1530", "openai/parameter-golf#1105")
    config = FusedMLPConfig
    provides = ("mlp",)  # the per-layer mlp slot has one provider (leaky_relu2's function, fused)
    # the fused path reads fc/proj weights directly: a QAT class swap of those linears would be skipped
    conflicts = ("late_qat", "soft_round_qat")
    test_settings = {"fused_mlp": {"slope": 0.5}}

    @classmethod
    def check_config(cls, cfg: FusedMLPConfig, core) -> list[str]:
        package, module = KERNEL_PACKAGES.get(cfg.backend, (None, True))
        if module is None:
            return [f"fused_mlp.backend: {cfg.backend!r} needs the {package} package (not importable here); "
                    "use auto or torch"]
        return []

    @hookimpl
    def pg_build_slot(self, slot: str, spec, layer: int | None):
        if slot != "mlp" or layer is None:
            return None
        return FusedLeakyReLU2MLP(spec, self.cfg.slope, self.cfg.backend)
