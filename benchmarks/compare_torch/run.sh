#!/usr/bin/env bash
# ctrjax against DeepCTR-Torch and torch-rechub, side by side (training samples/s, test AUC/logloss).
#   benchmarks/compare_torch/run.sh [--rows 200000] [--models din,deepfm] [--repeats 3] [--help]
# Builds the torch venv cache/torch-venv on first use (Python 3.11: the CPU wheel of torch 2.13.0 on
# this machine's disk is cp311), then runs benchmarks.compare_torch.run with ctrjax's .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV=cache/torch-venv
REQ=benchmarks/compare_torch/requirements.txt

if ! cmp -s "$REQ" "$VENV/.installed" 2>/dev/null; then
  if ! command -v python3.11 >/dev/null 2>&1; then
    echo "compare_torch: needs python3.11 for the torch 2.13.0 CPU wheel; none on PATH" >&2
    exit 1
  fi
  echo "compare_torch: building $VENV (torch 2.13.0 CPU, deepctr-torch 0.3.0, torch-rechub 0.9.0)" >&2
  python3.11 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r "$REQ"
  cp "$REQ" "$VENV/.installed"
fi
./run.sh --help >/dev/null   # creates ctrjax's .venv on first use
exec .venv/bin/python -m benchmarks.compare_torch.run --torch_python "$VENV/bin/python" "$@"
