#!/usr/bin/env bash
# Runs the test suite (vitest; the build must exist) on another major version of Node, fetched from the npm
# registry as the node-<os>-<arch> package, so CI checks the versions the product claims to run on (the
# container image uses Node 22) without installing anything system-wide. The sidecars the tests start run on
# that Node too: they are spawned with process.execPath.
#
#   npm run build && bash scripts/test-on-node.sh 22
#   npm run build && bash scripts/test-on-node.sh 24 test/e2e/proxy-runtime.test.ts   # only these test files
#   npm run build && bash scripts/test-on-node.sh 22 --config vitest.hard.config.ts   # the hard suite (vitest's own flags pass through)
#
# The container image's major (22) is the exact release its Dockerfile names; TEST_ON_NODE_PRINT_PACKAGE=1 prints the
# package it would fetch and stops there.
#
# Needs the npm registry. Linux and macOS, x64 and arm64.
set -euo pipefail

major="${1:?usage: test-on-node.sh <major version, e.g. 22> [test files...]}"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/oidc-sidecar-node${major}.XXXXXX")"
trap 'rm -rf "$work"' EXIT

platform="$(node -p process.platform)"
arch="$(node -p 'process.arch')"
# The container image's major runs the exact release the Dockerfile's base image carries; any other, its latest.
image_version="$(sed -nE 's/^ARG NODE_IMAGE=node:([0-9]+\.[0-9]+\.[0-9]+)-.*/\1/p' "$root/Dockerfile")"
version="$major"
if [[ "${image_version%%.*}" == "$major" ]]; then version="$image_version"; fi
package="node-${platform}-${arch}@${version}"
if [[ -n "${TEST_ON_NODE_PRINT_PACKAGE:-}" ]]; then echo "$package"; exit 0; fi
echo "test-on-node: fetching ${package}"
npm install --prefix "$work" --no-save --no-audit --no-fund --loglevel=error "$package" > /dev/null
bin="$work/node_modules/node-${platform}-${arch}/bin"
echo "test-on-node: $("$bin/node" --version)"

cd "$root"
PATH="$bin:$PATH" node "$root/node_modules/vitest/vitest.mjs" run "$@"
