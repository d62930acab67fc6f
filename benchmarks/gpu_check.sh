#!/usr/bin/env bash
# GPU check (issue 23, item 4), for a lent GPU machine: from the repository root, after `pip install -e .`,
#
#     bash benchmarks/gpu_check.sh "$OUT" [gpu_check.py options, e.g. --budget 300 or --cpu]
#
# runs benchmarks/gpu_check.py under a hard time limit (GPU_CHECK_LIMIT_S, default 580 s: the
# script's own budget is 540 s), writes OUT/gpu_check.json, OUT/gpu_check.md and OUT/gpu_check.log,
# and exits with the script's status (0 all stages ran, 1 a stage failed, 124 the hard limit hit).
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python, else python3).
set -u
if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]" >&2
    exit 2
fi
out=$1
shift
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac  # relative to where it was called from
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-}
if [ -z "$py" ]; then
    for candidate in .venv/bin/python python python3; do
        if command -v "$candidate" >/dev/null 2>&1; then py=$candidate; break; fi
    done
fi
if [ -z "$py" ]; then
    echo "gpu_check.sh: no python found (set PYTHON)" >&2
    exit 2
fi
limit=${GPU_CHECK_LIMIT_S:-580}
mkdir -p "$out" || exit 2
timeout --signal=TERM --kill-after=20 "$limit" "$py" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 \
    | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check.sh: stopped by the ${limit} s limit; $out/gpu_check.json holds the stages that finished" >&2
fi
exit "$rc"
