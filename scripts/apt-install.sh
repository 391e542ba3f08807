#!/bin/sh
# Installs Debian packages with apt, holding off every system service a package would
# start (Debian's policy-rc.d: exit 101 refuses each start). Used by scripts/env.sh and
# .ci/run, so that both hold services the same way.
#
#   scripts/apt-install.sh PACKAGE...
#
# A policy-rc.d the machine already has is its owner's: it is left as it is (it already
# says what may start) and is never removed. Only a file this script wrote is removed,
# also when the install fails or is interrupted.
# scripts/test-apt-install.sh checks this.
set -eu
policy=/usr/sbin/policy-rc.d
[ "$#" -gt 0 ] || exit 0
made=""
cleanup() {
	if [ -n "$made" ]; then
		rm -f "$policy"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# noclobber: the file is created only if it is not there, with no window between the
# check and the write in which another one could appear and be overwritten.
if (set -C && printf '#!/bin/sh\nexit 101\n' >"$policy") 2>/dev/null; then
	made=1
	chmod +x "$policy"
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
