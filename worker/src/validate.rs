//! The checks behind `spotbatch validate` that need the files and the model: inputs exist, the
//! output folder can be written, the model and labels are readable, the device asked for is
//! here, and the model's input and output fit the manifest. `run`, `enqueue` and `worker
//! --manifest` run the same checks before they start, so they refuse up front exactly what
//! `validate` refuses.

use spotbatch_plan::Plan;
use spotbatch_proto::manifest::{DeviceSpec, PreprocessDevice};
use spotbatch_proto::{FieldError, Manifest};
use spotbatch_store::Prefix;

use crate::job::{read_url, JobContext, JobError};

/// What the checks found out, for the success message.
#[derive(Debug, Clone)]
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
    /// The plan, when the inputs were listed.
    pub plan: Option<Plan>,
}

/// What to check besides the manifest's files and model.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// List the inputs and plan the shards (`worker --manifest` does not: it works what it is
    /// given).
    pub inputs: bool,
    /// Where the model is to run (`--device`), overriding `model.device`.
    pub device: Option<DeviceSpec>,
    /// Whether the job runs on this machine (`run`, `validate`, `worker`), so the device it asks
    /// for must be here; `enqueue` leaves that to the workers' machines.
    pub here: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            inputs: true,
            device: None,
            here: true,
        }
    }
}

/// Checks a validated manifest against its files and model; every problem names its field.
pub async fn check(m: &Manifest) -> Result<Summary, Vec<FieldError>> {
    check_with(m, Checks::default()).await
}

/// [`check`], with the inputs listed or not and the device given on the command line.
pub async fn check_with(m: &Manifest, checks: Checks) -> Result<Summary, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut plan = None;
    let mut schema = None;
    if checks.inputs {
        match spotbatch_plan::plan_job(m).await {
            Ok(p) => {
                if let Some(e) = sample_text_column(m, &p).await {
                    errs.push(e);
                }
                schema = p.schema.clone();
                plan = Some(p);
            }
            Err(e) => errs.push(FieldError::new(
                "input.uri",
                e.to_string().trim_start_matches("input.uri ").to_string(),
            )),
        }
    }
    match Prefix::open(&m.output) {
        Ok(out) => {
            if let Err(e) = out.check_writable().await {
                errs.push(FieldError::new("output.uri", e.to_string()));
            }
        }
        Err(e) => errs.push(FieldError::new("output.uri", e.to_string())),
    }
    let device = checks.device.unwrap_or_else(|| m.device());
    if let (true, Err(e)) = (checks.here, device_here(device)) {
        let field = if checks.device.is_some() {
            "--device"
        } else {
            "model.device"
        };
        errs.push(FieldError::new(field, e));
    }
    if m.raw.preprocess.device == PreprocessDevice::Gpu && device == DeviceSpec::Cpu {
        errs.push(FieldError::new(
            "preprocess.device",
            "gpu needs the model on a GPU (model.device = cuda or auto); it is asked to run on the CPU",
        ));
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
        // The model's shapes are the same on every device: check them on the CPU, quietly (no
        // word about where inference will run: this is not where it runs).
        let mut on_cpu = m.clone();
        on_cpu.raw.preprocess.device = PreprocessDevice::Cpu;
        let mut jobs = crate::Jobs::new([], Some(1)).with_device(Some(DeviceSpec::Cpu));
        if let Some(schema) = schema {
            jobs = jobs.with_planned_schema(&m.job_id, schema);
        }
        match JobContext::load(on_cpu, &jobs).await {
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
        inputs: plan.as_ref().map_or(0, |p| p.total_items as usize),
        inputs_known: plan.as_ref().is_none_or(|p| p.items_known),
        shards: plan.as_ref().map_or(0, |p| p.shards.len()),
        model_input,
        model_output,
        plan,
    })
}

/// Whether the device asked for is on this machine: `cuda:N` needs GPU N (never a fallback).
pub fn device_here(device: DeviceSpec) -> Result<(), String> {
    let DeviceSpec::Cuda(n) = device else {
        return Ok(());
    };
    match crate::device::cuda_device_count() {
        Ok(count) if (n as usize) < count => Ok(()),
        Ok(count) => Err(format!(
            "asks for device cuda:{n}, but this machine has {count} GPU{}; use auto or cpu",
            if count == 1 { "" } else { "s" }
        )),
        Err(e) => Err(format!(
            "asks for device cuda:{n}, but this machine has no GPU ({e}); use auto or cpu"
        )),
    }
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
