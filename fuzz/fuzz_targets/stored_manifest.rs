//! `cargo fuzz run stored_manifest`: see [`spotbatch_fuzz::stored_manifest`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::stored_manifest(data));
