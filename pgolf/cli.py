"""`pgolf` command line: train, eval, bundle, validate, size, bench, demo, plugins, config, data."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import json
import keyword
import math
import os
import re
import shutil
import signal
import sys
import textwrap
import threading
import time
import traceback
import uuid
from pathlib import Path

from core.config import Config, ConfigError, resolve
from core.registry import PluginError, Registry
from plugins.lib.loading import describe, load_registry
from validator.untrusted_json import config_recipe

# The demo is bounded by steps, not by the wall clock (max_wallclock_seconds=0, deterministic): its result
# is the same on a busy machine, only slower.
DEMO_SETTINGS = [
    "core.num_layers=4", "core.model_dim=128", "core.num_heads=4", "core.num_kv_heads=2",
    "core.train_seq_len=128", "core.train_batch_tokens=4096", "core.grad_accum_steps=1",
    "core.iterations=200", "core.warmdown_iters=70", "core.warmup_steps=0", "core.val_loss_every=100",
    "core.train_log_every=10", "core.val_batch_size=16384", "core.val_max_tokens=32768",
    "core.max_wallclock_seconds=0", "core.muon_momentum_warmup_steps=70", "core.device=cpu",
    "core.deterministic=true",
]
# Settings that name a file or folder: stored absolute and resolved in config.json, so a run directory works
# from any working directory (pgolf eval / validate --run / bundle).
PATH_KEYS = ("data_path", "tokenizer_path", "out_dir")
RUN_FILES = ("config.json", "events.jsonl", "train.log", "metrics.json", "final_model.ptz", "status.json",
             "loss_curve.png")


class InterruptedRun(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def at_least(low: float, kind: type = int, high: float = math.inf):
    """An argparse type: a finite `kind` number in [low, high] (a bad value is argparse's one-line error naming the
    flag)."""
    want = f"{kind.__name__} >= {low}" + (f" and <= {high}" if high < math.inf else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not (low <= value <= high and math.isfinite(value)):  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value
    parse.__name__ = want
    return parse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="recipe TOML (plugins list + [core] and [plugin] tables)")
    p.add_argument("--plugins", help="comma-separated plugin list (overrides the recipe and PGOLF_PLUGINS)")
    p.add_argument("--plugin-file", action="append", default=[], metavar="FILE.py",
                   help="load plugins from a Python file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="sets",
                   help="override a setting, e.g. --set core.num_layers=11 --set ema.decay=0.99")
    p.add_argument("--data", help="data directory with fineweb_{train,val}_*.bin shards (sets core.data_path)")


def load_config(args: argparse.Namespace, extra_sets: list[str] | None = None) -> tuple[Config, Registry]:
    registry = load_registry(args.plugin_file)
    sets = list(extra_sets or []) + list(args.sets)
    if getattr(args, "data", None):
        data = Path(args.data).expanduser()
        if data.exists() and not data.is_dir():
            raise ConfigError([f"--data {args.data}: not a directory (expected a folder of fineweb_*.bin shards)"])
        sets.append(f"core.data_path={data.resolve()}")
    if getattr(args, "deterministic", False):
        sets.append("core.deterministic=true")
    plugins = None if args.plugins is None else split_plugins(args.plugins)
    cfg = resolve(
        plugin_config_classes=registry.config_classes(), recipe=args.recipe, env=os.environ, sets=sets,
        plugins=plugins, check_plugins=registry.check, check_settings=registry.check_settings,
    )
    return absolute_paths(cfg), registry


def absolute_paths(cfg: Config) -> Config:
    """Make the path settings absolute (resolved against the working directory the command runs in)."""
    for key in PATH_KEYS:
        value = getattr(cfg.core, key)
        if value:
            setattr(cfg.core, key, str(Path(value).expanduser().resolve()))
    return cfg


def with_default_data(cfg: Config) -> Config:
    """Fill an empty `core.data_path` with the embedded default corpus (built and cached on first use)."""
    if not cfg.core.data_path:
        from dataprep.build import default_data_dir, ensure_default_data

        if not (default_data_dir(cfg.core.vocab_size) / "dataset.json").is_file():
            print(f"building the embedded default corpus (first use, about 10 s; cached in "
                  f"{default_data_dir(cfg.core.vocab_size)})", file=sys.stderr, flush=True)
        cfg.core.data_path = str(ensure_default_data(vocab_size=cfg.core.vocab_size).resolve())  # a relative
        # PGOLF_CACHE resolved here: config.json must name the data from any working directory
        cfg.sources["core.data_path"] = "embedded default corpus"
    return cfg


def strip_nproc(argv: list[str]) -> list[str]:
    """The command line without its --nproc N / --nproc=N (the launched ranks must not relaunch)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


DEMO_OUT = "runs"  # `pgolf demo --out`'s default
REPLACED = ".replaced"  # a run replaced with --force, kept until the new run finishes
LOCK = ".lock"  # the pid of the process training in a run directory (rank 0), removed when it ends


def preflight(cfg: Config, world: int | None = None) -> None:
    """What a run would find wrong in its first seconds, found before its run directory is touched (a `--force` run
    must not cost the old run for a typo): the data folder and its shards, each split long enough for one sequence,
    the tokenizer file, the batch split over ranks and micro-steps, this process's rank."""
    from core.data import HEADER_BYTES, DataError, shard_files
    from core.run import pick_device

    core = cfg.core
    launched, world, rank = world, world or env_int("WORLD_SIZE", 1, low=1), env_int("RANK", 0, low=0)
    if rank >= world:
        raise ValueError(f"RANK={rank} with WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    if not launched and world > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise ValueError(f"WORLD_SIZE={world} without MASTER_ADDR/MASTER_PORT: start the ranks with --nproc "
                         f"{world} or torchrun")
    device = pick_device(core.device, 0)  # a CUDA setting where there is none: refused before anything moves
    for split, seq in (("train", core.train_seq_len), ("val", core.eval_seq_len or core.train_seq_len)):
        files = shard_files(core.data_path, split)
        tokens = sum(max(f.stat().st_size - HEADER_BYTES, 0) // 2 for f in files)
        if tokens < seq + 1:
            raise DataError(f"{split} split in {files[0].parent} is too short: {tokens} tokens in {len(files)} "
                            f"shard(s), need at least {seq + 1} for seq_len {seq}")
    bos_in_data(core)
    if core.tokenizer_path and not Path(core.tokenizer_path).is_file():
        raise DataError(f"tokenizer {core.tokenizer_path} is not a file (TOKENIZER_PATH / core.tokenizer_path)")
    dataset_agrees(Path(core.data_path), core)
    accum = core.grad_accum_steps or max(1, 8 // world)
    local = core.train_batch_tokens // (world * accum)
    if "auto_micro_batch" not in cfg.plugins and (local <= 0 or local % core.train_seq_len):
        raise ValueError(f"core.train_batch_tokens {core.train_batch_tokens} / (world_size {world} * grad_accum "
                         f"{accum}) = {local} per rank: not a multiple of seq_len {core.train_seq_len}")
    model_fits(core, device, local)


def model_fits(core, device, micro_tokens: int) -> None:
    """Refuse a run whose least memory exceeds the device's: fp32 weights, gradients and two optimizer moments
    (16 bytes a parameter of the core's matrices and embeddings) and one bf16 residual stream per layer of a
    micro-step's tokens. Each size is in range alone; their product was not checked (the kernel killed such a run,
    its status left "running"). A lower bound: a run refused here cannot fit; one allowed may still not."""
    import torch

    d, layers = core.model_dim, core.num_layers
    kv = d // max(core.num_heads, 1) * core.num_kv_heads
    params = core.vocab_size * d * (1 if core.tie_embeddings else 2) + layers * (
        2 * d * d + 2 * d * kv + 2 * d * (core.mlp_hidden or core.mlp_mult * d))
    need = 16 * params + 2 * micro_tokens * d * layers
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ValueError(f"the run needs at least {need / 2**30:,.1f} GiB ({params:,} parameters at 16 bytes for "
                         f"weights, gradients and optimizer state, {micro_tokens:,} tokens a micro-step); "
                         f"{device} has {have / 2**30:,.1f} GiB (core.model_dim / num_layers / vocab_size / "
                         "mlp_mult / train_batch_tokens)")


def bos_in_data(core) -> None:
    """With core.eval_doc_mask, the BOS id must occur in the validation data (else every window is one document and
    the mask changes nothing, silently)."""
    import numpy as np

    from core.data import HEADER_BYTES, DataError, shard_files

    if core.eval_doc_mask:
        first_val = shard_files(core.data_path, "val")[0]
        if not (np.fromfile(first_val, dtype="<u2", offset=HEADER_BYTES) == core.bos_id).any():
            raise DataError(f"core.bos_id={core.bos_id} never occurs in {first_val}: core.eval_doc_mask would mask "
                            "nothing (set the data's BOS id)")


def dataset_agrees(data_dir: Path, core) -> None:
    """A pgolf dataset's dataset.json (`pgolf data build`) against the run: its vocabulary, and the tokenizer the
    run scores with (another tokenizer with the same vocabulary size scores bytes it did not cut: a wrong val_bpb).
    A folder without dataset.json (the challenge's shards) has nothing to compare."""
    from core.data import DataError
    from validator.untrusted_json import JSON_ERRORS, parse_json

    meta_path = data_dir / "dataset.json"
    if not meta_path.is_file():
        return
    try:
        meta = parse_json(meta_path.read_text(encoding="utf-8"))
    except (*JSON_ERRORS, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not a pgolf dataset description ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int) or not isinstance(
            meta.get("tokenizer", ""), str):
        raise DataError(f"{meta_path}: expected an object with an integer vocab_size and a tokenizer path")
    if meta["vocab_size"] != core.vocab_size:
        raise DataError(f"{meta_path}: the shards were built with vocab_size {meta['vocab_size']}, the run has "
                        f"{core.vocab_size} (VOCAB_SIZE / core.vocab_size)")
    built_with = data_dir / meta.get("tokenizer", "")
    if core.tokenizer_path and meta.get("tokenizer") and built_with.is_file() and \
            Path(core.tokenizer_path).read_bytes() != built_with.read_bytes():
        raise DataError(f"tokenizer {core.tokenizer_path} is not the one {data_dir} was built with ({built_with}): "
                        "its scores would count other bytes (TOKENIZER_PATH / core.tokenizer_path)")


def check_output(path: Path, force: bool, flag: str) -> None:
    """An output file, checked before the work that makes it: an existing one needs `force` and must be a regular
    file (a FIFO, a device such as /dev/full, a folder or a link is never replaced); its folder must be writable."""
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists; pass --force to overwrite it ({flag})")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise FileExistsError(f"{path}: exists and is not a regular file ({flag})")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{parent}: is a file, where a folder is needed on this path ({flag} {path})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write under {parent} (a folder this user cannot write)")


def env_int(name: str, default: int, low: int) -> int:
    """An integer environment variable (ASCII digits), at least `low`; a one-line error naming it otherwise."""
    raw = os.environ.get(name, str(default)).strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) < low:
        raise ValueError(f"{name}={raw!r}: expected an integer >= {low}")
    return int(raw)


def check_run_dir(cfg: Config, force: bool) -> None:
    """What `prepare_run_dir` would refuse, checked without touching anything (before `--nproc` starts the ranks)."""
    run_dir = Path(cfg.core.out_dir) / cfg.core.run_id if cfg.core.run_id else None
    if run_dir is not None:
        refuse_if_training(run_dir)
    if run_dir is not None and not force and (old := [f for f in RUN_FILES if (run_dir / f).exists()]):
        raise FileExistsError(f"{run_dir}: holds a run already ({', '.join(old)}); pass --force to replace it or "
                              "choose another RUN_ID / core.run_id")


def refuse_if_training(run_dir: Path) -> None:
    """A one-line FileExistsError while a run trains in `run_dir` (its lock's pid is a live pgolf), --force or not."""
    if (pid := lock_holder(run_dir)) is not None:
        raise FileExistsError(f"{run_dir}: a run is training there now (pid {pid}, {LOCK}); wait for it or stop it, "
                              "or choose another RUN_ID / core.run_id")


def lock_holder(run_dir: Path) -> int | None:
    """The pid in `run_dir`'s lock if that process is alive and is pgolf (a lock left by a killed run is stale)."""
    try:
        pid = int((run_dir / LOCK).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or pid == os.getpid():  # os.kill(0 or -n) would name process groups
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, another user's
    except (OSError, OverflowError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return pid  # no /proc (macOS): alive is taken as held
    return pid if any(Path(a).name.split(".")[0] == "pgolf" for a in argv) else None  # pgolf, -m pgolf.cli


def take_lock(run_dir: Path) -> None:
    """Create `run_dir`'s lock (exclusively: of two runs starting together one gets it), replacing a stale one."""
    for _ in range(2):
        try:
            fd = os.open(run_dir / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            refuse_if_training(run_dir)
            (run_dir / LOCK).unlink(missing_ok=True)  # a killed run's
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise FileExistsError(f"{run_dir / LOCK}: cannot take the run directory's lock (another run starting?)")


def release_lock(run_dir: Path) -> None:
    """Remove `run_dir`'s lock if this process holds it."""
    try:
        if (run_dir / LOCK).read_text(encoding="ascii").split()[:1] == [str(os.getpid())]:
            (run_dir / LOCK).unlink()
    except OSError:
        pass


def prepare_run_dir(cfg: Config, force: bool) -> Path:
    """The run directory, checked before anything trains: a finished or started run there is never
    overwritten without `force` (with it, the old run's files move to `.replaced/` in the folder, removed once the
    new run finishes: a log holds one run), and the folder must be creatable and writable (one-line errors naming
    the path)."""
    if not cfg.core.run_id:
        cfg.core.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    rid = cfg.core.run_id  # it names a folder in out_dir, printed in logs and commands
    if rid in (".", "..") or Path(rid).name != rid or not rid.isprintable() or rid.strip() != rid:
        raise ValueError(f"core.run_id (RUN_ID): expected one folder name (no path, no control characters), "
                         f"got {rid!r}")
    run_dir = Path(cfg.core.out_dir) / cfg.core.run_id
    if int(os.environ.get("RANK", "0")) != 0:
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir}: exists and is not a directory (RUN_ID / core.run_id)")
    check_run_dir(cfg, force)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        take_lock(run_dir)  # doubles as the write test
    except FileExistsError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create or write the run directory ({exc.strerror or exc}; "
                      "PGOLF_OUT_DIR / core.out_dir)", str(run_dir)) from None
    old = [f for f in RUN_FILES if (run_dir / f).exists()]
    if old and _kept_replaced_run(run_dir):  # a --force run that failed: the run it replaced stays where it is
        for f in old:
            (run_dir / f).unlink()
    elif old:
        shutil.rmtree(run_dir / REPLACED, ignore_errors=True)
        (run_dir / REPLACED).mkdir()
        for f in old:
            os.replace(run_dir / f, run_dir / REPLACED / f)
    return run_dir


def _kept_replaced_run(run_dir: Path) -> bool:
    """Whether `.replaced/` holds a run that a --force run replaced and did not finish (its status is not
    "finished"): that older run is the one to keep; the failed attempt's files are the ones to go."""
    from validator.untrusted_json import JSON_ERRORS, parse_json

    if not any((run_dir / REPLACED / f).exists() for f in RUN_FILES):
        return False
    try:
        status = parse_json((run_dir / "status.json").read_text(encoding="utf-8")).get("status")
    except (OSError, UnicodeDecodeError, AttributeError, *JSON_ERRORS):
        status = None
    return status != "finished"


def write_status(run_dir: Path, status: str, **fields) -> None:
    """status.json of a run directory: running / finished / interrupted / diverged / failed."""
    from core.run import write_atomic

    try:
        write_atomic(run_dir / "status.json", json.dumps({"status": status, "time": round(time.time(), 3),
                                                          **fields}) + "\n")
        if status != "running":
            with open(run_dir / "train.log", "a", encoding="utf-8") as f:
                print(f"run_status:{status}" + (f" {fields['message']}" if "message" in fields else ""), file=f)
    except OSError:
        pass  # the run's own error (disk full, …) is the one to report


def _sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise InterruptedRun()


def cmd_train(args: argparse.Namespace, extra_sets: list[str] | None = None, after=None) -> int:
    if args.nproc and args.nproc > 1 and "RANK" in os.environ:
        raise ValueError(f"--nproc {args.nproc} with RANK={os.environ['RANK']} already set: this process is a rank "
                         "already (unset RANK/WORLD_SIZE to launch ranks, or drop --nproc)")
    if args.nproc and args.nproc > 1:
        cfg = with_default_data(load_config(args, extra_sets)[0])
        preflight(cfg, world=args.nproc)  # once, before the ranks
        check_run_dir(cfg, getattr(args, "force", False))
        from pgolf.launch import launch

        print(f"launching {args.nproc} ranks: pgolf {' '.join(strip_nproc(sys.argv[1:]))}", flush=True)
        return launch(strip_nproc(sys.argv[1:]), args.nproc)
    cfg, registry = load_config(args, extra_sets)
    preflight(with_default_data(cfg))
    run_dir = prepare_run_dir(cfg, getattr(args, "force", False))
    from core.train import TrainingDiverged, run_training
    from pgolf.progress import Progress
    from submissions.bundle import bundle_size

    try:  # the run directory's lock (rank 0's) goes with this process, however it leaves
        master = int(os.environ.get("RANK", "0")) == 0  # SIGTERM raises InterruptedRun here: `main` installs it
        try:
            if master:
                write_status(run_dir, "running")
            progress = Progress if sys.stderr.isatty() else None
            summary = run_training(cfg, registry, code_size=bundle_size, progress=progress)
        except KeyboardInterrupt as exc:
            how = "SIGTERM" if isinstance(exc, InterruptedRun) else "SIGINT (Ctrl-C)"
            # the run's own: a replaced run's files moved to .replaced/ before this one started
            done = "the artifact was exported (final_model.ptz), its final evaluation was not" if (
                run_dir / "final_model.ptz").is_file() else "no artifact was exported"
            if master:
                write_status(run_dir, "interrupted", message=f"by {how}; {done}")
                print(f"\npgolf: interrupted by {how}: {run_dir} is marked interrupted (status.json); {done}",
                      file=sys.stderr)
            return 130
        except TrainingDiverged as exc:
            if master:
                write_status(run_dir, "diverged", message=str(exc))
            raise
        except BaseException as exc:
            if master:
                write_status(run_dir, "failed", message=" ".join(str(exc).split())[:300])
                if (run_dir / REPLACED).is_dir():
                    print(f"pgolf: the run this one replaced is kept in {run_dir / REPLACED}", file=sys.stderr)
            raise
        if master:
            write_status(run_dir, "finished")
            shutil.rmtree(run_dir / REPLACED, ignore_errors=True)
            total = summary["total_bytes"]
            print(f"val_bpb {summary['val_bpb']:.4f}  artifact {total:,} bytes "
                  f"({'fits' if total <= 16_000_000 else 'OVER'} 16,000,000)")
            from pgolf.plots import write_loss_curve

            print(write_loss_curve(run_dir))
            if after is not None:
                after(cfg, run_dir, summary)
        return 0
    finally:
        release_lock(run_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    print("pgolf demo: a tiny GPT on the embedded default corpus (CPU; 200 steps, about 1.5 minutes on 2 cores; "
          "bounded by steps, so the result does not depend on the machine's load)", flush=True)
    args.nproc = 0
    named = any(s.startswith("core.out_dir=") for s in args.sets)
    if named and args.out is not None:  # one would be ignored
        raise ValueError("--out and --set core.out_dir both name the output folder: give one")
    out = args.out or os.environ.get("PGOLF_OUT_DIR") or DEMO_OUT  # the environment as `train` reads it

    def baseline(cfg: Config, run_dir: Path, summary: dict) -> None:
        from pgolf.baseline import unigram_bpb

        uni = unigram_bpb(cfg)
        print(f"val_bpb {summary['val_bpb']:.4f} vs {uni:.4f} for the corpus's unigram baseline (token frequencies "
              f"of the training split): {'learned' if summary['val_bpb'] < uni else 'NOT below the baseline'}; "
              f"run directory {run_dir}")

    return cmd_train(args, extra_sets=DEMO_SETTINGS + ([] if named else [f"core.out_dir={out}"]), after=baseline)


def recipe_users(folder: Path) -> dict[str, list[str]]:
    """plugin name -> the recipes (file stems) in `folder` whose plugin list names it."""
    from core.config import load_recipe

    users: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.toml")):
        for name in load_recipe(path).get("plugins", []):
            users.setdefault(str(name), []).append(path.stem)
    return users


def plugins_table(registry: Registry, users: dict[str, list[str]]) -> str:
    """Every plugin by family: name, summary, source PRs and the recipes that use it; then every catalogued
    technique with no plugin here, and what covers it or why not."""
    from core.registry import FAMILIES

    width = max((len(n) for n in registry.names()), default=4)
    lines: list[str] = []
    for family in FAMILIES:
        names = [n for n in registry.names() if (registry.plugins[n].family or "other") == family]
        if not names:
            continue
        lines.append(f"{family}:")
        for name in names:
            cls = registry.plugins[name]
            used = f"  recipes: {', '.join(users[name])}" if name in users else ""
            lines.append(f"  {name:<{width}}  {cls.summary}  [{', '.join(cls.sources)}]{used}")
    from pgolf.techniques import load_catalogue, without_plugin

    rest = without_plugin(load_catalogue(), set(registry.names()))
    if rest:
        lines.append("no plugin (plugins/techniques.toml):")
        lines.extend(f"  {line}" for line in rest)
    return "\n".join(lines)


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = load_registry(args.plugin_file)
    if args.action == "list":
        print(plugins_table(registry, recipe_users(Path(__file__).resolve().parent.parent / "recipes")))
        return 0
    if args.action == "show":
        if not args.name:
            raise PluginError("pgolf plugins show NAME: NAME is required")
        errors = registry.check([args.name])
        if errors:
            raise PluginError(errors[0])
        info = describe(registry.plugins[args.name])
        info["origin"] = registry.origins[args.name]
        print(json.dumps(info, indent=2, default=str))
        return 0
    if args.action == "new":
        if not (args.name.isidentifier() and args.name.isascii()) or args.name.startswith("_") or len(
                args.name) > 64 or keyword.iskeyword(args.name):
            raise PluginError(f"pgolf plugins new NAME: NAME must be an ASCII Python identifier of at most 64 "
                              f"characters, no keyword, not starting with _, got {args.name!r}")
        if importlib.util.find_spec(args.name) is not None or args.name in ("core", "plugins", "pgolf"):
            raise PluginError(f"pgolf plugins new {args.name}: an importable module has that name (its test "
                              "imports the skeleton by name, and the file would shadow the module); choose another")
        if args.name in Registry().plugins:  # a plugin file may not shadow a built-in: it would never load
            raise PluginError(f"pgolf plugins new {args.name}: a built-in plugin has that name; choose another")
        from pgolf.scaffold import write_plugin_skeleton

        for path in write_plugin_skeleton(args.name, Path(args.dir), force=args.force):
            print(f"wrote {path}")
        return 0
    raise PluginError(f"unknown action {args.action!r}")


def cmd_config(args: argparse.Namespace) -> int:
    cfg, _ = load_config(args)
    if args.json:
        print(cfg.to_json())
        return 0
    rows = [("plugins", cfg.plugins, cfg.sources.get("plugins", "default"))]
    for section in ["core", *cfg.plugin_configs]:
        values = cfg.section(section)
        for f in dataclasses.fields(values) if values is not None else ():
            key = f"{section}.{f.name}"
            rows.append((key, getattr(values, f.name), cfg.sources.get(key, "default")))
    kw = max(len(k) for k, _, _ in rows)
    vw = min(max(len(repr(v)) for _, v, _ in rows), 40)
    for key, value, source in rows:
        print(f"{key:<{kw}}  {value!r:<{vw}}  {source}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from core.train import process_group, setup
    from pgolf.evaluate import evaluate_artifact, load_run_config

    if args.recipe:  # it would be replaced by the run's own configuration
        raise ValueError(f"eval {args.path} --recipe {args.recipe}: a run is evaluated with its own config.json; "
                         "drop --recipe (--set still overrides a setting)")
    artifact, recipe = load_run_config(Path(args.path).resolve())
    args.recipe = recipe
    cfg, registry = load_config(args)
    cfg = with_default_data(cfg)
    dataset_agrees(Path(cfg.core.data_path), cfg.core)  # the tokenizer scores the bytes its data was cut from
    bos_in_data(cfg.core)
    with process_group(setup(cfg, registry, make_dir=False)) as run:
        result = evaluate_artifact(run, artifact)
    if not (math.isfinite(result.val_loss) and math.isfinite(result.val_bpb)):
        print(f"pgolf: error: {artifact}: the artifact evaluates to val_loss {result.val_loss}, val_bpb "
              f"{result.val_bpb} (non-finite weights or scales: not a result)", file=sys.stderr)
        return 1
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    """Write the self-contained train_gpt.py of a configuration (a run directory's, or a recipe's)."""
    from submissions.bundle import PER_RUN_KEYS, bundle_with_requirements, script_bytes

    if args.path and args.recipe:  # it would be replaced by the run's own configuration
        raise ValueError(f"bundle {args.path} --recipe {args.recipe}: a run is bundled with its own config.json; "
                         "drop --recipe (--set still overrides a setting)")
    inputs = [Path(f) for f in (args.plugin_file or [])] + ([Path(args.recipe)] if args.recipe else [])
    if args.path:
        cfg_path = Path(args.path) / "config.json" if Path(args.path).is_dir() else Path(args.path)
        inputs += [cfg_path] + [cfg_path.parent / f for f in RUN_FILES]  # a run's files: never written over
        try:
            args.recipe = {**config_recipe(cfg_path), "source": str(cfg_path)}
        except ValueError as exc:
            why = str(exc).removeprefix(f"{cfg_path}: ")
            raise ValueError(f"{cfg_path}: expected a pgolf run directory or its config.json ({why})") from None
    cfg, registry = load_config(args)
    per_run = {f"core.{k}" for k in (*PER_RUN_KEYS, "data_path", "tokenizer_path")}
    dropped = (["--data"] if args.data else []) + [k for k in (s.partition("=")[0] for s in args.sets) if k in per_run]
    if dropped:  # the script reads them where it runs (SEED, DATA_PATH, TOKENIZER_PATH …), as every record does
        print(f"pgolf bundle: note: {', '.join(dropped)} not written into the script (per-run settings: the "
              "environment chooses them where it runs)", file=sys.stderr)
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory (expected the script's file name, e.g. "
                                "-o DIR/train_gpt.py)", str(out))
    req_path = out.with_name("requirements.txt")
    for path, flag in [(out, "-o")] + ([(req_path, "--requirements")] if args.requirements else []):
        if path.exists() and any(path.resolve() == p.resolve() for p in inputs if p.exists()):
            raise ValueError(f"{flag} {path}: a file this bundle is made from (the run's, the recipe or a plugin "
                             "file); write the script elsewhere")
    check_output(out, args.force, "-o")
    if args.requirements:
        if out.name == req_path.name:
            raise ValueError(f"-o {out}: the script would be overwritten by its own requirements.txt (--requirements "
                             "writes that name beside it); name the script otherwise")
        check_output(req_path, args.force, "--requirements")
    text, reqs = bundle_with_requirements(cfg, registry, strip=not args.keep_docstrings, profile=args.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = script_bytes(text)
    write_new(out, data, args.force)
    print(f"{out}: {len(data):,} bytes, plugins: {', '.join(cfg.plugins) or '(none)'}")
    if args.requirements:
        write_new(req_path, reqs.encode(), args.force)
        print(f"{req_path}: written")
    print("requirements: " + ", ".join(line for line in reqs.splitlines() if not line.startswith("#")))
    return 0


def write_new(path: Path, data: bytes, force: bool) -> None:
    """`write_atomic`; without `force` never over a file another command made meanwhile (checked before the work,
    it could appear during it): the file is linked into place, and a link does not replace."""
    from core.run import write_atomic

    if force:
        write_atomic(path, data)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_atomic(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path}: made by another command while this one ran; pass --force to overwrite "
                              "it") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_record(args: argparse.Namespace) -> int:
    """Build, validate (the rules `pgolf validate` runs) and write a records folder from finished runs."""
    from submissions.package import (
        TRACK_DIRS,
        build_files,
        check_name,
        check_text,
        errors_of,
        track_of,
        write_records_folder,
    )

    check_name(args.name)
    for flag, value in (("--author", args.author), ("--github-id", args.github_id), ("--blurb", args.blurb)):
        check_text(flag, value or "")
    runs = [Path(p).resolve() for p in args.runs]
    track = args.track or track_of(runs)
    registry = load_registry(args.plugin_file)
    files = build_files(runs, registry, name=args.name, author=args.author,
                        github_id=args.github_id, track=track, blurb=args.blurb or "")
    from pgolf.plots import loss_curve_png

    png = loss_curve_png(runs)
    if png is not None:
        files["loss_curve.png"] = png
        files["README.md"] += "\n## Loss curves\n![train and validation loss per seed](loss_curve.png)\n"
    dest = Path(args.out or TRACK_DIRS[track]) / args.name
    for run in runs:  # --force replaces the destination: never with (or around) a run it is made from
        if run == dest.resolve() or dest.resolve() in run.parents:
            raise ValueError(f"records folder {dest} would replace the run {run} it is made from (--out / --name)")
    findings = write_records_folder(files, dest, force=args.force, extra_rules=validation_rules(args.plugin_file))
    warns = [f for f in findings if f.status == "warn"]
    for f in warns:
        print(f"  warn {f.rule}: {f.message}")
    print(f"{dest}: {len(files)} files, track {track}, validated with pgolf validate's rules "
          f"({len(errors_of(findings))} errors, {len(warns)} warnings)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from validator.cli import run_validate

    return run_validate(args, extra_rules=validation_rules(args.plugin_file))


def validation_rules(plugin_files: list[str] | None = None) -> list:
    """pgolf's run-directory rules (pgolf.run_rules: finite scores, whole artifact, finished run, graph modes
    that really switched on), exactly as `pgolf validate` and `pgolf record` use them; torch-free."""
    from pgolf.run_rules import RULES

    return list(RULES)


def split_plugins(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


BUILD_ONLY = {"source": "SOURCE", "out": "--out", "val_docs": "--val-docs", "plugins": "--plugins",  # `data build`'s
              "plugin_file": "--plugin-file", "tokenizer": "--tokenizer", "max_train_tokens": "--max-train-tokens",
              "force": "--force"}


def cmd_data(args: argparse.Namespace) -> int:
    from dataprep.build import build_dataset, ensure_default_data

    given = [flag for dest, flag in BUILD_ONLY.items() if getattr(args, dest)]
    if args.action == "default":
        if given:  # the embedded corpus is built one way (only --vocab chooses): an option would be ignored
            raise ValueError(f"pgolf data default: {', '.join(given)} only apply to `data build` (default: --vocab)")
        print(ensure_default_data(vocab_size=args.vocab))
        return 0
    if args.plugin_file and not args.plugins:
        raise ValueError("--plugin-file without --plugins: name the plugins whose text transform the data is built "
                         "with (--plugins NAME)")
    if not args.source or not args.out:
        raise ValueError("pgolf data build TEXT_DIR|FILE.jsonl --vocab N --out DIR: source and --out are required")
    transform = None
    if args.plugins:  # e.g. caseops: its text transform, reserved pieces and validation byte sidecar
        from dataprep.build import text_transform_of

        registry = load_registry(args.plugin_file)
        cfg = resolve(plugin_config_classes=registry.config_classes(), plugins=split_plugins(args.plugins),
                      env={}, check_plugins=registry.check, check_settings=registry.check_settings)
        transform = text_transform_of(cfg, registry)
        if transform is None:  # the data would be built plain, as without --plugins
            raise ValueError(f"--plugins {args.plugins}: none of them transforms the text (pg_text_transform, e.g. "
                             "caseops); drop --plugins to build plain data")
    info = build_dataset(Path(args.source), Path(args.out), vocab_size=args.vocab, val_docs=args.val_docs,
                         transform=transform, tokenizer=args.tokenizer, max_train_tokens=args.max_train_tokens,
                         replace=args.force)
    print(json.dumps(info.__dict__ if hasattr(info, "__dict__") else info, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train, export and evaluate (the challenge job)")
    add_config_args(p)
    p.add_argument("--deterministic", action="store_true",
                   help="reproducible: schedule by iterations (no wall-clock cap) and deterministic kernels, so "
                        "two runs and the bundle agree (core.deterministic / PGOLF_DETERMINISTIC=1)")
    p.add_argument("--force", action="store_true", help="replace the run directory of RUN_ID if it holds a run")
    p.add_argument("--nproc", type=at_least(0), default=0,
                   help="launch N ranks (torchrun's environment, one per GPU); a failed rank stops them all")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a saved artifact (a run directory or its final_model.ptz)")
    p.add_argument("path", help="run directory or artifact file (config.json must be beside it)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("bundle", help="write one self-contained train_gpt.py (core + enabled plugins + settings)")
    p.add_argument("path", nargs="?", help="a run directory (or its config.json) to bundle; else --recipe/--plugins")
    add_config_args(p)
    p.add_argument("-o", "--out", default="train_gpt.py", help="output file (default ./train_gpt.py)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--keep-docstrings", action="store_true", help="keep docstrings and layout (more code bytes)")
    p.add_argument("--requirements", action="store_true",
                   help="also write requirements.txt beside the script (the packages it imports)")
    p.add_argument("--profile", choices=("full", "record"), default=None,
                   help="full (default; or the recipe's code_wrapper.profile), or record: the smallest script that "
                        "trains, exports and scores the configuration (env settings only; README: what it drops)")
    p.set_defaults(func=cmd_bundle)
    p = sub.add_parser("record", help="a validated records folder from finished runs (one per seed)")
    p.add_argument("runs", nargs="+", help="run directories (runs/<run_id>), one per seed")
    p.add_argument("--name", required=True, help="folder name, YYYY-MM-DD_Description")
    p.add_argument("--out", default=None, help="where the folder goes (default: the track's folder, "
                   "records/track_10min_16mb or records/track_non_record_16mb)")
    p.add_argument("--track", default=None, choices=["record", "non-record"],
                   help="default: from the runs (record when every run trained on 8 GPUs under the 600 s cap)")
    p.add_argument("--author", required=True)
    p.add_argument("--github-id", required=True)
    p.add_argument("--blurb", help="one-line description for submission.json and the README")
    p.add_argument("--plugin-file", action="append", default=[], metavar="FILE.py")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_record)
    from validator.cli import add_validate_parser

    add_validate_parser(sub)
    sub.choices["validate"].add_argument("--plugin-file", action="append", default=[], metavar="FILE.py")
    sub.choices["validate"].set_defaults(func=cmd_validate)
    p = sub.add_parser("demo", help="tiny CPU run on the embedded default corpus")
    add_config_args(p)
    p.add_argument("--out", default=None, help="output directory for the run (default $PGOLF_OUT_DIR, else runs/)")
    p.add_argument("--force", action="store_true", help="replace the run directory of RUN_ID if it holds a run")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("plugins", help="list / show / scaffold plugins")
    p.add_argument("action", choices=["list", "show", "new"])
    p.add_argument("name", nargs="?")
    p.add_argument("--plugin-file", action="append", default=[], metavar="FILE.py")
    p.add_argument("--dir", default=".", help="for 'new': where to write the plugin and its test")
    p.add_argument("--force", action="store_true", help="for 'new': overwrite existing files")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("config", help="show the resolved configuration with each value's source")
    p.add_argument("action", choices=["show"])
    add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("data", help="build challenge-format shards + a SentencePiece tokenizer from text")
    p.add_argument("action", choices=["build", "default"])
    p.add_argument("source", nargs="?", help="a directory of text files or a .jsonl file with a 'text' field")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--out", help="output directory")
    p.add_argument("--val-docs", type=int, default=None, help="documents for the val split (default ~5%%)")
    p.add_argument("--plugins", help="plugins whose text transform the data is built with (e.g. caseops)")
    p.add_argument("--plugin-file", action="append", default=[], metavar="FILE.py")
    p.add_argument("--tokenizer", metavar="MODEL", help="use this SentencePiece model (e.g. a record's own "
                   "tokenizers/*.model) instead of training one; it must have --vocab pieces")
    p.add_argument("--max-train-tokens", type=int, default=0, metavar="N",
                   help="stop adding training documents once the train split holds N tokens (0: all)")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out (the whole folder)")
    p.set_defaults(func=cmd_data)
    from pgolf.bench import add_bench_parser

    add_bench_parser(sub, add_config_args)
    p = sub.add_parser("size", help="size budget and per-family breakdown of a run or records folder")
    p.add_argument("run_dir", help="a run directory (final_model.ptz, metrics.json) or a records folder "
                                   "(train_gpt.py, logs or an artifact)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-estimate", action="store_true", help="skip the per-family compression estimate")
    p.set_defaults(func=cmd_size)
    return parser


def cmd_size(args: argparse.Namespace) -> int:
    from pgolf.size import run_size

    return run_size(args)


def out_of_memory(exc: BaseException) -> str | None:
    """For an allocation that failed (host or device): " (tried to allocate N GiB)" or ""; None for other errors."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in text)):
        return None
    if m := re.search(r"[Tt]ried to allocate (\d+) bytes", text):  # the CPU allocator's figure
        return f" (tried to allocate {int(m[1]) / 2**30:,.1f} GiB)"
    m = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)  # CUDA's
    return f" (tried to allocate {m[1]})" if m else ""


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads sleep instead of spinning while they wait (before torch loads): on a busy CPU machine
    # spinning makes small CPU steps several times slower; no effect on GPU work. Set it to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:  # argparse's usage errors (and --help) exit; hand back their status instead
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: temporary folders are removed, nothing half-written
    # is left under a final name (`pgolf train` marks its run interrupted).
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: the main thread only
    previous = signal.signal(signal.SIGTERM, _sigterm) if main_thread else None
    try:
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):  # set by a launcher; a stray value fails
            value = env_int(var, 0, low=1 if var in ("WORLD_SIZE", "MASTER_PORT") else 0) if var in os.environ else 0
            if var == "MASTER_PORT" and value > 65535:
                raise ValueError(f"MASTER_PORT={os.environ[var]!r}: expected a port number in 1..65535")
        for var in ("PGOLF_CACHE", "PGOLF_BUNDLE_CACHE", "PGOLF_OUT_DIR"):  # folders: an existing file is no cache
            value = os.environ.get(var, "")
            if value and value != "off" and Path(value).exists() and not Path(value).is_dir():
                raise ValueError(f"environment variable {var}={value!r}: expected a folder, found another kind of file")
        return int(args.func(args) or 0)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"pgolf: config error: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pgolf plugins show ema | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\npgolf: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # code a command loads (a --plugin-file, a recipe's plugin) called sys.exit
        print(f"pgolf: error: code loaded by the command called sys.exit({exc.code!r}) (a --plugin-file or plugin "
              "module?); stopped", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) and exc.code else 2
    except (PluginError, ValueError, FileNotFoundError, FileExistsError) as exc:  # RecordError, BundleError too
        if isinstance(exc, FileExistsError) and exc.filename and (Path(exc.filename).is_symlink() or Path(
                exc.filename).exists()) and not Path(exc.filename).is_dir():  # mkdir where a file, FIFO, link is
            what = ("a file" if Path(exc.filename).is_file() else "a link to nothing" if not Path(exc.filename).exists()
                    else "not a folder (a device, a FIFO or a link)")
            print(f"pgolf: error: {exc.filename}: is {what}, where a folder is needed on this path", file=sys.stderr)
            return 2
        print(f"pgolf: error: {textwrap.shorten(str(exc), 400)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, a path under a regular file …: name the file
        if exc.errno == errno.ENOTDIR and exc.filename and exc.strerror == os.strerror(errno.ENOTDIR):  # a raw one
            print(f"pgolf: error: {exc.filename}: a part of this path is a file, where a folder is needed",
                  file=sys.stderr)
            return 2
        where = f"{exc.filename}: " if exc.filename else ""
        full = " where this command writes (its run directory, --out, -o, PGOLF_CACHE)" if not where and exc.errno in (
            errno.ENOSPC, errno.EDQUOT) else ""
        print(f"pgolf: error: {where}{exc.strerror or exc} (errno {exc.errno}){full}", file=sys.stderr)
        return 1
    except BaseException as exc:  # Ctrl-C and sys.exit are handled above; GeneratorExit and the like land here
        if type(exc).__name__ == "TrainingDiverged":
            print(f"pgolf: error: {textwrap.shorten(str(exc), 400)}", file=sys.stderr)
            return 1
        if (oom := out_of_memory(exc)) is not None:
            print(f"pgolf: error: out of memory{oom}: the model, a batch or a plugin's table is too large for this "
                  "machine (core.model_dim / num_layers / train_batch_tokens / val_batch_size, plugin sizes such as "
                  "bigram_hash.buckets)", file=sys.stderr)
            return 1
        if os.environ.get("PGOLF_TRACEBACK", "").strip().lower() not in ("", "0", "false", "no", "off"):
            raise
        # an input no check names yet, or a bug: one line, never a traceback (PGOLF_TRACEBACK=1 shows it)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"pgolf: internal error: {type(exc).__name__}: {textwrap.shorten(str(exc), 300)} (at "
              f"{Path(where.filename).name}:{where.lineno}; PGOLF_TRACEBACK=1 prints the traceback)", file=sys.stderr)
        return 70
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
