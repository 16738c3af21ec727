#!/usr/bin/env bash
# Pack smoke test: packs oidc-sidecar exactly as `npm publish` would, installs
# the tarball into an empty directory with production dependencies only, and
# runs the installed `oidc-sidecar demo` (plus a validate of the shipped
# config layers). Exits 0 only if all of that works.
#
#   bash scripts/pack-smoke.sh
#
# Needs the npm registry for the production dependencies.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/oidc-sidecar-pack.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$root"
# `npm pack` runs the `prepare` script (the TypeScript build) first.
tarball="$(npm pack --json --pack-destination "$work" | node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>console.log(JSON.parse(s)[0].filename))')"
echo "pack-smoke: packed ${tarball}"

mkdir "$work/consumer"
cd "$work/consumer"
echo '{"name":"pack-smoke-consumer","version":"1.0.0","private":true}' > package.json
npm install --omit=dev --no-audit --no-fund --loglevel=error "$work/${tarball}"

# Production install only: no build or test tooling came along.
for dev in typescript vitest @types/node; do
  if [ -e "node_modules/${dev}" ]; then
    echo "pack-smoke: dev dependency ${dev} was installed" >&2
    exit 1
  fi
done

bin="./node_modules/.bin/oidc-sidecar"
# Run from the consumer's directory, whose own package.json says 1.0.0: the CLI must report its own version.
version="$("$bin" --version)"
expected="$(node -p 'require("./node_modules/oidc-sidecar/package.json").version')"
if [ "$version" != "$expected" ]; then
  echo "pack-smoke: --version printed ${version}, expected ${expected}" >&2
  exit 1
fi
echo "pack-smoke: oidc-sidecar ${version}"
test -s node_modules/oidc-sidecar/dist/bundle/THIRD-PARTY-LICENSES.txt
test -s node_modules/oidc-sidecar/LICENSE
# Outside a pod: the cluster CA the base config names is not here, so check the shape only.
"$bin" validate --skip-file-checks \
  --config node_modules/oidc-sidecar/config/base.yaml \
  --config node_modules/oidc-sidecar/config/namespaces/payments.yaml > /dev/null
"$bin" demo
echo "pack-smoke: installed package passed its demo"

# A sidecar as users start one (`run --config FILE`, which the launcher starts without the full CLI): it must come
# up from the installed package alone and stop cleanly on SIGTERM.
cat > run.yaml <<'YAML'
service: pack-smoke
admin: { listen: "127.0.0.1:0" }
outbound: { listen: "127.0.0.1:0", routes: [] }
YAML
"$bin" run --config run.yaml > run.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q '"event":"started"' run.log && break
  sleep 0.1
done
if ! grep -q '"event":"started"' run.log; then
  echo "pack-smoke: run did not start:" >&2
  cat run.log >&2
  kill "$pid" 2>/dev/null || true
  exit 1
fi
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
if [ "$code" -ne 0 ]; then
  echo "pack-smoke: run exited with ${code} after SIGTERM:" >&2
  cat run.log >&2
  exit 1
fi
echo "pack-smoke: installed package started a sidecar and stopped it"
