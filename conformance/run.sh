#!/usr/bin/env bash
# Conformance of cmd/kvlocal with the real JavaScript SDK: start kvlocal on a
# free loopback port, run the node tests against it with NODE_EXTRA_CA_CERTS,
# then stop kvlocal with SIGTERM and check that it exits cleanly.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
[ -d node_modules ] || npm ci --no-audit --no-fund

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
(cd .. && go build -o "$work/kvlocal" ./cmd/kvlocal)
token="conformance-$(date +%s%N)"
"$work/kvlocal" -port 0 -ca-out "$work/ca.pem" -token "$token" -seed MyApiKey=seeded-value >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 100); do
  grep -q '^Node:' "$work/out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^  URL: *//p' "$work/out")
[ -n "$url" ] || { cat "$work/out"; echo "kvlocal did not start" >&2; exit 1; }

KVLOCAL_URL="$url" KVLOCAL_TOKEN="$token" NODE_EXTRA_CA_CERTS="$work/ca.pem" PATH="$here/bin:$PATH" \
  node --test --test-reporter=spec kvlocal.test.mjs

kill -TERM "$pid"
wait "$pid"
echo "kvlocal exited cleanly after SIGTERM"
