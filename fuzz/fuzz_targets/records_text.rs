//! `cargo fuzz run records_text`: see [`spotbatch_fuzz::records_text`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::records_text(data));
