# syntax=docker/dockerfile:1
#
# otp-pipeline's images. The default (last) stage is the product: every
# product role, picked by the command (generator, sender, all-in-one,
# publish, probe). The `fake-carrier` target is the fake SMS carrier of
# docker-compose.yml, a tool kept out of the product image. Build with:
#   docker build -t otp-pipeline .
#   docker build --target fake-carrier -t otp-fake-carrier .
# Checked without a Docker engine by tests/compose.rs.

# ---- sources -------------------------------------------------------------
FROM rust:1.95-bookworm AS sources
WORKDIR /build
# The whole workspace: cargo needs every member's manifest.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY workers/ workers/
COPY tools/ tools/

# ---- build: one package per stage, so each image builds only its own -----
# The registry and target directories are BuildKit caches kept between
# builds, so a source change recompiles only this crate. The target directory
# is not part of the image: the binary is copied out in the same step.
FROM sources AS fake-carrier-build
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked -p otp-fake-carrier && cp target/release/otp-fake-carrier /usr/local/bin/

FROM sources AS builder
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked -p otp-pipeline --bin otp-pipeline \
    && cp target/release/otp-pipeline /usr/local/bin/otp-pipeline

# ---- fake carrier (a tool: its own image) ---------------------------------
FROM debian:bookworm-slim AS fake-carrier
RUN groupadd --gid 10001 otp && useradd --uid 10001 --gid otp --no-create-home --shell /usr/sbin/nologin otp
COPY --from=fake-carrier-build /usr/local/bin/otp-fake-carrier /usr/local/bin/otp-fake-carrier
USER 10001:10001
# 9099: the carriers' APIs, GET /messages, GET/PUT /control.
EXPOSE 9099
ENTRYPOINT ["otp-fake-carrier"]
CMD ["--listen", "0.0.0.0:9099"]

# ---- the product (default) -----------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the carriers' HTTPS APIs (rustls reads the system roots).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# An unprivileged user owning the data directory (sled, hmac.key, api_keys).
# A named volume mounted there starts as a copy of it, so with this owner
# and mode 0700.
RUN groupadd --gid 10001 otp \
    && useradd --uid 10001 --gid otp --home-dir /var/lib/otp-pipeline --no-create-home \
       --shell /usr/sbin/nologin otp \
    && install -d -o otp -g otp -m 0700 /var/lib/otp-pipeline /var/lib/otp-keys
COPY --from=builder /usr/local/bin/otp-pipeline /usr/local/bin/otp-pipeline
# /etc/otp-pipeline/compose/*.toml configure the compose services; default.toml
# documents every key. (Prometheus, Grafana and RabbitMQ files come along unused.)
COPY config/ /etc/otp-pipeline/
WORKDIR /var/lib/otp-pipeline
# Numeric, so that runtimes can tell it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
# 8080: generator HTTP API and /metrics (http.listen); 9091: a sender's
# /metrics, /readyz and receipt callbacks (sender.listen).
EXPOSE 8080 9091
ENTRYPOINT ["otp-pipeline"]
# The generator with the compose configuration (broker at rabbitmq:5672);
# set OTP_BROKER__URL to point it elsewhere. See docker-compose.yml.
CMD ["generator", "--config", "/etc/otp-pipeline/compose/generator.toml"]
