//! `cargo fuzz run records_parquet`: see [`spotbatch_fuzz::records_parquet`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::records_parquet(data));
