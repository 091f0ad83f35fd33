# syntax=docker/dockerfile:1

# --- build -------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): Cargo.toml names a bench target and
# sqlx::migrate! embeds migrations/ at compile time.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/orchestrator /usr/local/bin/orchestrator

# --- run ---------------------------------------------------------------------
FROM debian:bookworm-slim
# SQLite is compiled into the binary and TLS is rustls: no libsqlite3 or
# OpenSSL needed. git for worktrees, curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --home-dir /var/lib/orchestrator --shell /usr/sbin/nologin orchestrator \
    && install -d -o orchestrator -g orchestrator -m 0750 /var/lib/orchestrator
COPY --from=builder /usr/local/bin/orchestrator /usr/local/bin/orchestrator

# Database, its lock file and the workspaces live here: mount a volume on it.
WORKDIR /var/lib/orchestrator
ENV ORCH_BIND=0.0.0.0:8080 \
    ORCH_DATABASE_URL=sqlite:///var/lib/orchestrator/orchestrator.db
USER orchestrator
EXPOSE 8080
# Assumes the port of ORCH_BIND is 8080.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["orchestrator"]
CMD ["serve"]
