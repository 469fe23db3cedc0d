# syntax=docker/dockerfile:1
#
# otp-pipeline: the product image, every product role. The command picks it
# (generator, sender, all-in-one, publish, probe); docker-compose.yml runs the
# pipeline from it (the fake carrier has its own image,
# tools/fake-carrier/Dockerfile: tools stay out of the product). Build alone with:
#   docker build -t otp-pipeline .
# Checked without a Docker engine by tests/compose.rs.

# ---- build ---------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY workers/ workers/
# The workspace's tool crates: cargo needs their manifests; only the product is built.
COPY tools/ tools/
# The registry and target directories are BuildKit caches kept between builds,
# so a source change recompiles only this crate. The target directory is not
# part of the image: the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked -p otp-pipeline --bin otp-pipeline \
    && cp target/release/otp-pipeline /usr/local/bin/otp-pipeline

# ---- runtime -------------------------------------------------------------
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
