//! Fuzz target `dc`: see `ntm_proto::fuzzing::dc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::dc(data));
