"""`pgolf record RUN_DIR [RUN_DIR ...]`: a records folder from finished runs (one per seed), validated first.

The folder holds the bundled `train_gpt.py` of the runs' configuration (`submissions.bundle`), each run's
log as `train_seed<N>.log`, `submission.json` (mean/std over the seeds, bytes, track), a README (the
techniques with their source PRs, results per seed, how to run it) and `requirements.txt`. It is built in
a temporary folder beside the destination, checked with every static rule of `pgolf validate`, and
renamed into place only when no ERROR-severity rule fails; an existing folder is replaced only with
`force`. The runs must share one configuration (seed and machine settings aside) and must have logged
the code size of exactly this bundle (else the code changed after they ran).
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from core.config import ConfigError, resolve
from core.registry import Registry
from submissions.bundle import PER_RUN_KEYS, bundle_profile, bundle_with_requirements, script_bytes
from validator.untrusted_json import JSON_ERRORS, run_dir_metrics, run_dir_recipe

TRACKS = {"record": "10min_16mb", "non-record": "non-record-16mb"}
# The records folder of each track (the challenge repository's layout); `pgolf record` writes under it.
TRACK_DIRS = {"record": "records/track_10min_16mb", "non-record": "records/track_non_record_16mb"}
RECORD_GPUS = 8
RECORD_SECONDS = 600.0
RUN_FILES = ("config.json", "metrics.json", "train.log")


class RecordError(ValueError):
    """The runs cannot make a records folder, or the validator rejects the folder."""


@dataclass
class FinishedRun:
    path: Path
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    log: str

    @property
    def seed(self) -> int:
        return int(self.recipe["core"]["seed"])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc})") from exc


def load_finished_run(path: Path) -> FinishedRun:
    if not path.is_dir():
        raise RecordError(f"{path}: not a run directory ({'not a directory' if path.exists() else 'no such path'})")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise RecordError(f"{path}: not a finished pgolf run (missing {', '.join(missing)})")
    try:
        recipe, metrics = run_dir_recipe(path), run_dir_metrics(path)
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    seed = recipe.get("core", {}).get("seed") if isinstance(recipe.get("core"), dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise RecordError(f"{path}/config.json: core.seed: expected an integer >= 0, got {seed!r}")
    artifact = path / "final_model.ptz"  # the artifact whose bytes the logs count (not shipped: the script makes it)
    model_bytes = metrics.get("model_bytes", metrics["total_bytes"] - metrics["code_bytes"])
    if not artifact.is_file() or artifact.stat().st_size != model_bytes:
        found = f"{artifact.stat().st_size:,} bytes" if artifact.is_file() else "missing"
        raise RecordError(f"{artifact}: {found}, but metrics.json counts {model_bytes:,} model bytes (the artifact "
                          "is not the one the run wrote)")
    status = path / "status.json"
    if status.is_file():
        try:
            state = json.loads(_read(status)).get("status")
        except (*JSON_ERRORS, AttributeError) as exc:
            raise RecordError(f"{status}: not valid JSON ({exc})") from None
        if state != "finished":
            raise RecordError(f"{status}: the run is {state!r}, not finished")
    log = _read(path / "train.log")
    headers = log.count("\nmodel_params:") + log.startswith("model_params:")
    if headers > 1:
        raise RecordError(f"{path}/train.log: holds {headers} runs (expected one run per log); re-run it into a new "
                          "run directory")
    return FinishedRun(path, recipe, metrics, log)


def track_of(run_dirs: list[Path]) -> str:
    """'record' when every run trained on 8 CUDA GPUs under the 600 s cap (schedule by wall clock), else
    'non-record'; the validator's HW / TIME rules have the last word."""
    for path in run_dirs:
        try:
            core = run_dir_recipe(path).get("core", {})
            start = _start(path)
        except (RecordError, ValueError, RecursionError):  # JSON nested past the parser's depth too
            return "non-record"
        cap = float(core.get("max_wallclock_seconds", 0) or 0)
        if (start.get("world_size") != RECORD_GPUS or not str(start.get("device", "")).startswith("cuda")
                or not 0 < cap <= RECORD_SECONDS or core.get("deterministic")):
            return "non-record"
    return "record"


def _start(path: Path) -> dict[str, Any]:
    """The run's start event (world_size, device): events.jsonl's, else (a record-profile script's run, which
    writes no events.jsonl) from its train.log's `world_size:N …` and `device:D …` lines."""
    if (path / "events.jsonl").is_file():
        starts = (json.loads(line) for line in _read(path / "events.jsonl").splitlines() if '"start"' in line)
        return next((e for e in starts if isinstance(e, dict)), {})
    log = _read(path / "train.log")
    world = re.search(r"^world_size:(\d+) ", log, re.M)
    device = re.search(r"^device:(\S+) ", log, re.M)
    return {**({"world_size": int(world[1])} if world else {}), **({"device": device[1]} if device else {})}


def check_name(name: str) -> str:
    """A records folder name as the official records name theirs: YYYY-MM-DD_Description, a real date, one path
    component of letters, digits and `._+-`."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})_[A-Za-z0-9._+-]+", name)
    try:
        ok = m is not None and bool(date.fromisoformat(m[1]))
    except ValueError:
        ok = False
    if not ok:
        raise RecordError(f"--name {name!r}: expected a folder name like 2026-11-23_MyStack (a real date, then "
                          "letters, digits and ._+- only)")
    return name


def check_text(flag: str, value: str) -> str:
    """A one-line field of submission.json and the README (--author, --github-id, --blurb): no line breaks or
    control characters, which would split the README's line or hide text."""
    if not value.isprintable():
        raise RecordError(f"{flag} {value!r}: expected one line of printable text")
    return value


def _comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(recipe))
    for key in PER_RUN_KEYS:
        out["core"].pop(key, None)
    return out


def _readme(title: str, runs: list[FinishedRun], registry: Registry, cfg: Any, sub: dict[str, Any]) -> str:
    rows = []
    for name in cfg.plugins:
        cls = registry.plugins[name]
        rows.append(f"| `{name}` | {cls.summary} | {', '.join(cls.sources)} |")
    seeds = "\n".join(f"| {r.seed} | {r.metrics['val_loss']:.8f} | {r.metrics['val_bpb']:.8f} | "
                      f"{r.metrics['total_bytes']:,} | `train_seed{r.seed}.log` |" for r in runs)
    core = cfg.core
    std = f", std {sub['val_bpb_std']:.8f}" if sub.get("val_bpb_std") is not None else ""
    model = (f"{core.num_layers} layers × {core.model_dim}, {core.num_heads} heads ({core.num_kv_heads} KV), "
             f"MLP ×{core.mlp_mult}, vocab {core.vocab_size}, train_seq_len {core.train_seq_len}, "
             f"{core.train_batch_tokens:,} tokens/step, wall-clock cap {core.max_wallclock_seconds:g} s")
    record = bundle_profile(cfg) == "record"
    settings = ("Every setting is in `train_gpt.py`, in its settings classes (`RECIPE` at the top lists the "
                "plugins); environment variables override them." if record else
                "Every setting is in `RECIPE` at the top of `train_gpt.py`.")
    data = (f"DATA_PATH=./data/datasets/fineweb10B_sp{core.vocab_size} "
            f"TOKENIZER_PATH=./data/tokenizers/fineweb_{core.vocab_size}_bpe.model")
    return f"""# {title}

{sub["blurb"]}

**val_bpb {sub['val_bpb']:.8f}** (mean of {len(runs)} seed{'s' if len(runs) > 1 else ''}{std}) ·
total bytes {sub['bytes_total']:,} (code {sub['bytes_code']:,}) · track `{sub['track']}`

## Techniques
| plugin | what it does | source |
|---|---|---|
{chr(10).join(rows) or "| (none) | the baseline | openai/parameter-golf |"}

Model: {model}. {settings}

## Results
| seed | val_loss | val_bpb | total bytes | log |
|---|---|---|---|---|
{seeds}

## Run it
`train_gpt.py` is self-contained (pgolf core + the plugins above, bundled by `pgolf bundle`); it needs
the packages in `requirements.txt`.

```bash
pip install -r requirements.txt
{data} SEED=1337 torchrun --standalone --nproc_per_node=8 train_gpt.py
```
"""


def _same_validation_set(runs: list[FinishedRun]) -> None:
    """The seeds of one record score one validation set: the same token count (their logs) and the same bytes per
    token (val_loss / (val_bpb ln 2), exact for one set): a mean over two sets is no score (the data folder is a
    machine setting, so configurations alone do not show it)."""
    from validator.logs import parse_text

    def scored(r: FinishedRun) -> tuple[int | None, float]:
        return parse_text(r.log).val_tokens, r.metrics["val_loss"] / (r.metrics["val_bpb"] * math.log(2))

    first = scored(runs[0])
    for r in runs[1:]:
        tokens, per_token = scored(r)
        if tokens != first[0] or abs(per_token / first[1] - 1.0) > 1e-6:
            raise RecordError(f"{r.path}: scored another validation set than {runs[0].path} ({tokens} tokens, "
                              f"{per_token:.6f} bytes/token vs {first[0]}, {first[1]:.6f}): the seeds of one record "
                              "score the same data")


def build_files(run_dirs: list[Path], registry: Registry, *, name: str, author: str, github_id: str,
                track: str, blurb: str = "", when: str | None = None) -> dict[str, str]:
    """File name -> text of the records folder for these runs (nothing written)."""
    if not run_dirs:
        raise RecordError("pgolf record: give at least one run directory")
    check_name(name)
    if track not in TRACKS:
        raise RecordError(f"track: expected one of {', '.join(TRACKS)}, got {track!r}")
    runs = [load_finished_run(p) for p in run_dirs]
    first = _comparable(runs[0].recipe)
    for r in runs[1:]:
        if _comparable(r.recipe) != first:
            raise RecordError(f"{r.path}: its configuration differs from {runs[0].path}'s (only seed and machine "
                              "settings may differ between the seeds of one record)")
    _same_validation_set(runs)
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise RecordError(f"runs share a seed ({seeds}): give one run per seed")
    try:
        cfg = resolve(plugin_config_classes=registry.config_classes(), recipe={**runs[0].recipe, "source": "run"},
                      env={}, check_plugins=registry.check, check_settings=registry.check_settings)
    except ConfigError as exc:
        raise RecordError(f"{runs[0].path}/config.json: {'; '.join(exc.errors)}") from exc
    text, reqs = bundle_with_requirements(cfg, registry)
    script = script_bytes(text)  # exactly the file whose size the runs logged
    n_code = len(script)
    for r in runs:
        if int(r.metrics["code_bytes"]) != n_code:
            raise RecordError(f"{r.path}: the run logged {r.metrics['code_bytes']:,} code bytes but its bundle is "
                              f"{n_code:,}: the code changed after the run (re-run it with this pgolf)")
    bpbs = [float(r.metrics["val_bpb"]) for r in runs]
    losses = [float(r.metrics["val_loss"]) for r in runs]
    runs.sort(key=lambda r: r.seed)
    sub: dict[str, Any] = {
        "name": name, "author": author, "github_id": github_id, "date": when or date.today().isoformat(),
        "track": TRACKS[track], "blurb": blurb or f"pgolf stack: {', '.join(cfg.plugins) or 'baseline'}",
        "val_bpb": round(statistics.fmean(bpbs), 8),
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) > 1 else None,
        "val_loss": round(statistics.fmean(losses), 8),
        "seeds": sorted(seeds),
        "seed_results": {str(r.seed): {"val_loss": r.metrics["val_loss"], "val_bpb": r.metrics["val_bpb"],
                                       "bytes_total": r.metrics["total_bytes"]} for r in runs},
        "bytes_total": max(int(r.metrics["total_bytes"]) for r in runs),
        "bytes_code": n_code,
    }
    files = {
        "train_gpt.py": script,
        "submission.json": json.dumps(sub, indent=2) + "\n",
        "README.md": _readme(name, runs, registry, cfg, sub),
        "requirements.txt": reqs,
    }
    for r in runs:
        files[f"train_seed{r.seed}.log"] = r.log
    return files


def errors_of(findings: list[Any]) -> list[Any]:
    return [f for f in findings if f.status == "fail" and f.severity == "ERROR"]


def write_records_folder(files: dict[str, str | bytes], dest: Path, force: bool = False,
                         extra_rules: Any = ()) -> list[Any]:
    """Validate, then write `dest` atomically (built beside it, renamed into place); returns the findings.
    The folder is validated at a staging path with the same track folder name as `dest`'s parent, with the
    same rules `pgolf validate` runs (`extra_rules`: the plugins' rules), so the two cannot disagree.
    Raises RecordError (nothing written) when a rule fails or `dest` exists without `force`."""
    from validator.cli import validate_folder

    if dest.exists() and not force:
        raise RecordError(f"{dest}: exists; pass --force to replace it")
    if dest.exists() and not dest.is_dir():
        raise RecordError(f"{dest}: exists and is not a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordError(f"{dest.parent}: cannot create the output folder ({exc.strerror or exc})") from exc
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        folder = stage / dest.parent.name / dest.name  # same track folder name: same placement rules
        folder.mkdir(parents=True)
        for fname, content in files.items():
            if isinstance(content, bytes):
                (folder / fname).write_bytes(content)
            else:
                (folder / fname).write_text(content, encoding="utf-8")
        findings = validate_folder(folder, extra_rules=extra_rules)
        bad = errors_of(findings)
        if bad:
            lines = "; ".join(f"{f.rule}: {f.message}" for f in bad)
            raise RecordError(f"the validator rejects {dest.name}, nothing written: {lines}")
        old = None
        if dest.exists() and force:  # without --force, a folder made meanwhile (a concurrent record) is kept
            old = stage / ".replaced"
            dest.rename(old)
        try:
            folder.rename(dest)  # onto a folder made meanwhile: ENOTEMPTY/EEXIST, never a silent replace
        except BaseException as exc:  # Ctrl-C between the renames too: the replaced folder goes back first
            if old is not None and not dest.exists():
                old.rename(dest)
            if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise RecordError(f"{dest}: was made by another command while this one ran; pass --force to "
                                  "replace it") from None
            raise
        return findings
    finally:
        shutil.rmtree(stage, ignore_errors=True)
