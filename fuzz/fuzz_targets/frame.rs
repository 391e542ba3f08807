//! Fuzz target `frame`: see `ntm_proto::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::frame(data));
