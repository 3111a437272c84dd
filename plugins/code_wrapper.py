"""code_wrapper: ship train_gpt.py as a self-extracting compressed script (PR #1179 on; PR #1493's record is
16.6 KB this way: LZMA2 + base85), techniques §9.9.

The bundle is compressed and wrapped in a few lines that decompress and `exec` it in the script's own globals,
so `__name__`, `__file__` and the code size the script logs (its own bytes) are the wrapped file's. The file
stays printable ASCII Python. Two choices, both measured on the pr1493 bundle (issue #11):

- `codec`: "lzma" (LZMA1 in the `.lzma` container, `lzma.decompress` finds it: the standard library only),
  "brotli" (quality 11: ~3 % smaller on Python text), or "auto" (default): the smaller of the two, brotli only
  where the script's RECIPE enables a brotli artifact codec (it needs brotli anyway: no new dependency).
- `alphabet`: "base85" (the record's form: `base64.b85decode`), "printable" (default): the compressed bytes as
  one big number written in base 93 (printable ASCII less `"` and `\\`), 2 % fewer characters than base85,
  decoded by a one-line loop, or "latin1": the same number in base 252, every latin-1 character a triple-quoted literal
  holds as itself (all but NUL, CR, `"` and `\\`), in a file declared latin-1 (PEP 263 `#coding:l1`): 0.2 % over
  the compressed size, where base 93 adds 23 % and the bytes themselves with escapes added 1.2 % (the earlier
  form, still read by `unwrap`). Not printable ASCII: git and GitHub show such a file as binary.

`profile` ("full" or "record") is read by the bundler, not here: the recipe's choice of bundle profile
(`submissions.bundle`: what the record profile drops), so that `pgolf train`'s logged code size and `pgolf record`
follow it.
"""

from __future__ import annotations

import ast
import base64
import lzma
import math
import re
from dataclasses import dataclass, field
from typing import Any

from core.hookspecs import hookimpl
from core.registry import Plugin

WRAP_CODECS = ("auto", "lzma", "brotli")  # names unique in a bundle: its tree-shaker keeps names, not objects
WRAP_ALPHABETS = ("printable", "base85", "latin1")
BUNDLE_PROFILES = ("full", "record")  # submissions.bundle.PROFILES (read by `pgolf bundle`, `pgolf train`'s code size)
# The record's form (raw LZMA2, base85); kept for `unwrap` of old scripts.
B85_TEMPLATE = ('import lzma as L,base64 as B\n'
                'exec(L.decompress(B.b85decode("{}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]))\n')
PRINTABLE = " !#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~"  # no " \\
# How each alphabet's payload literal `P` becomes bytes, and how each codec's bytes become the source.
DECODE = {
    "base85": ("import base64 as B\n", 'B.b85decode("{}")'),
    "printable": ('n=0\nfor c in"{}":n=n*93+ord(c)-32-(c>\'"\')-(c>\'\\\\\')\n',
                  "n.to_bytes(n.bit_length()+7>>3,'big')[1:]"),
    "latin1": ('n=0\nfor c in"""{}""":n=n*252+ord(c)-1-(c>"\\r")-(c>\'"\')-(c>"\\\\")\n',
               "n.to_bytes(n.bit_length()+7>>3,'big')[1:]"),
}
# The PEP 263 line of a "latin1" wrapper (first line: the file's characters are its bytes; `l1` is latin-1).
LATIN1_CODING = "#coding:l1\n"
IMPORT = {"lzma": "import lzma as C\n", "brotli": "import brotli as C\n"}
# LZMA1 in the .lzma container: pb=0 (text is not 2^pb-aligned), bt3 match finder: 0.2 % smaller than the
# defaults on the pr1493 bundle; `lzma.decompress` reads the container without being told the format.
WRAP_LZMA_FILTER = {"id": lzma.FILTER_LZMA1, "pb": 0, "mf": lzma.MF_BT3}
# Plugins whose script needs brotli anyway (requirements.txt lists it): the RECIPE line of a bundle names them.
BROTLI_PLUGINS = {"brotli", "compress_auto"}
MAX_SOURCE_BYTES = 64 << 20  # what `unwrap` decompresses at most: a real train_gpt.py is well under 1 MB


@dataclass
class CodeWrapperConfig:
    preset: int = field(default=9, metadata={"help": "LZMA preset (0..9) of the wrapped code"})
    extreme: bool = field(default=True, metadata={"help": "add PRESET_EXTREME"})
    codec: str = field(default="auto", metadata={"help": "lzma, brotli, or auto: the smaller (brotli only "
                                                          "where a codec plugin needs brotli anyway)"})
    alphabet: str = field(default="printable", metadata={"help": "printable (base 93) or base85 (the record's)"})
    profile: str = field(default="full", metadata={"help": "the bundle's profile: full, or record (smaller: the "
                                                           "record's settings front end; submissions.bundle)"})


def to_numeral(data: bytes, digits: str) -> str:
    """`data` as a numeral over `digits` (its base: their count; a leading 1 byte keeps leading zero bytes)."""
    base = len(digits)
    n = int.from_bytes(b"\x01" + data, "big")
    width = math.ceil(n.bit_length() / math.log2(base)) + 1

    def numeral(n: int, k: int) -> str:  # divide and conquer: linear-time enough for 100 KB
        if k <= 64:
            out = []
            for _ in range(k):
                n, r = divmod(n, base)
                out.append(digits[r])
            return "".join(reversed(out))
        hi, lo = divmod(n, base ** (k // 2))
        return numeral(hi, k - k // 2) + numeral(lo, k // 2)

    return numeral(n, width).lstrip(digits[0])


def from_numeral(text: str, digits: str) -> bytes:
    """The bytes of a `to_numeral` numeral: 64-digit blocks joined pairwise, right-aligned, level by level (a
    digit-by-digit loop is quadratic: 6 s at 200 K characters)."""
    base, value = len(digits), {c: i for i, c in enumerate(digits)}
    try:
        ds = [value[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"payload character {exc.args[0]!r} is not a digit of its alphabet") from None
    first = len(ds) % 64 or 64  # the leftmost block is the short one: every block right of it is full

    def block(part: list[int]) -> int:
        n = 0
        for d in part:
            n = n * base + d
        return n

    blocks = [block(ds[:first])] + [block(ds[i:i + 64]) for i in range(first, len(ds), 64)]
    power = base ** 64
    while len(blocks) > 1:
        head = blocks[:len(blocks) % 2]  # an odd leftmost block waits a level: it is the high part anyway
        rest = blocks[len(head):]
        blocks = head + [hi * power + lo for hi, lo in zip(rest[::2], rest[1::2], strict=True)]
        power *= power
    n = blocks[0]
    return n.to_bytes((n.bit_length() + 7) // 8, "big")[1:]


def to_printable(data: bytes) -> str:
    """`data` as a base-93 numeral over `PRINTABLE`."""
    return to_numeral(data, PRINTABLE)


def from_printable(text: str) -> bytes:
    return from_numeral(text, PRINTABLE)


def latin1_digits() -> str:
    """The digits of a "latin1" payload, in order: the latin-1 characters a triple-quoted literal holds as themselves
    (a function, not a module constant: a bundled script that embeds this module computes nothing at import)."""
    return "".join(chr(i) for i in range(1, 256) if chr(i) not in '\r"\\')


def to_latin1(data: bytes) -> str:
    """`data` as a base-252 numeral over `latin1_digits()`: the body of a triple-quoted literal in a latin-1
    file."""
    return to_numeral(data, latin1_digits())


def bounded_decompress(data: bytes, codec: str, limit: int | None = None) -> bytes:
    """`data` decompressed ("brotli", "lzma" = any container `lzma.decompress` reads, "lzma2-raw"), refusing more
    than `limit` (default MAX_SOURCE_BYTES) bytes of output: a payload is read, not trusted (10 KB of LZMA can
    inflate to 70 MB)."""
    limit = MAX_SOURCE_BYTES if limit is None else limit
    if codec == "brotli":
        import brotli

        out = brotli.Decompressor().process(data, output_buffer_limit=limit + 1)
    else:
        raw = {"format": lzma.FORMAT_RAW, "filters": [{"id": lzma.FILTER_LZMA2}]} if codec == "lzma2-raw" else {}
        out = lzma.LZMADecompressor(**raw).decompress(data, max_length=limit + 1)
    if len(out) > limit:
        raise ValueError(f"the payload decompresses past {limit:,} bytes")
    return out


def compress_code(data: bytes, codec: str, preset: int = 9 | lzma.PRESET_EXTREME) -> bytes:
    if codec == "brotli":
        import brotli

        return brotli.compress(data, quality=11, lgwin=24)
    return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=[{**WRAP_LZMA_FILTER, "preset": preset}])


def wrap(source: str, codec: str = "lzma", alphabet: str = "printable", preset: int = 9 | lzma.PRESET_EXTREME) -> str:
    """The self-extracting form of `source`: `codec`'s bytes written in `alphabet`, decompressed and exec'd."""
    if alphabet == "base85" and codec == "lzma":  # the record's exact form
        return wrap_lzma_b85(source, preset)
    packed = compress_code(source.encode("utf-8"), codec, preset)
    payload = {"base85": lambda: base64.b85encode(packed).decode("ascii"), "printable": lambda: to_printable(packed),
               "latin1": lambda: to_latin1(packed)}[alphabet]()
    setup, expr = DECODE[alphabet]
    return (LATIN1_CODING if alphabet == "latin1" else "") + IMPORT[codec] + \
        setup.format(payload if alphabet != "base85" else "") + f"exec(C.decompress({expr.format(payload)}))\n"


def wrap_lzma_b85(source: str, preset: int = 9 | lzma.PRESET_EXTREME) -> str:
    """The record's two-line self-extracting form of `source` (raw LZMA2, base85: no quote or backslash in it)."""
    packed = lzma.compress(source.encode("utf-8"), format=lzma.FORMAT_RAW,
                           filters=[{"id": lzma.FILTER_LZMA2, "preset": preset}])
    return B85_TEMPLATE.format(base64.b85encode(packed).decode("ascii"))


def unwrap(wrapped: str) -> str:
    """The source inside a script `wrap` made (any codec and alphabet), read without executing it: for tests,
    the validator's static rules and `pgolf size`-style inspection. A latin-1 wrapper is read as its characters
    (`script_text` of its bytes)."""
    try:
        tree = ast.parse(wrapped)
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        payload = max(strings, key=len)
    except (SyntaxError, ValueError):
        raise ValueError("not a code_wrapper script (expected a compressed payload literal)") from None
    latin1 = wrapped.startswith(LATIN1_CODING)
    if latin1:
        wrapped = wrapped.removeprefix(LATIN1_CODING)
        old_form = '""".encode("l1")' in wrapped  # the bytes themselves, escaped (before session 24)
        data = payload.encode("latin-1") if old_form else from_numeral(payload, latin1_digits())
    elif "B.b85decode(" not in wrapped:
        data = from_printable(payload)
    else:
        data = base64.b85decode(payload)
    if wrapped.startswith("import brotli"):
        return bounded_decompress(data, "brotli").decode("utf-8")
    if not wrapped.startswith("import lzma"):
        raise ValueError("not a code_wrapper script (expected an lzma or brotli import)")
    return bounded_decompress(data, "lzma2-raw" if "FORMAT_RAW" in wrapped else "lzma").decode("utf-8")


def pgolf_payload(wrapped: str) -> tuple[str, bytes] | None:
    """(codec, compressed bytes) where `wrapped` is, character for character, a numeral form `wrap` writes (alphabet
    "printable" or "latin1", either codec) around a payload of that alphabet's digits; None for any other text. The
    validator reads such a script as exactly this decoder: a digit-only payload cannot close its literal."""
    for alphabet, digits in (("printable", PRINTABLE), ("latin1", latin1_digits())):
        setup, expr = DECODE[alphabet]
        before, after = setup.split("{}")
        for codec, line in IMPORT.items():
            head = (LATIN1_CODING if alphabet == "latin1" else "") + line + before
            tail = after + f"exec(C.decompress({expr}))\n"
            if len(wrapped) >= len(head) + len(tail) and wrapped.startswith(head) and wrapped.endswith(tail):
                return codec, from_numeral(wrapped[len(head):len(wrapped) - len(tail)], digits)
    return None


def unwrap_lzma_b85(wrapped: str) -> str:
    """The source inside a `wrap_lzma_b85` script."""
    if not wrapped.startswith("import lzma as L,base64 as B"):
        raise ValueError("not a code_wrapper script (expected the lzma/base85 two-line form)")
    return unwrap(wrapped)


def needs_brotli(source: str) -> bool:
    """Whether a bundled script's RECIPE enables a codec plugin that imports brotli (so may its wrapper)."""
    line = re.search(r"^RECIPE = (.*)$", source, re.M)
    try:
        plugins = ast.literal_eval(line.group(1)).get("plugins", []) if line else []
    except (ValueError, SyntaxError, AttributeError):
        return False
    return bool(BROTLI_PLUGINS & set(plugins))


def _brotli_available() -> bool:
    try:
        import brotli  # noqa: F401
    except ImportError:
        return False
    return True


def setting_errors(cfg: CodeWrapperConfig) -> list[str]:
    """The settings' errors, one line each. Checked at configuration time (`check_config`) and where they are
    used, not in the config class: the bundled script carries its settings but never wraps itself, and neither
    function is shipped in it."""
    errors = [] if 0 <= cfg.preset <= 9 else [f"code_wrapper.preset: expected 0..9, got {cfg.preset}"]
    if cfg.codec not in WRAP_CODECS:
        errors.append(f"code_wrapper.codec: expected one of {', '.join(WRAP_CODECS)}, got {cfg.codec!r}")
    if cfg.alphabet not in WRAP_ALPHABETS:
        errors.append(f"code_wrapper.alphabet: expected one of {', '.join(WRAP_ALPHABETS)}, got {cfg.alphabet!r}")
    return errors


class CodeWrapper(Plugin):
    name = "code_wrapper"
    family = "export"
    summary = "Ship train_gpt.py as a self-extracting compressed script (the counted code bytes shrink ~5x)."
    sources = ("openai/parameter-golf#1179", "openai/parameter-golf#1493")
    config = CodeWrapperConfig
    test_settings = {"code_wrapper": {"preset": 9}}

    @classmethod
    def check_config(cls, cfg: CodeWrapperConfig, core: Any) -> list[str]:
        # the profile is checked here only (the bundler reads it, `submissions.bundle.bundle_profile` checks it too):
        # a check in `setting_errors` would fold it into, and ship it with, every bundle of this plugin
        wrong = cfg.profile not in BUNDLE_PROFILES
        return setting_errors(cfg) + wrong * [f"code_wrapper.profile: expected one of {', '.join(BUNDLE_PROFILES)}, "
                                              f"got {cfg.profile!r}"]

    @hookimpl
    def pg_wrap_code(self, source: str) -> str:
        errors = setting_errors(self.cfg)  # again where they are used: a caller may skip the configuration check
        if errors:
            raise ValueError(errors[0])
        preset = self.cfg.preset | (lzma.PRESET_EXTREME if self.cfg.extreme else 0)
        codecs = [self.cfg.codec] if self.cfg.codec != "auto" else \
            ["lzma", "brotli"] if needs_brotli(source) and _brotli_available() else ["lzma"]
        return min((wrap(source, c, self.cfg.alphabet, preset) for c in codecs), key=len)
