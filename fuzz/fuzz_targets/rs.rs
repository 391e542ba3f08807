//! Fuzz target `rs`: see `ntm_proto::fuzzing::rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::rs(data));
