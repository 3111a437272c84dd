"""`pgolf size RUN_DIR|RECORDS_DIR`: the artifact's size budget and a per-tensor-family breakdown (issue #3;
the 16,000,000-byte decimal cap of the challenge rules, int6/int8 families as in PR #315).

A run directory: code bytes from its metrics.json, model bytes = the artifact file's length. A records
folder (it holds train_gpt.py): code bytes = train_gpt.py's bytes; model bytes from a pgolf artifact when
one is there, else from the challenge's own artifact file (`*.ptz`: size only), else from its logs'
`Serialized model <kind>: N bytes` lines (the largest over the seeds) — the summary says which. Per family
it shows the tensors' original bytes, the quantized payload bytes and an estimate of the compressed share:
each family's records serialized and compressed alone with the artifact's codec (the shares do not add up
exactly to the payload, which is compressed as one stream). Families need a pgolf artifact.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from validator.untrusted_json import run_dir_metrics

if TYPE_CHECKING:  # torch and the export module load only when a command needs them (fast --help)
    from core import export as ex

ARTIFACT_NAME = "final_model.ptz"
SIZE_CAP = 16_000_000


def size_report(code_bytes: int, model_bytes: int, cap: int = SIZE_CAP) -> dict[str, Any]:
    total = code_bytes + model_bytes
    return {"code_bytes": code_bytes, "model_bytes": model_bytes, "total": total, "cap": cap,
            "headroom": cap - total, "fits": total <= cap}


def _original_bytes(q: ex.QTensor) -> int:
    import torch

    from core import export as ex

    numel = 1
    for s in q.shape:
        numel *= int(s)
    try:
        itemsize = torch.empty((), dtype=q.torch_dtype()).element_size()
    except ex.ArtifactError:
        itemsize = q.data.element_size()
    return numel * itemsize


def family_breakdown(records: dict[str, ex.QTensor], codec: ex.Codec | None) -> dict[str, dict[str, Any]]:
    """family -> tensors, original bytes, payload bytes, schemes and (with a codec) compressed estimate."""
    import torch

    from plugins.lib.quant import tensor_family

    groups: dict[str, dict[str, ex.QTensor]] = {}
    for name, q in records.items():
        groups.setdefault(tensor_family(name), {})[name] = q
    out: dict[str, dict[str, Any]] = {}
    for family in sorted(groups, key=lambda f: -sum(q.payload_bytes for q in groups[f].values())):
        recs = groups[family]
        schemes: dict[str, int] = {}
        for q in recs.values():
            label = q.scheme if "bits" not in q.meta else f"int{q.meta['bits']}_{q.scheme.rsplit('_', 1)[-1]}"
            schemes[label] = schemes.get(label, 0) + 1
        row: dict[str, Any] = {"tensors": len(recs), "original_bytes": sum(_original_bytes(q) for q in recs.values()),
                               "payload_bytes": sum(q.payload_bytes for q in recs.values()), "schemes": schemes}
        if codec is not None:
            buf = io.BytesIO()
            torch.save({n: q.to_state() for n, q in recs.items()}, buf)
            row["compressed_bytes"] = len(codec.compress(buf.getvalue()))
        out[family] = row
    return out


def size_summary(path: str | Path, estimate: bool = True) -> dict[str, Any]:
    """Everything `pgolf size` prints, as a dict; raises ArtifactError / FileNotFoundError clearly."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or records folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected a run directory or a records folder)")
    script = path / "train_gpt.py"
    artifact = path / ARTIFACT_NAME
    if script.is_file():
        return records_summary(path, script, artifact, estimate)
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact}: no artifact (was the run exported?) and no train_gpt.py "
                                f"(not a records folder either)")
    code_bytes: int | None = None
    metrics = path / "metrics.json"
    if metrics.exists():  # its figures checked as every reader checks them (a negative or fractional code_bytes)
        code_bytes = run_dir_metrics(path, required=()).get("code_bytes")
    report = artifact_summary(artifact, code_bytes or 0, estimate)
    report.update(code_bytes=code_bytes, code_source=f"{metrics.name} code_bytes")
    return report


def quantizer_label(header_quantizer: Any, records: dict[str, Any]) -> str:
    """The header's quantizer, or what the tensors really are when none of them was quantized."""
    if records and all(q.scheme == "passthrough" for q in records.values()):
        return "none (every tensor passthrough)"
    return str(header_quantizer)


def artifact_summary(artifact: Path, code_bytes: int, estimate: bool) -> dict[str, Any]:
    from plugins.lib import codecs, decoders

    records, header = decoders.read_artifact(artifact)
    codec = codecs.CODECS[header["codec"]]() if estimate and header.get("codec") in codecs.CODECS else None
    report = size_report(code_bytes, artifact.stat().st_size)
    report.update(artifact=str(artifact), codec=header.get("codec"),
                  quantizer=quantizer_label(header.get("quantizer"), records),
                  raw_bytes=header["raw_bytes"], families=family_breakdown(records, codec),
                  model_source=f"artifact {artifact.name}")
    return report


def records_summary(folder: Path, script: Path, artifact: Path, estimate: bool) -> dict[str, Any]:
    """A records folder: code = train_gpt.py; model = pgolf artifact, else a *.ptz file, else the logs."""

    code_bytes = script.stat().st_size
    if artifact.is_file():
        report = artifact_summary(artifact, code_bytes, estimate)
    else:
        blobs = sorted(folder.glob("*.ptz"))
        if blobs:
            report = size_report(code_bytes, blobs[0].stat().st_size)
            report.update(artifact=str(blobs[0]), model_source=f"file {blobs[0].name} (not a pgolf artifact: "
                                                              f"no breakdown)")
        else:
            from validator.logs import parse_folder

            parsed = parse_folder(folder)
            logs = [(lg.path, lg.model_bytes) for lg in parsed if lg.model_bytes is not None]
            if not logs:
                raise FileNotFoundError(f"{folder}: no artifact and no log with a 'Serialized model <kind>: N "
                                        f"bytes' line")
            worst = max(logs, key=lambda pm: pm[1])
            unread = sorted(lg.path.name for lg in parsed if lg.model_bytes is None)  # said, never skipped silently
            report = size_report(code_bytes, worst[1])
            report.update(artifact=None, model_source=f"logs (largest of {len(logs)}: {Path(worst[0]).name}"
                          + (f"; no size line in {', '.join(unread)}" if unread else "") + ")",
                          log_model_bytes={Path(p).name: n for p, n in logs})
        report.update(codec=None, quantizer=None, raw_bytes=None, families={})
    report.update(code_bytes=code_bytes, code_source=script.name)
    return report


def format_summary(s: dict[str, Any]) -> str:
    code = "unknown (no metrics.json code_bytes; counted as 0)" if s["code_bytes"] is None else \
        f"{s['code_bytes']:,}  ({s['code_source']})"
    raw = f"  (serialized {s['raw_bytes']:,} before compression)" if s.get("raw_bytes") else ""
    lines = []
    if s.get("codec"):
        lines.append(f"artifact     {s['artifact']}  (codec {s['codec']}, quantizer {s['quantizer']})")
    lines += [
        f"code bytes   {code}",
        f"model bytes  {s['model_bytes']:,}  (from {s['model_source']}){raw}",
        f"total        {s['total']:,} of {s['cap']:,}  {'fits' if s['fits'] else 'OVER'}",
        f"headroom     {s['headroom']:,}",
    ]
    for name, n in s.get("log_model_bytes", {}).items():
        lines.append(f"  log {name}: model {n:,} bytes")
    if not s["families"]:
        return "\n".join(lines)
    lines += ["", f"{'family':<8} {'tensors':>7} {'original':>12} {'quantized':>12} {'compressed~':>12}  schemes"]
    for fam, row in s["families"].items():
        comp = f"{row['compressed_bytes']:,}" if "compressed_bytes" in row else "-"
        schemes = ", ".join(f"{k}×{v}" for k, v in sorted(row["schemes"].items()))
        lines.append(f"{fam:<8} {row['tensors']:>7} {row['original_bytes']:>12,} {row['payload_bytes']:>12,} "
                     f"{comp:>12}  {schemes}")
    return "\n".join(lines)


def run_size(args: argparse.Namespace) -> int:
    from core import export as ex

    try:
        summary = size_summary(args.run_dir, estimate=not getattr(args, "no_estimate", False))
    except (ex.ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"pgolf size: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if getattr(args, "json", False) else format_summary(summary))
    return 0
