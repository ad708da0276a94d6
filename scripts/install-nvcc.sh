#!/usr/bin/env bash
# Install a CUDA compiler without a CUDA toolkit: NVIDIA's pip wheels
# (nvidia-cuda-nvcc: nvcc, ptxas, the cuda_runtime / cuda_bf16 headers;
# nvidia-cuda-cccl: the C++ core library headers) into a venv. Enough for
# `cargo build --features cuda`, which only compiles kernels/*.cu to PTX and
# cubins: no GPU, driver or libcudart is needed at build time.
#
#   bash scripts/install-nvcc.sh            # venv at ~/.cache/padv/nvcc-venv
#   PADV_NVCC_VENV=/opt/nvcc bash scripts/install-nvcc.sh
#
# The last line printed is `export NVCC=...`; build.rs also finds the default
# venv on its own. Re-running is cheap (a present nvcc is reused).
#
# CUDA_PIP_SERIES picks the toolkit release (default 13.0). The oldest 13.x is
# the default on purpose: its PTX (ISA 9.0) is JIT-compiled by every CUDA 13
# driver (R580+), and cubins from it load on all of them, whereas a 13.5 nvcc
# emits PTX that a 13.0 driver rejects. All five wheels are pinned to the
# series, because nvcc's own dependencies (nvvm, crt) are otherwise resolved
# to the newest release and mix versions.
set -euo pipefail

venv="${PADV_NVCC_VENV:-$HOME/.cache/padv/nvcc-venv}"
python="${PYTHON:-python3}"

find_nvcc() {
  find "$venv" -path '*/site-packages/nvidia/*' -name nvcc -type f 2>/dev/null | head -n 1
}

nvcc="$(find_nvcc || true)"
if [[ -z "$nvcc" ]]; then
  echo "install-nvcc: creating $venv" >&2
  "$python" -m venv "$venv"
  series="${CUDA_PIP_SERIES:-13.0}"
  pins=()
  for pkg in nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl; do
    pins+=("$pkg~=$series.0")
  done
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2
  nvcc="$(find_nvcc || true)"
fi
if [[ -z "$nvcc" || ! -x "$nvcc" ]]; then
  echo "install-nvcc: no nvcc found under $venv after installing" >&2
  exit 1
fi
"$nvcc" --version | tail -n 2 >&2
echo "export NVCC=$nvcc"
