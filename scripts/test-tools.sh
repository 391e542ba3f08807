#!/bin/sh
# Checks that the README's two commands install every tool they need, so that a fresh
# Debian machine passes them as written (issue 13):
#
# - every external command the tests use is installed by scripts/test.sh's
#   `install_missing` list, or comes with every Debian system (a package that is
#   Essential or of priority "required": what `debootstrap --variant=minbase` installs);
# - the same for the demo (scripts/demo.sh: the lab library and lab/examples/netdemo.rs);
# - each CMD:PACKAGE of both lists is right: PACKAGE (or a package it depends on) holds CMD;
# - no script runs `sudo` (the commands run as root, where there may be no sudo).
#
# The tools are collected from the sources, not listed by hand: in the Rust tests and the
# lab library, the lists given to `tools_or_skip`, `have(..)`, `Missing(..)`,
# `Command::new(..)` and the first word of the commands run in namespaces
# (`exec`/`try_exec`/`spawn`); in the shell scripts scripts/test.sh runs, `command -v X`.
# The benchmarks' peers are not here: scripts/bench.sh installs its own.
#
# Each tool's package is looked up with dpkg on this machine, so the tools must be
# installed here (scripts/test.sh installs them first). Prints one line per tool;
# exits non-zero on any failure.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if ! command -v dpkg >/dev/null 2>&1; then
	echo "skipped: needs dpkg (a Debian machine)"
	exit 0
fi

# CMD:PACKAGE pairs of an `install_missing` call in a script (joined continuation lines).
install_list() {
	sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | grep -E '^\s*install_missing ' | head -n 1 |
		sed 's/^\s*install_missing //' | tr -s ' \t' '\n' | grep ':'
}

# The tools the Rust sources FILES... run.
rust_tools() {
	{
		# tools_or_skip(what, &["a", "b"]): the list, possibly over several lines.
		for f in "$@"; do
			tr '\n' ' ' <"$f" | grep -oE 'tools_or_skip\([^;]*?&\[[^]]*\]' | grep -oE '&\[[^]]*\]' |
				grep -oE '"[^"]+"' || true
			grep -hoE '(have|find_tool|Missing)\("[^"]+"\)' "$f" | grep -oE '"[^"]+"' || true
			grep -hoE 'Command::new\("[^"]+"\)' "$f" | grep -oE '"[^"]+"' || true
			tr '\n' ' ' <"$f" | grep -oE '(exec|try_exec|spawn|spawn_piped)\([^;]{0,120}?&\["[^"]+"' |
				grep -oE '&\["[^"]+"' | grep -oE '"[^"]+"' || true
		done
	} | tr -d '"' | grep -vE '^(sh|ntmd|ntm-[a-z]+)$' | sort -u
}

# The tools shell scripts check for with `command -v`.
shell_tools() {
	grep -hoE 'command -v "?[a-zA-Z0-9_.-]+' "$@" | awk '{print $NF}' | tr -d '"' |
		grep -vE '^(cargo|cargo-fuzz|boringtun-cli)$' | sort -u || true
}

# Where the program TOOL is: on PATH or in the sbin directories, as the lab looks (not a
# shell builtin: the tests run programs).
where() {
	for d in $(printf '%s' "$PATH" | tr ':' ' ') /usr/sbin /sbin /usr/local/sbin; do
		if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then
			echo "$d/$1"
			return
		fi
	done
}

# The package holding the program PATH ("" if none does).
package_of() {
	p=$1
	for q in "$p" "$(readlink -f "$p")" "${p#/usr}" "$(readlink -f "$p" | sed 's#^/usr##')"; do
		case "$q" in /*) ;; *) continue ;; esac
		# dpkg's file lists (what `dpkg -S` reads, and much faster to grep at once).
		pkg=$(grep -lxF "$q" /var/lib/dpkg/info/*.list 2>/dev/null | head -n 1 |
			sed 's#.*/##; s/\.list$//; s/:.*//') || true
		if [ -n "$pkg" ]; then
			echo "$pkg"
			return
		fi
	done
}

in_every_debian() {
	info=$(dpkg-query -W -f '${Essential} ${Priority}' "$1" 2>/dev/null) || return 1
	case "$info" in
	yes*) return 0 ;;
	*" required") return 0 ;;
	*) return 1 ;;
	esac
}

failed=0
passed=0
fail() {
	echo "FAILED: $*"
	failed=$((failed + 1))
}
ok() {
	echo "ok: $*"
	passed=$((passed + 1))
}

# check WHAT LIST TOOLS: each tool is in LIST (CMD:PACKAGE lines) or in every Debian.
check() {
	what=$1
	list=$2
	for t in $3; do
		path=$(where "$t")
		if printf '%s\n' "$list" | grep -q "^$t:"; then
			pkg=$(printf '%s\n' "$list" | grep "^$t:" | head -n 1 | cut -d: -f2)
			if [ -z "$path" ]; then
				fail "$what: $t (listed with $pkg) is not installed on this machine"
			else
				ok "$what: $t is installed by the list ($pkg)"
			fi
			continue
		fi
		if [ -z "$path" ]; then
			fail "$what: $t is used but neither installed here nor in the install list"
			continue
		fi
		pkg=$(package_of "$path")
		if [ -z "$pkg" ]; then
			fail "$what: $t ($path) belongs to no Debian package: add CMD:PACKAGE to the install list"
		elif printf '%s\n' "$list" | cut -d: -f2 | grep -qx "$pkg"; then
			ok "$what: $t comes with $pkg, in the install list"
		elif in_every_debian "$pkg"; then
			ok "$what: $t comes with $pkg, part of every Debian system"
		else
			fail "$what: $t comes with $pkg, which the install list lacks (add $t:$pkg)"
		fi
	done
}

# Each CMD:PACKAGE pair: PACKAGE, or a package it depends on, holds CMD.
check_pairs() {
	what=$1
	for pair in $2; do
		t=${pair%%:*}
		want=${pair#*:}
		path=$(where "$t")
		[ -n "$path" ] || { fail "$what: $t is not installed here (package $want)"; continue; }
		pkg=$(package_of "$path")
		# A tool first on PATH from elsewhere (a git in /usr/local, say) may shadow the
		# package's copy: the package's own is what a fresh machine gets.
		for d in /usr/bin /bin /usr/sbin /sbin; do
			if [ "$pkg" != "$want" ] && [ -x "$d/$t" ] && [ "$(package_of "$d/$t")" = "$want" ]; then
				pkg=$want
			fi
		done
		if [ "$pkg" = "$want" ]; then
			ok "$what: $t is in $want"
		elif [ -n "$pkg" ] && apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
			--no-breaks --no-replaces --no-enhances "$want" 2>/dev/null | grep -qx "$pkg"; then
			ok "$what: $t is in $pkg, which $want depends on"
		else
			fail "$what: $t is in ${pkg:-no package}, not in $want"
		fi
	done
}

test_list=$(install_list scripts/test.sh)
demo_list=$(install_list scripts/demo.sh)
[ -n "$test_list" ] || fail "scripts/test.sh has no install_missing list"
[ -n "$demo_list" ] || fail "scripts/demo.sh has no install_missing list"

# What scripts/test.sh runs: every Rust test (lab library, lab tests, other crates' tests)
# and its shell scripts; the benchmarks (bench/, run by scripts/bench.sh) are not among them.
rust_test_files=$(find lab/src lab/tests servers agent cmdline proto dns sim -name '*.rs' -not -path '*/target/*')
test_tools=$(
	{
		# shellcheck disable=SC2086 # a list of files
		rust_tools $rust_test_files
		shell_tools scripts/env.sh scripts/test.sh scripts/test-init.sh scripts/test-apt-install.sh \
			board/qemu-arm/provision.sh
	} | sort -u
)
check "scripts/test.sh" "$test_list" "$test_tools"
check_pairs "scripts/test.sh" "$test_list"

# What scripts/demo.sh runs: the lab library and the demo.
demo_tools=$(rust_tools lab/src/lib.rs lab/src/deploy.rs lab/src/stream.rs lab/examples/netdemo.rs)
check "scripts/demo.sh" "$demo_list" "$demo_tools"
check_pairs "scripts/demo.sh" "$demo_list"

# No sudo: as root it is not needed, and a root shell may have none.
sudo_lines=$(grep -nE '(^|[;&|(]|then|do)\s*sudo\b' scripts/*.sh .ci/run | grep -vE '^[^:]+:[0-9]+:\s*#' || true)
if [ -n "$sudo_lines" ]; then
	fail "a script runs sudo:"
	printf '%s\n' "$sudo_lines" | sed 's/^/    /'
else
	ok "no script runs sudo"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
