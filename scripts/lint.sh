#!/usr/bin/env bash
# Lints every module with the pinned golangci-lint (installed from the Go
# module proxy on first use) and the project's .golangci.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH)/bin"
version=v2.15.0
if ! golangci-lint version 2>/dev/null | grep -q "${version#v}"; then
	echo "installing golangci-lint $version" >&2
	GOFLAGS= go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$version"
fi
root=$(pwd)
status=0
while read -r dir path; do
	echo "== lint $path"
	(cd "$dir" && golangci-lint run --config "$root/.golangci.yaml" ./...) || status=1
done < <(go list -m -f '{{.Dir}} {{.Path}}')
exit $status
