//! `cargo fuzz run image`: see [`spotbatch_fuzz::image`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::image(data));
