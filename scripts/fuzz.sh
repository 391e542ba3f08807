#!/bin/sh
# Runs every cargo-fuzz target for SECONDS each (default 600), one after another, from the
# committed corpus (new inputs go to a scratch copy, not into the repository), and prints
# one line per target: executions, executions per second, new corpus entries, crashes.
# Needs the nightly toolchain and cargo-fuzz (installed with cargo if missing).
#
#   ./scripts/fuzz.sh            every target, 10 minutes each
#   ./scripts/fuzz.sh 60 node    60 s, only the target `node`
. "$(dirname "$0")/env.sh"
secs=${1:-600}
[ $# -gt 0 ] && shift
if ! rustup toolchain list | grep -q '^nightly'; then
	rustup toolchain install nightly --profile minimal >&2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked >&2
cd fuzz || exit 1
targets=${*:-$(cargo +nightly fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
status=0
for t in $targets; do
	mkdir -p "$work/$t"
	cp -r "corpus/$t/." "$work/$t/" 2>/dev/null || true
	before=$(find "$work/$t" -type f | wc -l)
	log="$work/$t.log"
	if cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
		crashes=0
	else
		crashes=1
		status=1
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
	after=$(find "$work/$t" -type f | wc -l)
	echo "$t: ${runs:-?} executions in ${secs} s (${rate:-?}/s), corpus $before -> $after, crashes $crashes"
	if [ "$crashes" = 1 ]; then
		tail -n 40 "$log"
		ls "artifacts/$t" 2>/dev/null
	fi
done
exit $status
