#!/usr/bin/env bash
# Every CUDA check and benchmark of optspec in one time-boxed device call; see tools/gpu/README.md.
#
#   tools/gpu/run.sh              # on the device machine, from the repository root ($OUT set by the device tool)
#   tools/gpu/run.sh --dry-run    # on a CPU machine (CI): every step that needs no GPU, in a copy of the tree
#
# Options: --budget SECONDS (device 420, dry run 240); for a rerun --skip tests|asv and
# --asv-phases 'metric:impl,...' (the summary prints the command); --kernel-cache DIR; --out DIR
# (dry run); --allow-no-gpu (walk the device path on a CPU machine: a rehearsal, everything GPU skips).
# The work is done by gpu_run.py (standard library only): this wrapper picks the interpreter,
# PYTHON or python3 (on the device the one that has torch, jax and optax).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_run.py" "$@"
