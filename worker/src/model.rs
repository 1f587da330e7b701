//! Fitting a manifest to a model: the input tensor's per-item shape and image size, the output's
//! per-item size, and the labels. Every mismatch names the manifest field to change.

use spotbatch_proto::manifest::{Layout, Pooling, PostKind};
use spotbatch_proto::Manifest;

use crate::engine::{EngineError, ModelInfo};

/// How preprocessed images become the model's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPlan {
    /// Image width fed to the model.
    pub width: u32,
    /// Image height fed to the model.
    pub height: u32,
    /// One item's tensor shape (without the batch dimension).
    pub item_shape: Vec<i64>,
    /// Values per item.
    pub item_len: usize,
    /// The model's batch dimension when it is fixed (batches are padded to it).
    pub fixed_batch: Option<usize>,
}

fn mismatch(field: &'static str, message: String) -> EngineError {
    EngineError::Mismatch { field, message }
}

/// Works out the input plan, or says which field does not fit the model.
pub fn plan_input(m: &Manifest, info: &ModelInfo) -> Result<InputPlan, EngineError> {
    let dims = &info.input.dims;
    let name = &info.input.name;
    let p = &m.raw.preprocess;
    let c = p.color.channels() as i64;
    if dims.len() < 2 {
        return Err(mismatch(
            "model.input",
            format!("{name:?} has shape {dims:?}; spotbatch needs a batch dimension and image dimensions"),
        ));
    }
    let fixed_batch = usize::try_from(dims[0]).ok().filter(|b| *b > 0);
    let item = &dims[1..];
    // Where height, width and channels sit when the input is an image tensor.
    let (hi, wi, ci) = match p.layout {
        Layout::Nchw => (1, 2, 0),
        Layout::Nhwc => (0, 1, 2),
    };
    let fixed = |d: i64| (d > 0).then_some(d);
    let (height, width) = match p.resize {
        Some([w, h]) => (h as i64, w as i64),
        None if item.len() == 3 => match (fixed(item[hi]), fixed(item[wi])) {
            (Some(h), Some(w)) => (h, w),
            _ => {
                return Err(mismatch(
                    "preprocess.resize",
                    format!(
                        "required: the model input {name:?} has dynamic height/width ({dims:?})"
                    ),
                ))
            }
        },
        None => {
            return Err(mismatch(
                "preprocess.resize",
                format!(
                    "required: the model input {name:?} ({dims:?}) does not say the image size"
                ),
            ))
        }
    };
    let item_len = c * height * width;
    let item_shape = if item.len() == 3 {
        let mut want = [0i64; 3];
        want[hi] = height;
        want[wi] = width;
        want[ci] = c;
        if let Some(mc) = fixed(item[ci]) {
            if mc != c && fixed(item[hi]).is_some_and(|h| h == height) {
                return Err(mismatch(
                    "preprocess.color",
                    format!(
                        "the model input {name:?} ({dims:?}) has {mc} channel{}, color = {:?} gives {c}",
                        if mc == 1 { "" } else { "s" },
                        format!("{:?}", p.color).to_lowercase()
                    ),
                ));
            }
        }
        for (i, (&d, &w)) in item.iter().zip(&want).enumerate() {
            if d > 0 && d != w {
                let field = if i == ci {
                    "preprocess.layout"
                } else {
                    "preprocess.resize"
                };
                return Err(mismatch(
                    field,
                    format!("the model input {name:?} takes {dims:?} per batch; preprocessing gives [batch, {}]",
                        want.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")),
                ));
            }
        }
        want.to_vec()
    } else {
        // A flat or otherwise shaped input: the image's values, in layout order, must fill it.
        if item.iter().any(|d| *d <= 0) {
            return Err(mismatch(
                "model.input",
                format!("{name:?} has shape {dims:?}: only the batch dimension may be dynamic unless the input is [batch, C, H, W] or [batch, H, W, C]"),
            ));
        }
        let n: i64 = item.iter().product();
        if n != item_len {
            return Err(mismatch(
                "preprocess.resize",
                format!("the model input {name:?} takes {n} values per item ({dims:?}); preprocessing gives {c}×{height}×{width} = {item_len}"),
            ));
        }
        item.to_vec()
    };
    Ok(InputPlan {
        width: width as u32,
        height: height as u32,
        item_shape,
        item_len: item_len as usize,
        fixed_batch,
    })
}

/// Checks the output against the post-processing and labels; returns the per-item output size
/// when the model fixes it.
pub fn check_output(
    m: &Manifest,
    info: &ModelInfo,
    labels: Option<&[String]>,
) -> Result<Option<usize>, EngineError> {
    let dims = &info.output.dims;
    let item = &dims[1.min(dims.len())..];
    let per_item = item
        .iter()
        .all(|d| *d > 0)
        .then(|| item.iter().product::<i64>() as usize);
    let q = &m.raw.postprocess;
    if q.kind == PostKind::Classify {
        if let Some(k) = per_item {
            if let Some(labels) = labels {
                if labels.len() != k {
                    return Err(mismatch(
                        "postprocess.labels",
                        format!(
                            "has {} labels, the model output {:?} has {k} classes",
                            labels.len(),
                            info.output.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(per_item)
}

/// Reads a labels file: one label per line, trailing blank lines ignored.
pub fn parse_labels(text: &str) -> Vec<String> {
    let mut labels: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    while labels.last().is_some_and(|l| l.trim().is_empty()) {
        labels.pop();
    }
    labels
}

/// Fits a text job to its model: the output must be per token (`[batch, seq, hidden]`) for
/// `mean`/`cls` pooling, one vector per item (`[batch, hidden]`) for `none` or for `classify`.
/// Text items have no fixed input size; the plan carries only the model's fixed batch, if any.
pub fn plan_text(m: &Manifest, info: &ModelInfo) -> Result<InputPlan, EngineError> {
    let out = &info.output;
    let rank = out.dims.len();
    let want = match (m.raw.postprocess.kind, m.pooling()) {
        (PostKind::Embedding, Pooling::Mean | Pooling::Cls) => 3,
        (PostKind::Embedding, Pooling::None) | (PostKind::Classify, _) => 2,
        (PostKind::Raw, _) => rank,
    };
    if rank != want {
        let field = if m.raw.postprocess.kind == PostKind::Embedding {
            "postprocess.pooling"
        } else {
            "postprocess.kind"
        };
        let hint = if want == 3 {
            "; a model giving one vector per item needs pooling = \"none\""
        } else if m.raw.postprocess.kind == PostKind::Embedding {
            "; a per-token output needs pooling = \"mean\" or \"cls\""
        } else {
            ""
        };
        return Err(mismatch(
            field,
            format!(
                "the model's output {:?} is {:?} ({rank} dimensions); this needs {want}{hint}",
                out.name, out.dims
            ),
        ));
    }
    let fixed_batch = info
        .input
        .dims
        .first()
        .copied()
        .filter(|b| *b > 0)
        .map(|b| b as usize);
    Ok(InputPlan {
        width: 0,
        height: 0,
        item_shape: Vec::new(),
        item_len: 0,
        fixed_batch,
    })
}
