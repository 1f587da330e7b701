//! Object storage for inputs, outputs and job state, through `object_store`: a prefix URL
//! (`file:///…/`, `s3://bucket/prefix/`, or `memory://NAME/prefix/` for a store in the process's
//! memory, shared by every prefix of the same NAME: for embedding and tests) becomes a
//! [`Prefix`], a store plus a root path, and keys below it are plain `/`-separated strings, any
//! Unicode.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

/// What can go wrong with storage. Every variant names the URL it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The URL's scheme has no store in this build, or it is malformed.
    #[error("{url}: {reason}")]
    Unsupported {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The object does not exist.
    #[error("{url}: not found")]
    NotFound {
        /// The object's URL.
        url: String,
    },
    /// The store failed.
    #[error("{url}: {source}")]
    Store {
        /// The object's or prefix's URL.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// A store and a root path in it, with the URL it came from.
#[derive(Debug, Clone)]
pub struct Prefix {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: Url,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key relative to the prefix, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

impl Prefix {
    /// Opens the prefix at `url` (a folder or object-store prefix).
    pub fn open(url: &Url) -> Result<Self, StorageError> {
        let unsupported = |reason: String| StorageError::Unsupported {
            url: url.to_string(),
            reason,
        };
        match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|()| unsupported("not a local path".into()))?;
                let root =
                    Path::from_absolute_path(&dir).map_err(|e| unsupported(e.to_string()))?;
                Ok(Self {
                    store: Arc::new(object_store::local::LocalFileSystem::new()),
                    root,
                    url: url.clone(),
                })
            }
            "s3" | "s3a" => {
                let store = s3_store(url).map_err(|e| unsupported(e.to_string()))?;
                let root = Path::parse(url.path().trim_matches('/')).map_err(|e| unsupported(e.to_string()))?;
                Ok(Self {
                    store: Arc::new(store),
                    root,
                    url: url.clone(),
                })
            }
            "memory" => {
                let store = memory_store(url.host_str().unwrap_or_default());
                let root = Path::parse(url.path().trim_matches('/'))
                    .map_err(|e| unsupported(e.to_string()))?;
                Ok(Self {
                    store,
                    root,
                    url: url.clone(),
                })
            }
            other => Err(unsupported(format!(
                "{other}:// storage is not part of this build yet (local folders, file:// and s3:// work)"
            ))),
        }
    }

    /// Opens the folder holding the object at `url` and returns it with the object's key.
    pub fn open_object(url: &Url) -> Result<(Self, String), StorageError> {
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|n| !n.is_empty())
            .map(url_decode)
            .ok_or_else(|| StorageError::Unsupported {
                url: url.to_string(),
                reason: "does not name a file".into(),
            })?;
        let parent = url.join("./").map_err(|e| StorageError::Unsupported {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Ok((Self::open(&parent)?, name))
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The root path in the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store path of `key` below the prefix (see [`Prefix::get`] for how keys map).
    pub fn path_of(&self, key: &str) -> Result<Path, StorageError> {
        self.path(key)
    }

    /// The prefix's URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of `key` below the prefix, for messages.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}{}", self.url, key)
    }

    /// The store path of `key`. Parts are taken as written (`object_store` would percent-encode
    /// non-ASCII text if converted with `From`, and the local store would then miss the file);
    /// `.`/`..` parts and control characters are refused.
    fn path(&self, key: &str) -> Result<Path, StorageError> {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            let part = PathPart::parse(part).map_err(|e| StorageError::Unsupported {
                url: self.url_of(key),
                reason: format!("invalid key: {e}"),
            })?;
            p = p.join(part);
        }
        Ok(p)
    }

    fn key_of(&self, path: &Path) -> Option<String> {
        let parts: Vec<String> = path
            .prefix_match(&self.root)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }

    /// Lists every object below the prefix (recursively), keys sorted.
    pub async fn list(&self) -> Result<Vec<Listed>, StorageError> {
        let mut out: Vec<Listed> = self
            .store
            .list(Some(&self.root))
            .map_err(|source| self.err(None, source))
            .try_filter_map(|meta| {
                let key = self.key_of(&meta.location);
                async move {
                    Ok(key.map(|key| Listed {
                        key,
                        size: meta.size,
                    }))
                }
            })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Reads one object whole, refusing objects over `max_bytes` before reading them.
    pub async fn get(&self, key: &str, max_bytes: u64) -> Result<Bytes, GetError> {
        let path = self.path(key).map_err(GetError::Storage)?;
        let res = self
            .store
            .get(&path)
            .await
            .map_err(|e| GetError::Storage(self.err(Some(key), e)))?;
        if res.meta.size > max_bytes {
            return Err(GetError::TooLarge {
                size: res.meta.size,
                max: max_bytes,
            });
        }
        res.bytes()
            .await
            .map_err(|e| GetError::Storage(self.err(Some(key), e)))
    }

    /// Reads an object, `None` when it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        match self.store.get(&self.path(key)?).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.err(Some(key), e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(Some(key), e)),
        }
    }

    /// Writes an object whole (readers see the old or the new content, never a part).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&self.path(key)?, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.err(Some(key), e))
    }

    /// Deletes an object; deleting one that does not exist is fine.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(Some(key), e)),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.store.head(&self.path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(Some(key), e)),
        }
    }

    fn err(&self, key: Option<&str>, source: object_store::Error) -> StorageError {
        let url = key
            .map(|k| self.url_of(k))
            .unwrap_or_else(|| self.url.to_string());
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { url },
            source => StorageError::Store { url, source },
        }
    }
}

/// The in-memory store named `name`: one per name per process.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<object_store::memory::InMemory>>>,
    > = std::sync::OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = match stores.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    let store = stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()));
    Arc::clone(store) as Arc<dyn ObjectStore>
}

/// An S3 store for the bucket in `url`, configured from the standard AWS environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`/`AWS_DEFAULT_REGION`, and
/// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` for an S3-compatible server).
/// Plain-HTTP endpoints (a local server) are allowed when the endpoint says `http://`.
fn s3_store(url: &Url) -> Result<object_store::aws::AmazonS3, object_store::Error> {
    let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
    let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(e) = endpoint {
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        b = b.with_endpoint(e);
    }
    if std::env::var("AWS_REGION").is_ok() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region(std::env::var("AWS_REGION").unwrap_or_default());
    }
    b.build()
}

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Over the size limit: not read.
    #[error("input is {size} bytes, over input.max_bytes = {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The store failed or the object is gone.
    #[error(transparent)]
    Storage(StorageError),
}

/// Decodes `%XX` escapes of a URL path segment.
pub fn url_decode(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| part.to_string())
}
