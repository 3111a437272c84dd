#!/usr/bin/env bash
# One side of a README timing pair (issue #14) on the device: pgolf's fused set for a record's recipe (the recipe's
# plugin list with fused_mlp in leaky_relu2's place, + auto_micro_batch, fused_ce, inductor_options) or the record's
# own train_gpt.py, 50 steps at 786,432 tokens/step, cuDNN on both sides, logged every 5th step, unprofiled.
# Run the two sides in consecutive calls on one warm machine (carry the record's data folder, .g5 and .whl, from
# benchmarks/gpu/prepare.sh; and .q in an earlier call for fused_mlp.backend=quack); the record side prints the
# comparison from --out (default bench_out):
#     bash benchmarks/gpu/pair.sh pr1493|pr315 pgolf [--set fused_mlp.backend=quack ...]  |  ... record
# `pair.sh RECORD plugins` prints the pgolf side's plugin list and exits (no device needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: pair.sh pr1493|pr315 pgolf|record|plugins [pgolf bench options]"
record="${1:?$usage}"; side="${2:?$usage}"; shift 2
case "$record" in
    pr1493) data=.gdata/sp8192 ;;
    pr315) data=.gdata/sp1024s ;;
    *) echo "pair.sh: no timing pair for $record (expected pr1493 or pr315)" >&2; exit 2 ;;
esac
plugins=$(python -c '
import sys, tomllib
listed = ["fused_mlp" if p == "leaky_relu2" else p for p in tomllib.load(open(sys.argv[1], "rb"))["plugins"]]
print(",".join(listed + [p for p in ("auto_micro_batch", "fused_ce", "inductor_options") if p not in listed]))
' "recipes/$record.toml")
if [ "$side" = plugins ]; then echo "$plugins"; exit 0; fi
source benchmarks/gpu/device_env.sh
out="${OUT:-.}"
python -m pgolf bench --recipe "recipes/$record.toml" --plugins "$plugins" --steps 50 --log-every 5 \
    --vs ".g5/${record}_train_gpt.py" --data "$data" --set core.attention=cudnn --profile-steps 0 \
    --side "$side" --json "$out/$side.json" --force "$@" 2>&1 | tee "$out/$side.log"
