"""FILES.RUNS_IN_FOLDER (dynamic) and the data-access audit of a records folder's train_gpt.py.

The folder is copied to a temporary directory with a tiny challenge-format dataset (sp1024 shards from
the embedded default corpus, under ./data like the official layout, and named by DATA_PATH /
TOKENIZER_PATH / DATA_DIR) and `python train_gpt.py` runs there in the sandbox with a smoke configuration
(ITERATIONS=2, no warm-up, no periodic validation), pgolf not importable, network off. Failures caused by
the machine (no CUDA, flash_attn_3 / a pip package not installed here, Python too old, time or memory
limit) are "could not run" (exit 2), not a verdict on the script.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, script_text
from validator.sandbox import PGOLF_MODULES, SandboxResult, run_sandboxed

COULD_NOT_RUN = "could not run:"
# MAX_WALLCLOCK_SECONDS=0: with a cap the baseline's warmdown is wall-clock based, so two identical runs get
# different learning rates and the val-swap comparison cannot tell anything; the sandbox timeout bounds the run.
SMOKE_ENV = {
    "ITERATIONS": "2", "WARMUP_STEPS": "0", "MAX_WALLCLOCK_SECONDS": "0", "VAL_LOSS_EVERY": "0",
    "TRAIN_LOG_EVERY": "1", "TRAIN_BATCH_TOKENS": "16384", "VAL_BATCH_SIZE": "16384", "VOCAB_SIZE": "1024",
    "SEED": "1337", "RUN_ID": "pgolf_validate_smoke", "PGOLF_DEVICE": "cpu", "PGOLF_COMPILE": "false",
    "PGOLF_VAL_MAX_TOKENS": "16384", "OMP_NUM_THREADS": "2",
}
SMOKE_TRAIN_TOKENS = 262_144
SMOKE_VAL_TOKENS = 32_769
CUDA_RX = re.compile(r"CUDA is required|Torch not compiled with CUDA|No CUDA GPUs|Found no NVIDIA driver|"
                     r"CUDA driver|cuda.*not available|NVIDIA|nccl|NCCL|device_count\(\) == 0|"
                     r"invalid device ordinal|torch\.cuda|cudaGetDevice|is_available\(\)", re.I)
COMPILE_RX = re.compile(r"InductorError|CppCompileError|torch\._dynamo|BackendCompilerFailed|triton", re.I)
ARTIFACT_RX = re.compile(r"model.*\.(ptz|pt|pth|bin|xz|zst|br|lzma|npy|npz|safetensors|zlib|gz)$|\.ptz$", re.I)
MISSING_RX = re.compile(r"No module named '([^']+)'")


def finding(rule: str, status: str, message: str, severity: str = ERROR, **kw: Any) -> Finding:
    return Finding(rule, severity, status, "dynamic: " + message, **kw)


def could_not_run(rule: str, why: str) -> Finding:
    return Finding(rule, ERROR, SKIP, f"dynamic: {COULD_NOT_RUN} {why}")


def source_vocab(src: Path | None) -> int:
    """Vocabulary size of a pgolf data dir (its dataset.json), 1024 for the default corpus."""
    if src is None:
        return 1024
    meta = src / "dataset.json"
    try:
        return int(json.loads(meta.read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta}: expected a pgolf dataset.json with vocab_size ({exc})") from exc


def smoke_data(root: Path, random_val: bool = False, src: Path | None = None, val_offset: int = 0,
               val_transform: Any = None) -> dict[str, str]:
    """Write the tiny dataset + tokenizer under root/data (official layout), cut from `src` (a pgolf data dir:
    shards + tokenizer/*.model; default: the embedded corpus at vocab 1024); returns the env naming it, with
    PGOLF_SANDBOX_WATCH: the (device, inode) of every shard, so the sandbox recognises them under any name.
    `random_val`: the validation shard holds random tokens (same length) instead of the real ones.
    `val_offset`: where the validation cut starts (drawn per validation, so no shipped file can equal it).
    `val_transform(val, vocab) -> tokens`: the validation shard's content is replaced by its result."""
    import numpy as np

    from core.data import read_shard
    from dataprep.build import ensure_default_data, write_shard

    vocab = source_vocab(src)
    src = src or ensure_default_data(vocab_size=1024)
    ds = root / "data" / "datasets" / f"fineweb10B_sp{vocab}"
    tk = root / "data" / "tokenizers"
    ds.mkdir(parents=True, exist_ok=True)
    tk.mkdir(parents=True, exist_ok=True)
    train = read_shard(next(src.glob("fineweb_train_*.bin"))).numpy()[:SMOKE_TRAIN_TOKENS]
    full_val = read_shard(next(src.glob("fineweb_val_*.bin"))).numpy()
    off = val_offset % max(1, full_val.size - SMOKE_VAL_TOKENS)
    val = full_val[off : off + SMOKE_VAL_TOKENS]
    write_shard(ds / "fineweb_train_000000.bin", train.astype(np.int64))
    if random_val:
        val = np.random.default_rng(0).integers(2, vocab, val.size)
    if val_transform is not None:  # the black-box path's perturbed streams (validator/blackbox.py)
        val = np.asarray(val_transform(val.astype(np.int64), vocab))
    write_shard(ds / "fineweb_val_000000.bin", val.astype(np.int64))
    tok = tk / f"fineweb_{vocab}_bpe.model"
    shutil.copyfile(next((src / "tokenizer").glob("*.model")), tok)
    watch = root / "data" / "watch.json"
    write_watch(ds, watch)
    return {"DATA_PATH": str(ds), "TOKENIZER_PATH": str(tok), "DATA_DIR": str(root / "data"), "VOCAB_SIZE": str(vocab),
            "PGOLF_SANDBOX_WATCH": str(watch)}


def write_watch(data_dir: Path, out: Path) -> None:
    """The sandbox's watch list: (st_dev, st_ino, kind) of each shard the validator wrote (kind from the names
    the validator itself gave them)."""
    entries = []
    for p in sorted(data_dir.glob("fineweb_*.bin")):
        st = p.stat()
        kind = "val" if p.name.startswith("fineweb_val_") else "train"
        entries.append({"dev": st.st_dev, "ino": st.st_ino, "kind": kind, "path": str(p)})
    out.write_text(json.dumps(entries), encoding="utf-8")


def data_kind(event: dict[str, Any]) -> str | None:
    """'val' / 'train' for a read of a watched shard (by inode), else by name for old audit logs."""
    if event.get("data") in ("val", "train"):
        return str(event["data"])
    name = Path(str(event.get("path", ""))).name
    return "val" if name.startswith("fineweb_val_") else "train" if name.startswith("fineweb_train_") else None


def compile_check(ctx: FolderContext) -> Finding | None:
    """py_compile of the shipped file and of the decoded source (LZMA wrappers decoded, never exec'd)."""
    rule = "FILES.RUNS_IN_FOLDER"
    assert ctx.script_path is not None and ctx.script_source is not None
    for label, text in (("train_gpt.py", script_text(ctx.script_path)),
                        ("train_gpt.py (decoded wrapper)", ctx.script_source[0])):
        try:
            compile(text, label, "exec", dont_inherit=True)
        except SyntaxError as exc:
            if sys.version_info < (3, 12) and "f-string" in (exc.msg or ""):
                return could_not_run(rule, f"{label} needs Python >= 3.12 (PEP 701 f-string at line {exc.lineno}); "
                                     f"this is {sys.version_info.major}.{sys.version_info.minor}")
            return finding(rule, FAIL, f"{label} does not compile: {exc.msg} (line {exc.lineno})",
                           file="train_gpt.py", line=exc.lineno)
        if not ctx.script_source[1]:
            break
    return None


def _outside(module: str, folder: Path) -> Path | None:
    """A file or package named `module` next to / above the folder (up to 3 levels): code outside it."""
    for parent in list(folder.resolve().parents)[:3]:
        for cand in (parent / f"{module}.py", parent / module):
            if cand.exists():
                return cand
    return None


def classify(res: SandboxResult, folder: Path, timeout: float) -> Finding:
    """The FILES.RUNS_IN_FOLDER verdict of one smoke run."""
    rule = "FILES.RUNS_IN_FOLDER"
    blocked = [e["module"] for e in res.events if e.get("kind") == "blocked_import"]
    if res.timed_out:
        return could_not_run(rule, f"the smoke run did not finish within {timeout:.0f} s on this machine")
    if res.returncode == 0:
        return finding(rule, PASS, f"train_gpt.py ran to completion in a copy of the folder in {res.seconds:.1f} s "
                       "(smoke configuration, pgolf not importable, network off)")
    tail = res.tail
    text = res.stderr[-4000:] + res.stdout[-1000:]
    if blocked:
        return finding(rule, FAIL, f"train_gpt.py imports {blocked[0]!r} from pgolf, which a records folder cannot "
                       "rely on (bundle the code into train_gpt.py)", file="train_gpt.py", found=tail)
    m = MISSING_RX.search(tail) or MISSING_RX.search(text)
    if m:
        mod = m.group(1).split(".")[0]
        if mod in PGOLF_MODULES:
            return finding(rule, FAIL, f"train_gpt.py needs pgolf module {mod!r}", file="train_gpt.py", found=tail)
        where = _outside(mod, folder)
        if where is not None:
            return finding(rule, FAIL, f"train_gpt.py imports {mod!r}, which exists only outside the folder "
                           f"({where}): ship it in the folder and count its bytes", file="train_gpt.py", found=tail)
        if "flash_attn" in mod:
            return could_not_run(rule, f"needs {mod} (flash-attention 3, CUDA), not installed on this machine")
        return could_not_run(rule, f"module {mod!r} is not installed on this machine (if it is a pip package, "
                             "requirements.txt must list it)")
    if any(e.get("kind") == "network" for e in res.events):
        return could_not_run(rule, "the script needs the network, which is disabled (see DATA.NO_TRAIN_AT_EVAL)")
    if CUDA_RX.search(tail) or ("cuda" in text.lower() and not _cuda_available()):
        return could_not_run(rule, f"needs CUDA, which this machine does not have ({tail[:160]})")
    if "MemoryError" in tail or res.returncode in (-9, 137) or "Cannot allocate memory" in text:
        return could_not_run(rule, f"hit the sandbox memory limit ({tail[:160]})")
    if COMPILE_RX.search(text) and not _cuda_available():
        return could_not_run(rule, f"torch.compile / triton failed on this CPU machine ({tail[:160]})")
    return finding(rule, FAIL, f"train_gpt.py failed in a copy of the folder (exit {res.returncode}): {tail}",
                   file="train_gpt.py")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def artifact_writes(events: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Write events of model artifacts inside the (copied) folder, oldest first."""
    root = str(folder.resolve())
    out = []
    for e in events:
        p = str(e.get("path", ""))
        name = Path(p).name.lstrip(".")
        if e.get("kind") == "open" and e.get("write") and p.startswith(root) and "/data/" not in p[len(root):]:
            if ARTIFACT_RX.search(name) or ARTIFACT_RX.search(name.rsplit(".tmp", 1)[0]):
                out.append(e)
    return out


def access_findings(events: list[dict[str, Any]], folder: Path, label: str) -> tuple[list[Finding], bool]:
    """DATA.NO_TRAIN_AT_EVAL from one audited run (train shards read after the artifact was written, network);
    returns the findings and whether validation shards were read before the artifact existed."""
    out: list[Finding] = []
    net = [e for e in events if e.get("kind") == "network"]
    if net:
        out.append(finding("DATA.NO_TRAIN_AT_EVAL", FAIL, f"{label}: network access attempted "
                           f"({net[0].get('event')} {net[0].get('address')}); the sandbox refused it"))
    writes = artifact_writes(events, folder)
    reads = [e for e in events if e.get("kind") == "open" and not e.get("write")]
    train = [e for e in reads if data_kind(e) == "train"]
    val = [e for e in reads if data_kind(e) == "val"]
    if not writes:
        out.append(could_not_run("DATA.NO_TRAIN_AT_EVAL", f"{label}: no model artifact was written, so the "
                                 "training/evaluation boundary is unknown"))
        return out, False
    # the boundary is the FIRST write of the artifact that exists at the end (a rewrite at the end cannot move it
    # later; a placeholder written early moves it earlier, which only makes the check stricter)
    final = _final_artifact(writes)
    t_art = min(e["t"] for e in writes if _artifact_name(e) == final)
    late = [e for e in train if e["t"] > t_art]
    name = final
    if late:
        via = late[0].get("via")
        alias = f" (opened as {via})" if via and Path(via).name != Path(str(late[0]["path"])).name else ""
        out.append(finding("DATA.NO_TRAIN_AT_EVAL", FAIL, f"{label}: training shard {Path(late[0]['path']).name}"
                           f"{alias} read {late[0]['t'] - t_art:.2f} s after the artifact {name} was first written "
                           "(evaluation may not read training data)"))
    elif not net:
        out.append(finding("DATA.NO_TRAIN_AT_EVAL", PASS, f"{label}: {len(train)} training-shard reads, none after "
                           f"the artifact {name} was written; no network access"))
    early_val = [e for e in val if e["t"] < t_art]
    return out, bool(early_val)


def _artifact_name(e: dict[str, Any]) -> str:
    return Path(str(e["path"])).name.lstrip(".").split(".tmp")[0]


def _final_artifact(writes: list[dict[str, Any]]) -> str:
    """The artifact the run ends with: the last written one that still exists, else the last written."""
    for e in reversed(writes):
        if Path(str(e["path"])).is_file() and not Path(str(e["path"])).name.startswith("."):
            return _artifact_name(e)
    return _artifact_name(writes[-1])


def artifact_digest(events: list[dict[str, Any]], folder: Path) -> str | None:
    writes = artifact_writes(events, folder)
    for e in reversed(writes):
        p = Path(str(e["path"]))
        if p.is_file() and not p.name.startswith("."):
            return hashlib.sha256(p.read_bytes()).hexdigest()
    return None


def val_invariance(run_once: Any, label: str, first: str | None = None) -> Finding:
    """DATA.NO_VAL_IN_TRAIN dynamic: the artifact must not change when the validation shard's content is
    replaced by random tokens of the same length. `run_once(random_val: bool) -> digest | None`; `first` is the
    digest of a run already made on the real validation content."""
    rule = "DATA.NO_VAL_IN_TRAIN"
    a = first if first is not None else run_once(False)
    b = run_once(True)
    if a is None or b is None:
        return could_not_run(rule, f"{label}: the artifact of a repeated run could not be read")
    if a == b:
        return finding(rule, PASS, f"{label}: validation shards are read before the artifact exists, but the artifact "
                       "is bit-identical when the validation content is replaced by random tokens")
    c = run_once(False)
    if c != a:
        return could_not_run(rule, f"{label}: two runs on the same data produced different artifacts (not "
                             "deterministic here), so validation-content independence cannot be tested")
    return finding(rule, FAIL, f"{label}: the artifact changes when the validation shard's content changes: "
                   "validation data reached the model before it was scored (val calibration, pre-quant TTT, "
                   "paid prefix)")


def smoke_findings(folder: Path, timeout: float, memory: int | None, extra_env: dict[str, str] | None = None,
                   invariance: bool = True, data: Path | None = None) -> list[Finding]:
    """Dynamic FILES.RUNS_IN_FOLDER + data-access findings for a records folder."""
    ctx = FolderContext(folder)
    rule = "FILES.RUNS_IN_FOLDER"
    if ctx.script_path is None:
        return [Finding(rule, ERROR, SKIP, "dynamic: no train_gpt.py to run")]
    bad = compile_check(ctx)
    if bad is not None:
        return [bad]
    env = {**SMOKE_ENV, **(extra_env or {})}
    import secrets

    offset = secrets.randbelow(1 << 30)  # one validation cut for every run of this validation

    def one(random_val: bool) -> tuple[SandboxResult, Path]:
        tmp = Path(tempfile.mkdtemp(prefix="pgolf_validate_smoke_"))
        work = tmp / folder.resolve().name.replace(" ", "_")  # "." has no name
        shutil.copytree(folder, work, symlinks=False)
        data_env = smoke_data(work, random_val, data, offset)
        res = run_sandboxed([sys.executable, "train_gpt.py"], work, timeout=timeout, memory=memory,
                            env={**env, **data_env}, block_pgolf=True, audit=tmp / "audit.jsonl")
        return res, work

    res, work = one(False)
    try:
        verdict = classify(res, folder, timeout)
        out = [verdict]
        if verdict.status == PASS:
            acc, early_val = access_findings(res.events, work, "smoke run")
            first = artifact_digest(res.events, work)
            out += acc
            if invariance:  # whatever the read times say: timing can be staged (placeholder, late rewrite)
                def run_once(random_val: bool) -> str | None:
                    r, w = one(random_val)
                    try:
                        return artifact_digest(r.events, w) if r.returncode == 0 else None
                    finally:
                        shutil.rmtree(w.parent, ignore_errors=True)

                out.append(val_invariance(run_once, "smoke run", first))
            elif not early_val:
                out.append(finding("DATA.NO_VAL_IN_TRAIN", PASS, "smoke run: no validation shard opened before the "
                                   "artifact was first written (val-swap test not run)"))
        else:
            net = [e for e in res.events if e.get("kind") == "network"]
            if net:
                out.append(finding("DATA.NO_TRAIN_AT_EVAL", FAIL, f"network access attempted ({net[0].get('event')} "
                                   f"{net[0].get('address')}); the sandbox refused it"))
        return out
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


__all__ = ["COULD_NOT_RUN", "INFO", "WARN", "smoke_findings", "access_findings", "val_invariance", "could_not_run",
           "finding", "smoke_data"]
