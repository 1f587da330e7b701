//! The Parquet side's I/O: an `AsyncFileReader` over an object store, every read a ranged GET
//! (`parquet`'s own `ParquetObjectReader` is deprecated in 60.1), and the footer read on its own.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::source::Source;

/// Bytes fetched from a file's end at first for its footer: most footers fit, so planning costs
/// one GET per file; a larger footer costs a second.
const FOOTER_HINT: usize = 64 * 1024;

/// A Parquet file of known size in a store.
pub(crate) struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl StoreReader {
    pub(crate) fn new(source: &Source, key: &str, size: u64) -> Self {
        Self {
            store: Arc::clone(&source.store),
            path: source.path(key),
            size,
        }
    }

    /// The footer (and nothing else).
    pub(crate) async fn footer(&mut self) -> Result<Arc<ParquetMetaData>> {
        self.get_metadata(None).await
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>>> {
        async move {
            if self.size == 0 {
                return Err(ParquetError::General("an empty file".into()));
            }
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(self, size)
                .await?;
            check_chunk_ranges(&meta, size)?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}

/// Every column chunk's byte range lies inside the file: the parquet crate asserts (panics) on a
/// negative offset or size when it reads a chunk, so a hostile or corrupt footer is refused here,
/// as the file's error (found by the `records_parquet` fuzz target).
fn check_chunk_ranges(meta: &ParquetMetaData, size: u64) -> Result<()> {
    for (g, group) in meta.row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or_else(|| chunk.data_page_offset());
            let len = chunk.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .is_some_and(|(s, l)| s.checked_add(l).is_some_and(|e| e <= size));
            if !inside {
                return Err(ParquetError::General(format!(
                    "row group {g}, column {c}: byte range {start}+{len} is not inside the file of {size} bytes"
                )));
            }
        }
    }
    Ok(())
}
