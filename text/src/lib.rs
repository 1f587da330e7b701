//! spotbatch's text inputs: a HuggingFace `tokenizer.json` loaded with the pipeline's own
//! truncation and padding ([`tokenize`]), length-aware batching in a bounded window
//! ([`batcher`]), and pooling a text model's output into one embedding per item ([`pooling`]).
//! Pure Rust (`tokenizers` without its C/C++ defaults); nothing here does I/O beyond reading the
//! tokenizer file.

pub mod batcher;
pub mod pooling;
pub mod tokenize;

pub use batcher::{BatcherConfig, LengthBatcher};
pub use pooling::{l2_normalize, pool, Embeddings, Pooling, PoolingError, UnknownPooling};
pub use tokenize::{Encoded, TextTokenizer, TokenBatch, TokenizerError};
