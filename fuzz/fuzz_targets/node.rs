//! Fuzz target `node`: see `ntm_proto::fuzzing::node`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::node(data));
