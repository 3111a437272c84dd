"""Every pgolf hook, with the reference a plugin author needs: when it runs, its arguments, its result.

No hook is called inside a compiled region: hooks run at build time, at step and phase boundaries, at export and at the
evaluation driver level; a switch that flips mid-run is a tensor buffer (`plugins.lib.switch.Switch`). Settings are
validated before any hook runs (`Plugin.check_config`). pluggy semantics: a `firstresult=True` hook has one provider
(the first non-None result wins, by tryfirst/trylast and registration order); the core answers `trylast`, so a plugin's
result replaces it. Plain hooks call every implementation."""

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
    """Return the training batch source, or None for the core's sequential shard loader.

    It has `next_batch(global_tokens, seq_len, grad_accum_steps)` -> `(x, y)`, int64 (rows, T) on `run.device`
    (T = seq_len unless the loader packs otherwise), or `(x, y, doc_ids)` for document-masked training (equal ids =
    one document: `ctx["doc_ids"]`), or `(x, y, doc_ids, cu_seqlens)` adding the same boundaries as int32 offsets
    into the flat rows·T tokens, padded with rows·T (`ctx["cu_seqlens"]`, for a varlen "attention" slot). Called
    before the warm-up and again before the timed loop. Optional `warm_batches(global_tokens, seq_len,
    grad_accum_steps)`: random batches of every shape it yields (warmed in every mode)."""


@hookspec(firstresult=True)
def pg_text_transform(config: Any) -> Any:
    """Return a `dataprep.build.TextTransform` for the dataset builder, or None (never called in training).

    The builder keeps its `reserved_symbols` as SentencePiece user-defined pieces, tokenizes `encode(text)` and writes
    a byte sidecar beside the validation shards (`fineweb_val_bytes_<n>.bin`, uint16, 0 for BOS): each token's bytes
    of the ORIGINAL text (`original_bytes` of the piece surfaces)."""


@hookspec(firstresult=True)
def pg_byte_tables(run: Any, tokenizer: Any) -> ByteTables | None:
    """Return the `core.tokenizer.ByteTables` scoring uses (core: the baseline's), sized max(tokenizer vocab,
    `run.core.vocab_size`). Called once in `setup` after the tokenizer (a SentencePieceProcessor) loads."""


@hookspec(firstresult=True)
def pg_val_byte_counts(run: Any, tokens: Tensor) -> Tensor | None:
    """Return the validation stream's per-position byte counts (1-D integers parallel to `tokens`: entry t is what
    target t stands for in the original text), or None to count with the tables. Called once in `setup` with
    `run.val_tokens` (read `run.data_dir`); the core checks shape and sign (a DataError naming this hook) and every
    evaluation of the stream sums these bytes (CaseOps' sidecar)."""


# --- build -----------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def pg_attention_backend(run: Any) -> str | None:
    """Return the backend `core.attention = "auto"` runs on CUDA (fa3, cudnn, flash, efficient, math or sdpa), or
    None for the core's untimed pick (fa3 when importable, else cuDNN). Called once in `core.run.create_run`, never
    with `core.deterministic`; every rank must answer the same (default: `plugins.attention_auto` measures)."""


@hookspec
def pg_slot_parts(slot: str, spec: Any, layer: int | None) -> Any:
    """Return a module (or a list of them, or None) to append to a list slot of the model:

    - "embed_add"       part(input_ids) -> tensor added to the token embedding
    - "embed_mix_pre"   part(x, input_ids) -> x, before the first RMSNorm
    - "embed_mix_post"  part(x, input_ids) -> x, after it (x0 is taken after these)
    - "value"           part(v, ctx) -> v, per layer, on the values (B, T, Hkv, D) before the attention
                        core; `ctx` holds `input_ids` and whatever parts store (e.g. layer 0's values)
    - "attn_out"        part(y, v, x) -> y, per layer, y (B, T, H, D) before the output projection
    Embedding slots are asked right after the token embedding is made, before the blocks (the records'
    order of random draws); per-layer slots after the model is built. Parts are compiled with the model."""


@hookspec(firstresult=True)
def pg_build_slot(slot: str, spec: Any, layer: int | None) -> Any:
    """Return a replacement module for one slot, or None to keep the core's.

    Per layer: "mlp" module(x) -> x (core: relu², hidden = mlp_hidden or mlp_mult·dim); "attn_norm" /
    "mlp_norm" module(x) -> x (RMSNorm); "rotary" module(seq_len, device, dtype) -> (cos, sin), each
    (1, T, 1, r/2), RoPE on the first r head dims (core: `Rotary`); "attention" module(q, k, v, ctx) -> y,
    q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D), causal, within documents when `ctx` has "doc_ids" (B, T)
    (core: dense `document_mask`, kept in `ctx["attn_mask"]`), plus "cu_seqlens" when the loader gives them;
    "residual" module(block, x, x0, ctx) -> x, the block body from its input stream x and the embedding
    stream x0 (`block.mix_x0(x, x0)` is the resid-mixed stream; core: `SequentialResidual`; a module may
    keep state for later blocks in `ctx`, e.g. a second lane).
    Per model (`layer` None): "schedule" a `core.model.LayerSchedule` (the model re-makes its skip weights
    for its `skip_count()`); "skip_merge" module(x, scaled_skip, i) -> x; "loss" module(model, h,
    targets, reduce) -> loss (core: softcapped logits, fp32 cross-entropy; `reduce=False` gives (B, T)).
    Two plugins replacing one slot must conflict (or provide the same role)."""


@hookspec
def pg_model_modules(where: str, spec: Any) -> dict[str, Any] | None:
    """{attribute: module} made while the model is built, "before_blocks" (after the skip weights) or "after_blocks"
    (before the final norm): where a record's constructor makes them, so they draw its random numbers."""


@hookspec
def pg_edit_model(model: Any, spec: Any, config: Any) -> None:
    """Edit the built model in place (after the slot parts, before `pg_init_weights`), for a change that spans many
    modules (e.g. a fake-quantized path in every `CastedLinear`). Existing parameters keep their names and shapes; new
    ones name their optimizer group with `core.model.join_group`. Draw no random numbers here."""


# --- init ------------------------------------------------------------------------------------------
@hookspec
def pg_init_weights(model: Any, config: Any) -> None:
    """Re-initialise weights in place after the model (with all parts) is built, before compile."""


# --- optimize --------------------------------------------------------------------------------------
@hookspec
def pg_param_groups(model: Any, groups: dict[str, list[Any]], config: Any) -> None:
    """Move parameters between the named groups before optimizers are made: the core's "token", "head" (Adam),
    "matrix" (Muon) and "scalar" (Adam). A new group name needs a `pg_make_optimizer` answer."""


@hookspec(firstresult=True)
def pg_make_optimizer(group: str, params: list[Any], config: Any) -> Any:
    """Return the optimizer for one named parameter group (the core answers for its four). Each group carries
    "base_lr": the core sets lr = base_lr·lr_mul every step (pg_after_step may rescale it, as late_qat does)."""


@hookspec
def pg_before_step(run: Any, step: int, clock: Any) -> None:
    """Host-side, after the backward and before each optimizer step. `clock` (`core.train.Clock`): `lr_mul` and
    `muon_momentum` are writable, `elapsed_ms` and `frac` (of the wall-clock budget or the iterations) are not.
    Flip `Switch`es here; never call `.item()`."""


@hookspec
def pg_modes(config: Any) -> list[Any] | None:
    """Return the graph modes this plugin switches mid-run (`core.model.Mode` list), or None.

    For a change the compiler must see as another graph (layers repeated, lanes merged), not a value (use a
    `Switch`). The core compiles every cumulative combination in the warm-up, turns each mode on at the first step
    whose training fraction reaches `start_frac` (`mode:<name> on step:N`), and logs `timed_loop_recompiles:N` (0
    when every graph was warmed)."""


@hookspec
def pg_enter_mode(model: Any, active: tuple[str, ...]) -> None:
    """Set the model's Python mode attributes for `active` (every mode entered so far, in order): in the warm-up,
    with `()` before the timed loop, at a mode's start, and before evaluating an artifact. Set only attributes the
    forward reads; no random numbers, no parameter changes."""


# --- step ------------------------------------------------------------------------------------------
@hookspec
def pg_before_warmup(run: Any, stepper: Any) -> None:
    """Once, before the compile warm-up fixes the batch shapes: may set `run.grad_accum_steps` (whole `train_seq_len`
    rows per rank and micro-step; `plugins.auto_micro_batch`). Restore what `stepper`'s steps change, if it runs any."""


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
    """Seconds of the wall-clock budget to keep for `pg_calibrate`, or None; the loop and its warmdown get
    MAX_WALLCLOCK_SECONDS less the sum of all answers (the records' GPTQ_RESERVE_SECONDS)."""


@hookspec
def pg_calibrate(run: Any, model: Any) -> None:
    """Post-loop work that reads training data to decide the artifact (GPTQ Hessians), on every rank, after
    `pg_train_end`, outside compiled code (`model` is the uncompiled module). The core times all implementations
    together, logs `calibration time:…ms` and counts it as training time (rulebook TIME.TRAIN_POSTLOOP). Never read
    validation data here."""


# --- export ----------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def pg_quantize_tensor(name: str, tensor: Any, config: Any) -> Any:
    """Return a `core.export.QTensor` for this state-dict entry, or None to leave it to the next implementation.
    The "quantizer" role's default provider (`plugins.quant_int8`, the baseline's int8 rule) answers last."""


@hookspec
def pg_refine_quantized(qstate: Any, ctx: Any) -> None:
    """Edit the quantized state (name -> `QTensor`) in place before it is encoded (e.g. prune to fit);
    `ctx` is a `core.export.RefineContext`. Every implementation runs, in registration order."""


@hookspec
def pg_dequantizers() -> dict[str, Any] | None:
    """Return {scheme: dequantize(QTensor) -> Tensor} for the schemes this plugin writes. Collected once per
    run (`run.schemes`, after the core's); export refuses a scheme without one, and decoding uses them."""


@hookspec(firstresult=True)
def pg_codec(config: Any) -> Any:
    """Return the `core.export.Codec` that compresses the serialized state (default: `plugins.codec_zlib`).
    A decoder that needs settings (brotli's byte shuffle) reads them from the codec's `params` through
    `configured(params)`: the header records them per stream, so an artifact decodes without the run's config."""


@hookspec(firstresult=True)
def pg_state_codec(config: Any) -> StateCodec | None:
    """Return the `core.export.StateCodec` that lays the quantized state out as byte streams, or None.

    Called per export and to decode an artifact. `encode(qstate)` -> `(streams, manifest)`: streams are
    `core.export.Stream(label, raw bytes, codec)` (codec None: the run's `pg_codec`), the manifest a JSON dict for the
    header. `decode(raws, manifest)` gets the streams decompressed, size-capped and checked against their SHA-256, must
    return the records bit for bit (export verifies) and load tensors only with `core.export.load_records`. Its `name`
    is the header's "layout" (None: the core's "torch" layout, one torch.save stream)."""


@hookspec(firstresult=True)
def pg_wrap_code(source: str) -> str | None:
    """Return `source` (the finished single-file train_gpt.py) wrapped, or None to ship it as is.

    Called by `submissions.bundle.bundle`, never in training: one plain Python file (its bytes: the text in its PEP 263
    encoding, UTF-8 by default) that behaves like `source` under python and torchrun (same `__main__`, `__file__`, so
    its logged code size is the wrapped file's), unwrapping with the standard library only (PR #1493's exec(lzma…))."""


# --- evaluate --------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def pg_evaluator(run: Any) -> Any:
    """Return the `core.scoring.Evaluator` for the final (artifact) evaluation (core: `PlainEvaluator`).
    It reports per-position NLL to the `ScoreSink`; test-time training reads only `plugins.lib.ttt.ScoredTokens`."""


# --- report ----------------------------------------------------------------------------------------
@hookspec
def pg_report(run: Any, fields: dict[str, Any]) -> None:
    """Add fields for submission.json / README (e.g. {"ema_decay": 0.997}); called after evaluation."""
