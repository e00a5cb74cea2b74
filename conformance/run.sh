#!/usr/bin/env bash
# Conformance of cmd/kvlocal with the real JavaScript SDK: start kvlocal on a
# free loopback port (kvlocal.sh), run the node tests against it with
# NODE_EXTRA_CA_CERTS, then stop kvlocal with SIGTERM and check that it exits
# cleanly. run-python.sh does the same with the real Python SDK.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
[ -d node_modules ] || npm ci --no-audit --no-fund
. ./kvlocal.sh

kvlocal_start -seed MyApiKey=seeded-value
NODE_EXTRA_CA_CERTS="$KVLOCAL_CA" PATH="$here/bin:$PATH" \
  node --test --test-reporter=spec kvlocal.test.mjs
kvlocal_stop
