"""Where the bytes of a minified bundle are (issue #11): characters and brotli bytes per source module, for the
RECIPE literal, the script's main and the wrapper's framing, and per top-level definition of the largest modules.

    PYTHONPATH=$PWD python benchmarks/bundle_breakdown.py [--recipe recipes/pr1493.toml] [--defs 4] [--top 15]
                                                          [--set section.key=value ...] [--profile record]

Each module is measured as the bundle embeds it (specialised, lean, shaken, renamed: `bundle.embedded_modules`),
before `submissions.merge` joins the modules into one namespace (which only drops import lines). Two brotli
figures (quality 11, lgwin 24, as `code_wrapper` compresses): `alone` (the text compressed by itself) and
`marginal` (how much the concatenated bundle's compressed size drops without it: what deleting it would save,
shared vocabulary counted where it is cheapest). Definitions are listed by their original names (the bundle's
are shortened; top-level definitions keep their order, so they are paired by position).
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from pathlib import Path

import brotli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import resolve  # noqa: E402
from core.registry import Registry  # noqa: E402
from submissions import bundle as B  # noqa: E402


def br(text: str) -> int:
    return len(brotli.compress(text.encode(), quality=11, lgwin=24)) if text else 0


def definitions(source: str) -> list[tuple[str, str]]:
    """(name, source text) of each top-level def/class of a module, in order."""
    return [(s.name, ast.get_source_segment(source, s) or ast.unparse(s)) for s in ast.parse(source).body
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "pr1493.toml"))
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--defs", type=int, default=4, help="break down this many of the largest modules")
    ap.add_argument("--top", type=int, default=15, help="definitions listed per module")
    ap.add_argument("--profile", choices=B.PROFILES, default=None, help="bundle profile (default: the recipe's)")
    args = ap.parse_args(argv)
    reg = Registry()
    cfg = resolve(plugin_config_classes=reg.config_classes(), recipe=args.recipe, sets=args.sets,
                  check_plugins=reg.check)

    named: dict[str, str] = {}  # the modules just before the global rename: their definitions' own names
    renamed = B._renamed_globals

    def capture(items, loader, keep):
        named.update(dict(items))
        return renamed(items, loader, keep)

    B._renamed_globals = capture
    try:
        B._renamed_globals.cache_clear = renamed.cache_clear  # type: ignore[attr-defined]
        renamed.cache_clear()
        profile = B.bundle_profile(cfg, args.profile)
        sources, loader = B._embedded(cfg, reg, True, True, profile)
        plain = B.bundle(cfg, reg, wrap=False, profile=profile)
        wrapped = B.wrap_code(cfg, reg, plain)
    finally:
        B._renamed_globals = renamed

    recipe_line = next(line for line in plain.splitlines() if line.startswith("RECIPE = "))
    order = [n for n in sources if sources[n]]
    parts = {**{n: sources[n] for n in order}, "RECIPE literal": recipe_line + "\n",
             "main (loader)": B.reindent(B.rename_locals(B.strip_source(loader)))}
    whole = "".join(parts.values())
    total_br = br(plain)
    whole_br = br(whole)
    payload = math.ceil(total_br * 8 / math.log2(93))
    print(f"{Path(args.recipe).name}: bundle {len(plain):,} characters, {len(plain.splitlines()):,} lines, "
          f"brotli {total_br:,} bytes; wrapped {len(wrapped.encode()):,} bytes "
          f"(base-93 payload ~{payload:,}, decoder ~{len(wrapped.encode()) - payload:,})")
    print(f"the parts below concatenated: {len(whole):,} characters, brotli {whole_br:,} "
          f"(merge drops import lines; the bundle's header and import block are the rest)\n")
    rows = []
    for name, text in parts.items():
        rest = "".join(t for n, t in parts.items() if n != name)
        rows.append((name, len(text), br(text), whole_br - br(rest)))
    rows.append(("wrapper framing (base-93 expansion + decoder)", 0, 0, len(wrapped.encode()) - total_br))
    rows.sort(key=lambda r: -r[3])
    print(f"{'part':48} {'chars':>8} {'br alone':>9} {'marginal':>9}")
    for name, chars, alone, marginal in rows:
        print(f"{name:48} {chars:8,} {alone:9,} {marginal:9,}")

    big = [n for n, *_ in sorted(rows, key=lambda r: -r[3]) if n in sources][:args.defs]
    for module in big:
        src = sources[module]
        short = definitions(src)
        long = [n for n, _ in definitions(named.get(module, ""))]
        names = long if len(long) == len(short) else [n for n, _ in short]
        base = br(src)
        drows = []
        for (_, text), name in zip(short, names, strict=True):
            drows.append((name, len(text), br(text), base - br(src.replace(text, "", 1))))
        drows.sort(key=lambda r: -r[3])
        print(f"\n{module}: {len(src):,} characters, brotli {base:,}; top-level definitions (marginal within the "
              f"module):")
        for name, chars, alone, marginal in drows[:args.top]:
            print(f"  {name:46} {chars:8,} {alone:9,} {marginal:9,}")


if __name__ == "__main__":
    main()
