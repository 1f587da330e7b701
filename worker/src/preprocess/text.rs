//! Text: a record's text (or a whole object's UTF-8 bytes, for `files` inputs) tokenized with the
//! job's HuggingFace `tokenizer.json`, truncated to `preprocess.max_length`; padding waits for the
//! batch (each batch is padded to its longest item). A text that is not UTF-8, or that tokenizes
//! to nothing, is that item's error.

use std::sync::Arc;

use spotbatch_text::TextTokenizer;

use super::{ModelInput, Preprocessor};
use crate::error::ItemError;
use crate::source::Payload;

/// Tokenizes texts for one job.
#[derive(Debug, Clone)]
pub struct TextPreprocessor {
    tokenizer: Arc<TextTokenizer>,
}

impl TextPreprocessor {
    /// Tokenizes with `tokenizer`.
    pub fn new(tokenizer: Arc<TextTokenizer>) -> Self {
        Self { tokenizer }
    }

    /// The tokenizer (the batch packs with its pad id).
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }
}

impl Preprocessor for TextPreprocessor {
    fn prepare(&self, payload: &Payload) -> Result<ModelInput, ItemError> {
        let text = match payload {
            Payload::Text(t) => t.as_str(),
            Payload::Object(bytes) => std::str::from_utf8(bytes)
                .map_err(|e| ItemError::Input(format!("not UTF-8 text: {e}")))?,
            Payload::Record(f) => f
                .text
                .as_deref()
                .ok_or_else(|| ItemError::Input("the row has no text".into()))?,
        };
        let encoded = self
            .tokenizer
            .encode(text)
            .map_err(|e| ItemError::Input(e.to_string()))?;
        if encoded.is_empty() {
            return Err(ItemError::Input("the text tokenizes to nothing".into()));
        }
        Ok(ModelInput::Tokens(encoded))
    }
}
