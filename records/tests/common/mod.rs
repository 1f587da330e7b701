//! Test helpers: a store that counts what is fetched, and sources over it.
#![allow(dead_code)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};
use spotbatch_records::{Record, RecordStream, Source};

/// Every GET (path and range) and the body bytes actually pulled through it.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes: AtomicU64,
    pub gets: Mutex<Vec<(String, Option<GetRange>)>>,
}

impl Stats {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
    pub fn gets(&self) -> Vec<(String, Option<GetRange>)> {
        self.gets.lock().unwrap().clone()
    }
    pub fn reset(&self) {
        self.bytes.store(0, Ordering::SeqCst);
        self.gets.lock().unwrap().clear();
    }
}

/// A store that passes everything to `inner` and counts GETs and the bytes they deliver.
#[derive(Debug)]
pub struct Counting {
    pub inner: Arc<dyn ObjectStore>,
    pub stats: Arc<Stats>,
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.stats
            .gets
            .lock()
            .unwrap()
            .push((location.to_string(), options.range.clone()));
        let mut r = self.inner.get_opts(location, options).await?;
        let payload = std::mem::replace(
            &mut r.payload,
            GetResultPayload::Stream(futures::stream::empty().boxed()),
        );
        let body = GetResult {
            payload,
            meta: r.meta.clone(),
            range: r.range.clone(),
            attributes: r.attributes.clone(),
            extensions: std::mem::take(&mut r.extensions),
        }
        .into_stream();
        let stats = Arc::clone(&self.stats);
        r.payload = GetResultPayload::Stream(
            body.inspect(move |c| {
                if let Ok(b) = c {
                    stats.bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
                }
            })
            .boxed(),
        );
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// An in-memory source under `data/` holding `files`, counted.
pub async fn mem_source(files: &[(&str, &[u8])]) -> (Source, Arc<Stats>) {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    for (key, bytes) in files {
        mem.put(
            &Path::from(format!("data/{key}")),
            PutPayload::from(Bytes::copy_from_slice(bytes)),
        )
        .await
        .unwrap();
    }
    let stats = Arc::new(Stats::default());
    let store: Arc<dyn ObjectStore> = Arc::new(Counting {
        inner: mem,
        stats: Arc::clone(&stats),
    });
    (Source::new(store, Path::from("data"), "mem://data"), stats)
}

/// Every record of a stream; panics on a fatal error.
pub async fn collect(mut s: RecordStream) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        out.push(r.expect("no fatal error"));
    }
    out
}

/// The projection the Parquet tests read: `text` as the text, `id` as the id, then `columns`.
pub fn text_id_projection(columns: &[&str]) -> spotbatch_records::Projection {
    spotbatch_records::Projection {
        text: Some("text".into()),
        id: Some(spotbatch_records::Column::named("id")),
        columns: columns
            .iter()
            .copied()
            .map(spotbatch_records::Column::named)
            .collect(),
    }
}
