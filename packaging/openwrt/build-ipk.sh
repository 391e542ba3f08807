#!/bin/sh
# Builds ntmobile-agent_VERSION_ARCH.ipk from an ntmd binary built elsewhere (the static
# musl builds, target/static/<target>/ntmd), without an OpenWrt SDK:
#
#   packaging/openwrt/build-ipk.sh ARCH BINARY_DIR OUT_DIR
#
# ARCH is the box's opkg architecture (`opkg print-architecture`, e.g.
# arm_cortex-a7_neon-vfpv4, mipsel_24kc, mips_24kc, aarch64_cortex-a53, x86_64);
# BINARY_DIR holds ntmd. The files, modes and scripts are those of the feed package in
# packaging/openwrt/ntmobile (its Makefile gives the version and the postinst), so the
# two packages install the same thing.
#
# The format is the one OpenWrt's own ipkg-build writes and opkg (OpenWrt up to 24.10)
# installs: a gzip'd tar (not an ar archive) of ./debian-binary, ./data.tar.gz and
# ./control.tar.gz, all entries owned by 0:0. OpenWrt snapshots after 24.10 use apk
# instead of opkg; their packages come from the feed Makefile built in the SDK.
# Set SOURCE_DATE_EPOCH for reproducible time stamps (default: the last commit's).
set -eu

usage() {
	echo "usage: $0 ARCH BINARY_DIR OUT_DIR" >&2
	exit 2
}
[ $# = 3 ] || usage
ARCH="$1"
BIN="$2"
OUT="$3"
case "$ARCH" in '' | *[!A-Za-z0-9_.+-]*) echo "$0: bad architecture name '$ARCH'" >&2 && exit 2 ;; esac
if [ ! -f "$BIN/ntmd" ] || [ ! -x "$BIN/ntmd" ]; then
	echo "$0: no executable $BIN/ntmd" >&2
	exit 1
fi

HERE="$(cd "$(dirname "$0")" && pwd)"
PKGDIR="$HERE/ntmobile"
MK="$PKGDIR/Makefile"
FILES="$PKGDIR/files"

# One value of the Makefile ("NAME:=VALUE").
make_var() {
	sed -n "s/^$1:=//p" "$MK"
}
VERSION="$(make_var PKG_VERSION)-r$(make_var PKG_RELEASE)"
LICENSE="$(make_var PKG_LICENSE)"
NAME=ntmobile-agent

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH="$(git -C "$HERE" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
MTIME="@$SOURCE_DATE_EPOCH"

# OpenWrt's libc is musl: a binary linked against another libc does not start there.
# NTM_IPK_ALLOW_DYNAMIC=1 packs one anyway (the package's own test, on a glibc host).
if command -v readelf >/dev/null && readelf -d "$BIN/ntmd" 2>/dev/null | grep -q NEEDED; then
	if [ "${NTM_IPK_ALLOW_DYNAMIC:-}" != 1 ]; then
		echo "$0: $BIN/ntmd is dynamically linked and would not start on OpenWrt: give the static musl build (cross/static.sh)" >&2
		exit 1
	fi
	echo "$0: note: $BIN/ntmd is dynamically linked (NTM_IPK_ALLOW_DYNAMIC=1)" >&2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
D="$WORK/data"
C="$WORK/control"
mkdir -p "$D/usr/sbin" "$D/etc/init.d" "$D/etc/config" "$D/etc/uci-defaults" \
	"$D/lib/upgrade/keep.d" "$C"

# The same modes as the Makefile's INSTALL_BIN (0755), INSTALL_CONF (0600), INSTALL_DATA (0644).
install -m 0755 "$BIN/ntmd" "$D/usr/sbin/ntmd"
install -m 0755 "$FILES/ntmobile.init" "$D/etc/init.d/ntmobile"
install -m 0600 "$FILES/ntmobile.config" "$D/etc/config/ntmobile"
install -m 0755 "$FILES/ntmobile.uci-defaults" "$D/etc/uci-defaults/90-ntmobile"
install -m 0644 "$FILES/ntmobile.keep" "$D/lib/upgrade/keep.d/ntmobile"

# The package's own postinst, from the Makefile ($$ there is $ in the script).
sed -n '/^define Package\/ntmobile-agent\/postinst$/,/^endef$/p' "$MK" |
	sed -e '1d' -e '$d' -e 's/\$\$/$/g' >"$C/postinst-pkg"
if [ ! -s "$C/postinst-pkg" ]; then
	echo "$0: no Package/ntmobile-agent/postinst in $MK" >&2
	exit 1
fi

# opkg runs postinst and prerm; on OpenWrt they hand over to default_postinst and
# default_prerm of /lib/functions.sh (which run postinst-pkg, apply the uci-defaults,
# enable and start or stop and disable the init script), as packages built in the SDK do.
cat >"$C/postinst" <<'EOF'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = 1 ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_postinst "$0" "$@"
EOF
cat >"$C/prerm" <<'EOF'
#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
EOF
chmod 0755 "$C/postinst" "$C/prerm" "$C/postinst-pkg"
# Only files the package carries: sysupgrade keeps the user-made ones under
# /etc/ntmobile/ through lib/upgrade/keep.d/ntmobile.
echo /etc/config/ntmobile >"$C/conffiles"

pack() { # DIR: a gzip'd tar of DIR's contents on stdout, owned by root, sorted
	tar -C "$1" --format=gnu --numeric-owner --owner=0 --group=0 --sort=name \
		--mtime="$MTIME" -cf - . | gzip -n -9
}
pack "$D" >"$WORK/data.tar.gz"
SIZE="$(gzip -dc "$WORK/data.tar.gz" | wc -c | tr -d ' ')"

cat >"$C/control" <<EOF
Package: $NAME
Version: $VERSION
Depends: kmod-tun
Source: feeds/ntmobile/ntmobile
SourceName: ntmobile
License: $LICENSE
Section: net
Architecture: $ARCH
Installed-Size: $SIZE
Description: NTMobile agent (ntmd): a virtual address reachable from every other node
 of the deployment, across NATs and between IPv4 and IPv6. Configured in
 /etc/config/ntmobile; dnsmasq forwards the NTM domains to its DNS stub, and
 the firewall zone 'ntm' holds its TUN device. A static musl build.
EOF
chmod 0644 "$C/control" "$C/conffiles"
pack "$C" >"$WORK/control.tar.gz"
echo 2.0 >"$WORK/debian-binary"

mkdir -p "$OUT"
IPK="$OUT/${NAME}_${VERSION}_${ARCH}.ipk"
tar -C "$WORK" --format=gnu --numeric-owner --owner=0 --group=0 --mtime="$MTIME" \
	-cf - ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -n -9 >"$IPK"
echo "$IPK"
