#!/bin/sh
# Buildroot post-build script for the QEMU vexpress-a9 box ($1: the target
# directory). The box's identity is not in the image: it lives on the factory
# partition (the second partition of sdcard.img, written per box by
# provision.sh) and is mounted read-only on /etc/ntmobile/device.
set -eu

target="$1"

install -d -m 0755 "$target/etc/ntmobile"
install -d -m 0700 "$target/etc/ntmobile/device"

if ! grep -q '[[:space:]]/etc/ntmobile/device[[:space:]]' "$target/etc/fstab"; then
	printf '/dev/mmcblk0p2\t/etc/ntmobile/device\text2\tro,nosuid,nodev,noexec\t0\t0\n' \
		>>"$target/etc/fstab"
fi
