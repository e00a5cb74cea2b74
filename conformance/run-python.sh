#!/usr/bin/env bash
# Conformance of cmd/kvlocal with the real Python SDK (azure-keyvault-secrets
# on azure-core, from Debian's python3-azure): start kvlocal on a free
# loopback port (kvlocal.sh), run python/kvlocal_test.py against it, then stop
# kvlocal with SIGTERM and check that it exits cleanly.
#
# Debian's packages are in Debian's Python, /usr/bin/python3, which need not
# be the python3 first on PATH; PYTHON overrides it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
python=${PYTHON:-/usr/bin/python3}
"$python" -c 'import azure.keyvault.secrets, azure.core' || {
	echo "run-python.sh: $python lacks azure-keyvault-secrets; apt-get install python3-azure" >&2
	exit 1
}
. ./kvlocal.sh

kvlocal_start -seed MyApiKey=seeded-value
PYTHONDONTWRITEBYTECODE=1 "$python" python/kvlocal_test.py
kvlocal_stop
