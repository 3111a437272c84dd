"""Bad record folders from the seventh red-team pass (session 28), files the validator freed by their name or kind,
one per threat class (validator/THREATS.md): weights in a file the code reads while its name or suffix said "not
part of the artifact" (a `.txt` taken for a log, a README comment, `#` lines of requirements.txt, a field of
submission.json, `piece<TAB>float` lines in a `.vocab`, bytes appended to a SentencePiece model that still loads),
and a records folder that claims to be a pgolf run directory (a config.json, a metrics.json, a train.log and a
50-byte header-only final_model.ptz) to get the lighter rules of one. And what must stay free: a log the script
writes, a real tokenizer the code loads, a submission.json saved with a UTF-8 BOM. Each case mutates the clean
3-seed folder of the third pass, which passes every rule a case checks."""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import pytest
from test_validator_redteam3 import SCRIPT, SEEDS, errors, log_text, record_folder
from test_validator_redteam4 import passes_every_rule_of

from pgolf.run_rules import check_artifact
from validator.cli import validate_folder
from validator.rules.base import FolderContext

BLOB = base64.b64encode(bytes(range(256)) * 4_700).decode()  # 1.2 MB of "weights" as base64 text
LINES = "\n".join(BLOB[i:i + 76] for i in range(0, len(BLOB), 76)) + "\n"


def reads(stmt: str, script: str = SCRIPT) -> str:
    """The fixture's script with `stmt` before the model is built."""
    return script.replace("    model = build()", f"    {stmt}\n    model = build()")


def header_only() -> bytes:
    """A pgolf artifact header with no payload: 50 bytes any folder can write."""
    head = json.dumps({"payload_bytes": 0, "streams": [], "format": 2}).encode()
    return b"PGOLF\x00" + struct.pack("<HI", 2, len(head)) + head


RUN_DIR = {"config.json": json.dumps({"config": {}}), "metrics.json": json.dumps({"val_bpb": 1.1248}),
           "train.log": log_text(42), "final_model.ptz": header_only()}


def sp_model(pieces: int = 60) -> bytes:
    """A real SentencePiece BPE model of `pieces` pieces (trained here on a small corpus)."""
    import sentencepiece as spm

    words = ["the", "cat", "sat", "on", "a", "mat", "golf", "par", "model", "byte", "token", "weights"]
    corpus = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=pieces,
                                   model_type="bpe", minloglevel=3)
    return out.getvalue()


def appended(model: bytes, payload: bytes) -> bytes:
    """`model` with `payload` as an unknown protobuf field (number 99): SentencePiece still loads it."""
    def varint(n: int) -> bytes:
        out = b""
        while n >= 0x80:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])
    return model + varint(99 << 3 | 2) + varint(len(payload)) + payload


def build(tmp: Path, case: tuple) -> Path:
    """The clean folder with the case's edits, its files added (a None value removes the file)."""
    _, kwargs, files = case
    folder = record_folder(tmp, **kwargs)
    for name, data in files.items():
        path = folder / name
        if data is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return folder


PREQUANT = SCRIPT.replace("    torch.save(", "    for i in range(0, len(val_tokens), 2048):\n"
                          "        loss = model(val_tokens[i:i + 2048])\n        loss.backward()\n        opt.step()\n"
                          "    torch.save(")
CASES = {  # name: (rule, record_folder keyword arguments, files added afterwards)
    "weights in a .txt the code reads": ("SIZE.CAP", dict(script=reads(
        'INIT = os.path.join(os.path.dirname(__file__), "init_weights.txt")\n'
        "    init = base64.b64decode(open(INIT).read())")), {"init_weights.txt": LINES}),
    "weights in a README comment the code reads": ("SIZE.CAP", dict(script=reads(
        'init = open("README.md").read().split("<!-- init")[1]')),
        {"README.md": f"# fixture\n<!-- init\n{LINES}-->\n"}),
    "weights in requirements.txt comment lines": ("SIZE.CAP", dict(script=reads(
        'init = "".join(line[2:] for line in open("requirements.txt") if line.startswith("# "))')),
        {"requirements.txt": "numpy\n" + "".join(f"# {line}\n" for line in LINES.split())}),
    "weights in a field of submission.json": ("SIZE.CAP", dict(script=reads(
        'init = json.load(open("submission.json"))["calibration_table"]'), sub={"calibration_table": BLOB}), {}),
    "weights as a vocab of piece-tab-float lines": ("SIZE.CAP", dict(script=reads(
        'init = np.loadtxt("prior.vocab", usecols=1, dtype=np.float32, encoding="utf-8")')),
        {"prior.vocab": "".join(f"\u2581w{i}\t{(i % 97) / 1000 - 0.05:.6f}\n" for i in range(100_000))}),
    "weights in the pieces of a tokenizer-sized vocab": ("SIZE.CAP", dict(script=reads(
        'init = [line.split("\\t")[0] for line in open("tok/fineweb_1024_bpe.vocab")]')),
        {"tok/fineweb_1024_bpe.vocab": "".join(f"{BLOB[i * 1100:(i + 1) * 1100]}\t-{i}.0\n" for i in range(1024))}),
    "weights appended to a tokenizer that still loads": ("SIZE.CAP", dict(script=reads(
        'sp = spm.SentencePieceProcessor(model_file="tok/fineweb_60_bpe.model")')),
        {"tok/fineweb_60_bpe.model": None}),  # filled in by the test (trains a model)
    # a records folder dressed as a pgolf run directory: the rules it skipped as one
    "one seed dressed as a run directory": ("STAT.SEEDS", {}, {**RUN_DIR, "train_seed1337.log": None,
                                                              "train_seed2025.log": None}),
    "validation fine-tuning dressed as a run directory": ("EVAL.PREQUANT_TTT", dict(script=PREQUANT), RUN_DIR),
    "uncounted weights dressed as a run directory": ("SIZE.CAP", dict(script=reads(
        'init = np.fromfile("init_state.bin", dtype=np.float16)')), {**RUN_DIR, "init_state.bin": b"\0" * 1_200_000}),
    "a run directory's files, no code, in a records track": ("FILES.REQUIRED", {}, {
        **RUN_DIR, "train_gpt.py": None, "submission.json": None}),
}


def _case(case: str) -> tuple:
    rule, kwargs, files = CASES[case]
    if "tok/fineweb_60_bpe.model" in files:
        files = {"tok/fineweb_60_bpe.model": appended(sp_model(), BLOB.encode())}
    return rule, kwargs, files


def test_the_clean_folder_passes_every_rule_the_cases_check(tmp_path: Path) -> None:
    passes_every_rule_of(record_folder(tmp_path), CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_fails_its_rule(tmp_path: Path, case: str) -> None:
    rule, kwargs, files = _case(case)
    assert errors(build(tmp_path, (rule, kwargs, files)), rule), case


def test_a_log_the_script_writes_is_not_counted(tmp_path: Path) -> None:
    """Logs are free because the script writes them: by name (`open(LOG, "a")`, `os.environ.get("LOG", "x.txt")`
    then a logging FileHandler, `Path(...).write_text`), and a log no code names."""
    script = reads('LOG = "train_log.txt"\n'
                   '    with open(LOG, "a") as f:\n        print("start", file=f)\n'
                   '    handler = logging.FileHandler(os.environ.get("RUN_LOG", "logs/run.txt"))\n'
                   '    Path("notes.txt").write_text("done")\n'
                   '    if os.path.exists("README.md"):\n        pass')
    folder = build(tmp_path, ("SIZE.CAP", dict(script=script), {"train_log.txt": log_text(1337) + LINES,
                                                                  "logs/run.txt": LINES, "notes.txt": LINES}))
    assert not errors(folder, "SIZE.CAP"), errors(folder, "SIZE.CAP")


def test_a_real_tokenizer_the_code_loads_is_not_counted(tmp_path: Path) -> None:
    """The data pipeline's tokenizer (a `.model` SentencePiece loads, its `.vocab`), read by name, is no weights: it
    holds no more pieces than the logs' vocabulary (1024) and no more bytes than such a tokenizer needs."""
    import sentencepiece as spm

    model = sp_model()
    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    script = reads('sp = spm.SentencePieceProcessor(model_file="tok/fineweb_60_bpe.model")\n'
                   '    pieces = open("tok/fineweb_60_bpe.vocab").read().splitlines()')
    folder = build(tmp_path, ("SIZE.CAP", dict(script=script), {"tok/fineweb_60_bpe.model": model,
                                                                  "tok/fineweb_60_bpe.vocab": vocab}))
    assert not errors(folder, "SIZE.CAP"), errors(folder, "SIZE.CAP")


def test_a_submission_json_with_a_bom_is_valid(tmp_path: Path) -> None:
    """FILES.PLAIN_TEXT allows a UTF-8 BOM; JSON.SCHEMA and RUN.FINITE read submission.json as UTF-8 and failed."""
    from pgolf.run_rules import RULES as RUN_RULES

    def failed(folder: Path) -> set[str]:
        return {f.rule for f in validate_folder(folder, extra_rules=RUN_RULES) if f.status == "fail"}

    plain, folder = record_folder(tmp_path / "plain"), record_folder(tmp_path / "bom")
    (folder / "submission.json").write_bytes(b"\xef\xbb\xbf" + (folder / "submission.json").read_bytes())
    assert failed(folder) == failed(plain) and not failed(folder) & {"JSON.SCHEMA", "RUN.FINITE", "JSON.CONSISTENCY"}
    assert FolderContext(folder).submission["val_bpb"] == pytest.approx(sum(1.1248 + s * 1e-7 for s in SEEDS) / 3)


@pytest.mark.parametrize("extra, parent, run_dir", [
    ({}, "runs", True),
    ({"train_gpt.py": "print(1)\n"}, "runs", False),
    ({"submission.json": "{}"}, "runs", False),
    ({"submission_seed42.json": "{}"}, "runs", False),
    ({}, "track_10min_16mb", False),
    ({}, "track_non_record_16mb", False),
])
def test_only_a_real_run_directory_is_one(tmp_path: Path, extra: dict, parent: str, run_dir: bool) -> None:
    folder = tmp_path / parent / "2026-05-01_Run"
    folder.mkdir(parents=True)
    for name, data in {**RUN_DIR, **extra}.items():
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    assert FolderContext(folder).is_run_dir is run_dir


def test_an_artifact_with_no_model_is_not_whole(tmp_path: Path) -> None:
    """A header with no payload (no stream, or an empty one) carries no model; a stream its codec refuses is broken
    (it crashed the rule, and a crashed rule is a skip)."""
    import hashlib
    import zlib

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    for name, data in RUN_DIR.items():
        (run / name).write_bytes(data.encode() if isinstance(data, str) else data)

    def artifact(streams: list, payload: bytes) -> bytes:
        head = json.dumps({"format": 2, "payload_bytes": len(payload), "streams": streams}).encode()
        return b"PGOLF\x00" + struct.pack("<HI", 2, len(head)) + head + payload

    raw = b"weights" * 100
    good = zlib.compress(raw)
    entry = {"codec": "zlib", "label": "state", "raw_bytes": len(raw), "payload_bytes": len(good),
             "raw_sha256": hashlib.sha256(raw).hexdigest()}
    for blob, status in ((header_only(), "fail"), (artifact([{**entry, "payload_bytes": 0}], b""), "fail"),
                         (artifact([{**entry, "payload_bytes": 20}], b"\1" * 20), "fail"),
                         (artifact([7], good), "fail"), (artifact([entry], good), "pass")):
        (run / "final_model.ptz").write_bytes(blob)
        (finding,) = check_artifact(FolderContext(run))
        assert finding.status == status, (blob[:80], finding)
