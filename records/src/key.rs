//! A record's key: the file's key and the record's position in it, spelt `FILE#POS`.
//!
//! `POS` is the byte offset of the record's first byte for JSONL and CSV (a UTF-8 BOM at the file's
//! start belongs to the record at 0), and the 0-based row index in the file for Parquet. The file
//! key may itself contain `#`: the position is always after the *last* `#` and is plain decimal
//! digits, so [`RecordKey::parse`] undoes [`RecordKey`]'s `Display` exactly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The file's key (relative to the input prefix) and the record's position in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    /// The file's key, `/`-separated, relative to the input prefix.
    pub file: String,
    /// Byte offset of the record's first byte (JSONL, CSV) or 0-based row index (Parquet).
    pub pos: u64,
}

impl RecordKey {
    /// A key for `pos` in `file`.
    pub fn new(file: impl Into<String>, pos: u64) -> Self {
        Self {
            file: file.into(),
            pos,
        }
    }

    /// Parses `FILE#POS`; `None` when there is no `#` followed by decimal digits only.
    pub fn parse(s: &str) -> Option<Self> {
        let (file, pos) = s.rsplit_once('#')?;
        if pos.is_empty() || !pos.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Leading zeros would make two spellings for one position.
        if pos.len() > 1 && pos.starts_with('0') {
            return None;
        }
        Some(Self::new(file, pos.parse().ok()?))
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file, self.pos)
    }
}

impl FromStr for RecordKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a record key (FILE#POSITION)"))
    }
}

impl Serialize for RecordKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_even_with_hashes_in_the_file_key() {
        for (file, pos) in [
            ("data/a.jsonl", 0),
            ("data/a.jsonl", 1234),
            ("we#ird/#file#.csv", 7),
            ("ünï côdé/x.parquet", u64::MAX),
            ("", 3),
        ] {
            let k = RecordKey::new(file, pos);
            let s = k.to_string();
            assert_eq!(RecordKey::parse(&s), Some(k.clone()), "{s}");
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<RecordKey>(&json).unwrap(), k);
        }
        assert_eq!(
            RecordKey::new("data/a.jsonl", 1234).to_string(),
            "data/a.jsonl#1234"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        for s in [
            "a.jsonl",
            "a.jsonl#",
            "a.jsonl#12x",
            "a#-1",
            "a#01",
            "a#99999999999999999999",
        ] {
            assert_eq!(RecordKey::parse(s), None, "{s}");
        }
    }
}
