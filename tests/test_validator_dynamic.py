"""`pgolf validate --run`: the rulebook §10.8 known-bad evaluators (each caught by its rule, each good twin
passing), the byte-table audit, and hand-made records folders for the sandboxed smoke run."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from harness_checks import statuses as harness_statuses
from harness_checks import tiny_world

from core.scoring import PlainEvaluator
from plugins.lib.ttt import ScoredTokens
from validator.dynamic import DynamicOptions, harness_findings
from validator.harness import BOS, HarnessSettings, build_world, byte_audit, check_evaluator
from validator.rules.base import FAIL, PASS, SKIP
from validator.smoke import COULD_NOT_RUN, smoke_findings

SETTINGS = HarnessSettings(vocab=16, n_docs=5, doc_len=(30, 90), seq_len=32, cuts=6, trunc_cuts=1,
                           vfold_positions=2, iso_docs=1, seed=0)


@pytest.fixture(scope="module")
def world():
    yield from tiny_world(SETTINGS)


def statuses(world, evaluator) -> dict[str, str]:
    return harness_statuses(world, evaluator, SETTINGS)


def assert_clean(st: dict[str, str]) -> None:
    bad = {r: v for r, v in st.items() if v not in (PASS,)}
    assert not bad, bad


# --- fixture evaluators: stream-order windows of seq_len ---------------------------------------------------
def window_logp(model, tokens: torch.Tensor, s: int, e: int, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities (e - s, V) predicting tokens[s+1 .. e] from the window tokens[s:e]."""
    return F.log_softmax(model(tokens[s:e].view(1, -1)).double()[0] / temperature, dim=-1)


def spans(tokens: torch.Tensor, seq_len: int) -> list[tuple[int, int]]:
    n = tokens.numel() - 1
    return [(s, min(s + seq_len, n)) for s in range(0, n, seq_len)]


def record(sink, s: int, e: int, tokens: torch.Tensor, logp: torch.Tensor) -> None:
    y = tokens[s + 1 : e + 1]
    sink.record(torch.arange(s + 1, e + 1), -logp.gather(1, y.view(-1, 1)).view(-1), torch.logsumexp(logp, -1))


class Windows:
    name = "windows"
    seq_len = SETTINGS.seq_len

    def evaluate(self, run, model, tokens, sink) -> None:
        with torch.no_grad():
            for s, e in spans(tokens, self.seq_len):
                record(sink, s, e, tokens, self.logp(model, tokens, s, e))
                sink.advance_frontier(e + 1)

    def logp(self, model, tokens, s, e):
        return window_logp(model, tokens, s, e)


class ScoreFirstTTT(Windows):
    """Good: score chunk k, then one SGD step on it through ScoredTokens (the last chunk is not trained)."""

    name = "score_first_ttt_fixture"
    adapt_first = False

    def evaluate(self, run, model, tokens, sink) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        chunks = spans(tokens, self.seq_len)
        for k, (s, e) in enumerate(chunks):
            if self.adapt_first:
                self.step(model, opt, tokens[s : e + 1])
            with torch.no_grad():
                record(sink, s, e, tokens, window_logp(model, tokens, s, e))
            sink.advance_frontier(e + 1)
            if not self.adapt_first and k + 1 < len(chunks):
                self.step(model, opt, ScoredTokens(sink).read(s, e + 1))

    @staticmethod
    def step(model, opt, chunk: torch.Tensor) -> None:
        opt.zero_grad()
        model(chunk[:-1].view(1, -1), chunk[1:].view(1, -1)).backward()
        opt.step()


class AdaptThenScoreTTT(ScoreFirstTTT):
    """Bad (Issue #402/#677): train on chunk k, then score it."""

    name = "adapt_then_score"
    adapt_first = True


class PrefixCache(Windows):
    """Good: 0.7 model + 0.3 add-one unigram over tokens[:t] (the scored prefix): normalized and causal."""

    name = "prefix_cache"
    whole_stream = False

    def logp(self, model, tokens, s, e):
        v = SETTINGS.vocab
        onehot = F.one_hot(tokens.to(torch.int64), v).double()
        if self.whole_stream:
            counts = onehot.sum(0).expand(e - s, v)
        else:
            counts = onehot.cumsum(0)[s:e]  # counts of tokens[:t+1] for the prediction of tokens[t+1]
        uni = (counts + 1) / (counts.sum(-1, keepdim=True) + v)
        p = 0.7 * window_logp(model, tokens, s, e).exp() + 0.3 * uni
        return p.log()


class TwoPassCache(PrefixCache):
    """Bad (#846/#870): the cache is built from the whole stream before scoring."""

    name = "two_pass_cache"
    whole_stream = True


class TargetOnlyBlend(Windows):
    """Bad (#886): (1-a)·p_model(y) + a·P(bucket of y), with P = 1 when y was seen: computed for the target only."""

    name = "target_only_blend"

    def evaluate(self, run, model, tokens, sink) -> None:
        with torch.no_grad():
            for s, e in spans(tokens, self.seq_len):
                y = tokens[s + 1 : e + 1]
                p = window_logp(model, tokens, s, e).exp().gather(1, y.view(-1, 1)).view(-1)
                seen = torch.tensor([bool((tokens[: s + 1 + i] == y[i]).any()) for i in range(y.numel())])
                sink.record(torch.arange(s + 1, e + 1), -torch.log(0.8 * p + 0.2 * seen.double()))
                sink.advance_frontier(e + 1)


class TemperatureMix(Windows):
    """Good: one forward; a normalized mixture of two temperatures."""

    name = "temperature_mix"

    def logp(self, model, tokens, s, e):
        logits = model(tokens[s:e].view(1, -1)).double()[0]
        half = torch.log(torch.tensor(0.5, dtype=torch.float64))
        return torch.logaddexp(half + F.log_softmax(logits, -1), half + F.log_softmax(logits / 1.5, -1))


class MinOverTwoPasses(Windows):
    """Bad (#573): score every window at two temperatures (two passes) and keep the lower NLL per token."""

    name = "min_over_two_passes"

    def evaluate(self, run, model, tokens, sink) -> None:
        with torch.no_grad():
            for s, e in spans(tokens, self.seq_len):
                y = tokens[s + 1 : e + 1].view(-1, 1)
                a = -window_logp(model, tokens, s, e).gather(1, y).view(-1)
                b = -window_logp(model, tokens, s, e, temperature=1.5).gather(1, y).view(-1)
                sink.record(torch.arange(s + 1, e + 1), torch.minimum(a, b))
                sink.advance_frontier(e + 1)


class RescoreAfterTTT(ScoreFirstTTT):
    """Bad (#576, #991): a first TTT pass into a scratch sink, then the stream rescored by the adapted model."""

    name = "rescore_after_ttt"

    def evaluate(self, run, model, tokens, sink) -> None:
        from core.scoring import ScoreSink

        super().evaluate(run, model, tokens, ScoreSink(tokens, sink.tables))
        Windows.evaluate(self, run, model, tokens, sink)


class SlotOnScoredSlice(Windows):
    """Bad (#1240): a logit bias optimized on each window's own targets, then that window scored with it.
    Good twin (`causal`): the bias is optimized on the previous, already-scored window."""

    name = "slot_scored_slice"
    causal = False

    def evaluate(self, run, model, tokens, sink) -> None:
        delta = torch.zeros(SETTINGS.vocab, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=0.3)
        prev = None
        for s, e in spans(tokens, self.seq_len):
            with torch.no_grad():
                logp = window_logp(model, tokens, s, e)
            fit = prev if self.causal else (s, e, logp)
            if fit is not None:
                fs, fe, flogp = fit
                for _ in range(3):
                    opt.zero_grad()
                    F.cross_entropy(flogp + delta, tokens[fs + 1 : fe + 1]).backward()
                    opt.step()
            record(sink, s, e, tokens, F.log_softmax(logp + delta.detach(), -1))
            sink.advance_frontier(e + 1)
            prev = (s, e, logp)


class CausalSlot(SlotOnScoredSlice):
    name = "causal_slot"
    causal = True


class ValTokenWarmup(Windows):
    """Bad (#1530): a compile warm-up with optimizer steps on validation tokens, weights restored afterwards.
    Good twin (`synthetic`): the same warm-up on random tokens (what every later record logs)."""

    name = "val_token_warmup"
    synthetic = False

    def evaluate(self, run, model, tokens, sink) -> None:
        saved = copy.deepcopy(model.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        n = 2 * self.seq_len + 1
        gen = torch.Generator().manual_seed(0)
        rows = torch.randint(2, SETTINGS.vocab, (n,), generator=gen) if self.synthetic else tokens[:n]
        for _ in range(2):
            ScoreFirstTTT.step(model, opt, rows)
        model.load_state_dict(saved)
        super().evaluate(run, model, tokens, sink)


class SyntheticWarmup(ValTokenWarmup):
    name = "synthetic_warmup"
    synthetic = True


class DocIsolated(PlainEvaluator):
    """`core.scoring.PlainEvaluator`, claiming document isolation; `leak`: without the BOS attention mask."""

    def __init__(self, leak: bool):
        super().__init__(SETTINGS.seq_len, 4 * SETTINGS.seq_len, bos_id=None if leak else BOS)
        self.name = "cross_bos_leak" if leak else "bos_masked"
        self.doc_isolation = True


# --- §10.8: each bad evaluator caught by its rule; each good twin passes -----------------------------------
@pytest.mark.parametrize(("bad", "rules"), [
    (AdaptThenScoreTTT(), ("EVAL.TTT", "EVAL.C1")),
    (TwoPassCache(), ("EVAL.C1",)),
    (TargetOnlyBlend(), ("EVAL.C2",)),
    (MinOverTwoPasses(), ("EVAL.C4",)),
    (RescoreAfterTTT(), ("EVAL.C4",)),
    (SlotOnScoredSlice(), ("EVAL.C1", "EVAL.TTT")),
    (ValTokenWarmup(), ("EVAL.TTT",)),
    (DocIsolated(leak=True), ("EVAL.DOC_ISOLATION",)),
], ids=lambda v: getattr(v, "name", None) or "-".join(v))
@pytest.mark.slow  # ~30 forked production-path evaluations each: 5-25 s on a (loaded) 2-core box
def test_bad_evaluator_caught(world, bad, rules):
    st = statuses(world, bad)
    for rule in rules:
        assert st.get(rule) == FAIL, (rule, st)


@pytest.mark.parametrize("good", [Windows(), ScoreFirstTTT(), PrefixCache(), TemperatureMix(), CausalSlot(),
                                  SyntheticWarmup(), DocIsolated(leak=False)], ids=lambda v: v.name)
@pytest.mark.slow
def test_good_twin_passes(world, good):
    assert_clean(statuses(world, good))


def test_harness_sees_every_ttt_step_and_restores_weights(world):
    from validator.harness import score

    before = {k: v.clone() for k, v in world.run.model.state_dict().items()}
    call = score(world, lambda run: ScoreFirstTTT(), world.stream)
    ends = [e for _, e in spans(world.stream, SETTINGS.seq_len)][:-1]
    # production's synthetic_warmup first runs the evaluator on random tokens (steps before any score), then the
    # evaluation: one step after each scored chunk but the last
    assert call.error is None and [m for m, _, _ in call.steps][-len(ends):] == ends
    assert all(m == 0 for m, _, _ in call.steps[: -len(ends)])
    assert all(torch.equal(v, world.run.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
def test_registry_evaluators_pass(world):
    """Every evaluator plugin pgolf ships, in its real code path (test settings), passes the harness."""
    from core.registry import Registry
    from validator.harness import evaluator_plugins

    reg = Registry()
    names = evaluator_plugins(reg)
    assert {"sliding_window", "score_first_ttt"} <= set(names)
    s = HarnessSettings(vocab=16, n_docs=3, doc_len=(30, 60), seq_len=32, cuts=3, trunc_cuts=1, vfold_positions=2,
                        iso_docs=1)
    for name in names:
        sets = [f"{name}.{k}={v}" for k, v in (reg.plugins[name].test_settings or {}).get(name, {}).items()]
        w = build_world(s, [name], None, sets, reg)
        rep = check_evaluator(w, lambda run: run.hook.pg_evaluator(run=run), name, "plugin", s)
        assert rep.error is None, (name, rep.error)
        assert all(c.status == PASS for c in rep.checks), (name, [(c.rule, c.message) for c in rep.checks
                                                                   if c.status != PASS])


# --- TOK.BPB: the byte table against the tokenizer's decoding (PR #1184: byte tokens counted as U+FFFD) -----
def test_byte_table_audit(tiny_data):
    from core.data import read_shard, shard_files
    from core.tokenizer import build_byte_tables, load_tokenizer

    sp = load_tokenizer(next((tiny_data / "tokenizer").glob("*.model")), 320)
    tokens = read_shard(shard_files(tiny_data, "val")[0]).to(torch.int64)
    good = build_byte_tables(sp, 320)
    byte_ids = [i for i in range(int(sp.vocab_size())) if sp.is_byte(i)]
    assert bool(torch.isin(tokens, torch.tensor(byte_ids)).any()), "the fixture needs byte-fallback tokens"
    decode = sp.decode
    assert byte_audit(tokens, good, decode, int(sp.bos_id())).status == PASS
    bad = copy.deepcopy(good)
    bad.base_bytes[byte_ids] = 3  # len("\ufffd".encode()) — the #1184 table
    check = byte_audit(tokens, bad, decode, int(sp.bos_id()))
    assert check.status == FAIL and "BPB denominator is wrong" in check.message


# --- the --evaluator FILE.py:NAME path through the sandboxed harness child ---------------------------------
@pytest.mark.slow
def test_user_evaluator_file_in_sandbox(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import torch

        class TwoPass:
            '''score(tokens): a unigram over the whole stream (a two-pass cache).'''
            def score(self, tokens):
                counts = torch.bincount(tokens, minlength=16).double() + 1
                return -torch.log(counts / counts.sum())[tokens[1:]]
    """))
    settings = {"vocab": 16, "n_docs": 3, "doc_len": [30, 60], "seq_len": 32, "cuts": 3, "trunc_cuts": 1,
                "vfold_positions": 2, "iso_docs": 1}
    found = harness_findings(None, DynamicOptions(evaluators=[f"{tmp_path / 'mine.py'}:TwoPass"], harness=settings,
                                                  timeout=120))
    c1 = [f for f in found if f.rule == "EVAL.C1" and f.status == FAIL]
    assert c1 and c1[0].severity == "ERROR" and "[TwoPass]" in c1[0].message
    assert any(f.rule == "EVAL.C2" and f.status == FAIL for f in found)


# --- records folders: FILES.RUNS_IN_FOLDER and the data-access audit in the sandbox -------------------------
CLEAN = """
import glob, os, sys
import numpy as np

def load(kind):
    files = sorted(glob.glob(os.path.join(os.environ["DATA_PATH"], "fineweb_" + kind + "_*.bin")))
    return np.concatenate([np.fromfile(f, dtype="<u2", offset=1024) for f in files])

vocab = int(os.environ["VOCAB_SIZE"])
{before}
counts = np.bincount(load("train"), minlength=vocab) + 1.0
{train}
np.save("final_model.npy", counts)
{after}
val = load("val")
print("final_int8_zlib_roundtrip_exact val_loss:%.8f val_bpb:1.0" % -np.log((counts / counts.sum())[val[1:]]).mean())
"""


def folder(root: Path, before: str = "", train: str = "", after: str = "", script: str | None = None) -> Path:
    f = root / "records" / "2026-05-01_fixture"
    f.mkdir(parents=True)
    (f / "train_gpt.py").write_text(script or CLEAN.format(before=before, train=train, after=after))
    return f


def smoke(f: Path, tiny_data: Path, **kw) -> dict[str, tuple[str, str]]:
    found = smoke_findings(f, kw.pop("timeout", 60), kw.pop("memory", 2 * 2**30), data=tiny_data, **kw)
    return {x.rule: (x.status, x.message) for x in found}


def test_clean_folder_passes(tmp_path, tiny_data):
    st = smoke(folder(tmp_path), tiny_data)
    assert {r: s for r, (s, _) in st.items()} == {"FILES.RUNS_IN_FOLDER": PASS, "DATA.NO_TRAIN_AT_EVAL": PASS,
                                                   "DATA.NO_VAL_IN_TRAIN": PASS}, st


def test_folder_needing_pgolf_is_caught(tmp_path, tiny_data):
    st = smoke(folder(tmp_path, before="from core.scoring import ScoreSink"), tiny_data)
    assert st["FILES.RUNS_IN_FOLDER"][0] == FAIL and "pgolf" in st["FILES.RUNS_IN_FOLDER"][1]


def test_folder_importing_a_file_outside_it_is_caught(tmp_path, tiny_data):
    f = folder(tmp_path, before="sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))\n"
                                "import golf_helper")
    (f.parent / "golf_helper.py").write_text("X = 1\n")
    st = smoke(f, tiny_data)
    assert st["FILES.RUNS_IN_FOLDER"][0] == FAIL and "golf_helper" in st["FILES.RUNS_IN_FOLDER"][1]


def test_syntax_error_fails_without_running(tmp_path, tiny_data):
    st = smoke(folder(tmp_path, script="def f(:\n    pass\n"), tiny_data)
    assert st["FILES.RUNS_IN_FOLDER"][0] == FAIL and "does not compile" in st["FILES.RUNS_IN_FOLDER"][1]


@pytest.mark.parametrize(("before", "kw", "why"), [
    ("raise RuntimeError('CUDA is required')", {}, "CUDA"),
    ("import flash_attn_interface", {}, "flash_attn_interface"),
    ("import time; time.sleep(30)", {"timeout": 1}, "within 1 s"),
    ("x = bytearray(3 * 2**30)", {"memory": 2**30}, "memory"),
], ids=["cuda", "fa3", "timeout", "memory"])
def test_machine_limits_are_could_not_run(tmp_path, tiny_data, before, kw, why):
    status, msg = smoke(folder(tmp_path, before=before), tiny_data, **kw)["FILES.RUNS_IN_FOLDER"]
    assert status == SKIP and COULD_NOT_RUN in msg and why in msg, msg


def test_network_is_blocked_and_reported(tmp_path, tiny_data):
    st = smoke(folder(tmp_path, after="import socket; socket.create_connection(('example.com', 80), timeout=5)"),
               tiny_data)
    assert st["DATA.NO_TRAIN_AT_EVAL"][0] == FAIL and "network" in st["DATA.NO_TRAIN_AT_EVAL"][1]


def test_training_data_read_after_the_artifact_is_caught(tmp_path, tiny_data):
    st = smoke(folder(tmp_path, after="extra = load('train')"), tiny_data)
    assert st["DATA.NO_TRAIN_AT_EVAL"][0] == FAIL and "after the artifact" in st["DATA.NO_TRAIN_AT_EVAL"][1]


def test_validation_data_in_the_artifact_is_caught(tmp_path, tiny_data):
    bad = smoke(folder(tmp_path / "bad", train="counts += np.bincount(load('val'), minlength=vocab)"), tiny_data)
    assert bad["DATA.NO_VAL_IN_TRAIN"][0] == FAIL, bad
    # good twin: the validation shard is opened early (its length only), the artifact does not depend on it
    good = smoke(folder(tmp_path / "good", train="n_val = len(load('val'))"), tiny_data)
    assert good["DATA.NO_VAL_IN_TRAIN"][0] == PASS and "bit-identical" in good["DATA.NO_VAL_IN_TRAIN"][1]


def complete(f: Path) -> Path:
    """README, submission.json and a log, so the static rules pass and the exit code is the dynamic verdict."""
    (f / "README.md").write_text("# fixture\n")
    (f / "submission.json").write_text(json.dumps({"name": "fixture", "author": "t", "github_id": "t",
                                                   "date": "2026-01-01", "val_bpb": 1.0, "val_loss": 2.0}))
    (f / "train.log").write_text("Total submission size int8+zlib: 1000 bytes\n"
                                 "final_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.00000000\n")
    return f


@pytest.mark.parametrize(("before", "code"), [("raise RuntimeError('CUDA is required')", 2), ("", 0),
                                              ("import core", 1)], ids=["cuda", "clean", "pgolf"])
def test_cli_exit_codes(tmp_path, tiny_data, capsys, before, code):
    from validator.cli import main

    f = complete(folder(tmp_path, before=before))
    assert main([str(f), "--run", "--json", "--smoke-data", str(tiny_data), "--timeout", "60"]) == code
    doc = json.loads(capsys.readouterr().out)
    assert doc["dynamic"] is True
    assert any(x["rule"] == "FILES.RUNS_IN_FOLDER" and x["message"].startswith("dynamic:") for x in doc["findings"])


def test_cli_bad_flags_are_one_line_errors(tmp_path, capsys):
    from validator.cli import main

    f = complete(folder(tmp_path))
    assert main([str(f), "--run", "--harness-set", "nope=1"]) == 2
    assert "--harness-set nope: unknown setting" in capsys.readouterr().err
    assert main([str(f), "--run", "--smoke-data", str(tmp_path)]) == 2
    assert "--smoke-data" in capsys.readouterr().err


@pytest.mark.parametrize(("version", "status"), [("v2", FAIL), ("v4", PASS)])
def test_smeargate_without_bos_mask_leaks_under_doc_masked_eval(version, status):
    """#1797: attention masked at BOS, but SmearGate v2 still carries the last token of a document into the next
    document's BOS position; v4 (the #1851 fix) masks it."""
    s = HarnessSettings(vocab=16, n_docs=4, doc_len=(30, 60), seq_len=32, cuts=2, trunc_cuts=1, vfold_positions=1,
                        iso_docs=2)
    w = build_world(s, ["smeargate", "sliding_window"], None,
                    [f"smeargate.version={version}", "sliding_window.doc_mask=true", "sliding_window.stride=16"])
    rep = check_evaluator(w, lambda run: run.hook.pg_evaluator(run=run), "sliding_window", "plugin", s)
    iso = next(c for c in rep.checks if c.rule == "EVAL.DOC_ISOLATION")
    assert rep.claims_isolation is True and iso.status == status, iso.message
