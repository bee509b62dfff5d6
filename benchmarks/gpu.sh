#!/usr/bin/env bash
# The headline row on CUDA, regions sharing one GPU (benchmarks/suites/gpu.yaml), in a few minutes.
#   bash benchmarks/gpu.sh            # writes benchmarks/GPU.md (a section for RESULTS.md) and runs/bench-gpu/
# Needs an NVIDIA GPU with its driver, and the Fashion-MNIST IDX files (apt-get install
# dataset-fashion-mnist, $CODISTILL_DATA_DIR, or a network). Installs into .venv-gpu: this
# project, and a CUDA build of torch unless the interpreter's torch already sees a GPU.
# TORCH_INDEX picks the CUDA wheel index (default: PyTorch's CUDA 12.6 builds).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu126}
OUT=${OUT:-runs/bench-gpu}

command -v nvidia-smi >/dev/null || { echo "gpu.sh: nvidia-smi not found: this machine has no NVIDIA driver" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu.sh: installing a CUDA build of torch from $TORCH_INDEX"
  "$PY" -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX"
fi
"$PY" -m pip install -q -e .
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "torch sees no GPU after the install"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

start=$(date +%s)
"$PY" -m codistill bench benchmarks/suites/gpu.yaml --out "$OUT" --report benchmarks/GPU.md
echo "gpu.sh: done in $(( $(date +%s) - start )) s; benchmarks/GPU.md names the device in its Machine line"
