"""Static rules added with the dynamic part: EVAL.TTT / PREQUANT_TTT / SLOT / NGRAM / NO_SELECTION pattern scans,
HW.H100, TRACK.PLACEMENT, FILES.LOG_PROVENANCE, COMPUTE.EXTERNAL — each bad hand-made folder caught, each good
twin passing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from validator.rules import FolderContext, builtin_rules
from validator.rules.base import FAIL, PASS

WARN = "warn"  # the status (validator.rules.base.WARN is the severity)

RULES = {r.id: r for r in builtin_rules()}

SCORE_FIRST = """
def eval_val_ttt(model, opt, val_tokens, chunks):
    loss_sum = 0.0
    for ci, (s, e) in enumerate(chunks):
        chunk = val_tokens[s:e]
        with torch.no_grad():
            loss_sum += model(chunk).sum()
        if ci < len(chunks) - 1:
            model(chunk).backward()
            opt.step()
    return loss_sum
"""
ADAPT_FIRST = """
def eval_val_ttt(model, opt, val_tokens, chunks):
    loss_sum = 0.0
    for s, e in chunks:
        chunk = val_tokens[s:e]
        model(chunk).backward()
        opt.step()
        with torch.no_grad():
            loss_sum += model(chunk).sum()
    return loss_sum
"""
VAL_WARMUP = """
def eval_all(model, opt, val_tokens):
    log("ttt: warming up compile")
    for n in (64, 128):
        row = val_tokens[:n]
        model(row).backward()
        opt.step()
"""
SYNTH_WARMUP = VAL_WARMUP.replace("row = val_tokens[:n]", "row = torch.randint(0, 1024, (n,))")
PREQUANT = """
def finetune_on_val(model, opt, val_tokens):
    for i in range(10):
        model(val_tokens[i * 64:(i + 1) * 64]).backward()
        opt.step()

def main(model, opt, val_tokens):
    finetune_on_val(model, opt, val_tokens)
    torch.save(model.state_dict(), "final_model.pt")
"""
PREQUANT_GOOD = PREQUANT.replace("""    finetune_on_val(model, opt, val_tokens)
    torch.save(model.state_dict(), "final_model.pt")""", """    torch.save(model.state_dict(), "final_model.pt")
    finetune_on_val(model, opt, val_tokens)""")
SLOT = """
def eval_slot(model, x, y):
    delta = torch.zeros(1, 1, 512, requires_grad=True)
    opt = torch.optim.AdamW([delta], lr=0.01)
    for _ in range(8):
        F.cross_entropy(model(x) + delta, y).backward()
        opt.step()
"""
NGRAM = """
def ngram_eval_score(val_tokens, targets, i):
    ctx_hash = (val_tokens[i - 1] * 31 + targets[i]) % 4096
    return ctx_hash
"""
NGRAM_GOOD = "def bigram_features(tokens):\n    return tokens[:-1] * 31 + tokens[1:]\n"
MIN_SEL = """
def eval_two(nll_a, nll_b):
    return torch.minimum(nll_a, nll_b).sum()
"""


def make(tmp: Path, script: str = "", track: str = "track_10min_16mb", files: dict[str, str] | None = None,
         sub: dict | None = None) -> FolderContext:
    f = tmp / "records" / track / "2026-01-01_fixture"
    f.mkdir(parents=True)
    (f / "train_gpt.py").write_text("import torch\nimport torch.nn.functional as F\n" + textwrap.dedent(script))
    (f / "submission.json").write_text(json.dumps(sub or {"name": "fixture", "val_bpb": 1.0}))
    for name, text in (files or {}).items():
        (f / name).parent.mkdir(parents=True, exist_ok=True)
        (f / name).write_text(text)
    return FolderContext(f)


def status(ctx: FolderContext, rule: str) -> str:
    st = [x.status for x in RULES[rule].run(ctx)]
    return FAIL if FAIL in st else WARN if WARN in st else st[0]


@pytest.mark.parametrize(("rule", "bad", "good", "want"), [
    ("EVAL.TTT", ADAPT_FIRST, SCORE_FIRST, FAIL),  # causality decides a record: ERROR by default
    ("EVAL.TTT", VAL_WARMUP, SYNTH_WARMUP, FAIL),
    ("EVAL.PREQUANT_TTT", PREQUANT, PREQUANT_GOOD, FAIL),
    ("EVAL.SLOT", SLOT, SCORE_FIRST, WARN),  # context-only SLOT is unruled: the flip test decides
    ("EVAL.NGRAM", NGRAM, NGRAM_GOOD, FAIL),
    ("EVAL.NO_SELECTION", MIN_SEL, SCORE_FIRST, WARN),  # min() also tracks best val loss: the harness decides
], ids=["adapt-then-score", "val-warmup", "prequant", "slot", "ngram-target-key", "min-over-passes"])
def test_eval_pattern_scans(tmp_path, rule, bad, good, want):
    findings = RULES[rule].run(make(tmp_path / "bad", bad))
    assert status(make(tmp_path / "bad2", bad), rule) == want
    if want == FAIL:
        assert any(f.status == FAIL and f.severity == "ERROR" for f in findings)
    assert status(make(tmp_path / "good", good), rule) == PASS


NETWORK_CALL = "import urllib.request\nurllib.request.urlopen('http://example.com/val.bin')\n"
REACHES = {"import": "import helper_mod\n",
           "exec_stub": 'exec(open(__file__.replace("train_gpt.py", "helper_mod.py")).read())\n',
           "from_import": "from helper_mod import eval_val_ttt\n"}


@pytest.mark.parametrize("reach", list(REACHES))
@pytest.mark.parametrize(("rule", "bad", "want"), [
    ("EVAL.TTT", ADAPT_FIRST, FAIL), ("EVAL.PREQUANT_TTT", PREQUANT, FAIL), ("EVAL.NGRAM", NGRAM, FAIL),
    ("EVAL.NO_SELECTION", MIN_SEL, WARN), ("DATA.NO_TRAIN_AT_EVAL", NETWORK_CALL, FAIL),
], ids=["adapt-then-score", "prequant", "ngram", "min-over-passes", "network"])
def test_code_in_a_reached_helper_is_scanned_like_train_gpt(tmp_path, reach, rule, bad, want):
    """Threat: train_gpt.py is a stub (`import helper`, `exec(open(...))`: a merged record ships one) and the
    violation sits in the helper, which the scans never read: each now reads every local file the script reaches
    and names it. A helper nothing reaches is not part of the run (SIZE.CODE lists it)."""
    ctx = make(tmp_path / "a", REACHES[reach], files={"helper_mod.py": "import torch\n" + textwrap.dedent(bad)})
    found = [f for f in RULES[rule].run(ctx) if f.status == want]
    assert found and {f.file for f in found} == {"helper_mod.py"}, RULES[rule].run(ctx)
    unreached = make(tmp_path / "b", "", files={"helper_mod.py": "import torch\n" + textwrap.dedent(bad)})
    assert status(unreached, rule) == PASS


def test_score_first_ttt_recognised(tmp_path):
    found = RULES["EVAL.TTT"].run(make(tmp_path, SCORE_FIRST))
    assert found[0].status == PASS and "1 accumulate the score before backward()" in found[0].message


SMI = "|   0  NVIDIA {gpu}                    Off |   00000002:00:01.0 Off |\n"
LOG = ("world_size:{ws} grad_accum_steps:1\n{smi}"
       "final_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.00000000\n")


@pytest.mark.parametrize(("gpu", "ws", "track", "want"), [
    ("H100 80GB HBM3", 8, "track_10min_16mb", PASS), ("H200", 8, "track_10min_16mb", FAIL),
    ("H100 80GB HBM3", 2, "track_10min_16mb", FAIL), ("H100 PCIe", 8, "track_10min_16mb", WARN),
    ("GeForce RTX 5090", 1, "track_non_record_16mb", WARN),
])
def test_hw_h100(tmp_path, gpu, ws, track, want):
    ctx = make(tmp_path, files={"train.log": LOG.format(ws=ws, smi=SMI.format(gpu=gpu))}, track=track)
    assert status(ctx, "HW.H100") == want


def test_track_placement(tmp_path):
    assert status(make(tmp_path / "a", sub={"name": "Non-record: a study", "val_bpb": 1.2}), "TRACK.PLACEMENT") == WARN
    assert status(make(tmp_path / "b", sub={"name": "x", "track": "non-record-16mb"}), "TRACK.PLACEMENT") == WARN
    assert status(make(tmp_path / "c", sub={"name": "x", "track": "10min_16mb"}), "TRACK.PLACEMENT") == PASS


def test_log_provenance(tmp_path):
    script = "x = 1\ny = 2\n" + "\n".join(f"v{i} = {i}" for i in range(20)) + "\n"
    shipped = "import torch\nimport torch.nn.functional as F\n" + script
    tail = "=" * 100 + "\nfinal_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.00000000\n"
    same = make(tmp_path / "same", script, files={"train.log": shipped + "\n" + tail})
    assert status(same, "FILES.LOG_PROVENANCE") == PASS
    other = shipped.replace("\n".join(f"v{i} = {i}" for i in range(10)), "\n".join(f"w{i} = 0" for i in range(10)))
    diff = make(tmp_path / "diff", script, files={"train.log": other + "\n" + tail})
    assert status(diff, "FILES.LOG_PROVENANCE") == FAIL
    touched = make(tmp_path / "touch", script, files={"train.log": shipped.replace("y = 2", "y = 3") + "\n" + tail})
    assert status(touched, "FILES.LOG_PROVENANCE") == WARN


def test_external_compute(tmp_path):
    ctx = make(tmp_path / "blob", files={"tables.bin": "x" * 1_100_000})
    assert status(ctx, "COMPUTE.EXTERNAL") == WARN
    ctx = make(tmp_path / "abs", "t = torch.load('/workspace/precomputed.pt')\n")
    assert status(ctx, "COMPUTE.EXTERNAL") == WARN
    assert status(make(tmp_path / "ok", SCORE_FIRST), "COMPUTE.EXTERNAL") == PASS
