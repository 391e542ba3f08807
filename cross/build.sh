#!/bin/bash
# Cross-builds the library, the agent and the servers with Debian's Rust toolchain and
# cross compilers, runs the tests under qemu-user, and runs the foreign agent against the
# host's agent through the real servers (lab/tests/foreign.rs). See cross/README.md.
#
#   cross/build.sh [--no-test] [--no-lab] [--agent-only] [--install-only | --build-only] [TARGET...]
#
# TARGET is armv7, mipsel or mips (big endian); default all three. Per target:
#   test     ntm-proto's unit and integration tests (all features; and the unit tests
#            without default features, as the agent uses the library), ntm-dns's (the DC
#            locator and the DNS stub), ntm-io's (the I/O layer), the agent's unit tests,
#            its TLS login tests and its netlink tests against the kernel
#   release  ntmd and the four servers, release profile (cross/sizes.sh prints sizes);
#            with --agent-only just ntmd (what the lab needs; the CI's choice)
# armv7 is built in Thumb-2; release builds keep no backtrace symbolizer (see README).
#   lab      the foreign ntmd in a box of the lab deployment (needs root)
# --install-only installs the Debian packages and stops; --build-only compiles what the
# test and release phases need and runs nothing, so a later run only tests (scripts/test.sh
# compiles in the background while the host's lab tests wait on timers).
# Output goes to target/cross (the host's target/ cache is left alone); logs to
# target/cross/logs. Installs the Debian packages it needs when run as root.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
exec 5>&1
root=$(pwd)

run_tests=1
run_lab=1
agent_only=""
install_only=""
build_only=""
targets=()
for arg in "$@"; do
	case "$arg" in
	--no-test) run_tests="" ;;
	--no-lab) run_lab="" ;;
	--agent-only) agent_only=1 ;;
	--install-only) install_only=1 ;;
	--build-only) build_only=1 ;;
	armv7 | mipsel | mips) targets+=("$arg") ;;
	-h | --help)
		sed -n '2,20p' "$0"
		exit 0
		;;
	*)
		echo "unknown argument: $arg (see --help)" >&2
		exit 2
		;;
	esac
done
[ ${#targets[@]} -gt 0 ] || targets=(armv7 mipsel mips)

# triple, GNU prefix of the cross tools, qemu program, Debian architecture name
target_info() {
	case "$1" in
	armv7) echo "armv7-unknown-linux-gnueabihf arm-linux-gnueabihf qemu-arm armhf" ;;
	mipsel) echo "mipsel-unknown-linux-gnu mipsel-linux-gnu qemu-mipsel mipsel" ;;
	mips) echo "mips-unknown-linux-gnu mips-linux-gnu qemu-mips mips" ;;
	esac
}

# shellcheck source=cross/common.sh
. cross/common.sh

# --- Debian packages -------------------------------------------------------------------
want_pkg rustc-web cargo-web rust-web-src qemu-user
for t in "${targets[@]}"; do
	read -r _ prefix _ debarch <<<"$(target_info "$t")"
	want_pkg "gcc-$prefix" "libc6-dev-$debarch-cross"
done
install_wanted
[ -z "$install_only" ] || exit 0

# The host's toolchain (rustup's, as scripts/test.sh uses) builds the host binaries and
# the lab test; Debian's builds the foreign ones: it ships the standard library's source,
# which -Zbuild-std compiles for targets that have no prebuilt std here.
host_cargo=$(PATH="$HOME/.cargo/bin:$PATH" command -v cargo)
logs="$root/target/cross/logs"
mkdir -p "$logs"

# Runs Debian's cargo for target $triple with the cross tools in the environment (never in
# a committed .cargo/config: host builds stay as they are).
xcargo() {
	sub=$1
	shift
	env PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
		"CARGO_TARGET_${env_triple}_LINKER=$prefix-gcc" \
		"CARGO_TARGET_${env_triple}_RUNNER=${runner[*]}" \
		"CARGO_TARGET_${env_triple}_RUSTFLAGS=$target_rustflags" \
		"CC_${cc_triple}=$prefix-gcc" "AR_${cc_triple}=$prefix-ar" \
		/usr/bin/cargo "$sub" --locked --target "$triple" --target-dir "$root/target/cross" \
		-Zbuild-std=std,panic_abort "$@"
}

summary=""
total_pass=0
total_fail=0

phase_tests() {
	: >"$log"
	qemu_tests xcargo 2>&1 | tee -a "$log"
	netlink_tests "$log" 2>&1 | tee -a "$log"
}

# --build-only: the compilation of phase_tests and phase_release, nothing run.
build_everything() {
	qemu_tests xcargo --no-run
	phase_release
}

# The standard library of the release build keeps its stack trace on panic but not the
# symbolizer (gimli, addr2line, miniz_oxide): a stripped binary has no symbols to resolve
# anyway, and it is ~110 KiB of ntmd (cross/README.md, "Footprint").
phase_release() {
	local pkgs=(-p ntm-agent)
	[ -n "$agent_only" ] || pkgs+=(-p ntm-servers)
	xcargo build --release "${pkgs[@]}" --bins -Zbuild-std-features=backtrace-trace-only 2>&1 | tee -a "$log"
}

phase_lab() {
	NTM_FOREIGN_NTMD="$root/target/cross/$triple/release/ntmd" NTM_FOREIGN_RUNNER="${runner[*]}" \
		NTM_REQUIRE_FOREIGN=1 "$host_cargo" test --release --locked -p ntm-lab --test foreign \
		-- --nocapture 2>&1 | grep -v ' DEBUG ' | tee "$lab_log"
}

[ -z "$build_only" ] || run_lab=""
if [ -n "$run_lab" ]; then
	if [ "$(id -u)" = 0 ]; then
		echo "== host release binaries (the lab runs them beside the foreign agent)"
		"$host_cargo" build --release --locked --workspace --bins
	else
		echo "not root: the lab step is skipped" >&2
		run_lab=""
	fi
fi

for t in "${targets[@]}"; do
	read -r triple prefix qemu _ <<<"$(target_info "$t")"
	# ARMv7 in Thumb-2 (as Debian's armhf is built): a third smaller than ARM code.
	target_rustflags=""
	[ "$t" != armv7 ] || target_rustflags="-Ctarget-feature=+thumb-mode"
	env_triple=$(echo "$triple" | tr 'a-z-' 'A-Z_')
	cc_triple=$(echo "$triple" | tr '-' '_')
	runner=("$qemu" -L "/usr/$prefix")
	if [ "$t" = mips ]; then
		# A big-endian guest on a little-endian host: qemu-user's rtnetlink conversion
		# has gaps that ntmd meets; cross/qemu-netlink-shim.c fills them (see there).
		shim="$root/target/cross/$triple/qemu-netlink-shim.so"
		mkdir -p "$(dirname "$shim")"
		"$prefix-gcc" -shared -fPIC -O2 -Wall -Wextra -Werror -o "$shim" cross/qemu-netlink-shim.c -ldl
		runner=("$qemu" -E "LD_PRELOAD=$shim" -L "/usr/$prefix")
	fi
	log="$logs/$t.log"
	lab_log="$logs/$t-lab.log"
	line="$t ($triple):"
	if [ -n "$build_only" ]; then
		log="$logs/$t-build.log"
		: >"$log"
		echo "== $t: compiling the tests and the release build (nothing run)"
		build_everything
		continue
	fi

	if [ -n "$run_tests" ]; then
		timed tests
		count_results "$log"
		[ "$f" = 0 ] || { echo "$t: $f tests failed (log: $log)" >&2; exit 1; }
		total_pass=$((total_pass + p))
		line="$line
  tests: $p passed, $timing"
	fi

	timed release
	line="$line
  release build: $timing"

	if [ -n "$run_lab" ]; then
		timed lab
		count_results "$lab_log"
		if [ "$p" -lt 1 ] || [ "$f" != 0 ]; then
			echo "$t: the lab test failed (log: $lab_log)" >&2
			exit 1
		fi
		total_pass=$((total_pass + p))
		line="$line
  lab (foreign ntmd against the host's): $p passed, $timing"
	fi
	summary="$summary
$line"
done

[ -z "$build_only" ] || exit 0
echo "== summary$summary"
cross/sizes.sh "${targets[@]}"
if [ -n "$run_tests$run_lab" ]; then
	echo "$total_pass passed, $total_fail failed"
fi
