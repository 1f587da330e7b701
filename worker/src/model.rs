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
        let fits = |want: &[i64]| item.iter().zip(want).all(|(&d, &w)| d <= 0 || d == w);
        if !fits(&want) {
            return Err(misfit(
                m,
                name,
                dims,
                item,
                [hi, wi, ci],
                [height, width, c],
            ));
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

/// Which field makes the preprocessed image (height, width, channels at `at`) not fit the model's
/// 3-D item shape `item`: the layout when the other layout would fit, else the size (`resize`)
/// when height or width differ, else the channels (`color`).
fn misfit(
    m: &Manifest,
    name: &str,
    dims: &[i64],
    item: &[i64],
    at: [usize; 3],
    [height, width, c]: [i64; 3],
) -> EngineError {
    let p = &m.raw.preprocess;
    let [hi, wi, ci] = at;
    let fixed = |d: i64| (d > 0).then_some(d);
    let other = match p.layout {
        Layout::Nchw => [height, width, c],
        Layout::Nhwc => [c, height, width],
    };
    let given = |want: [i64; 3]| {
        want.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut ours = [0i64; 3];
    ours[hi] = height;
    ours[wi] = width;
    ours[ci] = c;
    if item.iter().zip(&other).all(|(&d, &w)| d <= 0 || d == w) {
        let (is, should) = match p.layout {
            Layout::Nchw => ("nchw", "nhwc"),
            Layout::Nhwc => ("nhwc", "nchw"),
        };
        return mismatch(
            "preprocess.layout",
            format!(
                "the model input {name:?} takes {dims:?} per batch, channels {}; layout = {is:?} gives [batch, {}]: set layout = {should:?}",
                if should == "nhwc" { "last" } else { "first" },
                given(ours)
            ),
        );
    }
    let (mh, mw) = (fixed(item[hi]), fixed(item[wi]));
    if mh.is_some_and(|h| h != height) || mw.is_some_and(|w| w != width) {
        let size = match (mw, mh) {
            (Some(w), Some(h)) => format!(": set preprocess.resize = [{w}, {h}]"),
            _ => String::new(),
        };
        return mismatch(
            "preprocess.resize",
            format!(
                "the model input {name:?} takes {dims:?} per batch; preprocessing makes {width}×{height} images (width×height), [batch, {}]{size}",
                given(ours)
            ),
        );
    }
    let mc = fixed(item[ci]).unwrap_or(c);
    mismatch(
        "preprocess.color",
        format!(
            "the model input {name:?} ({dims:?}) has {mc} channel{}, color = {:?} gives {c}",
            if mc == 1 { "" } else { "s" },
            format!("{:?}", p.color).to_lowercase()
        ),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Float, TensorInfo};

    fn manifest(pre: &str) -> Manifest {
        let text = format!(
            "name = \"m\"\n[input]\nuri = \"in\"\n[model]\nuri = \"m.onnx\"\n[preprocess]\n{pre}\n[output]\nuri = \"out\"\n"
        );
        Manifest::parse(&text, std::path::Path::new("/x")).unwrap()
    }

    fn model(dims: &[i64]) -> ModelInfo {
        let t = |name: &str, dims: Vec<i64>| TensorInfo {
            name: name.into(),
            element: "float32".into(),
            float: Some(Float::F32),
            dims,
        };
        ModelInfo {
            input: t("pixels", dims.to_vec()),
            output: t("probs", vec![-1, 10]),
            token_inputs: Vec::new(),
        }
    }

    fn blamed(pre: &str, dims: &[i64]) -> (&'static str, String) {
        match plan_input(&manifest(pre), &model(dims)) {
            Err(EngineError::Mismatch { field, message }) => (field, message),
            other => panic!("{pre} on {dims:?}: {other:?}"),
        }
    }

    #[test]
    fn a_size_that_does_not_fit_is_blamed_on_resize_whatever_else_is_wrong() {
        // Three channels asked of a one-channel model, and the wrong size: the size is named,
        // with the size the model takes (the case was blamed on the layout).
        let (field, msg) = blamed("resize = [16, 16]", &[-1, 1, 8, 8]);
        assert_eq!(field, "preprocess.resize", "{msg}");
        assert!(msg.contains("set preprocess.resize = [8, 8]"), "{msg}");
        let (field, _) = blamed("resize = [16, 16]\ncolor = \"gray\"", &[-1, 1, 8, 8]);
        assert_eq!(field, "preprocess.resize");
        let (field, _) = blamed("resize = [4, 8]\nlayout = \"nhwc\"", &[-1, 8, 8, 3]);
        assert_eq!(field, "preprocess.resize");
    }

    #[test]
    fn the_layout_is_blamed_when_the_other_layout_fits_and_the_colour_when_only_channels_differ() {
        let (field, msg) = blamed("resize = [8, 8]", &[-1, 8, 8, 3]);
        assert_eq!(field, "preprocess.layout", "{msg}");
        assert!(msg.contains("set layout = \"nhwc\""), "{msg}");
        let (field, msg) = blamed("resize = [8, 8]", &[-1, 1, 8, 8]);
        assert_eq!(field, "preprocess.color", "{msg}");
        assert!(
            msg.contains("has 1 channel, color = \"rgb\" gives 3"),
            "{msg}"
        );
        let ok = plan_input(
            &manifest("resize = [8, 8]\ncolor = \"gray\""),
            &model(&[-1, 1, 8, 8]),
        );
        assert_eq!(ok.unwrap().item_shape, vec![1, 8, 8]);
    }
}
