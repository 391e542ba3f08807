//! Fuzz target `envelope`: see `ntm_proto::fuzzing::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::envelope(data));
