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
missing=""
for t in ip:iproute2 nsd:nsd dig:dnsutils ping:iputils-ping iperf3:iperf3; do
	cmd=${t%%:*}
	command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing ${t#*:}"
done
if [ -n "$missing" ]; then
	echo "installing:$missing" >&2
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
	rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --locked -q --workspace --bins
exec cargo run --release --locked -q -p ntm-lab --example netdemo
