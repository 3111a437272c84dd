"""Every decoder pgolf ships, and reading an artifact file outside its run (`pgolf size`, `pgolf eval`).

Kept apart from `plugins.lib.codecs` so a bundled train_gpt.py that uses a codec does not also embed
every layout (the bundler follows imports).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.export import MAGIC, MAX_DECOMPRESSED, ArtifactError, QTensor, decode_artifact, load_records, quantizer_label
from plugins.lib.codecs import BSHF_MAGIC, byte_unshuffle
from plugins.lib.codecs import all_decoders as all_codecs
from plugins.lib.pergroup import PerGroupStateCodec


def all_decoders() -> dict[str, Any]:
    """name -> decoder: every codec, and every state codec (layout) under its header name."""
    layout = PerGroupStateCodec()
    return {**all_codecs(), layout.name: layout}


def read_artifact(path: str | os.PathLike[str], codecs: Mapping[str, Any] | None = None,
                  max_size: int = MAX_DECOMPRESSED) -> tuple[dict[str, QTensor], dict[str, Any]]:
    """`core.export.decode_artifact` on a file (`codecs`: every decoder by default); errors name the path."""
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{p}: cannot read artifact ({exc.strerror or exc})") from exc
    codecs = all_decoders() if codecs is None else codecs
    if not blob.startswith(MAGIC):
        return read_bare(blob, codecs, max_size, where=str(p))
    return decode_artifact(blob, codecs, max_size, where=str(p))


def read_bare(blob: bytes, codecs: Mapping[str, Any], max_size: int = MAX_DECOMPRESSED,
              where: str = "artifact") -> tuple[dict[str, QTensor], dict[str, Any]]:
    """(records, a header like the framed one's) of a BARE artifact (a record-profile script's,
    `submissions.record_export`: one codec's stream of `save_records`, no header): the first of `codecs` that
    decompresses it to a pgolf state decodes it; a byte shuffle is read from its own prefix."""
    tried = []
    for name, codec in codecs.items():
        if not hasattr(codec, "decompress"):
            continue
        try:
            raw = codec.decompress(blob, max_size=max_size)
            if raw[:4] == BSHF_MAGIC and len(raw) > 4:  # a decoder without the writer's shuffle parameter
                raw = byte_unshuffle(raw, raw[4])
            records = load_records(raw, where)
        except Exception as exc:  # not this codec's stream (or not a pgolf state): try the next one
            tried.append(f"{name} ({type(exc).__name__})")
            continue
        return records, {"layout": "bare", "codec": name, "quantizer": quantizer_label(records),
                         "raw_bytes": len(raw), "payload_bytes": len(blob)}
    raise ArtifactError(f"{where}: not a pgolf artifact (no pgolf header, and no decoder reads it as a bare one: "
                        f"tried {', '.join(tried) or 'none'})")
