# syntax=docker/dockerfile:1
#
# oidc-sidecar image.
#   docker build -t oidc-sidecar .
#   docker run -v $PWD/oidc-sidecar:/etc/oidc-sidecar:ro oidc-sidecar      # ./oidc-sidecar/config.yaml; a directory, so edits reach the container
#   docker run -e OIDC_SIDECAR_CONFIG=/cfg/base.yaml,/cfg/local.yaml -v $PWD/my-config:/cfg:ro oidc-sidecar   # your layers, merged in order
# The image ships config/ (base.yaml, namespaces/*.yaml). Those layers run only in a Kubernetes pod: they read the
# pod's service-account CA and projected tokens and call kubernetes.default.svc. Elsewhere, check them without
# reading those files:
#   docker run oidc-sidecar validate --skip-file-checks --config /opt/oidc-sidecar/config/base.yaml

# Debian's slim image carries the official glibc build of Node, the one CI tests and the memory figures in
# docs/performance.md were measured on; Alpine's is a musl build, an experimental platform for Node. The exact
# release, so that two builds of one commit run the same Node: CI's Node 22 tests run this release
# (scripts/test-on-node.sh reads it here), and the memory settings below were measured on it. Bump it to take a new
# Node release; add its digest (`node:22.x.y-trixie-slim@sha256:...`) for builds that also pin Debian's packages.
ARG NODE_IMAGE=node:22.23.5-trixie-slim

# ---- build: compile TypeScript and bundle the CLI with the dev dependencies ----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would build before the sources are copied.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle.mjs scripts/undici-finish-patch.cjs ./scripts/
COPY src ./src
# esbuild needs no install script: its binary comes as an optional dependency for the build platform.
RUN npm run build

# ---- runtime: production dependencies and the bundled CLI only ----
FROM ${NODE_IMAGE} AS runtime
# Memory settings that can only be made before the process starts (docs/performance.md, "Memory"):
# - NODE_OPTIONS: a 2 MiB young-generation semi-space instead of 16 MiB keeps a busy sidecar ~22 MiB smaller for
#   ~4 % more CPU per request; V8 reads it only at startup.
# - MALLOC_*: glibc's allocator with at most two arenas, and freed memory above 128 KiB given back to the system:
#   1-4 MiB less at peak, no CPU cost measured.
ENV NODE_ENV=production \
    NODE_OPTIONS=--max-semi-space-size=2 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_TRIM_THRESHOLD_=131072 \
    OIDC_SIDECAR_CONFIG=/etc/oidc-sidecar/config.yaml
WORKDIR /opt/oidc-sidecar
COPY package.json package-lock.json ./
# /var/lib/oidc-sidecar: a directory the non-root user may write, for a volume to keep state in (the dev issuer's
# --key-file in examples/docker-compose); a new named volume mounted there takes its owner.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force \
 && ln -s /opt/oidc-sidecar/bin/oidc-sidecar.js /usr/local/bin/oidc-sidecar \
 && mkdir -p /var/lib/oidc-sidecar && chown 1000:1000 /var/lib/oidc-sidecar
COPY LICENSE ./
COPY bin ./bin
COPY config ./config
COPY --from=build /src/dist/bundle ./dist/bundle

# The image's `node` user, by number so Kubernetes can check runAsNonRoot.
USER 1000:1000

# outbound (loopback by default), inbound, admin
EXPOSE 15001 15006 15020

# Slim images have no curl: node asks the admin listener. Set
# OIDC_SIDECAR_HEALTHCHECK_URL when admin.listen is not on port 15020.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.OIDC_SIDECAR_HEALTHCHECK_URL || 'http://127.0.0.1:15020/healthz').then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"]

# --no-concurrent-recompilation: V8 optimises hot functions on the main thread instead of a background one, which
# keeps a sidecar 3-5 MiB smaller under load on Node 20 and 22 and 7-25 MiB on Node 24; the price is pauses of
# ~1 ms (at most ~11 ms) while a new sidecar warms up. Node accepts the flag on its command line only, not in
# NODE_OPTIONS, hence `node` here rather than the `oidc-sidecar` link (which stays for `docker exec`).
ENTRYPOINT ["node", "--no-concurrent-recompilation", "/opt/oidc-sidecar/bin/oidc-sidecar.js"]
CMD ["run"]
