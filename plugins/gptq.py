"""Full-Hessian GPTQ export (PR #1060 train-data calibration; PR #1019 AR self-generated calibration;
PR #1394 SDClip scales), with the calibration inside the training budget (rulebook TIME.TRAIN_POSTLOOP).

After the loop (EMA applied) `pg_calibrate` collects H = XᵀX for every linear whose weight gets int-k codes,
with forward hooks on the uncompiled model, from training batches (`calibration = "train"`: a fresh training
loader), from shuffled 2,048-token rows whatever the training loader (`"shuffled"`: `shuffled_loader`'s rows,
generator seeded with the rank, as PR #1855 calibrates while it trains on packed documents), or from
sequences the model samples itself (`"ar"`: temperature 0.8, seeded, no data read); Hessians are summed
over ranks. The core reserves `reserve_seconds` of the wall clock for it and counts its time as training.
At export each such matrix is quantized column by column in act order with Cholesky error compensation
(`plugins.lib.quant.gptq_quantize`), its per-row scales chosen by the records' clip search (`clip = "search"`:
row-clip quantiles, scale floored at 1/qmax, lowest weight MSE, PR #1060) or by k·std(row) (`"sdclip"`), k per
family (embed, mlp, attn, else matrix: PR #1586/#1626/#1855's `*_CLIP_SIGMAS`), optionally modulated per row by
the Hessian (PR #1412's Hessian-aware SDClip: k·std_i·[1 + λ(r_i − 1)], `hessian_clip_lambda`).
Tensors without a Hessian follow the mixed policy of `quant_mixed` with the same clip rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.export import QTensor
from core.hookspecs import hookimpl
from core.model import CONTROL_TENSOR_NAME_PATTERNS
from core.registry import Plugin
from plugins.gptq_lite import parse_percentiles, row_clips, search_clip
from plugins.lib.quant import (
    MixedBitsConfig,
    bits_for,
    gptq_quantize,
    policy_quantize,
    prepare_hessian,
    qmax_of,
)
from plugins.lib.settings import MAX_NUMEL, SIGMAS, STEPS, range_errors
from plugins.quant_int8 import dtype_name
from plugins.sdclip import MIN_SCALE, sigmas_for

CALIBRATIONS = ("train", "shuffled", "ar")
CLIPS = ("search", "sdclip")
HESSIAN_RANKS = ("all", "rank0")
EMBED = "tok_emb.weight"


@dataclass
class GPTQConfig(MixedBitsConfig):
    calibration: str = field(default="train", metadata={
        "help": "train: training batches (PR #1060); shuffled: shuffled_loader rows, rank-seeded, whatever the "
                "training loader (PR #1855); ar: sequences sampled from the model (PR #1019)"})
    calib_batches: int = field(default=64, metadata={
        "help": "train/shuffled calibration: loader batches per rank (PR #1060: 64)"})
    ar_seqs: int = field(default=64, metadata={"help": "ar calibration: sequences sampled (PR #1019: 64)"})
    ar_seq_len: int = field(default=0, metadata={"help": "ar calibration: tokens per sequence (0 = train_seq_len)"})
    ar_batch: int = field(default=8, metadata={"help": "ar calibration: sequences sampled together"})
    ar_temperature: float = field(default=0.8, metadata={"help": "ar calibration: sampling temperature"})
    reserve_seconds: float = field(default=14.0, metadata={
        "help": "wall-clock seconds taken from the training loop for calibration (PR #1060: 14)"})
    clip: str = field(default="search", metadata={
        "help": "search: row-clip quantile search per matrix (PR #1060); sdclip: k·std(row) (PR #1394)"})
    percentiles: str = field(default="0.999,0.9995,0.9999,0.99999,1.0", metadata={
        "help": "clip search: row-clip quantiles of |w| to try (1.0 = row max)"})
    matrix_clip_sigmas: float = field(default=12.85, metadata={"help": "sdclip: k for matrices"})
    embed_clip_sigmas: float = field(default=20.0, metadata={"help": "sdclip: k for the embedding"})
    mlp_clip_sigmas: float = field(default=0.0, metadata={
        "help": "sdclip: k for MLP matrices (0 = matrix_clip_sigmas; PR #1626: 12, #1855: 11.5)"})
    attn_clip_sigmas: float = field(default=0.0, metadata={
        "help": "sdclip: k for attention matrices (0 = matrix_clip_sigmas; PR #1626/#1855: 13)"})
    hessian_clip_lambda: float = field(default=0.0, metadata={
        "help": "sdclip: Hessian-aware row modulation k·std·[1 + λ(r_i - 1)] (PR #1412: 0.175; 0 = off)"})
    gptq_embed: bool = field(default=False, metadata={
        "help": "also GPTQ the tied embedding with the final-norm output Hessian (PR #1394)"})
    hessian_ranks: str = field(default="all", metadata={
        "help": "all: Hessians summed over every rank's calibration batches; rank0: rank 0's batches only, "
                "as PR #1394/#1493 (each rank collects its own and the artifact is rank 0's)"})
    block_size: int = field(default=128, metadata={"help": "columns per error-propagation block"})
    damp: float = field(default=0.01, metadata={"help": "damping, as a fraction of mean(diag H)"})


def check_config(cfg: GPTQConfig) -> None:
    errors = []
    if cfg.calibration not in CALIBRATIONS:
        errors.append(f"gptq.calibration must be one of {', '.join(CALIBRATIONS)}, got {cfg.calibration!r}")
    if cfg.hessian_ranks not in HESSIAN_RANKS:
        errors.append(f"gptq.hessian_ranks must be one of {', '.join(HESSIAN_RANKS)}, got {cfg.hessian_ranks!r}")
    if cfg.clip not in CLIPS:
        errors.append(f"gptq.clip must be one of {', '.join(CLIPS)}, got {cfg.clip!r}")
    for key in ("calib_batches", "ar_seqs", "ar_batch", "block_size"):
        if getattr(cfg, key) < 1:
            errors.append(f"gptq.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.ar_seq_len < 0 or cfg.reserve_seconds < 0 or not cfg.ar_temperature > 0 or cfg.damp < 0:
        errors.append("gptq: ar_seq_len and reserve_seconds must be >= 0, ar_temperature > 0, damp >= 0")
    if cfg.mlp_clip_sigmas < 0 or cfg.attn_clip_sigmas < 0 or cfg.hessian_clip_lambda < 0:
        errors.append("gptq: mlp_clip_sigmas, attn_clip_sigmas and hessian_clip_lambda must be >= 0")
    if cfg.hessian_clip_lambda > 0 and cfg.clip != "sdclip":
        errors.append("gptq.hessian_clip_lambda modulates the SDClip scale: it needs gptq.clip = \"sdclip\"")
    if errors:
        raise ValueError("; ".join(errors))


class HessianCollector:
    """Forward hooks that accumulate XᵀX (float32) of the inputs of chosen linears, keyed by weight name.

    `targets` are state-dict weight names; "tok_emb.weight" of a tied model is fed by the output of
    `final_norm` (the head's input). Use as a context manager; the hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, targets: set[str]):
        self.hessians: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}
        self._handles: list[Any] = []
        for mod_name, module in model.named_modules():
            weight = f"{mod_name}.weight" if mod_name else "weight"
            if isinstance(module, nn.Linear) and weight in targets:
                self._handles.append(module.register_forward_hook(self._hook(weight, use_output=False)))
        if EMBED in targets and getattr(model, "tie_embeddings", False) and hasattr(model, "final_norm"):
            self._handles.append(model.final_norm.register_forward_hook(self._hook(EMBED, use_output=True)))

    def _hook(self, name: str, use_output: bool) -> Any:
        def fn(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = (output if use_output else inputs[0]).detach().float()
            x = x.reshape(-1, x.shape[-1])
            h = self.hessians.get(name)
            if h is None:
                h = self.hessians[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            h.addmm_(x.T, x)
            self.rows[name] = self.rows.get(name, 0) + x.shape[0]
        return fn

    def __enter__(self) -> HessianCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def finish(self, distributed: bool = False, ranks: str = "all") -> dict[str, Tensor]:
        """Mean XᵀX per weight, on the CPU-or-device it was built on. Distributed: over every rank's
        calibration rows (`ranks="all"`) or rank 0's alone, sent to all ranks (`"rank0"`, the records')."""
        out = {}
        for name in sorted(self.hessians):
            h, n = self.hessians[name], torch.tensor(float(self.rows[name]), device=self.hessians[name].device)
            if distributed:
                import torch.distributed as dist

                for t in (h, n):
                    if ranks == "all":
                        dist.all_reduce(t)
                    else:
                        dist.broadcast(t, src=0)
            out[name] = h / n.clamp_min(1.0)
        return out


def hessian_row_importance(w32: Tensor, hessian: Tensor, damp: float) -> Tensor:
    """PR #1412's row importance r_i (mean 1): mean_j |W_ij|·c_j / mean_i(...), with c_j = d_j / mean(d) and d
    the damped Hessian diagonal (dead columns set to 1 first, as GPTQ's), floored at 1e-8."""
    d = torch.diagonal(hessian).float().clone()
    d[d == 0] = 1.0
    d = (d + damp * d.mean()).clamp_min(1e-8)
    r = (w32.abs() * (d / d.mean())[None, :]).mean(dim=1)
    return r / r.mean()


def hessian_targets(model: nn.Module, cfg: GPTQConfig) -> set[str]:
    """Weights that get int-k codes under the mixed policy (plus the tied embedding with gptq_embed)."""
    targets = set()
    for name, p in model.named_parameters():
        if p.ndim != 2 or p.numel() <= cfg.keep_float_max_numel:
            continue
        if any(pat in name for pat in CONTROL_TENSOR_NAME_PATTERNS):
            continue
        bits = bits_for(cfg, name)
        if bits < 8 or (bits == 8 and name == EMBED and cfg.gptq_embed):
            targets.add(name)
    return targets


@torch.no_grad()
def sample_sequences(model: nn.Module, n: int, seq_len: int, vocab: int, batch: int, temperature: float,
                     seed: int, device: torch.device, autocast: Any) -> list[Tensor]:
    """PR #1019's self-generated calibration: random first token, then `seq_len - 1` sampled tokens."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        bs = min(batch, n - start)
        tokens = torch.randint(0, vocab, (bs, 1), device=device, generator=gen)
        for _ in range(seq_len - 1):
            with autocast():
                logits = model(tokens)
            probs = torch.softmax(logits[:, -1, :].float() / temperature, dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)], dim=1)
        out.append(tokens)
    return out


def collect_hessians(run: Any, model: nn.Module, cfg: GPTQConfig) -> tuple[dict[str, Tensor], int]:
    """(Hessians, calibration tokens on this rank) from training batches or self-generated sequences."""
    targets = hessian_targets(model, cfg)
    core = run.core
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        if cfg.calibration == "ar":
            seq_len = cfg.ar_seq_len or core.train_seq_len
            seqs = sample_sequences(model, cfg.ar_seqs, seq_len, core.vocab_size, cfg.ar_batch,
                                    cfg.ar_temperature, core.seed + run.rank, run.device, run.autocast)
            batches = [s[:, :-1] for s in seqs]
        else:
            if cfg.calibration == "shuffled":  # PR #1855: ShuffledSequenceLoader(h, device), seeded with the rank
                from plugins.shuffled_loader import ShuffledSequenceLoader

                loader = ShuffledSequenceLoader(run.train_files, run.rank, run.world_size, core.train_seq_len,
                                                run.device, run.rank)
            else:
                from core.train import new_loader

                loader = new_loader(run)
            batches = [loader.next_batch(core.train_batch_tokens, core.train_seq_len, run.grad_accum_steps)[0]
                       for _ in range(cfg.calib_batches)]
        with HessianCollector(model, targets) as collector, torch.no_grad():
            for x in batches:
                with run.autocast():
                    model(x)
                tokens += int(x.numel())
        return collector.finish(run.distributed, cfg.hessian_ranks), tokens
    finally:
        model.train(was_training)


class GPTQ(Plugin):
    name = "gptq"
    family = "export"
    summary = "Full-Hessian GPTQ int6 (act order, Cholesky error compensation), calibrated inside the budget."
    sources = ("openai/parameter-golf#1060", "openai/parameter-golf#1019", "openai/parameter-golf#1394")
    config = GPTQConfig
    provides = ("quantizer",)
    test_settings = {"gptq": {"keep_float_max_numel": 0, "calib_batches": 2, "reserve_seconds": 0.5}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        seq_len = max(core.train_seq_len, core.eval_seq_len)  # the records' calibration: 64-256 batches, 64 seqs
        return range_errors(cls.name, cfg, keep_float_max_numel=(0, MAX_NUMEL), matrix_clip_sigmas=(0.01, SIGMAS),
                            embed_clip_sigmas=(0.01, SIGMAS), mlp_clip_sigmas=(0.0, SIGMAS), attn_clip_sigmas=(0.0,
                            SIGMAS), hessian_clip_lambda=(0.0, 10.0), calib_batches=(1, 4096), ar_seqs=(1, 4096),
                            ar_seq_len=(0, seq_len), ar_batch=(1, 4096), ar_temperature=(0.0, 10.0),
                            reserve_seconds=(0.0, core.max_wallclock_seconds or STEPS), block_size=(1, 2**16),
                            damp=(0.0, 10.0))

    def __init__(self, cfg: GPTQConfig | None = None):
        super().__init__(cfg)
        check_config(self.cfg)
        self.percentiles = parse_percentiles(self.cfg.percentiles)
        self.hessians: dict[str, Tensor] = {}
        self.stats: dict[str, Any] = {}

    @hookimpl
    def pg_train_reserve_seconds(self, config: Any) -> float:
        return self.cfg.reserve_seconds

    @hookimpl
    def pg_train_start(self, run: Any) -> None:
        cap = run.core.max_wallclock_seconds
        if cap > 0:  # the records' line (validator pattern G1)
            run.log(f"gptq:reserving {self.cfg.reserve_seconds:.1f}s, "
                    f"effective={max(cap - self.cfg.reserve_seconds, 0.0) * 1000:.0f}ms")

    @hookimpl
    def pg_calibrate(self, run: Any, model: nn.Module) -> None:
        t0 = time.perf_counter()
        self.hessians, tokens = collect_hessians(run, model, self.cfg)
        run.synchronize()
        seconds = time.perf_counter() - t0
        self.stats = {"hessians": len(self.hessians), "calib_tokens": tokens, "calibration": self.cfg.calibration,
                      "calib_seconds": seconds}
        run.log(f"GPTQ:collected {len(self.hessians)} Hessians in {seconds:.1f}s")
        run.log(f"gptq_calibration time:{1000 * seconds:.0f}ms source:{self.cfg.calibration} tokens:{tokens}")

    def row_clip(self, name: str) -> Any:
        if self.cfg.clip == "sdclip":
            k = sigmas_for(self.cfg, name)  # per family: embed/head, mlp, attn, else the matrix k
            return lambda t32, qmax: k * t32.std(dim=1)
        return lambda t32, qmax: search_clip(t32, qmax, self.percentiles, per_row=False)

    def candidate_scales(self, name: str, w32: Tensor, bits: int, hessian: Tensor | None = None) -> list[Tensor]:
        qmax = qmax_of(bits)
        if self.cfg.clip == "sdclip":
            clip = self.row_clip(name)(w32, qmax)
            if self.cfg.hessian_clip_lambda > 0 and hessian is not None:
                r = hessian_row_importance(w32, hessian.to(w32.device), self.cfg.damp)
                clip = clip * (1.0 + self.cfg.hessian_clip_lambda * (r - 1.0))
            return [(clip / qmax).clamp_min(MIN_SCALE).to(torch.float16)]
        return [(clip / qmax).clamp_min(1.0 / qmax).to(torch.float16) for clip in row_clips(w32, self.percentiles)]

    @hookimpl
    def pg_quantize_tensor(self, name: str, tensor: Tensor, config: Any) -> QTensor:
        h = self.hessians.get(name)
        if h is None or tensor.ndim != 2:
            sd = self.cfg.clip == "sdclip"
            return policy_quantize(name, tensor, self.cfg, self.row_clip(name), extra_negative=False,
                                   method="sdclip" if sd else "gptq_lite", min_scale=MIN_SCALE if sd else None,
                                   baseline_int8=not sd)
        bits = bits_for(self.cfg, name)
        w32 = tensor.detach().to(h.device).float()
        try:
            prep = prepare_hessian(h, self.cfg.damp)
        except torch.linalg.LinAlgError:  # not positive definite even after damping: the records' RTN fallback
            return policy_quantize(name, tensor, self.cfg, self.row_clip(name), extra_negative=False,
                                   method="gptq_fallback", baseline_int8=False)
        codes, scale, choice = gptq_quantize(w32, prep, self.candidate_scales(name, w32, bits, h), bits,
                                             self.cfg.block_size)
        meta: dict[str, int | float | str] = {"bits": bits, "method": "gptq", "clip": self.cfg.clip,
                                              "candidate": choice}
        return QTensor("intk_per_row", codes.cpu(), scale.cpu(), dtype_name(tensor), tuple(tensor.shape), meta)

    @hookimpl
    def pg_report(self, run: Any, fields: dict[str, Any]) -> None:
        fields.update({f"gptq_{k}": v for k, v in self.stats.items()})
