# syntax=docker/dockerfile:1
# The worker image: `sapllm-worker` runs every stage Job, the evaluate Job and the serving pods.
# It runs as UID/GID 10001 (the operator's worker pods set runAsUser 10001 and fsGroup 10001 so
# the artifact volume is writable) with a read-only root filesystem; /tmp is an emptyDir.
#
# CPU build (default):
#   docker build -f docker/worker.Dockerfile -t ghcr.io/sapllm/sapllm-worker:0.1.0 .
# CUDA build (candle's cuda feature; needs the CUDA toolkit in the build stage):
#   docker build -f docker/worker.Dockerfile \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg CARGO_FEATURES=cuda -t ghcr.io/sapllm/sapllm-worker:0.1.0-cuda .
# CUDA_COMPUTE_CAP is the GPU generation the kernels are compiled for (80: A100 and newer run
# them; 90 builds sm_90a, which only H100/H200 run). The build has no GPU to ask.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${BUILD_IMAGE} AS build
ARG CARGO_FEATURES=""
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
# The CUDA images carry no Rust toolchain.
RUN command -v cargo >/dev/null || (apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95)
ENV PATH=/root/.cargo/bin:/usr/local/cargo/bin:${PATH}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sapllm-worker ${CARGO_FEATURES:+--features ${CARGO_FEATURES}} \
 && install -D target/release/sapllm-worker /out/sapllm-worker

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 sapllm && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sapllm
COPY --from=build /out/sapllm-worker /usr/local/bin/sapllm-worker
USER 10001:10001
ENV HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sapllm-worker"]
