#!/usr/bin/env bash
# CI check of the asv suite, on a CPU-only machine, in about 2-4 minutes on 2 cores:
#
#   1. runs a small subset of the suite once (`asv run --python=same --quick`) in the current
#      Python environment, with a named machine (`asv machine --yes`), so it works
#      non-interactively on a fresh machine;
#   2. publishes the static dashboard (`asv publish`);
#   3. serves it from a localhost http server and loads it in headless Chromium, then checks
#      that graphs render with data (see check_dashboard.py for what counts as proof).
#
# Nothing is written inside the repository: the configuration, results, dashboard, machine
# file ($HOME is redirected) and Chromium profile live in a temporary directory, removed at
# exit (set KEEP=1 to keep it and print its path).
#
# Environment: PYTHON (default: python3 on PATH) must have optspec[torch,jax] and asv installed;
# CHROMIUM (default: chromium); CI_BENCH (a regex overriding the benchmark selection).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CHROMIUM="${CHROMIUM:-chromium}"
MACHINE="ci-cpu"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/optspec-asv-ci.XXXXXX")"
SERVER_PID=""

cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    if [[ "${KEEP:-0}" == "1" ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

start=$(date +%s)
export HOME="$WORK/home"
mkdir -p "$HOME"
# Small sizes only, one thread: the same settings the committed CPU results use.
export OPTSPEC_BENCH_CPU_MAX_NUMEL=$((1 << 20))
export OPTSPEC_BENCH_CPU_THREADS=1

# A copy of asv.conf.json that writes results and html under $WORK.
"$PYTHON" - "$HERE/asv.conf.json" "$WORK" "$REPO" <<'EOF'
import json, re, sys
from pathlib import Path

source, work, repo = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
text = "\n".join(line for line in source.read_text().splitlines() if not re.match(r"\s*//", line))
conf = json.loads(text)
conf.update(
    repo=str(repo),
    benchmark_dir=str(source.parent / "benchmarks"),
    results_dir=str(work / "results"),
    html_dir=str(work / "html"),
    env_dir=str(work / "env"),
)
(work / "asv.conf.json").write_text(json.dumps(conf, indent=2))
EOF
ASV=("$PYTHON" -m asv)
CONF=(--config "$WORK/asv.conf.json")

"${ASV[@]}" machine "${CONF[@]}" --yes --machine "$MACHINE" --os "$(uname -sr)" --arch "$(uname -m)" \
    --num_cpu "$(nproc)" >/dev/null

# The subset (15 benchmark processes): sgd (12 B/param) and adam (28) under every eager torch
# path and optax.jit for time_step; state bytes and the roofline ratio for adam (foreach,
# optax); one bf16-parameter/fp32-state run; GpuMemory and native-cuda, which must skip cleanly
# without a GPU. All on the flat 1M set. torch.compile is left out: compiling takes 30-60 s
# on two busy cores (the committed CPU results include it).
Q="'"
SET="${Q}flat-1M${Q}, ${Q}float32${Q}"
SELECTION=(
    "^optimizer_step\.Step\.time_step\(${Q}(sgd|adam)${Q}, ${Q}(torch\.for-loop|torch\.foreach|torch\.fused|optax\.jit)${Q}, $SET\)"
    "^optimizer_step\.(Step\.track_state_bytes|Roofline\.track_ratio)\(${Q}adam${Q}, ${Q}(torch\.foreach|optax\.jit)${Q}, $SET\)"
    "^optimizer_step\.Step\.time_step\(${Q}sgd\+momentum${Q}, ${Q}torch\.foreach${Q}, ${Q}flat-1M${Q}, ${Q}bf16-fp32state${Q}\)"
    "^optimizer_step\.GpuMemory\.track_peak_bytes\(${Q}adam${Q}, ${Q}torch\.foreach${Q}, $SET\)"
    "^optimizer_step\.Step\.time_step\(${Q}adam${Q}, ${Q}native-cuda${Q}, $SET\)"
)
BENCH=()
if [[ -n "${CI_BENCH:-}" ]]; then
    BENCH=(--bench "$CI_BENCH")
else
    for regex in "${SELECTION[@]}"; do BENCH+=(--bench "$regex"); done
fi

commit="$(git -C "$REPO" rev-parse HEAD)"
echo "== asv run (quick, CPU subset) at ${commit:0:8}"
"${ASV[@]}" run "${CONF[@]}" --python=same --quick --machine "$MACHINE" --set-commit-hash "$commit" \
    --show-stderr "${BENCH[@]}" >"$WORK/run.log" 2>&1 || { tail -n 200 "$WORK/run.log"; exit 1; }
# asv prints a table of every parameter combination; show only the ones that ran or skipped.
grep -E "^\[|For parameters|asv: skipped|Error|error|Traceback" "$WORK/run.log" | grep -v "n/a *$" || true
if grep -q "failed" "$WORK/run.log"; then
    echo "FAIL: a benchmark failed (see above)" >&2
    exit 1
fi

echo "== asv publish"
"${ASV[@]}" publish "${CONF[@]}" >/dev/null
# asv's page loads jQuery/flot/Bootstrap from CDNs; CI runners are often offline.
"$PYTHON" "$HERE/tools/localize_dashboard.py" "$WORK/html" >/dev/null

port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PYTHON" -m http.server "$port" --bind 127.0.0.1 --directory "$WORK/html" >"$WORK/http.log" 2>&1 &
SERVER_PID=$!

echo "== dashboard in headless Chromium on http://127.0.0.1:$port/"
"$PYTHON" "$HERE/tools/check_dashboard.py" --url "http://127.0.0.1:$port/" --html "$WORK/html" \
    --chromium "$CHROMIUM" --workdir "$WORK/chromium"

echo "== ci_check passed in $(($(date +%s) - start)) s"
