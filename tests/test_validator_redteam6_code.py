"""Bad record folders from the seventh red-team pass (session 28), one per threat class (validator/THREATS.md):
validation data reaching the artifact or the model (a histogram initialising the embedding, a "paid prefix" in the
saved state dict, the same through an alias, a helper, a path literal or a loader under another name), code that can
reach the network in ways the keyword list missed (a hub loader, a program whose URL is in a variable, git's fetching
subcommands, wandb/fsspec/requests under an alias, a dynamic import, a shipped shell script the code runs), and
per-seed sizes in submission.json that no log of the seed prints (any key spelling). Each case mutates the clean
3-seed folder of the third pass; the valid variants (evaluation and score-first TTT on validation tokens, an
eval-time cache, URLs in comments and messages, local git/pip commands, a download helper the run never reaches,
sizes that match) must keep passing."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_validator_redteam3 import SCRIPT, SEEDS, errors, record_folder
from test_validator_redteam4 import fails_its_rule, passes_every_rule_of, shipped

# the fixture's script with validation data as records use it: loaded, evaluated periodically and at the end,
# adapted on by score-first TTT after the artifact is saved, counted by an eval-time cache of scored tokens
HELPERS = '''import numpy as np
import subprocess


class NgramCache:
    def __init__(self, vocab):
        self.counts = torch.zeros(vocab, vocab)

    def update(self, tokens):  # scored tokens only
        self.counts.index_put_((tokens[:-1], tokens[1:]), torch.ones(tokens.numel() - 1), accumulate=True)
        self.hist = torch.bincount(tokens, minlength=1024)


def load_validation_tokens(pattern, seq_len):
    files = sorted(glob.glob(pattern))
    tokens = torch.cat([torch.from_numpy(np.fromfile(f, dtype=np.uint16)) for f in files])
    return tokens[: (tokens.numel() - 1) // seq_len * seq_len + 1]


def eval_val(model, val_tokens, cache=None):
    loss_sum = torch.zeros(())
    nll = []
    for i in range(0, val_tokens.numel() - 1025, 1024):
        x = val_tokens[i:i + 1025].long()
        with torch.no_grad():
            loss = model(x[:-1], x[1:]).detach()
        loss_sum += loss
        nll.append(loss)
        if cache is not None:
            cache.update(x)
    return (loss_sum / len(nll)).item(), 0.0


def ttt_score_first(model, val_tokens, opt):
    for i in range(0, val_tokens.numel() - 1025, 1024):
        chunk = val_tokens[i:i + 1025].long()
        with torch.no_grad():
            model(chunk[:-1], chunk[1:])
        model(chunk[:-1], chunk[1:]).backward()
        opt.step()


'''
VALID = HELPERS + SCRIPT.replace("    model = build()\n", '''    val_tokens = load_validation_tokens(val_files, 1024)
    log0(f"val_loader:shards pattern={val_files} tokens:{val_tokens.numel() - 1}")
    model = build()
''').replace("        opt.step()\n", '''        opt.step()
        if step % 50 == 0:
            val_loss, val_bpb = eval_val(model, val_tokens)
''') + '''    # see https://github.com/openai/parameter-golf for the rules
    log0("weights: https://example.com/never-fetched (a message, not a path)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    subprocess.run(["nvidia-smi"], check=False)
    ttt_score_first(model, val_tokens, opt)
    val_loss, val_bpb = eval_val(model, val_tokens, NgramCache(1024))
'''


def val_edit(old: str, new: str) -> dict:
    assert old in VALID, old
    return dict(script=VALID.replace(old, new, 1))


SAVE = '    torch.save(quantize(model.state_dict()), "final_model.ptz")\n'
BUILT = "    model = build()\n"


def net(imports: str, stmt: str) -> dict:
    return dict(script=imports + "\n" + SCRIPT.replace(BUILT, BUILT + f"    {stmt}\n"))


SIZES = {str(s): {"val_bpb": round(1.1248 + s * 1e-7, 8), "artifact_bytes": 15_050_000} for s in SEEDS}


def sizes(**changed) -> dict:
    """submission.json's seed_results with seed 42's entry changed."""
    return dict(sub={"seed_results": {**SIZES, "42": {**SIZES["42"], **changed}}})


CASES = {  # name: (rule, record_folder keyword arguments, files added afterwards)
    # ---- F: validation data reaching the artifact or the model before it is scored
    "a histogram of validation tokens initialises the embedding": ("DATA.NO_VAL_IN_TRAIN", val_edit(BUILT, BUILT + (
        "    with torch.no_grad():\n"
        "        hist = torch.bincount(val_tokens.long(), minlength=1024).float()\n"
        "        model.tok_emb.weight[:, 0] += torch.log1p(hist)\n")), {}),
    "the first validation tokens saved in the artifact (paid prefix)": ("DATA.NO_VAL_IN_TRAIN", val_edit(SAVE, (
        "    quant = quantize(model.state_dict())\n"
        "    quant['prefix'] = val_tokens[:1_000_000].to(torch.int16)\n"
        "    torch.save(quant, 'final_model.ptz')\n")), {}),
    "an alias and a helper hide the histogram": ("DATA.NO_VAL_IN_TRAIN", dict(script=VALID.replace(BUILT, BUILT + (
        "    prior = val_tokens\n"
        "    init = unigram(prior[1:])\n"
        "    model.lm_head.bias.data.copy_(init.float())\n"), 1).replace(
            "def eval_val(", "def unigram(t):\n    return torch.bincount(t, minlength=1024)\n\n\ndef eval_val(")), {}),
    "a helper writes validation counts into the weights it is handed": ("DATA.NO_VAL_IN_TRAIN", dict(
        script=VALID.replace(BUILT, BUILT + "    warm(model, val_tokens)\n", 1).replace(
            "def eval_val(", "def warm(m, toks):\n    m.tok_emb.weight.data[:, 0] = torch.bincount(toks).float()\n\n\n"
                             "def eval_val(")), {}),
    "validation shards read by path and saved with the weights": ("DATA.NO_VAL_IN_TRAIN", val_edit(SAVE, (
        "    prior = np.fromfile('./data/fineweb_val_000000.bin', dtype=np.uint16)[:4096]\n"
        "    torch.save({'w': quantize(model.state_dict()), 'p': prior}, 'final_model.ptz')\n")), {}),
    "the loader under another name, its tokens in the state dict": ("DATA.NO_VAL_IN_TRAIN", val_edit(SAVE, (
        "    ids = load_validation_tokens(val_files, 1024)\n"
        "    sd = model.state_dict()\n"
        "    sd['ids'] = ids[:4096]\n"
        "    torch.save(quantize(sd), 'final_model.ptz')\n")), {}),
    # ---- G: code that can reach the network
    "a pretrained teacher from the hub": ("DATA.NO_TRAIN_AT_EVAL", net(
        "from transformers import AutoModelForCausalLM",
        'teacher = AutoModelForCausalLM.from_pretrained("openai-community/gpt2")'), {}),
    "curl with its URL in a variable": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import subprocess\nINIT_URL = 'https://example.com/init.pt'",
        'subprocess.run(["curl", INIT_URL, "--output", "prior.pt"], check=True)'), {}),
    "git lfs pull": ("DATA.NO_TRAIN_AT_EVAL", net("import subprocess",
                                                  'subprocess.run(["git", "lfs", "pull"], check=True)'), {}),
    "git submodule update through a shell line": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import os", 'os.system("cd weights && git submodule update --init")'), {}),
    "a program named by a variable, run through os.system": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import os\nTOOL = 'aria2c'\nSRC = 'example.com/w.bin'", 'os.system(TOOL + " -x4 " + SRC)'), {}),
    "a wandb artifact": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import wandb", 'init_dir = wandb.Api().artifact("team/golf/init:v3").download()'), {}),
    "fsspec reading a URL": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import fsspec", 'prior = fsspec.open("https://example.com/prior.bin", "rb").open().read()'), {}),
    "requests under an alias": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import requests as rq", 'blob = rq.get(os.environ["SRC"]).content'), {}),
    "urllib's request module imported from its package": ("DATA.NO_TRAIN_AT_EVAL", net(
        "from urllib import request", 'request.urlretrieve(os.environ["SRC"], "w.bin")'), {}),
    "a socket module imported by name at run time": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import importlib", 'sock = importlib.import_module("socket").create_connection(("10.0.0.1", 9000))'), {}),
    "a shipped shell script the code runs": ("DATA.NO_TRAIN_AT_EVAL", net(
        "import subprocess", 'subprocess.run(["bash", "fetch.sh"], check=True)'),
        {"fetch.sh": '#!/bin/bash\nset -e\nwget -q "$WEIGHTS_URL" -O "$HOME/w.bin"\n'}),
    # ---- H: per-seed figures of submission.json that no log of the seed prints
    "a per-seed artifact_bytes below its log's total": ("JSON.CONSISTENCY", sizes(artifact_bytes=15_049_000), {}),
    "a per-seed size under another spelling": ("JSON.CONSISTENCY", sizes(artifact_size_bytes=14_999_999), {}),
    "a per-seed total_bytes": ("JSON.CONSISTENCY", sizes(total_bytes=15_000_000), {}),
    "a per-seed model size its log does not print": ("JSON.CONSISTENCY", sizes(model_bytes=14_900_000), {}),
}


def test_the_clean_folders_pass_every_rule_the_cases_check(tmp_path: Path) -> None:
    """The fixture, and the fixture that evaluates, adapts score-first and caches on validation tokens, logs a URL,
    asks git for its commit and states sizes that its logs print, fail none of the rules."""
    for i, kwargs in enumerate((dict(), dict(script=VALID), dict(script=VALID, **sizes(
            bytes_total=15_050_000, model_bytes=15_000_000, code_bytes=50_000)))):
        passes_every_rule_of(record_folder(tmp_path / str(i), **kwargs), CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_fails_its_rule(tmp_path: Path, case: str) -> None:
    assert fails_its_rule(tmp_path, CASES[case]), case


def test_a_download_helper_the_run_never_reaches_passes(tmp_path: Path) -> None:
    """A data-preparation script that fetches the dataset from the hub (a merged record ships one) is not code the
    run executes: train_gpt.py never imports, names or runs it."""
    helper = ("from huggingface_hub import hf_hub_download\n"
              "hf_hub_download('willdepueoai/parameter-golf', 'fineweb_val_000000.bin', repo_type='dataset')\n")
    folder = shipped({"cached_challenge_fineweb.py": helper})(record_folder(tmp_path, script=VALID))
    assert not errors(folder, "DATA.NO_TRAIN_AT_EVAL")


def test_a_size_printed_by_another_log_of_the_seed_passes(tmp_path: Path) -> None:
    """A seed's original run and its re-run are both its logs (a merged record states the original's size)."""
    folder = record_folder(tmp_path, **sizes(artifact_bytes=15_123_456))
    rerun = (folder / "train_seed42.log").read_text().replace("15050000", "15123456")
    (folder / "train_seed42_original.log").write_text(rerun)
    assert not [f for f in errors(folder, "JSON.CONSISTENCY") if "artifact_bytes" in f.message]
