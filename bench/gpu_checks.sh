#!/usr/bin/env bash
# Every GPU check in one run (under 5 minutes on one GPU): bench/gpu.py on the device, all sections.
# The output also goes to $OUT/gpu_checks.txt when OUT is set.
#
#   bench/gpu_checks.sh                        # cuda
#   DEVICE=cpu bench/gpu_checks.sh --tiny      # the same paths on a CPU, in seconds
#   bench/gpu_checks.sh --skip-e2e             # without the server stack
#
# The device: DEVICE (default cuda), passed on as bench/gpu.py's --device; a --device given here wins. The
# Python (torch and the project's dependencies): PYTHON, else the checkout's .venv/bin/python (`make` makes
# it), else python3; e.g. PYTHON=python3 bench/gpu_checks.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
log=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && log="$OUT/gpu_checks.txt"; fi
timeout 290 "${PYTHON:-$python}" bench/gpu.py --device "${DEVICE:-cuda}" "$@" 2>&1 | tee "$log"
