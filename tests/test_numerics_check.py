"""benchmarks/numerics_check.py: the numerics probe that compares attention kernels with an fp32 reference."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "numerics_check.py"
SPEC = importlib.util.spec_from_file_location("numerics_check", SCRIPT)
ac = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ac)
SHAPE = (1, 4, 2, 32, 8)
CPU = torch.device("cpu")


def test_bf16_math_kernel_is_within_bf16_rounding_of_the_reference_in_both_layouts():
    ref = ac.reference(SHAPE, 5.25, CPU)
    for layout in ("bhtd", "bthd"):
        errors = ac.check(ac.sdpa_on(("MATH",)), ref, SHAPE, 5.25, CPU, layout)["errors"]
        assert set(errors) == {"out", "dq", "dk", "dv"}
        assert max(errors.values()) < 1e-2, (layout, errors)


def test_a_kernel_with_wrong_kv_head_grouping_is_caught():
    ref = ac.reference(SHAPE, 5.25, CPU)

    def wrong_groups(q, k, v):  # query head h reads kv head h % Hkv instead of h // (H / Hkv)
        rep = q.size(1) // k.size(1)
        return torch.nn.functional.scaled_dot_product_attention(q, k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1),
                                                                is_causal=True)
    errors = ac.check(wrong_groups, ref, SHAPE, 5.25, CPU, "bthd")["errors"]
    assert errors["out"] > 0.1 and errors["dk"] > 0.1, errors


def test_bad_shape_is_a_one_line_error(capsys):
    import pytest

    with pytest.raises(SystemExit):
        ac.main(["--shape", "1,4,3,32,8", "--device", "cpu"])
    assert "Hkv dividing H" in capsys.readouterr().err


def test_rms_norm_rows_report_every_scale_and_mode_near_the_fp32_reference_on_cpu():
    rows = ac.rms_norm_rows(CPU, dim=64, rows=32)
    assert [(r["rms"], r["mode"]) for r in rows] == [(s, m) for s in (0.005, 0.05, 1.0) for m in ("eager", "compile")]
    for r in rows:  # CPU computes bf16 RMSNorm in fp32 with fp32's eps: unit output RMS at every input scale
        assert abs(r["out_rms"] - 1.0) < 0.01 and max(r["errors"].values()) < 1e-2, r
