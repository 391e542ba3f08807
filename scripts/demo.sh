#!/bin/sh
# The main job for now: a whole NTMobile deployment in the deterministic simulator
# (AS, two DCs, RS, NS, nodes behind different NATs), narrated step by step.
. "$(dirname "$0")/env.sh"
exec cargo run --release --locked -q -p ntm-sim --example demo -- "$@"
