"""gptq's SDClip settings: per-family clip multipliers (PR #1586/#1626/#1855 MLP/ATTN/EMBED_CLIP_SIGMAS) and
PR #1412's Hessian-aware SDClip, c_i = k·σ_i·[1 + λ(r_i − 1)], checked against the formulas written out."""

from __future__ import annotations

import pytest
import torch

from plugins.gptq import GPTQ, GPTQConfig, hessian_row_importance


def sdclip(**kw) -> GPTQ:
    return GPTQ(GPTQConfig(clip="sdclip", **kw))


def test_per_family_clip_sigmas_follow_the_records_name_rule():
    g = sdclip(matrix_clip_sigmas=12.85, mlp_clip_sigmas=11.5, attn_clip_sigmas=13.0, embed_clip_sigmas=14.0)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    std = w.std(dim=1)
    for name, k in [("blocks.3.mlp.fc.weight", 11.5), ("blocks.3.mlp.proj.weight", 11.5),
                    ("blocks.0.attn.c_q.weight", 13.0), ("blocks.10.attn.proj.weight", 13.0),
                    ("tok_emb.weight", 14.0), ("bigram.proj.weight", 12.85)]:
        torch.testing.assert_close(g.row_clip(name)(w, 31), k * std, msg=name)
        scale = g.candidate_scales(name, w, 6)[0]
        torch.testing.assert_close(scale, (k * std / 31).to(torch.float16), msg=name)
    # 0 (the default) falls back to the matrix k: PR #1394/#1493's single MATRIX_CLIP_SIGMAS
    plain = sdclip(matrix_clip_sigmas=12.85)
    torch.testing.assert_close(plain.row_clip("blocks.0.mlp.fc.weight")(w, 31), 12.85 * std)


def test_hessian_row_importance_is_pr1412s():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 8, generator=gen)
    x = torch.randn(40, 8, generator=gen) * torch.linspace(0.1, 3.0, 8)
    h = x.T @ x / 40
    h[2, :] = 0
    h[:, 2] = 0  # a dead column: diagonal set to 1 before damping, as GPTQ's
    # written as the record: damp the (dead-fixed) H, read its diagonal, importance = mean_j |W_ij| c_j
    hd = h.clone()
    dead = torch.diag(hd) == 0
    hd[dead, dead] = 1
    hd.diagonal().add_(0.01 * hd.diagonal().mean())
    col = hd.diagonal().clamp_min(1e-8)
    col = col / col.mean()
    r = (w.abs() * col[None]).mean(dim=1)
    r = r / r.mean()
    got = hessian_row_importance(w, h, 0.01)
    torch.testing.assert_close(got, r)
    assert got.mean().item() == pytest.approx(1.0)


def test_hessian_aware_scale_modulates_each_row_and_lambda_zero_is_plain_sdclip():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(8, 16, generator=gen)
    w[0] *= 0.2  # a small row: low importance -> tighter clip
    x = torch.randn(64, 16, generator=gen)
    h = x.T @ x / 64
    lam, k = 0.175, 12.85
    g = sdclip(matrix_clip_sigmas=k, hessian_clip_lambda=lam)
    r = hessian_row_importance(w, h, 0.01)
    want = (k * w.std(dim=1) * (1 + lam * (r - 1)) / 31).clamp_min(1e-10).to(torch.float16)
    got = g.candidate_scales("blocks.0.attn.c_q.weight", w, 6, h)[0]
    torch.testing.assert_close(got, want)
    plain = sdclip(matrix_clip_sigmas=k).candidate_scales("blocks.0.attn.c_q.weight", w, 6, h)[0]
    assert got[0] < plain[0] and not torch.equal(got, plain)
    # and the whole GPTQ path uses it: codes from the modulated scale
    g.hessians = {"blocks.0.attn.c_q.weight": h}
    q = g.pg_quantize_tensor(name="blocks.0.attn.c_q.weight", tensor=w, config=None)
    torch.testing.assert_close(q.scale, want)


def test_hessian_lambda_needs_sdclip_and_sigmas_must_be_nonnegative():
    with pytest.raises(ValueError, match="hessian_clip_lambda"):
        GPTQ(GPTQConfig(clip="search", hessian_clip_lambda=0.175))
    with pytest.raises(ValueError, match="mlp_clip_sigmas"):
        GPTQ(GPTQConfig(clip="sdclip", mlp_clip_sigmas=-1.0))
