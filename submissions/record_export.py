"""The BARE artifact of a record-profile script (issue #11): the codec's stream of `core.export.save_records` alone,
without pgolf's MAGIC | version | JSON header framing (stream table, sizes, checksums, codec parameters).

A record-profile bundle (`submissions.bundle`, no state codec in its configuration) replaces `core.export`'s
`export_state_dict` and `verify_round_trip` with the two functions below (pasted into its copy of `core.export`,
whose names they use), so its artifact is what the records ship: compressed torch.save bytes. The records inside
are the very ones the framed artifact holds (same quantization, same `save_records` bytes, same codec output), and
the round trip dequantizes what the artifact decodes to, as `verify_round_trip` does, without re-comparing each
record with the in-memory quantization. `plugins.lib.decoders.read_artifact` (`pgolf eval`, `pgolf size`) detects
the layout (no MAGIC) and finds the codec by trying each decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from core.export import (
    MAX_DECOMPRESSED,
    Codec,
    DequantizeFn,
    ExportResult,
    QTensor,
    QuantizeFn,
    StateCodec,
    dequantize_state_dict,
    load_records,
    quantize_state_dict,
    quantizer_label,
    save_records,
)

# The functions of `core.export` a record-profile bundle replaces with these (by name).
REPLACED = ("export_state_dict", "verify_round_trip")


def export_state_dict(state_dict: Mapping[str, Tensor], quantizers: Sequence[QuantizeFn], codec: Codec,
                      quantizer_name: str | None = "int8",
                      refine: Callable[[dict[str, QTensor]], None] | None = None,
                      schemes: Mapping[str, DequantizeFn] | None = None,
                      state_codec: StateCodec | None = None) -> ExportResult:
    qstate = quantize_state_dict(state_dict, quantizers, schemes)
    if refine is not None:
        refine(qstate)
    if quantizer_name is None:
        quantizer_name = quantizer_label(qstate)
    raw = save_records(qstate)
    blob = codec.compress(raw)
    return ExportResult(blob=blob, qstate=qstate, raw_bytes=len(raw), quantizer_name=quantizer_name,
                        codec_name=codec.name)


def verify_round_trip(result: ExportResult, codecs: Mapping[str, Codec] | None = None,
                      max_size: int = MAX_DECOMPRESSED,
                      schemes: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    raw = codecs[result.codec_name].decompress(result.blob, max_size=max_size)
    return dequantize_state_dict(load_records(raw), schemes)
