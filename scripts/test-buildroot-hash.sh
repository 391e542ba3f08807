#!/usr/bin/env bash
# Checks buildroot/package/ntmobile/ntmobile.hash the way Buildroot itself
# would: for each Buildroot version named below, Buildroot's own download step
# (support/download/dl-wrapper with its git backend and cargo-post-process, the
# same tar and the same cargo as that Buildroot) makes the vendored tarball of
# the pinned commit from this repository and checks it against the hash file.
# The arguments come from that Buildroot's `make printvars` for a configuration
# with the package's git source at its default URL (this checkout's repository), and are passed as pkg-download.mk's DOWNLOAD
# passes them; the tarball's name, so the -gitN-cargoN suffix, is Buildroot's.
#
#   scripts/test-buildroot-hash.sh            check; skips what it cannot get
#   scripts/test-buildroot-hash.sh --print    also print the hash lines made
#
# What it needs, and where it gets it (nothing of it is committed):
# - Buildroot: cloned from NTM_BUILDROOT_GIT (a URL or a local repository;
#   default Buildroot's upstream repository). No Buildroot reachable: the test
#   is skipped, saying so.
# - cargo of the Rust version that Buildroot uses (RUST_BIN_VERSION), since the
#   vendored tree depends on it (hence the -cargoN suffix): any rustup toolchain
#   or /usr/bin/cargo of the same minor version; NTM_BR_CARGO forces one.
# - GNU tar >= 1.35, as Buildroot requires (it builds its own otherwise; 1.34
#   writes other headers): NTM_TAR, the system's tar, or, as root, GNU tar 1.35
#   built once from Debian's source package into target/buildroot-hash/.
# - crates.io, for cargo vendor (the crates are cached in target/buildroot-hash/).
# NTM_REQUIRE_BUILDROOT_HASH=1 turns every skip into a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/target/buildroot-hash"
HASH_FILE="$ROOT/buildroot/package/ntmobile/ntmobile.hash"
# The Buildroot versions whose tarball names ntmobile.hash carries: the latest
# stable release (-cargo5) and the master commit this tree was checked against
# (-cargo6, as 2026.08 will be). NTM_BUILDROOT_REFS="REF ..." names others.
read -r -a BR_REFS <<<"${NTM_BUILDROOT_REFS:-2026.05.1 e991fa071605a78c17adba2ed26e07c3b8c95583}"
BR_GIT="${NTM_BUILDROOT_GIT:-https://gitlab.com/buildroot.org/buildroot.git}"

print=""
[ "${1:-}" = --print ] && print=1

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
not_ok() { failed=$((failed + 1)); echo "FAIL  $*"; }
skip() {
	if [ "${NTM_REQUIRE_BUILDROOT_HASH:-0}" = 1 ]; then
		not_ok "$* (NTM_REQUIRE_BUILDROOT_HASH=1)"
	else
		skipped=$((skipped + 1))
		echo "skip  $*"
	fi
}
finish() {
	[ "$skipped" = 0 ] || echo "$skipped part(s) skipped"
	echo "$passed passed, $failed failed"
	[ "$failed" = 0 ]
	exit
}

TMP="$(mktemp -d /tmp/ntm-br-hash.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$CACHE"

# --- Buildroot ----------------------------------------------------------------
declare -A BR_DIR=()
if timeout 300 git clone -q --bare --filter=blob:none "$BR_GIT" "$TMP/buildroot.git" 2>/dev/null ||
	timeout 300 git clone -q --bare "$BR_GIT" "$TMP/buildroot.git" 2>/dev/null; then
	for r in "${BR_REFS[@]}"; do
		mkdir -p "$TMP/br-$r"
		if git --git-dir="$TMP/buildroot.git" archive "$r" | tar -x -C "$TMP/br-$r"; then
			BR_DIR[$r]="$TMP/br-$r"
		else
			not_ok "Buildroot $r is not in $BR_GIT"
		fi
	done
else
	skip "Buildroot cannot be cloned from $BR_GIT (no network to it: set NTM_BUILDROOT_GIT to a clone)"
	finish
fi

# --- tools ------------------------------------------------------------------
# Buildroot's own list of host tools for `make` (support/dependencies).
if [ "$(id -u)" = 0 ]; then
	# shellcheck source=scripts/env.sh
	. "$ROOT/scripts/env.sh"
	install_missing git:git cpio:cpio rsync:rsync bc:bc file:file unzip:unzip \
		wget:wget perl:perl patch:patch make:make gcc:build-essential flock:util-linux
	cd "$ROOT"
fi

tar_version_ok() {
	local major minor
	read -r major minor < <("$1" --version 2>/dev/null |
		sed -n '1s/^tar (GNU tar) \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
	[ -n "${minor:-}" ] && { [ "$major" -gt 1 ] || [ "$minor" -ge 35 ]; }
}
# GNU tar (1.35 today) from the source package of Debian's next release, through apt
# (a private source list built from this machine's Debian mirror), unpatched.
build_tar() {
	local a="$TMP/apt" uri
	uri="$(grep -h -E '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
		/etc/apt/sources.list.d/*.list 2>/dev/null | grep -o -E 'https?://[^ ]+/debian/?( |$)' |
		head -n 1 | tr -d ' ')"
	[ -n "$uri" ] || return 1
	mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/src"
	echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$a/sources.list"
	local -a o=(-o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache")
	apt-get "${o[@]}" -qq update >/dev/null 2>&1 || return 1
	(cd "$a/src" && apt-get "${o[@]}" -qq source --download-only tar >/dev/null 2>&1) || return 1
	mkdir -p "$a/tar"
	tar -xJf "$(echo "$a"/src/tar_*.orig.tar.xz)" -C "$a/tar" --strip-components=1
	(cd "$a/tar" && FORCE_UNSAFE_CONFIGURE=1 ./configure -q --disable-nls --prefix="$CACHE/tar" >/dev/null 2>&1 &&
		make -j2 >/dev/null 2>&1 && make install >/dev/null 2>&1) || return 1
}
TAR_BIN=""
for t in "${NTM_TAR:-}" "$CACHE/tar/bin/tar" "$(command -v tar)"; do
	if [ -n "$t" ] && tar_version_ok "$t"; then TAR_BIN="$t"; break; fi
done
if [ -z "$TAR_BIN" ] && [ "$(id -u)" = 0 ]; then
	echo "info  building GNU tar 1.35 (this machine's is older; Buildroot needs >= 1.35)"
	build_tar && TAR_BIN="$CACHE/tar/bin/tar"
fi
if [ -z "$TAR_BIN" ]; then
	skip "no GNU tar >= 1.35 (set NTM_TAR, or run as root to build one)"
	finish
fi

# cargo_for MINOR: a cargo command of Rust 1.MINOR.
cargo_for() {
	local tc v
	if [ -n "${NTM_BR_CARGO:-}" ]; then
		echo "$NTM_BR_CARGO"
		return
	fi
	for tc in $(rustup toolchain list 2>/dev/null | cut -d' ' -f1); do
		v="$(rustup run "$tc" cargo --version 2>/dev/null | cut -d' ' -f2)"
		if [ "$(echo "$v" | cut -d. -f2)" = "$1" ]; then
			echo "rustup run $tc cargo"
			return
		fi
	done
	v="$(/usr/bin/cargo --version 2>/dev/null | cut -d' ' -f2)"
	if [ "$(echo "$v" | cut -d. -f2)" = "$1" ]; then
		echo /usr/bin/cargo
	fi
}

# --- the check, per Buildroot -------------------------------------------------
cat >"$TMP/defconfig" <<EOF
BR2_x86_64=y
BR2_TOOLCHAIN_BUILDROOT_GLIBC=y
BR2_PACKAGE_NTMOBILE=y
BR2_PACKAGE_NTMOBILE_SOURCE_GIT=y
EOF
VARS="NTMOBILE_SOURCE NTMOBILE_DL_VERSION NTMOBILE_DL_SUBDIR NTMOBILE_VERSION NTMOBILE_RAWNAME"
VARS="$VARS NTMOBILE_HASH_FILES NTMOBILE_DOWNLOAD_POST_PROCESS NTMOBILE_SITE RUST_BIN_VERSION"
made=()
for r in "${BR_REFS[@]}"; do
	br="${BR_DIR[$r]:-}"
	[ -n "$br" ] || continue
	out="$TMP/out-$r"
	if ! make -s -C "$br" BR2_EXTERNAL="$ROOT/buildroot" O="$out" BR2_DEFCONFIG="$TMP/defconfig" \
		defconfig >"$TMP/defconfig-$r.log" 2>&1; then
		not_ok "Buildroot $r: the configuration loads"
		sed 's/^/      /' "$TMP/defconfig-$r.log" | tail -n 5
		continue
	fi
	make -s -C "$out" printvars VARS="$VARS" >"$TMP/vars-$r" 2>&1 || true
	# printvars prints NAME=value lines; no value has a space or a quote.
	unset NTMOBILE_SOURCE
	while IFS='=' read -r k v; do
		case "$k" in NTMOBILE_* | RUST_BIN_VERSION) printf -v "$k" '%s' "$v" ;; esac
	done <"$TMP/vars-$r"
	if [ -z "${NTMOBILE_SOURCE:-}" ] || [ "$NTMOBILE_DOWNLOAD_POST_PROCESS" != cargo ]; then
		not_ok "Buildroot $r: make printvars gives the package's download (see $TMP/vars-$r)"
		continue
	fi
	minor="$(echo "$RUST_BIN_VERSION" | cut -d. -f2)"
	cargo_cmd="$(cargo_for "$minor")"
	if [ -z "$cargo_cmd" ]; then
		skip "Buildroot $r: no cargo 1.$minor here for $NTMOBILE_SOURCE (rustup toolchain install $RUST_BIN_VERSION, or NTM_BR_CARGO)"
		continue
	fi
	# Buildroot runs "cargo" from PATH (host-rust's): put the chosen one there.
	mkdir -p "$TMP/bin-$r"
	printf '#!/bin/sh\nexec %s "$@"\n' "$cargo_cmd" >"$TMP/bin-$r/cargo"
	chmod +x "$TMP/bin-$r/cargo"
	dl="$TMP/dl-$r"
	mkdir -p "$dl/$NTMOBILE_DL_SUBDIR" "$CACHE/cargo-home" "$TMP/build-$r"
	# As pkg-download.mk's DOWNLOAD, for a git site with the cargo post-process.
	rc=0
	(cd "$br" && env PATH="$TMP/bin-$r:$PATH" CARGO_HOME="$CACHE/cargo-home" TAR="$TAR_BIN" GIT=git \
		BUILD_DIR="$TMP/build-$r" BR_NO_CHECK_HASH_FOR= \
		flock "$dl/$NTMOBILE_DL_SUBDIR/.lock" support/download/dl-wrapper \
		-c "$NTMOBILE_DL_VERSION" -d "$dl/$NTMOBILE_DL_SUBDIR" -D "$dl" -f "$NTMOBILE_SOURCE" \
		-H "$NTMOBILE_HASH_FILES" -n "$NTMOBILE_DL_SUBDIR-$NTMOBILE_VERSION" -N "$NTMOBILE_RAWNAME" \
		-o "$dl/$NTMOBILE_DL_SUBDIR/$NTMOBILE_SOURCE" -u "git+$NTMOBILE_SITE" -p cargo --) \
		>"$TMP/dl-$r.log" 2>&1 || rc=$?
	if [ "$rc" = 0 ] && grep -q "^$NTMOBILE_SOURCE: OK" "$TMP/dl-$r.log"; then
		ok "Buildroot $r ($(${cargo_cmd} --version | cut -d' ' -f1-2), $("$TAR_BIN" --version | head -n 1)): $NTMOBILE_SOURCE matches ntmobile.hash"
	else
		not_ok "Buildroot $r: $NTMOBILE_SOURCE"
		grep -E '^ERROR' "$TMP/dl-$r.log" | sed 's/^/      /' | head -n 8
	fi
	# The hash of what was made: from check-hash's report, or, when the hash
	# file has no line for this name yet, of the tarball dl-wrapper kept.
	got="$(sed -n 's/^ERROR: got *: //p; s/^.*: OK (sha256: \(.*\))$/\1/p' "$TMP/dl-$r.log" | head -n 1)"
	if [ -z "$got" ] && [ -f "$dl/$NTMOBILE_DL_SUBDIR/$NTMOBILE_SOURCE" ]; then
		got="$(sha256sum "$dl/$NTMOBILE_DL_SUBDIR/$NTMOBILE_SOURCE" | cut -d' ' -f1)"
	fi
	[ -z "$got" ] || made+=("sha256  $got  $NTMOBILE_SOURCE")
done

if [ -n "$print" ]; then
	echo "The hash lines Buildroot's download made (for $HASH_FILE):"
	printf '%s\n' "${made[@]}"
fi
finish
