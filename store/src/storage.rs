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
    /// A local file or folder could not be used (the operating system's reason, without the
    /// store's temporary file names).
    #[error("{url}: {message}")]
    Local {
        /// The file's or folder's URL.
        url: String,
        /// Why, e.g. "Permission denied (os error 13)".
        message: String,
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

/// An entry below an input prefix that is not an input (a warning names it): a symlink loop, a
/// dangling symlink, a symlink back to a folder above it, a folder that cannot be read, or
/// something that is not a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its key relative to the prefix (escaped as [`escape_name`] does, so it is one line).
    pub key: String,
    /// Why it is not an input.
    pub reason: String,
}

/// What listing a prefix for inputs found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Every file, keys sorted.
    pub files: Vec<Listed>,
    /// Entries that are not inputs, with why.
    pub skipped: Vec<Skipped>,
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

    /// Lists every input below the prefix. In a local folder the walk is this crate's own: every
    /// file whatever its name (a name that is not UTF-8 gets a key with its bytes escaped, see
    /// [`escape_name`], which [`Prefix::get`] reads back), symlinks followed, and what cannot be
    /// an input (loops, dangling symlinks, unreadable folders) named in `skipped` instead of
    /// failing the listing. Elsewhere it is [`Prefix::list`].
    pub async fn list_inputs(&self) -> Result<Inputs, StorageError> {
        let Some(root) = self.local_root() else {
            return Ok(Inputs {
                files: self.list().await?,
                skipped: Vec::new(),
            });
        };
        self.on_disk(move |url| local::walk(&root, url)).await
    }

    /// Runs `f` (given the prefix's URL) on a thread where blocking on the disk is fine.
    async fn on_disk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&str) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let url = self.url.to_string();
        tokio::task::spawn_blocking(move || f(&url))
            .await
            .map_err(|e| StorageError::Local {
                url: self.url.to_string(),
                message: format!("stopped: {e}"),
            })?
    }

    /// The folder of a `file://` prefix.
    fn local_root(&self) -> Option<std::path::PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    /// Reads one object whole, refusing objects over `max_bytes` before reading them.
    pub async fn get(&self, key: &str, max_bytes: u64) -> Result<Bytes, GetError> {
        let res = match self.path(key) {
            Ok(path) => self
                .store
                .get(&path)
                .await
                .map_err(|e| self.err(Some(key), e)),
            Err(e) => Err(e),
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                // Local names object_store cannot spell (control characters, bytes that are not
                // UTF-8) are read directly; a folder is named as one.
                if let Some(path) = self.local_root().and_then(|r| local::path_of(&r, key)) {
                    if let Some(read) = local::read(&path, &self.url_of(key), max_bytes).await {
                        return read;
                    }
                }
                return Err(GetError::Storage(e));
            }
        };
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

    /// Deletes an object; deleting one that does not exist is fine. In a local folder, the
    /// folders the object was in are removed too when that leaves them empty (an object store has
    /// no empty folders either).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err(Some(key), e)),
        }
        if let Some(root) = self.local_root() {
            local::prune_empty(&root, key);
        }
        Ok(())
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
            // A local file's trouble is the operating system's: say that, not which temporary
            // file object_store was writing.
            source if self.url.scheme() == "file" => match local::io_reason(&source) {
                Some(message) => StorageError::Local { url, message },
                None => StorageError::Store { url, source },
            },
            source => StorageError::Store { url, source },
        }
    }

    /// Whether results can be written below the prefix, checked without creating anything that
    /// stays: in a local folder, the nearest folder that exists on the way must be a folder and
    /// take a new file (one is created and removed). Other stores are not probed.
    pub async fn check_writable(&self) -> Result<(), StorageError> {
        let Some(root) = self.local_root() else {
            return Ok(());
        };
        self.on_disk(move |url| local::check_writable(&root, url))
            .await
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

/// Checks that the file at `url` exists and is a file, not a folder, without reading it.
pub async fn check_file(url: &Url) -> Result<(), StorageError> {
    let (prefix, key) = Prefix::open_object(url)?;
    if let Some(path) = prefix.local_root().and_then(|r| local::path_of(&r, &key)) {
        return match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_dir() => Err(StorageError::Local {
                url: url.to_string(),
                message: "is a folder, not a file".into(),
            }),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound {
                url: url.to_string(),
            }),
            Err(e) => Err(StorageError::Local {
                url: url.to_string(),
                message: e.to_string(),
            }),
        };
    }
    if prefix.exists(&key).await? {
        Ok(())
    } else {
        Err(StorageError::NotFound {
            url: url.to_string(),
        })
    }
}

/// A file name as a key part: as written when it is UTF-8; otherwise its valid parts as written
/// (backslashes doubled) and every other byte as `\xNN`, so the key is one line of text and
/// [`Prefix::get`] finds the file from it.
pub fn escape_name(name: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(name) {
        return s.to_string();
    }
    let mut out = String::new();
    for chunk in name.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The bytes of a key part made by [`escape_name`] from a name that is not UTF-8; `None` for a
/// key part that is not such an escape.
pub fn unescape_name(part: &str) -> Option<Vec<u8>> {
    if !part.contains("\\") {
        return None;
    }
    let b = part.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match b.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                    continue;
                }
                Some(b'x') => {
                    let hex = part.get(i + 2..i + 4)?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                    continue;
                }
                _ => return None,
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // An escape stands for a name that is not UTF-8; anything else is a name as written.
    std::str::from_utf8(&out).is_err().then_some(out)
}

/// Local folders: the input walk, reads of names object_store cannot spell, the writability
/// check, empty folders after a delete, and the operating system's reason for a failure.
mod local {
    use std::path::{Path, PathBuf};

    use bytes::Bytes;

    use super::{escape_name, unescape_name, GetError, Inputs, Listed, Skipped, StorageError};

    /// Walks `root` (following symlinks) for every file below it.
    pub(super) fn walk(root: &Path, url: &str) -> Result<Inputs, StorageError> {
        let local = |message: String| StorageError::Local {
            url: url.to_string(),
            message,
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(local("is a file, not a folder".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound {
                    url: url.to_string(),
                })
            }
            Err(e) => return Err(local(e.to_string())),
        }
        let top = std::fs::canonicalize(root).map_err(|e| local(e.to_string()))?;
        let mut out = Inputs::default();
        let mut stack: Vec<(PathBuf, String, Vec<PathBuf>)> =
            vec![(root.to_path_buf(), String::new(), vec![top])];
        while let Some((dir, prefix, above)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if prefix.is_empty() => return Err(local(e.to_string())),
                Err(e) => {
                    out.skipped.push(Skipped {
                        key: prefix.trim_end_matches('/').to_string(),
                        reason: format!("folder cannot be read: {e}"),
                    });
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        out.skipped.push(Skipped {
                            key: format!("{prefix}…"),
                            reason: format!("folder cannot be read: {e}"),
                        });
                        continue;
                    }
                };
                let key = format!(
                    "{prefix}{}",
                    escape_name(entry.file_name().as_encoded_bytes())
                );
                let path = entry.path();
                let skip = |reason: String| Skipped {
                    key: key.escape_debug().to_string(),
                    reason,
                };
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink());
                        let reason = if link && e.kind() == std::io::ErrorKind::NotFound {
                            "dangling symlink (what it points to does not exist)".to_string()
                        } else if link && e.raw_os_error() == Some(40) {
                            "symlink loop".to_string()
                        } else {
                            format!("cannot be read: {e}")
                        };
                        out.skipped.push(skip(reason));
                        continue;
                    }
                };
                if meta.is_dir() {
                    let real = match std::fs::canonicalize(&path) {
                        Ok(r) => r,
                        Err(e) => {
                            out.skipped
                                .push(skip(format!("folder cannot be read: {e}")));
                            continue;
                        }
                    };
                    if above.contains(&real) {
                        out.skipped.push(skip(
                            "symlink to a folder above it (a loop): not followed".into(),
                        ));
                        continue;
                    }
                    let mut above = above.clone();
                    above.push(real);
                    stack.push((path, format!("{key}/"), above));
                } else if meta.is_file() {
                    out.files.push(Listed {
                        key,
                        size: meta.len(),
                    });
                } else {
                    out.skipped.push(skip("not a regular file".into()));
                }
            }
        }
        out.files.sort_by(|a, b| a.key.cmp(&b.key));
        out.skipped.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The local path of `key` below `root`, with escaped names turned back into their bytes;
    /// `None` for keys with `.` or `..` parts.
    pub(super) fn path_of(root: &Path, key: &str) -> Option<PathBuf> {
        let mut p = root.to_path_buf();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            if part == "." || part == ".." {
                return None;
            }
            match unescape_name(part) {
                #[cfg(unix)]
                Some(bytes) => {
                    use std::os::unix::ffi::OsStrExt;
                    p.push(std::ffi::OsStr::from_bytes(&bytes));
                }
                #[cfg(not(unix))]
                Some(_) => return None,
                None => p.push(part),
            }
        }
        Some(p)
    }

    /// Reads a local file object_store could not: `None` when there is nothing better to say than
    /// object_store's error (the file does not exist either way).
    pub(super) async fn read(
        path: &Path,
        url: &str,
        max_bytes: u64,
    ) -> Option<Result<Bytes, GetError>> {
        let meta = tokio::fs::metadata(path).await.ok()?;
        if meta.is_dir() {
            return Some(Err(GetError::Storage(StorageError::Local {
                url: url.to_string(),
                message: "is a folder, not a file".into(),
            })));
        }
        if meta.len() > max_bytes {
            return Some(Err(GetError::TooLarge {
                size: meta.len(),
                max: max_bytes,
            }));
        }
        Some(tokio::fs::read(path).await.map(Bytes::from).map_err(|e| {
            GetError::Storage(StorageError::Local {
                url: url.to_string(),
                message: e.to_string(),
            })
        }))
    }

    /// See [`super::Prefix::check_writable`].
    pub(super) fn check_writable(root: &Path, url: &str) -> Result<(), StorageError> {
        let mut at = root.to_path_buf();
        let existing = loop {
            match std::fs::metadata(&at) {
                Ok(m) => break (at, m),
                Err(_) => {
                    if !at.pop() {
                        return Ok(());
                    }
                }
            }
        };
        let (dir, meta) = existing;
        let local = |message: String| StorageError::Local {
            url: url.to_string(),
            message,
        };
        if !meta.is_dir() {
            return Err(local(format!("{} is a file, not a folder", dir.display())));
        }
        let probe = dir.join(format!(".spotbatch-write-check-{}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(local(format!("cannot write in {}: {e}", dir.display()))),
        }
    }

    /// Removes the folders `key` was in below `root` while they are empty.
    pub(super) fn prune_empty(root: &Path, key: &str) {
        let Some(mut dir) = path_of(root, key) else {
            return;
        };
        while dir.pop() && dir.starts_with(root) && dir != root {
            // Fails (and stops here) when the folder is not empty.
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
        }
    }

    /// The operating system's reason inside a local store's error.
    pub(super) fn io_reason(e: &object_store::Error) -> Option<String> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return Some(io.to_string());
            }
            source = s.source();
        }
        None
    }
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
