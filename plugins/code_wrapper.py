"""code_wrapper: ship train_gpt.py as a self-extracting LZMA2 + base85 script (PR #1179 on; PR #1493's
record is 16.6 KB this way), techniques §9.9.

The bundle is compressed with raw LZMA2 (`format=FORMAT_RAW`, preset 9 | extreme), base85-encoded and
wrapped in two lines that decompress and `exec` it in the script's own globals, so `__name__`, `__file__`
and the code size the script logs (its own bytes) are the wrapped file's. Only the standard library
(lzma, base64) is needed to unwrap.
"""

from __future__ import annotations

import base64
import lzma
from dataclasses import dataclass, field

from core.hookspecs import hookimpl
from core.registry import Plugin

TEMPLATE = ('import lzma as L,base64 as B\n'
            'exec(L.decompress(B.b85decode("{}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]))\n')


@dataclass
class CodeWrapperConfig:
    preset: int = field(default=9, metadata={"help": "LZMA2 preset (0..9) of the wrapped code"})
    extreme: bool = field(default=True, metadata={"help": "add PRESET_EXTREME"})


def wrap_lzma_b85(source: str, preset: int = 9 | lzma.PRESET_EXTREME) -> str:
    """The two-line self-extracting form of `source` (raw LZMA2, base85: no quote or backslash in it)."""
    packed = lzma.compress(source.encode("utf-8"), format=lzma.FORMAT_RAW,
                           filters=[{"id": lzma.FILTER_LZMA2, "preset": preset}])
    return TEMPLATE.format(base64.b85encode(packed).decode("ascii"))


def unwrap_lzma_b85(wrapped: str) -> str:
    """The source inside a `wrap_lzma_b85` script (for tests and `pgolf size`-style inspection)."""
    head, sep, rest = wrapped.partition('B.b85decode("')
    if not sep or not head.startswith("import lzma as L,base64 as B"):
        raise ValueError("not a code_wrapper script (expected the lzma/base85 two-line form)")
    data = base64.b85decode(rest.split('"', 1)[0])
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]).decode("utf-8")


class CodeWrapper(Plugin):
    name = "code_wrapper"
    family = "export"
    summary = "Ship train_gpt.py as a self-extracting LZMA2 + base85 script (the counted code bytes shrink ~5x)."
    sources = ("openai/parameter-golf#1179", "openai/parameter-golf#1493")
    config = CodeWrapperConfig
    test_settings = {"code_wrapper": {"preset": 9}}

    @hookimpl
    def pg_wrap_code(self, source: str) -> str:
        if not 0 <= self.cfg.preset <= 9:
            raise ValueError(f"code_wrapper.preset: expected 0..9, got {self.cfg.preset}")
        return wrap_lzma_b85(source, self.cfg.preset | (lzma.PRESET_EXTREME if self.cfg.extreme else 0))
