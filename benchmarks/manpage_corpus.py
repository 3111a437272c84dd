"""Natural text for GPU comparisons where FineWeb is not at hand: the machine's man pages rendered to plain text,
shuffled by document, as a `.jsonl` that `pgolf data build` reads.

Both sides of a `pgolf bench --vs` comparison read the same shards, so any natural text will do; shuffling by
document keeps consecutive batches alike (in section/alphabetical order the train loss jumps by 3 nats from one
batch to the next, and per-step loss comparisons drown in it). Rendering uses `mandoc` (Debian package mandoc, about
15 ms a page) or else `groff` (about ten times slower).

    python benchmarks/manpage_corpus.py --out man.jsonl --every 3          # every third page of man1/3/5/7/8
    pgolf data build man.jsonl --vocab 1024 --max-train-tokens 6000000 --out data/man_sp1024
    pgolf data build man.jsonl --vocab 8192 --plugins caseops --out data/man_caseops_sp8192
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SECTIONS = ("man1", "man3", "man5", "man7", "man8")


def renderer() -> list[str]:
    """The command that turns roff on stdin into plain text on stdout."""
    if shutil.which("mandoc"):
        return ["mandoc", "-T", "utf8"]
    if shutil.which("groff"):
        return ["groff", "-man", "-T", "utf8", "-P", "-cbou"]
    sys.exit("manpage_corpus: neither mandoc nor groff is installed (apt-get install mandoc)")


def render(page: Path, command: list[str]) -> str:
    """One page as plain text (overstrike and control characters removed); '' if it does not render."""
    raw = gzip.decompress(page.read_bytes()) if page.suffix == ".gz" else page.read_bytes()
    proc = subprocess.run(command, input=raw, capture_output=True, timeout=60)
    text = proc.stdout.decode("utf-8", errors="replace")
    text = re.sub(".\b", "", text)  # "x\bx" (bold) and "_\bx" (underline) -> "x"
    return "".join(c for c in text if c >= " " or c in "\n\t")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the .jsonl to write (one {'text': page} per line)")
    ap.add_argument("--root", type=Path, default=Path("/usr/share/man"))
    ap.add_argument("--every", type=int, default=3, help="take every N-th page (sorted by path)")
    ap.add_argument("--seed", type=int, default=1337, help="document shuffle seed")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    args = ap.parse_args()
    if args.out.exists() and not args.force:
        sys.exit(f"manpage_corpus: --out {args.out} exists (pass --force to overwrite)")
    pages = sorted(p for s in SECTIONS for p in (args.root / s).glob("*") if p.is_file())[args.every - 1:: args.every]
    if not pages:
        sys.exit(f"manpage_corpus: --root {args.root}: no pages under {', '.join(SECTIONS)}")
    command = renderer()
    with ThreadPoolExecutor(args.jobs) as pool:
        texts = [t for t in pool.map(lambda p: render(p, command), pages) if t.strip()]
    random.Random(args.seed).shuffle(texts)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(texts)} pages, {sum(map(len, texts)):,} characters ({command[0]})")


if __name__ == "__main__":
    main()
