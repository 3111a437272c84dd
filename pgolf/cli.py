"""`pgolf` command line: train, eval, bundle, validate, size, demo, plugins, config, data."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from core.config import Config, ConfigError, resolve
from core.registry import PluginError, Registry

DEMO_SETTINGS = [
    "core.num_layers=4", "core.model_dim=128", "core.num_heads=4", "core.num_kv_heads=2",
    "core.train_seq_len=128", "core.train_batch_tokens=4096", "core.grad_accum_steps=1",
    "core.iterations=300", "core.warmdown_iters=100", "core.warmup_steps=0", "core.val_loss_every=100",
    "core.train_log_every=25", "core.val_batch_size=16384", "core.val_max_tokens=65536",
    "core.max_wallclock_seconds=150", "core.muon_momentum_warmup_steps=100", "core.device=cpu",
]


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="recipe TOML (plugins list + [core] and [plugin] tables)")
    p.add_argument("--plugins", help="comma-separated plugin list (overrides the recipe and PGOLF_PLUGINS)")
    p.add_argument("--plugin-file", action="append", default=[], metavar="FILE.py",
                   help="load plugins from a Python file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="sets",
                   help="override a setting, e.g. --set core.num_layers=11 --set ema.decay=0.99")
    p.add_argument("--data", help="data directory with fineweb_{train,val}_*.bin shards (sets core.data_path)")


def load_config(args: argparse.Namespace, extra_sets: list[str] | None = None) -> tuple[Config, Registry]:
    registry = Registry(extra_files=args.plugin_file)
    sets = list(extra_sets or []) + list(args.sets)
    if getattr(args, "data", None):
        sets.append(f"core.data_path={Path(args.data).resolve()}")
    plugins = None if args.plugins is None else [p.strip() for p in args.plugins.split(",") if p.strip()]
    cfg = resolve(
        plugin_config_classes=registry.config_classes(), recipe=args.recipe, env=os.environ, sets=sets,
        plugins=plugins, check_plugins=registry.check, check_settings=registry.check_settings,
    )
    return cfg, registry


def with_default_data(cfg: Config) -> Config:
    """Fill an empty `core.data_path` with the embedded default corpus (built and cached on first use)."""
    if not cfg.core.data_path:
        from dataprep.build import ensure_default_data

        cfg.core.data_path = str(ensure_default_data(vocab_size=cfg.core.vocab_size))
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


def cmd_train(args: argparse.Namespace, extra_sets: list[str] | None = None) -> int:
    if args.nproc and args.nproc > 1 and "RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "pgolf.cli", *strip_nproc(sys.argv[1:])]
        print("launching: " + " ".join(cmd), flush=True)
        return subprocess.call(cmd)
    from core.train import run_training
    from submissions.bundle import bundle_size

    cfg, registry = load_config(args, extra_sets)
    summary = run_training(with_default_data(cfg), registry, code_size=bundle_size)
    if int(os.environ.get("RANK", "0")) == 0:
        total = summary["total_bytes"]
        print(f"val_bpb {summary['val_bpb']:.4f}  artifact {total:,} bytes "
              f"({'fits' if total <= 16_000_000 else 'OVER'} 16,000,000)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    print("pgolf demo: a tiny GPT on the embedded default corpus (CPU, ~2-3 minutes)", flush=True)
    args.nproc = 0
    return cmd_train(args, extra_sets=DEMO_SETTINGS + [f"core.out_dir={args.out}"])


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = Registry(extra_files=args.plugin_file)
    if args.action == "list":
        width = max((len(n) for n in registry.names()), default=4)
        for name in registry.names():
            cls = registry.plugins[name]
            print(f"{name:<{width}}  {cls.summary}  [{', '.join(cls.sources)}]")
        return 0
    if args.action == "show":
        if not args.name:
            raise PluginError("pgolf plugins show NAME: NAME is required")
        errors = registry.check([args.name])
        if errors:
            raise PluginError(errors[0])
        info = registry.plugins[args.name].describe()
        info["origin"] = registry.origins[args.name]
        print(json.dumps(info, indent=2, default=str))
        return 0
    if args.action == "new":
        if not args.name or not args.name.isidentifier():
            raise PluginError(f"pgolf plugins new NAME: NAME must be a Python identifier, got {args.name!r}")
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
    rows = cfg.rows()
    kw = max(len(k) for k, _, _ in rows)
    vw = min(max(len(repr(v)) for _, v, _ in rows), 40)
    for key, value, source in rows:
        print(f"{key:<{kw}}  {value!r:<{vw}}  {source}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from core.train import setup, shutdown
    from pgolf.evaluate import evaluate_artifact, load_run_config

    artifact, recipe = load_run_config(Path(args.path))
    args.recipe = recipe
    cfg, registry = load_config(args)
    run = setup(with_default_data(cfg), registry, make_dir=False)
    try:
        evaluate_artifact(run, artifact)
    finally:
        shutdown(run)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    """Write the self-contained train_gpt.py of a configuration (a run directory's, or a recipe's)."""
    from core.run import write_atomic
    from submissions.bundle import bundle

    if args.path:
        cfg_path = Path(args.path) / "config.json" if Path(args.path).is_dir() else Path(args.path)
        try:
            args.recipe = {**json.loads(cfg_path.read_text(encoding="utf-8"))["config"], "source": str(cfg_path)}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{cfg_path}: expected a pgolf run directory or its config.json ({exc})") from exc
    cfg, registry = load_config(args)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out}: exists; pass --force to overwrite it")
    text = bundle(cfg, registry, strip=not args.keep_docstrings)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)
    print(f"{out}: {len(text.encode('utf-8')):,} bytes, plugins: {', '.join(cfg.plugins) or '(none)'}")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Build, validate and write a records folder from finished runs (one per seed)."""
    from submissions.package import build_files, errors_of, write_records_folder

    registry = Registry(extra_files=args.plugin_file)
    files = build_files([Path(p) for p in args.runs], registry, name=args.name, author=args.author,
                        github_id=args.github_id, track=args.track, blurb=args.blurb or "")
    dest = Path(args.out) / args.name
    findings = write_records_folder(files, dest, force=args.force)
    warns = [f for f in findings if f.status == "warn"]
    for f in warns:
        print(f"  warn {f.rule}: {f.message}")
    print(f"{dest}: {len(files)} files, validated ({len(errors_of(findings))} errors, {len(warns)} warnings)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from validator.cli import run_validate

    return run_validate(args, extra_rules=plugin_validator_rules(Registry(extra_files=args.plugin_file)))


def plugin_validator_rules(registry: Registry) -> list:
    """Extra validator rules from every known plugin's `pg_validator_rules` (default settings)."""
    import pluggy

    from core import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, cls in registry.plugins.items():
        pm.register(cls(cls.config() if cls.config is not None else None), name=name)
    return [rule for rules in pm.hook.pg_validator_rules() if rules for rule in rules]


def cmd_data(args: argparse.Namespace) -> int:
    from dataprep.build import build_dataset, ensure_default_data

    if args.action == "default":
        print(ensure_default_data(vocab_size=args.vocab))
        return 0
    if not args.source or not args.out:
        raise ValueError("pgolf data build TEXT_DIR|FILE.jsonl --vocab N --out DIR: source and --out are required")
    info = build_dataset(Path(args.source), Path(args.out), vocab_size=args.vocab, val_docs=args.val_docs)
    print(json.dumps(info.__dict__ if hasattr(info, "__dict__") else info, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train, export and evaluate (the challenge job)")
    add_config_args(p)
    p.add_argument("--nproc", type=int, default=0, help="launch N processes with torchrun (one per GPU)")
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
    p.set_defaults(func=cmd_bundle)
    p = sub.add_parser("record", help="a validated records folder from finished runs (one per seed)")
    p.add_argument("runs", nargs="+", help="run directories (runs/<run_id>), one per seed")
    p.add_argument("--name", required=True, help="folder name, YYYY-MM-DD_Description")
    p.add_argument("--out", default="records/track_10min_16mb", help="where the folder goes")
    p.add_argument("--track", default="record", choices=["record", "non-record"])
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
    p.add_argument("--out", default="runs", help="output directory for the run (default runs/)")
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
    p.set_defaults(func=cmd_data)
    from pgolf.size import add_size_parser

    add_size_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"pgolf: config error: {line}", file=sys.stderr)
        return 2
    except (PluginError, ValueError, FileNotFoundError, FileExistsError) as exc:  # RecordError, BundleError too
        print(f"pgolf: error: {textwrap.shorten(str(exc), 400)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
