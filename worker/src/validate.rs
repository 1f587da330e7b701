//! The checks behind `spotbatch validate` that need the files and the model: inputs exist, the
//! model and labels are readable, and the model's input and output fit the manifest.

use spotbatch_proto::{FieldError, Manifest};
use spotbatch_store::Prefix;

use crate::job::{read_url, JobContext, JobError};

/// What the checks found out, for the success message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Inputs matching the glob (record jobs: Parquet rows; JSONL/CSV rows are not counted).
    pub inputs: usize,
    /// Whether `inputs` counts them all.
    pub inputs_known: bool,
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
    let mut inputs_known = true;
    let mut shards = 0;
    let mut schema = None;
    match spotbatch_plan::plan_job(m).await {
        Ok(plan) => {
            inputs = plan.total_items as usize;
            inputs_known = plan.items_known;
            shards = plan.shards.len();
            if let Some(e) = sample_text_column(m, &plan).await {
                errs.push(e);
            }
            schema = plan.schema;
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
    if let Some(tokenizer) = &m.tokenizer {
        if let Err(e) = read_url(tokenizer).await {
            errs.push(FieldError::new("preprocess.tokenizer", e));
            files_ok = false;
        }
    }
    let mut summary = None;
    if files_ok {
        let mut jobs = crate::Jobs::new([], Some(1));
        if let Some(schema) = schema {
            jobs = jobs.with_planned_schema(&m.job_id, schema);
        }
        match JobContext::load(m.clone(), &jobs).await {
            Ok(ctx) => {
                let rt = &ctx.runtime;
                let info = rt.engine.lock().map(|e| e.info().clone()).ok();
                if let Some(info) = info {
                    let input = if info.token_inputs.is_empty() {
                        format!("{:?} {:?}", info.input.name, rt.plan.item_shape)
                    } else {
                        format!("{:?} (tokens)", info.token_inputs)
                    };
                    summary = Some((
                        input,
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
        inputs_known,
        shards,
        model_input,
        model_output,
    })
}

/// JSONL rows have no schema: the first rows of the first split are read, and a text column none
/// of them has is an error (a typo would otherwise make every row an error row).
async fn sample_text_column(m: &Manifest, plan: &spotbatch_plan::Plan) -> Option<FieldError> {
    use futures::StreamExt;
    const SAMPLE: usize = 50;
    let split = plan.shards.first()?.split.clone()?;
    if split.format() != spotbatch_proto::split::Format::Jsonl {
        return None;
    }
    let source = spotbatch_plan::record_source(m).await.ok()?;
    let (proj, opts) = spotbatch_plan::projection(m);
    let records = spotbatch_records::read_split(&source, &split, &proj, &opts)
        .await
        .ok()?;
    let sample: Vec<_> = records.take(SAMPLE).collect().await;
    let column = m.text_column();
    let missing = sample
        .iter()
        .filter(|r| {
            matches!(r, Ok(spotbatch_records::Record {
                fields: Err(spotbatch_records::RowError::Missing { column: c, .. }),
                ..
            }) if c == column)
        })
        .count();
    (missing > 0 && missing == sample.len()).then(|| {
        FieldError::new(
            "preprocess.text_column",
            format!(
                "{column:?}: none of the first {missing} rows of {} has it",
                source.url_of(split.key())
            ),
        )
    })
}
