"""`pgolf eval`, exact BPB bytes through the sink, and distributed evaluation equal to one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from core.data import load_validation_tokens, shard_files
from core.scoring import ScoreSink
from core.tokenizer import build_byte_tables
from pgolf.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained_run(tiny_data, tiny_core, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalruns")
    sets = [*tiny_core, f"core.data_path={tiny_data}", f"core.out_dir={out}", "core.run_id=r", "core.iterations=30"]
    assert main(["train", *[a for s in sets for a in ("--set", s)]]) == 0
    return out / "r"


def test_sink_bytes_equal_decoded_utf8_bytes(tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(next((tiny_data / "tokenizer").glob("*.model"))))
    tokens = load_validation_tokens(shard_files(tiny_data, "val"), 64).to(torch.int64)
    sink = ScoreSink(tokens, build_byte_tables(sp, 320))
    sink.record(torch.arange(1, tokens.numel()), torch.zeros(tokens.numel() - 1))
    # Independent count: split the stream on BOS into documents, decode each, count UTF-8 bytes.
    ids = tokens.tolist()
    docs, cur = [], []
    for t in ids:
        if t == 1:
            if cur:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    docs.append(cur)
    assert len(docs) > 3
    expected = sum(len(sp.decode(d).encode("utf-8")) for d in docs)
    assert int(sink.byte_sum.item()) == expected


def test_pgolf_eval_reproduces_the_final_score(trained_run, capsys):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(trained_run)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^final_eval val_loss:([\d.]+) val_bpb:([\d.]+) eval_time:\d+ms", out, re.M)
    assert m and float(m.group(2)) == pytest.approx(metrics["val_bpb"], abs=1e-8)
    assert main(["eval", str(trained_run / "final_model.ptz"), "--plugins", "sliding_window",
                 "--set", "sliding_window.stride=16"]) == 0
    out = capsys.readouterr().out
    assert "evaluator:sliding_window" in out
    m2 = re.search(r"^final_eval val_loss:([\d.]+) val_bpb:([\d.]+)", out, re.M)
    assert float(m2.group(2)) != float(m.group(2))


def test_pgolf_eval_bad_inputs(trained_run, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "artifact not found" in capsys.readouterr().err
    lonely = tmp_path / "lonely.ptz"
    lonely.write_bytes((trained_run / "final_model.ptz").read_bytes())
    assert main(["eval", str(lonely)]) == 2
    assert "config.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained_run / "config.json").read_text())
    (broken / "final_model.ptz").write_bytes((trained_run / "final_model.ptz").read_bytes()[:-100])
    assert main(["eval", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "final_model.ptz" in err[0]


DIST_SETTINGS = {
    "score_first_ttt": {"chunk_tokens": 1024, "epochs": 1},
    "lora_ttt": {"rank": 4, "chunk_tokens": 32, "batch_docs": 3, "lr": 0.01},
    "phased_ttt": {"rank": 4, "chunk_tokens": 32, "batch_docs": 3, "lr": 0.01, "prefix_docs": 4, "num_phases": 2,
                   "global_lr": 0.01, "global_chunk_tokens": 512, "global_batch_seqs": 4},
}


FINAL = re.compile(r"final_eval val_loss:([\d.]+) val_bpb:([\d.]+) eval_time:\d+ms tokens:(\d+) bytes:(\d+)")


@pytest.mark.parametrize("evaluator", ["plain", "sliding_window", "score_first_ttt", "lora_ttt", "phased_ttt"])
def test_distributed_eval_equals_single_process(trained_run, evaluator, capsys):
    """Two ranks (torchrun, gloo) give the single-process result (in-process, no process group)."""
    extra = [] if evaluator == "plain" else ["--plugins", evaluator]
    for k, v in DIST_SETTINGS.get(evaluator, {}).items():
        extra += ["--set", f"{evaluator}.{k}={v}"]
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): tiny ops, no spinning threads
    try:
        assert main(["eval", str(trained_run), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    m = FINAL.search(capsys.readouterr().out)
    one = (float(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pgolf.cli", "eval", str(trained_run), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = FINAL.search(proc.stdout)
    two = (float(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4)))
    assert one[2:] == two[2:]
    tol = 1e-6 if evaluator in ("score_first_ttt", "phased_ttt") else 1e-9
    assert two[0] == pytest.approx(one[0], rel=tol) and two[1] == pytest.approx(one[1], rel=tol)
