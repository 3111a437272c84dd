"""Per-tensor bit widths (`bits_overrides`, issue #15; PR #534 int8 blocks 0/10, PR #180 fp16 c_k): every
quantizer on the shared policy honours them, first match wins, bad entries fail at configuration time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core import export as ex
from core.config import ConfigError, resolve
from core.registry import Registry
from plugins.gptq import GPTQConfig, hessian_targets
from plugins.gptq_lite import GPTQLite, GPTQLiteConfig
from plugins.lib import codecs
from plugins.lib.quant import bits_for, parse_bits_overrides
from plugins.quant_mixed import QuantMixed, QuantMixedConfig
from plugins.sdclip import SDClip, SDClipConfig


def rand_matrix(rows: int = 48, cols: int = 96, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((rows, cols)) * rng.uniform(0.5, 3.0, (rows, 1))).float()


def np_rowmax_quant(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent per-row int-k (PR #315's rule): fp16 scale max(rowmax/qmax, 1/qmax), round half even."""
    qmax = 2 ** (bits - 1) - 1
    scale = np.maximum(np.abs(x).max(axis=1) / qmax, 1 / qmax).astype(np.float16).astype(np.float64)
    codes = np.clip(np.rint(x / scale[:, None]), -qmax - 1, qmax)
    return codes, codes * scale[:, None]


@pytest.mark.parametrize("bits", [3, 4, 5, 7])
def test_override_gives_exact_k_bit_codes(bits):
    cfg = QuantMixedConfig(keep_float_max_numel=0, bits_overrides=f"blocks.1.mlp.*={bits}")
    plugin = QuantMixed(cfg)
    w = rand_matrix(seed=bits)
    q = plugin.pg_quantize_tensor("blocks.1.mlp.fc.weight", w, None)
    qmax = 2 ** (bits - 1) - 1
    assert q.scheme == "intk_per_row" and q.meta["bits"] == bits
    assert int(q.data.abs().max()) == qmax  # each row's max maps to qmax: the full k-bit range, no more
    x = w.double().numpy()
    codes, recon = np_rowmax_quant(x, bits)
    got = q.data.numpy().astype(np.float64)
    assert np.mean(got != codes) < 1e-3  # float32 vs float64 division may flip an exact tie
    step = q.scale.double().numpy()[:, None]
    assert np.all(np.abs(q.dequantize().double().numpy() - recon) <= step * (got != codes) + 1e-6)
    other = plugin.pg_quantize_tensor("blocks.0.mlp.fc.weight", w, None)  # no match: the family's 6 bits
    assert other.meta["bits"] == 6 and int(other.data.abs().max()) == 31


def test_every_policy_quantizer_honours_overrides():
    w = rand_matrix(seed=9)
    name = "blocks.10.attn.c_q.weight"
    over = {"keep_float_max_numel": 0, "bits_overrides": "blocks.1[01].attn.*=4"}
    for plugin in (QuantMixed(QuantMixedConfig(**over)), GPTQLite(GPTQLiteConfig(**over)),
                   SDClip(SDClipConfig(**over))):
        q = plugin.pg_quantize_tensor(name, w, None)
        assert q.meta["bits"] == 4 and int(q.data.abs().max()) <= 8, plugin.name
        assert plugin.pg_quantize_tensor("blocks.1.attn.c_q.weight", w, None).meta["bits"] == 6, plugin.name

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Module()
            self.attn.c_q = nn.Linear(96, 48, bias=False)

    model = nn.Module()
    model.blocks = nn.ModuleList([Block() for _ in range(3)])
    # full GPTQ: Hessians only for tensors below 8 bits, decided per tensor
    cfg = GPTQConfig(keep_float_max_numel=0, bits_overrides="blocks.0.*=8, blocks.2.*=16")
    assert hessian_targets(model, cfg) == {"blocks.1.attn.c_q.weight"}


def test_override_at_8_and_16_bits():
    w = rand_matrix(300, 256, seed=2)  # > 65,536 elements
    cfg = QuantMixedConfig(bits_overrides="blocks.0.*=8, blocks.10.attn.c_k.weight=16")
    assert QuantMixed(cfg).pg_quantize_tensor("blocks.0.mlp.fc.weight", w, None).scheme == "int8_per_row"
    fp16 = QuantMixed(cfg).pg_quantize_tensor("blocks.10.attn.c_k.weight", w, None)
    assert fp16.scheme == "passthrough" and fp16.data.dtype == torch.float16
    # gptq_lite's search_int8 (PR #534): the clip search at qmax 127 instead of the baseline percentile rule
    lite = GPTQLite(GPTQLiteConfig(bits_overrides="blocks.0.*=8", search_int8=True,
                                   percentiles="0.9999,0.99999,0.999999,0.9999984,1.0"))
    q = lite.pg_quantize_tensor("blocks.0.mlp.fc.weight", w, None)
    assert q.scheme == "intk_per_row" and q.meta["bits"] == 8 and int(q.data.abs().max()) == 127
    x = w.double().numpy()
    best = None
    for pct in (0.9999, 0.99999, 0.999999, 0.9999984, 1.0):  # the record's search, float64
        clip = np.quantile(np.abs(w.numpy()), pct, axis=1).astype(np.float64)
        scale = np.maximum(clip / 127, 1 / 127).astype(np.float16).astype(np.float64)
        recon = np.clip(np.rint(x / scale[:, None]), -127, 127) * scale[:, None]
        err = np.mean((recon - x) ** 2)
        best = (err, recon) if best is None or err < best[0] else best
    assert float(np.mean((q.dequantize().double().numpy() - x) ** 2)) == pytest.approx(best[0], rel=1e-3)


def test_first_matching_pattern_wins():
    cfg = QuantMixedConfig(mlp_bits=6, bits_overrides="blocks.1*=5, blocks.1.*=3, *mlp*=4")
    assert bits_for(cfg, "blocks.1.mlp.fc.weight") == 5  # first match, though the second is more specific
    assert bits_for(cfg, "blocks.10.attn.c_q.weight") == 5  # '*' crosses digits and dots
    assert bits_for(cfg, "blocks.2.mlp.fc.weight") == 4  # an override beats the family's bits
    assert bits_for(cfg, "blocks.2.attn.c_q.weight") == 6  # no match: the family's
    swapped = QuantMixedConfig(bits_overrides="blocks.1.*=3, blocks.1*=5")
    assert bits_for(swapped, "blocks.1.mlp.fc.weight") == 3
    assert parse_bits_overrides(" a.*=8 ,, b?=16 ") == (("a.*", 8), ("b?", 16))


@pytest.mark.parametrize("value, expect", [
    ("blocks.0.*", "expected glob=bits"),
    ("=8", "expected glob=bits"),
    ("blocks.[0.*=8", "bad glob 'blocks.[0.*'"),
    ("blocks 0=8", "bad glob"),
    ("blocks.0.*=9", "expected bits in 2..8 or 16"),
    ("blocks.0.*=1", "expected bits in 2..8 or 16"),
    ("blocks.0.*=six", "expected bits in 2..8 or 16"),
])
def test_bad_overrides_fail_at_configuration_time(value, expect):
    reg = Registry()
    for plugin in ("quant_mixed", "gptq_lite"):
        with pytest.raises(ConfigError) as info:
            resolve(plugin_config_classes=reg.config_classes(), plugins=[plugin], check_plugins=reg.check,
                    sets=[f"{plugin}.bits_overrides={value}"])
        (line,) = info.value.errors
        assert line.startswith(f"[{plugin}]: bits_overrides:") and expect in line and "\n" not in line
    with pytest.raises(ConfigError, match=r"\[quant_mixed\]: mlp_bits: expected 2..8 or 16, got 9"):
        resolve(plugin_config_classes=reg.config_classes(), plugins=["quant_mixed"], check_plugins=reg.check,
                sets=["quant_mixed.mlp_bits=9"])


def test_artifact_roundtrip_keeps_per_tensor_bits():
    state = {f"blocks.{i}.mlp.fc.weight": rand_matrix(seed=20 + i) for i in range(3)}
    state["blocks.0.attn_scale"] = torch.ones(48)
    plugin = QuantMixed(QuantMixedConfig(keep_float_max_numel=0, bits_overrides="blocks.1.*=4, blocks.2.*=16"))
    result = ex.export_state_dict(state, [lambda n, t: plugin.pg_quantize_tensor(n, t, None)],
                                  codecs.LzmaCodec(), "quant_mixed")
    records, _ = ex.decode_artifact(result.blob, codecs.all_decoders())
    assert records["blocks.0.mlp.fc.weight"].meta["bits"] == 6
    assert records["blocks.1.mlp.fc.weight"].meta["bits"] == 4
    assert int(records["blocks.1.mlp.fc.weight"].data.abs().max()) == 7
    assert records["blocks.2.mlp.fc.weight"].data.dtype == torch.float16
    for name, q in result.qstate.items():
        assert torch.equal(records[name].dequantize(), q.dequantize()), name
    x = state["blocks.1.mlp.fc.weight"].double().numpy()
    _, recon = np_rowmax_quant(x, 4)
    err = float(np.mean((records["blocks.1.mlp.fc.weight"].dequantize().double().numpy() - x) ** 2))
    assert err == pytest.approx(float(np.mean((recon - x) ** 2)), rel=1e-3)
