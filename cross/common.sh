# shellcheck shell=bash disable=SC2034,SC2154
# (sets variables for its callers and uses theirs)
# Shared by cross/build.sh and cross/static.sh; sourced, not run. The caller sets `root`
# (the workspace), `set -euo pipefail`, opens fd 5 on its standard output, and, before
# netlink_tests, the array `runner` (the program that starts a foreign binary; empty for
# a native one).

# --- Debian packages -------------------------------------------------------------------
# want_pkg NAME... notes the packages that are not installed; install_wanted installs
# them (as root), or stops with the list.
need=()
want_pkg() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
	done
}
install_wanted() {
	[ ${#need[@]} -gt 0 ] || return 0
	if [ "$(id -u)" != 0 ]; then
		echo "error: missing Debian packages: ${need[*]} (apt-get install them, or run as root)" >&2
		exit 1
	fi
	echo "== installing: ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	need=()
}

# Sums the "test result" lines of a log into $p (passed) and $f (failed).
count_results() {
	p=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
	f=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$1" | awk '{s+=$1} END {print s+0}')
}

# The tests that run under qemu-user, built (and, but for the netlink test, run) with the
# cargo of the calling script: build.sh's xcargo or static.sh's zcargo. The netlink test
# is only built here; netlink_tests runs it in namespaces of its own. Further arguments go
# to the first cargo run (--no-run: build only).
qemu_tests() {
	local cargo_fn=$1
	shift
	# One package set, one feature set and one set of targets for the build that runs
	# and the one that adds the netlink test, so each crate is compiled once: Cargo
	# resolves features per invocation (a package's dev-dependencies count only when its
	# tests are built), and a run per package compiled p256, der and the rest up to five
	# times. Most of this phase's minutes went to compiling for MIPS, not to testing
	# under qemu. No debug information: a failing test still names its assertion, and
	# qemu-user has no debugger attached.
	# shellcheck disable=SC2054 # the commas separate Cargo's features
	local args=(--config profile.dev.debug=0 -p ntm-aead -p ntm-csum -p ntm-proto -p ntm-dns -p ntm-io -p ntm-agent
		--features ntm-proto/serde,ntm-proto/fuzzing --lib --bins --test crypto_batch --test crypto_channel
		--test fuzz_corpus --test wire_fixtures --test wire_props --test locator --test tls_login)
	"$cargo_fn" test "${args[@]}" "$@"
	"$cargo_fn" test "${args[@]}" --test netlink --no-run
}

# The netlink tests change interfaces, so each kernel test runs in a namespace of its own.
# The test binary makes one and re-executes itself in it through `ip netns exec`, which
# cannot start a foreign binary (no binfmt_misc here); so the script makes the namespace
# and starts the binary (under qemu) inside it, with the variable that the test's safety
# check expects (see agent/tests/netlink.rs). Not root: one plain run; kernel tests skip.
# $1 is the log of the cargo run that built the test binary.
netns_prefix="ntmtest-cross-$$-"
cleanup_netns() {
	local ns
	for ns in $(ip netns list 2>/dev/null | awk -v p="$netns_prefix" 'index($1, p) == 1 {print $1}'); do
		ip netns del "$ns" 2>/dev/null || true
	done
}
trap cleanup_netns EXIT
netlink_tests() {
	local bin n t ns rc
	bin=$(sed -n 's/.*Executable tests\/netlink\.rs (\(.*\))$/\1/p' "$1" | tail -n 1)
	[ -n "$bin" ] || { echo "no netlink test binary in $1" >&2; return 1; }
	case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
	if [ "$(id -u)" != 0 ]; then
		"${runner[@]}" "$bin"
		return
	fi
	n=0
	for t in $("${runner[@]}" "$bin" --list 2>/dev/null | sed -n 's/: test$//p'); do
		n=$((n + 1))
		ns="$netns_prefix$n"
		ip netns add "$ns"
		rc=0
		ip netns exec "$ns" env NTM_NETLINK_NETNS="$ns" "${runner[@]}" "$bin" "$t" --exact --test-threads=1 || rc=$?
		ip netns del "$ns"
		[ "$rc" = 0 ] || return "$rc"
	done
}

# Runs the caller's function phase_$1 for target $t, timed (wall and CPU) into $timing.
timed() {
	local TIMEFORMAT="%0R s (CPU %0U s user, %0S s sys)"
	echo "== $t: $1"
	# The phase's output goes to the script's standard output (fd 5); time's report is kept.
	timing=$({ time "phase_$1" >&5 2>&1; } 2>&1)
}
