"""Bad record folders from the fifth red-team pass (session 27), one per threat class (validator/THREATS.md): a
claim line with text around a line the code prints, weights in a file shipped as a figure or split into parts a glob
reads, hardware and copied runs in training logs split from their score lines, half the validation split under an
unlisted vocabulary, durations written in parts, downloads in a README or script the code then reads, a helper run
with `python -m`, world size and launchers in other spellings, a hyper-parameter named like a per-run fact, code in a
zip named like a picture; and the two honest logs the first fixes failed (clocks in minutes and seconds, clocks in
whole seconds). Each case mutates the clean 3-seed folder of the third pass."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from test_validator_redteam3 import SCRIPT, SEEDS, log_text, record_folder, replace
from test_validator_redteam4 import DOWNLOAD, PRINTING, fails_its_rule, passes_every_rule_of

from validator.cli import validate_folder


def zipped(name: str, source: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, source)
    return buf.getvalue()


def clock(fmt):
    """Every step's train_time rewritten by `fmt(ms)` (an honest log in another clock format)."""
    def edit(seed: int, text: str) -> str:
        return re.sub(r"train_time:(\d+)ms", lambda m: f"train_time:{fmt(int(m[1]))}", text)
    return edit


COPIES = {f"trainonly_seed{s}.log": log_text(1337).replace("seed:1337", f"seed:{s}").split("Serialized")[0]
          for s in SEEDS}
CASES = {  # name: (rule, record_folder keyword arguments, files added afterwards)
    "a claim line with text around a printed line": ("JSON.CONSISTENCY", dict(
        script=PRINTING, edit_log=lambda seed, text: text + "ttt final_int6_sliding_window val_loss:1.8000 "
        "val_bpb:1.09000000 stride:64 eval_time:70000ms\n", sub={"val_bpb": 1.09}), {}),
    "weights in a file shipped as a figure": ("SIZE.CAP", dict(script=SCRIPT.replace(
        "    model = build()", '    model = build()\n    init = np.fromfile("loss_curve.png", offset=64)')),
        {"loss_curve.png": b"\x89PNG" + b"\0" * 1_000_000}),
    "weights split into parts a glob reads": ("SIZE.CAP", dict(script=SCRIPT.replace(
        "    model = build()", '    model = build()\n    parts = sorted(glob.glob("init/part_*"))')),
        {"init/part_0": b"\0" * 600_000, "init/part_1": b"\0" * 600_000}),
    "another GPU in a training log split from its score": ("HW.H100", {}, {
        "train_only_seed42.log": "seed:42\n| 0  NVIDIA H800 80GB HBM3  On |\nstep:1/100 train_loss:6.0 "
                                 "train_time:5900ms step_avg:5900.00ms\n"}),
    "one training run as three seeds in training-only logs": ("STAT.SEEDS", {}, COPIES),
    "half the split under an unlisted vocabulary": ("TOK.BPB", dict(edit_log=lambda seed, text: text.replace(
        "vocab_size:1024", "vocab_size:2048").replace("tokens:62021632", "tokens:31010816")), {}),
    "a training time in minutes and seconds": ("TIME.TRAIN", dict(edit_log=replace(
        "Serialized", "stopping_early: wallclock_cap train_time: 10m 48.0s step:100/100\nSerialized")), {}),
    "an eval time in minutes and seconds": ("TIME.EVAL", dict(edit_log=replace(
        "stride:64 eval_time:70000ms", "stride:64 eval_time: 10m 41.3s", seeds=(42,))), {}),
    "a README download the code reads": ("DATA.NO_TRAIN_AT_EVAL", dict(script=SCRIPT.replace(
        "    model = build()", '    model = build()\n    init = torch.load("init_state.bin")')),
        {"README.md": "```\ncurl -sL https://example.com/w.pt -o init_state.bin\n```\n"}),
    "a helper run with python -m": ("DATA.NO_TRAIN_AT_EVAL", dict(script=SCRIPT.replace(
        "    model = build()", '    subprocess.run([sys.executable, "-m", "warm_start"])\n    model = build()')),
        {"warm_start.py": DOWNLOAD}),
    "a world size in words": ("HW.H100", dict(edit_log=replace("world_size:8 grad_accum_steps:1",
                                                               "World size: 16")), {}),
    "a README that runs two nodes through slurm": ("HW.H100", {}, {
        "README.md": "srun --nodes=2 --ntasks-per-node=8 python train_gpt.py\n"}),
    "seeds with a hyper-parameter named like a per-run fact": ("STAT.SEEDS", dict(
        edit_log=lambda seed, text: text.replace("model_params:26829913", f"model_params:26829913\n"
                                                 f"ttt_lora_rank:{96 if seed == 42 else 32}")), {}),
    "code in a zip named like a picture": ("FILES.RUNS_IN_FOLDER", dict(script=SCRIPT.replace(
        "def main():", 'sys.path.insert(0, "arch.png")\nimport kern\ndef main():')),
        {"arch.png": zipped("kern.py", DOWNLOAD)}),
}


def test_the_clean_folders_pass_every_rule_the_cases_check(tmp_path: Path) -> None:
    passes_every_rule_of(record_folder(tmp_path), CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_fails_its_rule(tmp_path: Path, case: str) -> None:
    assert fails_its_rule(tmp_path, CASES[case]), case


@pytest.mark.parametrize("fmt", [lambda ms: f" {ms // 60000}m {ms % 60000 / 1000:.1f}s",
                                 lambda ms: f"{round(ms / 1000)}s"], ids=["minutes-and-seconds", "whole-seconds"])
def test_honest_seeds_with_coarse_clocks_are_not_one_run(tmp_path: Path, fmt) -> None:
    """The first fix of the same-run check read a clock written `9m 30.2s` as 9 minutes, and compared clocks printed
    in whole seconds, which honest seeds share: both failed real seeds as one run."""
    folder = record_folder(tmp_path, edit_log=clock(fmt))
    assert not [f for f in validate_folder(folder) if f.rule == "STAT.SEEDS" and f.status == "fail"]
