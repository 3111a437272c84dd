"""Every decoder pgolf ships, for reading an artifact outside its run (`pgolf size`, benchmarks).

Kept apart from `plugins.lib.codecs` so a bundled train_gpt.py that uses a codec does not also embed
every layout (the bundler follows imports).
"""

from __future__ import annotations

from typing import Any

from plugins.lib.codecs import all_decoders as all_codecs
from plugins.lib.pergroup import PerGroupStateCodec


def all_decoders() -> dict[str, Any]:
    """name -> decoder: every codec, and every state codec (layout) under its header name."""
    layout = PerGroupStateCodec()
    return {**all_codecs(), layout.name: layout}
