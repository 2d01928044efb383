# syntax=docker/dockerfile:1
# Image of streamspace-controller: one binary (controller, api, ...) at
# /usr/local/bin/streamspace-controller, run as the non-root user 65532. The Helm chart
# (charts/streamspace-controller) runs it with a read-only root filesystem.
#
#   docker build -t ghcr.io/streamspace/streamspace-controller:0.1.0 .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# libgit2 and libssh2 are built from bundled sources; they link the system OpenSSL and zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Commit recorded in the binary (--version, build-info metric); the build context has no .git.
ARG STREAMSPACE_COMMIT=unknown
ENV STREAMSPACE_COMMIT=${STREAMSPACE_COMMIT}
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY manifests-schema ./manifests-schema
COPY assets ./assets
COPY dev/rbac ./dev/rbac
# Scripts the binary embeds (the local control plane of `dev`).
COPY scripts ./scripts
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin streamspace-controller \
 && install -D -m 0755 target/release/streamspace-controller /out/streamspace-controller

# Runtime: glibc, libgcc, OpenSSL 3, zlib and CA certificates: what the binary links
# (`ldd target/release/streamspace-controller`) plus the trust store for https Git remotes.
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
COPY --from=build /out/streamspace-controller /usr/local/bin/streamspace-controller
USER 65532:65532
# controller: 8080 http (health, metrics), 8081 Git push hooks, 8443 webhooks; api: 8000.
EXPOSE 8000 8080 8081 8443
ENTRYPOINT ["/usr/local/bin/streamspace-controller"]
CMD ["controller"]
