"""Rules pgolf adds to `pgolf validate` and `pgolf record` (their extra rules; torch-free): a run's scores are
finite, its artifact is whole, it finished, and the graph modes its log declares really switched on.

RUN.FINITE    every score in metrics.json / submission.json / the logs' final lines is a finite number
RUN.ARTIFACT  final_model.ptz: pgolf header, payload length, raw_sha256 of the decompressed payload, and the
              size metrics.json and the log report (no torch: header and codecs read directly); a header with no
              payload (no stream, an empty one) carries no model; a stream its codec refuses is broken; a bare
              artifact (a record-profile script's, no header): its size in metrics.json, a codec stream of a torch
              archive
RUN.MODEL     final_model.ptz holds the model its config.json builds: every tensor, each of its shape (an edited
              config.json, its core removed or another vocabulary, passed validate and `pgolf record` and failed only
              at `pgolf eval`); builds the model on the CPU, so it needs torch (skipped without)
RUN.STATUS    status.json (when there is one) says finished; train.log holds exactly one run
RUN.MODES     every mode of a `modes:` line (start fraction < 1) has its `mode:<name> on step:` line, and
              `timed_loop_recompiles` is 0 (a technique switched mid-run was not a dead flag; graphs were warmed)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from validator.rules.base import ERROR, FAIL, PASS, SKIP, WARN, FolderContext, Rule
from validator.untrusted_json import JSON_ERRORS, parse_json

MAGIC = b"PGOLF\x00"
PREFIX = struct.Struct("<HI")
SCORE_KEYS = ("val_bpb", "val_loss", "val_bpb_std")
FINAL_LINE = re.compile(r"^final_\S+ val_loss:([^\s,]+) val_bpb:([^\s,]+)", re.M)


def _finite(value: Any) -> bool:
    """False only for a non-finite number (NaN, ±inf, as a number or a string); other types are the schema's."""
    if isinstance(value, bool):
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _json(path: Path) -> tuple[Any, str | None]:
    """(value, None) or (None, why) — NaN / Infinity are errors, not numbers."""
    def bad(name: str) -> Any:
        raise ValueError(f"non-finite value {name}")

    try:
        return parse_json(path.read_text(encoding="utf-8-sig"), parse_constant=bad), None  # a BOM is allowed
    except (OSError, *JSON_ERRORS) as exc:
        return None, str(exc)


def _scores(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in SCORE_KEYS and v is not None:
                out.append((prefix + k, v))
            elif isinstance(v, dict):
                out += _scores(v, f"{prefix}{k}.")
    return out


def check_finite(ctx: FolderContext) -> list[Any]:
    r = RULES[0]
    out, checked = [], 0
    for name in ("metrics.json", "submission.json"):
        path = ctx.root / name
        if not path.is_file():
            continue
        data, why = _json(path)
        if why is not None:
            out.append(r.finding(FAIL, f"not valid JSON ({why})", file=name))
            continue
        for key, value in _scores(data):
            checked += 1
            if not _finite(value):
                out.append(r.finding(FAIL, f"{key} is {value!r}, expected a finite number", file=name,
                                     field=key, found=value))
    for log in sorted(ctx.root.glob("*.log")):
        text = log.read_text(encoding="utf-8", errors="replace")
        for m in FINAL_LINE.finditer(text):
            for value in m.groups():
                checked += 1
                if not _finite(value):
                    out.append(r.finding(FAIL, f"final score {value!r} is not a finite number",
                                         file=log.name, found=value))
    if out:
        return out[:5]
    return [r.finding(PASS, f"{checked} scores finite")] if checked else [r.finding(SKIP, "no scores found")]


def _decompress(codec: str, payload: bytes) -> bytes | None:
    import lzma
    import zlib

    try:
        if codec == "zlib":
            return zlib.decompress(payload)
        if codec == "lzma":
            return lzma.decompress(payload)
        if codec == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        if codec == "brotli":
            import brotli

            return brotli.decompress(payload)
    except ImportError:
        return None
    return None


def check_artifact(ctx: FolderContext) -> list[Any]:
    r = RULES[1]
    if not ctx.is_run_dir:
        return [r.finding(SKIP, "not a pgolf run directory")]
    path = ctx.root / "final_model.ptz"
    if not path.is_file():
        return [r.finding(FAIL, "missing (the run did not export)", file=path.name)]
    blob = path.read_bytes()
    start = len(MAGIC) + PREFIX.size
    if not blob.startswith(MAGIC):
        return _check_bare(r, ctx, path, blob)
    if len(blob) < start:
        return [r.finding(FAIL, "not a pgolf artifact (bad magic or truncated header)",
                          file=path.name)]
    _, hlen = PREFIX.unpack_from(blob, len(MAGIC))
    try:
        header = json.loads(blob[start:start + hlen].decode("utf-8"))
        want = int(header["payload_bytes"])
    except (*JSON_ERRORS, KeyError, TypeError):
        return [r.finding(FAIL, "truncated or corrupt header", file=path.name)]
    payload = blob[start + hlen:]
    if len(payload) != want:
        return [r.finding(FAIL, f"payload is {len(payload):,} bytes, its header says {want:,} "
                          "(truncated or padded)", file=path.name, expected=want, found=len(payload))]
    metrics, _ = _json(ctx.root / "metrics.json")
    logged = (metrics or {}).get("model_bytes") if isinstance(metrics, dict) else None
    if isinstance(logged, int) and logged != len(blob):
        return [r.finding(FAIL, f"{len(blob):,} bytes, metrics.json model_bytes says {logged:,}",
                          file=path.name, expected=logged, found=len(blob))]
    streams = header.get("streams") if header.get("format", 1) >= 2 else [
        {"codec": header.get("codec"), "payload_bytes": want, "raw_sha256": header.get("raw_sha256")}]
    if not _streams_ok(streams) or sum(st["payload_bytes"] for st in streams) != want:
        return [r.finding(FAIL, "corrupt header (expected a list of streams, each with a codec and a payload size, "
                          "adding up to payload_bytes)", file=path.name)]
    if want <= 0 or not all(st["payload_bytes"] > 0 for st in streams):
        # a header and no model: an artifact any folder can fake in 50 bytes; every codec writes bytes
        return [r.finding(FAIL, f"carries no model: {len(streams)} stream(s), {want:,} payload bytes (a pgolf "
                          "artifact holds the compressed weights after its header)", file=path.name,
                          expected="> 0 payload bytes in every stream", found=want)]
    offset, verified = 0, 0
    for i, st in enumerate(streams):
        chunk = payload[offset:offset + st["payload_bytes"]]
        offset += st["payload_bytes"]
        if st.get("codec_params"):  # e.g. a byte shuffle: the run's codec plugin checks these on load
            continue
        try:
            raw = _decompress(str(st.get("codec")), chunk)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: a stream its codec refuses is no model
            return [r.finding(FAIL, f"stream {i}: its {st.get('codec')} payload does not decompress "
                              f"({type(exc).__name__})", file=path.name)]
        if raw is None:
            continue
        if hashlib.sha256(raw).hexdigest() != st.get("raw_sha256"):
            return [r.finding(FAIL, f"stream {i}: decompressed payload does not match its raw_sha256",
                              file=path.name)]
        verified += 1
    if not verified:
        return [r.finding(PASS, f"artifact whole ({len(blob):,} bytes; codecs not checked here)")]
    return [r.finding(PASS, f"artifact whole: {len(blob):,} bytes, {verified}/{len(streams)} stream checksums "
                            "verified")]


def _streams_ok(streams: Any) -> bool:
    """A non-empty list of stream entries, each a dict with a codec name and an integer payload size."""
    return isinstance(streams, list) and bool(streams) and all(
        isinstance(st, dict) and isinstance(st.get("codec"), str) and isinstance(st.get("payload_bytes"), int)
        and not isinstance(st.get("payload_bytes"), bool) and st["payload_bytes"] >= 0 for st in streams)


def _check_bare(r: Rule, ctx: FolderContext, path: Path, blob: bytes) -> list[Any]:
    """A BARE artifact (a record-profile script's: one codec's stream of torch.save bytes, no pgolf header): whole
    when a codec decompresses it to a torch archive (after its byte-shuffle prefix, if any) and metrics.json's
    model_bytes is its size."""
    metrics, _ = _json(ctx.root / "metrics.json")
    logged = (metrics or {}).get("model_bytes") if isinstance(metrics, dict) else None
    if logged != len(blob):
        return [r.finding(FAIL, f"not a pgolf artifact (no header) and metrics.json model_bytes ({logged}) is not its "
                                f"size ({len(blob):,} bytes)", file=path.name, expected=logged, found=len(blob))]
    for codec in ("brotli", "lzma", "zstd", "zlib"):
        try:
            raw = _decompress(codec, blob)
        except Exception:  # noqa: BLE001 - not this codec's stream
            continue
        if raw is not None and raw.startswith(b"BSHF") and len(raw) > 5:  # undo the byte shuffle here, as
            # plugins.lib.codecs.byte_unshuffle does: that module imports torch, and static validation must not
            stride = raw[4]
            body = raw[5:]
            sizes = [len(body) // stride + (1 if i < len(body) % stride else 0) for i in range(stride)]
            out, off = bytearray(len(body)), 0
            for i, n in enumerate(sizes):
                out[i::stride], off = body[off:off + n], off + n
            raw = bytes(out)
        if raw is not None and raw.startswith(b"PK"):
            return [r.finding(PASS, f"bare artifact whole: {len(blob):,} bytes, {codec} stream of a torch archive")]
    return [r.finding(FAIL, "not a pgolf artifact (no header) and no codec here decompresses it to a torch archive",
                      file=path.name)]


def check_model(ctx: FolderContext) -> list[Any]:
    r = RULES[2]
    if not ctx.is_run_dir or not (ctx.root / "final_model.ptz").is_file():
        return [r.finding(SKIP, "no run directory artifact (RUN.ARTIFACT)")]
    try:
        from core.config import ConfigError
        from core.registry import PluginError
        from pgolf.evaluate import run_dir_mismatch
    except ImportError as exc:  # a validator without torch
        return [r.finding(SKIP, f"needs torch to build the model ({exc})")]
    try:
        what = run_dir_mismatch(ctx.root, ctx.plugin_files)
    except (ConfigError, PluginError, ValueError, RuntimeError) as exc:  # ArtifactError is a ValueError
        text = "; ".join(exc.errors) if isinstance(exc, ConfigError) else str(exc)
        return [r.finding(FAIL, f"the artifact does not load into config.json's model: {' '.join(text.split())[:300]}",
                          file="final_model.ptz")]
    if what:
        return [r.finding(FAIL, f"not the model config.json describes: {what}", file="final_model.ptz")]
    return [r.finding(PASS, "every tensor of config.json's model, each of its shape")]


def check_status(ctx: FolderContext) -> list[Any]:
    r = RULES[3]
    if not ctx.is_run_dir:
        return [r.finding(SKIP, "not a pgolf run directory")]
    out = []
    status = ctx.root / "status.json"
    if status.is_file():
        data, why = _json(status)
        state = data.get("status") if isinstance(data, dict) else None
        if state != "finished":
            out.append(r.finding(FAIL, f"the run is {state or why!r}, not finished", file=status.name,
                                 expected="finished", found=state))
    log = ctx.root / "train.log"
    if log.is_file():
        try:
            text = log.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [*out, r.finding(FAIL, f"unreadable ({exc})", file=log.name)]
        n = len(re.findall(r"^model_params:", text, re.M))
        if n > 1:
            out.append(r.finding(FAIL, f"holds {n} runs (a run directory holds one run)", file=log.name,
                                 expected=1, found=n))
    return out or [r.finding(PASS, "one finished run")]


MODES_LINE = re.compile(r"^modes:(\S+)$", re.M)


def check_modes(ctx: FolderContext) -> list[Any]:
    """Each graph mode a pgolf log declares (`modes:name@frac,…`, e.g. depth recurrence) with a start fraction
    below 1 switched on in the timed loop (`mode:name on step:N`), and the loop recompiled nothing: the
    technique was not a dead flag and its graphs were warmed."""
    r = RULES[4]
    out = []
    for log in ctx.logs:
        try:
            text = log.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        declared = MODES_LINE.search(text)
        if not declared:
            continue
        modes = [m.split("@") for m in declared.group(1).split(",") if "@" in m]
        never = [name for name, frac in modes if _float(frac) < 1.0 and f"mode:{name} on step:" not in text]
        recompiles = re.search(r"^timed_loop_recompiles:(\d+)$", text, re.M)
        if never:
            out.append(r.finding(WARN, f"declared mode(s) {', '.join(never)} never switched on in the timed loop",
                                 file=log.path.name))
        elif recompiles and int(recompiles.group(1)) > 0:
            n = int(recompiles.group(1))
            out.append(r.finding(WARN, f"the timed loop recompiled {n} time(s): a mode was not warmed",
                                 file=log.path.name, expected=0, found=n))
        else:
            out.append(r.finding(PASS, "every declared mode switched on, no recompile in the timed loop",
                                 file=log.path.name))
    return out or [r.finding(SKIP, "no log declares graph modes")]


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


RULES = [
    Rule("RUN.FINITE", "scores are finite numbers", "pgolf: a diverged run is no result", ERROR, check_finite),
    Rule("RUN.ARTIFACT", "the run's artifact is whole", "pgolf: final_model.ptz header and checksum", ERROR,
         check_artifact),
    Rule("RUN.MODEL", "the artifact is the model config.json describes", "pgolf: tensors and shapes vs config.json",
         ERROR, check_model),
    Rule("RUN.STATUS", "the run finished, one run per log", "pgolf: status.json, train.log", ERROR, check_status),
    Rule("RUN.MODES", "declared graph modes switched on, no recompile", "pgolf: modes/mode/timed_loop lines",
         WARN, check_modes),
]
