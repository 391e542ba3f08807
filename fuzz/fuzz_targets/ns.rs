//! Fuzz target `ns`: see `ntm_proto::fuzzing::ns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ntm_proto::fuzzing::ns(data));
