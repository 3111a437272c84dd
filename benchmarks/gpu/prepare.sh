#!/usr/bin/env bash
# Prepare this checkout for the README's GPU comparisons on a device machine that has no internet: natural-text
# data (man pages), the records' own train_gpt.py, and wheels the device lacks. Idempotent; from the repo root:
#     bash benchmarks/gpu/prepare.sh            # ~3 min on 2 cores the first time
# Then carry what a call needs (".whl", ".g5", ".gdata/<set>") and start the device command with
#     source benchmarks/gpu/device_env.sh && python -m pgolf bench ... --vs .g5/pr315_train_gpt.py --data .gdata/sp1024s
# The three folders are git-ignored locally (.git/info/exclude), never committed. Between two calls on a warm
# machine the device kept /tmp (session 22); a folder only .git/info/exclude ignores was cleared there, so
# bench_out/ (where `--side record` finds the earlier `--side pgolf` result) is in .gitignore, which the device's
# rule for ignored build outputs should follow (not yet seen on a device).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")" .gdata .g5 .whl
for d in /.gdata/ /.g5/ /.whl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done

corpus="${PGOLF_CACHE:-$HOME/.cache/pgolf}/man.jsonl"  # 39 MB: kept out of the carried folders
mkdir -p "$(dirname "$corpus")"
[ -s "$corpus" ] || python benchmarks/manpage_corpus.py --out "$corpus" --every 3
build() {  # name, then pgolf data build options
    [ -d ".gdata/$1" ] || python -m pgolf data build "$corpus" "${@:2}" --out ".gdata/$1"
}
build sp1024s --vocab 1024 --max-train-tokens 6000000                          # PR #315 / #534 / #609
build sp8192 --vocab 8192 --max-train-tokens 7100000                           # PR #1493
build caseops8192s --vocab 8192 --plugins caseops --max-train-tokens 6000000   # PR #1855

for p in pr315 pr534 pr609 pr1493 pr1855; do  # from the parameter-golf git mirror (the `fetch` tool makes it)
    [ -s ".g5/${p}_train_gpt.py" ] || python -m pgolf bench --profile "$p" --extract-record ".g5/${p}_train_gpt.py"
done

# the device's Python (3.12, torch preinstalled) lacks these; binary wheels only, no dependencies resolved there
python -m pip download -q --no-deps --only-binary=:all: --dest .whl --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    zstandard brotli jsonschema jsonschema-specifications referencing rpds-py attrs python-minifier

# quack-kernels for `fused_mlp.backend = "quack"` (opt-in: PGOLF_QUACK=1): its wheels and nvidia-cutlass-dsl's, whose
# cu13 library wheel (92 MB) is repacked as one xz stream with the x86 branch filter (52 MB) so that one call carries
# it (.q, 61 MB; without .gdata: the data travel in a later call, /tmp/qsite stays on a warm machine)
if [ "${PGOLF_QUACK:-0}" = 1 ] && [ ! -s .q/cu13.tar.xz ]; then
    grep -qxF /.q/ "$exclude" || echo /.q/ >> "$exclude"
    mkdir -p .q && tmp="$(mktemp -d)"
    python -m pip download -q --no-deps --only-binary=:all: --dest "$tmp" --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
        nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi torch-c-dlpack-ext
    (cd "$tmp" && mkdir cu13 && unzip -q nvidia_cutlass_dsl_libs_cu13-*.whl -d cu13 && rm nvidia_cutlass_dsl_libs_cu13-*.whl)
    tar cf - -C "$tmp/cu13" . | xz --x86 --lzma2=preset=9e,dict=192MiB -T1 > .q/cu13.tar.xz
    mv "$tmp"/*.whl .q/ && rm -rf "$tmp"
fi
du -sh .gdata/* .g5 .whl
