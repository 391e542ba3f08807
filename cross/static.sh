#!/bin/bash
# Builds static musl binaries for the routers with zig as the C compiler and linker
# (cargo-zigbuild and the ziglang package from PyPI), runs the library's and the agent's
# tests as static binaries under qemu-user, checks that the release binaries are static
# and start, and prints their sizes. See cross/README.md, "Static musl builds".
#
#   cross/static.sh [--no-test] [--panic-messages] [TARGET...]
#
# TARGET is armv7, aarch64, mipsel, mips (big endian) or x86_64; default all five. Per target:
#   test     the tests of cross/build.sh but the lab: ntm-proto (all features, and the unit
#            tests without default features), ntm-dns, ntm-io, ntmd's unit tests, its TLS login tests
#            and its netlink tests against the kernel, one namespace per test (as root)
#   release  ntmd, and for the 64-bit targets (aarch64, x86_64) the four servers too;
#            checked static (no program interpreter) and started under qemu. On mips and
#            mipsel a panic in the release ntmd aborts without a message, which keeps it
#            under 900 KiB; --panic-messages keeps the messages (about 110 KiB more).
# The binaries end up in target/static/<triple>/ (e.g. target/static/armv7-unknown-linux-
# musleabihf/ntmd); cargo's own output and the logs are under target/static too. As root
# it installs what it needs: Debian's rustc-web, cargo-web, rust-web-src, qemu-user and llvm, and
# from PyPI ziglang and cargo-zigbuild (pinned below).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
exec 5>&1
root=$(pwd)

# The zig and cargo-zigbuild this was made with; newer ones may well work too.
zig_pin="ziglang==0.17.1"
zigbuild_pin="cargo-zigbuild==0.24.1"

run_tests=1
panic_messages=""
targets=()
for arg in "$@"; do
	case "$arg" in
	--no-test) run_tests="" ;;
	--panic-messages) panic_messages=1 ;;
	armv7 | aarch64 | mipsel | mips | x86_64) targets+=("$arg") ;;
	-h | --help)
		sed -n '2,21p' "$0"
		exit 0
		;;
	*)
		echo "unknown argument: $arg (see --help)" >&2
		exit 2
		;;
	esac
done
[ ${#targets[@]} -gt 0 ] || targets=(armv7 aarch64 mipsel mips x86_64)

mips_flags="-Ctarget-feature=+crt-static -Crelocation-model=static -Cforce-unwind-tables=no -Zlocation-detail=none"
# triple, qemu program (none: runs natively), target flags
target_info() {
	case "$1" in
	# Thumb-2, as cross/build.sh builds armv7 (a third smaller than ARM code).
	armv7) echo "armv7-unknown-linux-musleabihf qemu-arm -Ctarget-feature=+thumb-mode" ;;
	aarch64) echo "aarch64-unknown-linux-musl qemu-aarch64" ;;
	# Rust's MIPS musl targets (tier 3) link dynamically unless asked; the others are
	# static by default. MIPS flags for size (cross/README.md, "Static musl builds"):
	# position-dependent code (the binary is not PIE anyway), no unwind tables, panic
	# messages without file and line (and std's smaller algorithms, below).
	mipsel) echo "mipsel-unknown-linux-musl qemu-mipsel $mips_flags" ;;
	mips) echo "mips-unknown-linux-musl qemu-mips $mips_flags" ;;
	x86_64) echo "x86_64-unknown-linux-musl -" ;;
	esac
}

# shellcheck source=cross/common.sh
. cross/common.sh

# --- what the build needs --------------------------------------------------------------
want_pkg rustc-web cargo-web rust-web-src qemu-user file binutils llvm
install_wanted
python=$(command -v python3)
if ! "$python" -c 'import ziglang' 2>/dev/null || ! "$python" -m pip show cargo-zigbuild >/dev/null 2>&1; then
	if [ "$(id -u)" != 0 ]; then
		echo "error: needs $zig_pin and $zigbuild_pin from PyPI (pip install them, or run as root)" >&2
		exit 1
	fi
	echo "== installing from PyPI: $zig_pin $zigbuild_pin"
	"$python" -m pip install -q --disable-pip-version-check "$zig_pin" "$zigbuild_pin"
fi
# pip puts the program beside the interpreter it installed for; cargo-zigbuild runs zig
# through that interpreter (`python3 -m ziglang`), which is told, not looked up on PATH.
python=$("$python" -c 'import sys; print(sys.executable)')
zigbuild=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cargo-zigbuild
[ -x "$zigbuild" ] || zigbuild=$(command -v cargo-zigbuild)

logs="$root/target/static/logs"
mkdir -p "$logs"

# Runs cargo-zigbuild SUBCOMMAND for $triple with Debian's cargo and rustc: there is no
# prebuilt musl standard library here, so -Zbuild-std compiles it from rust-web-src
# (RUSTC_BOOTSTRAP=1 allows the flag on a stable compiler). zig supplies musl's C library,
# its start files and libunwind, so rustc's own self-contained musl objects (which a
# build-std sysroot does not have) are turned off. The profile is the workspace's release
# profile as committed: overrides from the environment would change the sizes.
zcargo() {
	local sub=$1
	shift
	env -u CARGO_PROFILE_RELEASE_LTO -u CARGO_PROFILE_RELEASE_CODEGEN_UNITS \
		-u CARGO_PROFILE_RELEASE_INCREMENTAL -u CARGO_PROFILE_RELEASE_OPT_LEVEL -u RUSTFLAGS \
		PATH="/usr/bin:$PATH" CARGO_ZIGBUILD_PYTHON_PATH="$python" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
		"${runner_env[@]}" \
		"CARGO_TARGET_${env_triple}_RUSTFLAGS=$target_rustflags -Clink-self-contained=no$extra_rustflags" \
		nice -n 10 "$zigbuild" "$sub" --locked --target "$triple" --target-dir "$root/target/static" \
		-Zbuild-std=std,panic_abort "$@"
}

summary=""
total_pass=0
sizes=""

phase_tests() {
	if [ "$t" = mips ]; then
		# A big-endian guest on a little-endian host: qemu-user's rtnetlink conversion has
		# gaps (cross/README.md). A static binary cannot have cross/qemu-netlink-shim.c
		# preloaded, so the tests are linked with it, through the linker's --wrap.
		local shim="$root/target/static/$triple/qemu-netlink-shim.o"
		mkdir -p "$(dirname "$shim")"
		"$python" -m ziglang cc -target mips-linux-musleabi -c -O2 -Wall -Wextra -Werror \
			-DNTM_SHIM_WRAP -o "$shim" cross/qemu-netlink-shim.c
		extra_rustflags=" -Clink-arg=$shim -Clink-arg=-Wl"
		local f
		for f in recvfrom recv recvmsg sendto send; do extra_rustflags="$extra_rustflags,--wrap=$f"; done
	fi
	qemu_tests zcargo 2>&1 | tee -a "$log"
	netlink_tests "$log" 2>&1 | tee -a "$log"
	extra_rustflags=""
}

# The standard library keeps its stack trace on panic but not the symbolizer, as in
# cross/build.sh (cross/README.md, "Footprint").
#
# MIPS code is about 1.6 times the size of Thumb-2, and the panic machinery's share of it
# (a formatted message and its arguments at every bounds check, unwrap and overflow) is
# what keeps a mipsel ntmd over its 900 KiB budget, with nothing else of that size left
# (cross/README.md, "Static musl builds"). So on MIPS a panic aborts at once: the process
# dies by a trap signal without a message, and the supervisor (procd, or the SysV
# scripts' respawn loop) logs the death and starts it again. The tests keep their messages.
phase_release() {
	local std_features=backtrace-trace-only
	case "$t" in mips | mipsel)
		std_features="$std_features,optimize_for_size"
		[ -n "$panic_messages" ] || extra_rustflags=" -Zunstable-options -Cpanic=immediate-abort"
		;;
	esac
	zcargo zigbuild --release "${pkgs[@]}" --bins "-Zbuild-std-features=$std_features" 2>&1 | tee -a "$log"
	extra_rustflags=""
}

# Strips each release binary into target/static/<triple>/, checks that it is static and
# starts, and notes its sizes: stripped and gzip'd, as in a package. The release profile
# strips already, but the linker keeps MIPS's .pdr section (procedure descriptors for
# debuggers, about 110 KiB of ntmd), which strip removes, as OpenWrt's packaging does.
check_release() {
	local b bin out size gz rc goal
	for b in "${bins[@]}"; do
		bin="$root/target/static/$triple/$b"
		llvm-strip --strip-all -o "$bin" "$root/target/static/$triple/release/$b"
		out=$(file -b "$bin")
		case "$out" in
		*"statically linked"* | *"static-pie linked"*) ;;
		*) echo "$t: $b is not static: $out" >&2; return 1 ;;
		esac
		case "$out" in *", stripped"*) ;; *) echo "$t: $b is not stripped: $out" >&2; return 1 ;; esac
		if readelf -lW "$bin" | grep -q INTERP || readelf -dW "$bin" | grep -q NEEDED; then
			echo "$t: $b asks for a program interpreter or shared libraries" >&2
			return 1
		fi
		# ntmd speaks DNS itself; the C library's resolver in it is dead weight (34 KiB on
		# MIPS) that std's `ToSocketAddrs` for a string address pulls in. Its marker:
		if [ "$b" = ntmd ] && grep -q /etc/resolv.conf "$bin"; then
			echo "$t: ntmd links the C library's DNS resolver (a socket bound or connected by string?)" >&2
			return 1
		fi
		# It starts: a configuration file that does not exist is a usage error (exit 2).
		rc=0
		"${runner[@]}" "$bin" check -c /nonexistent/ntm.json >/dev/null 2>&1 || rc=$?
		[ "$rc" = 2 ] || { echo "$t: '$b check -c /nonexistent/ntm.json' exited $rc, not 2" >&2; return 1; }
		size=$(stat -c %s "$bin")
		gz=$(gzip -9n <"$bin" | wc -c)
		goal=""
		case "$t/$b" in armv7/ntmd) goal=640 ;; mipsel/ntmd) goal=900 ;; esac
		sizes="$sizes$(awk -v t="$t" -v b="$b" -v s="$size" -v g="$gz" -v goal="$goal" \
			'BEGIN { printf "%-8s %-6s %10.1f %10.1f", t, b, s / 1024, g / 1024
				if (goal != "") printf "   goal %d: %s", goal, (s / 1024 <= goal ? "met" : "OVER") }')
"
	done
}

for t in "${targets[@]}"; do
	read -r triple qemu target_rustflags <<<"$(target_info "$t")"
	env_triple=$(echo "$triple" | tr 'a-z-' 'A-Z_')
	runner=()
	runner_env=()
	if [ "$qemu" != - ]; then
		runner=("$qemu")
		runner_env=("CARGO_TARGET_${env_triple}_RUNNER=$qemu")
	fi
	extra_rustflags=""
	bins=(ntmd)
	pkgs=(-p ntm-agent)
	case "$t" in aarch64 | x86_64)
		bins+=(ntm-as ntm-dc ntm-rs ntm-ns ntm-ca)
		pkgs+=(-p ntm-servers)
		;;
	esac
	log="$logs/$t.log"
	: >"$log"
	line="$t ($triple):"

	if [ -n "$run_tests" ]; then
		timed tests
		count_results "$log"
		[ "$f" = 0 ] || { echo "$t: $f tests failed (log: $log)" >&2; exit 1; }
		[ "$p" -gt 0 ] || { echo "$t: no test ran (log: $log)" >&2; exit 1; }
		total_pass=$((total_pass + p))
		line="$line
  tests: $p passed, $timing"
	fi

	timed release
	check_release
	line="$line
  release build: $timing"
	summary="$summary
$line"
done

echo "== summary$summary"
echo "== sizes (KiB; static, stripped; gzip -9 as a package carries them)"
printf '%-8s %-6s %10s %10s\n' target binary stripped gzip
printf '%s' "$sizes"
echo "(binaries in target/static/<triple>/)"
if [ -n "$run_tests" ]; then
	echo "$total_pass passed, 0 failed"
fi
