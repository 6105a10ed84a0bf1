# signalflow-gateway container image.
#
#   docker build -t signalflow-gateway .
#   docker run --rm -p 8080:8080 signalflow-gateway                      # against the built-in simulator
#   docker run --rm -p 8080:8080 -e SFGW_UPSTREAM__REALM=us1 \
#       -e SFGW_UPSTREAM__TOKEN signalflow-gateway                       # against Splunk Observability
#
# Only Cargo.toml, Cargo.lock, src/ and openapi.yaml are in the build context (see
# .dockerignore): the image builds from this repository alone, without ../shared.

# ---------------------------------------------------------------------------------------------
# Build stage. Pinned to a full Rust release (the toolchain the project is developed and tested
# with); bookworm, so the binary links against the same glibc as the runtime stage.
FROM rust:1.95.0-slim-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# Dependency caching: build the dependencies alone first, in a layer that depends only on
# Cargo.toml and Cargo.lock, so editing src/ does not rebuild them. A plain layer (not a BuildKit
# cache mount) so the cache also works with `--cache-from`/registry caches on CI builders that
# keep no local state. Cargo refuses a manifest whose targets are missing, hence the stubs: an
# empty library, an empty main, and an empty main for every [[bench]] named in Cargo.toml
# (benches are not built by `cargo build`, but the manifest must still resolve them).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk '/^\[\[bench\]\]/ { in_bench = 1; next } /^\[/ { in_bench = 0 } in_bench && $1 == "name" { gsub(/"/, "", $3); print $3 }' Cargo.toml \
       | while read -r bench; do echo 'fn main() {}' > "benches/${bench}.rs"; done \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. `touch` makes them newer than the stub build whatever mtime COPY gave them,
# so cargo rebuilds the crate instead of keeping the stub binary.
COPY openapi.yaml ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin signalflow-gateway \
    && install -D -m 0755 target/release/signalflow-gateway /out/signalflow-gateway

# ---------------------------------------------------------------------------------------------
# Runtime stage: Debian slim (not distroless) so that HEALTHCHECK and exec probes have a client.
# Pin by digest (debian:bookworm-slim@sha256:…) for reproducible release builds; the tag alone
# picks up Debian security updates on every rebuild.
FROM debian:bookworm-slim

# - ca-certificates: the platform's CA bundle, added to the built-in webpki roots (a corporate
#   TLS-intercepting egress proxy's CA can be added to it).
# - busybox (one ~0.8 MB binary, libc only; no applet symlinks are installed): its `wget` is the
#   HTTP client for HEALTHCHECK and for the Kubernetes sidecar's exec probes, since the gateway
#   has no health-check subcommand and curl would pull in ~10 libraries. Debian's busybox 1.35
#   crashes on `wget -T`: the timeout comes from HEALTHCHECK --timeout / the probe's
#   timeoutSeconds instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates busybox \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sfgw \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sfgw
# (DL3008, unpinned apt packages: bookworm's archive keeps only the current version of a
# package, so pinning `ca-certificates=…` would break the build at its next security update;
# the base image tag or digest is what pins the release.)

COPY --from=builder /out/signalflow-gateway /usr/local/bin/signalflow-gateway

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# Listen on every interface inside the container (the default 127.0.0.1 would be unreachable
# from outside it); JSON logs, one object per line on stderr.
ENV SFGW_LISTEN=0.0.0.0:8080 \
    SFGW_LOG_FORMAT=json
EXPOSE 8080

# Liveness: the process answers HTTP. Exec form, no shell. `-Y off` ignores any http_proxy in
# the environment. Readiness (upstream authenticated) is /readyz, used by the Kubernetes and
# compose files. If you change SFGW_LISTEN's port, override this check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["busybox", "wget", "-q", "-Y", "off", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]

# The gateway drains on SIGTERM (streams get SHUTTING_DOWN, upstream jobs are stopped), bounded by
# drain_timeout (default 10s; the whole exit takes at most ~1.5 × drain_timeout + 1s). Allow for
# that in `docker stop -t` / stop_grace_period. It runs as PID 1 without an init: it handles
# SIGTERM and SIGINT itself and starts no child processes.
STOPSIGNAL SIGTERM
ENTRYPOINT ["signalflow-gateway"]
CMD ["serve"]
