# syntax=docker/dockerfile:1
# vramkeeper's two images, from one build:
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

# The toolchain the workspace is tested with (rust-version in Cargo.toml is the minimum).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG CUDA_VERSION=13.0.0
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04
ARG CUDA_BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04
ARG OPERATOR_BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- build: both binaries, release profile, the lock file as committed ----
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# cudarc binds the CUDA driver API at run time; .cargo/config.toml pins the version (13.0).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vramkeeper-node-agent -p vramkeeper-operator \
 && mkdir -p /out \
 && cp target/release/vramkeeper-agent target/release/vramkeeper-operator /out/

# ---- NVRTC and the CUDA headers, from the devel image ----
FROM ${CUDA_DEVEL_IMAGE} AS cuda
# include is a symlink into targets/<arch>/: copy what it points at. The libraries keep their
# relative symlinks (libnvrtc.so.13 -> libnvrtc.so.13.0.x).
RUN mkdir -p /out/lib /out/include \
 && cp -a /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda/lib64/libnvrtc-builtins.so* /out/lib/ \
 && cp -rL /usr/local/cuda/include/. /out/include/

# ---- the node agent ----
FROM ${CUDA_BASE_IMAGE} AS agent
COPY --from=cuda /out/lib/ /opt/vramkeeper/cuda/lib/
COPY --from=cuda /out/include/ /opt/vramkeeper/cuda/include/
COPY --from=build /out/vramkeeper-agent /usr/local/bin/vramkeeper-agent
# cubecl finds the headers through CUDA_PATH; cudarc finds NVRTC through the loader path.
# NVIDIA's runtime reads NVIDIA_DRIVER_CAPABILITIES: NVML needs `utility`, kernels `compute`.
ENV CUDA_PATH=/opt/vramkeeper/cuda \
    LD_LIBRARY_PATH=/opt/vramkeeper/cuda/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VRAMKEEPER_LISTEN=0.0.0.0:8470
# The chart runs it as 65532 with a read-only root filesystem; state and cache are volumes.
USER 65532:65532
EXPOSE 8470
ENTRYPOINT ["/usr/local/bin/vramkeeper-agent"]

# ---- the operator: no GPU libraries, a distroless base ----
FROM ${OPERATOR_BASE_IMAGE} AS operator
COPY --from=build /out/vramkeeper-operator /usr/local/bin/vramkeeper-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vramkeeper-operator"]
