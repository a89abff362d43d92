# ringway image: the gateway (default target) with loadgen and the tuning script beside it.
#
#   docker build -t ringway:0.1.0 .                         # ringway, ENTRYPOINT ringway
#   docker build --target loadgen -t ringway-loadgen:0.1.0 .  # same files, ENTRYPOINT loadgen
#
# Runtime base: debian:bookworm-slim rather than distroless/cc-debian12. The ~50 MB extra buy
# bash and coreutils, which the optional privileged init container needs to run
# /usr/local/share/ringway/sysctl.sh from this same image (one image to pin and scan), and a
# shell for `kubectl exec ... kill -HUP 1` (config reload) and debugging on an edge node. Both
# bases are Debian 12, so the glibc the builder linked against is the one at run time.
# No ca-certificates: ringway makes no TLS connections.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build ------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# 1. Dependencies only: the manifests and stub sources. This layer is rebuilt only when
#    Cargo.toml, Cargo.lock or loadgen/Cargo.toml change. Every target a manifest declares
#    ([lib], [[bin]], [[bench]], [[test]], [[example]]) gets a stub file, because cargo refuses
#    a manifest whose declared target files are missing, even when it does not build them.
COPY Cargo.toml Cargo.lock ./
COPY loadgen/Cargo.toml loadgen/
RUN set -eu; \
    mkdir -p src loadgen/src; \
    echo 'fn main() {}' > src/main.rs; \
    echo 'fn main() {}' > loadgen/src/main.rs; \
    for manifest in Cargo.toml loadgen/Cargo.toml; do \
      awk -v d="$(dirname "$manifest")" ' \
        function val(  s) { s = $0; sub(/^[^=]*=[ \t]*"/, "", s); sub(/".*/, "", s); return s } \
        function flush(  k) { \
          if (sec ~ /^\[\[(bench|test|example)\]\]/ && name != "" && path == "") { \
            k = sec; gsub(/[][]/, "", k); \
            path = (k == "bench" ? "benches" : k == "test" ? "tests" : "examples") "/" name ".rs" } \
          if (path != "" && sec ~ /^\[\[(bin|bench|test|example)\]\]|^\[lib\]/) print d "/" path } \
        /^[ \t]*\[/ { flush(); sec = $0; name = ""; path = ""; next } \
        /^[ \t]*name[ \t]*=/ { name = val() } \
        /^[ \t]*path[ \t]*=/ { path = val() } \
        END { flush() }' "$manifest"; \
    done | while read -r f; do mkdir -p "$(dirname "$f")"; [ -e "$f" ] || echo 'fn main() {}' > "$f"; done; \
    cargo build --release --locked --workspace --bins; \
    rm -rf src loadgen/src benches tests examples loadgen/benches loadgen/tests loadgen/examples

# 2. The real sources (.dockerignore lets only what the build needs into the context).
COPY . .
# COPY keeps the files' old mtimes, older than the stub build's outputs: without the touch
# cargo would call the workspace crates fresh and ship the stub binaries.
RUN find src loadgen -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --workspace --bins \
    && install -D -m 0755 target/release/ringway target/release/loadgen -t /out/

# ---- runtime ----------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS base
RUN groupadd --system --gid 10001 ringway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin ringway
COPY --from=builder /out/ringway /out/loadgen /usr/local/bin/
# For the optional privileged init container (deploy/kubernetes/sysctl-init/); it runs as
# `bash /usr/local/share/ringway/sysctl.sh`, needing only bash, coreutils and /proc/sys.
COPY tuning/sysctl.sh /usr/local/share/ringway/sysctl.sh
# A default config so `docker run` and `ringway check` work; Kubernetes mounts its ConfigMap
# over /etc/ringway.
COPY deploy/examples/ringway.toml /etc/ringway/ringway.toml
USER 10001:10001

# loadgen: `docker build --target loadgen`
FROM base AS loadgen
ENTRYPOINT ["/usr/local/bin/loadgen"]
CMD ["--help"]

# ringway: the default (last) target
FROM base AS ringway
# 8080 web (http), 7000 devices (tcp) in the example config; 9900 admin (metrics, health).
EXPOSE 8080 7000 9900
ENTRYPOINT ["/usr/local/bin/ringway"]
CMD ["run", "--config", "/etc/ringway/ringway.toml"]
