# One small image with every taskwire binary (taskwire, taskwire-api, taskwire-worker,
# taskwire-recorder, taskwire-watch), running as a non-root user. The dashboard is
# built first and embedded into the `taskwire` binary (clients/cli/build.rs).
#   docker build -t taskwire .
# compose.yaml and deploy/k8s run it; scripts/check-deploy checks this file statically
# (there is no container engine on the CI machines).

FROM node:20-bookworm-slim AS dashboard
WORKDIR /src/clients/web
COPY clients/web/package.json clients/web/package-lock.json clients/web/.npmrc ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY clients/web/ ./
RUN node build.mjs

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=dashboard /src/clients/web/dist clients/web/dist
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/taskwire target/release/taskwire-api target/release/taskwire-worker \
       target/release/taskwire-recorder target/release/taskwire-watch /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home taskwire
COPY --from=build /out/ /usr/local/bin/
USER 10001
# gRPC and grpc-web (api 50051, watch 50052); admin: /metrics, /livez, /readyz (9501-9504).
EXPOSE 50051 50052 9501 9502 9503 9504
ENTRYPOINT ["/usr/local/bin/taskwire-api"]
