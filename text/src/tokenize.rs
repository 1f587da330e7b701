//! Owns turning text into model inputs: loading a HuggingFace `tokenizer.json` with the pipeline's
//! own truncation and padding (never the file's), encoding one text, and packing encodings into a
//! batch padded to its longest item, as row-major `i64` buffers ready for ONNX Runtime.

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingParams, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

/// Why a tokenizer could not be loaded or a text not encoded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("tokenizer {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer {path}: not a usable tokenizer.json: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error(
        "tokenizer {path}: max_length {max_length} leaves no room for text (the tokenizer adds \
         {special} special tokens to every text; max_length must be at least {min})",
        min = special + 1
    )]
    MaxLength {
        path: PathBuf,
        max_length: usize,
        special: usize,
    },
    #[error("tokenizer {path}: cannot encode the text: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
}

/// One text's model inputs, unpadded: every position is a real token, so `len()` is the number
/// of real tokens (special tokens included) and at most the tokenizer's `max_length`. The three
/// sequences always have the same length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    ids: Vec<i64>,
    attention_mask: Vec<i64>,
    type_ids: Vec<i64>,
}

impl Encoded {
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    pub fn attention_mask(&self) -> &[i64] {
        &self.attention_mask
    }

    pub fn type_ids(&self) -> &[i64] {
        &self.type_ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No tokens at all: possible only with a tokenizer that adds no special tokens, on a text
    /// that normalises to nothing. A model cannot pool such an item; callers make it an error row.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A batch of encodings padded to its longest item: three `[batch, seq]` row-major buffers named
/// after the inputs of BERT-style ONNX models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl TokenBatch {
    /// `[batch, seq]`, the shape of each of the three buffers.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }

    /// Real tokens (attention mask set) in the batch.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Real tokens / padded tokens (1.0 for an empty batch): the share of the model's work that
    /// is not spent on padding.
    pub fn padding_efficiency(&self) -> f64 {
        let padded = self.batch * self.seq;
        if padded == 0 {
            1.0
        } else {
            self.real_tokens() as f64 / padded as f64
        }
    }
}

/// A `tokenizer.json` loaded with the pipeline's settings: truncation to `max_length` (longest
/// first, no stride) and no padding of single texts; [`TextTokenizer::pack`] pads each batch to
/// its own longest item with the tokenizer's pad id.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_length: usize,
    pad_id: i64,
    pad_type_id: i64,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

/// Tokens tried as the pad token when the file sets no padding, in this order; 0 when none is in
/// the vocabulary (harmless: padded positions have attention mask 0).
const PAD_TOKENS: [&str; 3] = ["[PAD]", "<pad>", "<|pad|>"];

impl TextTokenizer {
    /// Loads `path` and replaces its truncation and padding settings with the pipeline's.
    pub fn from_file(path: impl AsRef<Path>, max_length: usize) -> Result<Self, TokenizerError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| TokenizerError::Read {
            path: path.clone(),
            source,
        })?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|source| TokenizerError::Parse {
            path: path.clone(),
            source,
        })?;
        Self::new(inner, path, max_length)
    }

    /// Loads a `tokenizer.json` from its bytes (read from anywhere); `name` names it in messages.
    pub fn from_bytes(
        bytes: &[u8],
        name: impl Into<PathBuf>,
        max_length: usize,
    ) -> Result<Self, TokenizerError> {
        let path = name.into();
        let inner = Tokenizer::from_bytes(bytes).map_err(|source| TokenizerError::Parse {
            path: path.clone(),
            source,
        })?;
        Self::new(inner, path, max_length)
    }

    fn new(mut inner: Tokenizer, path: PathBuf, max_length: usize) -> Result<Self, TokenizerError> {
        let special = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        // tokenizers subtracts the special tokens from max_length without checking, so a
        // max_length that leaves no room must be refused here.
        if max_length <= special {
            return Err(TokenizerError::MaxLength {
                path,
                max_length,
                special,
            });
        }
        // Padding: the file's pad token (all-MiniLM-L6-v2's file pads every text to 128), else a
        // conventional one from the vocabulary; applied by `pack`, per batch, never per text.
        let (pad_id, pad_type_id) = match inner.get_padding() {
            Some(PaddingParams {
                pad_id,
                pad_type_id,
                ..
            }) => (*pad_id, *pad_type_id),
            None => (
                PAD_TOKENS
                    .iter()
                    .find_map(|t| inner.token_to_id(t))
                    .unwrap_or(0),
                0,
            ),
        };
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|source| TokenizerError::Parse {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            inner,
            path,
            max_length,
            pad_id: i64::from(pad_id),
            pad_type_id: i64::from(pad_type_id),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Encodes one text with the tokenizer's special tokens, truncated to `max_length`.
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|source| TokenizerError::Encode {
                path: self.path.clone(),
                source,
            })?;
        let widen = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
        Ok(Encoded {
            ids: widen(enc.get_ids()),
            attention_mask: widen(enc.get_attention_mask()),
            type_ids: widen(enc.get_type_ids()),
        })
    }

    /// Packs encodings into one batch padded (on the right) to the longest of them, with the
    /// tokenizer's pad id, pad type id and attention mask 0 on padding. A batch whose items are
    /// all empty gets one padded column, so no tensor has a zero-length axis.
    pub fn pack<'a>(&self, items: impl IntoIterator<Item = &'a Encoded>) -> TokenBatch {
        let items: Vec<&Encoded> = items.into_iter().collect();
        let batch = items.len();
        let seq = items.iter().map(|e| e.len()).max().map_or(0, |n| n.max(1));
        let mut input_ids = vec![self.pad_id; batch * seq];
        let mut attention_mask = vec![0; batch * seq];
        let mut token_type_ids = vec![self.pad_type_id; batch * seq];
        for (row, e) in items.iter().enumerate() {
            let at = row * seq;
            let n = e.len();
            input_ids[at..at + n].copy_from_slice(&e.ids);
            attention_mask[at..at + n].copy_from_slice(&e.attention_mask);
            token_type_ids[at..at + n].copy_from_slice(&e.type_ids);
        }
        TokenBatch {
            batch,
            seq,
            input_ids,
            attention_mask,
            token_type_ids,
        }
    }
}
