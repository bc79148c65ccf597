#!/usr/bin/env bash
# Run the GPU benchmark subset on a CUDA machine and store the results under
# asv_bench/results/<machine>/, where <machine> names the GPU (e.g. gpu-nvidia-h200), ready to
# be committed. NOT RUN YET: no GPU was available when this script was written; it is
# correct by inspection only.
#
# Usage (from anywhere):
#   asv_bench/run_gpu.sh                 # the current environment, recorded at HEAD
#   asv_bench/run_gpu.sh HEAD~5..HEAD    # build and run each commit in asv's own environments
#
# Needs: nvidia-smi; git; a Python (PYTHON, default python3) with asv and optspec[torch,jax]
# installed with CUDA builds (torch from the default PyPI index, jax as jax[cuda13]), so that
# torch.cuda.is_available() and jax.devices() show the GPU. On the workplace's device machine
# (no network, no asv, the tree without .git) use tools/gpu/run.sh instead: it carries asv as
# wheels, runs the 64M subset and the GPU conformance tests in one time-boxed call.
# Scope: GPU_BENCH (a regex) overrides the default subset below. The full default subset is
# about 2,500 benchmark processes (rules x 6 implementations x 4 sets x 2 dtypes x 4 metrics);
# budget several hours, or narrow GPU_BENCH.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$HERE"

if ! command -v nvidia-smi >/dev/null; then
    echo "run_gpu.sh: nvidia-smi not found: this script is for a CUDA machine" >&2
    exit 2
fi
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | sed 's/ *$//')"
gpu_count="$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)"
gpu_memory="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader | head -n 1)"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)"
# e.g. "NVIDIA H200" -> gpu-nvidia-h200
machine="gpu-$(echo "$gpu_name" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
cpu_model="$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"

# The frameworks must see the GPU, or the numbers would be CPU numbers under a GPU's name.
"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("run_gpu.sh: torch.cuda.is_available() is False")
try:
    import jax
    platform = jax.devices()[0].platform
except Exception as exc:  # optax benchmarks will skip; torch ones still run
    print(f"run_gpu.sh: warning: JAX unusable ({exc}); optax.jit will skip")
else:
    if platform == "cpu":
        print("run_gpu.sh: warning: JAX sees no GPU (install jax[cuda12]); optax.jit will skip")
PY
export OPTSPEC_BENCH_REQUIRE_GPU=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false

"$PYTHON" -m asv machine --yes --machine "$machine" --os "$(uname -sr)" --arch "$(uname -m)" \
    --cpu "$cpu_model; ${gpu_count}x $gpu_name ($gpu_memory, driver $driver)" \
    --num_cpu "$(nproc)" --ram "$(free -g | awk '/^Mem:/ {print $2 "GB"}')"

Q="'"
SETS="(flat-64M|resnet50|gpt2-124M|many-small)"
DEFAULT_BENCH="^optimizer_step\\.[A-Za-z]+\\.[a-z_]+\\(${Q}[^${Q}]+${Q}, ${Q}[^${Q}]+${Q}, ${Q}${SETS}${Q}, ${Q}[^${Q}]+${Q}\\)"
BENCH="${GPU_BENCH:-$DEFAULT_BENCH}"

if [[ $# -gt 0 ]]; then
    # asv builds each commit in its own virtualenv (asv.conf.json) and installs optspec[torch,jax].
    "$PYTHON" -m asv run "$@" --machine "$machine" --launch-method spawn --show-stderr --bench "$BENCH"
else
    "$PYTHON" -m asv run --python=same --set-commit-hash "$(git -C "$REPO" rev-parse HEAD)" \
        --machine "$machine" --launch-method spawn --show-stderr --bench "$BENCH"
fi

echo "results: $HERE/results/$machine/ (commit them); update the README table with:"
echo "  $PYTHON $HERE/tools/readme_table.py --machine $machine --update $HERE/README.md"
