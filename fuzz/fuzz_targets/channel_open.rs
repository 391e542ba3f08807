//! Fuzz target `channel_open`: see `ntm_proto::fuzzing::channel_open`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::channel_open(data));
