//! One item's output values → the row's value: top-k classes, an embedding (for a text model's
//! per-token output, pooled over the item's own tokens first), or the raw tensor.

use spotbatch_proto::manifest::{Pooling, PostKind, PostprocessSpec};
use spotbatch_proto::{RowValue, Scored};

/// Turns one item's slice of the output tensor into a row value.
#[derive(Debug, Clone)]
pub struct Postprocessor {
    spec: PostprocessSpec,
    labels: Option<Vec<String>>,
    /// Text embeddings: how per-token outputs become one vector.
    pooling: Option<spotbatch_text::Pooling>,
}

impl Postprocessor {
    /// For a manifest's `[postprocess]` and the labels file's lines.
    pub fn new(spec: PostprocessSpec, labels: Option<Vec<String>>) -> Self {
        Self {
            spec,
            labels,
            pooling: None,
        }
    }

    /// Text embeddings pool per-token outputs this way (`postprocess.pooling`).
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = Some(match pooling {
            Pooling::Mean => spotbatch_text::Pooling::Mean,
            Pooling::Cls => spotbatch_text::Pooling::Cls,
            Pooling::None => spotbatch_text::Pooling::None,
        });
        self
    }

    /// A text item's value: `values` its slice of the output (`item_shape` without the batch
    /// dimension: `[seq, hidden]` per token, or `[hidden]`), `tokens` its real token count (the
    /// first `tokens` positions; the rest is the batch's padding).
    pub fn apply_text(
        &self,
        values: &[f32],
        item_shape: &[usize],
        tokens: usize,
    ) -> Result<RowValue, String> {
        let (Some(pooling), PostKind::Embedding) = (self.pooling, self.spec.kind) else {
            return self.apply(values, item_shape);
        };
        if values.iter().any(|v| v.is_nan()) {
            return Err("model output contains NaN".into());
        }
        let mut shape = vec![1];
        shape.extend_from_slice(item_shape);
        let seq = if item_shape.len() == 2 {
            item_shape[0]
        } else {
            1
        };
        let mask: Vec<i64> = (0..seq).map(|s| i64::from(s < tokens)).collect();
        let mut e = spotbatch_text::pooling::pool(pooling, values, &shape, &mask, 1)
            .map_err(|e| format!("postprocess.pooling: {e}"))?;
        if self.spec.normalize {
            e.normalize();
        }
        Ok(RowValue::Embedding(e.values))
    }

    /// The row kind.
    pub fn kind(&self) -> PostKind {
        self.spec.kind
    }

    /// `values` is one item's output; `item_shape` its shape without the batch dimension.
    pub fn apply(&self, values: &[f32], item_shape: &[usize]) -> Result<RowValue, String> {
        if values.iter().any(|v| v.is_nan()) {
            return Err("model output contains NaN".into());
        }
        match self.spec.kind {
            PostKind::Classify => {
                let scores = if self.spec.softmax {
                    softmax(values)
                } else {
                    values.to_vec()
                };
                let order = top_k(&scores, self.spec.top_k);
                Ok(RowValue::TopK(
                    order
                        .into_iter()
                        .map(|i| Scored {
                            index: i,
                            label: self
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(i).cloned())
                                .unwrap_or_else(|| i.to_string()),
                            score: scores[i],
                        })
                        .collect(),
                ))
            }
            PostKind::Embedding => {
                let mut v = values.to_vec();
                if self.spec.normalize {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if norm > 0.0 {
                        v.iter_mut().for_each(|x| *x /= norm);
                    }
                }
                Ok(RowValue::Embedding(v))
            }
            PostKind::Raw => Ok(RowValue::Tensor {
                shape: item_shape.to_vec(),
                data: values.to_vec(),
            }),
        }
    }
}

/// The indices of the `k` best scores, best first; equal scores keep class order, so rows are
/// deterministic. Selects before it sorts: linear in the number of classes, not n log n (this
/// runs for every item on the thread that makes the rows).
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let better = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, better);
        order.truncate(k);
    }
    order.sort_unstable_by(better);
    order
}

/// Numerically stable softmax.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: PostKind, top_k: usize, softmax: bool, normalize: bool) -> PostprocessSpec {
        PostprocessSpec {
            kind,
            top_k,
            labels: None,
            softmax,
            normalize,
            pooling: None,
        }
    }

    #[test]
    fn text_embeddings_pool_over_the_items_own_tokens_only() {
        let post = Postprocessor::new(spec(PostKind::Embedding, 0, false, true), None)
            .with_pooling(Pooling::Mean);
        // Three positions of two values; the item has two real tokens, the third is padding.
        let values = [1.0, 3.0, 3.0, 1.0, 100.0, 100.0];
        let Ok(RowValue::Embedding(e)) = post.apply_text(&values, &[3, 2], 2) else {
            panic!("an embedding");
        };
        // Mean of (1,3) and (3,1) = (2,2), normalised.
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((e[0] - h).abs() < 1e-6 && (e[1] - h).abs() < 1e-6, "{e:?}");
        let cls = Postprocessor::new(spec(PostKind::Embedding, 0, false, false), None)
            .with_pooling(Pooling::Cls);
        assert_eq!(
            cls.apply_text(&values, &[3, 2], 2),
            Ok(RowValue::Embedding(vec![1.0, 3.0]))
        );
        // A per-token output with pooling "none" is the wrong shape, said as such.
        let none = Postprocessor::new(spec(PostKind::Embedding, 0, false, false), None)
            .with_pooling(Pooling::None);
        assert!(none
            .apply_text(&values, &[3, 2], 2)
            .unwrap_err()
            .starts_with("postprocess.pooling"));
    }

    #[test]
    fn top_k_orders_by_score_then_index_with_labels() {
        let p = Postprocessor::new(
            spec(PostKind::Classify, 3, false, false),
            Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
        );
        let RowValue::TopK(t) = p.apply(&[0.1, 0.5, 0.5, 0.2], &[4]).unwrap() else {
            panic!()
        };
        let got: Vec<(usize, &str)> = t.iter().map(|s| (s.index, s.label.as_str())).collect();
        assert_eq!(got, vec![(1, "b"), (2, "c"), (3, "d")]);
    }

    #[test]
    fn top_k_selects_what_a_full_sort_would() {
        // Many ties and every k, against sorting all classes: the same classes in the same order.
        let mut x = 0x2545_f491_u32;
        let scores: Vec<f32> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 37) as f32 - 18.0
            })
            .collect();
        let mut all: Vec<usize> = (0..scores.len()).collect();
        all.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for k in [0, 1, 2, 5, 36, 999, 1000, 1200] {
            assert_eq!(top_k(&scores, k), all[..k.min(1000)].to_vec(), "k = {k}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = Postprocessor::new(spec(PostKind::Classify, 2, true, false), None);
        let RowValue::TopK(t) = p.apply(&[1.0, 3.0, 2.0], &[3]).unwrap() else {
            panic!()
        };
        assert_eq!((t[0].index, t[0].label.as_str()), (2 - 1, "1"));
        let s = softmax(&[1.0, 3.0, 2.0]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((t[0].score - s[1]).abs() < 1e-7);
    }

    #[test]
    fn embedding_normalises_and_nan_is_an_error() {
        let p = Postprocessor::new(spec(PostKind::Embedding, 1, false, true), None);
        assert_eq!(
            p.apply(&[3.0, 4.0], &[2]).unwrap(),
            RowValue::Embedding(vec![0.6, 0.8])
        );
        assert!(p.apply(&[f32::NAN], &[1]).is_err());
    }
}
