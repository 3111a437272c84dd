"""The GPT of the official baseline, with named slots that plugins fill at build time (`core.hookspecs`).

With no plugins this is openai/parameter-golf's baseline `train_gpt.py` (9×512, GQA 8/4, relu² MLP ×2, tied embeddings,
logit softcap, U-Net skips, resid_mix, q-gain, RMSNorm, RoPE): the same parameter names and order of random
initialisation. Every block gets `ctx`, the forward's side inputs (`input_ids`, `attn_mask`, values stored by
value-injection parts). The forward is plain module code for `torch.compile(fullgraph=True)`; mid-run switches are
buffers (`plugins.lib.switch`), never Python attributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTROL_TENSOR_NAME_PATTERNS: tuple[str, ...] = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix",
                                                 "resid_mixes", "q_gain", "skip_weight", "skip_weights")

GROUP_ATTR, BODY_DTYPE_ATTR = "_pg_group", "_pg_body_dtype"  # BODY_DTYPE_ATTR True: bf16 on CUDA even as a control


def join_group(param: nn.Parameter, group: str) -> nn.Parameter:
    """Mark a plugin's parameter for an optimizer group (`default_param_groups` honours it); "scalar"
    parameters stay fp32 on CUDA like the baseline's control tensors."""
    setattr(param, GROUP_ATTR, group)
    return param


@dataclass
class ModelSpec:
    """Static architecture constants (baked into the compiled graph)."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2
    mlp_hidden: int = 0  # explicit MLP width; 0 = int(mlp_mult · model_dim)
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    attention: str = "sdpa"  # "sdpa" or "fa3" (`attend`)
    skip_count: int = 0  # U-Net skips of the installed layer schedule (the core sets it before "skip_merge")
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @classmethod
    def from_core(cls, core) -> ModelSpec:
        """The shape settings of `core.config.CoreConfig` (the backend and skip count are the trainer's)."""
        skip = ("attention", "skip_count", "extra")
        return cls(**{f.name: getattr(core, f.name) for f in dataclasses.fields(cls) if f.name not in skip})


@dataclass(frozen=True)
class Mode:
    """A graph mode (`pg_modes`), on once the training fraction reaches `start_frac` (cumulative with the
    modes before it; 1.0: only for the final evaluation). It changes a Python attribute the forward branches
    on, so each combination is its own graph, compiled in the warm-up."""

    name: str
    start_frac: float


class RMSNorm(nn.Module):
    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),), eps=self.eps)


class CastedLinear(nn.Linear):
    """fp32 master weights, cast to the activation dtype at matmul time."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)


class Rotary(nn.Module):
    """RoPE cos/sin tables (1, T, 1, D/2) for (B, T, H, D) heads, cached per sequence length."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._seq_len_cached, self._cos_cached, self._sin_cached = 0, None, None

    def inv_freq_for(self, seq_len: int, device: torch.device) -> Tensor:
        """The frequencies used at this sequence length (subclasses rescale the base, e.g. NTK)."""
        return self.inv_freq.to(device)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cos_cached is None or self._seq_len_cached != seq_len or self._cos_cached.device != device:
            # Angles in fp32, stored in the buffer's dtype: what the records' compiled graphs compute (an eager
            # bf16 arange would round the positions above 256 to multiples of 2..8).
            inv_freq = self.inv_freq_for(seq_len, device)
            freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq.float())
            self._cos_cached = freqs.cos().to(inv_freq.dtype)[None, :, None, :]
            self._sin_cached = freqs.sin().to(inv_freq.dtype)[None, :, None, :]
            self._seq_len_cached = seq_len
        return self._cos_cached.to(dtype=dtype), self._sin_cached.to(dtype=dtype)


def apply_rotary_emb(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on the first 2·cos.size(-1) dims of x; any remaining dims pass through (partial RoPE)."""
    rd = 2 * cos.size(-1)
    if rd < x.size(-1):
        return torch.cat((apply_rotary_emb(x[..., :rd], cos, sin), x[..., rd:]), dim=-1)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


def attend(name: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, T, H, D) q and (B, T, Hkv, D) k, v -> (B, T, H, D), causal, on attention backend `name` (fa3, or SDPA
    with whatever kernels are enabled; `core.run.pick_attention` chooses and sets them)."""
    if name == "fa3":
        from flash_attn_interface import flash_attn_func  # type: ignore[import-not-found]

        y = flash_attn_func(q, k, v, causal=True)
        return y[0] if isinstance(y, tuple) else y
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1)).transpose(1, 2)


def document_mask(doc_ids: Tensor) -> Tensor:
    """(B, T) document ids -> (B, 1, T, T) boolean mask: causal and block-diagonal (no attention across
    documents, the CPU/SDPA form of PR #1530's varlen attention)."""
    t = doc_ids.size(1)
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


class CausalAttention(nn.Module):
    """The attention core: (B, T, H, D) q and (B, T, Hkv, D) k, v -> (B, T, H, D), causal; with
    `ctx["doc_ids"]` any backend runs SDPA masked by `document_mask` (efficient or math kernel), made once per
    forward and kept in `ctx["attn_mask"]`."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        if "doc_ids" in ctx and "attn_mask" not in ctx:
            ctx["attn_mask"] = document_mask(ctx["doc_ids"])
        attn_mask = ctx.get("attn_mask")
        if attn_mask is not None:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            rep = q.size(1) // k.size(1)
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)
        return attend(self.backend, q, k, v)


class CausalSelfAttention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        dim, kv_dim = spec.model_dim, spec.num_kv_heads * spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((spec.num_heads,), spec.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, base=spec.rope_base)
        self.attention = CausalAttention(spec.attention)
        self.value_parts, self.out_parts = nn.ModuleList(), nn.ModuleList()

    def forward(self, x: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        bsz, seqlen, dim = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim)
        for part in self.value_parts:
            v = part(v, ctx)
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        cos, sin = self.rotary(seqlen, x.device, q.dtype)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q = q * self.q_gain.to(dtype=q.dtype)[None, None, :, None]
        y = self.attention(q, k, v, ctx)
        for part in self.out_parts:
            y = part(y, v, x)
        return self.proj(y.reshape(bsz, seqlen, dim))


class MLP(nn.Module):
    """relu² MLP (modded-nanogpt), hidden = mlp_hidden, or mlp_mult · dim when that is 0."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        hidden = spec.mlp_hidden or int(spec.mlp_mult * spec.model_dim)
        self.fc = CastedLinear(spec.model_dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, spec.model_dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class SequentialResidual(nn.Module):
    """The baseline block body on the resid-mixed stream: x + a·attn(norm(x)), then + m·mlp(norm(x)) on the
    updated stream."""

    def forward(self, block: Block, x: Tensor, x0: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        x = block.mix_x0(x, x0)
        x = x + block.attn_scale.to(dtype=x.dtype)[None, None, :] * block.attn(block.attn_norm(x), ctx)
        return x + block.mlp_scale.to(dtype=x.dtype)[None, None, :] * block.mlp(block.mlp_norm(x))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        dim = spec.model_dim
        self.attn_norm, self.mlp_norm = RMSNorm(), RMSNorm()
        self.attn = CausalSelfAttention(spec)
        self.mlp = MLP(spec)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())
        self.residual = SequentialResidual()

    def mix_x0(self, x: Tensor, x0: Tensor) -> Tensor:
        """resid_mix: the block's learned per-dim blend of its input stream and x0."""
        mix = self.resid_mix.to(dtype=x.dtype)
        return mix[0][None, None, :] * x + mix[1][None, None, :] * x0

    def forward(self, x: Tensor, x0: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        return self.residual(self, x, x0, ctx)


class LayerSchedule(nn.Module):
    """Which blocks run, in which order (the router). The baseline's U-Net: the first half's outputs re-enter,
    last first, before the second half's blocks. A replacement may repeat blocks (depth recurrence) and
    switch layouts by mode; `skip_count` is the most skips any layout uses (the model's skip weights)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers

    def layout(self) -> tuple[list[int], list[int]]:
        """(encoder block indices, decoder block indices) of the current mode; Python lists (static)."""
        half = self.num_layers // 2
        return list(range(half)), list(range(half, self.num_layers))

    def skip_count(self) -> int:
        return min(map(len, self.layout()))


class AddSkip(nn.Module):
    """The baseline's skip re-entry: x + skip_weights[i] · skip (`scaled_skip` already weighted)."""

    def forward(self, x: Tensor, scaled_skip: Tensor, i: int) -> Tensor:
        return x + scaled_skip


class SoftcapCrossEntropy(nn.Module):
    """The baseline head and loss: softcapped logits, mean fp32 cross-entropy (`reduce=False`: per token)."""

    def forward(self, model: GPT, h: Tensor, target_ids: Tensor, reduce: bool) -> Tensor:
        logits = model.logits(h.reshape(-1, h.size(-1)))
        loss = F.cross_entropy(logits.float(), target_ids.reshape(-1), reduction="mean" if reduce else "none")
        return loss if reduce else loss.view_as(target_ids)


class GPT(nn.Module):
    """Baseline GPT. `forward(ids, targets)` -> mean CE; `reduce=False` -> per-token NLL (B, T);
    `targets=None` -> softcapped logits (B, T, V). `doc_ids` (B, T), optional: attention stays inside
    each document (equal ids); `cu_seqlens` (loader-given boundaries in the flat B·T tokens) reaches
    `ctx` for a varlen attention slot; `head_add` parts add to the logits before the softcap (eval-time adapters)."""

    EMBED_SLOTS = ("embed_add", "embed_mix_pre", "embed_mix_post")

    def __init__(self, spec: ModelSpec, embed_parts: Callable[[str], list[nn.Module]] | None = None,
                 model_modules: Callable[[str], list[dict[str, nn.Module] | None]] | None = None):
        """`embed_parts(slot)` makes the embedding-side plugin parts, right after the token embedding (where
        the records build BigramHash and SmearGate: the same random draws, the record's initial weights);
        `model_modules(where)` named plugin modules, "before_blocks" and "after_blocks" (`pg_model_modules`)."""
        super().__init__()
        self.spec = spec
        self.tie_embeddings, self.logit_softcap = spec.tie_embeddings, spec.logit_softcap
        self.tok_emb = nn.Embedding(spec.vocab_size, spec.model_dim)
        for slot in self.EMBED_SLOTS:
            setattr(self, slot, nn.ModuleList(embed_parts(slot) if embed_parts is not None else []))
        self.schedule = LayerSchedule(spec.num_layers)
        self.skip_merge = AddSkip()
        self.loss = SoftcapCrossEntropy()
        self.skip_weights = nn.Parameter(torch.ones(self.schedule.skip_count(), spec.model_dim, dtype=torch.float32))
        self._add_modules(model_modules, "before_blocks")
        self.blocks = nn.ModuleList([Block(spec) for _ in range(spec.num_layers)])
        self._add_modules(model_modules, "after_blocks")
        self.final_norm = RMSNorm()
        self.lm_head = None if spec.tie_embeddings else CastedLinear(spec.model_dim, spec.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self.head_add = nn.ModuleList()
        self._init_weights()

    def _add_modules(self, model_modules: Callable[[str], list] | None, where: str) -> None:
        for name, module in [kv for d in (model_modules(where) if model_modules else []) for kv in (d or {}).items()]:
            if hasattr(self, name):
                raise ValueError(f"pg_model_modules({where!r}): the model has a {name!r} already")
            setattr(self, name, module)

    def _init_weights(self) -> None:
        if self.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.spec.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)

    def set_schedule(self, schedule: LayerSchedule) -> None:
        """Install a layer schedule; the skip weights are re-made (ones, no random draw) for its count."""
        self.schedule, weight = schedule, self.skip_weights
        self.skip_weights = nn.Parameter(weight.new_ones(schedule.skip_count(), weight.size(1)))

    def hidden(self, input_ids: Tensor, doc_ids: Tensor | None = None, cu_seqlens: Tensor | None = None) -> Tensor:
        ctx = {k: v for k, v in (("input_ids", input_ids), ("doc_ids", doc_ids), ("cu_seqlens", cu_seqlens))
               if v is not None}
        x = self.tok_emb(input_ids)
        for part in self.embed_add:
            x = x + part(input_ids).to(x.dtype)
        for part in self.embed_mix_pre:
            x = part(x, input_ids)
        x = F.rms_norm(x, (x.size(-1),))
        for part in self.embed_mix_post:
            x = part(x, input_ids)
        x0 = x
        encoder, decoder = self.schedule.layout()
        skips: list[Tensor] = []
        for i in encoder:
            x = self.blocks[i](x, x0, ctx)
            skips.append(x)
        for j, i in enumerate(decoder):
            if skips and j < self.skip_weights.size(0):
                scaled = self.skip_weights[j].to(dtype=x.dtype)[None, None, :] * skips.pop()
                x = self.skip_merge(x, scaled, j)
            x = self.blocks[i](x, x0, ctx)
        return self.final_norm(x)

    def project(self, h: Tensor) -> Tensor:
        """The logits before the softcap: the head (tied or not) plus the `head_add` parts."""
        proj = F.linear(h, self.tok_emb.weight) if self.lm_head is None else self.lm_head(h)
        for part in self.head_add:
            proj = proj + part(h)
        return proj

    def logits(self, h: Tensor) -> Tensor:
        return self.logit_softcap * torch.tanh(self.project(h) / self.logit_softcap)

    def forward(self, input_ids: Tensor, target_ids: Tensor | None = None, reduce: bool = True,
                doc_ids: Tensor | None = None, cu_seqlens: Tensor | None = None, tail: int = 0) -> Tensor:
        h = self.hidden(input_ids, doc_ids, cu_seqlens)
        if tail > 0:  # the head and loss of the last `tail` positions only (sliding windows score no more)
            h, target_ids = h[:, -tail:], None if target_ids is None else target_ids[:, -tail:]
        return self.logits(h).float() if target_ids is None else self.loss(self, h, target_ids, reduce)


def cast_for_training(model: nn.Module, device: torch.device, bf16: bool | None = None) -> nn.Module:
    """The baseline's dtype policy on CUDA (`bf16`: on/off anywhere): bf16 body, fp32 CastedLinear and controls."""
    model = model.to(device)
    if not (device.type == "cuda" if bf16 is None else bf16):
        return model
    model = model.bfloat16()
    for module in model.modules():
        if isinstance(module, CastedLinear):
            module.float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            control = (param.ndim < 2 or any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS)
                       or getattr(param, GROUP_ATTR, None) == "scalar")
            if control and param.dtype != torch.float32 and not getattr(param, BODY_DTYPE_ATTR, False):
                param.data = param.data.float()
    return model
