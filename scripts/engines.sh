#!/usr/bin/env bash
# Makes Docker engines available to the broker (scripts/run.sh) and to the
# tests (scripts/test.sh), idempotently and quickly when they are already up:
#   - an engine already reachable (DOCKER_HOST or /var/run/docker.sock) is used;
#   - the missing ones are started here as extra dockerd processes, each with
#     its own data root, exec root, pidfile, unix socket and TCP port on
#     127.0.0.1 (installing docker.io from Debian's packages first if needed);
#   - every engine gets the local test image cb-test/busybox:latest, built
#     FROM scratch with Debian's static busybox (nothing is ever pulled).
# It prints CB_TEST_DOCKER_HOSTS=<hostnames, comma-separated> and writes the
# same line to $CB_ENGINES_DIR/hosts.env.
#
# Settings: CB_ENGINES, how many engines (default 2, what the tests need);
# CB_ENGINES_DIR (default /tmp/cb-engines).
set -euo pipefail

want=${CB_ENGINES:-2}
base=${CB_ENGINES_DIR:-/tmp/cb-engines}
image=cb-test/busybox:latest
mkdir -p "$base"

log() { echo "engines: $*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
	local missing=()
	command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
	command -v docker >/dev/null 2>&1 || missing+=(docker.io)
	command -v ip >/dev/null 2>&1 || missing+=(iproute2)
	[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && file_is_static /bin/busybox || missing+=(busybox-static)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		as_root apt-get update -qq
		DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

ping_engine() { # hostname
	docker -H "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# start_engine N: starts managed engine N (unix socket + TCP port 23750+N).
start_engine() {
	local n=$1 dir="$base/e$1"
	local sock="unix://$dir/docker.sock" port=$((23750 + n))
	if ping_engine "$sock"; then return 0; fi
	mkdir -p "$dir"
	if [ -f "$dir/docker.pid" ] && ! kill -0 "$(cat "$dir/docker.pid")" 2>/dev/null; then
		rm -f "$dir/docker.pid" # left behind by a killed engine
	fi
	# Each engine gets a bridge of its own (cbr<N>, 172.30.<N>.0/24): engines
	# sharing docker0 trip over each other, and an engine started with
	# --bridge=none deletes docker0 under the others. Only the first engine
	# manages iptables (outbound NAT for its containers).
	local br="cbr$n" net=(--bridge="cbr$n")
	if [ "$n" -gt 1 ]; then net+=(--iptables=false --ip6tables=false); fi
	log "starting engine $n ($sock, tcp://127.0.0.1:$port, bridge $br)"
	cat >"$dir/start.sh" <<START
#!/usr/bin/env bash
rm -f "$dir/docker.pid"
if ! ip link show $br >/dev/null 2>&1; then
	ip link add name $br type bridge
	ip addr add 172.30.$n.1/24 dev $br
fi
ip link set $br up
exec setsid dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \\
	-H "$sock" -H "tcp://127.0.0.1:$port" ${net[*]} >>"$dir/dockerd.log" 2>&1 </dev/null
START
	chmod +x "$dir/start.sh"
	as_root nohup "$dir/start.sh" >/dev/null 2>&1 &
	for _ in $(seq 1 120); do
		if ping_engine "$sock"; then return 0; fi
		sleep 0.25
	done
	log "engine $n did not come up; last lines of $dir/dockerd.log:"
	tail -n 20 "$dir/dockerd.log" >&2 || true
	return 1
}

ensure_image() { # hostname
	if docker -H "$1" image inspect "$image" >/dev/null 2>&1; then return 0; fi
	log "building $image on $1"
	local ctx
	ctx=$(mktemp -d)
	cp /bin/busybox "$ctx/busybox"
	cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["sh"]
DOCKERFILE
	DOCKER_BUILDKIT=0 docker -H "$1" build --network none -q -t "$image" "$ctx" >/dev/null 2>"$ctx/build.log" ||
		{ cat "$ctx/build.log" >&2; rm -rf "$ctx"; return 1; }
	rm -rf "$ctx"
}

hosts=()
if command -v docker >/dev/null 2>&1; then
	for h in ${DOCKER_HOST:-} unix:///var/run/docker.sock; do
		if ping_engine "$h"; then hosts+=("$h"); break; fi
	done
fi
if [ ${#hosts[@]} -lt "$want" ]; then
	install_packages
fi
n=$(( ${#hosts[@]} + 1 ))
while [ ${#hosts[@]} -lt "$want" ]; do
	start_engine "$n"
	# Engine 1 is addressed by its socket, the others over TCP: the tests see
	# both forms of node address.
	if [ "$n" -eq 1 ]; then hosts+=("unix://$base/e$n/docker.sock"); else hosts+=("tcp://127.0.0.1:$((23750 + n))"); fi
	n=$((n + 1))
done
if ! file_is_static /bin/busybox 2>/dev/null; then install_packages; fi
for h in "${hosts[@]}"; do ensure_image "$h"; done

line="CB_TEST_DOCKER_HOSTS=$(IFS=,; echo "${hosts[*]}")"
echo "$line" >"$base/hosts.env"
echo "$line"
