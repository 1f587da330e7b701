//! `cargo fuzz run state_files`: see [`spotbatch_fuzz::state_files`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::state_files(data));
