"""polar_express: the record's coefficient table, a lower orthogonalisation error than NS5 at five steps, and
Muon (the core's and muon_eq_r's) running that schedule."""

from __future__ import annotations

import pytest
import torch

from core.config import ConfigError, resolve
from core.optim import Muon, zeropower_via_newtonschulz5
from core.registry import Registry
from core.train import setup
from plugins.polar_express import PE_COEFFS

REGISTRY = Registry()

# PR #1855 record (2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611) train_gpt.py `_PE_COEFFS`.
RECORD_TABLE = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def test_coefficient_schedule_is_the_records_table():
    assert [tuple(c) for c in PE_COEFFS] == RECORD_TABLE


def polar_error(X: torch.Tensor, G: torch.Tensor) -> float:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return float((X.double() - U @ Vh).norm() / (U @ Vh).norm())


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (96, 96)])
def test_polar_express_orthogonalises_better_than_ns5_at_five_steps(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ns5 = polar_error(zeropower_via_newtonschulz5(G, steps=5), G)
    pe = polar_error(zeropower_via_newtonschulz5(G, steps=5, coeffs=PE_COEFFS), G)
    assert pe < 0.75 * ns5, (pe, ns5)  # about half the NS5 error on Gaussian matrices


def reference_pe_step(p, g, lr, momentum):
    """Independent Muon step with the Polar Express schedule (fresh momentum buffer: buf = g; Nesterov)."""
    u = g + momentum * g
    X = u.bfloat16()
    X = X / (X.norm() + 1e-7)
    t = X.size(0) > X.size(1)
    X = X.T if t else X
    for a, b, c in RECORD_TABLE:
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X  # the record's order
    X = X.T if t else X
    return p - lr * (X * max(1, u.size(0) / u.size(1)) ** 0.5).float()


def test_muon_step_with_the_schedule_matches_the_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(32, 16))
    p.grad = torch.randn(32, 16)
    expected = reference_pe_step(p.detach().clone(), p.grad.clone(), 0.02, 0.95)
    opt = Muon([p], lr=0.02, momentum=0.95, backend_steps=5)
    opt.param_groups[0]["ns_coeffs"] = PE_COEFFS
    opt.step()
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_the_schedule_is_the_records_newton_schulz_bit_for_bit():
    """The core's iteration with the schedule against PR #1855's own `zeropower_via_newtonschulz5` (eager: its
    @torch.compile undone) on a bf16 bank of row-normalised updates, wide and tall: equal bitwise (the order
    (c·A)@A of NS5 differs by up to ~4 % of the largest entry)."""
    from record_module import exec_record
    from record_tables import record_source

    from pgolf.records import PROFILES

    mod = exec_record(record_source(PROFILES["pr1855"]), "pr1855_train_gpt")
    record_ns = mod.zeropower_via_newtonschulz5
    record_ns = getattr(record_ns, "_torchdynamo_orig_callable", None) or record_ns.__wrapped__
    gen = torch.Generator().manual_seed(0)
    for shape in [(12, 64, 64), (6, 256, 64), (6, 64, 256)]:
        G = torch.randn(*shape, generator=gen)
        G = (G / G.norm(dim=-1, keepdim=True)).bfloat16()
        assert torch.equal(zeropower_via_newtonschulz5(G, steps=5, coeffs=PE_COEFFS), record_ns(G, steps=5)), shape


def configure(tiny_sets, plugins, *sets):
    return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=plugins, sets=[*tiny_sets, *sets],
                   check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)


@pytest.mark.parametrize("plugins", [["polar_express"], ["muon_eq_r", "polar_express"]])
def test_the_matrix_optimizer_gets_the_schedule(tiny_sets, plugins):
    run = setup(configure(tiny_sets, plugins), REGISTRY, make_dir=False)
    muons = [o for o in run.optimizers if isinstance(o, Muon)]
    assert len(muons) == 1 and all(g["ns_coeffs"] == PE_COEFFS for g in muons[0].param_groups)
    assert all("ns_coeffs" not in g for o in run.optimizers if not isinstance(o, Muon) for g in o.param_groups)


def test_more_steps_than_the_schedule_is_a_configuration_error(tiny_sets):
    with pytest.raises(ConfigError, match=r"polar_express: core.muon_backend_steps .* must be <= 5.*got 6"):
        configure(tiny_sets, ["polar_express"], "core.muon_backend_steps=6")
