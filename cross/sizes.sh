#!/bin/bash
# Prints the stripped size of every binary for the host build (target/release) and each
# cross build (target/cross/<triple>/release), as cross/build.sh leaves them. Builds
# nothing: run `cargo build --release --workspace --bins` and cross/build.sh first.
#
#   cross/sizes.sh [TARGET...]     TARGET: armv7, mipsel, mips (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(armv7 mipsel mips)
bins=(ntmd ntm-as ntm-dc ntm-rs ntm-ns ntm-ca)

# Column: name, directory, strip program.
cols=("x86_64|target/release|strip")
for t in "${targets[@]}"; do
	case "$t" in
	armv7) cols+=("armv7|target/cross/armv7-unknown-linux-gnueabihf/release|arm-linux-gnueabihf-strip") ;;
	mipsel) cols+=("mipsel|target/cross/mipsel-unknown-linux-gnu/release|mipsel-linux-gnu-strip") ;;
	mips) cols+=("mips|target/cross/mips-unknown-linux-gnu/release|mips-linux-gnu-strip") ;;
	*) echo "unknown target $t" >&2; exit 2 ;;
	esac
done

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf '%-8s' "KiB"
for c in "${cols[@]}"; do printf '%10s' "${c%%|*}"; done
printf '\n'
for b in "${bins[@]}"; do
	printf '%-8s' "$b"
	for c in "${cols[@]}"; do
		IFS='|' read -r _ dir strip <<<"$c"
		if [ -f "$dir/$b" ] && command -v "$strip" >/dev/null; then
			# The release profile strips already; strip again so that a build made with
			# other settings is measured the same way.
			"$strip" -o "$tmp" "$dir/$b"
			awk -v s="$(stat -c %s "$tmp")" 'BEGIN { printf "%10.1f", s / 1024 }'
		else
			printf '%10s' "-"
		fi
	done
	printf '\n'
done
echo "(stripped; 640 KiB is the goal for ntmd on armv7; \"-\": not built)"
