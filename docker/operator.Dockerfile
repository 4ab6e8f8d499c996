# syntax=docker/dockerfile:1
# The operator image: a static-ish Rust binary on distroless, running as the nonroot user (65532)
# that the chart's securityContext expects. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/sapllm/sapllm-operator:0.1.0 .
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sapllm-operator \
 && install -D target/release/sapllm-operator /out/sapllm-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sapllm-operator /usr/local/bin/sapllm-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sapllm-operator"]
