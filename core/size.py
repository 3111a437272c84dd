"""`pgolf size RUN_DIR`: the artifact's size budget and a per-tensor-family breakdown (issue #3; the
16,000,000-byte decimal cap of the challenge rules, int6/int8 families as in PR #315).

Code bytes come from the run's metrics.json; model bytes are the artifact file's length. Per family it
shows the tensors' original bytes, the quantized payload bytes and an estimate of the compressed share:
each family's records serialized and compressed alone with the artifact's codec (the shares do not add
up exactly to the payload, which is compressed as one stream).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from core import export as ex

ARTIFACT_NAME = "final_model.ptz"


def _original_bytes(q: ex.QTensor) -> int:
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
    groups: dict[str, dict[str, ex.QTensor]] = {}
    for name, q in records.items():
        groups.setdefault(ex.tensor_family(name), {})[name] = q
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


def size_summary(run_dir: str | Path, estimate: bool = True) -> dict[str, Any]:
    """Everything `pgolf size` prints, as a dict; raises ArtifactError / FileNotFoundError clearly."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run directory")
    path = run_dir / ARTIFACT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no artifact (was the run exported?)")
    records, header = ex.read_artifact(path)
    code_bytes: int | None = None
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            value = json.loads(metrics.read_text()).get("code_bytes")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{metrics}: not valid metrics JSON ({exc})") from exc
        code_bytes = int(value) if isinstance(value, int) else None
    model_bytes = path.stat().st_size
    codec = ex.CODECS[header["codec"]]() if estimate and header.get("codec") in ex.CODECS else None
    report = ex.size_report(code_bytes or 0, model_bytes)
    report.update(code_bytes=code_bytes, artifact=str(path), codec=header.get("codec"),
                  quantizer=header.get("quantizer"), raw_bytes=header["raw_bytes"],
                  families=family_breakdown(records, codec))
    return report


def format_summary(s: dict[str, Any]) -> str:
    code = "unknown (no metrics.json code_bytes; counted as 0)" if s["code_bytes"] is None else f"{s['code_bytes']:,}"
    lines = [
        f"artifact     {s['artifact']}  (codec {s['codec']}, quantizer {s['quantizer']})",
        f"code bytes   {code}",
        f"model bytes  {s['model_bytes']:,}  (serialized {s['raw_bytes']:,} before compression)",
        f"total        {s['total']:,} of {s['cap']:,}  {'fits' if s['fits'] else 'OVER'}",
        f"headroom     {s['headroom']:,}",
        "",
        f"{'family':<8} {'tensors':>7} {'original':>12} {'quantized':>12} {'compressed~':>12}  schemes",
    ]
    for fam, row in s["families"].items():
        comp = f"{row['compressed_bytes']:,}" if "compressed_bytes" in row else "-"
        schemes = ", ".join(f"{k}×{v}" for k, v in sorted(row["schemes"].items()))
        lines.append(f"{fam:<8} {row['tensors']:>7} {row['original_bytes']:>12,} {row['payload_bytes']:>12,} "
                     f"{comp:>12}  {schemes}")
    return "\n".join(lines)


def add_size_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("size", help="artifact size budget and per-family breakdown of a run directory")
    p.add_argument("run_dir", help="a run directory holding final_model.ptz and metrics.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-estimate", action="store_true", help="skip the per-family compression estimate")
    p.set_defaults(func=run_size)
    return p


def run_size(args: argparse.Namespace) -> int:
    try:
        summary = size_summary(args.run_dir, estimate=not getattr(args, "no_estimate", False))
    except (ex.ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"pgolf size: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if getattr(args, "json", False) else format_summary(summary))
    return 0
