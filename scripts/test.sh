#!/bin/sh
# Runs every test of the project: formatting, lints, unit and property tests, the
# simulator's sequence scenarios, the replay of the committed fuzz corpus, and the
# end-to-end tests of the real binaries in network namespaces (needs root; skipped with a
# notice otherwise, unless NTM_REQUIRE_LAB is set). With NTM_CROSS=1 (CI sets it) also the
# big-endian MIPS run of cross/build.sh: the agent and the library's tests under qemu-user
# and the foreign agent in the lab (it installs Debian's cross toolchain when root). With
# NTM_STATIC=1 (or a list of targets) also the static musl builds of cross/static.sh.
. "$(dirname "$0")/env.sh"
# Each step's heading says how long the run has taken so far, so a slow CI run shows where.
t0=$(date +%s)
step() { echo "== $* [$(($(date +%s) - t0)) s in]"; }
# The tools the end-to-end tests use (as root; a non-root run skips those tests): iproute2
# (namespaces, veth), nftables (NAT), NSD (a real authoritative DNS server), dig, socat,
# ping, tcpdump (captures), openssl (an impostor AS), iperf3 and curl (applications),
# busybox (its start-stop-daemon runs the init scripts as on a box), taskset and renice
# (util-linux, bsdutils: the flood test slows the agent on purpose), a C compiler, procps
# (sysctl and kill: the lab sets sysctls in namespaces and signals its processes), strace
# (the order of the agent's system calls for one packet), the linter of the init
# scripts (shellcheck), and python3 (forged ICMP errors from a raw socket).
# scripts/test-tools.sh checks that this list holds every tool the tests use.
if [ "$(id -u)" = 0 ]; then
	install_missing ip:iproute2 nft:nftables nsd:nsd dig:dnsutils socat:socat ping:iputils-ping \
		tcpdump:tcpdump openssl:openssl iperf3:iperf3 curl:curl busybox:busybox cc:build-essential \
		taskset:util-linux renice:bsdutils update-ca-certificates:ca-certificates sysctl:procps \
		shellcheck:shellcheck git:git strace:strace python3:python3-minimal
	step "every tool the tests use is installed by the list above"
	./scripts/test-tools.sh
else
	step "not root: nothing installed, the end-to-end tests will be skipped"
fi
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "release binaries (the end-to-end tests run them)"
cargo build --workspace --bins --locked --release
step "cargo test (optimized for the crypto-heavy simulations: the profile \"tests\" of Cargo.toml)"
# The end-to-end tests run the release binaries built above.
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac
export NTM_BIN_DIR="$target_dir/release"
cargo test --workspace --locked --profile tests --no-run
# Compiling for big-endian MIPS takes minutes of both cores; the lab tests below mostly
# wait on timers. So the compilation runs now, in the background at the lowest priority
# (nice 19: it takes the CPU the tests leave), and the MIPS step further down only runs
# the tests. The packages are installed first, in the foreground: the install steps
# further down must not meet a dpkg lock held by it.
cross_pid=""
cross_log="$target_dir/cross-build.log"
if [ "${NTM_CROSS:-}" = 1 ]; then
	cross/build.sh --install-only mips
	# setsid: its own process group, so an early exit stops all of its compilers.
	setsid nice -n 19 cross/build.sh --build-only --agent-only mips >"$cross_log" 2>&1 &
	cross_pid=$!
fi
# The lab files that spend minutes waiting on timers (servers restarting, a NAT forgetting
# idle TCP, NS connections replaced) run beside the rest instead of after it: each lab run
# has namespaces of its own, and cargo holds no lock while tests run. The throughput tests
# (offload, relay_workers, outsider16) run last, when these have mostly finished waiting.
waiting="recovery ns_keepalive ns_move"
later="offload relay_workers outsider16"
waiting_log="$target_dir/lab-waiting.log"
only() { for t in "$@"; do printf -- '--test %s ' "$t"; done; }
lab_rest() {
	for f in lab/tests/*.rs; do
		t=$(basename "$f" .rs)
		case " $waiting $later " in *" $t "*) ;; *) printf -- '--test %s ' "$t" ;; esac
	done
}
# shellcheck disable=SC2046,SC2086 # the --test arguments are words on purpose
cargo test --locked --profile tests -p ntm-lab $(only $waiting) >"$waiting_log" 2>&1 &
waiting_pid=$!
stop_background() {
	kill "$waiting_pid" 2>/dev/null || true
	[ -z "$cross_pid" ] || kill -- "-$cross_pid" 2>/dev/null || true
}
trap stop_background EXIT
cargo test --workspace --locked --profile tests --exclude ntm-lab
# shellcheck disable=SC2046,SC2086
cargo test --locked --profile tests -p ntm-lab --lib --bins $(lab_rest)
cargo test --locked --profile tests -p ntm-lab --doc
# shellcheck disable=SC2046,SC2086
cargo test --locked --profile tests -p ntm-lab $(only $later)
step "the lab files that ran beside the rest: $waiting"
if wait "$waiting_pid"; then cat "$waiting_log"; else
	cat "$waiting_log"
	echo "FAILED: lab tests $waiting (above)" >&2
	exit 1
fi
waiting_pid=""
step "init scripts (SysV, start-stop-daemon from Debian and BusyBox)"
NTM_NO_BUILD=1 ./scripts/test-init.sh
step "the OpenWrt package (.ipk contents; init script against procd, uci, jshn stand-ins)" && packaging/openwrt/test.sh
step "Buildroot: ntmobile.hash against Buildroot's own download step (skips without a Buildroot)" && ./scripts/test-buildroot-hash.sh
step "package installs keep the machine's policy-rc.d"
./scripts/test-apt-install.sh
step "proto without the server engines (the agent's build, ntm-dns on top of it; then with the fuzz harness, which the tests add)"
cargo clippy -p ntm-proto --locked --no-default-features -- -D warnings
cargo clippy -p ntm-proto --locked --no-default-features --features fuzzing -- -D warnings
# The tests' profile, whose dependencies are built already (a profile of its own compiled
# them all again: a minute).
cargo test -p ntm-proto --locked --profile tests --no-default-features --lib
cargo clippy -p ntm-dns --locked -- -D warnings
if [ "${NTM_CROSS:-}" = 1 ]; then
	step "big-endian MIPS: the compilation begun in the background"
	if wait "$cross_pid"; then tail -n 5 "$cross_log"; else
		cat "$cross_log"
		echo "FAILED: cross/build.sh --build-only --agent-only mips (above)" >&2
		exit 1
	fi
	cross_pid=""
	step "big-endian MIPS: tests under qemu-user, ntmd, the foreign agent in the lab"
	cross/build.sh --agent-only mips
else
	step "big-endian MIPS: skipped (NTM_CROSS=1 runs cross/build.sh --agent-only mips)"
fi
# Static musl builds (cross/static.sh): NTM_STATIC=1 for all five targets, or a list of
# them (NTM_STATIC="armv7 mipsel"). Off by default: each target costs minutes (cross/README.md).
if [ -n "${NTM_STATIC:-}" ]; then
	[ "$NTM_STATIC" != 1 ] || NTM_STATIC=""
	step "static musl builds: tests under qemu-user, release binaries (${NTM_STATIC:-all targets})"
	# shellcheck disable=SC2086 # a list of targets
	cross/static.sh $NTM_STATIC
else
	step "static musl builds: skipped (NTM_STATIC=1 or NTM_STATIC=\"armv7 mipsel ...\" runs cross/static.sh)"
fi
echo "all tests passed [$(($(date +%s) - t0)) s]"
