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
# CUDA_PIP_VERSION pins the wheels (e.g. 13.0.88); default: the newest 13.x.
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
  if [[ -n "${CUDA_PIP_VERSION:-}" ]]; then
    pins=("nvidia-cuda-nvcc==${CUDA_PIP_VERSION}" "nvidia-cuda-runtime==${CUDA_PIP_VERSION}")
  else
    pins=("nvidia-cuda-nvcc>=13,<14" "nvidia-cuda-runtime>=13,<14")
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "${pins[@]}" "nvidia-cuda-cccl>=13,<14" >&2
  nvcc="$(find_nvcc || true)"
fi
if [[ -z "$nvcc" || ! -x "$nvcc" ]]; then
  echo "install-nvcc: no nvcc found under $venv after installing" >&2
  exit 1
fi
"$nvcc" --version | tail -n 2 >&2
echo "export NVCC=$nvcc"
