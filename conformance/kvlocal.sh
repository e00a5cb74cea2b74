# Sourced by the conformance scripts (run.sh, run-python.sh), so that every
# real SDK meets kvlocal started the same way.
#
# kvlocal_start [kvlocal flags...] builds cmd/kvlocal, starts it on a free
# loopback port with a CA file and a fresh token, waits until it has printed
# its URL, and exports KVLOCAL_URL, KVLOCAL_TOKEN and KVLOCAL_CA (the CA
# certificate's path). An EXIT trap kills it and removes its folder if the
# script fails before kvlocal_stop.
#
# kvlocal_stop sends SIGTERM and fails unless kvlocal exits with status 0.

kvlocal_start() {
	local repo
	repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	kvlocal_pid=
	kvlocal_work=$(mktemp -d)
	trap '[ -z "$kvlocal_pid" ] || kill "$kvlocal_pid" 2>/dev/null || true; rm -rf "$kvlocal_work"' EXIT
	(cd "$repo" && go build -o "$kvlocal_work/kvlocal" ./cmd/kvlocal)
	KVLOCAL_TOKEN="conformance-$(date +%s%N)"
	KVLOCAL_CA="$kvlocal_work/ca.pem"
	"$kvlocal_work/kvlocal" -port 0 -ca-out "$KVLOCAL_CA" -token "$KVLOCAL_TOKEN" "$@" >"$kvlocal_work/out" 2>&1 &
	kvlocal_pid=$!
	# "Node:" is the last line kvlocal prints once it listens.
	for _ in $(seq 100); do
		grep -q '^Node:' "$kvlocal_work/out" 2>/dev/null && break
		sleep 0.1
	done
	KVLOCAL_URL=$(sed -n 's/^  URL: *//p' "$kvlocal_work/out")
	[ -n "$KVLOCAL_URL" ] || { cat "$kvlocal_work/out"; echo "kvlocal did not start" >&2; return 1; }
	export KVLOCAL_URL KVLOCAL_TOKEN KVLOCAL_CA
}

kvlocal_stop() {
	kill -TERM "$kvlocal_pid"
	wait "$kvlocal_pid"
	kvlocal_pid=
	echo "kvlocal exited cleanly after SIGTERM"
}
