#!/usr/bin/env bash
# Runs every SysV init script of the Buildroot packages (buildroot/package/*/S??*)
# on this machine, against the release binaries: start, status, reload, restart
# and stop of each daemon, a second start, a stale pid file, a missing and a bad
# configuration, a daemon that cannot bind, one that ignores SIGTERM (a small C
# stand-in, when cc is there), a daemon that dies (the supervisor starts it
# again), the log through syslog (a logger double) and the bounded log file
# (a chatty C stand-in). Each script runs twice: under dash
# with Debian's start-stop-daemon, and under BusyBox sh with BusyBox's applets
# (when busybox is installed). Also: the board's ntmd.json against a provisioned
# factory partition. (The OpenWrt package's procd script: packaging/openwrt/test.sh.)
#
# The scripts read their settings from /etc/default/<daemon>; NTM_DEFAULTS points
# them at files in a temporary directory instead, so nothing under /etc is used.
# The servers listen on 127.0.0.1. ntmd needs root: it runs in a network
# namespace made for the test (its AS is unreachable there, so it keeps
# retrying), and the host's interfaces are never touched. Without root the ntmd
# cases are skipped.
#
#   ./scripts/test-init.sh       (NTM_NO_BUILD=1: use target/release as it is)
#
# Prints one line per check and ends with "N passed, M failed"; exits non-zero
# on any failure.
# Set-up stops at the first error; the checks after it count failures instead.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPTS=(
	"$ROOT/buildroot/package/ntmobile/S50ntm-rs"
	"$ROOT/buildroot/package/ntmobile/S51ntm-ns"
	"$ROOT/buildroot/package/ntmobile/S52ntm-dc"
	"$ROOT/buildroot/package/ntmobile/S53ntm-as"
	"$ROOT/buildroot/package/ntmobile/S60ntmd"
)
DAEMONS=(ntm-rs ntm-ns ntm-dc ntm-as ntmd)

passed=0
failed=0
skipped=0
TMP=""
NETNS=""
HELPERS=()

ok() {
	passed=$((passed + 1))
	echo "ok    $*"
}
not_ok() {
	failed=$((failed + 1))
	echo "FAIL  $*"
}
# expect WHAT COMMAND...: the command's success is the check.
expect() {
	local what="$1"
	shift
	if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# verdict STATUS WHAT: after a condition, e.g. [[ $rc = 0 ]]; verdict $? "start"
verdict() {
	if [ "$1" -eq 0 ]; then ok "$2"; else not_ok "$2"; fi
}

# The executable of a pid, empty for a zombie or a process that is gone.
exe_of() {
	readlink "/proc/$1/exe" 2>/dev/null || true
}
# The pids whose executable matches a pattern (zombies have none).
pids_running() {
	find /proc -mindepth 2 -maxdepth 2 -name exe -lname "$1" -printf '%h\n' 2>/dev/null |
		sed 's#^/proc/##' | sort -n
}
# The pids running our copy of a daemon.
instances() {
	pids_running "$BIN/$1"
}
# Every process running a program from our temporary directory.
strays() {
	pids_running "$TMP/*"
}

cleanup() {
	local rc=$? pid n
	set +e
	if [ -n "$TMP" ] && [ -d "$TMP" ]; then
		# Only programs run from our own temporary copies: started by this test.
		for pid in $(strays); do
			kill -TERM "$pid" 2>/dev/null
		done
		n=0
		while [ -n "$(strays)" ] && [ "$n" -lt 50 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		for pid in $(strays); do
			kill -KILL "$pid" 2>/dev/null
		done
	fi
	for pid in "${HELPERS[@]}"; do
		kill "$pid" 2>/dev/null
	done
	if [ -n "$NETNS" ]; then
		ip netns delete "$NETNS" 2>/dev/null
	fi
	if [ -n "$TMP" ]; then
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started_ns=$(date +%s%N)
cd "$ROOT" || exit 1

# --- binaries -------------------------------------------------------------
if [ "${NTM_NO_BUILD:-0}" != 1 ]; then
	# The init scripts do not depend on the latest code: when the tree does not
	# build at this moment, the binaries already in target/release will do.
	if ! build_log="$(cargo build --release --workspace --bins 2>&1)"; then
		echo "warn  cargo build failed; testing the binaries already in target/release:"
		grep -m 3 -E '^error' <<<"$build_log" | sed 's/^/      /'
	fi
fi
for d in "${DAEMONS[@]}"; do
	if [ ! -x "target/release/$d" ]; then
		echo "target/release/$d is missing: cargo build --release --workspace --bins" >&2
		exit 1
	fi
done
command -v start-stop-daemon >/dev/null || { echo "needs Debian's start-stop-daemon (dpkg)" >&2; exit 1; }

TMP="$(mktemp -d /tmp/ntm-init-test.XXXXXX)"
BIN="$TMP/bin"
mkdir -p "$BIN" "$TMP/etc" "$TMP/run" "$TMP/log" "$TMP/default" "$TMP/lib"
# Copies, so that a rebuild during the test cannot swap the programs under the
# running daemons (the scripts match /proc/PID/exe against EXEC).
for d in "${DAEMONS[@]}" ntm-ca; do
	cp "target/release/$d" "$BIN/$d"
done
# A stand-in daemon that ignores SIGTERM, for the STOP_TIMEOUT case.
if command -v cc >/dev/null; then
	cat >"$TMP/stubborn.c" <<'EOF'
#include <signal.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "run") == 0) {
		signal(SIGTERM, SIG_IGN);
		for (;;)
			pause();
	}
	return 0;
}
EOF
	cc -o "$BIN/stubborn" "$TMP/stubborn.c"
	# One that writes 200 lines of 50 bytes when it starts, for the bounded log.
	cat >"$TMP/chatty.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "run") == 0) {
		for (int i = 0; i < 200; i++)
			fprintf(stderr, "chatty line %04d ................................\n", i);
		for (;;)
			pause();
	}
	return 0;
}
EOF
	cc -o "$BIN/chatty" "$TMP/chatty.c"
else
	echo "skip  no C compiler: the SIGKILL after STOP_TIMEOUT is untested"
	skipped=$((skipped + 1))
fi

# --- certificates and configurations -------------------------------------
E="$TMP/etc"
"$BIN/ntm-ca" init --out "$TMP/ca" >/dev/null
for r in as dc rs ns; do
	"$BIN/ntm-ca" issue --ca "$TMP/ca" --role "$r" --name "$r.test.example" --out "$E" >/dev/null
done
"$BIN/ntm-ca" issue --ca "$TMP/ca" --role node --name box1.home.ntm.test.example --out "$E" >/dev/null
cp "$TMP/ca/ca.pem" "$E/ca.pem"

port_free() {
	[ -z "$(ss -Htuln "( sport = :$1 )" 2>/dev/null)" ]
}
for _ in $(seq 50); do
	base=$((20000 + RANDOM % 30000))
	if port_free "$base" && port_free $((base + 1)) && port_free $((base + 2)) &&
		port_free $((base + 3)) && port_free $((base + 4)); then
		break
	fi
done
P_DC=$base P_RS=$((base + 1)) P_NS=$((base + 2)) P_NSN=$((base + 3)) P_AS=$((base + 4))

tls() {
	printf '"tls": {"ca": "%s/ca.pem", "cert": "%s/%s.test.example.pem", "key": "%s/%s.test.example.key"}' \
		"$E" "$E" "$1" "$E" "$1"
}
static_dcs="\"static_dcs\": [{\"zone\": \"home.ntm.test.example\", \"dc\": \"dc.test.example\", \"addrs\": [\"127.0.0.1:$P_DC\"]}]"
cat >"$E/rs.json" <<EOF
{"name": "rs.test.example", "listen": ["127.0.0.1:$P_RS"], $(tls rs),
 "status_socket": "$TMP/run/ntm-rs.sock", "log_level": "info"}
EOF
cat >"$E/ns.json" <<EOF
{"name": "ns.test.example", "listen": ["127.0.0.1:$P_NS"], "node_listen": ["127.0.0.1:$P_NSN"], $(tls ns),
 "status_socket": "$TMP/run/ntm-ns.sock"}
EOF
cat >"$E/dc.json" <<EOF
{"name": "dc.test.example", "listen": ["127.0.0.1:$P_DC"], $(tls dc),
 "status_socket": "$TMP/run/ntm-dc.sock", "zones": ["home.ntm.test.example"],
 "virtual_ipv4": "198.18.0.0/16", "virtual_ipv6": "2001:db8:ffff::/96", "state": "$TMP/lib/dc.db",
 "relays": [{"name": "rs.test.example", "addr": "127.0.0.1:$P_RS"}],
 "notification_servers": [{"name": "ns.test.example", "addr": "127.0.0.1:$P_NS", "node_addr": "127.0.0.1:$P_NSN"}],
 "dns": {$static_dcs}}
EOF
cat >"$E/as.json" <<EOF
{"name": "as.test.example", "listen": ["127.0.0.1:$P_AS"], $(tls as),
 "status_socket": "$TMP/run/ntm-as.sock", "accounts": "$TMP/lib/accounts.db", "dns": {$static_dcs}}
EOF
# In its own namespace ntmd finds no AS (nothing listens there) and keeps trying.
cat >"$E/ntmd.json" <<EOF
{"account_server": "127.0.0.1:$P_AS", "account_server_name": "as.test.example", "ca": "$E/ca.pem",
 "credential": {"device": {"cert": "$E/box1.home.ntm.test.example.pem", "key": "$E/box1.home.ntm.test.example.key"}},
 "keepalive": "ns", "tun": {"name": "ntm0", "mtu": 1420},
 "virtual_routes": ["198.18.0.0/15", "2001:db8:ffff::/48"],
 "dns": {"listen": "127.0.0.53:53", "upstream": ["127.0.0.1:5353"], "ntm_domains": ["ntm.test.example"]},
 "status_socket": "$TMP/run/ntmd.sock"}
EOF

config_of() {
	case "$1" in
		ntmd) echo "$E/ntmd.json" ;;
		*) echo "$E/${1#ntm-}.json" ;;
	esac
}
# defaults FILE DAEMON [CONFIG [PIDFILE]]: an /etc/default file for the test.
defaults() {
	cat >"$1" <<EOF
CONFIG="${3:-$(config_of "$2")}"
EXEC="$BIN/$2"
PIDFILE="${4:-$TMP/run/$2.pid}"
LOG="$TMP/log/$2.log"
STOP_TIMEOUT=5
RESPAWN_DELAY=1
EOF
}

# --- the two start-stop-daemons -------------------------------------------
IMPLS=(debian)
if command -v busybox >/dev/null; then
	mkdir -p "$TMP/bb"
	for a in start-stop-daemon sleep rm; do
		ln -s "$(command -v busybox)" "$TMP/bb/$a"
	done
	IMPLS+=(busybox)
else
	echo "skip  busybox is not installed (apt-get install busybox): BusyBox's start-stop-daemon untested"
	skipped=$((skipped + 1))
fi

if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
	NETNS="ntm-init-test-$$-$RANDOM"
	ip netns add "$NETNS"
	ip -n "$NETNS" link set lo up
	host_links_before="$(ip -o link show | cut -d: -f2 | sort | tr -d ' \n')"
else
	echo "skip  not root: the ntmd cases need a network namespace"
	skipped=$((skipped + 1))
fi

set +e

# init IMPL DAEMON DEFAULTS ACTION: runs the init script as the system would,
# with IMPL's shell and start-stop-daemon; ntmd inside the test's namespace.
# Prints the script's output; returns its status.
init() {
	local impl="$1" d="$2" def="$3" action="$4" script path i
	local -a sh
	for i in "${!DAEMONS[@]}"; do
		if [ "${DAEMONS[$i]}" = "$d" ]; then script="${SCRIPTS[$i]}"; fi
	done
	if [ "$impl" = busybox ]; then
		sh=(busybox sh)
		path="$TMP/bb:$PATH"
	else
		sh=(/bin/sh)
		path="$PATH"
	fi
	local -a cmd=(timeout 60 env "NTM_DEFAULTS=$def" "PATH=${EXTRA_PATH:+$EXTRA_PATH:}$path" "${sh[@]}" "$script" "$action")
	if [ "$d" = ntmd ]; then
		cmd=(ip netns exec "$NETNS" "${cmd[@]}")
	fi
	"${cmd[@]}" 2>&1
}

pid_in() {
	cat "$1" 2>/dev/null || true
}

# The pid file names exactly one live process, running our copy of the daemon.
pidfile_is_daemon() {
	local pidfile="$1" d="$2" pid
	pid="$(pid_in "$pidfile")"
	[ -n "$pid" ] && [ "$(exe_of "$pid")" = "$BIN/$d" ] && [ "$(instances "$d")" = "$pid" ]
}

# The supervisor of a pid file's daemon (the init script running "supervise").
supervisor_of() {
	local sp
	sp="$(pid_in "${1%.pid}.supervisor.pid")"
	if [ -n "$sp" ] && tr '\0' ' ' <"/proc/$sp/cmdline" 2>/dev/null | grep -q ' supervise $'; then
		echo "$sp"
	fi
}

# Waits up to 10 s for the pid file to name a live daemon other than $3.
await_new_daemon() {
	local pidfile="$1" d="$2" old="$3" n=0 pid
	while [ "$n" -lt 100 ]; do
		pid="$(pid_in "$pidfile")"
		if [ -n "$pid" ] && [ "$pid" != "$old" ] && pidfile_is_daemon "$pidfile" "$d"; then
			return 0
		fi
		sleep 0.1
		n=$((n + 1))
	done
	return 1
}

# Waits up to 5 s for a line matching a pattern in a file.
await_line() {
	local n=0
	while [ "$n" -lt 50 ]; do
		grep -q -e "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
		n=$((n + 1))
	done
	return 1
}

# The whole cycle for one daemon under one start-stop-daemon.
cycle() {
	local impl="$1" d="$2" t="$1 $2:" def="$TMP/default/$1-$2" pidfile="$TMP/run/$2.pid"
	local out rc p1 p2 p3 helper
	defaults "$def" "$d"
	rm -f "$pidfile"

	if [ "$impl" = busybox ]; then
		out="$(PATH="$TMP/bb:$PATH" command -v start-stop-daemon)"
		[[ $(readlink -f "$out") = "$(readlink -f "$(command -v busybox)")" ]]
		verdict $? "$t BusyBox's start-stop-daemon is the one used"
	fi

	rc=0; out="$(init "$impl" "$d" "$def" status)" || rc=$?
	[[ $rc = 3 ]]
	verdict $? "$t status before start is 3 ($out)"
	rc=0; out="$(init "$impl" "$d" "$def" stop)" || rc=$?
	[[ $rc = 0 ]]
	verdict $? "$t stop when stopped succeeds"

	rc=0; out="$(init "$impl" "$d" "$def" start)" || rc=$?
	[[ $rc = 0 ]]
	verdict $? "$t start ($out)"
	p1="$(pid_in "$pidfile")"
	expect "$t the pid file holds the daemon's pid ($p1), one instance" pidfile_is_daemon "$pidfile" "$d"
	expect "$t the daemon runs its configuration" \
		grep -q -F "$(config_of "$d")" "/proc/${p1:-0}/cmdline"
	"$BIN/$d" status -c "$(config_of "$d")" >/dev/null 2>&1
	verdict $? "$t the daemon answers on its status socket"
	if [ "$d" = ntmd ]; then
		expect "$t ntmd runs in the test's namespace" \
			test "$(readlink "/proc/${p1:-0}/ns/net")" = \
			"$(ip netns exec "$NETNS" readlink /proc/self/ns/net)"
		ip -n "$NETNS" link show ntm0 >/dev/null 2>&1
		verdict $? "$t its TUN device is in the namespace"
		if ip link show ntm0 >/dev/null 2>&1; then
			not_ok "$t and not on the host"
		else
			ok "$t and not on the host"
		fi
	fi

	rc=0; out="$(init "$impl" "$d" "$def" start)" || rc=$?
	[[ $rc = 0 && $(pid_in "$pidfile") = "$p1" && $(instances "$d") = "$p1" ]]
	verdict $? "$t a second start succeeds without a second daemon ($out)"

	rc=0; out="$(init "$impl" "$d" "$def" status)" || rc=$?
	[[ $rc = 0 && $out = "$d is running (pid $p1)" ]]
	verdict $? "$t status while running is 0 and names the pid ($out)"

	rc=0; out="$(init "$impl" "$d" "$def" reload)" || rc=$?
	p2="$(pid_in "$pidfile")"
	if [ "$d" = ntmd ]; then
		[[ $rc = 0 && -n $p2 && $p2 != "$p1" ]]
		verdict $? "$t reload restarts ntmd (pid $p1 -> $p2)"
	else
		[[ $rc = 0 && $p2 = "$p1" ]]
		verdict $? "$t reload sends SIGHUP, same pid"
		sleep 0.2
		expect "$t the daemon logged the SIGHUP" grep -q SIGHUP "$TMP/log/$d.log"
	fi
	expect "$t after reload the pid file holds the daemon, one instance" pidfile_is_daemon "$pidfile" "$d"

	rc=0; out="$(init "$impl" "$d" "$def" restart)" || rc=$?
	p3="$(pid_in "$pidfile")"
	[[ $rc = 0 && -n $p3 && $p3 != "$p2" ]]
	verdict $? "$t restart (pid $p2 -> $p3)"
	[[ -z $(exe_of "$p2") ]]
	verdict $? "$t the old daemon is gone"
	expect "$t after restart the pid file holds the daemon, one instance" pidfile_is_daemon "$pidfile" "$d"

	# A daemon that dies is started again by its supervisor.
	local sup p4
	sup="$(supervisor_of "$pidfile")"
	[[ -n $sup ]]
	verdict $? "$t a supervisor runs ($sup)"
	kill -KILL "$p3" 2>/dev/null
	expect "$t killed (SIGKILL), it is started again after RESPAWN_DELAY" \
		await_new_daemon "$pidfile" "$d" "$p3"
	p4="$(pid_in "$pidfile")"
	[[ -n $p4 && $p4 != "$p3" && $(instances "$d") = "$p4" && $(supervisor_of "$pidfile") = "$sup" ]]
	verdict $? "$t one new instance ($p3 -> $p4), same supervisor"
	expect "$t its end is in the log" grep -q "init: $d ended (exit status 137)" "$TMP/log/$d.log"

	rc=0; out="$(init "$impl" "$d" "$def" stop)" || rc=$?
	[[ $rc = 0 ]]
	verdict $? "$t stop ($out)"
	[[ -z $(exe_of "$p4") && -z $(instances "$d") && ! -e $pidfile ]]
	verdict $? "$t the daemon is gone, its pid file too"
	[[ -z $(exe_of "$sup") && ! -e ${pidfile%.pid}.supervisor.pid ]]
	verdict $? "$t its supervisor is gone, its pid file too"

	# Stopped while its supervisor waits to start it again: nothing starts.
	init "$impl" "$d" "$def" start >/dev/null || true
	sup="$(supervisor_of "$pidfile")"
	p1="$(pid_in "$pidfile")"
	kill -KILL "${p1:-0}" 2>/dev/null
	rc=0; out="$(init "$impl" "$d" "$def" stop)" || rc=$?
	[[ $rc = 0 && -n $sup && -z $(exe_of "$sup") && -z $(instances "$d") ]]
	verdict $? "$t stop between two runs ends the supervisor; no daemon runs ($out)"
	rc=0; out="$(init "$impl" "$d" "$def" status)" || rc=$?
	[[ $rc = 3 ]]
	verdict $? "$t status after stop is 3"

	# A pid file left behind, naming a live process that is not the daemon.
	sleep 300 &
	helper=$!
	HELPERS+=("$helper")
	echo "$helper" >"$pidfile"
	rc=0; out="$(init "$impl" "$d" "$def" status)" || rc=$?
	[[ $rc = 1 ]]
	verdict $? "$t a stale pid file is not a running daemon: status 1 ($out)"
	rc=0; out="$(init "$impl" "$d" "$def" start)" || rc=$?
	[[ $rc = 0 ]]
	verdict $? "$t start over a stale pid file"
	expect "$t the pid file now holds the daemon" pidfile_is_daemon "$pidfile" "$d"
	rc=0; out="$(init "$impl" "$d" "$def" stop)" || rc=$?
	[[ $rc = 0 && -z $(instances "$d") && $(exe_of "$helper") = "$(readlink -f "$(command -v sleep)")" ]]
	verdict $? "$t stop leaves the unrelated process alone"
	kill "$helper" 2>/dev/null || true
	wait "$helper" 2>/dev/null || true
}

# Failures, once per start-stop-daemon, with ntm-rs.
failures() {
	local impl="$1" t="$1 ntm-rs:" def="$TMP/default/$1-fail" pidfile="$TMP/run/fail.pid" out rc

	defaults "$def" ntm-rs "$TMP/etc/absent.json" "$pidfile"
	rc=0; out="$(init "$impl" ntm-rs "$def" start)" || rc=$?
	[[ $rc = 0 ]]
	verdict $? "$t no configuration: start skips, status 0 ($out)"
	[[ -z $(instances ntm-rs) && ! -e $pidfile ]]
	verdict $? "$t and nothing runs"

	echo '{"name": "rs.test.example",' >"$TMP/etc/broken.json"
	defaults "$def" ntm-rs "$TMP/etc/broken.json" "$pidfile"
	rc=0; out="$(init "$impl" ntm-rs "$def" start)" || rc=$?
	[[ $rc = 1 && $out == *"FAIL: "*broken.json* ]]
	verdict $? "$t a broken configuration: start fails, saying why ($out)"
	[[ -z $(instances ntm-rs) && ! -e $pidfile ]]
	verdict $? "$t and nothing runs"

	# A second daemon on the same ports: its check passes, then it cannot bind.
	defaults "$TMP/default/$impl-first" ntm-rs
	rc=0; init "$impl" ntm-rs "$TMP/default/$impl-first" start >/dev/null || rc=$?
	local first
	first="$(pid_in "$TMP/run/ntm-rs.pid")"
	defaults "$def" ntm-rs "$(config_of ntm-rs)" "$pidfile"
	rc=0; out="$(init "$impl" ntm-rs "$def" start)" || rc=$?
	[[ $rc = 1 && ! -e $pidfile ]]
	verdict $? "$t a daemon that cannot bind: start fails ($out)"
	[[ -n $first && $(instances ntm-rs) = "$first" ]]
	verdict $? "$t the first one still runs, alone"
	init "$impl" ntm-rs "$TMP/default/$impl-first" stop >/dev/null || true
	[[ -z $(instances ntm-rs) ]]
	verdict $? "$t then stops"

	# A daemon that ignores SIGTERM is killed after STOP_TIMEOUT seconds.
	if [ -x "$BIN/stubborn" ]; then
		defaults "$def" ntm-rs "$(config_of ntm-rs)" "$pidfile"
		sed -i -e "s#^EXEC=.*#EXEC=\"$BIN/stubborn\"#" -e 's/^STOP_TIMEOUT=.*/STOP_TIMEOUT=1/' "$def"
		rc=0; out="$(init "$impl" ntm-rs "$def" start)" || rc=$?
		[[ $rc = 0 && -n $(instances stubborn) && $(instances stubborn) = "$(pid_in "$pidfile")" ]]
		verdict $? "$t a daemon that ignores SIGTERM starts ($out)"
		rc=0; out="$(init "$impl" ntm-rs "$def" stop)" || rc=$?
		[[ $rc = 0 && $out == *"killed after 1s"* ]]
		verdict $? "$t stop kills it after STOP_TIMEOUT ($out)"
		sleep 0.2
		[[ -z $(instances stubborn) && ! -e $pidfile ]]
		verdict $? "$t and it is gone, its pid file too"
	fi

	# The log through syslog: a logger double keeps its arguments and lines.
	mkdir -p "$TMP/fakelog"
	# shellcheck disable=SC2016 # $* and $l belong to the double
	printf '#!/bin/sh\nwhile IFS= read -r l; do printf "%%s: %%s\\n" "$*" "$l"; done >>"%s"\n' \
		"$TMP/syslog-$impl" >"$TMP/fakelog/logger"
	chmod +x "$TMP/fakelog/logger"
	defaults "$def" ntm-rs "$(config_of ntm-rs)" "$pidfile"
	sed -i 's#^LOG=.*#LOG="syslog"#' "$def"
	rm -f "$TMP/log/ntm-rs.log"
	rc=0; out="$(EXTRA_PATH="$TMP/fakelog" init "$impl" ntm-rs "$def" start)" || rc=$?
	[[ $rc = 0 ]]
	verdict $? "$t LOG=syslog: start ($out)"
	EXTRA_PATH="$TMP/fakelog" init "$impl" ntm-rs "$def" reload >/dev/null || true
	expect "$t the daemon's lines reach logger, tagged, facility daemon" \
		await_line "$TMP/syslog-$impl" "^-t ntm-rs -p daemon.notice: .*SIGHUP"
	EXTRA_PATH="$TMP/fakelog" init "$impl" ntm-rs "$def" stop >/dev/null || true
	[[ -z $(instances ntm-rs) && ! -e $TMP/log/ntm-rs.log ]]
	verdict $? "$t then stops; no log file was written"

	# A log file is bounded: moved to FILE.1 past LOG_MAX_KB.
	if [ -x "$BIN/chatty" ]; then
		defaults "$def" ntm-rs "$(config_of ntm-rs)" "$pidfile"
		sed -i -e "s#^EXEC=.*#EXEC=\"$BIN/chatty\"#" -e "s#^LOG=.*#LOG=\"$TMP/log/chatty-$impl.log\"\nLOG_MAX_KB=2#" "$def"
		rc=0; out="$(init "$impl" ntm-rs "$def" start)" || rc=$?
		[[ $rc = 0 ]]
		verdict $? "$t a chatty daemon starts ($out)"
		expect "$t its 10 KB of output reach the log" \
			await_line "$TMP/log/chatty-$impl.log" "chatty line 0199"
		local size size1
		size="$(wc -c <"$TMP/log/chatty-$impl.log")"
		size1="$(wc -c <"$TMP/log/chatty-$impl.log.1" 2>/dev/null || echo 0)"
		[[ $size -le $((2048 + 51)) && $size1 -gt 0 && $size1 -le $((2048 + 51)) ]]
		verdict $? "$t the log and its one old copy stay under LOG_MAX_KB ($size and $size1 bytes)"
		init "$impl" ntm-rs "$def" stop >/dev/null || true
	fi

	rc=0; out="$(init "$impl" ntm-rs "$def" bogus)" || rc=$?
	[[ $rc = 1 && $out == Usage:* ]]
	verdict $? "$t an unknown action prints the usage, status 1"
}

for impl in "${IMPLS[@]}"; do
	for d in "${DAEMONS[@]}"; do
		if [ "$d" = ntmd ] && [ -z "$NETNS" ]; then
			continue
		fi
		cycle "$impl" "$d"
	done
	failures "$impl"
done

# --- the scripts agree ----------------------------------------------------
# All five are one text apart from their header (name, configuration, reload).
normalised() {
	sed -e '1,/^RELOAD=/d' "$1"
}
same=true
for s in "${SCRIPTS[@]}"; do
	if ! cmp -s <(normalised "${SCRIPTS[0]}") <(normalised "$s"); then
		same=false
		echo "      $s differs from ${SCRIPTS[0]} below its header"
	fi
done
expect "the five init scripts share one body" $same
if command -v shellcheck >/dev/null; then
	expect "shellcheck: the init scripts" shellcheck -s sh "${SCRIPTS[@]}"
else
	echo "skip  shellcheck is not installed"
	skipped=$((skipped + 1))
fi

# --- the qemu-arm board's ntmd.json, with a provisioned factory partition ---
NTM_CA="$BIN/ntm-ca" "$ROOT/board/qemu-arm/provision.sh" --ca "$TMP/ca" --name box2.home.ntm.test.example \
	--out "$TMP/factory.ext2" >/dev/null 2>&1 </dev/null || true
mkdir -p "$TMP/factory"
if [ -s "$TMP/factory.ext2" ] && command -v debugfs >/dev/null; then
	for f in ca.pem device.pem device.key; do
		debugfs -R "dump /$f $TMP/factory/$f" "$TMP/factory.ext2" >/dev/null 2>&1
	done
	modes="$(debugfs -R 'ls -l /' "$TMP/factory.ext2" 2>/dev/null |
		awk '$NF ~ /^(\.|ca\.pem|device\.pem|device\.key)$/ && $NF != ".." {print $NF, $2, $4, $5}' |
		sort | tr '\n' ';')"
	[[ $modes = ". 40700 0 0;ca.pem 100444 0 0;device.key 100400 0 0;device.pem 100444 0 0;" ]]
	verdict $? "factory partition: root 0700, key 0400, certificates 0444, all root's ($modes)"
	sed "s#/etc/ntmobile/device/#$TMP/factory/#" \
		"$ROOT/board/qemu-arm/rootfs-overlay/etc/ntmobile/ntmd.json" >"$TMP/board-ntmd.json"
	"$BIN/ntmd" check -c "$TMP/board-ntmd.json" >/dev/null 2>&1
	verdict $? "board/qemu-arm ntmd.json passes ntmd check with a provisioned identity"
else
	not_ok "board/qemu-arm/provision.sh made a factory partition (needs ntm-ca in PATH: NTM_CA)"
fi

# --- nothing left behind ----------------------------------------------------
[[ -z $(strays) ]]
verdict $? "no daemon left running"
[[ -z $(find "$TMP/run" -name "*.pid") ]]
verdict $? "no pid file left"
if [ -n "$NETNS" ]; then
	host_links_after="$(ip -o link show | cut -d: -f2 | sort | tr -d ' \n')"
	[[ $host_links_before = "$host_links_after" ]]
	verdict $? "the host's interfaces are as they were"
fi

elapsed_ms=$((($(date +%s%N) - started_ns) / 1000000))
printf 'time  %d.%d s\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100))
if [ "$skipped" -gt 0 ]; then
	echo "$skipped part(s) skipped"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
