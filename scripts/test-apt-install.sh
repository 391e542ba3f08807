#!/bin/sh
# Checks that installing packages never destroys the machine's own policy-rc.d: runs
# install_missing of scripts/env.sh (which uses scripts/apt-install.sh, as .ci/run does)
# with a stand-in apt-get, in a private mount namespace whose /usr/sbin is an empty tmpfs,
# so the machine's real /usr/sbin is never touched. Needs root and unshare; skipped
# with a notice otherwise. Prints one line per check; exits non-zero on any failure.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if [ "${1:-}" = "--case" ]; then
	# Inside the namespace: $2 = "own" (the machine has a policy-rc.d) or "none";
	# $3 = the stand-in apt-get's exit status. Prints what apt-get saw and what is left.
	mount -t tmpfs -o size=1m ntm-test /usr/sbin
	if [ "$2" = own ]; then
		printf '#!/bin/sh\n# the owner'"'"'s policy\nexit 0\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
	fi
	fake=$(mktemp -d)
	cat >"$fake/apt-get" <<FAKE
#!/bin/sh
if [ "\$1" = install ]; then
	if [ -e /usr/sbin/policy-rc.d ]; then
		/usr/sbin/policy-rc.d ntm-test start; echo "during: policy exits \$?" >&2
	else
		echo "during: no policy" >&2
	fi
	exit $3
fi
FAKE
	chmod +x "$fake/apt-get"
	PATH="$fake:$PATH"
	export PATH
	. "$ROOT/scripts/env.sh"
	rc=0
	(install_missing ntm-no-such-command:ntm-test-package 2>&1) || rc=$?
	echo "install: $rc"
	if [ -e /usr/sbin/policy-rc.d ]; then
		echo "after: $(grep -c "the owner's policy" /usr/sbin/policy-rc.d) owner lines"
	else
		echo "after: none"
	fi
	rm -rf "$fake"
	exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null 2>&1; then
	echo "skipped: needs root and unshare (a private mount namespace)"
	exit 0
fi
passed=0
failed=0
check() { # name, owner?, apt status, expected output lines...
	name=$1
	shift
	out=$(unshare -m --propagation private sh "$ROOT/scripts/test-apt-install.sh" --case "$1" "$2" 2>&1) || true
	shift 2
	ok=1
	for want in "$@"; do
		printf '%s\n' "$out" | grep -qxF -- "$want" || ok=""
	done
	if [ -n "$ok" ]; then
		echo "ok: $name"
		passed=$((passed + 1))
	else
		echo "FAILED: $name; output:"
		printf '%s\n' "$out" | sed 's/^/    /'
		failed=$((failed + 1))
	fi
}
check "the machine's policy-rc.d is used during the install and kept" own 0 \
	"during: policy exits 0" "install: 0" "after: 1 owner lines"
check "the machine's policy-rc.d is kept when the install fails" own 100 \
	"during: policy exits 0" "after: 1 owner lines"
check "without one, services are held off during the install and the file removed" none 0 \
	"during: policy exits 101" "install: 0" "after: none"
check "without one, the file is removed also when the install fails" none 100 \
	"during: policy exits 101" "after: none"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
