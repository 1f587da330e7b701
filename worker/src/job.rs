//! A job as a worker holds it: the manifest, its storage, the loaded model and the pre- and
//! post-processing fitted to that model. Loaded once per job per worker and shared by its shards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spotbatch_coordinator::{JobLayout, Prefix};
use spotbatch_proto::{Manifest, ShardTask};

use crate::engine::{EngineError, EngineOptions, InferenceEngine, OrtEngine};
use crate::model::{check_output, parse_labels, plan_input, InputPlan};
use crate::postprocess::Postprocessor;
use crate::preprocess::Preprocessor;

/// Why a job could not be prepared on this worker (every shard of it fails the same way).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// A file the job needs could not be read.
    #[error("{field}: {message}")]
    File {
        /// The manifest field naming the file.
        field: &'static str,
        /// What went wrong, with the URL.
        message: String,
    },
    /// The model could not be loaded or does not fit the manifest.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The shard names a job this worker was not given.
    #[error("job {job} (manifest {digest}) is not known to this worker")]
    Unknown {
        /// The job id.
        job: String,
        /// Its manifest digest.
        digest: String,
    },
}

/// Largest model or labels file read (model files are read whole into memory).
const MAX_MODEL_BYTES: u64 = 4 << 30;

/// Everything a worker needs to run one job's shards.
pub struct JobContext {
    /// The manifest.
    pub manifest: Manifest,
    /// The input prefix.
    pub input: Prefix,
    /// The job's output prefix.
    pub layout: JobLayout,
    /// Image → input values.
    pub pre: Preprocessor,
    /// Output values → row value.
    pub post: Postprocessor,
    /// The input's shape per item.
    pub plan: InputPlan,
    /// The loaded model (used by the engine thread only).
    pub engine: Mutex<Box<dyn InferenceEngine>>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job", &self.manifest.job_id)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// Reads the model and labels, loads the model and fits the manifest to it.
    pub async fn load(
        manifest: Manifest,
        intra_op_threads: Option<usize>,
    ) -> Result<Self, JobError> {
        let file_err = |field: &'static str| move |e: String| JobError::File { field, message: e };
        let model_bytes = read_url(&manifest.model)
            .await
            .map_err(file_err("model.uri"))?;
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
        let opts = EngineOptions {
            input: manifest.raw.model.input.clone(),
            output: manifest.raw.model.output.clone(),
            intra_op_threads: intra_op_threads.unwrap_or(manifest.raw.model.intra_op_threads),
        };
        let engine = tokio::task::spawn_blocking(move || OrtEngine::load(&model_bytes, &opts))
            .await
            .map_err(|e| EngineError::Runtime(format!("model loading thread failed: {e}")))??;
        let plan = plan_input(&manifest, engine.info())?;
        check_output(&manifest, engine.info(), labels.as_deref())?;
        let input = Prefix::open(&manifest.input).map_err(|e| JobError::File {
            field: "input.uri",
            message: e.to_string(),
        })?;
        let layout = JobLayout::for_manifest(&manifest).map_err(|e| JobError::File {
            field: "output.uri",
            message: e.to_string(),
        })?;
        Ok(Self {
            pre: Preprocessor::new(&manifest, &plan),
            post: Postprocessor::new(manifest.raw.postprocess.clone(), labels),
            input,
            layout,
            plan,
            engine: Mutex::new(Box::new(engine)),
            manifest,
        })
    }

    /// Items per inference call.
    pub fn batch_size(&self) -> usize {
        self.plan
            .fixed_batch
            .unwrap_or(self.manifest.raw.model.batch_size)
    }

    /// How long a partial batch waits for more items.
    pub fn max_batch_delay(&self) -> Duration {
        Duration::from_millis(self.manifest.raw.model.max_batch_delay_ms)
    }
}

/// Reads a whole small file (model, labels) by URL.
pub async fn read_url(url: &url::Url) -> Result<bytes::Bytes, String> {
    let (prefix, key) = Prefix::open_object(url).map_err(|e| e.to_string())?;
    prefix
        .get(&key, MAX_MODEL_BYTES)
        .await
        .map_err(|e| match e {
            spotbatch_coordinator::GetError::Storage(s) => s.to_string(),
            other => format!("{url}: {other}"),
        })
}

/// The jobs a worker serves, by manifest digest, with their loaded contexts. Jobs it was not
/// given are loaded from the stored manifest a shard refers to.
#[derive(Debug, Default)]
pub struct Jobs {
    manifests: std::sync::Mutex<HashMap<String, Manifest>>,
    loaded: tokio::sync::Mutex<HashMap<String, Arc<JobContext>>>,
    intra_op_threads: Option<usize>,
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
            intra_op_threads,
        }
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

    /// The loaded job for a shard, loading it on first use. Failures are not cached: the next
    /// shard tries again (the file may have been fixed).
    pub async fn context(&self, task: &ShardTask) -> Result<Arc<JobContext>, JobError> {
        let manifest = self.manifest(task).await?;
        let mut loaded = self.loaded.lock().await;
        if let Some(ctx) = loaded.get(&manifest.digest) {
            return Ok(Arc::clone(ctx));
        }
        let digest = manifest.digest.clone();
        let ctx = Arc::new(JobContext::load(manifest, self.intra_op_threads).await?);
        loaded.insert(digest, Arc::clone(&ctx));
        Ok(ctx)
    }
}
