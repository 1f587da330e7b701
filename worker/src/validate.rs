//! The checks behind `spotbatch validate` that need the files and the model: inputs exist, the
//! model and labels are readable, and the model's input and output fit the manifest.

use spotbatch_proto::{FieldError, Manifest};
use spotbatch_store::Prefix;

use crate::job::{read_url, JobContext, JobError};

/// What the checks found out, for the success message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Inputs matching the glob.
    pub inputs: usize,
    /// Shards they make.
    pub shards: usize,
    /// The model input's name and per-item shape.
    pub model_input: String,
    /// The model output's name and dims.
    pub model_output: String,
}

/// Checks a validated manifest against its files and model; every problem names its field.
pub async fn check(m: &Manifest) -> Result<Summary, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut inputs = 0;
    let mut shards = 0;
    match spotbatch_plan::plan_job(m).await {
        Ok(plan) => {
            inputs = plan.total_items as usize;
            shards = plan.shards.len();
        }
        Err(e) => errs.push(FieldError::new(
            "input.uri",
            e.to_string().trim_start_matches("input.uri ").to_string(),
        )),
    }
    if let Err(e) = Prefix::open(&m.output) {
        errs.push(FieldError::new("output.uri", e.to_string()));
    }
    // File problems are reported without trying to load the model from them.
    let mut files_ok = true;
    if let Err(e) = read_url(&m.model).await {
        errs.push(FieldError::new("model.uri", e));
        files_ok = false;
    }
    if let Some(labels) = &m.labels {
        if let Err(e) = read_url(labels).await {
            errs.push(FieldError::new("postprocess.labels", e));
            files_ok = false;
        }
    }
    let mut summary = None;
    if files_ok {
        let jobs = crate::Jobs::new([], Some(1));
        match JobContext::load(m.clone(), &jobs).await {
            Ok(ctx) => {
                let rt = &ctx.runtime;
                let info = rt.engine.lock().map(|e| e.info().clone()).ok();
                if let Some(info) = info {
                    summary = Some((
                        format!("{:?} {:?}", info.input.name, rt.plan.item_shape),
                        format!("{:?} {:?}", info.output.name, info.output.dims),
                    ));
                }
            }
            Err(JobError::File { field, message }) => errs.push(FieldError::new(field, message)),
            Err(JobError::Engine(crate::EngineError::Mismatch { field, message })) => {
                errs.push(FieldError::new(field, message))
            }
            Err(JobError::Engine(crate::EngineError::Runtime(msg))) => errs.push(FieldError::new(
                "model",
                format!("cannot check the model: {msg}"),
            )),
            Err(e) => errs.push(FieldError::new(
                "model.uri",
                e.to_string().trim_start_matches("model.uri: ").to_string(),
            )),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let (model_input, model_output) = summary.unwrap_or_default();
    Ok(Summary {
        inputs,
        shards,
        model_input,
        model_output,
    })
}
