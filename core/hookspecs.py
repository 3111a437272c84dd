"""Every pgolf hook, with the reference a plugin author needs: when it runs, its arguments, its result.

No hook is called inside a compiled region. Hooks run at configuration, model build, step and phase
boundaries, export and evaluation driver level; a technique that changes the forward pass returns
modules at build time, and a switch that flips mid-run is a tensor buffer (see `core.model.Switch`).

Families: data, build, init, optimize, modes, step, export, evaluate, report. (Configuration is
resolved and validated before any hook runs: `Plugin.check_config` and the config dataclass.)
pluggy semantics: `firstresult=True` hooks have exactly one provider (the first non-None result wins,
ordered by tryfirst/trylast and registration); the core registers its defaults `trylast`, so a
plugin's result replaces them. Plain hooks call every implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # annotations only: the hookspecs import nothing at run time
    from torch import Tensor

    from core.export import StateCodec
    from core.tokenizer import ByteTables

PROJECT = "pgolf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- data ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def pg_train_loader(run: Any) -> Any:
    """Return the training batch source, or None to keep the core's sequential shard loader.

    The object must have `next_batch(global_tokens, seq_len, grad_accum_steps) -> (x, y)` with int64
    tensors of shape (-1, seq_len) on `run.device`, or `(x, y, doc_ids)` for document-masked training:
    `doc_ids` (same shape, equal ids = same document) reaches the model, which keeps attention inside
    each document (`ctx["attn_mask"]` for the attention core; a varlen attention slot may read it). Called at
    the start of training and again after the compile warm-up (the loader is rebuilt so measured training
    starts at the first token).
    """


@hookspec(firstresult=True)
def pg_text_transform(config: Any) -> Any:
    """Return a `dataprep.build.TextTransform` applied to every document before tokenizer training and
    tokenization when a dataset is built (`dataprep.build.build_dataset(..., transform=...)`), or None.

    Called at data-build time only (never by training). The builder reserves the transform's
    `reserved_symbols` as SentencePiece user-defined pieces, tokenizes `encode(text)`, and writes a byte
    sidecar beside the validation shards (`fineweb_val_bytes_<n>.bin`, uint16, parallel to the tokens,
    0 for BOS) holding each token's bytes of the ORIGINAL text (`original_bytes` of the piece surfaces).
    """


@hookspec(firstresult=True)
def pg_byte_tables(run: Any, tokenizer: Any) -> ByteTables | None:
    """Return the `core.tokenizer.ByteTables` scoring uses for this tokenizer (core: the baseline's LUT).

    Called once in `setup` after the tokenizer loads (`tokenizer` is the SentencePieceProcessor,
    `run.core.vocab_size` the model's vocabulary), before the model is built. Tables are sized
    max(tokenizer vocab, model vocab); they apply to any token stream without per-position counts.
    """


@hookspec(firstresult=True)
def pg_val_byte_counts(run: Any, tokens: Tensor) -> Tensor | None:
    """Return per-position byte counts of the validation stream (a 1-D integer tensor, one entry per
    token of `tokens`: entry t is what target t stands for in the original text; entry 0 is unused),
    or None to count bytes with the tables.

    Called once in `setup`, after the validation tokens are loaded and cut to their scored length
    (`tokens` is `run.val_tokens`; read `run.data_dir`). The core checks shape and sign (a DataError
    naming the hook), stores it as `run.val_bytes`, and every evaluation of the validation stream (all
    evaluators, TTT included) sums these bytes in the `ScoreSink`. The CaseOps byte sidecar lives here.
    """


# --- build -----------------------------------------------------------------------------------------
@hookspec
def pg_slot_parts(slot: str, spec: Any, layer: int | None) -> Any:
    """Return a module (or a list of modules, or None) to install into a list slot of the model.

    Slots and the call their modules must support (see `core.model`):
    - "embed_add"       part(input_ids) -> tensor added to the token embedding
    - "embed_mix_pre"   part(x, input_ids) -> x, before the first RMSNorm
    - "embed_mix_post"  part(x, input_ids) -> x, after the first RMSNorm (x0 is taken after these)
    - "value"           part(v, ctx) -> v, per layer, on the attention values (B, T, Hkv, D) before the
                        attention core: value injection. `ctx` is the forward's dict of side inputs
                        (`ctx["input_ids"]` always; a part may store tensors for later layers, e.g. the
                        first layer's values for a value residual)
    - "attn_out"        part(y, v, x) -> y, per layer (`layer` is the block index), on attention output
                        before the output projection; y is (B, T, H, D), v is (B, T, Hkv, D)
    The embedding slots are asked while the model is made, right after the token embedding and before
    the blocks (where the records build BigramHash and SmearGate, so a recipe's initial weights equal its
    record's for a seed); the per-layer slots after the core model is built. The modules are ordinary
    parts of the forward and are compiled with it.
    """


@hookspec(firstresult=True)
def pg_build_slot(slot: str, spec: Any, layer: int | None) -> Any:
    """Return a replacement module for a single slot, or None to keep the core's.

    Per layer (`layer` is the block index):
    - "mlp"        module(x) -> x; the core's is relu² with hidden = mlp_mult·dim
    - "attn_norm"  module(x) -> x, the pre-norm of the attention input (core: RMSNorm)
    - "mlp_norm"   module(x) -> x, the pre-norm of the MLP input (core: RMSNorm)
    - "rotary"     module(seq_len, device, dtype) -> (cos, sin), each (1, 1, T, r/2); RoPE rotates the
                   first r head dims and passes the rest (core: `core.model.Rotary`, r = head_dim)
    - "attention"  module(q, k, v, ctx) -> y: the attention core, q (B, H, T, D), k/v (B, Hkv, T, D) ->
                   (B, T, H, D), causal; `ctx["attn_mask"]` / document boundaries when present
                   (core: `CausalAttention`, SDPA or FA3)
    - "residual"   module(block, x, ctx) -> x: how the block combines its attention and MLP on the
                   resid-mixed stream x (core: `SequentialResidual`; parallel residuals replace it)
    Per model (`layer` is None):
    - "schedule"   a `core.model.LayerSchedule`: the block order (encoder/decoder index lists of the
                   current mode) and `skip_count()`; the model re-makes its skip weights for that count
    - "skip_merge" module(x, scaled_skip, i) -> x: how U-Net skip i re-enters (core: x + scaled_skip)
    - "loss"       module(model, h, targets, reduce) -> loss: output head + loss from the final hidden
                   states (core: softcapped logits, fp32 cross-entropy); `reduce=False` gives (B, T)
    Exactly one provider: two plugins that replace the same slot must declare a conflict (or provide
    the same role).
    """


@hookspec
def pg_edit_model(model: Any, spec: Any, config: Any) -> None:
    """Edit the built model in place, after the slot parts are installed and before `pg_init_weights`.

    For a change that no slot expresses and that spans many modules, e.g. giving every
    `core.model.CastedLinear` a fake-quantized weight path driven by one shared `Switch`. Existing
    parameters keep their names and shapes. New parameters are allowed (inside new modules); name the
    optimizer group each joins with `core.optim.join_group(param, "scalar")` (else the shape rule of
    `default_param_groups` decides). Draw random numbers only in `pg_init_weights`.
    """


# --- init ------------------------------------------------------------------------------------------
@hookspec
def pg_init_weights(model: Any, config: Any) -> None:
    """Re-initialise weights in place after the model (with all parts) is built, before compile."""


# --- optimize --------------------------------------------------------------------------------------
@hookspec
def pg_param_groups(model: Any, groups: dict[str, list[Any]], config: Any) -> None:
    """Move parameters between the named groups before optimizers are made.

    The core fills `groups` first (trylast is not used here: the core fills them before calling):
    "token" (Adam, tied/embed LR), "head" (Adam, head LR), "matrix" (Muon), "scalar" (Adam, scalar LR).
    A plugin may add a new group name; it then must also answer `pg_make_optimizer` for it.
    """


@hookspec(firstresult=True)
def pg_make_optimizer(group: str, params: list[Any], config: Any) -> Any:
    """Return the optimizer for one named parameter group (the core answers for the four defaults).

    Each param group of the returned optimizer must carry "base_lr": the core multiplies it by the
    schedule's lr multiplier every step.
    """


@hookspec
def pg_before_step(run: Any, step: int, clock: Any) -> None:
    """Host-side, before each optimizer step (after the backward).

    `clock` has `lr_mul` (the core's warmdown multiplier, writable), `muon_momentum` (writable),
    `elapsed_ms` and `frac` (elapsed fraction of the wall-clock budget or of the iterations). Flip
    switches here with `Switch.set(...)` (an in-place buffer fill). Never call `.item()` here.
    """


@hookspec
def pg_modes(config: Any) -> list[Any] | None:
    """Return the graph modes this plugin switches mid-run (a list of `core.model.Mode`), or None.

    Called once after the model is built. A mode is for a change the compiler must see as a different
    graph (a Python branch: layers repeated, lanes merged), not for a value (use a `Switch` buffer). The
    core compiles each cumulative combination during the warm-up (then restores weights and optimizer
    state), turns each mode on at the first step whose training fraction is >= `start_frac`, logs
    `mode:<name> on step:N`, and logs `timed_loop_recompiles:N` at the end of the loop (0 when every
    graph was warmed).
    """


@hookspec
def pg_enter_mode(model: Any, active: tuple[str, ...]) -> None:
    """Set the model's Python mode attributes for the `active` modes (every mode entered so far, in order).

    Called at a step boundary outside compiled code: during the warm-up for each combination, with `()`
    before the timed loop, when a mode's start fraction is reached, and before evaluating a saved
    artifact (all modes with start_frac <= 1). Only set attributes the forward reads; draw no random
    numbers and change no parameter.
    """


# --- step ------------------------------------------------------------------------------------------
@hookspec
def pg_train_start(run: Any) -> None:
    """After the compile warm-up and state restore, just before the timed loop starts."""


@hookspec
def pg_after_step(run: Any, step: int) -> None:
    """After every optimizer step (`step` is the number of completed steps). EMA and SWA live here."""


@hookspec
def pg_train_end(run: Any, model: Any) -> None:
    """After the timed loop, before export: load averaged weights, apply final edits, in place."""


@hookspec
def pg_train_reserve_seconds(config: Any) -> float | None:
    """Seconds of the training wall-clock budget to keep free for `pg_calibrate` (or None).

    Called once before the timed loop; the core subtracts the sum of all answers from
    MAX_WALLCLOCK_SECONDS for the loop (and its warmdown schedule), as the records' GPTQ_RESERVE_SECONDS.
    """


@hookspec
def pg_calibrate(run: Any, model: Any) -> None:
    """Post-loop work that reads data to decide the artifact (e.g. GPTQ Hessians), counted as training.

    Called after `pg_train_end` (averaged weights loaded), on every rank, outside any compiled region
    (`model` is the uncompiled module). The core times all implementations together, logs
    `calibration time:…ms`, and adds the time to the reported training time (rulebook
    TIME.TRAIN_POSTLOOP: calibration belongs to the 600 s). Never read validation data here.
    """


# --- export ----------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def pg_quantize_tensor(name: str, tensor: Any, config: Any) -> Any:
    """Return a `core.export.QTensor` for this state-dict entry, or None to leave it to others.

    The core's int8 per-row rule (the baseline's) answers last for everything nobody claimed.
    """


@hookspec
def pg_refine_quantized(qstate: Any, ctx: Any) -> None:
    """Edit the quantized state in place after quantization, before it is encoded (e.g. prune to fit).

    `qstate` maps tensor name -> `core.export.QTensor`; `ctx` is a `core.export.RefineContext` with
    `size_of(qstate) -> int` (artifact bytes with the run's codec), `code_bytes` and `config`.
    Every implementation is called, in registration order.
    """


@hookspec
def pg_dequantizers() -> dict[str, Any] | None:
    """Return {scheme name: dequantize(QTensor) -> Tensor} for the quantization schemes this plugin writes.

    Collected once per run (`run.schemes`, the core's int8/passthrough schemes first); export refuses a
    record whose scheme has no dequantizer, and decoding an artifact uses the same table. Nothing global
    changes when a plugin is imported.
    """


@hookspec(firstresult=True)
def pg_codec(config: Any) -> Any:
    """Return the `core.export.Codec` that compresses the serialized quantized state (core: zlib-9).

    A codec whose decoder needs settings (e.g. brotli's byte shuffle stride) exposes them as `params`
    and decodes through `configured(params)`: the artifact header records them per stream, so an
    artifact decodes without the run's configuration.
    """


@hookspec(firstresult=True)
def pg_state_codec(config: Any) -> StateCodec | None:
    """Return the `core.export.StateCodec` that lays the quantized state out as byte streams (or None).

    Called once per export (and again to decode an artifact in `pgolf eval`), after quantization and
    `pg_refine_quantized`, outside any compiled region. The state codec sees every record (name ->
    `core.export.QTensor`: codes, scales, scheme, shape) and returns `(streams, manifest)`:
    - streams: `core.export.Stream(label, raw bytes, codec)`; `codec` None means the run's `pg_codec`
      codec, so a layout may compress tensor families differently (per-group compression).
    - manifest: a JSON-serializable dict (names, shapes, permutations) written to the artifact header.
    Its `decode(raws, manifest)` receives the streams decompressed, size-capped and checked against
    their SHA-256 by the core, and must return the same records bit for bit (the export verifies this)
    and load tensors only with `core.export.load_records` (`torch.load(weights_only=True)`). Its `name`
    is the header's "layout"; the decoder table (`core.export.decoders_of`) maps it back to the object.
    The core's answer (trylast) is `TorchStateCodec`: one stream, the torch.save of all records.
    """


@hookspec(firstresult=True)
def pg_wrap_code(source: str) -> str | None:
    """Return `source` (the finished single-file train_gpt.py) in a wrapped form, or None to ship it as is.

    Called by `submissions.bundle.bundle` (so `pgolf bundle`, and the code size `pgolf train` logs through
    `bundle_size`), never during training. The result must be one plain Python file that behaves exactly
    like `source` under `python train_gpt.py` and torchrun: the same `__name__ == "__main__"` entry and
    `__file__` (so the script's own size, which it logs as its code size, is the wrapped file's), using
    only the standard library to unwrap. E.g. PR #1493's `exec(lzma.decompress(b85decode(...)))`.
    """


# --- evaluate --------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def pg_evaluator(run: Any) -> Any:
    """Return the `core.scoring.Evaluator` used for the final (artifact) evaluation.

    The core's is `PlainEvaluator` (non-overlapping windows, the baseline). An evaluator reports
    per-position NLL to the `ScoreSink` it is given; test-time training may only read tokens from
    `ScoredTokens`, which releases what the sink has already scored. Optional members (see
    `core.scoring.Evaluator`): `warmup(run, model, n_tokens)` for the synthetic compile warm-up and
    `doc_isolation`.
    """


# --- report ------------------------------------------------------------------------------
@hookspec
def pg_report(run: Any, fields: dict[str, Any]) -> None:
    """Add fields for submission.json / README (e.g. {"ema_decay": 0.997}); called after evaluation."""
