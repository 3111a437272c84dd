# Source on the device machine, in the carried checkout: installs the carried wheels (benchmarks/gpu/prepare.sh)
# into /tmp/site and puts them and this checkout on PYTHONPATH (`python -m pgolf ...` then runs this tree).
python -m pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "device_env: wheel install failed" >&2
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null || true
# quack-kernels (prepare.sh with PGOLF_QUACK=1, `.q` carried): installed once into /tmp/qsite, which a warm machine keeps
if [ -s .q/cu13.tar.xz ] && [ ! -d /tmp/qsite/quack ]; then
    mkdir -p /tmp/qsite && python -m pip install -q --no-deps --no-index --target /tmp/qsite .q/*.whl >/dev/null 2>&1 &&
        xz -d < .q/cu13.tar.xz | tar xf - -C /tmp/qsite || echo "device_env: quack install failed" >&2
fi
[ -d /tmp/qsite/quack ] && export PYTHONPATH="/tmp/qsite:/tmp/qsite/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH"
true
