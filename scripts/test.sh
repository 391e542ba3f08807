#!/bin/sh
# Runs every test of the project: formatting, lints, unit and property tests, the
# simulator's sequence scenarios, the replay of the committed fuzz corpus, and the
# end-to-end tests of the real binaries in network namespaces (needs root; skipped with a
# notice otherwise, unless NTM_REQUIRE_LAB is set).
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
echo "== proto without the server engines (the agent's build)"
cargo clippy -p ntm-proto --locked --no-default-features -- -D warnings
cargo test -p ntm-proto --locked --no-default-features --lib
echo "all tests passed"
