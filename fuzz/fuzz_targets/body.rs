//! Fuzz target `body`: see `ntm_proto::fuzzing::body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::body(data));
