//! `cargo fuzz run queue_uri`: see [`spotbatch_fuzz::queue_uri`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::queue_uri(data));
