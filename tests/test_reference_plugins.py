"""The three reference plugins do what their source PRs describe (not just "something changed")."""

from __future__ import annotations

import pytest
import torch

from core.config import resolve
from core.hookspecs import hookimpl
from core.model import GPT, ModelSpec
from core.optim import default_param_groups
from core.registry import Registry
from core.train import setup, train
from plugins.smeargate import SmearGate, SmearGateConfig, SmearGateV2, SmearGateV4

REGISTRY = Registry()


def test_smeargate_v2_is_the_pr162_blend():
    torch.manual_seed(0)
    m = SmearGateV2(8)
    x = torch.randn(2, 5, 8)
    out = m(x, torch.zeros(2, 5, dtype=torch.long))
    prev = torch.cat([torch.zeros(2, 1, 8), x[:, :-1]], dim=1)
    torch.testing.assert_close(out, 0.5 * x + 0.5 * prev)  # gate init 0 -> sigmoid 0.5
    with torch.no_grad():
        m.smear_gate.fill_(2.0)
    g = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(m(x, torch.zeros(2, 5, dtype=torch.long)), (1 - g) * x + g * prev)


def test_smeargate_v4_is_identity_at_init_and_masks_bos():
    torch.manual_seed(0)
    m = SmearGateV4(16, window=12, bos_id=1)
    x = torch.randn(1, 8, 16)
    ids = torch.tensor([[1, 5, 6, 7, 9, 1, 4, 4]])
    torch.testing.assert_close(m(x, ids), x)
    with torch.no_grad():
        m.smear_lambda.fill_(1.0)
        m.smear_proj.normal_()
    y = m(x, ids)
    x2 = x.clone()
    x2[0, 4] += 3.0  # the last token of document 1
    y2 = m(x2, ids)
    assert torch.equal(y[0, 5], y2[0, 5]), "the BOS position must not see the previous document"
    x3 = x.clone()
    x3[0, 5] += 3.0
    assert not torch.equal(m(x3, ids)[0, 6], y[0, 6]), "a non-BOS position does see its predecessor"


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_smeargate_params_are_scalar_group(version):
    plugin = SmearGate(SmearGateConfig(version=version))
    spec = ModelSpec(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
    model = GPT(spec)
    for slot in ("embed_mix_pre", "embed_mix_post"):
        part = plugin.pg_slot_parts(slot=slot, spec=spec, layer=None)
        if part is not None:
            getattr(model, slot).append(part)
    groups = default_param_groups(model)
    plugin.pg_param_groups(model=model, groups=groups, config=None)
    smear = {id(p) for n, p in model.named_parameters() if "smear_" in n}
    assert smear and smear <= {id(p) for p in groups["scalar"]}
    assert not smear & {id(p) for p in groups["matrix"]}


class Capture:
    """Records the live weights at train start and after every step, and the weights after train end."""

    def __init__(self):
        self.trajectory: list[dict[str, torch.Tensor]] = []
        self.final: dict[str, torch.Tensor] = {}

    @hookimpl
    def pg_train_start(self, run):
        self.trajectory.append({k: v.double().clone() for k, v in run.model.state_dict().items()})

    @hookimpl
    def pg_after_step(self, run, step):
        self.trajectory.append({k: v.double().clone() for k, v in run.model.state_dict().items()})

    @hookimpl(trylast=True)
    def pg_train_end(self, run, model):
        self.final = {k: v.double().clone() for k, v in model.state_dict().items()}


def test_ema_applies_the_exponential_average_of_the_trajectory(tiny_sets):
    d = 0.8
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["ema"],
                  sets=[*tiny_sets, f"ema.decay={d}", "core.iterations=6"], check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY, make_dir=False)
    cap = Capture()
    run.pm.register(cap, name="capture")
    train(run)
    assert len(cap.trajectory) == 7
    expected = cap.trajectory[0]
    for theta in cap.trajectory[1:]:
        expected = {k: d * expected[k] + (1 - d) * theta[k] for k in expected}
    for k, v in expected.items():
        torch.testing.assert_close(cap.final[k], v, rtol=1e-5, atol=1e-6)
    last = cap.trajectory[-1]
    assert any(not torch.allclose(cap.final[k], last[k]) for k in last), "EMA weights equal the live weights"


def test_sliding_window_plugin_is_the_final_evaluator(tiny_sets):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["sliding_window"],
                  sets=[*tiny_sets, "sliding_window.stride=16"], check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY)
    summary = train(run)
    assert summary["evaluator"] == "sliding_window" and summary["eval_stride"] == 16
    assert "evaluator:sliding_window" in (run.run_dir / "train.log").read_text()
