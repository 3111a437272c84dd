"""Every decoder pgolf ships, and reading an artifact file outside its run (`pgolf size`, `pgolf eval`).

Kept apart from `plugins.lib.codecs` so a bundled train_gpt.py that uses a codec does not also embed
every layout (the bundler follows imports).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.export import MAX_DECOMPRESSED, ArtifactError, QTensor, decode_artifact
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
    return decode_artifact(blob, all_decoders() if codecs is None else codecs, max_size, where=str(p))
