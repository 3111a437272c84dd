"""PR #534's export in `gptq_lite.variant = "pr534"`: the record's own `quantize_state_dict_int8` (its PR head,
extracted from the parameter-golf mirror) and the plugin quantize the same state dict to the same codes and scales;
the default variant (PR #414's int-k grid) does not — on the H200 it left pgolf's PR #534 artifact 3.6 % small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from plugins.gptq_lite import GPTQLite, GPTQLiteConfig, int8_grid_search

MIRROR = Path(os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo"))
PERCENTILES = "0.9999,0.99999,0.999999,0.9999984,1.0"
RECIPE_BITS = {"attn_bits": 6, "mlp_bits": 6, "embed_bits": 16, "search_int8": True, "keep_float_max_numel": 65536,
               "bits_overrides": "blocks.0.*=8, blocks.10.*=8, ve_shared.embed.weight=8", "percentiles": PERCENTILES}
# (record name, pgolf name, shape): int8 first/last block, int6 steps on blocks 1-9, the int8 VE table, fp16 tok_emb
TENSORS = [("blocks.0.attn.c_q.weight", "blocks.0.attn.c_q.weight", (288, 256)),
           ("blocks.4.mlp.fc.weight", "blocks.4.mlp.fc.weight", (352, 256)),
           ("blocks.9.attn.proj.weight", "blocks.9.attn.proj.weight", (256, 288)),
           ("blocks.10.mlp.proj.weight", "blocks.10.mlp.proj.weight", (256, 352)),
           ("ve.embed.weight", "ve_shared.embed.weight", (1024, 128)),
           ("tok_emb.weight", "tok_emb.weight", (1024, 128))]


def weights(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Trained-like rows: small Gaussian weights (the 1/127 scale floor binds), heavy-tailed outliers, and a
    few rows scaled past 1 (the floor does not bind)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.04
    w += (torch.rand(shape, generator=gen) < 0.002) * torch.randn(shape, generator=gen) * 0.5
    w[:5] *= 40.0
    return w.bfloat16()


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    from pgolf.cli import main
    from tests.record_module import exec_record

    if not (MIRROR / "HEAD").exists():
        pytest.skip(f"no parameter-golf git mirror at {MIRROR}")
    script = tmp_path_factory.mktemp("pr534") / "train_gpt.py"
    assert main(["bench", "--extract-record", str(script), "--profile", "pr534", "--mirror", str(MIRROR)]) == 0
    return exec_record(script.read_text(), "pr534_record")


def pgolf_quantize(variant: str, name: str, w: torch.Tensor):
    plugin = GPTQLite(GPTQLiteConfig(**RECIPE_BITS, variant=variant))
    return plugin.pg_quantize_tensor(name=name, tensor=w, config=None)


def test_pr534_variant_is_the_records_quantizer(record, monkeypatch):
    monkeypatch.setenv("GPTQ_LITE", "1")
    state = {rec: weights(shape, i) for i, (rec, _, shape) in enumerate(TENSORS)}
    obj, _ = record.quantize_state_dict_int8(state)
    for rec_name, pg_name, _ in TENSORS:
        q = pgolf_quantize("pr534", pg_name, state[rec_name])
        if rec_name == "tok_emb.weight":
            assert q.scheme == "passthrough" and torch.equal(q.data, obj["passthrough"][rec_name])
            continue
        assert torch.equal(q.data, obj["quantized"][rec_name]), rec_name
        assert torch.equal(q.scale, obj["scales"][rec_name]), rec_name
        assert torch.equal(q.dequantize(), record.dequantize_state_dict_int8(obj)[rec_name]), rec_name
        default = pgolf_quantize("pr414", pg_name, state[rec_name])
        if ".4." in pg_name or ".9." in pg_name:  # int6: PR #414's own grid is another quantization
            assert not torch.equal(default.dequantize(), q.dequantize()), pg_name


def test_int8_grid_search_formula():
    """Independent of the record: rows below the floor get scale exactly 1/127 (fp16), their values clamped to
    the winning clip; codes of a 6-bit tensor are multiples of 4 (±127 at the ends); 8 bits: any code."""
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(7)) * 0.04
    w[:5] *= 40.0
    codes8, scale8 = int8_grid_search(w, [0.999, 1.0], bits=8)
    codes6, scale6 = int8_grid_search(w, [0.999, 1.0], bits=6)
    assert torch.equal(scale8, scale6) and scale8.dtype == torch.float16
    assert torch.all(scale8[5:] == torch.tensor(1 / 127, dtype=torch.float16))
    assert torch.all(scale8[:5].float() > 1 / 127)  # rows past 1: clip/127
    inner = codes6[:, :].int()
    assert torch.all((inner % 4 == 0) | (inner.abs() == 127))
    assert torch.equal(codes6.int(), ((codes8.float() / 4).round() * 4).clamp(-127, 127).int())
    assert (codes8.int() % 4 != 0).any()
    # both candidates tried, the lower whole-matrix MSE kept: clamping at the 0.999 quantile loses to the max here
    err = {}
    for p in (0.999, 1.0):
        c, s = int8_grid_search(w, [p], bits=8)
        err[p] = float((w - c.float() * s.float()[:, None]).square().mean())
    best = min(err, key=err.get)
    assert torch.equal(int8_grid_search(w, [best], bits=8)[0], codes8)


def test_bad_variant_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"gptq_lite.variant: expected one of pr414, pr534, got 'pr999'"):
        GPTQLiteConfig(variant="pr999")
    with pytest.raises(ValueError, match=r"gptq_lite.per_row: PR #534's variant chooses one clip per matrix"):
        GPTQLiteConfig(variant="pr534", per_row=True)
