#!/usr/bin/env bash
# Runs the broker on its embedded defaults (embedded NATS with JetStream in
# ./broker-data, HTTP API on 127.0.0.1:8080) with a local Docker engine as its
# node. The engine is the one already reachable, or one this script starts
# (installing Debian's docker.io first when it is missing), and it gets the
# local image cb-test/busybox:latest (FROM scratch + static busybox), so a
# first task runs without any registry. Arguments go to `broker serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

hosts=$(CB_ENGINES=1 scripts/engines.sh)
hosts=${hosts#CB_TEST_DOCKER_HOSTS=}
export DOCKER_HOST=${hosts%%,*}
echo "docker engine: $DOCKER_HOST" >&2
go build -o bin/broker ./cmd/broker
exec bin/broker serve "$@"
