"""doc_packing (PR #1530's DocumentPackingLoader) and varlen_attention (its document-isolated attention slot)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.config import Config, resolve
from core.data import HEADER_INTS, SHARD_MAGIC, SHARD_VERSION, DataError
from core.registry import Registry
from core.train import Stepper, setup
from plugins.doc_packing import DocumentPackingLoader, pack_boundaries, segment_starts
from plugins.varlen_attention import VarlenAttention

BOS = 1
REGISTRY = Registry()


def write_shard(path, tokens) -> None:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def make_docs(rng, n_docs, max_len=50):
    """Documents as lists: BOS then a body of non-BOS tokens (some longer than the segment cap)."""
    return [[BOS, *rng.integers(2, 300, size=int(rng.integers(1, max_len))).tolist()] for _ in range(n_docs)]


def expected_segments(ids: list[int], seq_len: int) -> list[list[int]]:
    """Independent: walk the tokens; a BOS or `seq_len` tokens since the last cut start a new segment."""
    segs: list[list[int]] = []
    for tok in ids:
        if not segs or tok == BOS or len(segs[-1]) == seq_len:
            segs.append([])
        segs[-1].append(tok)
    return segs


# --- doc_packing ---------------------------------------------------------------------------------------------
def test_segment_starts_and_boundaries_match_the_record_rule():
    assert segment_starts([3, 10], 16, 4) == [0, 3, 7, 10, 14]  # 0..3 leading piece, 3..10 cut at 7, 10..16 at 14
    assert segment_starts([0, 5], 12, 100, row_len=4) == [0, 4, 5, 8]
    ids, cu = pack_boundaries([0, 3, 7], 10, bucket=4)
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 7, 10]
    _, cu = pack_boundaries([0, 3, 7, 9], 10, bucket=4)
    assert cu.tolist() == [0, 3, 7, 9, 10, 10, 10, 10]


@pytest.mark.parametrize("world_size", [1, 2])
def test_packed_batches_keep_every_document_in_order_with_boundaries_at_bos(tmp_path, world_size):
    rng = np.random.default_rng(0)
    shards = []
    for i in range(2):
        stream = [7, 8, 9] + [t for d in make_docs(rng, 40) for t in d]  # a leading partial doc, skipped
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", stream)
        shards.append(stream)
    files = sorted(tmp_path.glob("*.bin"))
    seq_len, n, steps = 16, 96, 6
    loaders = [DocumentPackingLoader(files, r, world_size, torch.device("cpu"), BOS, cu_bucket_size=8)
               for r in range(world_size)]
    got: list[int] = []
    for _ in range(steps):
        for loader in loaders:
            x, y, ids, cu = loader.next_batch(n * world_size, seq_len, 1)
            assert x.shape == y.shape == ids.shape == (1, n) and cu.dtype == torch.int32
            flat, yf = x[0].tolist(), y[0].tolist()
            assert flat[1:] == yf[:-1]
            segs = expected_segments(flat, seq_len)
            starts = np.cumsum([0, *map(len, segs)]).tolist()
            assert cu.numel() % 8 == 0 and cu.tolist() == starts + [n] * (cu.numel() - len(starts))
            assert ids[0].tolist() == [i for i, s in enumerate(segs) for _ in s]
            got += flat + [yf[-1]]  # each rank's span is n + 1 tokens
    # Independent expectation: from each shard's first BOS, consecutive spans of (n+1)·W until the shard is
    # used up, then the next shard from its first BOS, wrapping.
    want: list[int] = []
    span = (n + 1) * world_size
    shard = 0
    while len(want) < len(got):
        s = shards[shard % 2]
        pos = s.index(BOS)
        while pos + span <= len(s) and len(want) < len(got):
            want += s[pos : pos + span]
            pos += span
        shard += 1
    assert got == want


def test_row_packing_cuts_at_rows_too(tmp_path):
    rng = np.random.default_rng(1)
    write_shard(tmp_path / "fineweb_train_000000.bin", [t for d in make_docs(rng, 30) for t in d])
    loader = DocumentPackingLoader(sorted(tmp_path.glob("*.bin")), 0, 1, torch.device("cpu"), BOS, flat=False)
    x, _, ids, cu = loader.next_batch(64, 16, 1)
    assert x.shape == ids.shape == (4, 16) and cu.numel() == 64
    for row, row_ids in zip(x.tolist(), ids.tolist(), strict=True):
        segs = expected_segments(row, 16)
        assert row_ids == [row_ids[0] + i for i, s in enumerate(segs) for _ in s]


def test_a_shard_too_small_for_a_span_is_an_error(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", [BOS, 5, 6, 7])
    loader = DocumentPackingLoader([tmp_path / "fineweb_train_000000.bin"], 0, 1, torch.device("cpu"), BOS)
    with pytest.raises(DataError, match="span of 9 tokens"):
        loader.next_batch(8, 4, 1)


# --- varlen_attention ------------------------------------------------------------------------------------------
def packed_qkv(seed=0, b=2, h=4, hkv=2, t=40, d=8):
    """q (B, T, H, D), k/v (B, T, Hkv, D) (the attention slot's layout), document ids and lengths per row."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, n, d, generator=gen, requires_grad=True) for n in (h, hkv, hkv))
    lens = [[5, 12, 1, 22], [17, 9, 14]]  # several documents per row, one of a single token
    ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lens])
    return q, k, v, ids, lens


def per_document_reference(q, k, v, lens):
    """Independent: each document alone through causal SDPA (no mask), concatenated back."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    rep = q.size(1) // k.size(1)
    rows = []
    for bi, row in enumerate(lens):
        outs, at = [], 0
        for n in row:
            sl = slice(at, at + n)
            kk, vv = (z[bi : bi + 1, :, sl].repeat_interleave(rep, 1) for z in (k, v))
            outs.append(F.scaled_dot_product_attention(q[bi : bi + 1, :, sl], kk, vv, is_causal=True))
            at += n
        rows.append(torch.cat(outs, dim=2))
    return torch.cat(rows).transpose(1, 2)


def grads(fn, q, k, v):
    """Output and the gradients of a fixed weighted sum of it."""
    y = fn(q, k, v)
    gq, gk, gv = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), (q, k, v))
    return y, gq, gk, gv


def test_cpu_path_equals_each_document_alone_outputs_and_gradients():
    q, k, v, ids, lens = packed_qkv()
    attn = VarlenAttention("sdpa")
    got = grads(lambda a, b, c: attn(a, b, c, {"doc_ids": ids}), q, k, v)
    ref = grads(lambda a, b, c: per_document_reference(a, b, c, lens), q, k, v)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    no_docs = attn(q, k, v, {})
    assert not torch.allclose(no_docs, got[0], atol=1e-3)  # the boundaries matter in this batch


def test_flex_path_forward_equals_each_document_alone():
    """FlexAttention runs forward on CPU (no backward in torch 2.13); gradients are checked on CUDA."""
    q, k, v, ids, lens = packed_qkv(seed=1)
    q, k, v = (z.detach() for z in (q, k, v))
    with torch.no_grad():
        y = VarlenAttention("sdpa", kernel="flex")(q, k, v, {"doc_ids": ids})
        torch.testing.assert_close(y, per_document_reference(q, k, v, lens), rtol=1e-5, atol=1e-5)


def test_flex_path_traces_with_zero_graph_breaks():
    q, k, v, ids, _ = packed_qkv(seed=2)
    q, k, v = (z.detach() for z in (q, k, v))
    attn = VarlenAttention("sdpa", kernel="flex")
    torch._dynamo.reset()
    with torch.no_grad():
        exp = torch._dynamo.explain(lambda a, b, c, i: attn(a, b, c, {"doc_ids": i}))(q, k, v, ids)
    assert exp.graph_break_count == 0, exp.break_reasons
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: FlexAttention backward, FlashAttention varlen")
def test_cuda_kernels_equal_each_document_alone_outputs_and_gradients():
    q, k, v, ids, lens = packed_qkv(seed=3, t=256, d=64)
    q, k, v = (z.detach().cuda().requires_grad_() for z in (q, k, v))
    ids = ids.cuda()
    ref = grads(lambda a, b, c: per_document_reference(a, b, c, lens), q, k, v)
    flex = VarlenAttention("sdpa", kernel="flex")
    for g, r in zip(grads(lambda a, b, c: flex(a, b, c, {"doc_ids": ids}), q, k, v), ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
    fa = VarlenAttention("sdpa", max_seqlen=256)
    if fa.varlen_fn is None:
        pytest.skip("no FlashAttention varlen kernel importable")
    starts = [bi * 256 + s for bi, row in enumerate(lens) for s in np.cumsum([0, *row[:-1]]).tolist()]
    _, cu = pack_boundaries(starts, 512, 64, device=q.device)
    qb, kb, vb = (z.detach().bfloat16().requires_grad_() for z in (q, k, v))
    y = fa(qb, kb, vb, {"doc_ids": ids, "cu_seqlens": cu})
    torch.testing.assert_close(y.float(), ref[0], rtol=2e-2, atol=2e-2)


# --- through the trainer ------------------------------------------------------------------------------------------
def test_stepper_feeds_packed_boundaries_to_the_attention_slot(tiny_data, tiny_core):
    """doc_packing's batch reaches the varlen slot through Stepper and the model (doc_ids and cu_seqlens in ctx),
    and the whole model compiles with zero graph breaks on the packed batch."""
    sets = [*tiny_core, f"core.data_path={tiny_data}", "varlen_attention.kernel=dense"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["doc_packing", "varlen_attention"],
                  sets=sets, check_plugins=REGISTRY.check)
    run = setup(cfg, REGISTRY, make_dir=False)
    seen = []
    attn = run.model.blocks[0].attn.attention
    assert isinstance(attn, VarlenAttention) and attn.max_seqlen == 64
    loader = run.hook.pg_train_loader(run=run)
    x, y, ids, cu = loader.next_batch(1024, 64, 1)
    assert ids.max() > 0
    attn.register_forward_pre_hook(lambda m, args: seen.append(dict(args[3])))
    Stepper(run).forward_backward(loader)
    assert seen and seen[0]["doc_ids"].shape == (1, 1024) and seen[0]["cu_seqlens"].dtype == torch.int32
    for kernel in ("dense", "flex"):  # no backward needed: FlexAttention runs forward on CPU
        for block in run.model.blocks:
            block.attn.attention.kernel = kernel
        torch._dynamo.reset()
        with torch.no_grad():
            exp = torch._dynamo.explain(run.model)(x, y, doc_ids=ids, cu_seqlens=cu)
        assert exp.graph_break_count == 0, (kernel, exp.break_reasons)
    torch._dynamo.reset()


def test_varlen_attention_conflicts_with_another_attention_provider():
    from core.registry import Plugin

    reg = Registry()
    reg.add(type("OtherAttn", (Plugin,), {"name": "other_attn", "family": "model", "summary": "s",
                                           "sources": ("x",), "provides": ("attention",)}), "test")
    assert reg.check(["varlen_attention", "doc_packing"]) == []
    errors = reg.check(["varlen_attention", "other_attn"])
    assert errors and "attention" in " ".join(errors)
    assert reg.check(["doc_packing", "coprime_loader"])  # two train loaders


# --- cu_seqlens bucket pre-warm (issue #15) -------------------------------------------------------------------
def test_warm_batches_cover_every_cu_seqlens_size_of_the_stream(tmp_path):
    """cu_sizes spans one document's segments to max_docs documents; each warm batch has valid boundaries
    (segments of at most seq_len tokens, doc_ids matching cu_seqlens) and its own padded size; every size a
    long stream of real batches produces is among them."""
    rng = np.random.default_rng(3)
    write_shard(tmp_path / "fineweb_train_000000.bin", [t for d in make_docs(rng, 3000, max_len=60) for t in d])
    loader = DocumentPackingLoader([tmp_path / "fineweb_train_000000.bin"], 0, 1, torch.device("cpu"), BOS,
                                   vocab_size=320, cu_bucket_size=4)
    sizes = loader.cu_sizes(256, 32)
    seen = {loader.next_batch(256, 32, 1)[3].numel() for _ in range(300)}
    assert len(seen) > 2 and seen <= set(sizes)  # the stream changes bucket; every bucket is pre-warmed
    assert sizes[0] == 12 and sizes == list(range(12, sizes[-1] + 1, 4))  # 8 pieces of 32 + 1 entry -> 12
    warm = loader.warm_batches(256, 32, 1)
    assert [b[3].numel() for b in warm] == sizes
    for x, y, ids, cu in warm:
        assert x.shape == y.shape == ids.shape == (1, 256) and cu.dtype == torch.int32
        starts = cu[cu < 256].tolist()
        assert starts[0] == 0 and all(b - a <= 32 for a, b in zip(starts, [*starts[1:], 256], strict=True))
        assert torch.equal(ids[0], torch.bucketize(torch.arange(256), torch.tensor(starts[1:]), right=True))
    fixed = DocumentPackingLoader([tmp_path / "fineweb_train_000000.bin"], 0, 1, torch.device("cpu"), BOS,
                                  vocab_size=320, cu_bucket_size=4, max_docs=4)
    assert fixed.cu_sizes(256, 32) == [12, 16]  # 4 documents + the leading one + 8 cuts = 13 segments


@pytest.mark.parametrize("extra", [[], ["doc_packing.prewarm=false"]], ids=["prewarm", "no_prewarm"])
def test_compiled_loop_with_prewarmed_buckets_never_recompiles(tiny_data, tiny_core, tmp_path, monkeypatch, extra):
    """A tiny doc_packing stream whose cu_seqlens size changes (bucket 2: 18 entries, then 20 at step 11): the
    compiled warm-up steps every size (18 and 20 with max_docs 1), so the timed loop compiles nothing new;
    without the pre-warm the loop recompiles."""
    import functools

    import core.train
    from core.train import train

    sets = [*tiny_core, f"core.data_path={tiny_data}", f"core.out_dir={tmp_path}", "doc_packing.cu_bucket_size=2",
            "doc_packing.max_docs=1", "core.compile=true", "core.warmup_steps=1", "core.val_max_tokens=1024", *extra]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["doc_packing"], sets=sets,
                  check_plugins=REGISTRY.check)
    monkeypatch.setattr(core.train.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    run = setup(cfg, REGISTRY)
    loader = run.hook.pg_train_loader(run=run)
    stream = {loader.next_batch(1024, 64, 1)[3].numel() for _ in range(12)}
    assert len(stream) > 1  # the loop meets a second bucket size
    train(run)
    log = (run.run_dir / "train.log").read_text()
    torch._dynamo.reset()
    assert ("timed_loop_recompiles:0" in log) == (not extra), log[-300:]


@pytest.mark.parametrize("dynamic_cu", [False, True], ids=["buckets", "dynamic_cu"])
def test_warmup_compiles_one_graph_per_mode_and_cu_size_logging_each(tiny_data, tiny_core, tmp_path, monkeypatch,
                                                                      dynamic_cu):
    """PR #1855's warm-up at tiny size (flat doc_packing rows + a recurrence mode, aot_eager): one training graph
    per (mode, cu_seqlens size), none more — the rotary tables are primed at the flat row's length, not
    train_seq_len (a graph traced on the shorter table was recompiled at once) — each warm-up step logged with
    its seconds and graph count, and the timed loop, whose packed batches change document boundaries and cu
    size, compiles nothing. With `dynamic_cu` (the dense CPU path never reads cu_seqlens) one graph per mode."""
    import functools
    import re

    import core.train
    from core.train import train
    from pgolf.records import parse_log

    sets = [*tiny_core, f"core.data_path={tiny_data}", f"core.out_dir={tmp_path}", "doc_packing.cu_bucket_size=2",
            "doc_packing.max_docs=1", "core.compile=true", "core.warmup_steps=1", "core.val_max_tokens=1024",
            "core.num_layers=4", "depth_recurrence.loop_start=1", "depth_recurrence.loop_end=2",
            "depth_recurrence.enable_at=0.5", f"doc_packing.dynamic_cu={str(dynamic_cu).lower()}"]
    cfg = resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["doc_packing", "depth_recurrence"],
                  sets=sets, check_plugins=REGISTRY.check, check_settings=REGISTRY.check_settings)
    monkeypatch.setattr(core.train.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    run = setup(cfg, REGISTRY)
    loader = run.hook.pg_train_loader(run=run)
    sizes = loader.cu_sizes(1024, 64)
    boundaries = {tuple(loader.next_batch(1024, 64, 1)[3].tolist()) for _ in range(12)}
    assert len(sizes) == 2 and len(boundaries) > 6 and len({len(b) for b in boundaries}) == 2
    train(run)
    log = (run.run_dir / "train.log").read_text()
    torch._dynamo.reset()
    assert "warmup_plan:steps:1 modes:1 batch_shapes:2x2" in log
    warm = re.findall(r"^(warmup_\w+):(.*) time:([\d.]+)s graphs:(\d+)$", log, re.M)
    assert [w[0] for w in warm] == ["warmup_step", "warmup_mode"] + ["warmup_shape"] * 4 + ["warmup_mode"]
    assert [w[1] for w in warm[2:]] == [f"{i}/2 mode:{m} batch:1x1024,1x1024,1x1024,{s}"
                                        for m in ("base", "recurrence") for i, s in enumerate(sizes, 1)] + ["base"]
    assert [float(w[2]) for w in warm] == sorted(float(w[2]) for w in warm)
    graphs = 2 if dynamic_cu else 2 * len(sizes)  # (base, recurrence) [x sizes]
    assert int(warm[0][3]) == 1 and int(warm[-1][3]) == graphs
    assert parse_log(log, 1024)["warmup"] == {"seconds": float(warm[-1][2]), "graphs": graphs}  # the bench's
    assert "mode:recurrence on step:6" in log and "timed_loop_recompiles:0" in log


# --- FA4's varlen kernel as a traceable op (CPU: a stand-in kernel behind the op's seam) -------------------------
def _segments(cu: torch.Tensor) -> list[tuple[int, int]]:
    starts = cu.tolist()
    return [(a, b) for a, b in zip(starts, starts[1:], strict=False) if b > a]


def _standin_varlen_out(q, k, v, cu):
    """(N, H, D) q, (N, Hkv, D) k/v: each segment alone through causal SDPA; also its (H, N) log-sum-exp."""
    rep = q.size(1) // k.size(1)
    outs, lses = [], []
    for a, b in _segments(cu):
        qs, ks, vs = (z[a:b].transpose(0, 1) for z in (q, k, v))
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        outs.append(F.scaled_dot_product_attention(qs[None], ks[None], vs[None], is_causal=True)[0].transpose(0, 1))
        s = (qs @ ks.transpose(-1, -2)) * qs.size(-1) ** -0.5
        s = s.masked_fill(~torch.ones(b - a, b - a, dtype=torch.bool).tril(), float("-inf"))
        lses.append(torch.logsumexp(s.float(), dim=-1))
    return torch.cat(outs), torch.cat(lses, dim=1)


def _standin_varlen_fwd(q, k, v, cu, max_seqlen):
    assert max_seqlen >= max(b - a for a, b in _segments(cu))
    return _standin_varlen_out(q, k, v, cu)


def _standin_varlen_bwd(q, k, v, out, dout, lse, cu, max_seqlen):
    """Attention's backward by hand per segment (a custom op's body runs without autograd), GQA grads summed."""
    rep = q.size(1) // k.size(1)
    dq, dk, dv = (torch.zeros_like(z) for z in (q, k, v))
    for a, b in _segments(cu):
        qs, ks, vs, os_, dos = (z[a:b].transpose(0, 1).float() for z in (q, k, v, out, dout))
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        scale = qs.size(-1) ** -0.5
        p = ((qs @ ks.transpose(-1, -2)) * scale - lse[:, a:b, None]).exp()
        p = p.masked_fill(~torch.ones(b - a, b - a, dtype=torch.bool).tril(), 0.0)
        dvs = p.transpose(-1, -2) @ dos
        ds = p * (dos @ vs.transpose(-1, -2) - (dos * os_).sum(-1, keepdim=True)) * scale
        dq[a:b] = (ds @ ks).transpose(0, 1).to(q.dtype)
        h = k.size(1)
        dk[a:b] = (ds.transpose(-1, -2) @ qs).view(h, rep, b - a, -1).sum(1).transpose(0, 1).to(k.dtype)
        dv[a:b] = dvs.view(h, rep, b - a, -1).sum(1).transpose(0, 1).to(v.dtype)
    return dq, dk, dv


@pytest.fixture
def fa4_varlen_standin(monkeypatch):
    import plugins.lib.fa4_varlen as va

    monkeypatch.setitem(va.VARLEN_KERNELS, "fwd", _standin_varlen_fwd)
    monkeypatch.setitem(va.VARLEN_KERNELS, "bwd", _standin_varlen_bwd)
    return va


def _flat(q, k, v, lens):
    """packed_qkv's (B, T, H, D) tensors as FA's flat (B·T, H, D), and cu_seqlens padded with N as the loader pads."""
    flat = [z.detach().reshape(-1, z.size(2), z.size(-1)).requires_grad_() for z in (q, k, v)]
    t = q.size(1)
    starts = [bi * t + s for bi, row in enumerate(lens) for s in np.cumsum([0, *row[:-1]]).tolist()]
    cu = torch.tensor([*starts, len(lens) * t, len(lens) * t], dtype=torch.int32)
    return flat, cu


def test_fa4_varlen_op_equals_each_document_alone_outputs_and_gradients(fa4_varlen_standin):
    q, k, v, _, lens = packed_qkv(seed=5)
    ref = grads(lambda a, b, c: per_document_reference(a, b, c, lens), q, k, v)
    (fq, fk, fv), cu = _flat(q, k, v, lens)
    b, t, h, d = q.shape
    got = grads(lambda a, c, e: fa4_varlen_standin.fa4_varlen_func(a, c, e, cu, cu, 22, 22, causal=True).reshape(
        b, t, h, d), fq, fk, fv)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for g, r, z in zip(got[1:], ref[1:], (q, k, v), strict=True):  # flat grads back to (B, T, H, D)
        torch.testing.assert_close(g.view(b, t, z.size(2), d), r, rtol=1e-5, atol=1e-5)


def test_fa4_varlen_op_traces_fullgraph_and_passes_opcheck(fa4_varlen_standin):
    va = fa4_varlen_standin
    q, k, v, _, lens = packed_qkv(seed=6)
    (fq, fk, fv), cu = _flat(q, k, v, lens)
    torch._dynamo.reset()
    fn = torch.compile(lambda a, c, e: va.fa4_varlen_func(a, c, e, cu, cu, 22, 22).square().sum(), fullgraph=True,
                       backend="aot_eager")
    loss = fn(fq, fk, fv)
    loss.backward()
    torch.testing.assert_close(loss, _standin_varlen_out(fq, fk, fv, cu)[0].square().sum(), rtol=1e-5, atol=1e-5)
    assert fq.grad is not None and fk.grad.shape == fk.shape
    torch._dynamo.reset()
    args = (fq.detach(), fk.detach(), fv.detach(), cu, 22)
    torch.library.opcheck(torch.ops.pgolf.fa4_varlen_fwd.default, args, test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match="causal self-attention only"):
        va.fa4_varlen_func(fq, fk, fv, cu, cu.clone(), 22, 22)


def test_chunked_kernel_equals_each_document_alone_outputs_and_gradients():
    """Chunks of 12 queries with their previous chunk's keys: exact for segments ≤ 12 + 1 tokens, padded rows too
    (T = 40 is no multiple of 12); a longer segment (22 tokens) would lose its far keys, so it is cut as the loader
    cuts documents, every max_seqlen tokens from its start."""
    q, k, v, ids, lens = packed_qkv(seed=7)
    lens = [[5, 12, 1, 12, 10], [12, 5, 9, 12, 2]]  # packed_qkv's rows with segments ≤ 12
    ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lens])
    attn = VarlenAttention("sdpa", kernel="chunked", max_seqlen=12)
    got = grads(lambda a, b, c: attn(a, b, c, {"doc_ids": ids}), q, k, v)
    ref = grads(lambda a, b, c: per_document_reference(a, b, c, lens), q, k, v)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    whole = [[40], [40]]  # one 40-token segment per row: longer than a chunk and its predecessor
    one_doc = torch.zeros(2, 40, dtype=torch.long)
    with torch.no_grad():
        far = attn(q, k, v, {"doc_ids": one_doc})
        assert not torch.allclose(far, per_document_reference(q, k, v, whole), atol=1e-3)


def test_chunked_kernel_traces_with_zero_graph_breaks_and_shares_one_mask():
    q, k, v, ids, _ = packed_qkv(seed=8)
    q, k, v = (z.detach() for z in (q, k, v))
    attn = VarlenAttention("sdpa", kernel="chunked", max_seqlen=16)
    torch._dynamo.reset()
    with torch.no_grad():
        exp = torch._dynamo.explain(lambda a, b, c, i: attn(a, b, c, {"doc_ids": i}))(q, k, v, ids)
        ctx = {"doc_ids": ids}
        attn(q, k, v, ctx)
        assert ctx["chunk_mask"].shape == (2 * 3, 1, 16, 32)  # ⌈40 / 16⌉ chunks per row, made once per forward
    assert exp.graph_break_count == 0, exp.break_reasons
    torch._dynamo.reset()


def test_chunked_varlen_func_is_fa3_varlen_on_flat_packed_documents():
    from plugins.lib.chunked_varlen import chunked_varlen_func

    q, k, v, _, lens = packed_qkv(seed=9)
    (fq, fk, fv), cu = _flat(q, k, v, lens)
    b, t, h, d = q.shape
    got = chunked_varlen_func(fq, fk, fv, cu, cu, 22, 22).reshape(b, t, h, d)
    torch.testing.assert_close(got, per_document_reference(q, k, v, lens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_seqlen_q must be the segment cap"):
        chunked_varlen_func(fq, fk, fv, cu, cu, 0, 0)
    with pytest.raises(ValueError, match="causal self-attention only"):
        chunked_varlen_func(fq, fk, fv, cu, cu, 22, 22, causal=False)


def test_flash_varlen_func_prefers_fa3_and_wraps_fa4_in_the_op(monkeypatch):
    import importlib
    import types

    import plugins.varlen_attention as va

    fa3 = types.SimpleNamespace(flash_attn_varlen_func=lambda *a, **kw: "fa3")
    fa4 = types.SimpleNamespace(flash_attn_varlen_func=lambda *a, **kw: "raw fa4: untraceable")
    present = {"flash_attn_interface": fa3, "flash_attn.cute": fa4}

    def fake_import(name):
        if name not in present:
            raise ImportError(name)
        return present[name]

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert va.flash_varlen_func() is fa3.flash_attn_varlen_func
    del present["flash_attn_interface"]
    assert va.flash_varlen_func() is va.fa4_varlen_func
    present.clear()
    assert va.flash_varlen_func() is None


SHIM_VARLEN_CHECK = """
import sys
import torch
import torch.nn.functional as F
from itertools import pairwise
import flash_attn_interface as shim
lib = sys.modules["pgolf_bench_varlen"]
calls = []
lib.VARLEN_KERNELS.update(fwd=lambda *a: calls.append(1) or _standin_varlen_fwd(*a), bwd=_standin_varlen_bwd)
gen = torch.Generator().manual_seed(0)
n, starts = 96, [0, 30, 31, 70]
cu = torch.tensor([*starts, n, n, n, n], dtype=torch.int32)
q, k, v = (torch.randn(n, h, 8, generator=gen) for h in (4, 2, 2))
got = shim.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=40, max_seqlen_k=40,
                                  causal=True)
want = torch.cat([F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                  v[a:b].transpose(0, 1), is_causal=True, enable_gqa=True).transpose(0, 1)
                  for a, b in pairwise([*starts, n])])
torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
assert calls == [1]
print("ok")
"""


def test_bench_record_standin_runs_pgolfs_varlen_kernel_fa4_or_chunked(tmp_path, monkeypatch):
    import inspect
    import os
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    import pgolf.bench as bench

    (tmp_path / "flash_attn_interface.py").write_text(bench.SHIM, encoding="utf-8")
    env = dict(os.environ, PGOLF_BENCH_SDPA="cudnn",
               PGOLF_BENCH_VARLEN_PY=str(bench.REPO / "plugins" / "lib" / "fa4_varlen.py"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parent.parent)]))
    helpers = "".join(inspect.getsource(f) + "\n" for f in (_segments, _standin_varlen_out, _standin_varlen_fwd,
                                                             _standin_varlen_bwd))
    proc = subprocess.run([sys.executable, "-c", "import torch\nimport torch.nn.functional as F\n" + helpers
                           + SHIM_VARLEN_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    module, function = bench.VARLEN_MODULES["chunked"]
    env.update(PGOLF_BENCH_VARLEN_PY=str(bench.REPO / "plugins" / "lib" / module), PGOLF_BENCH_VARLEN_FN=function)
    chunked_check = SHIM_VARLEN_CHECK.replace('lib.VARLEN_KERNELS.update(', 'dict(').replace("assert calls == [1]", "")
    proc = subprocess.run([sys.executable, "-c", "import torch\nimport torch.nn.functional as F\n" + helpers
                           + chunked_check], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    def config(kernel: str) -> Config:  # a resolved configuration, as the bench has it
        return resolve(plugin_config_classes=REGISTRY.config_classes(), plugins=["doc_packing", "varlen_attention"],
                       sets=[f"varlen_attention.kernel={kernel}"], check_plugins=REGISTRY.check)

    cfg = config("auto")
    monkeypatch.setattr("plugins.lib.fa4.available", lambda: True)
    assert bench.pgolf_varlen_kernel(cfg) == "fa4"
    for kernel in ("flex", "chunked", "dense"):
        assert bench.pgolf_varlen_kernel(config(kernel)) == kernel
    assert bench.pgolf_varlen_kernel(SimpleNamespace(plugins=["xsa"])) is None
    monkeypatch.setattr("plugins.lib.fa4.available", lambda: False)
    assert bench.pgolf_varlen_kernel(cfg) == "flex"
    assert bench.record_attention_label("cudnn", False, True, "fa4") == "sdpa-cudnn+fa4-varlen"
    assert bench.record_attention_label("cudnn", False, True, "chunked") == "sdpa-cudnn+chunked-varlen"
    assert bench.record_attention_label("cudnn", False, True, "dense") == "sdpa-cudnn+flex-varlen"
    assert bench.record_attention_label("cudnn", False, varlen=True) == "sdpa-cudnn+flex-varlen"
