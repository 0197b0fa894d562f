#!/usr/bin/env bash
# Sourced on the GPU machine: makes NVRTC and the CUDA headers findable for burn's CUDA backend
# (cudarc loads libnvrtc at run time; cubecl compiles kernels against $CUDA_PATH/include).
if ! ldconfig -p | grep -q 'libnvrtc.so'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, q, "lib") for p in nvidia.__path__ for q in os.listdir(p)))' 2>/dev/null); do
    if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; break; fi
  done
fi
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
