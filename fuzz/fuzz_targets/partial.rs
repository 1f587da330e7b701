//! `cargo fuzz run partial`: see [`spotbatch_fuzz::partial`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::partial(data));
