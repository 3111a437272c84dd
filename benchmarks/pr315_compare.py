"""PR #315 parity benchmark, now a thin wrapper over `pgolf bench --recipe recipes/pr315.toml --vs RECORD`.

Kept for the commands in older issue notes; `pgolf bench` does the work (same data, steps, seed and
iteration schedule for both sides, the FA3 -> SDPA stand-in when flash_attn_interface is missing, the
validation prefix, the log parsing, ratios and losses at matching steps; see pgolf/bench.py).

    python benchmarks/pr315_compare.py --extract-record shared/pr315_train_gpt.py     # from the git mirror
    python benchmarks/pr315_compare.py --record shared/pr315_train_gpt.py --data DIR [--tokenizer T] \
        [--iterations 200] [--val-max-tokens 1048576] [--out pr315_out] [--skip-record | --skip-pgolf]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgolf.cli import main as pgolf_main  # noqa: E402 (the repository root is put on the path first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extract-record", metavar="OUT")
    ap.add_argument("--record")
    ap.add_argument("--data")
    ap.add_argument("--tokenizer")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmdown-frac", type=float, default=0.4)
    ap.add_argument("--seed", default="1337")
    ap.add_argument("--val-max-tokens", type=int, default=1_048_576)
    ap.add_argument("--out", default="pr315_out")
    ap.add_argument("--skip-record", action="store_true")
    ap.add_argument("--skip-pgolf", action="store_true")
    args = ap.parse_args()
    if args.extract_record:
        return pgolf_main(["bench", "--profile", "pr315", "--extract-record", args.extract_record])
    argv = ["bench", "--recipe", "pr315", "--steps", str(args.iterations), "--warmdown-frac", str(args.warmdown_frac),
            "--seed", args.seed, "--val-tokens", str(args.val_max_tokens), "--out", args.out,
            "--json", str(Path(args.out) / "pr315_compare.json")]
    argv += ["--data", args.data] if args.data else []
    argv += ["--set", f"core.tokenizer_path={args.tokenizer}"] if args.tokenizer else []
    argv += ["--vs", args.record, "--profile", "pr315"] if args.record else []
    argv += ["--side", "pgolf"] if args.skip_record else ["--side", "record"] if args.skip_pgolf else []
    return pgolf_main(argv)


if __name__ == "__main__":
    sys.exit(main())
