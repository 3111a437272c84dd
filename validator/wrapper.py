"""What a self-extracting train_gpt.py runs, read without executing it (THREATS.md §4).

A wrapped script `exec`s a compressed payload: the static rules must read the payload, and only where what they read
is exactly what runs. `decode_wrapper` recognises a wrapper by its syntax tree, never by a regular expression over the
text (a plain script that *builds* a wrapper holds `exec(L.decompress(` in a bytes literal: eleven merged records do),
and accepts two shapes, failing closed on anything else:

- pgolf's own numeral forms (`plugins.code_wrapper`, alphabets "printable" and "latin1"), matched character for
  character against the decoder `wrap` writes, the payload made only of its alphabet's digits;
- `exec(M.decompress(E(literal), **constants))`: M imported as lzma, zlib, bz2 or brotli, E a base64 decoder (or a
  bytes literal, or a string literal's `.encode(...)`), keyword values literals or M's constants — the records' LZMA
  and base85 forms and pgolf's base85 one.

A script with such an `exec` must be a wrapper and nothing else: imports, constant assignments and a docstring beside
its `exec` statements. Code next to the payload (a statement after the `exec`, a decoder that transforms the
decompressed bytes before running them, an `exec` inside a function) is a problem, reported, never a pass: the rules
would read the payload while the script runs something else. The imports of modules other than the decoders'
are kept after the payload, where the static rules see them (a helper module the wrapper imports).
"""

from __future__ import annotations

import ast
import base64
import bz2
import importlib
import io
import lzma
import tokenize
import zlib
from typing import Any

# The largest wrapped script the validator decodes: ~10x the largest record's wrapped code; decoding a base-93
# numeral is superlinear (about 5 s at this size), and a wrapper it cannot read is a FAIL, never a pass.
MAX_WRAPPED_CHARS = 400_000
DECOMPRESSORS = {"lzma", "zlib", "bz2", "brotli"}
TEXT_DECODERS = {"b85decode", "b64decode", "a85decode", "b32decode", "b16decode"}
DECODER_MODULES = DECOMPRESSORS | {"base64", "codecs", "__future__"}
# The keywords each decompress function may take (values: literals or the module's constants).
KEYWORDS = {"lzma": {"format", "filters", "memlimit"}, "zlib": {"wbits", "bufsize"}, "bz2": set(), "brotli": set()}


def decode_wrapper(src: str) -> tuple[str, bool, str | None]:
    """(source, wrapped, problem): the code a self-extracting script runs, at most MAX_WRAPPED_CHARS characters read
    and `plugins.code_wrapper.MAX_SOURCE_BYTES` decompressed; `problem` says why one that execs a compressed payload
    could not be read (then `source` is the script itself)."""
    if "exec" not in src or "decompress" not in src:
        return src, False, None
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):  # FILES.RUNS_IN_FOLDER reports it
        return src, False, None
    execs = [n for n in ast.walk(tree) if _is_exec(n) and any(_is_decompress(a) for a in ast.walk(n))]
    if not execs:
        return src, False, None
    if len(src) > MAX_WRAPPED_CHARS:
        return src, False, f"{len(src):,} characters (the validator decodes at most {MAX_WRAPPED_CHARS:,})"
    try:
        return _payloads(src, tree, execs), True, None
    except Exception as exc:  # noqa: BLE001 - any failure to read the payload is reported, one line
        return src, False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'undecodable'}"


def _is_exec(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "exec"


def _is_decompress(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "decompress")
        or (isinstance(node.func, ast.Name) and node.func.id == "decompress"))


def _payloads(src: str, tree: ast.Module, execs: list[ast.Call]) -> str:
    from plugins.code_wrapper import pgolf_payload

    form = pgolf_payload(src)
    if form is not None:
        return _source(_decompress("lzma" if form[0] == "lzma" else "brotli", form[1], {}))
    modules = {a.asname or a.name: a.name for st in tree.body if isinstance(st, ast.Import) for a in st.names}
    kept = []
    for st in tree.body:
        if isinstance(st, ast.Expr) and st.value in execs or _inert(st):
            if isinstance(st, (ast.Import, ast.ImportFrom)) and not _imports_decoders_only(st):
                kept.append(ast.unparse(st))
            continue
        raise ValueError(f"line {st.lineno} runs code outside the compressed payload: {ast.unparse(st)[:60]!r}")
    _decoders_bound_once(tree, execs, modules)
    sources = [_exec_payload(call, modules) for call in execs]
    return "\n".join(sources + kept) + ("\n" if kept else "")


def _source(data: bytes) -> str:
    """The payload's text as `exec(bytes)` reads it; a PEP 263 line naming another encoding than UTF-8 is refused
    (exec would decode it so, e.g. UTF-7, where `+AAo-` is a newline: one text for the validator, another that runs)."""
    encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    if encoding not in ("utf-8", "utf-8-sig"):
        raise ValueError(f"the payload declares the encoding {encoding!r} (only UTF-8 reads the same everywhere)")
    return data.decode(encoding)


def _decoders_bound_once(tree: ast.Module, execs: list[ast.Call], modules: dict[str, str]) -> None:
    """Every name the exec calls use is bound once, by its decoder's import: `from helper import L` after
    `import lzma as L` would make `L.decompress` something else at run time."""
    bound: dict[str, int] = {}
    for st in tree.body:
        names = [a.asname or a.name.split(".")[0] for a in st.names] if isinstance(st, (ast.Import, ast.ImportFrom)) \
            else [t.id for t in st.targets if isinstance(t, ast.Name)] if isinstance(st, ast.Assign) else []
        for n in names:
            bound[n] = bound.get(n, 0) + 1
    for name in {n.id for call in execs for n in ast.walk(call) if isinstance(n, ast.Name) and n.id != "exec"}:
        if bound.get(name, 0) != 1 or name not in modules:
            raise ValueError(f"{name!r} is bound {bound.get(name, 0)} times, not once by its decoder's import")


def _inert(st: ast.stmt) -> bool:
    """A wrapper's own statement: an import, a docstring, a constant assigned to a name."""
    if isinstance(st, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(st, ast.Expr):
        return isinstance(st.value, ast.Constant)
    if isinstance(st, ast.Assign):
        return isinstance(st.value, ast.Constant) and all(isinstance(t, ast.Name) for t in st.targets)
    return False


def _imports_decoders_only(st: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(st, ast.ImportFrom):
        return st.level == 0 and st.module in DECODER_MODULES
    return all(a.name in DECODER_MODULES for a in st.names)


def _exec_payload(call: ast.Call, modules: dict[str, str]) -> str:
    """The source `exec(M.decompress(E(literal), **kw))` runs; ValueError for any other shape."""
    if len(call.args) != 1 or call.keywords:
        raise ValueError("exec() is given more than the decompressed payload")
    inner = call.args[0]
    module = _module(inner.func.value, modules) if _is_decompress(inner) and isinstance(inner.func, ast.Attribute) \
        else None
    if module not in DECOMPRESSORS or len(inner.args) != 1:
        raise ValueError(f"exec() runs {ast.unparse(inner)[:60]!r}, not M.decompress(payload) with M a decompressor")
    kwargs = {k.arg: _constant(k.value, modules) for k in inner.keywords}
    if None in kwargs or not set(kwargs) <= KEYWORDS[module]:
        raise ValueError(f"{module}.decompress() takes keywords {sorted(map(str, kwargs))}, not among "
                         f"{sorted(KEYWORDS[module])}")
    return _source(_decompress(module, _literal_bytes(inner.args[0], modules), kwargs))


def _module(node: ast.AST, modules: dict[str, str]) -> str | None:
    return modules.get(node.id) if isinstance(node, ast.Name) else None


def _literal_bytes(node: ast.AST, modules: dict[str, str]) -> bytes:
    """The bytes of a payload expression: a bytes literal, base64.<codec>(literal), or "literal".encode(codec)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and len(node.args) == 1 \
            and not node.keywords and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        if _module(node.func.value, modules) == "base64" and node.func.attr in TEXT_DECODERS \
                and isinstance(value, (str, bytes)):
            return getattr(base64, node.func.attr)(value)
        text = node.func.value
        if node.func.attr == "encode" and isinstance(text, ast.Constant) and isinstance(text.value, str) \
                and isinstance(value, str):
            return text.value.encode(value)
    raise ValueError(f"the payload {ast.unparse(node)[:60]!r} is not a literal the validator can decode")


def _constant(node: ast.AST, modules: dict[str, str]) -> Any:
    """A keyword value: a literal, a decompressor module's UPPER_CASE constant, or lists/tuples/dicts of those."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Attribute) and _module(node.value, modules) in DECOMPRESSORS and node.attr.isupper():
        return getattr(importlib.import_module(_module(node.value, modules)), node.attr)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_constant(e, modules) for e in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_constant(k, modules): _constant(v, modules) for k, v in zip(node.keys, node.values, strict=True)}
    raise ValueError(f"keyword value {ast.unparse(node)[:40]!r} is not a constant")


def _decompress(module: str, data: bytes, kwargs: dict[str, Any]) -> bytes:
    """`module.decompress(data, **kwargs)`, refusing more than MAX_SOURCE_BYTES of output (a payload is read, not
    trusted: 10 KB of LZMA can inflate to 70 MB)."""
    import plugins.code_wrapper as cw

    limit = cw.MAX_SOURCE_BYTES
    if module == "brotli":
        return cw.bounded_decompress(data, "brotli", limit)
    if module == "lzma":
        kwargs.pop("memlimit", None)
        out = lzma.LZMADecompressor(**kwargs).decompress(data, max_length=limit + 1)
    elif module == "zlib":
        out = zlib.decompressobj(kwargs.get("wbits", zlib.MAX_WBITS)).decompress(data, limit + 1)
    else:
        out = bz2.BZ2Decompressor().decompress(data, max_length=limit + 1)
    if len(out) > limit:
        raise ValueError(f"the payload decompresses past {limit:,} bytes")
    return out
