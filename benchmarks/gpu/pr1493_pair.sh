#!/usr/bin/env bash
# One side of the README's PR #1493 timing pair (issue #14) on the device: pgolf's fused set
# (the recipe's list with fused_mlp for leaky_relu2, + auto_micro_batch, fused_ce, inductor_options) or the record's
# own train_gpt.py, 50 steps at 786,432 tokens/step, cuDNN on both sides, logged every 5th step, unprofiled.
# Run the two sides in two consecutive calls on one warm machine (carry .gdata/sp8192, .g5, .whl; and .q in an
# earlier call for fused_mlp.backend=quack, see prepare.sh); the record side prints the comparison from bench_out/:
#     bash benchmarks/gpu/pr1493_pair.sh pgolf [--set fused_mlp.backend=quack ...]  |  bash ... record
set -euo pipefail
cd "$(dirname "$0")/../.."
side="${1:?usage: pr1493_pair.sh pgolf|record [pgolf bench options]}"; shift
source benchmarks/gpu/device_env.sh
plugins="shuffled_loader,fused_mlp,partial_rope,ln_scale,xsa,skip_gates,parallel_residuals,depth_recurrence,orthoinit"
plugins+=",muon_eq_r,weight_decay,warmdown_frac,ema,gptq,brotli,score_first_ttt,code_wrapper"
plugins+=",auto_micro_batch,fused_ce,inductor_options"
out="${OUT:-.}"
python -m pgolf bench --recipe recipes/pr1493.toml --plugins "$plugins" --steps 50 --log-every 5 \
    --vs .g5/pr1493_train_gpt.py --data .gdata/sp8192 --set core.attention=cudnn --profile-steps 0 \
    --side "$side" --json "$out/$side.json" "$@" 2>&1 | tee "$out/$side.log"
