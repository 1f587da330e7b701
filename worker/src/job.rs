//! A job as a worker holds it: the manifest, its storage, the loaded model and the pre- and
//! post-processing fitted to that model. Loaded once per job per worker and shared by its shards.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use spotbatch_proto::manifest::{DeviceSpec, OutputFormat, PostKind};
use spotbatch_proto::{sha256_hex, Manifest, ShardTask};
use spotbatch_records::{PartSchema, ResultKind};
use spotbatch_store::{JobLayout, Prefix};

use crate::engine::{EngineError, EngineLoader, ModelInfo, OrtLoader};
use crate::model::{check_output, parse_labels};
use crate::postprocess::Postprocessor;
use crate::sink::{JsonlSink, ParquetSink, RowSink};
use crate::source::{ItemSource, ObjectSource, RecordSource};

pub use crate::error::JobError;
use crate::runtime::ModelFiles;
pub use crate::runtime::ModelRuntime;

/// Largest model or labels file read (model files are read whole into memory).
const MAX_MODEL_BYTES: u64 = 4 << 30;

/// Everything a worker needs to run one job's shards.
pub struct JobContext {
    /// The manifest.
    pub manifest: Manifest,
    /// Reads a shard's items.
    pub source: Arc<dyn ItemSource>,
    /// Writes a shard's rows as its part file.
    pub sink: Arc<dyn RowSink>,
    /// A record job's carried columns' names (the id column first), as rows carry them.
    pub carried: Vec<String>,
    /// The job's output prefix.
    pub layout: JobLayout,
    /// Output values → row value.
    pub post: Postprocessor,
    /// The model, its input plan and preprocessing (possibly shared with other jobs).
    pub runtime: Arc<ModelRuntime>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job", &self.manifest.job_id)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// Reads the model and labels, loads the model (or reuses one loaded for an identical model
    /// and preprocessing) and fits the manifest to it.
    pub async fn load(manifest: Manifest, jobs: &Jobs) -> Result<Self, JobError> {
        let file_err = |field: &'static str| move |e: String| JobError::File { field, message: e };
        let model_bytes = read_url(&manifest.model)
            .await
            .map_err(file_err("model.uri"))?;
        let tokenizer = match &manifest.tokenizer {
            Some(url) => Some((
                url.to_string(),
                read_url(url)
                    .await
                    .map_err(file_err("preprocess.tokenizer"))?,
            )),
            None => None,
        };
        let labels = match &manifest.labels {
            Some(url) => {
                let bytes = read_url(url)
                    .await
                    .map_err(file_err("postprocess.labels"))?;
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| JobError::File {
                    field: "postprocess.labels",
                    message: format!("{url}: not UTF-8 text"),
                })?;
                Some(parse_labels(&text))
            }
            None => None,
        };
        let device = jobs.device.unwrap_or_else(|| manifest.device());
        let key = runtime_key(&manifest, &model_bytes, jobs.intra_op_threads, device);
        let shared = jobs
            .runtimes
            .lock()
            .ok()
            .and_then(|r| r.get(&key).and_then(Weak::upgrade));
        let runtime = match shared {
            Some(rt) => rt,
            None => {
                let (m, threads) = (manifest.clone(), jobs.intra_op_threads);
                let loader = Arc::clone(&jobs.loader);
                let files = ModelFiles {
                    model: model_bytes,
                    tokenizer,
                };
                let rt = tokio::task::spawn_blocking(move || {
                    ModelRuntime::load(&m, &files, threads, device, loader.as_ref())
                })
                .await
                .map_err(|e| EngineError::Runtime(format!("model loading thread failed: {e}")))??;
                let rt = Arc::new(rt);
                if let Ok(mut r) = jobs.runtimes.lock() {
                    r.retain(|_, w| w.strong_count() > 0);
                    r.insert(key, Arc::downgrade(&rt));
                }
                rt
            }
        };
        let info = runtime
            .engine
            .lock()
            .map(|e| e.info().clone())
            .map_err(|_| EngineError::Runtime("engine lock poisoned".into()))?;
        check_output(&manifest, &info, labels.as_deref())?;
        let layout = JobLayout::for_manifest(&manifest).map_err(|e| JobError::File {
            field: "output.uri",
            message: e.to_string(),
        })?;
        let planned = jobs
            .planned
            .lock()
            .ok()
            .and_then(|p| p.get(&manifest.job_id).cloned());
        let (source, projection) = item_source(&manifest, &layout, planned).await?;
        let carried: Vec<String> = projection
            .iter()
            .flat_map(|p| p.id.iter().chain(&p.columns))
            .map(|c| c.name.clone())
            .collect();
        let sink: Arc<dyn RowSink> = match manifest.raw.output.format {
            OutputFormat::Jsonl => Arc::new(JsonlSink::new(carried.clone())),
            OutputFormat::Parquet => Arc::new(ParquetSink::new(
                part_schema(&manifest, &info, projection.as_ref())?,
                manifest.raw.postprocess.kind,
            )),
        };
        let mut post = Postprocessor::new(manifest.raw.postprocess.clone(), labels);
        if runtime.tokenizer.is_some() {
            post = post.with_pooling(manifest.pooling());
        }
        Ok(Self {
            post,
            source,
            sink,
            carried,
            layout,
            runtime,
            manifest,
        })
    }
}

/// Where a job's items come from: objects below its input prefix, or the rows of its record
/// files (with the columns and types fixed when it was planned, `_schema.json`).
async fn item_source(
    m: &Manifest,
    layout: &JobLayout,
    planned: Option<spotbatch_records::Projection>,
) -> Result<(Arc<dyn ItemSource>, Option<spotbatch_records::Projection>), JobError> {
    let input_err = |e: String| JobError::File {
        field: "input.uri",
        message: e,
    };
    if !m.is_records() {
        let input = Prefix::open(&m.input).map_err(|e| input_err(e.to_string()))?;
        return Ok((
            Arc::new(ObjectSource::new(input, m.raw.input.max_bytes)),
            None,
        ));
    }
    let (mut projection, opts) = spotbatch_plan::projection(m);
    // The types planning fixed; without them (a job planned before it existed) the columns keep
    // each value's own type, which JSON output is fine with.
    let stored = match planned {
        Some(p) => Some(bytes::Bytes::from(
            serde_json::to_vec(&p).unwrap_or_default(),
        )),
        None => layout
            .prefix
            .get_opt(JobLayout::SCHEMA_KEY)
            .await
            .map_err(|e| input_err(e.to_string()))?,
    };
    match stored {
        Some(bytes) => {
            projection = serde_json::from_slice(&bytes).map_err(|e| JobError::File {
                field: "output.uri",
                message: format!("{}: not a column schema: {e}", layout.prefix.url_of(JobLayout::SCHEMA_KEY)),
            })?;
        }
        None if m.raw.output.format == OutputFormat::Parquet => {
            return Err(JobError::File {
                field: "output.uri",
                message: format!(
                    "{} is missing: enqueue the job again (its columns' types are fixed when it is planned)",
                    layout.prefix.url_of(JobLayout::SCHEMA_KEY)
                ),
            })
        }
        None => {}
    }
    let source = spotbatch_plan::record_source(m)
        .await
        .map_err(|e| input_err(e.to_string()))?;
    Ok((
        Arc::new(RecordSource::new(source, projection.clone(), opts)),
        Some(projection),
    ))
}

/// The Parquet part files' columns: the carried columns in their job types, and the result.
fn part_schema(
    m: &Manifest,
    info: &ModelInfo,
    projection: Option<&spotbatch_records::Projection>,
) -> Result<PartSchema, JobError> {
    let typed = |c: &spotbatch_records::Column| {
        (
            c.name.clone(),
            c.ty.clone().unwrap_or(arrow_schema::DataType::Utf8),
        )
    };
    let result = match m.raw.postprocess.kind {
        PostKind::Classify => ResultKind::TopK,
        PostKind::Raw => ResultKind::Tensor,
        PostKind::Embedding => {
            let dim = info.output.dims.last().copied().filter(|d| *d > 0);
            let Some(dim) = dim else {
                return Err(JobError::File {
                    field: "output.format",
                    message: format!(
                        "parquet embeddings have a fixed size; the model's output {:?} {:?} does not say it",
                        info.output.name, info.output.dims
                    ),
                });
            };
            ResultKind::Embedding { dim: dim as usize }
        }
    };
    Ok(PartSchema {
        id: projection.and_then(|p| p.id.as_ref()).map(typed),
        columns: projection
            .map(|p| p.columns.iter().map(typed).collect())
            .unwrap_or_default(),
        result,
    })
}

/// What makes two jobs' models interchangeable: the model's bytes, the settings that shape the
/// session and its batches, and the preprocessing.
fn runtime_key(
    m: &Manifest,
    model_bytes: &[u8],
    intra_op_threads: Option<usize>,
    device: DeviceSpec,
) -> String {
    let mut model = m.raw.model.clone();
    model.uri = String::new();
    model.device = None;
    let settings = serde_json::json!({
        "model": model,
        "preprocess": m.raw.preprocess,
        "threads": intra_op_threads,
        "device": device.to_string(),
    });
    format!("{}:{}", sha256_hex(model_bytes), settings)
}

/// Reads a whole small file (model, labels) by URL.
pub async fn read_url(url: &url::Url) -> Result<bytes::Bytes, String> {
    let (prefix, key) = Prefix::open_object(url).map_err(|e| e.to_string())?;
    prefix
        .get(&key, MAX_MODEL_BYTES)
        .await
        .map_err(|e| match e {
            spotbatch_store::GetError::Storage(s) => s.to_string(),
            other => format!("{url}: {other}"),
        })
}

/// The jobs a worker serves, by manifest digest, with their loaded contexts. Jobs it was not
/// given are loaded from the stored manifest a shard refers to.
#[derive(Debug)]
pub struct Jobs {
    manifests: std::sync::Mutex<HashMap<String, Manifest>>,
    loaded: tokio::sync::Mutex<HashMap<String, Arc<JobContext>>>,
    runtimes: std::sync::Mutex<HashMap<String, Weak<ModelRuntime>>>,
    intra_op_threads: Option<usize>,
    device: Option<DeviceSpec>,
    loader: Arc<dyn EngineLoader>,
    /// Record jobs' column types from a plan in hand (`validate`), by job id, used before the
    /// stored `_schema.json`.
    planned: std::sync::Mutex<HashMap<String, spotbatch_records::Projection>>,
}

impl Jobs {
    /// Jobs from manifests; `intra_op_threads` overrides each manifest's setting when given.
    pub fn new(
        manifests: impl IntoIterator<Item = Manifest>,
        intra_op_threads: Option<usize>,
    ) -> Self {
        Self {
            manifests: std::sync::Mutex::new(
                manifests
                    .into_iter()
                    .map(|m| (m.digest.clone(), m))
                    .collect(),
            ),
            loaded: Default::default(),
            runtimes: Default::default(),
            intra_op_threads,
            device: None,
            loader: Arc::new(OrtLoader),
            planned: Default::default(),
        }
    }

    /// Uses `projection` (from a plan in hand) for the record job `job` rather than the stored
    /// `_schema.json`.
    pub fn with_planned_schema(self, job: &str, projection: spotbatch_records::Projection) -> Self {
        if let Ok(mut p) = self.planned.lock() {
            p.insert(job.to_string(), projection);
        }
        self
    }

    /// Loads models with `loader` instead of ONNX Runtime (tests load fakes).
    pub fn with_loader(mut self, loader: Arc<dyn EngineLoader>) -> Self {
        self.loader = loader;
        self
    }

    /// Runs every job's model on `device` whatever its manifest says (`--device`).
    pub fn with_device(mut self, device: Option<DeviceSpec>) -> Self {
        self.device = device;
        self
    }

    /// The longest visibility timeout among the known jobs (one lease call serves them all).
    pub fn max_visibility_secs(&self) -> Option<u64> {
        let m = self.manifests.lock().ok()?;
        m.values()
            .map(|m| m.raw.queue.visibility_timeout_secs)
            .max()
    }

    fn known(&self, digest: &str) -> Option<Manifest> {
        self.manifests.lock().ok()?.get(digest).cloned()
    }

    /// The manifest for a shard: given, or read from the shard's reference and checked against
    /// the digest the shard names.
    async fn manifest(&self, task: &ShardTask) -> Result<Manifest, JobError> {
        if let Some(m) = self.known(&task.manifest_digest) {
            if m.job_id == task.job {
                return Ok(m);
            }
        }
        let unknown = || JobError::Unknown {
            job: task.job.clone(),
            digest: task.manifest_digest.clone(),
        };
        let url = task.manifest.as_deref().ok_or_else(unknown)?;
        let url = url::Url::parse(url).map_err(|e| JobError::File {
            field: "manifest",
            message: format!("{url}: {e}"),
        })?;
        let bytes = read_url(&url).await.map_err(|message| JobError::File {
            field: "manifest",
            message,
        })?;
        let m = Manifest::from_stored(&bytes).map_err(|errs| JobError::File {
            field: "manifest",
            message: format!(
                "{url}: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })?;
        if m.digest != task.manifest_digest || m.job_id != task.job {
            return Err(unknown());
        }
        if let Ok(mut known) = self.manifests.lock() {
            known.insert(m.digest.clone(), m.clone());
        }
        Ok(m)
    }

    /// Where a shard's job keeps its results, known without loading its model (so a job whose
    /// model cannot load still gets its ledger).
    pub async fn layout(&self, task: &ShardTask) -> Result<JobLayout, JobError> {
        let m = self.manifest(task).await?;
        JobLayout::for_manifest(&m).map_err(|e| JobError::File {
            field: "output.uri",
            message: e.to_string(),
        })
    }

    /// The output layout of a job this worker knows (given, or loaded for one of its shards).
    pub fn layout_of(&self, job: &str) -> Option<JobLayout> {
        let known = self.manifests.lock().ok()?;
        let m = known.values().find(|m| m.job_id == job)?;
        JobLayout::for_manifest(m).ok()
    }

    /// The loaded job for a shard, loading it on first use. Failures are not cached: the next
    /// shard tries again (the file may have been fixed).
    pub async fn context(&self, task: &ShardTask) -> Result<Arc<JobContext>, JobError> {
        let manifest = self.manifest(task).await?;
        let mut loaded = self.loaded.lock().await;
        if let Some(ctx) = loaded.get(&manifest.digest) {
            return Ok(Arc::clone(ctx));
        }
        let digest = manifest.digest.clone();
        let ctx = Arc::new(JobContext::load(manifest, self).await?);
        loaded.insert(digest, Arc::clone(&ctx));
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeModel;
    use bytes::Bytes;

    /// A manifest of job `name` over `memory://STORE/` with a (fake) model file there, and extra
    /// `[preprocess]` lines.
    async fn manifest_of(store: &str, name: &str, pre: &str) -> Manifest {
        let root = Prefix::open(&url::Url::parse(&format!("memory://{store}/")).unwrap()).unwrap();
        root.put("m.onnx", Bytes::from_static(b"model bytes"))
            .await
            .unwrap();
        let text = format!(
            "name = \"{name}\"\n[input]\nuri = \"memory://{store}/in/\"\n[model]\nuri = \"memory://{store}/m.onnx\"\n[preprocess]\ncolor = \"gray\"\n{pre}\n[output]\nuri = \"memory://{store}/out/\"\n"
        );
        Manifest::parse(&text, std::path::Path::new("/")).unwrap()
    }

    async fn manifest(name: &str, pre: &str) -> Manifest {
        manifest_of(name, name, pre).await
    }

    fn task(m: &Manifest, stored: Option<String>) -> ShardTask {
        ShardTask {
            v: spotbatch_proto::TASK_VERSION,
            job: m.job_id.clone(),
            shard: "s".into(),
            index: 0,
            manifest_digest: m.digest.clone(),
            keys: vec!["k".into()],
            split: None,
            manifest: stored,
        }
    }

    #[tokio::test]
    async fn jobs_with_the_same_model_and_preprocessing_share_one_runtime() {
        let a = manifest("job-share", "").await;
        let b = manifest_of("job-share", "other", "").await;
        assert_ne!(a.job_id, b.job_id);
        let c = manifest_of("job-share", "third", "scale = 0.5").await;
        let jobs = Jobs::new([a.clone(), b.clone(), c.clone()], Some(1))
            .with_loader(Arc::new(FakeModel::new(&[1, 2, 2], 3)));
        let (ca, cb, cc) = (
            jobs.context(&task(&a, None)).await.unwrap(),
            jobs.context(&task(&b, None)).await.unwrap(),
            jobs.context(&task(&c, None)).await.unwrap(),
        );
        assert!(
            Arc::ptr_eq(&ca.runtime, &cb.runtime),
            "same model, same batches"
        );
        assert!(
            !Arc::ptr_eq(&ca.runtime, &cc.runtime),
            "other preprocessing"
        );
        // Loaded once per job: the same context again.
        let again = jobs.context(&task(&a, None)).await.unwrap();
        assert!(Arc::ptr_eq(&ca, &again));
    }

    #[tokio::test]
    async fn a_job_not_given_is_loaded_from_its_stored_manifest_when_the_digest_matches() {
        let m = manifest("job-stored", "").await;
        let layout = JobLayout::for_manifest(&m).unwrap();
        layout.store_manifest(&m).await.unwrap();
        let stored = layout.prefix.url_of(JobLayout::MANIFEST_KEY);
        let jobs = Jobs::new([], Some(1)).with_loader(Arc::new(FakeModel::new(&[1, 2, 2], 3)));
        assert!(matches!(
            jobs.context(&task(&m, None)).await,
            Err(JobError::Unknown { .. })
        ));
        let ctx = jobs.context(&task(&m, Some(stored.clone()))).await.unwrap();
        assert_eq!(ctx.manifest.job_id, m.job_id);
        let mut wrong = task(&m, Some(stored));
        wrong.manifest_digest = "0".repeat(64);
        assert!(matches!(
            jobs.context(&wrong).await,
            Err(JobError::Unknown { .. })
        ));
    }

    #[tokio::test]
    async fn a_job_that_fails_to_load_is_tried_again_by_the_next_shard() {
        let m = manifest("job-retry", "").await;
        let model = Prefix::open(&url::Url::parse("memory://job-retry/").unwrap()).unwrap();
        model.delete("m.onnx").await.unwrap();
        let jobs =
            Jobs::new([m.clone()], Some(1)).with_loader(Arc::new(FakeModel::new(&[1, 2, 2], 3)));
        let err = jobs.context(&task(&m, None)).await.unwrap_err().to_string();
        assert!(err.starts_with("model.uri:"), "{err}");
        model
            .put("m.onnx", Bytes::from_static(b"model bytes"))
            .await
            .unwrap();
        assert!(jobs.context(&task(&m, None)).await.is_ok(), "not cached");
    }

    #[tokio::test]
    async fn a_model_that_does_not_fit_the_preprocessing_names_the_field() {
        // A model taking three channels; the manifest makes gray images.
        let m = manifest("job-fit", "").await;
        let jobs =
            Jobs::new([m.clone()], Some(1)).with_loader(Arc::new(FakeModel::new(&[3, 2, 2], 3)));
        let err = jobs.context(&task(&m, None)).await.unwrap_err().to_string();
        assert!(err.starts_with("preprocess.color:"), "{err}");
    }
}
