# syntax=docker/dockerfile:1
# vramkeeper's two images, each from its own build stage (the operator's compiles no agent):
#   docker build --target agent    -t ghcr.io/vramkeeper/vramkeeper-agent:0.1.0 .
#   docker build --target operator -t ghcr.io/vramkeeper/vramkeeper-operator:0.1.0 .
# The Helm chart (charts/vramkeeper) runs them as agent.image and operator.image.
#
# The agent's CUDA backend loads the driver (libcuda, libnvidia-ml) at run time: NVIDIA's
# container runtime mounts those from the node. What the image must bring itself is NVRTC
# (libnvrtc.so.13, which compiles the kernels) and the CUDA headers the kernels include
# ($CUDA_PATH/include, with CCCL under include/cccl). Both are taken from NVIDIA's CUDA 13
# devel image onto its small `base` image, instead of shipping the whole toolkit. Without a GPU
# the same image serves on the CPU.
#
# Requirements on GPU nodes: an NVIDIA driver of branch R580 or newer (CUDA 13.0) and a GPU of
# compute capability 7.5 or newer (Turing and later; CUDA 13 dropped Maxwell, Pascal, Volta).
#
# Why the whole include tree: the kernels cubecl generates include <cuda_runtime.h>,
# <cuda_fp16.h>, <cuda_bf16.h>, <cuda_fp8.h>, <cuda_fp6.h>, <cuda_fp4.h>, <mma.h>,
# <cooperative_groups.h> (and cooperative_groups/memcpy_async.h), and CCCL's <cuda/barrier>,
# <cuda/pipeline>, <cuda/ptx>; which of them a kernel needs depends on the model's dtype and
# the GPU's architecture (chosen at run time), and cuda_runtime.h alone pulls in most of the
# top-level headers (crt/, driver and vector types) while the CCCL ones pull in libcu++. No
# smaller set has been verified against every kernel on a real GPU, and a missing header
# fails only at the first load of a model on a GPU, so the tree is copied whole (as NVRTC
# finds it through CUDA_PATH) rather than guessed at. Measured on an H100 (2026-11-27, a fresh
# kernel cache, f32 and f16 synthetic models): those kernels opened 6 files, 640 KiB, of the
# 34 MiB tree (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h, mma.h, crt/mma.h, crt/mma.hpp; NVRTC
# has the rest built in); the other dtypes and architectures were not measured.

# The toolchain the workspace is tested with (rust-version in Cargo.toml is the minimum).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG CUDA_VERSION=13.0.0
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04
ARG CUDA_BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04
ARG OPERATOR_BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
# The commit the image is built from (docker build --build-arg REVISION=$(git rev-parse HEAD)).
ARG REVISION=unknown

# ---- build the agent: release profile, the lock file as committed ----
FROM ${RUST_IMAGE} AS build-agent
WORKDIR /src
COPY . .
# cudarc binds the CUDA driver API at run time; .cargo/config.toml pins the version (13.0).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=vramkeeper-target-agent \
    cargo build --release --locked -p vramkeeper-node-agent \
 && mkdir -p /out \
 && objcopy --only-keep-debug target/release/vramkeeper-agent /out/vramkeeper-agent.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/out/vramkeeper-agent.debug \
      target/release/vramkeeper-agent /out/vramkeeper-agent
# The release profile keeps line tables (326 MB, almost all of it DWARF of the dependencies);
# the image gets the binary without them (51 MB; symbols kept, so backtraces name functions)
# and the line tables stay in this stage as vramkeeper-agent.debug, linked by
# .gnu_debuglink: `docker build --target build-agent` and copy it out to turn an address of
# a crash into file:line (addr2line -e vramkeeper-agent.debug, or gdb beside the binary).

# ---- build the operator alone: no agent, no burn, no CUDA bindings compiled ----
FROM ${RUST_IMAGE} AS build-operator
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=vramkeeper-target-operator \
    cargo build --release --locked -p vramkeeper-operator \
 && mkdir -p /out \
 && cp target/release/vramkeeper-operator /out/

# ---- NVRTC and the CUDA headers, from the devel image ----
FROM ${CUDA_DEVEL_IMAGE} AS cuda
# include is a symlink into targets/<arch>/: copy what it points at. The libraries keep their
# relative symlinks (libnvrtc.so.13 -> libnvrtc.so.13.0.x).
RUN mkdir -p /out/lib /out/include \
 && cp -a /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda/lib64/libnvrtc-builtins.so* /out/lib/ \
 && cp -rL /usr/local/cuda/include/. /out/include/

# ---- the node agent ----
FROM ${CUDA_BASE_IMAGE} AS agent
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="vramkeeper-agent" \
      org.opencontainers.image.description="vramkeeper's node agent: runs models in worker processes, measures what each really costs on the GPU, finds and frees ghost memory" \
      org.opencontainers.image.source="https://github.com/vramkeeper/vramkeeper" \
      org.opencontainers.image.url="https://github.com/vramkeeper/vramkeeper" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=cuda /out/lib/ /opt/vramkeeper/cuda/lib/
COPY --from=cuda /out/include/ /opt/vramkeeper/cuda/include/
COPY --from=build-agent /out/vramkeeper-agent /usr/local/bin/vramkeeper-agent
# cubecl finds the headers through CUDA_PATH; cudarc finds NVRTC through the loader path.
# LD_LIBRARY_PATH is appended to: the base image's entries (/usr/local/nvidia/lib and lib64,
# where GKE's device plugin mounts the driver) must stay. NVIDIA's base images always set it.
# NVIDIA's runtime reads NVIDIA_DRIVER_CAPABILITIES: NVML needs `utility`, kernels `compute`.
ENV CUDA_PATH=/opt/vramkeeper/cuda \
    LD_LIBRARY_PATH=${LD_LIBRARY_PATH}:/opt/vramkeeper/cuda/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VRAMKEEPER_LISTEN=0.0.0.0:8470
# The chart runs it as 65532 with a read-only root filesystem; state and cache are volumes.
USER 65532:65532
EXPOSE 8470
ENTRYPOINT ["/usr/local/bin/vramkeeper-agent"]

# ---- the operator: no GPU libraries, a distroless base ----
FROM ${OPERATOR_BASE_IMAGE} AS operator
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="vramkeeper-operator" \
      org.opencontainers.image.description="vramkeeper's operator: reconciles which model each GPU serves through GpuModel objects" \
      org.opencontainers.image.source="https://github.com/vramkeeper/vramkeeper" \
      org.opencontainers.image.url="https://github.com/vramkeeper/vramkeeper" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build-operator /out/vramkeeper-operator /usr/local/bin/vramkeeper-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vramkeeper-operator"]
