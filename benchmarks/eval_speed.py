"""Evaluation-phase speed (issue #14): pgolf's final evaluation, compile warm-up included, per eval mode
(`core.eval_compile` compile / eager / auto), against the record's own evaluation function on the same GPU and
the same validation prefix.

Cases: pr315 = recipes/pr315.toml with its sliding window (record: `eval_val_sliding` of PR #315's
train_gpt.py); pr1493 = recipes/pr1493.toml with its score-first TTT (record: `eval_val_ttt` of PR #1493's).
Each row runs in a fresh process with empty inductor/triton caches (a compile is timed as a cold one); models
are randomly initialised (speed does not depend on the weights: val_bpb is a sanity column). The record runs
on the attention backend pgolf picked (its FA3 import served by `pgolf bench`'s SDPA stand-in when FA3 is
missing). Prints a table and writes JSON.

    python benchmarks/eval_speed.py --data-root .gpu/data --val-tokens 524288 --json eval_speed.json
    # --cases pr315 | pr1493, --modes compile,eager,auto, --no-record (pgolf rows only)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {  # case: (recipe, evaluator plugin, vocab)
    "pr315": ("recipes/pr315.toml", "sliding_window", 1024),
    "pr1493": ("recipes/pr1493.toml", "score_first_ttt", 8192),
}
MODES = ("compile", "eager", "auto")


def load_recipe_config(recipe: str, dataset: Path, tokenizer: Path):
    import tomllib

    from core.config import resolve
    from core.registry import Registry

    registry = Registry()
    data = tomllib.loads((ROOT / recipe).read_text(encoding="utf-8"))
    return resolve(plugin_config_classes=registry.config_classes(), recipe=data, env={},
                   sets=[f"core.data_path={dataset}", f"core.tokenizer_path={tokenizer}"],
                   plugins=data.get("plugins", []), check_plugins=registry.check)


def cold_env(tmp: Path) -> dict[str, str]:
    """The environment with empty compile caches (inductor FX/autotune, triton kernels)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env[var] = tempfile.mkdtemp(prefix=var.lower() + "_", dir=tmp)
    return env


def run_row(cmd: list[str], env: dict[str, str], row_json: Path, log: Path, timeout: int, cwd: Path = ROOT) -> dict:
    t0 = time.perf_counter()
    try:
        with open(log, "w", encoding="utf-8") as f:
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    if rc != 0 or not row_json.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        return {"error": f"exit {rc} (log {log}): {tail.strip().splitlines()[-1] if tail.strip() else ''}",
                "process_s": wall}
    row = json.loads(row_json.read_text())
    row = row[0] if isinstance(row, list) else row
    row["process_s"] = wall
    return row


def pgolf_row(case: str, mode: str, dataset: Path, tokenizer: Path, out: Path, timeout: int,
              sets: list[str] = ()) -> dict:
    recipe, evaluator, _ = CASES[case]
    row_json = out / f"pgolf_{mode}.json"
    row_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "eval_bench.py"), "--recipe", str(ROOT / recipe), "--data",
           str(dataset), "--evaluators", evaluator, "--set", f"core.tokenizer_path={tokenizer}",
           "--set", "core.val_max_tokens=0", "--set", f"core.eval_compile={mode}", "--json", str(row_json)]
    cmd += [x for v in sets for x in ("--set", v)]
    row = run_row(cmd, cold_env(out), row_json, out / f"pgolf_{mode}.log", timeout)
    row.update(side="pgolf", mode_asked=mode)
    return row


def record_row(case: str, cfg, data_root: Path, dataset: Path, tokenizer: Path, attention: str, out: Path,
               timeout: int, scripts: Path) -> dict:
    from pgolf.bench import SHIM, SITE
    from pgolf.records import PROFILES, core_env

    profile = PROFILES[case]
    rec = out / "record"
    (rec / "logs").mkdir(parents=True, exist_ok=True)
    script = rec / "train_gpt.py"
    found = [f for f in (scripts / f"{case}_train_gpt.py", scripts / f"{case}_record.py") if f.is_file()]
    if found:  # the published script, or its decoded source
        shutil.copyfile(found[0], script)
    else:
        from pgolf.bench import DEFAULT_MIRROR

        mirror = os.environ.get("PGOLF_PARAMETER_GOLF_MIRROR", DEFAULT_MIRROR)
        proc = subprocess.run(["git", "-C", mirror, "show", f"{profile.ref}:{profile.folder}/train_gpt.py"],
                              capture_output=True)
        if proc.returncode != 0:
            return {"side": "record", "mode_asked": "record",
                    "error": f"no record script: expected {scripts}/{case}_train_gpt.py (pgolf bench --profile "
                             f"{case} --extract-record {scripts}/{case}_train_gpt.py) or the git mirror {mirror}"}
        script.write_bytes(proc.stdout)
    env = cold_env(out)
    env.update(core_env(cfg, cfg.core.eval_seq_len or cfg.core.train_seq_len))
    env.update(profile.env(cfg, False))
    env.update(DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), DATA_DIR=str(data_root) + os.sep,
               RUN_ID="record_eval", PGOLF_BENCH_SDPA=attention, TTT_ENABLED="1", SLIDING_WINDOW_ENABLED="1")
    real_fa3 = attention == "fa3" and importlib.util.find_spec("flash_attn_interface") is not None
    if not real_fa3:
        (rec / "shim").mkdir(exist_ok=True)
        (rec / "shim" / "flash_attn_interface.py").write_text(SHIM, encoding="utf-8")
        (rec / "shim" / "sitecustomize.py").write_text(SITE, encoding="utf-8")  # SDPA records: pgolf's kernels
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(rec / "shim"), env.get("PYTHONPATH", "")) if p)
        env["PGOLF_BENCH_ATTENTION_PY"] = str(ROOT / "plugins" / "lib" / "fa4.py")
    row_json = rec / "row.json"
    row_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--record-eval", case, "--script", str(script),
           "--row-json", str(row_json)]
    row = run_row(cmd, env, row_json, out / "record.log", timeout, cwd=rec)
    row.update(side="record", mode_asked="record", attention=attention if not real_fa3 else "fa3")
    return row


def record_eval(case: str, script: Path, row_json: Path) -> int:
    """In a fresh process: build the record's model (random init, bf16 + fp32 control tensors as its main
    does) and time its own evaluation function on the validation prefix; its compile is inside that time."""
    import torch

    from pgolf.records import decoded_source

    src = script.with_name("record_module.py")
    text = decoded_source(script.read_text(encoding="utf-8"))
    if sys.version_info < (3, 12):  # PR #1493's log f-strings reuse their quotes (PEP 701)
        text = text.replace('{", ".join(', "{', '.join(").replace('glob("fineweb_train_*.bin")',
                                                                    "glob('fineweb_train_*.bin')")
    src.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("record_module", src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["record_module"] = mod
    spec.loader.exec_module(mod)
    device = torch.device(os.environ.get("PGOLF_EVAL_SPEED_DEVICE", "cuda:0"))  # cpu: a dry run of this harness
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(1337)
    if case == "pr315":
        import sentencepiece as spm

        a = mod.Hyperparameters()
        seq = a.eval_seq_len if a.eval_seq_len > 0 else a.train_seq_len
        val = mod.load_validation_tokens(a.val_files, max(a.train_seq_len, seq))
        luts = mod.build_sentencepiece_luts(spm.SentencePieceProcessor(model_file=a.tokenizer_path), a.vocab_size,
                                            device)
        model = mod.GPT(vocab_size=a.vocab_size, num_layers=a.num_layers, model_dim=a.model_dim,
                        num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, mlp_mult=a.mlp_mult,
                        tie_embeddings=a.tie_embeddings, tied_embed_init_std=a.tied_embed_init_std,
                        logit_softcap=a.logit_softcap, rope_base=a.rope_base, qk_gain_init=a.qk_gain_init,
                        mtp_num_heads=0, mtp_loss_weight=0.0, bigram_vocab_size=a.bigram_vocab_size,
                        bigram_dim=a.bigram_dim, xsa_last_n=a.xsa_last_n, rope_dims=a.rope_dims,
                        ln_scale=a.ln_scale).to(device).bfloat16()
        for m in model.modules():
            if isinstance(m, mod.CastedLinear):
                m.float()
        mod.restore_low_dim_params_to_fp32(model)
        n_tokens = val.numel() - 1

        def run_eval():
            return mod.eval_val_sliding(a, model, 0, 1, device, val, *luts, stride=a.eval_stride, eval_seq_len=seq)
    else:
        h = mod.Hyperparameters()
        mod.set_logging_hparams(h)
        val_data = mod.ValidationData(h, device)
        model = mod.GPT(h).to(device).bfloat16()
        mod.restore_fp32_params(model)
        if h.num_loops > 0:
            model.looping_active = True
        n_tokens = val_data.val_tokens.numel() - 1

        def run_eval():
            return mod.eval_val_ttt(h, device, val_data, model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    val_loss, val_bpb = run_eval()
    sync()
    ms = 1000.0 * (time.perf_counter() - t0)
    row = {"evaluator": f"record_{case}", "warmup_ms": 0, "eval_ms": round(ms), "total_ms": round(ms),
           "mode": "record", "val_loss": float(val_loss), "val_bpb": float(val_bpb), "tokens": n_tokens}
    row_json.write_text(json.dumps(row, indent=2) + "\n")
    return 0


def table(rows: list[dict]) -> str:
    head = f"{'case':<7} {'side':<7} {'mode':<8} {'warm-up s':>9} {'score s':>8} {'total s':>8} {'tokens':>9} " \
           f"{'val_bpb':>9} {'vs record':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:<7} {r['side']:<7} {r['mode_asked']:<8} ERROR {r['error']}")
            continue
        mode = r["mode"] if r["mode_asked"] != "auto" else f"auto>{r['mode']}"
        vs = r.get("speedup_vs_record")
        lines.append(f"{r['case']:<7} {r['side']:<7} {mode:<8} {r['warmup_ms'] / 1000:>9.1f} "
                     f"{r['eval_ms'] / 1000:>8.1f} {r['total_ms'] / 1000:>8.1f} {r['tokens']:>9} "
                     f"{r['val_bpb']:>9.4f} {'' if vs is None else f'{vs:.2f}x':>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=".gpu/data",
                   help="holds datasets/fineweb10B_sp<V>/ and tokenizers/fineweb_<V>_bpe.model")
    p.add_argument("--cases", default="pr315,pr1493")
    p.add_argument("--modes", default="compile,eager,auto")
    p.add_argument("--val-tokens", type=int, default=524_288, help="validation prefix both sides score")
    p.add_argument("--no-record", action="store_true", help="pgolf rows only")
    p.add_argument("--record-scripts", default=".gpu", help="folder with <case>_train_gpt.py (the record scripts; "
                   "default .gpu, else the parameter-golf git mirror)")
    p.add_argument("--out", default="eval_speed_out")
    p.add_argument("--timeout", type=int, default=300, help="seconds per row")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value for the pgolf rows")
    p.add_argument("--record-eval", choices=sorted(CASES), help=argparse.SUPPRESS)  # the record row's process
    p.add_argument("--script", help=argparse.SUPPRESS)
    p.add_argument("--row-json", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.record_eval:
        return record_eval(a.record_eval, Path(a.script), Path(a.row_json))
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [c for c in cases if c not in CASES] + [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown case/mode {bad}: cases are {', '.join(CASES)}, modes {', '.join(MODES)}")
    from pgolf.bench import data_folder

    root = Path(a.data_root).resolve()
    out = Path(a.out).resolve()
    rows: list[dict] = []
    for case in cases:
        recipe, _, vocab = CASES[case]
        src_ds = root / "datasets" / f"fineweb10B_sp{vocab}"
        src_tok = root / "tokenizers" / f"fineweb_{vocab}_bpe.model"
        for path in (src_ds, src_tok):
            if not path.exists():
                p.error(f"--data-root {root}: {path} not found (expected the challenge layout)")
        cfg = load_recipe_config(recipe, src_ds, src_tok)
        case_out = out / case
        case_out.mkdir(parents=True, exist_ok=True)
        data_root, dataset, tokenizer = data_folder(cfg, case_out, a.val_tokens, cfg.core.eval_seq_len)
        case_rows = []
        for mode in modes:
            case_rows.append(pgolf_row(case, mode, dataset, tokenizer, case_out, a.timeout, a.sets))
            print(table([dict(r, case=case) for r in case_rows[-1:]]).splitlines()[-1], flush=True)
        if not a.no_record:
            attention = next((r.get("attention") for r in case_rows if r.get("attention")), "flash")
            case_rows.append(record_row(case, cfg, data_root, dataset, tokenizer, attention, case_out, a.timeout,
                                        Path(a.record_scripts)))
            print(table([dict(r, case=case) for r in case_rows[-1:]]).splitlines()[-1], flush=True)
        rec = next((r for r in case_rows if r["side"] == "record" and "error" not in r), None)
        for r in case_rows:
            r["case"] = case
            if rec and "error" not in r and r["side"] == "pgolf":
                r["speedup_vs_record"] = rec["total_ms"] / max(r["total_ms"], 1)
        rows += case_rows
    summary = json.dumps(rows, indent=2, default=str)
    if a.json:
        Path(a.json).write_text(summary + "\n", encoding="utf-8")
    else:
        print(summary)
    print()
    print(table(rows))  # last, so a tail of the output holds it
    return 0


if __name__ == "__main__":
    sys.exit(main())
