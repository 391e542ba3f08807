# shellcheck shell=sh
# Shared set-up for the project's scripts: find or install a Rust toolchain.
# Sourced, not run.
set -eu
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
	echo "cargo not found: installing the stable toolchain with rustup" >&2
	if ! command -v curl >/dev/null 2>&1; then
		if [ "$(id -u)" = 0 ]; then
			apt-get update -qq && apt-get install -y -qq curl ca-certificates build-essential >/dev/null
		else
			echo "error: need curl (apt-get install curl) or a Rust toolchain" >&2
			exit 1
		fi
	fi
	curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt >&2
	export PATH="$HOME/.cargo/bin:$PATH"
fi
cd "$(dirname "$0")/.."
NTM_ROOT=$(pwd)

# install_missing CMD:PACKAGE ...: installs with apt the Debian package of each command that
# is not on this machine (as root). No service may start from a package while it installs
# (scripts/apt-install.sh holds them off and keeps a policy-rc.d the machine already has).
install_missing() {
	missing=""
	for t in "$@"; do
		cmd=${t%%:*}
		command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing ${t#*:}"
	done
	[ -n "$missing" ] || return 0
	echo "installing:$missing" >&2
	# shellcheck disable=SC2086 # a list of package names
	"$NTM_ROOT/scripts/apt-install.sh" $missing
}
