# The sluice image: sluice-operator, sluice-processor and sluice-function-runner on Debian
# bookworm, run as the non-root user 65532. For builds with Docker, Buildah, Kaniko or podman, from
# the repository's root:
#
#   docker build -f images/sluice.Dockerfile -t ghcr.io/sluice-dev/sluice:0.1.0 .
#
# images/build.sh makes the same contents without a daemon (the same Debian packages, from
# images/sluice.packages, and the same binaries).

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-operator -p sluice-processor -p sluice-function-runner \
 && mkdir -p /out \
 && cp target/release/sluice-operator target/release/sluice-processor target/release/sluice-function-runner /out/

FROM debian:bookworm-slim
COPY images/sluice.packages /tmp/packages
RUN apt-get update \
 && grep -v '^#' /tmp/packages | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/packages \
 && echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'nonroot:x:65532:' >>/etc/group \
 && mkdir -p /home/nonroot /var/lib/sluice && chown 65532:65532 /home/nonroot /var/lib/sluice
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
WORKDIR /home/nonroot
# The chart and the operator name the binary to run (command: [sluice-operator] etc.).
CMD ["sluice-operator", "--help"]
