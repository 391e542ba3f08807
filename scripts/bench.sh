#!/bin/sh
# The benchmarks of issue 7, side by side in one run on this machine: tunnel throughput and
# latency (ntmobile beside wireguard-go, boringtun and fastd over the same links), relayed
# throughput, handover, tunnel set-up, idle traffic, footprint and server capacity. Prints
# Markdown tables and writes them to target/bench/ (latest.md is the newest run); the full
# run of record is kept in docs/benchmarks.md. Needs root (network namespaces).
#
#   ./scripts/bench.sh                 the full set (about 10 minutes)
#   ./scripts/bench.sh --quick         a smoke check for CI (under 2 minutes once built; no
#                                      speed build, the program built for tests)
#   ./scripts/bench.sh --install ...   first install what is missing: the lab's tools and the
#                                      peers (Debian: wireguard-go, wireguard-tools, fastd;
#                                      crates.io: boringtun-cli)
#
# Other arguments go to the bench: --only tunnel,relay,handover,setup,idle,footprint,capacity,matrix,
# --rounds N, --secs N, --moves N, --setups N, --idle-secs N. A part whose tool is missing says
# "skipped: <why>" in its row; the exit code is 1 if a part failed.
. "$(dirname "$0")/env.sh"
install=0
quick=0
for a in "$@"; do
	case "$a" in
	--install) install=1 ;;
	--quick) quick=1 ;;
	esac
done
if [ "$(id -u)" != 0 ]; then
	echo "the benchmarks need root (network namespaces): skipped" >&2
	[ -n "${NTM_REQUIRE_LAB:-}" ] && exit 1
	exit 0
fi
if [ "$install" = 1 ]; then
	install_missing ip:iproute2 nsd:nsd dig:dnsutils ping:iputils-ping iperf3:iperf3 socat:socat \
		tcpdump:tcpdump nft:nftables prlimit:util-linux wireguard-go:wireguard-go wg:wireguard-tools \
		fastd:fastd strip:binutils file:file
	command -v boringtun-cli >/dev/null 2>&1 || cargo install --locked boringtun-cli
fi
cargo build --release --locked -q --workspace --bins
if [ "$quick" = 1 ]; then
	# A smoke check: the benchmark program with the tests' profile (its dependencies are
	# built already when scripts/test.sh ran; it unwinds too), and no speed build (its row
	# says "skipped"). Two whole-program builds fewer: minutes of CI.
	cargo build --profile tests --locked -q -p ntm-bench
	bench=./target/tests/ntm-bench
else
	# The agent at opt-level 3 (target/speed/ntmd), for x86_64 gateways: its own row in the
	# tunnel part.
	cargo build --profile speed --locked -q -p ntm-agent --bin ntmd
	# The benchmark program and its load generator (target/bench-tool/): the release build
	# with unwinding panics, so a panic still stops the daemons and deletes the namespaces.
	cargo build --profile bench-tool --locked -q -p ntm-bench
	bench=./target/bench-tool/ntm-bench
fi
mkdir -p target/bench
name="bench-$(date -u +%Y%m%dT%H%M%SZ)"
[ "$quick" = 1 ] && name="$name-quick"
out="target/bench/$name.md"
for a in "$@"; do
	shift
	[ "$a" = --install ] || set -- "$@" "$a"
done
status=0
"$bench" "$@" --out "$out" || status=$?
[ -f "$out" ] && cp "$out" target/bench/latest.md
exit "$status"
