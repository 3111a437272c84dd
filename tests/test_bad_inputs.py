"""The project's bad-input catalogue: per command, inputs a user gets wrong, each of which must end in a clear
one-line error (naming the file or field and what was expected), a non-zero exit, and nothing lost (every
file that existed before is unchanged, no temporary file is left behind).

The threat classes it covers (a new row belongs to one; a new class gets a line here):
1. settings: a wrong type, a number in non-ASCII digits ('٣', '１２') or past a float's range, a non-finite number, a
   value outside the setting's range (core: `core_errors`; plugins: `check_config`, `plugins.lib.settings.range_errors`;
   every size, count, loop and scale has an upper bound, session 28), a name that does not exist, a plugin list that
   conflicts: refused when the configuration is resolved, before a run directory is made or anything trains;
2. paths: missing, the wrong kind (a file for a folder, a folder under a regular file), a name that escapes its
   folder (`core.run_id`, `record --name`), an output that exists (`--force`, never a silent overwrite: bundle,
   record, data build, bench --json/--extract-record); an output that is not a regular file (a FIFO, a device, a
   folder) is never replaced; writes are atomic and follow the umask; `train --force` checks the data, the batch
   split and the rank before the old run moves to `.replaced/` (removed once the new run finishes);
3. structures inside files a command reads: JSON that parses but has the wrong shape or types (config.json
   sections, metrics.json fields), artifacts edited by hand (a record whose parts do not fit, non-finite weights),
   logs, shards and tokenizers that are not what they claim;
4. the environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK (ASCII digits, RANK < WORLD_SIZE), setting variables
   with garbage;
5. interruption: SIGINT and SIGTERM unwind (temporary folders removed, a run marked interrupted);
6. the last line of defence: any other exception is one `pgolf: internal error` line (exit 70), never a
   traceback (PGOLF_TRACEBACK=1 shows it; 0/false/off/empty do not);
7. outputs that are inputs (session 27): a records folder that would replace a run it is made from, a script named
   like the requirements.txt written beside it, a dataset built into its own text folder, a second failed
   `train --force` (the run the first replaced stays in `.replaced/`); seeds of one record scored on another
   validation set (tokens, bytes per token), a damaged seed in a run's config.json; several ranks: one that
   fails stops the job (`pgolf.launch`, test_train.py).

Each row of CATALOGUE is data: an id, a setup (which fixture files to make), the command line (with
{tmp}, {data}, {run}, {tiny} placeholders), the expected exit code and a regular expression the one error
line must match, and optionally a check of what the command left. Add a row for every new class of
mistake; the count is reported in issue notes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pgolf.cli import main

NAN_PLUGIN = '''
import torch
from core.hookspecs import hookimpl
from core.registry import Plugin


class NanInit(Plugin):
    """Poisons one weight with NaN (a diverging run)."""
    name = "nan_init"
    summary = "test: NaN weights"
    sources = ("test",)
    test_settings = {}

    @hookimpl
    def pg_init_weights(self, model, config):
        with torch.no_grad():
            next(p for p in model.parameters() if p.dim() == 2).fill_(float("nan"))
'''


@dataclass
class Case:
    id: str
    argv: str
    code: int
    error: str  # regex the (single) error line must match
    setup: tuple[str, ...] = ()  # names of SETUPS to run first
    check: str | None = None  # name of a CHECKS function run on the tmp folder after the command
    patch: str | None = None  # name of a PATCHES function (simulated system failures)
    tiny: bool = False  # append the tiny-model --set arguments
    env: dict[str, str] = field(default_factory=dict)


CATALOGUE = [
    # --- session 28: numbers are ASCII, in range of a float, and inside bounds a sane run keeps (seventh red team):
    # a huge integer in a float setting was an internal error, '٣' / '１２' / 'cuda:²' were read as numbers, sizes
    # and counts without an upper bound allocated past memory or never ended after training (the model lost on
    # Ctrl-C), eps / init / LR settings past any plausible value trained to nonsense; all refused before a run dir
    Case("config/huge-integer-in-a-float-setting", "config show --recipe {tmp}/bigint.toml", 2,
         r"bigint\.toml: core\.matrix_lr: expected a number, got 10+\.\.\.0+$", setup=("bigint_recipe",)),
    Case("config/huge-integer-in-a-plugin-size", "config show --recipe {tmp}/bigtable.toml", 2,
         r"bigram_hash\.buckets: expected a number >= 2 and <= 128000000, got 10+\.\.\.0+$",
         setup=("bigint_plugin_recipe",)),
    Case("eval/huge-integer-in-config-json", "eval {tmp}/done", 2,
         r"done/config\.json: core\.matrix_lr: expected a number, got 10+\.\.\.0+$",
         setup=("finished_run", "bigint_config_json")),
    Case("config/arabic-indic-digit", "config show --set core.iterations=\u0663", 2,
         r"--set core\.iterations=\u0663: expected an integer, got '\u0663'"),
    Case("config/fullwidth-digits", "config show --set core.seed=\uff11\uff12", 2,
         r"core\.seed=\uff11\uff12: expected an integer"),
    Case("config/superscript-device-index", "config show --set core.device=cuda:\u00b2", 2,
         r"core\.device: expected auto, cpu or cuda\[:N\], got 'cuda:\u00b2'"),
    Case("config/non-ascii-digit-in-a-recipe-string", "config show --recipe {tmp}/arabic.toml", 2,
         r"arabic\.toml: core\.num_layers: expected an integer, got '\u0663'", setup=("arabic_digit_recipe",)),
    Case("config/non-ascii-block-index", "config show --plugins value_embeddings --set value_embeddings.layers=\u0663",
         2, r"value_embeddings\.layers: expected comma-separated block indices"),
    Case("train/plugin-table-wider-than-any-model", "train --plugins bigram_hash --set bigram_hash.dim=1000000000000 "
         "--set core.out_dir={tmp}/runs", 2, r"bigram_hash\.dim: expected a number >= 1 and <= 256, got 1000000000000",
         check="no_run_dir", tiny=True),
    Case("config/plugin-table-no-artifact-holds", "config show --plugins bigram_hash --set bigram_hash.buckets=1000000 "
         "--set bigram_hash.dim=2048", 2, r"bigram_hash\.buckets x dim: expected at most 128,000,000 table entries"),
    Case("train/doc-bucket-past-the-batch", "train --plugins doc_packing --set doc_packing.cu_bucket_size="
         "1000000000000 --set core.out_dir={tmp}/runs", 2,
         r"doc_packing\.cu_bucket_size: expected a number >= 1 and <= 1024",
         check="no_run_dir", tiny=True),
    Case("config/recurrence-loops-without-end", "config show --plugins depth_recurrence "
         "--set depth_recurrence.num_loops=1000000000000", 2, r"depth_recurrence\.num_loops: expected a number >= 1 "
         r"and <= 32"),
    Case("train/calibration-without-end", "train --plugins gptq --set gptq.calib_batches=1000000000000 "
         "--set core.out_dir={tmp}/runs", 2, r"gptq\.calib_batches: expected a number >= 1 and <= 4096",
         check="no_run_dir", tiny=True),
    Case("config/calibration-sequence-past-the-model", "config show --plugins gptq --set gptq.calibration=ar "
         "--set gptq.ar_seq_len=1000000000000", 2, r"gptq\.ar_seq_len: expected a number >= 0 and <= 1024"),
    Case("config/ttt-phases-without-end", "config show --plugins phased_ttt --set phased_ttt.num_phases=1000000000000",
         2, r"phased_ttt\.num_phases: expected a number >= 1 and <= 32"),
    Case("config/batch-that-never-ends", "config show --set core.train_batch_tokens=1000000000000000", 2,
         r"core\.train_batch_tokens must be in \[1, 16777217\)"),
    Case("config/eval-length-no-gpu-holds", "config show --set core.eval_seq_len=1000000000000", 2,
         r"core\.eval_seq_len must be in \[0, 1048577\)"),
    Case("train/adam-eps-past-any-eps", "train --set core.adam_eps=1e300 --set core.out_dir={tmp}/runs", 2,
         r"core\.adam_eps must be in \(0, 0\.01\), got 1e\+300", check="no_run_dir", tiny=True),
    Case("config/learning-rate-past-any-run", "config show --set core.matrix_lr=1000", 2,
         r"core\.matrix_lr must be in \[0, 10\), got 1000\.0"),
    Case("train/init-past-any-init", "train --plugins value_residual --set value_residual.init=1e30 "
         "--set core.out_dir={tmp}/runs", 2, r"value_residual\.init: expected a number >= -10\.0 and <= 10\.0, got "
         r"1e\+30",
         check="no_run_dir", tiny=True),
    Case("config/gate-scale-past-any-init", "config show --plugins sparse_attn_gate --set sparse_attn_gate.scale=1e30",
         2, r"sparse_attn_gate\.scale: expected a number >= -10\.0 and <= 10\.0"),
    Case("config/plugin-nan-without-the-cli", "config show --plugins overtone_init --set overtone_init.phase_slope=nan",
         2, r"overtone_init\.phase_slope \(OVERTONE_INIT_PHASE_SLOPE\): expected a finite number, got nan"),
    # --- session 28: an allocation that cannot succeed is one line saying so (was an "internal error")
    # bench's --out is its own working folder (it replaces data/, runs/, record/ there): a folder it did not make is
    # refused (a user's dataset under it was deleted), and so is data inside the copy it rebuilds
    Case("train/sizes-whose-product-cannot-fit", "train --set core.model_dim=65536 --set core.num_layers=1024 "
         "--set core.out_dir={tmp}/runs", 2, r"the run needs at least [\d,.]+ GiB \([\d,]+ parameters", tiny=True),
    # a file that is no regular file is never opened: a FIFO hung validate/bundle/record, /dev/zero filled memory
    Case("validate/a-run-whose-log-is-a-fifo", "validate {tmp}/done", 2,
         r"done/train\.log: not a regular file \(a FIFO, a device or a socket\)", setup=("finished_run", "fifo_log")),
    Case("bundle/a-run-whose-config-is-dev-zero", "bundle {tmp}/done -o {tmp}/x.py", 2,
         r"done/config\.json: .*not a regular file", setup=("finished_run", "zero_config")),
    Case("validate/a-run-whose-config-is-dev-zero", "validate {tmp}/done", 2,
         r"done/config\.json: not a regular file", setup=("finished_run", "zero_config")),
    Case("plugins/new-in-a-device", "plugins new myp2 --dir /dev/null", 2,
         r"/dev/null: is not a folder \(a device, a FIFO or a link\), where a folder is needed"),
    Case("bundle/over-its-own-run", "bundle {tmp}/done -o {tmp}/done/config.json --force", 2,
         r"-o .*done/config\.json: a file this bundle is made from", setup=("finished_run",)),
    Case("bundle/requirements-over-its-recipe", "bundle --recipe {tmp}/requirements.txt -o {tmp}/x.py "
         "--requirements --force", 2, r"--requirements .*requirements\.txt: a file this bundle is made from",
         setup=("recipe_named_requirements",)),
    Case("bench/out-holds-the-users-dataset", "bench --recipe baseline --smoke --data {tmp}/ws/data --out {tmp}/ws", 2,
         r"ws: holds files bench did not make \(no \.pgolf-bench\)", setup=("dataset_in_a_folder",), tiny=True),
    Case("bench/data-inside-the-copy-it-rebuilds", "bench --recipe baseline --smoke --data {tmp}/bo/data/ds "
         "--out {tmp}/bo", 2, r"bo/data/ds: inside .*bo/data, the folder bench rebuilds", setup=("bench_folder",),
         tiny=True),
    Case("bench/an-earlier-sides-result-damaged", "bench --recipe baseline --smoke --side pgolf --out {tmp}/bo", 2,
         r"bo/record\.json: not a bench side's result", setup=("bench_folder",), tiny=True),  # before its data/ goes
    Case("train/a-plugin-table-too-large-for-memory", "train --plugins bigram_hash --set core.out_dir={tmp}/runs", 1,
         r"out of memory \(tried to allocate [\d,.]+ GiB\): the model, a batch or a plugin's table is too large",
         patch="no_memory", tiny=True),  # (the allocator's own failure: every table size is bounded now)
    # --- session 27 (fourth red-team pass): settings refused at configuration time, not after the run
    Case("config/cuda-device-index-not-a-number", "config show --set core.device=cuda:xyz", 2,
         r"core\.device: expected auto, cpu or cuda\[:N\], got 'cuda:xyz'"),
    Case("config/newton-schulz-steps-without-end", "config show --set core.muon_backend_steps=100000000", 2,
         r"core\.muon_backend_steps must be in \[1, 101\)"),
    Case("config/auto-codec-unknown", "config show --plugins compress_auto --set compress_auto.codecs=zlib,zzz", 2,
         r"compress_auto\.codecs: unknown codec 'zzz'"),
    Case("config/lora-target-unknown", "config show --plugins lora_ttt --set lora_ttt.targets=q,zzz", 2,
         r"lora_ttt\.targets: expected a comma-separated subset of q,k,v,o,mlp,head"),
    Case("config/stride-longer-than-the-window", "config show --plugins sliding_window "
         "--set sliding_window.stride=100000", 2, r"sliding_window\.stride: expected a number >= 1 and <= 1024"),
    Case("config/smeargate-version-unknown", "config show --plugins smeargate --set smeargate.version=zzz", 2,
         r"smeargate\.version: expected v2 or v4, got 'zzz'"),
    Case("config/bigram-table-of-one-bucket", "config show --plugins bigram_hash --set bigram_hash.buckets=1", 2,
         r"bigram_hash\.buckets: expected a number >= 2 and <= 128000000, got 1"),
    Case("plugins/file-plugin-conflicts-as-a-string", "config show --plugin-file {tmp}/strconf.py", 2,
         r"sources, requires, conflicts, provides, after and before must be tuples of names",
         setup=("string_conflicts_plugin",)),
    Case("train/world-size-without-a-launcher", "train --set core.out_dir={tmp}/runs", 2,
         r"WORLD_SIZE=2 without MASTER_ADDR/MASTER_PORT: start the ranks with --nproc 2", tiny=True,
         env={"RANK": "0", "WORLD_SIZE": "2"}),
    Case("eval/tokenizer-the-data-was-not-built-with", "eval {tmp}/done --set core.tokenizer_path={tmp}/other.model",
         2, r"tokenizer .*other\.model is not the one .* was built with", setup=("finished_run", "other_tokenizer")),
    Case("bundle/script-named-like-its-requirements", "bundle --plugins ema -o {tmp}/requirements.txt --requirements",
         2, r"requirements\.txt: the script would be overwritten by its own requirements\.txt"),
    Case("record/force-over-a-run-it-is-made-from", "record {tmp}/2026-12-05_Run --name 2026-12-05_Run --author a "
         "--github-id a --out {tmp} --force", 2, r"records folder .*2026-12-05_Run would replace the run",
         setup=("finished_run_named",)),
    Case("train/nproc-over-an-existing-run", "train --nproc 2 --set core.out_dir={tmp} --set core.run_id=done", 2,
         r"/done: holds a run already .*pass --force", setup=("finished_run",), tiny=True),  # before the ranks start
    Case("train/nproc-inside-a-rank", "train --nproc 2 --set core.out_dir={tmp}/runs", 2,
         r"--nproc 2 with RANK=0 already set", tiny=True, env={"RANK": "0"}),
    Case("config/master-port-not-a-port", "config show", 2, r"MASTER_PORT='99999': expected a port number in "
         r"1\.\.65535", env={"MASTER_PORT": "99999"}),
    Case("config/partial-rope-wider-than-a-head", "config show --plugins partial_rope "
         "--set partial_rope.dims=100000", 2, r"partial_rope\.dims: expected a number >= 2 and <= 64"),
    Case("config/ttt-stride-longer-than-the-window", "config show --plugins score_first_ttt "
         "--set score_first_ttt.stride=100000", 2, r"score_first_ttt\.stride: expected a number >= 1 and <= 1024"),
    Case("config/lora-rank-wider-than-the-model", "config show --plugins lora_ttt --set lora_ttt.rank=10000000000", 2,
         r"lora_ttt\.rank: expected a number >= 1 and <= 512"),
    Case("data/text-inside-the-output", "data build {tmp}/ds/text --vocab 512 --out {tmp}/ds --force", 2,
         r"source .*ds/text is inside --out .*ds", setup=("text_in_dataset",)),
    Case("record/seed-not-an-integer", "record {tmp}/done --name 2026-12-05_X --author a --github-id a "
         "--out {tmp}/rec", 2, r"done/config\.json: core\.seed: expected an integer >= 0, got 'abc'",
         setup=("finished_run", "string_seed")),
    # --- pgolf train: run ids, settings, data, output folders, failures, signals
    # --force checks everything a run finds wrong in its first seconds before it touches the old run (kept unchanged)
    Case("train/force-over-a-run-with-missing-data", "train --set core.out_dir={tmp} --set core.run_id=done --force "
         "--data {tmp}/nowhere", 2, r"data path .*nowhere does not exist", setup=("finished_run",), tiny=True),
    Case("train/force-over-a-run-with-a-bad-batch", "train --set core.out_dir={tmp} --set core.run_id=done --force "
         "--set core.train_batch_tokens=32", 2, r"= 32 per rank: not a multiple of seq_len", setup=("finished_run",),
         tiny=True),
    Case("train/training-split-shorter-than-a-sequence", "train --data {tmp}/shorttrain --set core.out_dir={tmp}/runs",
         2, r"train split in .*shorttrain is too short: 10 tokens", setup=("short_train",), tiny=True),
    Case("train/nproc-with-missing-data", "train --nproc 2 --data {tmp}/nowhere --set core.out_dir={tmp}/runs", 2,
         r"data path .*nowhere does not exist", tiny=True),  # checked once, before torchrun starts the ranks
    Case("train/rank-not-below-world-size", "train --set core.out_dir={tmp}/runs", 2,
         r"RANK=3 with WORLD_SIZE=2: expected 0 <= RANK < WORLD_SIZE", tiny=True, env={"RANK": "3", "WORLD_SIZE": "2"}),
    Case("config/rank-non-ascii-digit", "config show", 2, r"RANK='²': expected an integer >= 0", env={"RANK": "²"}),
    Case("config/model-no-gpu-holds", "config show --set core.num_layers=100000000000", 2,
         r"core\.num_layers must be in \[1, 1025\), got 100000000000"),
    Case("config/vocab-over-uint16-ids", "config show --set core.vocab_size=99999999", 2,
         r"core\.vocab_size must be in \[1, 65537\)"),
    Case("config/warmup-beyond-the-run", "config show --set core.warmup_steps=1000000", 2,
         r"core\.warmup_steps must be in \[0, 20001\)"),
    Case("config/recipe-is-a-folder", "config show --recipe {tmp}/adir", 2, r"recipe .*adir: a directory",
         setup=("a_dir",)),
    Case("config/section-of-a-plugin-not-enabled", "config show --recipe {tmp}/swa.toml", 2,
         r"swa\.bogus: plugin 'swa' is not enabled", setup=("swa_section",)),
    Case("plugins/new-named-core", "plugins new core --dir {tmp}/pl", 2, r"core: an importable module has that name"),
    Case("plugins/file-plugin-named-core", "config show --plugin-file {tmp}/core_plugin.py", 2,
         r"name 'core' is not an identifier, or is reserved", setup=("core_plugin",)),
    Case("train/tokenizer-the-data-was-not-built-with", "train --set core.tokenizer_path={tmp}/other.model "
         "--set core.out_dir={tmp}/runs", 2, r"tokenizer .*other\.model is not the one .* was built with",
         setup=("other_tokenizer",), tiny=True),
    Case("train/run-id-with-a-newline", "train --set core.out_dir={tmp}/runs", 2,
         r"core\.run_id \(RUN_ID\): expected one folder name \(no path, no control characters\)", tiny=True,
         env={"RUN_ID": "a\nb"}),
    Case("record/name-with-no-real-date", "record {tmp}/done --name 2026-13-45_X --author a --github-id a "
         "--out {tmp}/rec", 2,
         r"--name '2026-13-45_X': expected a folder name like 2026-11-23_MyStack \(a real date",
         setup=("finished_run",)),
    Case("record/blurb-with-a-control-character", "record {tmp}/done --name 2026-12-05_X --author a --github-id a "
         "--blurb a\x07b --out {tmp}/rec", 2, r"--blurb 'a\\x07b': expected one line of printable text",
         setup=("finished_run",)),
    Case("plugins/file-that-exits", "config show --plugin-file {tmp}/exits.py", 3,
         r"code loaded by the command called sys\.exit\(3\)", setup=("exiting_plugin",)),
    Case("env/cache-is-a-file", "config show", 2, r"PGOLF_CACHE='.*afile': expected a folder", setup=("a_file",),
         env={"PGOLF_CACHE": "{tmp}/afile"}),
    Case("data/text-not-utf8", "data build {tmp}/latin --vocab 512 --out {tmp}/ds2", 2,
         r"latin/a\.txt: not UTF-8 text \(byte 3: b'\\xe9'\)", setup=("latin_text",)),
    Case("validate/dynamic-option-without-run", "validate {tmp}/done --only plain", 2,
         r"--only: option\(s\) of the dynamic checks; add --run", setup=("finished_run",)),
    Case("validate/negative-harness-count", "validate {tmp}/done --run --harness-set cuts=-5", 2,
         r"--harness-set cuts=-5: expected an integer > 0", setup=("finished_run",)),
    Case("bench/dry-run-without-a-record", "bench --recipe baseline --dry-run", 2,
         r"--dry-run runs the record's script"),
    Case("bench/json-is-a-folder", "bench --recipe baseline --smoke --json {tmp}/adir --force", 2,
         r"adir: exists and is not a regular file \(--json\)", setup=("a_dir",)),
    Case("train/existing-run-id", "train --set core.out_dir={tmp} --set core.run_id=done", 2,
         r"/done: holds a run already .*pass --force", setup=("finished_run",), tiny=True),
    Case("train/nan-loss", "train --plugin-file {tmp}/nan_plugin.py --plugins nan_init --set core.out_dir={tmp}/runs "
         "--set core.run_id=nan", 1, r"training diverged: train_loss is nan at step 1; stopped before export",
         setup=("nan_plugin",), check="diverged_run", tiny=True),
    Case("train/token-id-over-vocab", "train --data {tmp}/bigids --set core.out_dir={tmp}/runs", 2,
         r"fineweb_val_000000\.bin: token id 3\d\d >= vocab size 320", setup=("big_ids",), tiny=True),
    Case("train/negative-nproc", "train --nproc -2", 2, r"--nproc: expected int >= 0, got '-2'"),
    Case("train/data-is-a-file", "train --data {tmp}/afile", 2, r"--data .*afile: not a directory",
         setup=("a_file",), tiny=True),
    Case("train/data-missing", "train --data {tmp}/nowhere --set core.out_dir={tmp}/runs", 2,
         r"data path .*nowhere does not exist", tiny=True),
    Case("train/zero-heads", "train --set core.num_heads=0", 2,
         r"config error: core\.num_heads must be in \[1, 1025\), got 0"),
    Case("train/negative-dim", "train --set core.model_dim=-64", 2,
         r"core\.model_dim must be in \[1, 65537\), got -64"),
    Case("train/zero-mlp-mult", "train --set core.mlp_mult=0", 2, r"core\.mlp_mult must be in \[1, 65\), got 0"),
    Case("train/zero-kv-heads", "train --set core.num_kv_heads=0", 2,
         r"core\.num_kv_heads must be in \(0, 1025\), got 0"),
    Case("train/nan-lr", "train --set core.matrix_lr=nan", 2, r"core\.matrix_lr \(MATRIX_LR\): expected a finite"),
    Case("train/inf-cap-env", "train", 2, r"core\.max_wallclock_seconds \(MAX_WALLCLOCK_SECONDS\): expected a finite",
         env={"MAX_WALLCLOCK_SECONDS": "inf"}),
    Case("train/inf-plugin-setting", "train --plugins ema --set ema.decay=inf", 2,
         r"ema\.decay \(EMA_DECAY\): expected a finite number, got inf"),
    Case("bundle/nan-plugin-setting", "bundle --plugins ema --set ema.decay=nan -o {tmp}/t.py", 2,
         r"ema\.decay \(EMA_DECAY\): expected a finite number, got nan"),
    Case("train/negative-warmup", "train --set core.warmup_steps=-3", 2,
         r"core\.warmup_steps must be in \[0, 20001\), got -3"),
    Case("train/negative-iterations", "train --set core.iterations=-1", 2,
         r"core\.iterations must be in \[1, 10000001\), got -1"),
    Case("train/cuda-without-gpu", "train --set core.device=cuda --set core.out_dir={tmp}/runs", 2,
         r"core\.device=cuda \(PGOLF_DEVICE\): no CUDA device is available", tiny=True),
    Case("train/bad-device", "train --set core.device=tpu", 2, r"core\.device: expected auto, cpu or cuda"),
    Case("train/not-a-number", "train --set core.iterations=ten", 2,
         r"--set core\.iterations=ten: expected an integer"),
    Case("train/unknown-setting", "train --set core.num_layer=3", 2, r"unknown setting core\.num_layer .*num_layers"),
    Case("train/unknown-plugin", "train --plugins emaa", 2, r"unknown plugin 'emaa'"),
    Case("train/missing-recipe", "train --recipe {tmp}/nope.toml", 2, r"recipe .*nope\.toml: file not found"),
    Case("train/bad-recipe", "train --recipe {tmp}/bad.toml", 2, r"recipe .*bad\.toml: invalid TOML",
         setup=("bad_toml",)),
    Case("train/out-under-a-file", "train --set core.out_dir={tmp}/afile/runs", 1,
         r"afile/runs/\S+: cannot create or write the run directory \(Not a directory", setup=("a_file",), tiny=True),
    Case("train/out-read-only", "train --set core.out_dir=/sys/pgolf-runs", 1,
         r"/sys/pgolf-runs/\S+: cannot create or write the run directory", tiny=True),
    Case("train/disk-full-at-export", "train --set core.out_dir={tmp}/runs --set core.run_id=full", 1,
         r"final_model\.ptz: No space left on device", patch="disk_full", check="failed_run", tiny=True),
    Case("train/ctrl-c", "train --set core.out_dir={tmp}/runs --set core.run_id=cc", 130, r"interrupted by SIGINT",
         patch="ctrl_c", check="interrupted_run", tiny=True),
    Case("train/ctrl-c-after-the-export", "train --set core.out_dir={tmp}/runs --set core.run_id=cc", 130,
         r"interrupted by SIGINT .*; the artifact was exported \(final_model\.ptz\), its final evaluation was not",
         patch="ctrl_c_in_final_eval", check="interrupted_after_export", tiny=True),  # session 28: said "no artifact"
    # --- pgolf eval
    Case("eval/truncated-artifact", "eval {tmp}/truncated", 2, r"final_model\.ptz", setup=("truncated_run",)),
    Case("eval/other-config-artifact", "eval {tmp}/done --set core.num_layers=3", 2,
         r"final_model\.ptz.*(does not match|missing|unexpected)", setup=("finished_run",)),
    Case("eval/missing", "eval {tmp}/nowhere", 2, r"nowhere: artifact not found \(expected a run directory"),
    # --- pgolf bundle
    Case("bundle/out-is-a-dir", "bundle --plugins ema -o {tmp}/adir --force", 1, r"adir: is a directory",
         setup=("a_dir",)),
    Case("bundle/out-exists", "bundle --plugins ema -o {tmp}/afile", 2, r"afile: exists; pass --force",
         setup=("a_file",)),
    Case("bundle/not-a-run", "bundle {tmp}/adir", 2, r"adir/config\.json: expected a pgolf run directory",
         setup=("a_dir",)),
    # --- pgolf record
    Case("record/name-escapes-out", "record {tmp}/done --name ../x --author A --github-id a --out {tmp}/rec", 2,
         r"--name '\.\./x': expected a folder name", setup=("finished_run",)),
    Case("record/two-runs-in-one-log", "record {tmp}/done --name 2026-01-01_X --author A --github-id a "
         "--out {tmp}/rec", 2, r"train\.log: holds 2 runs", setup=("finished_run", "double_log")),
    Case("record/nan-metrics", "record {tmp}/done --name 2026-01-01_X --author A --github-id a --out {tmp}/rec", 2,
         r"metrics\.json: not valid JSON \(non-finite value NaN", setup=("finished_run", "nan_metrics")),
    Case("record/unreadable-log", "record {tmp}/done --name 2026-01-01_X --author A --github-id a --out {tmp}/rec",
         2, r"done/train\.log: unreadable", setup=("finished_run", "binary_log")),
    Case("record/interrupted-run", "record {tmp}/done --name 2026-01-01_X --author A --github-id a --out {tmp}/rec",
         2, r"status\.json: the run is 'interrupted', not finished", setup=("finished_run", "interrupted_status")),
    Case("record/not-a-dir", "record {tmp}/afile --name 2026-01-01_X --author A --github-id a --out {tmp}/rec", 2,
         r"afile: not a run directory \(not a directory\)", setup=("a_file",)),
    # --- pgolf bench
    Case("bench/unknown-recipe", "bench --recipe nosuch", 2,
         r"--recipe nosuch: no such file or recipe name \(known: .*baseline"),
    Case("bench/missing-script", "bench --recipe baseline --vs {tmp}/nope.py", 2,
         r"--vs .*nope\.py: no such file \(expected a record's train_gpt\.py\)"),
    Case("bench/unknown-script", "bench --recipe baseline --vs {tmp}/afile", 2,
         r"--vs .*afile: not a known record script .*pass --profile NAME", setup=("a_file",)),
    Case("bench/too-few-steps", "bench --recipe baseline --steps 1", 2, r"--steps: expected int >= 2, got '1'"),
    Case("bench/negative-val-tokens", "bench --recipe baseline --val-tokens -5", 2,
         r"--val-tokens: expected int >= 0, got '-5'"),
    Case("bench/nan-warmdown", "bench --recipe baseline --warmdown-frac nan", 2,
         r"--warmdown-frac: expected float >= 0.0 and <= 1.0, got 'nan'"),
    Case("bench/inf-warmdown", "bench --recipe baseline --warmdown-frac inf", 2,
         r"--warmdown-frac: expected float >= 0.0 and <= 1.0, got 'inf'"),
    Case("bench/json-exists", "bench --recipe baseline --json {tmp}/afile", 2,
         r"afile: exists; pass --force to overwrite it \(--json\)", setup=("a_file",)),
    Case("bench/extract-over-a-file", "bench --profile pr315 --extract-record {tmp}/afile", 2,
         r"afile: exists; pass --force to overwrite it \(--extract-record\)", setup=("a_file",)),
    Case("bench/unknown-profile", "bench --recipe baseline --profile nosuch --side pgolf", 2,
         r"--profile nosuch: expected one of pr315, .*generic"),
    Case("bench/record-side-without-script", "bench --recipe baseline --side record", 2,
         r"--side record runs the record's script: give it with --vs"),
    Case("bench/non-integer-profile-steps", "bench --recipe baseline --profile-steps 2.5", 2,
         r"--profile-steps: expected int >= 0, got '2.5'"),
    Case("bench/record-fails", "bench --recipe baseline --side record --steps 3 --vs {tmp}/afile --profile generic "
         "--out {tmp}/b", 2, r"--vs .*afile: the record exited with status 1 \(log .*record\.log\)",
         setup=("a_file",), tiny=True),
    # --- pgolf validate / size / plugins / config / data
    Case("validate/not-a-dir", "validate {tmp}/afile", 2, r"afile is not a directory", setup=("a_file",)),
    Case("size/missing", "size {tmp}/nowhere", 2, r"nowhere: no such run directory"),
    Case("size/truncated-artifact", "size {tmp}/truncated", 2, r"final_model\.ptz", setup=("truncated_run",)),
    Case("plugins/show-unknown", "plugins show emaa", 2, r"unknown plugin 'emaa'"),
    Case("plugins/new-bad-name", "plugins new 1abc --dir {tmp}", 2, r"NAME must be an ASCII Python identifier"),
    Case("config/bad-set", "config show --set nonsense", 2, r"--set 'nonsense': expected section\.key=value"),
    Case("data/build-missing-out", "data build {tmp}", 2, r"source and --out are required"),
    # --- settings checked at configuration time, before anything is created (a range, not only a type)
    Case("train/negative-seed", "train --set core.seed=-1", 2, r"core\.seed must be in \[0, 4294967296\), got -1"),
    Case("train/beta-over-one", "train --set core.beta1=5", 2, r"core\.beta1 must be in \[0, 1\), got 5\.0"),
    Case("train/negative-init-std", "train --set core.tied_embed_init_std=-1", 2,
         r"core\.tied_embed_init_std must be in \[0, 10\), got -1"),
    Case("train/zero-rope-base", "train --set core.rope_base=0", 2,
         r"core\.rope_base must be in \(0, 1000000000\), got 0"),
    Case("train/bos-over-vocab", "train --set core.bos_id=5000 --set core.vocab_size=1024", 2,
         r"core\.bos_id must be in \[0, 1024\), got 5000"),
    Case("train/underscored-number", "train --set core.seed=__1__", 2, r"core\.seed=__1__: expected an integer"),
    Case("train/run-id-is-a-path", "train --set core.out_dir={tmp}/runs --set core.run_id=../escaped", 2,
         r"core\.run_id \(RUN_ID\): expected one folder name \(no path, no control characters\), "
         r"got '\.\./escaped'", tiny=True),
    Case("train/zero-eval-batch", "train --plugins sliding_window --set sliding_window.batch_seqs=0", 2,
         r"sliding_window\.batch_seqs: expected a number >= 1 and <= 1024, got 0"),
    Case("train/zero-ttt-chunk", "train --plugins score_first_ttt --set score_first_ttt.chunk_tokens=0", 2,
         r"score_first_ttt\.chunk_tokens: expected a number >= 1 and <= \d+, got 0"),
    Case("bundle/ema-decay-over-one", "bundle --plugins ema --set ema.decay=5 -o {tmp}/t.py", 2,
         r"ema\.decay: expected a number >= 0\.0 and <= 1\.0, got 5\.0"),
    Case("config/garbage-rank", "config show", 2, r"RANK='abc': expected an integer >= 0",
         env={"RANK": "abc"}),
    # --- structures inside files a command reads (right JSON, wrong shapes), artifacts edited by hand
    Case("eval/config-section-not-an-object", "eval {tmp}/done", 2,
         r"done/config\.json: config\.core is str, expected a section object",
         setup=("finished_run", "core_is_a_string")),
    Case("eval/scale-of-the-wrong-size", "eval {tmp}/done", 2,
         r"done/final_model\.ptz: tensor '[\w.]+': .*invalid for input of size 3", setup=("finished_run", "bad_scale")),
    Case("eval/non-finite-weights", "eval {tmp}/done", 1, r"final_model\.ptz: the artifact evaluates to val_loss nan",
         setup=("finished_run", "nan_weights")),
    Case("record/metrics-wrong-type", "record {tmp}/done --name 2026-01-01_X --author A --github-id a "
         "--out {tmp}/rec", 2, r"metrics\.json: val_bpb is 'abc', expected a positive number",
         setup=("finished_run", "string_metrics")),
    Case("record/artifact-missing", "record {tmp}/done --name 2026-01-01_X --author A --github-id a "
         "--out {tmp}/rec", 2, r"final_model\.ptz: missing, but metrics\.json counts [\d,]+ model bytes",
         setup=("finished_run", "no_artifact")),
    Case("bundle/out-under-a-file", "bundle --plugins ema -o {tmp}/afile/t.py", 2,
         r"afile: is a file, where a folder is needed", setup=("a_file",)),
    Case("plugins/new-builtin-name", "plugins new ema --dir {tmp}/pl", 2, r"a built-in plugin has that name"),
    Case("data/build-over-a-dataset", "data build {tmp}/text --vocab 512 --out {tmp}/ds", 2,
         r"ds holds a dataset already; pass --force", setup=("text_and_dataset",)),
    Case("data/jsonl-bad-utf8-line", "data build {tmp}/bad.jsonl --vocab 512 --out {tmp}/ds", 2,
         r"bad\.jsonl:3: not valid UTF-8", setup=("bad_jsonl",)),
    Case("validate/nan-sota", "validate {tmp}/done --sota nan", 2, r"--sota 'nan': expected a positive finite",
         setup=("finished_run",)),
    # --- session 28 (data build, seventh pass): text a tokenizer cannot take is refused naming the file and line
    # (a lone surrogate was an internal error / pybind11 cast error; zero-width-only text a sentencepiece INTERNAL
    # check); UTF-16 without a byte-order mark is refused, never dropped as binary; inputs and outputs of the wrong
    # kind (dangling --out link, a FIFO as --tokenizer or source, --out under a file) are refused before building
    Case("data/jsonl-lone-surrogate-in-a-val-document", "data build {tmp}/surr_val.jsonl --vocab 300 --out {tmp}/ds",
         2, r'surr_val\.jsonl:1: "text" is not encodable as UTF-8 \(unpaired surrogate', setup=("surrogate_jsonl",)),
    Case("data/jsonl-lone-surrogate-in-a-train-document", "data build {tmp}/surr_train.jsonl --vocab 300 --out "
         "{tmp}/ds", 2, r'surr_train\.jsonl:41: "text" is not encodable as UTF-8 \(unpaired surrogate',
         setup=("surrogate_jsonl",)),
    Case("data/utf16-without-a-byte-order-mark", "data build {tmp}/u16 --vocab 300 --out {tmp}/ds", 2,
         r"u16/a\.txt: looks like UTF-16 LE text without a byte-order mark", setup=("utf16_no_bom",)),
    Case("data/utf16-mark-on-a-broken-file", "data build {tmp}/u16bad --vocab 300 --out {tmp}/ds", 2,
         r"u16bad/a\.txt: starts with a UTF-16 byte-order mark but is not UTF-16 text", setup=("utf16_broken",)),
    Case("data/only-zero-width-characters", "data build {tmp}/zw.jsonl --vocab 300 --out {tmp}/ds", 2,
         r"zw\.jsonl: no visible characters to train the tokenizer", setup=("zero_width_jsonl",)),
    Case("data/one-huge-document", "data build {tmp}/huge --vocab 300 --out {tmp}/ds", 2,
         r"1 documents cannot give 1 val documents .*a text file over 1 MB is split at blank lines",
         setup=("huge_line",)),
    Case("data/out-a-dangling-symlink", "data build {tmp}/text --vocab 300 --out {tmp}/dangl", 2,
         r"output .*dangl is a symlink to .*nowhere, which does not exist", setup=("text_and_dataset", "dangling")),
    Case("data/out-under-a-file", "data build {tmp}/text --vocab 300 --out {tmp}/afile/ds", 2,
         r"output .*afile/ds: .*afile is not a directory", setup=("text_and_dataset", "a_file")),
    Case("data/tokenizer-a-fifo", "data build {tmp}/text --vocab 300 --out {tmp}/new --tokenizer {tmp}/tok.model", 2,
         r"tokenizer .*tok\.model: not a regular file", setup=("text_and_dataset", "fifo_tokenizer")),
    Case("data/source-a-fifo", "data build {tmp}/tok.model --vocab 300 --out {tmp}/new", 2,
         r"source .*tok\.model is not a regular file or a directory", setup=("fifo_tokenizer",)),
]


# ----- setups: make the files a case needs under tmp (tiny run, data, odd files)

def _finished_run(tmp: Path, ctx: dict) -> None:
    shutil.copytree(ctx["run"], tmp / "done")


def _truncated_run(tmp: Path, ctx: dict) -> None:
    shutil.copytree(ctx["run"], tmp / "truncated")
    art = tmp / "truncated" / "final_model.ptz"
    art.write_bytes(art.read_bytes()[: art.stat().st_size // 2])


def _nan_plugin(tmp: Path, ctx: dict) -> None:
    (tmp / "nan_plugin.py").write_text(NAN_PLUGIN)


def _big_ids(tmp: Path, ctx: dict) -> None:
    from core.data import read_shard
    from dataprep.build import write_shard

    shutil.copytree(ctx["data"], tmp / "bigids")
    val = sorted((tmp / "bigids").glob("fineweb_val_*.bin"))[0]
    tokens = read_shard(val).numpy().astype(np.int64)
    tokens[5] = 333
    write_shard(val, tokens)


def _a_file(tmp: Path, ctx: dict) -> None:
    (tmp / "afile").write_text("not a folder\n")


def _a_dir(tmp: Path, ctx: dict) -> None:
    (tmp / "adir").mkdir()


def _bad_toml(tmp: Path, ctx: dict) -> None:
    (tmp / "bad.toml").write_text("[core\nnum_layers = 3\n")


def _double_log(tmp: Path, ctx: dict) -> None:
    log = tmp / "done" / "train.log"
    log.write_text(log.read_text() * 2)


def _nan_metrics(tmp: Path, ctx: dict) -> None:
    m = tmp / "done" / "metrics.json"
    m.write_text(m.read_text().replace('"val_bpb": ', '"val_bpb": NaN, "was": ', 1))


def _binary_log(tmp: Path, ctx: dict) -> None:
    (tmp / "done" / "train.log").write_bytes(b"\xff\xfe\x00garbage")


def _interrupted_status(tmp: Path, ctx: dict) -> None:
    (tmp / "done" / "status.json").write_text('{"status": "interrupted"}\n')


def _core_is_a_string(tmp: Path, ctx: dict) -> None:
    cfg = tmp / "done" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["config"]["core"] = "x"
    cfg.write_text(json.dumps(doc))


def _edit_artifact(tmp: Path, edit) -> None:
    from core.export import encode_artifact
    from plugins.lib.codecs import all_decoders
    from plugins.lib.decoders import read_artifact

    art = tmp / "done" / "final_model.ptz"
    qstate, header = read_artifact(art)
    edit(qstate)
    art.write_bytes(encode_artifact(qstate, all_decoders()[header["codec"]], header.get("quantizer", "int8")))


def _bad_scale(tmp: Path, ctx: dict) -> None:
    import torch

    def edit(qstate):
        q = next(q for q in qstate.values() if q.data.ndim == 2)  # an int8 row-scaled record, 3 scales for N rows
        q.scheme, q.data, q.scale = "int8_per_row", q.data.to(torch.int8), torch.ones(3)
    _edit_artifact(tmp, edit)


def _nan_weights(tmp: Path, ctx: dict) -> None:
    import torch

    def edit(qstate):
        for q in qstate.values():
            if q.scheme == "passthrough" and q.data.is_floating_point():
                q.data = torch.full_like(q.data, float("nan"))
            elif q.scale is not None and q.scale.is_floating_point():
                q.scale = torch.full_like(q.scale, float("inf"))
    _edit_artifact(tmp, edit)


def _string_metrics(tmp: Path, ctx: dict) -> None:
    m = tmp / "done" / "metrics.json"
    doc = json.loads(m.read_text())
    doc["val_bpb"] = "abc"
    m.write_text(json.dumps(doc))


def _no_artifact(tmp: Path, ctx: dict) -> None:
    (tmp / "done" / "final_model.ptz").unlink()


def _text_and_dataset(tmp: Path, ctx: dict) -> None:
    (tmp / "text").mkdir()
    (tmp / "text" / "a.txt").write_text("some text\n" * 50)
    shutil.copytree(ctx["data"], tmp / "ds")
    (tmp / "ds" / "dataset.json").write_text("{}\n")


def _short_train(tmp: Path, ctx: dict) -> None:
    from dataprep.build import write_shard

    shutil.copytree(ctx["data"], tmp / "shorttrain")
    for f in (tmp / "shorttrain").glob("fineweb_train_*.bin"):
        f.unlink()
    write_shard(tmp / "shorttrain" / "fineweb_train_000000.bin", np.arange(10, dtype=np.int64))


def _other_tokenizer(tmp: Path, ctx: dict) -> None:
    model = next((Path(ctx["data"]) / "tokenizer").glob("*.model"))
    (tmp / "other.model").write_bytes(model.read_bytes() + b"\0")  # another file than the one the shards were cut by


def _string_conflicts_plugin(tmp: Path, ctx: dict) -> None:
    plugin = NAN_PLUGIN.replace("test_settings = {}", 'test_settings = {}\n    conflicts = "swa"')
    (tmp / "strconf.py").write_text(plugin)


def _unknown_plugin_config(tmp: Path, ctx: dict) -> None:
    cfg = tmp / "done" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["config"]["plugins"] = ["zzz"]
    cfg.write_text(json.dumps(doc))


def _text_in_dataset(tmp: Path, ctx: dict) -> None:
    (tmp / "ds" / "text").mkdir(parents=True)
    (tmp / "ds" / "text" / "a.txt").write_text("some text\n" * 50)


def _finished_run_named(tmp: Path, ctx: dict) -> None:
    shutil.copytree(ctx["run"], tmp / "2026-12-05_Run")


def _string_seed(tmp: Path, ctx: dict) -> None:
    cfg = tmp / "done" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["config"]["core"]["seed"] = "abc"
    cfg.write_text(json.dumps(doc))


def _exiting_plugin(tmp: Path, ctx: dict) -> None:
    (tmp / "exits.py").write_text("import sys\nsys.exit(3)\n")


def _latin_text(tmp: Path, ctx: dict) -> None:
    (tmp / "latin").mkdir()
    (tmp / "latin" / "a.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 20)


def _swa_section(tmp: Path, ctx: dict) -> None:
    (tmp / "swa.toml").write_text("[swa]\nbogus = 0.5\n")  # no plugins key: the section's plugin is not enabled


def _core_plugin(tmp: Path, ctx: dict) -> None:
    (tmp / "core_plugin.py").write_text(NAN_PLUGIN.replace('name = "nan_init"', 'name = "core"'))


def _dataset_in_a_folder(tmp: Path, ctx: dict) -> None:
    shutil.copytree(ctx["data"], tmp / "ws" / "data")


def _fifo_log(tmp: Path, ctx: dict) -> None:
    (tmp / "done" / "train.log").unlink()
    os.mkfifo(tmp / "done" / "train.log")


def _zero_config(tmp: Path, ctx: dict) -> None:
    (tmp / "done" / "config.json").unlink()
    (tmp / "done" / "config.json").symlink_to("/dev/zero")


def _recipe_named_requirements(tmp: Path, ctx: dict) -> None:
    (tmp / "requirements.txt").write_text('plugins = ["ema"]\n')


def _bench_folder(tmp: Path, ctx: dict) -> None:
    shutil.copytree(ctx["data"], tmp / "bo" / "data" / "ds")
    (tmp / "bo" / ".pgolf-bench").write_text("")
    (tmp / "bo" / "record.json").write_text("[1]")


def _bad_jsonl(tmp: Path, ctx: dict) -> None:
    (tmp / "bad.jsonl").write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "\xff\xfe"}\n')


SETUPS = {"finished_run": _finished_run, "truncated_run": _truncated_run, "nan_plugin": _nan_plugin,
          "big_ids": _big_ids, "a_file": _a_file, "a_dir": _a_dir, "bad_toml": _bad_toml,
          "double_log": _double_log, "nan_metrics": _nan_metrics, "binary_log": _binary_log,
          "interrupted_status": _interrupted_status, "core_is_a_string": _core_is_a_string, "bad_scale": _bad_scale,
          "nan_weights": _nan_weights, "string_metrics": _string_metrics, "no_artifact": _no_artifact,
          "text_and_dataset": _text_and_dataset, "bad_jsonl": _bad_jsonl, "short_train": _short_train,
          "swa_section": _swa_section, "core_plugin": _core_plugin, "other_tokenizer": _other_tokenizer,
          "exiting_plugin": _exiting_plugin, "latin_text": _latin_text,
          "string_conflicts_plugin": _string_conflicts_plugin, "finished_run_named": _finished_run_named,
          "string_seed": _string_seed, "text_in_dataset": _text_in_dataset,
          "unknown_plugin_config": _unknown_plugin_config, "dataset_in_a_folder": _dataset_in_a_folder,
          "bench_folder": _bench_folder, "recipe_named_requirements": _recipe_named_requirements,
          "fifo_log": _fifo_log, "zero_config": _zero_config}


def _bigint_recipe(tmp: Path, ctx: dict) -> None:
    (tmp / "bigint.toml").write_text("[core]\nmatrix_lr = 1" + "0" * 400 + "\n")


def _bigint_plugin_recipe(tmp: Path, ctx: dict) -> None:
    (tmp / "bigtable.toml").write_text('plugins = ["bigram_hash"]\n[bigram_hash]\nbuckets = 1' + "0" * 400 + "\n")


def _bigint_config_json(tmp: Path, ctx: dict) -> None:
    path = tmp / "done" / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["core"]["matrix_lr"] = 10**400
    path.write_text(json.dumps(doc))


def _arabic_digit_recipe(tmp: Path, ctx: dict) -> None:
    (tmp / "arabic.toml").write_text("[core]\nnum_layers = '\u0663'\n", encoding="utf-8")


SETUPS.update(bigint_recipe=_bigint_recipe, bigint_plugin_recipe=_bigint_plugin_recipe,
              bigint_config_json=_bigint_config_json, arabic_digit_recipe=_arabic_digit_recipe)


def _surrogate_jsonl(tmp: Path, ctx: dict) -> None:
    good = "".join(json.dumps({"text": f"document {i} " + "some words here " * 20}) + "\n" for i in range(40))
    bad = '{"text": "bad \\ud800 surrogate"}\n'  # the JSON escape, as a file holds it
    (tmp / "surr_val.jsonl").write_text(bad + good)
    (tmp / "surr_train.jsonl").write_text(good + bad)


def _utf16_no_bom(tmp: Path, ctx: dict) -> None:
    (tmp / "u16").mkdir()
    (tmp / "u16" / "a.txt").write_bytes(("plain words in utf-16 " * 50).encode("utf-16-le"))
    (tmp / "u16" / "b.txt").write_text("plain words in utf-8 " * 50)


def _utf16_broken(tmp: Path, ctx: dict) -> None:
    (tmp / "u16bad").mkdir()
    (tmp / "u16bad" / "a.txt").write_bytes(b"\xff\xfe" + "words ".encode("utf-16-le") + b"\x00\xd8x\x00")
    (tmp / "u16bad" / "b.txt").write_text("plain words in utf-8 " * 50)


def _zero_width_jsonl(tmp: Path, ctx: dict) -> None:
    (tmp / "zw.jsonl").write_text("".join(json.dumps({"text": "\u200b\u200c\x01"}) + "\n" for _ in range(30)))


def _huge_line(tmp: Path, ctx: dict) -> None:
    (tmp / "huge").mkdir()
    (tmp / "huge" / "one.txt").write_text("word " * 220_000)  # > 1 MB, no blank line: one document


def _dangling(tmp: Path, ctx: dict) -> None:
    (tmp / "dangl").symlink_to(tmp / "nowhere")


def _fifo_tokenizer(tmp: Path, ctx: dict) -> None:
    os.mkfifo(tmp / "tok.model")


SETUPS.update(surrogate_jsonl=_surrogate_jsonl, utf16_no_bom=_utf16_no_bom, utf16_broken=_utf16_broken,
              zero_width_jsonl=_zero_width_jsonl, huge_line=_huge_line, dangling=_dangling,
              fifo_tokenizer=_fifo_tokenizer)


# ----- simulated system failures

def _disk_full(monkeypatch) -> None:
    import core.train

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(core.train, "write_atomic", full)


def _ctrl_c(monkeypatch) -> None:
    import core.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.train, "timed_loop", interrupted)


def _ctrl_c_in_final_eval(monkeypatch) -> None:
    import core.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.train, "final_eval", interrupted)


PATCHES = {"disk_full": _disk_full, "ctrl_c": _ctrl_c, "ctrl_c_in_final_eval": _ctrl_c_in_final_eval}


def _no_memory(monkeypatch) -> None:
    import plugins.bigram_hash

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 800000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(plugins.bigram_hash.BigramHashEmbedding, "__init__", no_memory)


PATCHES["no_memory"] = _no_memory


# ----- checks of what a failed command left

def _status(run_dir: Path) -> str:
    return json.loads((run_dir / "status.json").read_text())["status"]


def _diverged_run(tmp: Path) -> None:
    d = tmp / "runs" / "nan"
    assert _status(d) == "diverged"
    assert not (d / "final_model.ptz").exists() and not (d / "metrics.json").exists()


def _failed_run(tmp: Path) -> None:
    d = tmp / "runs" / "full"
    assert _status(d) == "failed" and not (d / "metrics.json").exists()


def _interrupted_run(tmp: Path) -> None:
    d = tmp / "runs" / "cc"
    assert _status(d) == "interrupted" and "run_status:interrupted" in (d / "train.log").read_text()


def _interrupted_after_export(tmp: Path) -> None:
    d = tmp / "runs" / "cc"
    assert _status(d) == "interrupted" and (d / "final_model.ptz").is_file()
    assert "final evaluation was not" in json.loads((d / "status.json").read_text())["message"]


CHECKS = {"diverged_run": _diverged_run, "failed_run": _failed_run, "interrupted_run": _interrupted_run,
          "interrupted_after_export": _interrupted_after_export}


# ----- the harness

def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_data, tiny_core, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catalogue-run")
    argv = ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", str(tiny_data),
            "--set", f"core.out_dir={out}", "--set", "core.run_id=done", "--set", "core.iterations=4"]
    assert main(argv) == 0
    return out / "done"


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input(case: Case, tmp_path, finished_run, tiny_data, tiny_core, capsys, monkeypatch):
    ctx = {"run": finished_run, "data": tiny_data}
    for name in case.setup:
        SETUPS[name](tmp_path, ctx)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    if case.patch:
        PATCHES[case.patch](monkeypatch)
    argv = case.argv.format(tmp=tmp_path, data=tiny_data).split()
    if case.tiny:
        data = [] if "--data" in argv else ["--data", str(tiny_data)]
        argv[1:1] = [a for s in tiny_core for a in ("--set", s)] + data  # the case's own --set win
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == case.code, (code, err)
    errors = [line for line in err if line.startswith("pgolf")]
    assert len(errors) == 1, err
    assert re.search(case.error, errors[0]), errors[0]
    assert "Traceback" not in "\n".join(err)
    after = snapshot(tmp_path)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed or lost: {changed}"
    assert not [p for p in after if ".tmp" in Path(p).name], after
    if case.check:
        CHECKS[case.check](tmp_path)


def _no_run_dir(tmp: Path) -> None:
    assert not (tmp / "runs").exists(), "a run directory was made before the configuration was checked"


CHECKS["no_run_dir"] = _no_run_dir


def test_catalogue_covers_every_command():
    commands = {c.id.split("/")[0] for c in CATALOGUE}
    assert {"train", "eval", "bundle", "record", "validate", "size", "plugins", "config", "data",
            "bench"} <= commands
    assert len({c.id for c in CATALOGUE}) == len(CATALOGUE)


# ----- pgolf validate on a broken run directory: exit 1, the failing rule's line names the file and the fault
VALIDATE_CASES = [
    ("validate/nan-score", "nan_metrics", r"RUN\.FINITE\s+ERROR FAIL\s+metrics\.json: not valid JSON \(non-finite"),
    ("validate/truncated-artifact", "truncate_done", r"RUN\.ARTIFACT\s+ERROR FAIL\s+final_model\.ptz: payload is"),
    ("validate/interrupted-run", "interrupted_status", r"RUN\.STATUS\s+ERROR FAIL\s+status\.json: the run is "
                                                       r"'interrupted'"),
    ("validate/two-runs-in-one-log", "double_log", r"RUN\.STATUS\s+ERROR FAIL\s+train\.log: holds 2 runs"),
    ("validate/unreadable-log", "binary_log", r"RUN\.STATUS\s+ERROR FAIL\s+train\.log: unreadable \('utf-8'"),
    # what `pgolf eval`, `bundle` and `record` refuse, the validator refuses too (it passed before)
    ("validate/config-with-an-unknown-plugin", "unknown_plugin_config", r"FILES\.REQUIRED\s+ERROR FAIL\s+config\.json:"
                                                                     r" the configuration does not resolve: unknown"),
    ("validate/config-that-does-not-resolve", "string_seed", r"FILES\.REQUIRED\s+ERROR FAIL\s+config\.json: the "
                                                           r"configuration does not resolve"),
]


def _truncate_done(tmp: Path, ctx: dict) -> None:
    art = tmp / "done" / "final_model.ptz"
    art.write_bytes(art.read_bytes()[:-100])


SETUPS["truncate_done"] = _truncate_done


@pytest.mark.parametrize("case", VALIDATE_CASES, ids=[c[0] for c in VALIDATE_CASES])
def test_validate_fails_a_broken_run_dir(case, tmp_path, finished_run, capsys):
    _, setup, pattern = case
    _finished_run(tmp_path, {"run": finished_run})
    SETUPS[setup](tmp_path, {})
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "done")]) == 1
    assert re.search(pattern, capsys.readouterr().out)
    assert snapshot(tmp_path) == before


def test_validate_passes_the_finished_run(tmp_path, finished_run, capsys):
    _finished_run(tmp_path, {"run": finished_run})
    assert main(["validate", str(tmp_path / "done")]) == 0
    assert re.search(r"RUN\.ARTIFACT\s+ERROR PASS\s+artifact whole", capsys.readouterr().out)


def test_an_unexpected_exception_is_one_line_not_a_traceback(monkeypatch, capsys):
    """The last line of defence for an input no check names yet: any exception a command raises ends as one
    `pgolf: internal error` line with its type and where it was raised (exit 70), never a traceback;
    PGOLF_TRACEBACK=1 re-raises it for a bug report."""
    import pgolf.cli as cli

    def broken(args):
        return [][1]

    parser = cli.build_parser

    def with_broken_config():
        p = parser()
        p._subparsers._group_actions[0].choices["config"].set_defaults(func=broken)
        return p

    monkeypatch.setattr(cli, "build_parser", with_broken_config)
    for off in ("", "0", "false", "OFF"):  # `PGOLF_TRACEBACK=0` meant off (any non-empty value turned it on)
        monkeypatch.setenv("PGOLF_TRACEBACK", off)
        capsys.readouterr()
        assert main(["config", "show"]) == 70
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and re.fullmatch(r"pgolf: internal error: IndexError: list index out of range \(at "
                                              r"test_bad_inputs\.py:\d+; PGOLF_TRACEBACK=1 prints the traceback\)",
                                              err[0])
    monkeypatch.setenv("PGOLF_TRACEBACK", "1")
    with pytest.raises(IndexError):
        main(["config", "show"])


def test_a_second_failed_force_run_keeps_the_run_the_first_replaced(tmp_path, finished_run, tiny_data, tiny_core,
                                                                     capsys):
    """Two failing `train --force` runs in a row: the first moves the finished run to `.replaced/` and fails; the
    second used to empty `.replaced/` before moving the failed run's files in, losing the finished run while
    saying it was kept. The failed attempt's files go; the run it replaced stays."""
    shutil.copytree(finished_run, tmp_path / "done")
    (tmp_path / "nan_plugin.py").write_text(NAN_PLUGIN)
    original = (tmp_path / "done" / "final_model.ptz").read_bytes()
    argv = ["train", *[a for s in tiny_core for a in ("--set", s)], "--data", str(tiny_data), "--set",
            f"core.out_dir={tmp_path}", "--set", "core.run_id=done", "--force", "--plugin-file",
            str(tmp_path / "nan_plugin.py"), "--plugins", "nan_init"]
    for _ in range(2):
        assert main(argv) == 1  # diverged
        assert (tmp_path / "done" / ".replaced" / "final_model.ptz").read_bytes() == original
        assert json.loads((tmp_path / "done" / ".replaced" / "metrics.json").read_text())["val_bpb"] > 0
    assert main(argv[:-4]) == 0  # a run that finishes: the replaced one goes
    assert not (tmp_path / "done" / ".replaced").exists()


def test_doc_mask_with_a_bos_id_the_data_never_holds_is_refused(tmp_path, finished_run, tiny_data, capsys):
    """`core.eval_doc_mask` with a BOS id absent from the validation data masked nothing and scored as if off (exit
    0); `eval` and `train` refuse it now, naming the setting and the shard."""
    from core.data import HEADER_BYTES, shard_files

    val = np.fromfile(shard_files(tiny_data, "val")[0], dtype="<u2", offset=HEADER_BYTES)
    absent = next(i for i in range(320) if not (val == i).any())
    shutil.copytree(finished_run, tmp_path / "done")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "done"), "--set", "core.eval_doc_mask=true", "--set",
                 f"core.bos_id={absent}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and re.search(rf"core\.bos_id={absent} never occurs in .*fineweb_val_000000\.bin", err[0])
