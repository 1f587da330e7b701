//! The preprocessor seam: one item's input as the source read it ([`Payload`]) → the model's input
//! for that item ([`ModelInput`]). One implementation per input kind (images today), each run on
//! the decode threads; a bad input is that item's [`ItemError`] (its error row), never a panic
//! or the shard's failure. Images ([`image`]) and texts ([`text`]).

pub mod image;
pub mod text;

use crate::error::ItemError;
use crate::source::Payload;

pub use image::{ImagePreprocessor, ImageTarget, Pixels};
pub use text::TextPreprocessor;

/// One item's input to the model.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Its finished input values, in the model's element order (CPU path).
    Values(Vec<f32>),
    /// Its decoded pixels, resized and normalised on the GPU when its batch is packed.
    Pixels(Pixels),
    /// Its tokens (a text), padded when its batch is packed.
    Tokens(spotbatch_text::Encoded),
}

impl ModelInput {
    /// Its length where batching by length pays (tokens), else 1.
    pub fn len_for_batching(&self) -> usize {
        match self {
            ModelInput::Tokens(t) => t.len(),
            ModelInput::Values(_) | ModelInput::Pixels(_) => 1,
        }
    }
}

/// Turns one item's payload into its model input. Used from several decode threads at once.
pub trait Preprocessor: Send + Sync + std::fmt::Debug {
    /// The item's model input, or why this item cannot be used.
    fn prepare(&self, payload: &Payload) -> Result<ModelInput, ItemError>;
}

/// Checks every [`Preprocessor`] must pass (run by each implementation's tests): a bad input is
/// an error, never a panic, and the same input gives the same model input.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    /// `good` must prepare to `want_len` values (or pixels); each of `bad` must be refused with
    /// a one-line reason.
    pub(crate) fn check(p: &dyn Preprocessor, good: &[u8], want_len: usize, bad: &[&[u8]]) {
        let payload = Payload::Object(bytes::Bytes::copy_from_slice(good));
        let a = p.prepare(&payload).expect("a good input prepares");
        let b = p.prepare(&payload).expect("a good input prepares again");
        match (&a, &b) {
            (ModelInput::Values(x), ModelInput::Values(y)) => {
                assert_eq!(x.len(), want_len, "values per item");
                assert_eq!(x, y, "the same input gives the same values");
            }
            (ModelInput::Pixels(x), ModelInput::Pixels(y)) => {
                assert_eq!(x.rgb.len(), want_len, "pixel bytes per item");
                assert_eq!(x.rgb, y.rgb);
            }
            (ModelInput::Tokens(x), ModelInput::Tokens(y)) => {
                assert_eq!(x.len(), want_len, "tokens per item");
                assert_eq!(x, y);
            }
            _ => panic!("the same input gave different kinds of model input"),
        }
        for input in bad {
            let payload = Payload::Object(bytes::Bytes::copy_from_slice(input));
            let reason = p
                .prepare(&payload)
                .expect_err("a bad input is refused")
                .to_string();
            assert!(
                !reason.is_empty() && !reason.contains('\n'),
                "one line: {reason:?}"
            );
        }
    }
}
