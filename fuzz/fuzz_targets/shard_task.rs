//! `cargo fuzz run shard_task`: see [`spotbatch_fuzz::shard_task`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::shard_task(data));
