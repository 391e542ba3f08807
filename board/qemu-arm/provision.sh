#!/bin/sh
# Gives one box its identity: a node certificate and key from the deployment
# CA, and the CA certificate, on a small read-only ext2 filesystem (the
# factory partition). Run it on the provisioning host, never on the box.
#
#   provision.sh --ca DIR --name FQDN --image sdcard.img   write partition 2
#   provision.sh --ca DIR --name FQDN --out factory.ext2   write a file
#
# On the filesystem: device.pem and ca.pem (0444), device.key (0400), all
# owned by root, in a root directory of mode 0700. The box mounts it
# read-only on /etc/ntmobile/device. The key exists only in a temporary
# directory here (removed on exit) and on that filesystem.
#
# Needs ntm-ca (or NTM_CA=/path/to/ntm-ca), mke2fs and debugfs (e2fsprogs),
# and sfdisk for --image. The account must exist on the AS:
#   ntm-as account add -c as.json --email E --fqdn FQDN --device FQDN
set -eu

usage() {
	echo "usage: $0 --ca DIR --name FQDN (--image sdcard.img | --out factory.ext2) [--days N]" >&2
	exit 2
}

ca="" name="" image="" out="" days=""
while [ $# -gt 0 ]; do
	case "$1" in
		--ca) ca="${2:?}"; shift 2;;
		--name) name="${2:?}"; shift 2;;
		--image) image="${2:?}"; shift 2;;
		--out) out="${2:?}"; shift 2;;
		--days) days="${2:?}"; shift 2;;
		*) usage;;
	esac
done
{ [ -n "$ca" ] && [ -n "$name" ]; } || usage
[ -n "$image" ] || [ -n "$out" ] || usage
[ -z "$image" ] || [ -z "$out" ] || usage
ntm_ca="${NTM_CA:-ntm-ca}"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT INT TERM

# The size of the filesystem: the whole factory partition of the image, or
# 4 MiB for a separate file.
if [ -n "$image" ]; then
	# sfdisk -d prints "IMAGE2 : start= S, size= N, type=83".
	line="$(sfdisk -d "$image" | grep -E '^[^:]*2 :' || true)"
	[ -n "$line" ] || { echo "$image: no second partition" >&2; exit 1; }
	start="$(echo "$line" | sed -E 's/.*start= *([0-9]+).*/\1/')"
	sectors="$(echo "$line" | sed -E 's/.*size= *([0-9]+).*/\1/')"
	kib=$((sectors / 2))
else
	kib=4096
fi

set -- --ca "$ca" --role node --name "$name" --out "$stage/issued"
[ -z "$days" ] || set -- "$@" --days "$days"
"$ntm_ca" issue "$@" >/dev/null

umask 077
mkdir "$stage/root"
cp "$stage/issued/$name.pem" "$stage/root/device.pem"
cp "$stage/issued/$name.key" "$stage/root/device.key"
cp "$ca/ca.pem" "$stage/root/ca.pem"
chmod 0444 "$stage/root/device.pem" "$stage/root/ca.pem"
chmod 0400 "$stage/root/device.key"
chmod 0700 "$stage/root"

fs="$stage/factory.ext2"
mke2fs -q -F -t ext2 -b 1024 -L ntm-factory -E root_owner=0:0 \
	-d "$stage/root" "$fs" "$kib" >/dev/null
# mke2fs copies the files' owner, which is whoever runs this, and gives the
# root directory mode 0755: make them root's, and the directory 0700.
for f in device.pem device.key ca.pem; do
	debugfs -w -R "set_inode_field /$f uid 0" "$fs" >/dev/null 2>&1
	debugfs -w -R "set_inode_field /$f gid 0" "$fs" >/dev/null 2>&1
done
debugfs -w -R "set_inode_field / mode 040700" "$fs" >/dev/null 2>&1

if [ -n "$image" ]; then
	dd if="$fs" of="$image" bs=512 seek="$start" conv=notrunc status=none
	echo "$name: identity written to partition 2 of $image"
else
	cp "$fs" "$out"
	chmod 0600 "$out"
	echo "$name: identity written to $out"
fi
