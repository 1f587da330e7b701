#!/usr/bin/env bash
# The GPU checks and benchmark, on a machine with an NVIDIA GPU (CUDA 13 driver): `make bench-gpu`.
#  1. tests/gpu.rs with the CUDA path live (GPU vs CPU preprocessing, CUDA vs CPU rows, fp16);
#  2. benches/gpu.py (ResNet-50-shaped parity and images/s against onnxruntime-gpu's ceiling).
# ONNX Runtime's CUDA build comes from the onnxruntime-gpu wheel with its CUDA 13 and cuDNN 9
# libraries, installed into .venv-gpu. Where nothing can be downloaded, point ORT_GPU_SITE at a
# folder holding the wheel's `onnxruntime` package and NVIDIA_LIBS at a site-packages/nvidia folder
# with cu13/lib and cudnn/lib (how the README's figures were taken on a lent machine).
# Extra arguments go to benches/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ -z "${ORT_GPU_SITE:-}" ]]; then
  if [[ ! -x .venv-gpu/bin/python ]]; then
    "$PY" -m venv .venv-gpu
    .venv-gpu/bin/pip install -q 'onnxruntime-gpu[cuda,cudnn]==1.31.1' numpy pillow onnx
  fi
  PY=.venv-gpu/bin/python
  ORT_GPU_SITE=$("$PY" -c 'import onnxruntime, os; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))')
  NVIDIA_LIBS=${NVIDIA_LIBS:-$ORT_GPU_SITE/nvidia}
else
  export PYTHONPATH=$ORT_GPU_SITE${PYTHONPATH:+:$PYTHONPATH}
  : "${NVIDIA_LIBS:?set NVIDIA_LIBS to a site-packages/nvidia folder (cu13/lib, cudnn/lib)}"
fi
export LD_LIBRARY_PATH=$NVIDIA_LIBS/cu13/lib:$NVIDIA_LIBS/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ORT_DYLIB_PATH=$ORT_GPU_SITE/onnxruntime/capi/libonnxruntime.so.1.31.1
export SPOTBATCH_PYTHON=$PY
BIN=${SPOTBATCH_BIN:-target/release/spotbatch}
TEST=${SPOTBATCH_GPU_TEST:-$(ls -t target/release/deps/gpu-* | grep -v '\.d$' | head -n 1)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [[ "${GPU_TESTS:-1}" == 1 ]]; then
  echo "== cargo test --test gpu (release build: $TEST)"
  "$TEST" --nocapture --test-threads=1
fi
echo "== benches/gpu.py"
PYTHONUNBUFFERED=1 "$PY" benches/gpu.py --spotbatch "$BIN" "$@"
