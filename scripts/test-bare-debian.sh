#!/bin/sh
# The README's commands on a bare Debian: makes a minimal root with
# `debootstrap --variant=minbase` (cached under target/bare-debian/, made once), runs the
# install step of scripts/test.sh and scripts/demo.sh in a copy of it (install_missing of
# scripts/env.sh with their lists, through scripts/apt-install.sh), then
# scripts/test-tools.sh in it: every tool the tests and the demo run must now be there.
# Needs root, debootstrap and network for apt; skipped with a notice otherwise (a mirror
# that cannot be reached is a skip, not a failure). Not run by scripts/test.sh (it takes
# minutes: see the timings it prints).
#
#   scripts/test-bare-debian.sh [MIRROR]    (default http://deb.debian.org/debian)
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mirror=${1:-http://deb.debian.org/debian}
cache="$ROOT/target/bare-debian"

if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1; then
	echo "skipped: needs root, debootstrap and unshare (apt-get install debootstrap)"
	exit 0
fi
# shellcheck disable=SC1091 # the machine's own release file
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || suite=bookworm

start=$(date +%s)
if [ ! -x "$cache/root/usr/bin/apt-get" ]; then
	rm -rf "$cache/root"
	mkdir -p "$cache"
	if ! debootstrap --variant=minbase "$suite" "$cache/root" "$mirror" >"$cache/debootstrap.log" 2>&1; then
		echo "skipped: debootstrap could not make a $suite root from $mirror (see $cache/debootstrap.log)"
		rm -rf "$cache/root"
		exit 0
	fi
	echo "made the bare $suite root in $(($(date +%s) - start)) s"
fi

work=$(mktemp -d "$cache/run.XXXXXX")
# shellcheck disable=SC2317 # called by the trap
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cp -a "$cache/root" "$work/root"
r="$work/root"
# The sources the check reads (no build output), and a stand-in cargo so that env.sh does
# not install a Rust toolchain: only the packages are under test here.
mkdir -p "$r/ntm" "$r/fakebin"
(cd "$ROOT" && tar cf - --exclude=./target --exclude=./.git .) | (cd "$r/ntm" && tar xf -)
printf '#!/bin/sh\nexit 0\n' >"$r/fakebin/cargo"
# env.sh finds the checkout from the path of the script that sources it.
# shellcheck disable=SC2016 # expanded when the written script runs
printf '. "$(dirname "$0")/env.sh"\ninstall_missing "$@"\n' >"$r/ntm/scripts/install-step.sh"
chmod +x "$r/fakebin/cargo"
cp /etc/resolv.conf "$r/etc/resolv.conf"

# install_missing's lists, as scripts/test-tools.sh reads them.
list() {
	sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | grep -E '^\s*install_missing ' | head -n 1 |
		sed 's/^\s*install_missing //'
}
lists="$(list "$ROOT/scripts/test.sh") $(list "$ROOT/scripts/demo.sh")"

t0=$(date +%s)
# A private mount namespace: /proc and /dev for apt inside the root, gone when it ends.
rc=0
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -m --propagation private sh -c '
	set -e
	r=$1
	shift
	mount -t proc proc "$r/proc"
	mount --rbind /dev "$r/dev"
	# shellcheck disable=SC2048,SC2086 # the lists are words
	chroot "$r" /usr/bin/env -i PATH=/fakebin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		sh /ntm/scripts/install-step.sh $*
' sh "$r" "$lists" >"$work/install.log" 2>&1 || rc=$?
t1=$(date +%s)
if [ "$rc" != 0 ]; then
	if grep -qE 'Could not resolve|Failed to fetch|Temporary failure' "$work/install.log"; then
		echo "skipped: apt could not reach the mirror from the bare root"
		exit 0
	fi
	echo "FAILED: the install step in the bare root (exit $rc):"
	tail -n 30 "$work/install.log" | sed 's/^/    /'
	exit 1
fi
echo "the install step of scripts/test.sh and scripts/demo.sh in the bare root: $((t1 - t0)) s"
rc=0
chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh /ntm/scripts/test-tools.sh || rc=$?
echo "the whole check: $(($(date +%s) - start)) s"
exit "$rc"
