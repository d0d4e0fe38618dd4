#!/usr/bin/env bash
# Builds `smartbin` with the `cuda` feature using the CUDA 13.4 toolchain and
# libraries from PyPI wheels: no system CUDA toolkit, and no GPU or driver on the
# build machine (a workstation image, CI, a cross-build host).
#
#   tools/build-cuda.sh [COMPUTE_CAP]      # e.g. 80 (A100), 86 (RTX 30xx), 89 (RTX 40xx), 90 (H100/H200)
#
# For the x86-64 host it runs on. A Jetson builds on the board with JetPack's CUDA.
#
# The binary is target/cuda/release/smartbin. It links against the driver
# (libcuda.so.1), cuBLAS, cuRAND and the CUDA runtime: on the GPU machine the
# driver brings libcuda.so.1, and the others come from a CUDA install or from
# LD_LIBRARY_PATH=$VENV/lib/python3.*/site-packages/nvidia/cu13/lib.
#
# Why the stub: Candle 0.11 turns on cudarc's `dynamic-linking`, so the linker
# wants libcuda.so, which only a GPU driver installs; no wheel ships it. The stub
# built here has every entry point cudarc binds, each returning
# CUDA_ERROR_STUB_LIBRARY; it is for linking only and never installed.
set -euo pipefail
cd "$(dirname "$0")/.."

CAP=${1:-${CUDA_COMPUTE_CAP:-80}}
VENV=${CUDA_VENV:-target/cuda-venv}
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
# nvcc 13.4: cudarc 0.19.10 reads `nvcc --version` and knows CUDA up to 13.4.
"$VENV/bin/pip" install -q nvidia-cuda-nvcc==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-cuda-runtime==13.4.92 \
  nvidia-nvvm==13.4.92 nvidia-cuda-nvrtc==13.4.92 nvidia-cuda-cccl==13.3.5.0.6 \
  nvidia-cublas==13.10.0.20 nvidia-curand==10.4.5.25
CUDA_HOME=$(cd "$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')/nvidia/cu13" && pwd)

# The wheels ship versioned names only (libcublas.so.13); `-lcublas` needs plain ones.
LINK=$(mkdir -p "$VENV/cuda-link" && cd "$VENV/cuda-link" && pwd)
for n in cublas cublasLt cudart nvrtc; do ln -sf "$CUDA_HOME/lib/lib$n.so.13" "$LINK/lib$n.so"; done
ln -sf "$CUDA_HOME/lib/libcurand.so.10" "$LINK/libcurand.so"

CUDARC=$(cargo metadata --features cuda --format-version 1 | "$VENV/bin/python" -c \
  'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$(dirname "$CUDARC")/src/driver/sys/mod.rs" \
  | sed -E 's/pub unsafe fn (.*)\(/int \1(void) { return 34; }/' | sort -u > "$LINK/libcuda_stub.c"
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda_stub.c"

export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" LIBRARY_PATH="$LINK${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=$CAP CARGO_TARGET_DIR=target/cuda
cargo build --release --features cuda
echo "built target/cuda/release/smartbin for compute capability $CAP"
