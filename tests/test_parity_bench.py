"""benchmarks/pr1493_parity_cpu.py keeps working: every text patch it applies to the record and to core.optim
still finds its target (a silent miss would make the fp32 / noise-floor comparisons compare the wrong thing)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (its folder on sys.path while it imports)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("pr1493_parity_cpu")


def test_pgolf_fp32_patches_find_core_optim(bench):
    src = (BENCH.parent / "core" / "optim.py").read_text()
    for old, new in bench.PGOLF_NS_FP32:
        assert src.count(old) == 1, old
        assert "bfloat16" not in new


@pytest.mark.parametrize("flags", [dict(ns_fp32=True, dump=True), dict(noise=True)])
def test_record_patches_apply(bench, flags):
    try:
        text = bench.record_source(None, **flags)
    except (subprocess.CalledProcessError, OSError) as e:  # no git mirror here
        pytest.skip(f"PR #1493 record not available: {e}")
    assert "raise SystemExit(0)" in text and "train_loss: {train_loss.item():.8f}" in text
    if flags.get("ns_fp32"):
        assert "X=G.bfloat16()" not in text and "_dump_state(step+1" in text
    if flags.get("noise"):
        assert "X=(X/(X.norm()+eps)).bfloat16()" in text


def test_write_shard_keeps_a_prefix(bench, tmp_path):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, 1000)
    src = tmp_path / "fineweb_train_000000.bin"
    src.write_bytes(header.tobytes() + np.arange(1000, dtype="<u2").tobytes())
    assert bench.write_shard(src, tmp_path / "a.bin", 300) == 300
    data = (tmp_path / "a.bin").read_bytes()
    assert np.frombuffer(data[:12], dtype="<i4").tolist() == [20240520, 1, 300]
    assert np.frombuffer(data[1024:], dtype="<u2").tolist() == list(range(300))
    assert bench.write_shard(src, tmp_path / "b.bin", 0) == 1000


@pytest.mark.parametrize("name", ["pr315", "pr534", "pr609"])
def test_record_parity_cpu_patches_apply_to_the_sdpa_and_fa3_records(name, tmp_path):
    """benchmarks/record_parity_cpu.py patches PR #315/#609 (FA3 import -> SDPA) and PR #534 (SDPA already, its
    validation tokens at args.train_seq_len): every patch finds its target, the val cap uses the script's length."""
    import os
    import re

    from pgolf.cli import main

    mirror = Path(os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", "/work/.mirror/openai+parameter-golf/repo"))
    if not (mirror / "HEAD").exists():
        pytest.skip(f"no parameter-golf git mirror at {mirror}")
    src = tmp_path / "train_gpt.py"
    assert main(["bench", "--extract-record", str(src), "--profile", name, "--mirror", str(mirror)]) == 0
    text = load_benchmark("record_parity_cpu").patched(src, tmp_path / "cpu.py").read_text()
    assert "flash_attn_interface" not in text and 'torch.device("cpu")' in text
    seq = re.search(r"val_tokens = load_validation_tokens\(args\.val_files, ([\w.]+)\)", text).group(1)
    assert f"(_cap // {seq}) * {seq}" in text
    assert seq == ("args.train_seq_len" if name == "pr534" else "val_seq_len")
    fp32 = load_benchmark("record_parity_cpu").patched(src, tmp_path / "cpu32.py", ns_fp32=True).read_text()
    assert "X = G.float()" in fp32 and "X = G.bfloat16()" not in fp32
    assert all("bfloat16" not in line for line in fp32.splitlines() if "updates_flat = torch.zeros" in line)
    assert ("v.detach().float().cpu().clone()" in fp32) == (name == "pr534")  # #534's SWA snapshot, copied
    bf16 = load_benchmark("record_parity_cpu").patched(src, tmp_path / "cpu16.py", bf16=True).read_text()
    assert "t = torch.arange(seq_len, device=device, dtype=torch.float32)" in bf16  # the compiled graph's RoPE table
    assert bf16.count("_cached = freqs.cos().to(_dt)") == 1 and bf16.count("_cached = freqs.sin().to(_dt)") == 1


def test_pr1493_bf16_patch_fills_the_rope_table_as_the_compiled_graph(bench):
    try:
        text = bench.record_source(None, bf16=True)
    except (subprocess.CalledProcessError, OSError) as e:  # no git mirror here
        pytest.skip(f"PR #1493 record not available: {e}")
    assert bench.COMPILED_ROTARY[1] in text and bench.COMPILED_ROTARY[0] not in text


def test_manpage_corpus_renders_shuffles_and_never_overwrites(tmp_path, monkeypatch):
    import gzip
    import json
    import shutil

    corpus = load_benchmark("manpage_corpus")
    if not (shutil.which("mandoc") or shutil.which("groff")):
        pytest.skip("neither mandoc nor groff installed")
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    for i in range(6):
        page = (f".TH TOOL{i} 1\n.SH NAME\ntool{i} \\- does thing {i}\n"
                f".SH DESCRIPTION\n\\fBbold{i}\\fR and \\fIit{i}\\fR.\n")
        (man1 / f"tool{i}.1.gz").write_bytes(gzip.compress(page.encode()))
    out = tmp_path / "man.jsonl"
    argv = ["manpage_corpus.py", "--out", str(out), "--root", str(tmp_path / "man"), "--every", "2"]
    monkeypatch.setattr("sys.argv", argv)
    corpus.main()
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert sorted(t.split("does thing ")[1][0] for t in texts) == ["1", "3", "5"]  # every second page
    assert all("\b" not in t for t in texts) and any("bold3 and it3" in t for t in texts)  # overstrike removed
    with pytest.raises(SystemExit, match="exists"):
        corpus.main()
