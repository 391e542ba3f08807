//! Fuzz target `account`: see `ntm_proto::fuzzing::account`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::account(data));
