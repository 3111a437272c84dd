"""The README works as written: every line of its tour runs (at tiny size, through the challenge's
environment variables) in a folder laid out like a fresh clone, and exits 0."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tiny model and data settings (environment variables: the README's own --set / inline values still win).
TINY_ENV = {
    "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64",
    "TRAIN_BATCH_TOKENS": "1024", "ITERATIONS": "4", "WARMUP_STEPS": "0", "WARMDOWN_ITERS": "2",
    "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "2", "VAL_BATCH_SIZE": "2048", "PGOLF_VAL_MAX_TOKENS": "4096",
    "MAX_WALLCLOCK_SECONDS": "0", "MUON_MOMENTUM_WARMUP_STEPS": "2", "PGOLF_DEVICE": "cpu",
    "PGOLF_COMPILE": "false", "PGOLF_GRAD_ACCUM_STEPS": "1", "BIGRAM_HASH_BUCKETS": "64",
    "SLIDING_WINDOW_STRIDE": "32", "OMP_NUM_THREADS": "1",
    # the PR #1493 line: its SP8192 data stands in as the sp1024 default corpus, two calibration batches
    "VOCAB_SIZE": "1024", "GPTQ_CALIB_BATCHES": "2",
}
# The EVAL harness world of `pgolf validate --run` at tiny size (test_validator_dynamic's registry check: every
# evaluator, every check; the default size takes ~8 min on 2 CPU cores, this ~1 min).
TINY_HARNESS = " ".join(f"--harness-set {kv}" for kv in ("vocab=16", "n_docs=3", "doc_len='[30,60]'", "seq_len=32",
                                                         "cuts=3", "trunc_cuts=1", "vfold_positions=2", "iso_docs=1"))
# What "tiny size" changes in a line: a long run, 8 GPUs and the validator's harness.
TINY_EDITS = [(r"ITERATIONS=2000", "ITERATIONS=3"), (r"--nproc 8", "--nproc 2"),
              (r"\s*\[[^\]]*\]", ""),  # [optional arguments] left out
              (r" --run$", f" --run {TINY_HARNESS}")]


def tour_lines(readme: str) -> list[str]:
    """The commands of the README's tour block (continuation comment lines and trailing comments dropped)."""
    block = readme.split("## A tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lines.append(re.sub(r"\s{2,}#.*$", "", line).strip())
    return lines


def tour_groups(lines: list[str]) -> list[list[str]]:
    """The tour split into groups of lines that share no files, each run in its own clone: a line naming
    `<run_id>` (the tour's first run) joins the first line's group, one naming another run or a records folder
    (`runs/…`, `records/…`) joins the group of the line before it, any other line starts a group."""
    groups: list[list[str]] = []
    home: list[int] = []  # line index -> its group
    for i, line in enumerate(lines):
        if "<run_id>" in line and i:
            g = home[0]
        elif i and re.search(r"\b(runs|records)/", line):
            g = home[i - 1]
        else:
            groups.append([])
            g = len(groups) - 1
        groups[g].append(line)
        home.append(g)
    return groups


TOUR = tour_groups(tour_lines((ROOT / "README.md").read_text(encoding="utf-8")))


def test_readme_tour_lines_are_found():
    lines = tour_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(lines) >= 15 and all(line.startswith(("pgolf ", "for ", "NUM_LAYERS=")) for line in lines)
    groups = tour_groups(lines)
    assert sorted(x for g in groups for x in g) == sorted(lines)
    first = groups[0]
    assert first[0] == lines[0] and all("<run_id>" in x for x in first[1:]) and len(first) >= 4
    assert any(g[0].startswith("for s in") and any(x.startswith("pgolf record") for x in g) for g in groups)


def test_tour_groups_keep_what_a_line_reads_with_what_made_it():
    lines = ["pgolf train", "pgolf train --plugins ema", "pgolf eval runs/<run_id>", "pgolf plugins list",
             "for s in 1 2; do RUN_ID=s$s pgolf train; done", "pgolf record runs/s1 runs/s2 --name x",
             "pgolf size records/track_*/<folder>"]
    assert tour_groups(lines) == [["pgolf train", "pgolf eval runs/<run_id>"], ["pgolf train --plugins ema"],
                                  ["pgolf plugins list"], lines[4:]]


@pytest.fixture(scope="module")
def default_data_cache(tmp_path_factory) -> Path:
    """The embedded corpus built once (sp1024), the cache every group's `pgolf train` reads (PGOLF_CACHE)."""
    from dataprep.build import ensure_default_data

    cache = tmp_path_factory.mktemp("tour_cache")
    ensure_default_data(1024, cache_dir=cache)
    return cache


@pytest.mark.parametrize("group", range(len(TOUR)), ids=[g[0].split("#")[0][:40] for g in TOUR])
def test_readme_tour_runs_as_written(group, tmp_path, default_data_cache):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pgolf"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pgolf.cli "$@"\n')
    shim.chmod(0o755)
    clone = tmp_path / "clone"  # the README's relative paths: recipes/, ./data/…, runs/, records/
    clone.mkdir()
    (clone / "recipes").symlink_to(ROOT / "recipes")
    env = {**os.environ, **TINY_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "PGOLF_CACHE": str(default_data_cache)}
    from dataprep.build import ensure_default_data
    from dataprep.corpus import generate_documents

    default = ensure_default_data(1024, cache_dir=default_data_cache)
    (clone / "data" / "datasets").mkdir(parents=True)
    (clone / "data" / "datasets" / "fineweb10B_sp1024").symlink_to(default)
    (clone / "data" / "datasets" / "fineweb10B_sp8192").symlink_to(default)
    texts = clone / "my_text_dir"
    texts.mkdir()
    for i, doc in enumerate(generate_documents(400, seed=3)):
        (texts / f"doc{i}.txt").write_text(doc, encoding="utf-8")

    def run_id() -> str:
        done = sorted((p for p in (clone / "runs").iterdir() if (p / "metrics.json").is_file()),
                      key=lambda p: p.stat().st_mtime)
        return done[0].name

    for line in TOUR[group]:
        cmd = line
        for pattern, repl in TINY_EDITS:
            cmd = re.sub(pattern, repl, cmd)
        if "<run_id>" in cmd:
            cmd = cmd.replace("<run_id>", run_id())
        if "<folder>" in cmd:
            matches = glob.glob(str(clone / cmd.split()[2].replace("<folder>", "*")))
            assert len(matches) == 1, (cmd, matches)
            cmd = cmd.replace(cmd.split()[2], os.path.relpath(matches[0], clone))
        res = subprocess.run(["bash", "-c", cmd], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"README line failed: {line}\n{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
