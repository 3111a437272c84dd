"""Bad record folders from the third red-team pass (session 26), one per threat class (validator/THREATS.md):
figures in a notation the parser skipped (a space before the unit, e-notation, digit separators, other wordings),
an evaluation time taken from a line the submission chooses, a hardware line past the first 200 KB, seeds of
different configurations without a Hyperparameters dump, package installs, a training loader over validation files,
weights in a shipped data file, and fine-tuning on validation inline before serialization. Each case mutates one
clean 3-seed folder; the clean folder passes every rule a case checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from validator.cli import validate_folder

SEEDS = (1337, 42, 2025)
SCRIPT = '''import glob, os, torch
def main():
    train_files = os.environ.get("TRAIN_FILES", "./data/fineweb_train_*.bin")
    val_files = os.environ.get("VAL_FILES", "./data/fineweb_val_*.bin")
    train_loader = TokenLoader(train_files)
    model = build()
    for step in range(100):
        loss = model(train_loader.next())
        loss.backward()
        opt.step()
    torch.save(quantize(model.state_dict()), "final_model.ptz")
'''


def log_text(seed: int) -> str:
    losses = "\n".join(f"step:{s}/100 train_loss:{6.0 - s * 0.03 + seed * 1e-5:.4f} "  # each seed's own clock
                       f"train_time:{s * 5900 + s * seed % 97}ms step_avg:5900.00ms" for s in range(1, 101))
    return (f"vocab_size:1024\nmodel_params:26829913\ntrain_batch_tokens:786432 train_seq_len:2048 iterations:100\n"
            f"seed:{seed}\nval_loader:shards pattern=./data/fineweb_val_*.bin tokens:62021632\n"
            f"world_size:8 grad_accum_steps:1\n| 0  NVIDIA H100 80GB HBM3  On |\n{losses}\n"
            f"Serialized model int6+zstd: 15000000 bytes\nCode size: 50000 bytes\n"
            f"Total submission size int6+zstd: 15050000 bytes\n"
            f"final_int6_roundtrip val_loss:1.9500 val_bpb:1.1500 eval_time:6000ms\n"
            f"final_int6_sliding_window val_loss:1.9000 val_bpb:{1.1248 + seed * 1e-7:.8f} stride:64 "
            f"eval_time:70000ms\n")


def record_folder(tmp: Path, edit_log=None, script: str = SCRIPT, extra: dict[str, bytes] | None = None,
                  sub: dict | None = None) -> Path:
    folder = tmp / "records" / "track_10min_16mb" / "2026-05-01_Fixture"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# fixture\n")
    (folder / "train_gpt.py").write_text(script)
    for seed in SEEDS:
        text = log_text(seed)
        (folder / f"train_seed{seed}.log").write_text(edit_log(seed, text) if edit_log else text)
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    bpb = sum(1.1248 + s * 1e-7 for s in SEEDS) / 3
    (folder / "submission.json").write_text(json.dumps({
        "name": "x", "github_id": "x", "author": "x", "date": "2026-05-01", "val_bpb": round(bpb, 8),
        "hardware": "8xH100 SXM", **(sub or {})}))
    return folder


def errors(folder: Path, rule: str) -> list:
    return [f for f in validate_folder(folder) if f.rule == rule and f.status == "fail" and f.severity == "ERROR"]


def replace(old: str, new: str, seeds=SEEDS):
    def edit(seed: int, text: str) -> str:
        if seed not in seeds:
            return text
        assert old in text, old
        return text.replace(old, new)
    return edit


CASES = {  # name: (rule, record_folder keyword arguments)
    # one seed's log in the new notation: the others' readable times kept the rule from failing for lack of one
    "eval time with a space before its unit": ("TIME.EVAL", dict(edit_log=replace(
        "eval_time:70000ms", "eval_time:720000 ms", seeds=(42,)))),
    "eval time in e-notation": ("TIME.EVAL", dict(edit_log=replace("eval_time:70000ms", "eval_time:7.2e5ms",
                                                                   seeds=(42,)))),
    "a TTT pass logged in other words": ("TIME.EVAL", dict(edit_log=replace(
        "final_int6_sliding_window", "ttt:done steps:2000 time:560.0s\nfinal_int6_ttt_sliding_window"))),
    "an _exact twin with a short time": ("TIME.EVAL", dict(edit_log=replace(
        "eval_time:70000ms\n", "eval_time:720000ms\nfinal_int6_sliding_window_exact val_loss:1.9 val_bpb:1.1248 "
                               "gpu time:61.2s\n"))),
    "a claim that names a short pass": ("TIME.EVAL", dict(edit_log=replace("eval_time:70000ms", "eval_time:780000ms"),
                                                          sub={"val_bpb_method": "final_int6_roundtrip"})),
    "a later total with digit separators": ("SIZE.CAP", dict(edit_log=replace(
        "final_int6_roundtrip", "Total submission size int6+zstd+meta: 16,039,340 bytes\nfinal_int6_roundtrip"))),
    "training time over the cap in another wording": ("TIME.TRAIN", dict(edit_log=lambda seed, text: text if seed != 42
                                                                         else text.replace("train_time:", "train_ms:")
                                                                         .replace("ms step_avg", " step_avg").replace(
        "Serialized", "step:102/102 train_loss:2.9000 train_ms:612047\nSerialized"))),
    "half the validation split in another wording": ("DATA.FULL_VAL", dict(edit_log=replace(
        "val_loader:shards pattern=./data/fineweb_val_*.bin tokens:62021632",
        "val_loader: pattern=./data/fineweb_val_*.bin num_tokens=31010816"))),
    "another GPU past the first 200 KB": ("HW.H100", dict(edit_log=replace(
        "| 0  NVIDIA H100 80GB HBM3  On |", "#" * 250_000 + "\n| 0  NVIDIA H800 80GB HBM3  On |"))),
    "seeds of different configurations": ("STAT.SEEDS", dict(edit_log=replace(
        "train_seq_len:2048", "train_seq_len:1024", seeds=(42,)))),
    "a package installed at run time": ("DATA.NO_TRAIN_AT_EVAL", dict(script=SCRIPT.replace(
        "    model = build()", '    subprocess.check_call([sys.executable, "-m", "pip", "install", "golf-prior"])\n'
                               "    model = build()"))),
    "a training loader over validation files": ("DATA.NO_VAL_IN_TRAIN", dict(script=SCRIPT.replace(
        "TokenLoader(train_files)", "TokenLoader(val_files)"))),
    "weights in a shipped data file": ("SIZE.CAP", dict(script=SCRIPT.replace(
        "    model = build()", '    model = build()\n    init = np.fromfile("init_state.bin", dtype=np.float16)'),
        extra={"init_state.bin": b"\0" * 1_200_000})),
    "fine-tuning on validation inline before serialization": ("EVAL.PREQUANT_TTT", dict(script=SCRIPT.replace(
        "    torch.save(", "    for i in range(0, len(val_tokens), 2048):\n"
                          "        loss = model(val_tokens[i:i + 2048])\n        loss.backward()\n        opt.step()\n"
                          "    torch.save("))),
}


def test_the_clean_folder_passes_every_rule_the_cases_check(tmp_path: Path) -> None:
    folder = record_folder(tmp_path)
    for rule in {rule for rule, _ in CASES.values()} | {"SIZE.LOG"}:
        assert not errors(folder, rule), (rule, errors(folder, rule))


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_fails_its_rule(tmp_path: Path, case: str) -> None:
    rule, kwargs = CASES[case]
    assert errors(record_folder(tmp_path, **kwargs), rule), case


def test_sizes_with_digit_separators_read_as_bytes(tmp_path: Path) -> None:
    """A legitimate log printing `15,050,000 bytes` failed SIZE.LOG ("no final total line")."""
    folder = record_folder(tmp_path, edit_log=replace("15050000 bytes", "15,050,000 bytes"))
    findings = [f for f in validate_folder(folder) if f.rule in ("SIZE.LOG", "SIZE.CAP")]
    assert not [f for f in findings if f.status == "fail"], findings


def test_a_five_thousand_digit_field_is_no_evidence_not_a_stop(tmp_path: Path) -> None:
    folder = record_folder(tmp_path, edit_log=replace("seed:1337", "seed:" + "9" * 5000, seeds=(1337,)))
    assert [f for f in validate_folder(folder) if f.rule == "STAT.SEEDS"]  # the rules ran
