//! `cargo fuzz run manifest`: see [`spotbatch_fuzz::manifest`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::manifest(data));
