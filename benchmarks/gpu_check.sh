#!/usr/bin/env bash
# GPU check: every method for one short epoch with --device cuda (Synthetic-MVD and the test fixtures), a bf16 AMP
# check and the benchmarks at reduced sizes, written to one Markdown report (about 5-8 minutes on one GPU).
# Without CUDA it says so in one line and exits 2. Options are those of benchmarks/gpu_check.py (--help).
#   benchmarks/gpu_check.sh [--report gpu_check.md]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
