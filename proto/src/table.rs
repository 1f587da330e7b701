//! Reading one table of a manifest with every problem in it reported, in the manifest's terms.
//!
//! serde stops at the first error of a struct. Here the offending key is set aside (its default
//! applies) and the table is read again, so every unknown key and every value of the wrong type
//! is named, not only the first. Unknown keys get the closest known key as a suggestion
//! (`batchsize` → `batch_size`), enum values match in any case (`"NCHW"` is `nchw`), and serde's
//! words (`usize`, `an array of length 2`, `string "8x8"`) become what the manifest writer sees
//! (`a whole number, 0 or more`, `a list of 2 values`, `"8x8"`).
//!
//! Nothing here knows the manifest's fields: it works on any table of any struct serde derives, so
//! fields added to the manifest get the same messages without a line here.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::field::FieldError;

/// Reads `value` (the table at `path`) as a `T`, pushing one [`FieldError`] per problem. The
/// value comes back with every key that could not be read set aside (so its default applies),
/// or `None` when a required key is missing.
pub(crate) fn read<T: DeserializeOwned>(
    path: &str,
    mut value: toml::Value,
    errs: &mut Vec<FieldError>,
) -> Option<T> {
    let mut named: Vec<String> = Vec::new();
    // Each round fixes or sets aside one key, so a table has at most as many rounds as keys.
    for _ in 0..=count_keys(&value) {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let message = without_key_context(&e.into_inner().to_string());
        let field = field_path(path, &segments);
        if let Some(missing) = quoted_after(&message, "missing field `") {
            let field = if field.is_empty() {
                missing.to_string()
            } else {
                format!("{field}.{missing}")
            };
            // A key set aside for its value is missing now: it was named already.
            if !named.contains(&field) {
                errs.push(FieldError::new(field, "missing"));
            }
            return None;
        }
        if let Some((given, known)) = unknown(&message, "unknown variant `") {
            // Enum values in any case: put the value as the manifest spells it and read again.
            if let Some(canonical) = known.iter().find(|k| k.eq_ignore_ascii_case(given)) {
                if let Some(slot) = at_mut(&mut value, &segments) {
                    if slot.as_str() == Some(given) {
                        *slot = toml::Value::String(canonical.clone());
                        continue;
                    }
                }
            }
            errs.push(FieldError::new(
                field.clone(),
                format!(
                    "{given:?} is not one of: {}{}",
                    known.join(", "),
                    suggestion(given, &known)
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default()
                ),
            ));
        } else if let Some((given, known)) = unknown(&message, "unknown field `") {
            errs.push(FieldError::new(field.clone(), unknown_key(given, &known)));
        } else {
            let found = at(&value, &segments).map(describe);
            errs.push(FieldError::new(
                field.clone(),
                in_manifest_terms(&message, found),
            ));
        }
        named.push(field_path(path, key_path(&segments)));
        if !set_aside_key(&mut value, &segments) {
            return None;
        }
    }
    None
}

/// serde's message without the toml crate's "in `KEY`" context after it (the field path is
/// given separately): "expected usize\nin `batch_size`" → "expected usize".
fn without_key_context(message: &str) -> String {
    let t = message.trim_end();
    if let (true, Some(i)) = (t.ends_with('`'), t.rfind("in `")) {
        let (before, key) = (&t[..i], &t[i + 4..t.len() - 1]);
        if (before.is_empty() || before.ends_with(char::is_whitespace)) && !key.contains('`') {
            return before.trim_end().to_string();
        }
    }
    t.to_string()
}

/// The message for an unknown key: the closest known key, else the known keys.
pub(crate) fn unknown_key(given: &str, known: &[impl AsRef<str>]) -> String {
    let known: Vec<&str> = known.iter().map(AsRef::as_ref).collect();
    match suggestion(given, &known) {
        Some(s) => format!("unknown key (did you mean {s}?)"),
        None if known.is_empty() => "unknown key".to_string(),
        None => format!("unknown key (known keys: {})", known.join(", ")),
    }
}

/// The known name closest to `given`, when it is close enough to be a slip: the same but for
/// case, `_` or `-` (`batchsize`, `Batch-Size`), a few letters apart (`colour`, `lables`), or
/// one a prefix of the other (`preprocessing`).
pub(crate) fn suggestion<'a>(given: &str, known: &[impl AsRef<str> + 'a]) -> Option<String> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .flat_map(char::to_lowercase)
            .collect()
    };
    let g = norm(given);
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let k = k.as_ref();
        let n = norm(k);
        let d = if n == g {
            0
        } else if g.len() >= 4 && n.len() >= 4 && (n.starts_with(&g) || g.starts_with(&n)) {
            1
        } else {
            edit_distance(&g, &n)
        };
        let limit = if g.chars().count() >= 5 { 2 } else { 1 };
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k.to_string())
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// `PATH.key[0].sub` for a table at `path` and serde's path inside it.
fn field_path(path: &str, segments: &[Segment]) -> String {
    let mut out = path.to_string();
    for s in segments {
        match s {
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

fn count_keys(v: &toml::Value) -> usize {
    match v {
        toml::Value::Table(t) => t.len() + t.values().map(count_keys).sum::<usize>(),
        toml::Value::Array(a) => a.iter().map(count_keys).sum(),
        _ => 0,
    }
}

/// The value at serde's path inside the table.
fn at<'a>(mut v: &'a toml::Value, segments: &[Segment]) -> Option<&'a toml::Value> {
    for s in segments {
        v = match (s, v) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get(key)?,
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get(*index)?,
            (Segment::Enum { .. }, _) => v,
            _ => return None,
        };
    }
    Some(v)
}

fn at_mut<'a>(mut v: &'a mut toml::Value, segments: &[Segment]) -> Option<&'a mut toml::Value> {
    for s in segments {
        v = match (s, v) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key)?,
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index)?,
            (Segment::Enum { .. }, v) => v,
            _ => return None,
        };
    }
    Some(v)
}

/// The path to the key [`set_aside_key`] removes.
fn key_path(segments: &[Segment]) -> &[Segment] {
    match segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    {
        Some(i) => &segments[..=i],
        None => &[],
    }
}

/// Removes the key the error is about (the innermost key on the path: an element of a list sets
/// the whole list aside). Returns whether something was removed.
fn set_aside_key(value: &mut toml::Value, segments: &[Segment]) -> bool {
    let Some(last_key) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let Segment::Map { key } = &segments[last_key] else {
        return false;
    };
    match at_mut(value, &segments[..last_key]) {
        Some(toml::Value::Table(t)) => t.remove(key).is_some(),
        _ => false,
    }
}

/// The text between `prefix` and the next backquote.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(q, _)| q)
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there are no
/// fields"): the name given and the names known.
fn unknown<'a>(message: &'a str, prefix: &str) -> Option<(&'a str, Vec<String>)> {
    let given = quoted_after(message, prefix)?;
    let rest = &message[prefix.len() + given.len() + 1..];
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((given, known))
}

/// A value as the manifest writer sees it.
pub(crate) fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(a) => match a.len() {
            1 => "a list of 1 value".to_string(),
            n => format!("a list of {n} values"),
        },
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// serde's "invalid type: string \"8x8\", expected an array of length 2" as "expected a list of
/// 2 values, found \"8x8\"".
fn in_manifest_terms(message: &str, found: Option<String>) -> String {
    let (unexpected, expected) = match message.split_once(", expected ") {
        Some((u, e)) => (u, e),
        None => return message.to_string(),
    };
    let found = found.unwrap_or_else(|| {
        unexpected
            .trim_start_matches("invalid type: ")
            .trim_start_matches("invalid value: ")
            .replace('`', "")
    });
    format!(
        "expected {}, found {found}",
        expected_in_manifest_terms(expected)
    )
}

/// serde's and the toml crate's words for a type, as the manifest writer would say them.
fn expected_in_manifest_terms(expected: &str) -> String {
    let whole = |max: Option<u64>| match max {
        Some(m) => format!("a whole number from 0 to {m}"),
        None => "a whole number, 0 or more".to_string(),
    };
    match expected {
        "usize" | "u64" | "u128" => whole(None),
        "u32" => whole(Some(u64::from(u32::MAX))),
        "u16" => whole(Some(u64::from(u16::MAX))),
        "u8" => whole(Some(u64::from(u8::MAX))),
        "isize" | "i64" | "i32" | "i16" | "i8" | "i128" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" | "a borrowed string" | "string only" | "a character" => {
            "text in quotes".to_string()
        }
        "a sequence" => "a list, like [1, 2]".to_string(),
        "a map" => "a table".to_string(),
        // The toml crate's words for a list longer than the fixed length asked for.
        "fewer elements in array" => "fewer values".to_string(),
        other => {
            let n = other
                .strip_prefix("an array of length ")
                .or_else(|| other.strip_prefix("a tuple of size "))
                .or_else(|| other.strip_prefix("a sequence of length "));
            match n {
                Some("1") => "a list of 1 value".to_string(),
                Some(n) => format!("a list of {n} values"),
                None => other
                    .strip_prefix("struct ")
                    .map(|_| "a table".to_string())
                    .unwrap_or_else(|| other.replace('`', "")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Shape {
        Round,
        Square,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        uri: String,
        #[serde(default)]
        batch_size: usize,
        #[serde(default)]
        size: Option<[u32; 2]>,
        #[serde(default)]
        shape: Option<Shape>,
        #[serde(default)]
        on: bool,
    }

    fn read_t(text: &str) -> (Option<T>, Vec<String>) {
        let value: toml::Value = toml::Value::Table(text.parse().unwrap());
        let mut errs = Vec::new();
        let v = read::<T>("t", value, &mut errs);
        (v, errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn every_bad_key_of_a_table_is_named_not_only_the_first() {
        let (v, errs) = read_t(
            "uri = \"x\"\nbatchsize = 3\nsize = \"8x8\"\nshape = \"oval\"\non = 1\ncolour = 2\n",
        );
        assert_eq!(
            errs,
            vec![
                "t.batchsize: unknown key (did you mean batch_size?)",
                "t.colour: unknown key (known keys: uri, batch_size, size, shape, on)",
                "t.on: expected true or false, found 1",
                "t.shape: \"oval\" is not one of: round, square",
                "t.size: expected a list of 2 values, found \"8x8\"",
            ],
            "one line per key, in the table's order"
        );
        // The rest is read, with defaults where keys were set aside.
        assert_eq!(v.unwrap().uri, "x");
    }

    #[test]
    fn enum_values_match_in_any_case() {
        let (v, errs) = read_t("uri = \"x\"\nshape = \"SQUARE\"\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(v.unwrap().shape, Some(Shape::Square));
        let (_, errs) = read_t("uri = \"x\"\nshape = \"sqare\"\n");
        assert_eq!(
            errs,
            vec!["t.shape: \"sqare\" is not one of: round, square (did you mean square?)"]
        );
    }

    #[test]
    fn numbers_and_lists_are_described_as_the_manifest_writes_them() {
        let (_, errs) = read_t("uri = \"x\"\nbatch_size = -1\nsize = [1, \"a\"]\n");
        assert_eq!(
            errs,
            vec![
                "t.batch_size: expected a whole number, 0 or more, found -1",
                "t.size[1]: expected a whole number from 0 to 4294967295, found \"a\"",
            ]
        );
        let (_, mut errs) = read_t("uri = 5\nsize = [1, 2, 3]\n");
        errs.sort();
        assert_eq!(
            errs,
            vec![
                "t.size: expected fewer values, found a list of 3 values",
                "t.uri: expected text in quotes, found 5",
            ],
            "uri is named once, for its value"
        );
        let (_, errs) = read_t("size = 4\n");
        assert_eq!(
            errs,
            vec![
                "t.size: expected a list of 2 values, found 4",
                "t.uri: missing"
            ]
        );
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let (v, errs) = read_t("batch_size = 2\n");
        assert!(v.is_none());
        assert_eq!(errs, vec!["t.uri: missing"]);
    }

    #[test]
    fn suggestions_catch_slips_and_nothing_else() {
        let known = ["batch_size", "color", "labels", "preprocess", "uri"];
        for (given, want) in [
            ("batchsize", Some("batch_size")),
            ("Batch-Size", Some("batch_size")),
            ("colour", Some("color")),
            ("lables", Some("labels")),
            ("preprocessing", Some("preprocess")),
            ("url", Some("uri")),
            ("threads", None),
            ("x", None),
        ] {
            assert_eq!(suggestion(given, &known).as_deref(), want, "{given}");
        }
    }
}
