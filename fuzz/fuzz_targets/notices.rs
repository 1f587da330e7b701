//! `cargo fuzz run notices`: see [`spotbatch_fuzz::notices`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::notices(data));
