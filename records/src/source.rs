//! Where inputs are read from: a store and a root path ([`Source`]), listing the files below it
//! ([`discover`]), and ranged, streamed reads of a file ([`RangedBytes`]) — the only way the byte
//! readers touch a file, so nothing ever fetches a whole object.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::{Path, PathPart};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::error::{PlanError, ReadError};

/// A store and the path that keys are relative to. `url` names it in messages.
#[derive(Debug, Clone)]
pub struct Source {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The root: keys are relative to it.
    pub root: Path,
    /// The root's URL (or any name), for messages; a key's URL is `url` + `/` + key.
    pub url: String,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The key relative to the source's root, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

impl Source {
    /// A source for `root` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, url: impl Into<String>) -> Self {
        Self {
            store,
            root,
            url: url.into(),
        }
    }

    /// The store path of `key`: its `/`-separated parts taken as written (any Unicode: converting
    /// with `From` would percent-encode it, and a local store would miss the file); a part the
    /// store cannot hold as written (`.`, `..`, control characters) is percent-encoded.
    pub fn path(&self, key: &str) -> Path {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.join(PathPart::parse(part).unwrap_or_else(|_| PathPart::from(part)));
        }
        p
    }

    /// `key`'s URL, for messages.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), key)
    }

    fn key_of(&self, path: &Path) -> Option<String> {
        let parts: Vec<String> = path
            .prefix_match(&self.root)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }
}

/// The files of an input: when `path` is an object, that one file (the source's root becomes its
/// folder and the key its name); otherwise every object below `path` whose key (relative to it)
/// matches `glob`, sorted by key. Only object metadata is read.
pub async fn discover(
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: &str,
    glob: Option<&globset::GlobMatcher>,
) -> Result<(Source, Vec<FileMeta>), PlanError> {
    let err = |source| PlanError::Store {
        url: url.to_string(),
        source,
    };
    if path.as_ref() != "" {
        // A folder (local stores refuse to HEAD one) or nothing is listed below instead.
        if let Ok(meta) = store.head(&path).await {
            let name = path.filename().unwrap_or_default().to_string();
            let (parent, parent_url) = parent_of(&path, url);
            return Ok((
                Source::new(store, parent, parent_url),
                vec![FileMeta {
                    key: name,
                    size: meta.size,
                }],
            ));
        }
    }
    let source = Source::new(store, path, url);
    let mut files: Vec<FileMeta> = source
        .store
        .list(Some(&source.root))
        .map_err(err)
        .try_filter_map(|meta| {
            let key = source.key_of(&meta.location);
            let keep = key
                .filter(|k| !k.is_empty() && glob.is_none_or(|g| g.is_match(k)))
                .map(|key| FileMeta {
                    key,
                    size: meta.size,
                });
            async move { Ok(keep) }
        })
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((source, files))
}

/// The source a planned job reads from, without listing: when `path` is an object (the input is
/// one data file), its folder (the splits' keys are the file's name); otherwise `path` itself.
/// One metadata request at most.
pub async fn source_for(store: Arc<dyn ObjectStore>, path: Path, url: &str) -> Source {
    if path.as_ref() != "" && store.head(&path).await.is_ok() {
        let (parent, parent_url) = parent_of(&path, url);
        return Source::new(store, parent, parent_url);
    }
    Source::new(store, path, url)
}

/// The folder of the object at `path` (named `url`), and its URL.
fn parent_of(path: &Path, url: &str) -> (Path, String) {
    let parent = Path::from_iter(path.parts().take(path.parts().count() - 1));
    let parent_url = url
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or(url, |(p, _)| p)
        .to_string();
    (parent, parent_url)
}

/// The first continuation read past a range's end; each further one doubles, up to the max.
const CONTINUE_FIRST: u64 = 64 * 1024;
const CONTINUE_MAX: u64 = 8 * 1024 * 1024;

/// A file's bytes from an offset on, as a sequence of ranged GETs with streamed bodies: first
/// `[from, first_end)`, then, only while the reader asks for more, `[first_end, +64 KiB)`,
/// doubling up to 8 MiB a request, until the end of the file. Each chunk is as the store streams
/// it; nothing is buffered here.
pub struct RangedBytes {
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: String,
    pos: u64,
    first_end: Option<u64>,
    size: u64,
    next_len: u64,
    body: Option<BoxStream<'static, object_store::Result<Bytes>>>,
}

impl RangedBytes {
    /// Reads `key` of `source` (planned at `size` bytes) from `from`, first up to `first_end`.
    pub fn new(source: &Source, key: &str, size: u64, from: u64, first_end: u64) -> Self {
        Self {
            store: Arc::clone(&source.store),
            path: source.path(key),
            url: source.url_of(key),
            pos: from,
            first_end: Some(first_end.max(from)),
            size,
            next_len: CONTINUE_FIRST,
            body: None,
        }
    }

    /// The offset of the next byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next chunk, `None` at the end of the file.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(body) = &mut self.body {
                match body.next().await {
                    Some(Ok(b)) => {
                        self.pos += b.len() as u64;
                        return Ok(Some(b));
                    }
                    Some(Err(source)) => {
                        return Err(ReadError::Store {
                            file: self.url.clone(),
                            source,
                        })
                    }
                    None => self.body = None,
                }
            }
            if self.pos >= self.size {
                return Ok(None);
            }
            let end = match self.first_end.take() {
                Some(e) if e > self.pos => e.min(self.size),
                _ => {
                    let e = (self.pos + self.next_len).min(self.size);
                    self.next_len = (self.next_len * 2).min(CONTINUE_MAX);
                    e
                }
            };
            let opts = GetOptions {
                range: Some(GetRange::Bounded(self.pos..end)),
                ..GetOptions::default()
            };
            let res = self
                .store
                .get_opts(&self.path, opts)
                .await
                .map_err(|source| ReadError::Store {
                    file: self.url.clone(),
                    source,
                })?;
            if res.meta.size != self.size {
                return Err(ReadError::Changed {
                    file: self.url.clone(),
                    planned: self.size,
                    found: res.meta.size,
                });
            }
            self.body = Some(res.into_stream());
        }
    }
}
