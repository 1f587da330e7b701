//! `cargo fuzz run sqs_message`: see [`spotbatch_fuzz::sqs_message`] for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spotbatch_fuzz::sqs_message(data));
