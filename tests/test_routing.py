"""Core v2 routing: layer schedule + graph modes (depth recurrence), parallel residuals, gated skips, value
injection, plugin roles and order — each against an independent computation, and compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config import ConfigError, resolve
from core.model import GPT, ModelSpec
from core.optim import default_param_groups
from core.registry import Plugin, PluginError, Registry
from core.train import compiled_graph_count, install_parts, setup, train
from plugins.depth_recurrence import DepthRecurrence, DepthRecurrenceConfig, looped_order

REGISTRY = Registry()
SPEC = dict(vocab_size=64, num_layers=6, model_dim=32, num_heads=4, num_kv_heads=2)


class _Run:
    """Just enough of a Run for `install_parts`: a plugin manager with the given plugins."""

    def __init__(self, plugins: dict[str, object]):
        import pluggy

        from core import hookspecs

        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for name, p in plugins.items():
            self.pm.register(p, name=name)
        self.hook = self.pm.hook


def build(plugins: dict[str, object], seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    spec = ModelSpec(**SPEC)
    model = GPT(spec)
    install_parts(_Run(plugins), model, spec)
    with torch.no_grad():  # non-trivial weights everywhere (the zero-init projections too)
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return model


def reference_hidden(model: GPT, ids: torch.Tensor, encoder: list[int], decoder: list[int], gated: bool,
                     parallel_from: int) -> torch.Tensor:
    """The record's forward (PR #1493's GPT.forward_logits / Block.forward), written out by hand."""
    x = F.rms_norm(model.tok_emb(ids), (model.spec.model_dim,))
    x0, skips = x, []

    def block(i: int, x: torch.Tensor) -> torch.Tensor:
        b = model.blocks[i]
        x_in = b.resid_mix[0] * x + b.resid_mix[1] * x0
        attn = b.attn(F.rms_norm(x_in, (x.size(-1),)), {"input_ids": ids})
        if i >= parallel_from:
            return x_in + b.attn_scale * attn + b.mlp_scale * b.mlp(F.rms_norm(x_in, (x.size(-1),)))
        x_out = x_in + b.attn_scale * attn
        return x_out + b.mlp_scale * b.mlp(F.rms_norm(x_out, (x.size(-1),)))

    for i in encoder:
        x = block(i, x)
        skips.append(x)
    for j, i in enumerate(decoder):
        if j < model.skip_weights.size(0) and skips:
            scaled = model.skip_weights[j] * skips.pop()
            x = torch.lerp(scaled, x, torch.sigmoid(model.skip_merge.skip_gates[j])) if gated else x + scaled
        x = block(i, x)
    return F.rms_norm(x, (x.size(-1),))


def test_looped_order_is_pr1493s():
    order = looped_order(11, 3, 5, 2)
    half = len(order) // 2
    assert order[:half] == [0, 1, 2, 3, 4, 5, 3, 4]
    assert order[half:] == [5, 3, 4, 5, 6, 7, 8, 9, 10]


def test_recurrence_parallel_and_gated_skips_match_the_record_forward():
    from plugins.parallel_residuals import ParallelResiduals, ParallelResidualsConfig
    from plugins.skip_gates import SkipGates

    rec = DepthRecurrence(DepthRecurrenceConfig(loop_start=1, loop_end=2, num_loops=2))
    model = build({"rec": rec, "par": ParallelResiduals(ParallelResidualsConfig(start=4)), "gates": SkipGates()})
    enc_loop, dec_loop = model.schedule.looped
    assert (enc_loop, dec_loop) == ([0, 1, 2, 1, 2], [1, 2, 3, 4, 5])
    assert model.skip_weights.shape == (5, 32) and model.skip_merge.skip_gates.shape == (5, 32)
    with torch.no_grad():
        model.skip_weights.normal_()
        model.skip_merge.skip_gates.normal_()
    ids = torch.randint(0, 64, (2, 12))
    plain = model.hidden(ids)
    torch.testing.assert_close(plain, reference_hidden(model, ids, [0, 1, 2], [3, 4, 5], True, 4))
    rec.pg_enter_mode(model=model, active=("recurrence",))
    looped = model.hidden(ids)
    torch.testing.assert_close(looped, reference_hidden(model, ids, enc_loop, dec_loop, True, 4))
    assert not torch.allclose(plain, looped)


def test_recurrence_mode_flips_the_compiled_model_without_recompiling():
    rec = DepthRecurrence(DepthRecurrenceConfig(loop_start=1, loop_end=2, num_loops=1))
    model = build({"rec": rec})
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    ids = torch.randint(0, 64, (2, 12))
    outs = {}
    with torch.no_grad():  # forward graphs only: the mode switch is a forward matter (no joint graph to trace)
        for active in ((), ("recurrence",), ()):  # the warm-up: each mode, then back (the rotary tables are
            rec.pg_enter_mode(model=model, active=active)  # cached by the first call: base graph traced twice)
            outs[active] = compiled(ids)
        assert not torch.allclose(outs[()], outs[("recurrence",)])
        graphs = compiled_graph_count()
        with torch._dynamo.config.patch(error_on_recompile=True):
            for active in ((), ("recurrence",), ()):
                rec.pg_enter_mode(model=model, active=active)
                torch.testing.assert_close(compiled(ids), outs[active])
    assert compiled_graph_count() == graphs


def reference_attention(a, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The baseline attention of `a` on x with the values v (B, T, Hkv, D) given, written out by hand."""
    from core.model import apply_rotary_emb

    b, t, _ = x.shape
    q = F.rms_norm(a.c_q(x).reshape(b, t, 4, 8), (8,))
    k = F.rms_norm(a.c_k(x).reshape(b, t, 2, 8), (8,))
    cos, sin = a.rotary(t, x.device, q.dtype)  # (1, T, 1, D/2)
    q = (apply_rotary_emb(q, cos, sin) * a.q_gain[None, None, :, None]).transpose(1, 2)
    k = apply_rotary_emb(k, cos, sin).transpose(1, 2).repeat_interleave(2, dim=1)
    vv = v.transpose(1, 2).repeat_interleave(2, dim=1)
    y = F.scaled_dot_product_attention(q, k, vv, is_causal=True).transpose(1, 2).reshape(b, t, 32)
    return a.proj(y)


def test_value_residual_mixes_block0_values_into_later_blocks():
    from plugins.value_residual import ValueResidual, ValueResidualConfig

    model = build({"vr": ValueResidual(ValueResidualConfig(init=0.25))})
    attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
    x0, x1 = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    ctx: dict[str, torch.Tensor] = {}
    v0 = attn0.c_v(x0).reshape(2, 7, 2, 8)
    torch.testing.assert_close(attn0(x0, ctx), reference_attention(attn0, x0, v0))
    torch.testing.assert_close(ctx["v0"], v0)
    with torch.no_grad():
        attn1.value_parts[0].vr_lambdas.copy_(torch.tensor([0.7, -0.2]))
    mixed = 0.7 * v0 - 0.2 * attn1.c_v(x1).reshape(2, 7, 2, 8)
    torch.testing.assert_close(attn1(x1, ctx), reference_attention(attn1, x1, mixed))
    groups = default_param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["scalar"] if "vr_lambdas" in names[id(p)]} == {
        f"blocks.{i}.attn.value_parts.0.vr_lambdas" for i in range(1, 6)}


def test_plugin_parameters_join_the_group_they_name():
    from plugins.skip_gates import SkipGates

    model = build({"gates": SkipGates()})
    groups = default_param_groups(model)
    assert any(p is model.skip_merge.skip_gates for p in groups["scalar"])
    assert not any(p is model.skip_merge.skip_gates for p in groups["matrix"])


def test_training_turns_the_mode_on_at_its_fraction(tiny_sets):
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["depth_recurrence"],
                  sets=[*tiny_sets, "core.num_layers=4", "depth_recurrence.loop_start=1",
                        "depth_recurrence.loop_end=2", "depth_recurrence.enable_at=0.5"],
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    run = setup(cfg, REGISTRY)
    summary = train(run)
    log = (run.run_dir / "train.log").read_text()
    assert "mode:recurrence on step:6 frac:0.500" in log  # 12 iterations, no wall-clock cap
    assert "timed_loop_recompiles:0" in log
    assert run.model.schedule.looping and summary["depth_recurrence"]["encoder"] == [0, 1, 2, 1]


@pytest.mark.slow
def test_compiled_training_warms_every_mode_and_never_recompiles_in_the_loop(tiny_sets, monkeypatch):
    import functools

    import core.train

    monkeypatch.setattr(core.train.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["depth_recurrence"],
                  sets=[*tiny_sets, "core.num_layers=4", "core.compile=true", "core.iterations=6",
                        "core.val_loss_every=3", "depth_recurrence.loop_start=1", "depth_recurrence.loop_end=2",
                        "depth_recurrence.enable_at=0.5"],
                  check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    run = setup(cfg, REGISTRY)
    train(run)
    log = (run.run_dir / "train.log").read_text()
    assert "compiled:True" in log and "warmup_mode:recurrence" in log
    assert "mode:recurrence on step:3 frac:0.500" in log and "timed_loop_recompiles:0" in log


# --- roles, order, settings at configuration time ------------------------------------------------------
def test_two_providers_of_one_role_are_a_configuration_error():
    errors = REGISTRY.check(["zstd", "brotli"])
    assert errors == ["plugins 'brotli' and 'zstd' all provide 'codec': enable only one of them"] or errors == [
        "plugins 'zstd' and 'brotli' all provide 'codec': enable only one of them"]
    assert any("'quantizer'" in e for e in REGISTRY.check(["gptq", "quant_mixed"]))
    assert any("'evaluator'" in e for e in REGISTRY.check(["sliding_window", "score_first_ttt"]))
    assert REGISTRY.check(["zstd", "gptq", "sliding_window", "depth_recurrence", "skip_gates"]) == []


def _probe(name: str, after=(), before=()) -> type[Plugin]:
    from core.hookspecs import hookimpl

    def pg_report(self, run, fields):
        fields.setdefault("order", []).append(self.name)

    return type(name, (Plugin,), {"name": name, "summary": "order probe", "sources": ("test",),
                                  "after": after, "before": before, "pg_report": hookimpl(pg_report)})


def test_after_and_before_decide_the_hook_order():
    from core.registry import make_manager

    reg = Registry()
    for cls in (_probe("a"), _probe("b", after=("c",)), _probe("c"), _probe("d", before=("a",))):
        reg.add(cls, "test")

    def order(enabled):
        class Cfg:
            plugins = enabled
            plugin_configs: dict = {}

        fields: dict = {}
        make_manager(reg, Cfg()).hook.pg_report(run=None, fields=fields)
        return fields["order"]

    assert order(["a", "c"]) == ["c", "a"]  # no constraint: pluggy's last-registered-first
    assert order(["b", "c"]) == ["c", "b"] and order(["c", "b"]) == ["c", "b"]
    assert order(["a", "d"]) == ["d", "a"]
    reg.add(_probe("e", after=("f",)), "test")
    reg.add(_probe("f", after=("e",)), "test")
    with pytest.raises(PluginError, match="cycle"):
        reg.registration_order(["e", "f"])
    assert any("cycle" in e for e in reg.check(["e", "f"]))


def test_lqer_refines_before_prune_to_fit():
    assert REGISTRY.registration_order(["lqer", "prune_to_fit"]) == ["prune_to_fit", "lqer"]
    assert REGISTRY.registration_order(["prune_to_fit", "lqer"]) == ["prune_to_fit", "lqer"]


@pytest.mark.parametrize("sets, message", [
    (["depth_recurrence.loop_end=9"], "depth_recurrence.loop_end=9 must be < core.num_layers=9"),
    (["depth_recurrence.num_loops=0"], "depth_recurrence.num_loops must be >= 1"),
    (["depth_recurrence.enable_at=1.5"], "depth_recurrence.enable_at must be in [0, 1]"),
])
def test_plugin_settings_fail_at_configuration_time(sets, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["depth_recurrence"], sets=sets,
                check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)


def test_run_modes_rule_flags_a_log_where_a_declared_mode_never_switched_on(tmp_path):
    from pgolf.run_rules import RULES
    from validator.rules.base import FolderContext

    rule = next(r for r in RULES if r.id == "RUN.MODES")
    ok = "plugins:depth_recurrence,xsa\nmodes:recurrence@0.35\nmode:recurrence on step:6 frac:0.350\n" \
         "timed_loop_recompiles:0\n"
    cases = {"ok": ok, "never": "modes:recurrence@0.35\nstep:10/10 train_loss:3.0\ntimed_loop_recompiles:0\n",
             "recompiled": ok.replace("recompiles:0", "recompiles:2"), "no_modes": "plugins:xsa\n",
             "eval_only": "modes:recurrence@1.5\ntimed_loop_recompiles:0\n"}
    want = {"ok": {"pass"}, "never": {"warn"}, "recompiled": {"warn"}, "no_modes": {"skip"}, "eval_only": {"pass"}}
    for name, text in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train_seed1.log").write_text(text)
        assert {f.status for f in rule.run(FolderContext(folder))} == want[name], name
