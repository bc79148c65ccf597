#!/usr/bin/env bash
# Produce the wheel set the GPU run carries (tools/gpu/README.md), from the repository root:
#   tools/gpu/make_wheels.sh          # download exactly tools/gpu/wheels.txt into .whl/ (hash-checked), then check it
#   tools/gpu/make_wheels.sh --lock   # first re-resolve requirements.txt for cp312 manylinux and rewrite the lock
# Needs network to PyPI; the device machine has none.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python3}"
if [[ "${1:-}" == "--lock" ]]; then
    "$PYTHON" tools/gpu/wheels.py lock
fi
"$PYTHON" tools/gpu/wheels.py fetch
"$PYTHON" tools/gpu/wheels.py check
