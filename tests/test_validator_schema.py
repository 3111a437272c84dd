"""submission.json schemas: compat accepts merged-style files, strict v1 rejects missing/out-of-range fields."""

from __future__ import annotations

import pytest

from validator.rules.schema import load_schema, schema_errors

MERGED_STYLE = [
    {"author": "A", "github_id": "a-b", "name": "Naive Baseline", "blurb": "x", "date": "2026-03-17T00:00:00Z",
     "val_loss": 2.0727, "val_bpb": 1.2244, "bytes_total": 15863489, "bytes_code": 47642},
    {"author": "B", "github_id": "bb", "name": "Record", "date": "2026-04-09", "track": "10min_16mb",
     "val_bpb": 1.0798, "seeds": {"42": {"val_bpb": 1.0797, "artifact_bytes": 15990000}},
     "p_value": "<0.001", "eval_time_seconds": [410.1, 409.2], "compliance": {"train_under_600s": True}},
    {"run_name": "MLP3x", "author": "C", "github_id": "c", "date": "2026-03-19", "val_bpb": 1.15015359,
     "seed_results": {"1337": {"val_bpb": 1.1501, "steps": 7000, "train_time_s": 600.0}}},
    {"author": "D", "name": "OvertoneInit", "date": "2026-03-19", "mean_val_bpb": 1.1748},
    {"author": "", "github_id": "", "name": "SwiGLU", "date": "2026-03-19", "val_bpb": 1.23, "val_loss": None,
     "bytes_code": None, "track": "non-record-unlimited-compute-16mb"},
    {"name": "DG", "author": "E", "github_id": "e", "date": "2026-03-23", "val_bpb": 1.3, "bytes_total": 16638468},
]


@pytest.mark.parametrize("doc", MERGED_STYLE)
def test_compat_accepts_merged_style(doc: dict) -> None:
    assert schema_errors(doc, strict=False) == []


@pytest.mark.parametrize("doc", [{}, {"val_bpb": "1.1"}, {"val_bpb": 1.1, "seeds": "42"},
                                 {"val_bpb": 1.1, "seed_results": {"abc": {}}}, {"val_bpb": 1.1, "date": "May 1"},
                                 {"val_bpb": 1.1, "track": "open"}])
def test_compat_rejects(doc: dict) -> None:
    assert schema_errors(doc, strict=False)


def test_v1_requires_fields() -> None:
    full = {"author": "A", "github_id": "a", "name": "n", "date": "2026-05-01", "val_bpb": 1.06,
            "bytes_total": 15_900_000}
    assert schema_errors(full, strict=True) == []
    for key in ("author", "github_id", "name", "date", "val_bpb", "bytes_total"):
        doc = {k: v for k, v in full.items() if k != key}
        errs = schema_errors(doc, strict=True)
        assert any(key in msg for _, msg in errs), (key, errs)
    assert schema_errors(full | {"bytes_total": 16_000_001}, strict=True)
    assert schema_errors(full | {"author": ""}, strict=True)
    assert schema_errors(full | {"val_bpb": "1.0"}, strict=True)  # compat part applies via $ref


def test_schemas_are_draft_2020_12() -> None:
    for name in ("submission.compat.schema.json", "submission.v1.schema.json"):
        assert load_schema(name)["$schema"].endswith("2020-12/schema")
