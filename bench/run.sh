#!/usr/bin/env bash
# make bench: install what the benchmark needs (Debian packages), build it,
# and run it. Needs root: it builds network namespaces. Arguments, and
# BENCH_FLAGS from the environment (make bench BENCH_FLAGS=--quick), go to
# fwdd-bench; see `bin/fwdd-bench -h`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench: needs root (it builds network namespaces)" >&2
	exit 1
fi

# Debian packages, only those missing. gnuplot-nox (1 MB, no X) draws the
# plot; haproxy's package may enable its system service, whose default
# configuration listens nowhere; the benchmark runs its own instance.
packages=(iperf3 socat haproxy nftables iproute2 conntrack gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

GO=${GO:-go}
[ -x bin/fwdd ] || "$GO" build -trimpath -o bin/fwdd ./cmd/fwdd
"$GO" build -o bin/fwdd-bench ./bench/cmd/fwdd-bench
# exec: Ctrl-C reaches fwdd-bench, which stops what it started and deletes
# its namespaces.
# shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
exec bin/fwdd-bench --fwdd bin/fwdd ${BENCH_FLAGS:-} "$@"
