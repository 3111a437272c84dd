# Source on the device machine, in the carried checkout: installs the carried wheels (benchmarks/gpu/prepare.sh)
# into /tmp/site and puts them and this checkout on PYTHONPATH (`python -m pgolf ...` then runs this tree).
python -m pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "device_env: wheel install failed" >&2
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null || true
