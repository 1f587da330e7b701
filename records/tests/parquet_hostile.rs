//! Parquet files whose Thrift structures lie (fuzz finding 8): a page header carrying an unknown
//! field that claims 2^31 booleans it does not hold, a valid unknown field of booleans, an offset
//! index that claims 2^31 page locations. Each file is a real one written by arrow-rs and then
//! edited byte by byte, its footer rewritten by parquet's own metadata writer to match.
//!
//! These pin the two fixes carried in `vendor/parquet` (see `vendor/README.md`): without them
//! the first file is read after ~2^32 idle iterations as if nothing were wrong, the second is
//! misread, the third aborts the process on a 48 GiB allocation.

mod common;

use std::sync::Arc;

use arrow_array::{Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnChunkMetaDataBuilder, ParquetMetaData, ParquetMetaDataReader,
    ParquetMetaDataWriter,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use spotbatch_records::{read_parquet_bytes, Projection, ReadError, ReadOptions, Record};

const ROWS: usize = 6;

/// id Int32, text Utf8, lang Utf8 (the fuzz target's projection); one row group, one plain
/// uncompressed page per column, no statistics, dictionary or page index: a layout whose bytes
/// the tests below can edit.
fn plain_file() -> Vec<u8> {
    written(false)
}

/// As [`plain_file`], with or without a dictionary page before each column's data page.
fn written(dictionary: bool) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
    ]));
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(dictionary)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_offset_index_disabled(true)
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), Some(props)).unwrap();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from_iter_values(0..ROWS as i32)),
            Arc::new(StringArray::from_iter_values(
                (0..ROWS).map(|i| format!("row {i}")),
            )),
            Arc::new(StringArray::from_iter_values((0..ROWS).map(|_| "en"))),
        ],
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

fn proj() -> Projection {
    common::text_id_projection(&[])
}

async fn read(file: Vec<u8>) -> Result<Vec<Record>, ReadError> {
    read_parquet_bytes(Bytes::from(file), 100, &proj(), &ReadOptions::default()).await
}

fn texts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.fields.as_ref().unwrap().text.clone().unwrap())
        .collect()
}

fn metadata(file: &[u8]) -> ParquetMetaData {
    ParquetMetaDataReader::new()
        .parse_and_finish(&Bytes::copy_from_slice(file))
        .unwrap()
}

/// Where the file's data ends and its footer (FileMetaData, length, magic) begins.
fn data_end(file: &[u8]) -> usize {
    let n = file.len();
    let len = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
    n - 8 - len
}

/// `data` followed by the footer of `meta`.
fn with_footer(mut data: Vec<u8>, meta: &ParquetMetaData) -> Vec<u8> {
    ParquetMetaDataWriter::new(&mut data, meta)
        .finish()
        .unwrap();
    data
}

/// The Thrift compact struct starting at `at`, for the fields arrow-rs writes in a page header
/// without statistics (i32 varints, booleans, nested structs; short field headers): one past its
/// stop byte, and its top-level i32 fields as (id, value).
fn page_header(b: &[u8], mut at: usize) -> (usize, Vec<(i16, i32)>) {
    let (mut id, mut ints) = (0i16, Vec::new());
    loop {
        let header = b[at];
        at += 1;
        id += i16::from(header >> 4);
        match header & 0x0f {
            0 => return (at, ints),
            1 | 2 => {}
            5 => {
                let (mut v, mut shift) = (0u32, 0);
                while b[at] & 0x80 != 0 {
                    v |= u32::from(b[at] & 0x7f) << shift;
                    (at, shift) = (at + 1, shift + 7);
                }
                v |= u32::from(b[at]) << shift;
                at += 1;
                ints.push((id, (v >> 1) as i32 ^ -((v & 1) as i32)));
            }
            12 => at = page_header(b, at).0,
            t => panic!("field type {t} in a page header written without statistics"),
        }
    }
}

/// A Thrift i32 field with a short header (`delta` from the previous field id), zigzag varint.
fn i32_field(delta: u8, v: i32) -> Vec<u8> {
    let mut out = vec![delta << 4 | 5];
    let mut z = ((v << 1) ^ (v >> 31)) as u32;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

/// `file` with `remove` bytes at `at` replaced by `insert`: the column chunk holding `at` grows or
/// shrinks, the chunks after it move, and the footer is written again to match.
fn splice(file: &[u8], at: usize, remove: usize, insert: &[u8]) -> Vec<u8> {
    let meta = metadata(file);
    let grow = insert.len() as i64 - remove as i64;
    let mut data = file[..at].to_vec();
    data.extend_from_slice(insert);
    data.extend_from_slice(&file[at + remove..data_end(file)]);
    let at = at as i64;
    with_chunks(data, meta, |c| {
        let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
        let b = c.clone().into_builder();
        if start > at {
            b.set_data_page_offset(c.data_page_offset() + grow)
                .set_dictionary_page_offset(c.dictionary_page_offset().map(|o| o + grow))
        } else if at < start + c.compressed_size() {
            b.set_total_compressed_size(c.compressed_size() + grow)
        } else {
            b
        }
    })
}

/// `data` followed by the footer of `meta` (one row group) with each column chunk's metadata
/// edited by `edit`.
fn with_chunks(
    data: Vec<u8>,
    meta: ParquetMetaData,
    edit: impl Fn(&ColumnChunkMetaData) -> ColumnChunkMetaDataBuilder,
) -> Vec<u8> {
    let group = meta.row_group(0).clone();
    let columns = group
        .columns()
        .iter()
        .map(|c| edit(c).build().unwrap())
        .collect();
    let group = group
        .into_builder()
        .set_column_metadata(columns)
        .build()
        .unwrap();
    with_footer(
        data,
        &meta.into_builder().set_row_groups(vec![group]).build(),
    )
}

/// `file` with `field` (a whole Thrift field: header and value) added to the first column's page
/// header, just before the header's stop byte.
fn with_page_header_field(file: &[u8], field: &[u8]) -> Vec<u8> {
    let first = metadata(file).row_group(0).column(0).data_page_offset() as usize;
    let stop = page_header(file, first).0 - 1;
    splice(file, stop, 0, field)
}

/// `file` with the text column's dictionary page header claiming `num_values` values (PLAIN,
/// over the same bytes).
fn with_dictionary_count(file: &[u8], num_values: i32) -> Vec<u8> {
    let at = metadata(file)
        .row_group(0)
        .column(1)
        .dictionary_page_offset()
        .unwrap() as usize;
    let (end, ints) = page_header(file, at);
    let size = ints.iter().find(|(id, _)| *id == 3).unwrap().1;
    // PageHeader { 1: DICTIONARY_PAGE, 2: size, 3: size, 7: DictionaryPageHeader { 1: n, 2: PLAIN } }
    let mut header = [i32_field(1, 2), i32_field(1, size), i32_field(1, size)].concat();
    header.push(0x4c);
    header.extend([i32_field(1, num_values), i32_field(1, 0)].concat());
    header.extend([0, 0]);
    splice(file, at, end - at, &header)
}

/// A field header in the long form (type, then the id as a zigzag varint): id 100, an id no
/// version of parquet-format uses in a page header, so every reader skips it.
fn unknown_field(thrift_type: u8) -> Vec<u8> {
    vec![thrift_type, 0xc8, 0x01]
}

#[tokio::test]
async fn the_base_file_reads_and_the_edit_helpers_keep_it_readable() {
    let file = plain_file();
    let want: Vec<String> = (0..ROWS).map(|i| format!("row {i}")).collect();
    assert_eq!(texts(&read(file.clone()).await.unwrap()), want);
    // An unknown i32 field (id 100 = 7): any reader skips it and reads the same rows, so the
    // helpers' offsets and footer are right and the tests below test only the Thrift values.
    let mut field = unknown_field(5);
    field.push(14);
    let edited = with_page_header_field(&file, &field);
    assert_eq!(data_end(&edited), data_end(&file) + field.len());
    assert_eq!(texts(&read(edited).await.unwrap()), want);
    // The text column's dictionary page header written again with its true count (six texts).
    let dict = written(true);
    assert_eq!(texts(&read(dict.clone()).await.unwrap()), want);
    assert_eq!(
        texts(&read(with_dictionary_count(&dict, 6)).await.unwrap()),
        want
    );
}

#[tokio::test]
async fn a_dictionary_page_claiming_a_billion_values_in_a_few_bytes_is_refused() {
    // Unpatched parquet 60.1 reserved room for every claimed value before reading one (4 GiB of
    // offsets here, beyond libFuzzer's 2 GB limit; 2^31 values of 16-byte views: 32 GiB), then
    // read the six that are there and the rows as if nothing were wrong.
    let e = read(with_dictionary_count(&written(true), 1 << 30))
        .await
        .map(|r| r.len())
        .unwrap_err();
    assert!(matches!(e, ReadError::Parquet { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("dictionary page claims 1073741824 values in"),
        "{e}"
    );
}

/// The plain file with an unknown field in its first page header claiming 2^31 - 1 booleans
/// and holding none: a `map<bool, bool>` (Thrift type 11), a `list<bool>` (9) or a `set<bool>`
/// (10).
fn claiming_booleans(thrift_type: u8) -> Vec<u8> {
    let mut field = unknown_field(thrift_type);
    if thrift_type == 11 {
        field.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07, 0x11]);
    } else {
        field.extend_from_slice(&[0xf2, 0xff, 0xff, 0xff, 0xff, 0x07]);
    }
    with_page_header_field(&plain_file(), &field)
}

#[tokio::test]
async fn a_page_header_claiming_two_billion_booleans_it_does_not_hold_is_refused() {
    // The Thrift compact protocol spends a byte on each boolean of a collection, so the header
    // runs past its chunk. Unpatched parquet 60.1 skipped each boolean as zero bytes: ~2^32
    // iterations for the map (seconds; the fuzzer's 864-byte file had one of these), then read
    // the page as if the field were not there.
    for thrift_type in [11u8, 9, 10] {
        let e = read(claiming_booleans(thrift_type))
            .await
            .map(|r| r.len())
            .unwrap_err();
        assert!(
            matches!(e, ReadError::Parquet { .. }),
            "type {thrift_type}: {e}"
        );
    }
}

#[tokio::test]
async fn a_valid_unknown_list_of_booleans_in_a_page_header_is_skipped_whole() {
    // list<bool> [true, false, true]: three bytes after the list header. Skipping it as zero
    // bytes would read those bytes as the next field headers.
    let mut field = unknown_field(9);
    field.extend_from_slice(&[0x32, 0x01, 0x02, 0x01]);
    let records = read(with_page_header_field(&plain_file(), &field))
        .await
        .unwrap();
    let want: Vec<String> = (0..ROWS).map(|i| format!("row {i}")).collect();
    assert_eq!(texts(&records), want);
}

/// The plain file whose columns' offset index is `OffsetIndex { 1: list<PageLocation> }` with
/// 2^31 - 1 elements in 6 bytes.
fn claiming_pages() -> Vec<u8> {
    let file = plain_file();
    let meta = metadata(&file);
    let mut data = file[..data_end(&file)].to_vec();
    let index_at = data.len() as i64;
    let index = [0x19, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07];
    data.extend_from_slice(&index);
    with_chunks(data, meta, |c| {
        c.clone()
            .into_builder()
            .set_offset_index_offset(Some(index_at))
            .set_offset_index_length(Some(index.len() as i32))
    })
}

#[tokio::test]
async fn an_offset_index_claiming_two_billion_pages_is_refused_without_allocating_them() {
    // Unpatched parquet 60.1 reserved room for all of them first (2^31 x 24 bytes: an
    // allocation failure that aborts the process).
    let e = read(claiming_pages()).await.map(|r| r.len()).unwrap_err();
    assert!(matches!(e, ReadError::Parquet { .. }), "{e}");
    assert!(
        e.to_string().contains("exceeds remaining input length"),
        "{e}"
    );
}

/// Writes these files, behind the `records_parquet` fuzz target's first byte, as regression
/// seeds of its corpus (replayed by `make test`).
#[test]
#[ignore = "writes fuzz/corpus/records_parquet/regression-hostile-*: run once when they change"]
fn write_fuzz_seeds() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/records_parquet");
    for (name, file) in [
        ("map", claiming_booleans(11)),
        ("list", claiming_booleans(9)),
        ("offset-index", claiming_pages()),
        ("dictionary", with_dictionary_count(&written(true), 1 << 30)),
    ] {
        let mut seed = vec![3u8];
        seed.extend_from_slice(&file);
        std::fs::write(dir.join(format!("regression-hostile-{name}")), seed).unwrap();
    }
}

#[tokio::test]
async fn a_row_group_claiming_more_rows_than_it_holds_fails_its_splits() {
    // The footer says 8 rows, the pages hold 6. Keys are positions in the file, and a split's
    // first key comes from the footer's counts: read whole, the rows after such a group would
    // get other keys than read in splits (fuzz finding 9), so every split the lie touches fails.
    let file = plain_file();
    let meta = metadata(&file);
    let group = meta
        .row_group(0)
        .clone()
        .into_builder()
        .set_num_rows(ROWS as i64 + 2)
        .build()
        .unwrap();
    let file = with_footer(
        file[..data_end(&file)].to_vec(),
        &meta.into_builder().set_row_groups(vec![group]).build(),
    );
    let (proj, opts) = (proj(), ReadOptions::default());
    let read_in =
        |max_rows: u64| read_parquet_bytes(Bytes::from(file.clone()), max_rows, &proj, &opts);
    // Whole: the pages end two rows short of the split.
    let e = read_in(100).await.map(|r| r.len()).unwrap_err();
    assert!(matches!(e, ReadError::BadSplit { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "mem:/input.parquet: row groups [0] hold rows up to 6 where the footer counts rows up to 8 (a row group's num_rows does not match its data)"
    );
    // In splits of 3 rows: 0..3 and 3..6 read, 6..8 selects rows the pages do not have (parquet
    // itself refuses that selection).
    let e = read_in(3).await.map(|r| r.len()).unwrap_err();
    assert!(
        matches!(e, ReadError::Parquet { .. } | ReadError::BadSplit { .. }),
        "{e}"
    );
}
