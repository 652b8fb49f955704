#!/usr/bin/env bash
# The project's test command: makes the Docker engines and the test image
# available (scripts/engines.sh: installs and starts them on a fresh
# Debian machine when missing), then vets and runs every module's tests with
# the race detector. Extra arguments go to `go test` (e.g. -run TestEndToEnd).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

hosts=$(scripts/engines.sh)
export "${hosts?}"
echo "test engines: ${CB_TEST_DOCKER_HOSTS}"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
while read -r dir path; do
	echo "== $path"
	(cd "$dir" && go vet ./... && go test -race -count=1 "$@" ./...) 2>&1 | tee "$out/$(basename "$path").out" || status=1
done < <(go list -m -f '{{.Dir}} {{.Path}}')
if [ "$status" -ne 0 ]; then
	# The components' logs bury a failed assertion; repeat what the failed
	# tests said (their indented output), panics and races at the end.
	echo "== failures"
	awk '/--- FAIL|^panic:|DATA RACE|^FAIL/ || /^[ \t]+[^ \t]/' "$out"/*.out | head -300 || true
fi
exit $status
