#!/usr/bin/env bash
# Set up thinkrl in ./.venv (idempotent): PyTorch first, the CPU build where there is no GPU
# (torch==2.13.0, which pip takes from this machine's disk), the CUDA build where there is
# one; then thinkrl itself with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found, installing the CUDA build of PyTorch"
    quiet "${PIP[@]}" torch
  else
    echo "setup: no GPU, installing the CPU build of PyTorch (torch==2.13.0)"
    quiet "${PIP[@]}" torch==2.13.0
  fi
fi
quiet "${PIP[@]}" -e ".[dev]"
echo "setup: ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
