#!/bin/sh
# The main job: a whole NTMobile deployment of the real binaries in network namespaces
# (AS, two DCs, RS, NS, NSD, a router, two boxes running ntmd), narrated: login,
# registration, names through the DNS hook, ping and iperf3 over virtual addresses, and a
# move to another subnet. Needs root and a few Debian packages (installed if missing).
#
#   ./scripts/demo.sh          the namespace demo (falls back to the simulator if not root)
#   ./scripts/demo.sh --sim    the same story in the deterministic simulator (--seed N)
. "$(dirname "$0")/env.sh"
if [ "${1:-}" = "--sim" ] || [ "$(id -u)" != 0 ]; then
	[ "${1:-}" = "--sim" ] && shift
	[ "$(id -u)" != 0 ] && echo "not root: running the simulator demo instead of namespaces" >&2
	exec cargo run --release --locked -q -p ntm-sim --example demo -- "$@"
fi
install_missing ip:iproute2 nft:nftables nsd:nsd dig:dnsutils ping:iputils-ping iperf3:iperf3 cc:build-essential \
	socat:socat curl:curl tcpdump:tcpdump sysctl:procps busybox:busybox
cargo build --release --locked -q --workspace --bins
exec cargo run --release --locked -q -p ntm-lab --example netdemo
