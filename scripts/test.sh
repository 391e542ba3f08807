#!/bin/sh
# Runs every test of the project: formatting, lints, unit and property tests, the
# simulator's sequence scenarios, the replay of the committed fuzz corpus, and the
# end-to-end tests of the real binaries in network namespaces (needs root; skipped with a
# notice otherwise, unless NTM_REQUIRE_LAB is set). With NTM_CROSS=1 (CI sets it) also the
# big-endian MIPS run of cross/build.sh: the agent and the library's tests under qemu-user
# and the foreign agent in the lab (it installs Debian's cross toolchain when root).
. "$(dirname "$0")/env.sh"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== release binaries (the end-to-end tests run them)"
cargo build --workspace --bins --locked --release
echo "== cargo test (release profile for the crypto-heavy simulations)"
cargo test --workspace --locked --release
echo "== init scripts (SysV, start-stop-daemon from Debian and BusyBox; procd stubbed)"
NTM_NO_BUILD=1 ./scripts/test-init.sh
echo "== package installs keep the machine's policy-rc.d"
./scripts/test-apt-install.sh
echo "== proto without the server engines (the agent's build)"
cargo clippy -p ntm-proto --locked --no-default-features -- -D warnings
cargo test -p ntm-proto --locked --no-default-features --lib
if [ "${NTM_CROSS:-}" = 1 ]; then
	echo "== big-endian MIPS: tests under qemu-user, ntmd, the foreign agent in the lab"
	cross/build.sh --agent-only mips
else
	echo "== big-endian MIPS: skipped (NTM_CROSS=1 runs cross/build.sh --agent-only mips)"
fi
echo "all tests passed"
