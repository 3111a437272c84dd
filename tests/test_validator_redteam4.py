"""Bad record folders from the fourth red-team pass (session 27), one per threat class (validator/THREATS.md):
figures the parser skipped (a time under another key or beside a printed dict, step lines with no training-time key,
a world size with spaces, a launcher for two nodes), claims resting on lines no run or no code produced (a probe line,
a subset's line, a log with no training behind it, a copied run with its losses edited), code the scans did not
reach (a namespace package, a native library, a helper of the same name in a sub-folder, a file read as UTF-7), a BPB
denominator inflated where the log prints no token count, and a damaged byte table. Each case mutates the clean
3-seed folder of the third pass, which passes every rule a case checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_validator_redteam3 import SCRIPT, SEEDS, errors, record_folder, replace

from validator.cli import validate_folder

DOWNLOAD = 'import urllib.request\nurllib.request.urlretrieve("https://example.com/w.pt", "w.pt")\n'
# the fixture's script, printing its score lines as records do (the claim-line checks read what the code can print)
PRINTING = SCRIPT + '''    log0(f"final_int6_roundtrip val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f} eval_time:{ms:.0f}ms")
    log0(f"final_int6_sliding_window val_loss:{sw_loss:.4f} val_bpb:{sw_bpb:.8f} stride:64 eval_time:{ms:.0f}ms")
'''


def shipped(files: dict[str, bytes | str]):
    """Files to add to the folder after it is built (paths may hold sub-folders)."""
    def add(folder: Path) -> Path:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
        return folder
    return add


def forged_copy(seed: int, text: str) -> str:
    """Seed 42's log is seed 1337's run: the seed line changed, every train loss edited, the clock kept."""
    if seed != 42:
        return text
    from test_validator_redteam3 import log_text

    lines = log_text(1337).replace("seed:1337", "seed:42").splitlines()
    return "\n".join(line.replace("train_loss:", "train_loss:1") if line.startswith("step:") else line
                     for line in lines) + "\n"


def deflated(seed: int, text: str) -> str:
    """No token count logged, and every bpb 4 % lower (byte-fallback pieces counted as 3 bytes)."""
    text = text.replace("val_loader:shards pattern=./data/fineweb_val_*.bin tokens:62021632\n", "")
    return text.replace(f"val_bpb:{1.1248 + seed * 1e-7:.8f}", f"val_bpb:{(1.1248 + seed * 1e-7) * 0.96:.8f}")


SUBSET = "final_int6_sliding_window_head6M val_loss:1.7400 val_bpb:1.03000000 tokens:6291456 eval_time:7411ms\n"
CASES = {  # name: (rule, record_folder keyword arguments, files added afterwards)
    "an eval time under a key that carries its unit": ("TIME.EVAL", dict(edit_log=replace(
        "stride:64 eval_time:70000ms", "stride:64 eval_s:712.0", seeds=(42,))), {}),
    "an eval time beside a printed dict": ("TIME.EVAL", dict(edit_log=replace(
        "eval_time:70000ms", "eval_time:712000ms {'windows': 969088}", seeds=(42,))), {}),
    "step lines past the cap with step_avg but no train_time": ("TIME.TRAIN", dict(edit_log=replace(
        "Serialized model", "step:110/110 train_loss:2.9000 step_avg:5900.00ms\nSerialized model", seeds=(42,))), {}),
    "step lines past the cap with an elapsed clock": ("TIME.TRAIN", dict(edit_log=replace(
        "Serialized model", "step:110/110 train_loss:2.9000 elapsed:649.0s\nSerialized model", seeds=(42,))), {}),
    "a world size with spaces": ("HW.H100", dict(edit_log=replace(
        "world_size:8 grad_accum_steps:1", "world_size: 16 grad_accum_steps: 1")), {}),
    "a README that launches two nodes": ("HW.H100", {}, {"README.md": "torchrun --nnodes=2 --nproc_per_node=8 "
                                                                   "train_gpt.py\n"}),
    "a claim from a probe line no code prints": ("JSON.CONSISTENCY", dict(
        script=PRINTING, edit_log=replace("Serialized model", "best_window_probe val_loss:1.7400 val_bpb:1.0305\n"
                                          "Serialized model", seeds=(42,)), sub={"val_bpb": 1.0305}), {}),
    "a claim from a subset's line no code prints": ("JSON.CONSISTENCY", dict(
        script=PRINTING, edit_log=lambda seed, text: text + SUBSET, sub={"val_bpb": 1.03}), {}),
    "a claim from a log with no training run": ("TIME.TRAIN", dict(sub={"val_bpb": 1.0}), {
        "train_seed7.log": "seed:7\nfinal_int6_sliding_window val_loss:1.7 val_bpb:1.0 stride:64 eval_time:6000ms\n"}),
    "a copied run with every loss edited": ("STAT.SEEDS", dict(edit_log=forged_copy), {}),
    "code in a namespace package": ("DATA.NO_TRAIN_AT_EVAL", dict(script="from kern import ops\n" + SCRIPT),
                                    {"kern/ops.py": DOWNLOAD}),
    "a native extension module": ("FILES.RUNS_IN_FOLDER", dict(script="import fastkern\n" + SCRIPT),
                                  {"fastkern.cpython-311-x86_64-linux-gnu.so": b"\x7fELF" + b"\0" * 60}),
    "a native library under a data name": ("FILES.RUNS_IN_FOLDER", {}, {"kern.bin": b"\x7fELF\x02\x01" + b"\0" * 60}),
    "a helper of the same name in a sub-folder": ("DATA.NO_TRAIN_AT_EVAL", dict(
        script='exec(open("tools/helper.py").read())\n' + SCRIPT), {"helper.py": "x = 1\n", "tools/helper.py":
                                                                     DOWNLOAD}),
    "a helper read as UTF-7": ("FILES.RUNS_IN_FOLDER", dict(
        script='exec(open("helper.py", encoding="utf-7").read())\n' + SCRIPT), {"helper.py": "x = 1\n"}),
    "a deflated BPB with no token count": ("TOK.BPB", dict(edit_log=deflated), {}),
    "no validation token count": ("DATA.FULL_VAL", dict(edit_log=replace(
        "val_loader:shards pattern=./data/fineweb_val_*.bin tokens:62021632\n", "")), {}),
    "a damaged byte table": ("TOK.BPB", {}, {"tok.model": b"junk", "byte_table.npz": b"PK\x03\x04" + b"\0" * 40}),
}


def passes_every_rule_of(folder: Path, cases: dict) -> None:
    """The clean folder fails none of the rules the cases check."""
    for rule in {rule for rule, _, _ in cases.values()}:
        assert not errors(folder, rule), (rule, errors(folder, rule))


def fails_its_rule(tmp_path: Path, case: tuple) -> bool:
    """The clean folder with the case's edits and files fails the case's rule."""
    rule, kwargs, files = case
    return bool(errors(shipped(files)(record_folder(tmp_path, **kwargs)), rule))


def test_the_clean_folders_pass_every_rule_the_cases_check(tmp_path: Path) -> None:
    for script in (SCRIPT, PRINTING):
        passes_every_rule_of(record_folder(tmp_path / script[-8:].strip().replace(")", "p"), script=script), CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_fails_its_rule(tmp_path: Path, case: str) -> None:
    assert fails_its_rule(tmp_path, CASES[case]), case


def test_an_eval_only_rerun_of_a_trained_seed_backs_a_claim(tmp_path: Path) -> None:
    """A merged record (2026-04-23) scores its claim in TTT-only re-runs of artifacts trained in logs beside them."""
    folder = record_folder(tmp_path)
    for seed in SEEDS:
        (folder / "ttt" / f"seed_{seed}.log").parent.mkdir(exist_ok=True)
        (folder / "ttt" / f"seed_{seed}.log").write_text(
            f"seed:{seed}\nfinal_int6_ttt_sliding_window val_loss:1.9 val_bpb:{1.12 + seed * 1e-7:.8f} "
            "eval_time:400000ms\n")
    sub = json.loads((folder / "submission.json").read_text())
    (folder / "submission.json").write_text(json.dumps({**sub, "val_bpb": round(1.12 + sum(SEEDS) / 3 * 1e-7, 8)}))
    assert not [f for f in validate_folder(folder) if f.rule == "TIME.TRAIN" and f.status == "fail"]
