//! Owns turning a text model's output into one embedding per item: `mean` over the attention mask
//! of a per-token output `[batch, seq, hidden]`, `cls` (the first token), `none` (the model's
//! output is already `[batch, hidden]`), and L2 normalisation. Pure functions over slices.

use std::fmt;
use std::str::FromStr;

/// How per-token outputs become one vector per item (`[postprocess] pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean over the positions whose attention mask is set (sentence-transformers' mean pooling).
    #[default]
    Mean,
    /// The first position's vector (BERT's `[CLS]`).
    Cls,
    /// The output is already one vector per item.
    None,
}

impl Pooling {
    pub const NAMES: [&'static str; 3] = ["mean", "cls", "none"];

    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::None => "none",
        }
    }

    /// The rank of model output this pooling takes: 3 (`[batch, seq, hidden]`) or 2.
    pub fn output_rank(self) -> usize {
        match self {
            Pooling::Mean | Pooling::Cls => 3,
            Pooling::None => 2,
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pooling name that is not one of [`Pooling::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pooling {0:?} is not one of \"mean\", \"cls\", \"none\"")]
pub struct UnknownPooling(pub String);

impl FromStr for Pooling {
    type Err = UnknownPooling;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "none" => Ok(Pooling::None),
            other => Err(UnknownPooling(other.to_string())),
        }
    }
}

/// A model output that does not fit the pooling or the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolingError {
    #[error("pooling {pooling} needs a model output of rank {want}, got shape {shape:?}")]
    Rank {
        pooling: Pooling,
        want: usize,
        shape: Vec<usize>,
    },
    #[error("model output of shape {shape:?} does not match the batch's inputs [{batch}, {seq}]")]
    Batch {
        shape: Vec<usize>,
        batch: usize,
        seq: usize,
    },
    #[error("model output of shape {shape:?} holds {got} values, not {want}")]
    Size {
        shape: Vec<usize>,
        want: usize,
        got: usize,
    },
}

/// One vector of `hidden` values per item, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub hidden: usize,
    pub values: Vec<f32>,
}

impl Embeddings {
    /// Each item's vector.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.values.chunks_exact(self.hidden.max(1))
    }

    /// Scales every row to unit L2 norm (a zero row stays zero).
    pub fn normalize(&mut self) {
        l2_normalize(&mut self.values, self.hidden);
    }
}

/// Pools a model output `values` of shape `shape` for a batch whose attention mask is
/// `attention_mask` (`[batch, seq]`, row-major; `seq` = `attention_mask.len() / batch`).
pub fn pool(
    pooling: Pooling,
    values: &[f32],
    shape: &[usize],
    attention_mask: &[i64],
    batch: usize,
) -> Result<Embeddings, PoolingError> {
    let seq = attention_mask.len().checked_div(batch).unwrap_or(0);
    if shape.len() != pooling.output_rank() {
        return Err(PoolingError::Rank {
            pooling,
            want: pooling.output_rank(),
            shape: shape.to_vec(),
        });
    }
    if shape[0] != batch || (shape.len() == 3 && shape[1] != seq) {
        return Err(PoolingError::Batch {
            shape: shape.to_vec(),
            batch,
            seq,
        });
    }
    let want: usize = shape.iter().product();
    if values.len() != want {
        return Err(PoolingError::Size {
            shape: shape.to_vec(),
            want,
            got: values.len(),
        });
    }
    let hidden = shape[shape.len() - 1];
    let values = match pooling {
        Pooling::None => values.to_vec(),
        Pooling::Cls => (0..batch)
            .flat_map(|b| &values[b * seq * hidden..b * seq * hidden + hidden])
            .copied()
            .collect(),
        Pooling::Mean => mean_over_mask(values, attention_mask, batch, seq, hidden),
    };
    Ok(Embeddings { hidden, values })
}

/// Mean of each item's vectors at the positions its mask sets, summed in f64; an item with no
/// position set gets a zero vector (as sentence-transformers' clamped division does).
fn mean_over_mask(
    values: &[f32],
    mask: &[i64],
    batch: usize,
    seq: usize,
    hidden: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(batch * hidden);
    let mut acc = vec![0f64; hidden];
    for b in 0..batch {
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut count = 0usize;
        for s in 0..seq {
            if mask[b * seq + s] == 0 {
                continue;
            }
            count += 1;
            let at = (b * seq + s) * hidden;
            for (a, &v) in acc.iter_mut().zip(&values[at..at + hidden]) {
                *a += f64::from(v);
            }
        }
        let denom = count.max(1) as f64;
        out.extend(acc.iter().map(|&a| (a / denom) as f32));
    }
    out
}

/// Scales each `hidden`-long row of `values` to unit L2 norm, in place (norm taken in f64, at
/// least 1e-12, so a zero row stays zero).
pub fn l2_normalize(values: &mut [f32], hidden: usize) {
    if hidden == 0 {
        return;
    }
    for row in values.chunks_exact_mut(hidden) {
        let norm = row
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        row.iter_mut()
            .for_each(|v| *v = (f64::from(*v) / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [2 items, 3 positions, 2 hidden]; item 0 has 2 real tokens, item 1 has 3. The padded
    /// position of item 0 holds huge values that must not leak into its mean.
    fn output() -> (Vec<f32>, Vec<usize>, Vec<i64>) {
        let values = vec![
            1.0, 2.0, 3.0, 4.0, 1e6, -1e6, // item 0
            -1.0, 0.0, 2.0, 6.0, 5.0, 3.0, // item 1
        ];
        (values, vec![2, 3, 2], vec![1, 1, 0, 1, 1, 1])
    }

    #[test]
    fn mean_ignores_padding() {
        let (values, shape, mask) = output();
        let e = pool(Pooling::Mean, &values, &shape, &mask, 2).unwrap();
        assert_eq!(e.hidden, 2);
        assert_eq!(e.values, vec![2.0, 3.0, 2.0, 3.0]);
        assert_eq!(e.rows().count(), 2);
    }

    #[test]
    fn mean_of_a_row_without_tokens_is_zero_and_stays_zero_normalised() {
        let (values, shape, _) = output();
        let mut e = pool(Pooling::Mean, &values, &shape, &[0, 0, 0, 1, 0, 0], 2).unwrap();
        assert_eq!(e.values, vec![0.0, 0.0, -1.0, 0.0]);
        e.normalize();
        assert_eq!(e.values, vec![0.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn cls_takes_the_first_position() {
        let (values, shape, mask) = output();
        let e = pool(Pooling::Cls, &values, &shape, &mask, 2).unwrap();
        assert_eq!(e.values, vec![1.0, 2.0, -1.0, 0.0]);
    }

    #[test]
    fn none_passes_a_pooled_output_through() {
        let values = vec![3.0, 4.0, 0.5, 0.5];
        let mut e = pool(Pooling::None, &values, &[2, 2], &[1, 1, 1, 1, 0, 0], 2).unwrap();
        assert_eq!(e.values, values);
        e.normalize();
        assert_eq!(e.values[..2], [0.6, 0.8]);
        let n1: f32 = e.values[2..].iter().map(|v| v * v).sum();
        assert!((n1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let (values, shape, mask) = output();
        assert!(matches!(
            pool(Pooling::None, &values, &shape, &mask, 2),
            Err(PoolingError::Rank { want: 2, .. })
        ));
        assert!(matches!(
            pool(Pooling::Mean, &values, &[2, 2], &mask, 2),
            Err(PoolingError::Rank { want: 3, .. })
        ));
        assert!(matches!(
            pool(Pooling::Mean, &values, &[3, 2, 2], &mask, 2),
            Err(PoolingError::Batch {
                batch: 2,
                seq: 3,
                ..
            })
        ));
        assert!(matches!(
            pool(Pooling::Mean, &values[1..], &shape, &mask, 2),
            Err(PoolingError::Size {
                want: 12,
                got: 11,
                ..
            })
        ));
    }

    #[test]
    fn names_round_trip() {
        for name in Pooling::NAMES {
            assert_eq!(name.parse::<Pooling>().unwrap().to_string(), name);
        }
        assert_eq!(
            "max".parse::<Pooling>(),
            Err(UnknownPooling("max".to_string()))
        );
    }
}
