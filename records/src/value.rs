//! Typed values carried from an input row to its output row (the id column, `[output] columns`).
//!
//! A JSONL value keeps its JSON type ([`Value::Bool`], [`Value::Int`], [`Value::Float`],
//! [`Value::Str`]; objects and arrays as their JSON text, [`Value::Json`]); a CSV value is a
//! string; a Parquet value is a one-row slice of its Arrow column ([`Value::Arrow`]), so every
//! Arrow type (timestamps, decimals, lists …) reaches the Parquet output unchanged.
//!
//! A job's output schema must be the same in every part file, so each carried column has one
//! Arrow type for the whole job ([`crate::schema`] fixes it before any shard runs);
//! [`Value::conform`] turns a JSONL/CSV value into that type or says why it cannot.

use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

/// One carried value.
#[derive(Debug, Clone)]
pub enum Value {
    /// JSON `null`, a missing JSON field, an Arrow null.
    Null,
    /// A JSON boolean.
    Bool(bool),
    /// A JSON integer that fits `i64`.
    Int(i64),
    /// Any other JSON number.
    Float(f64),
    /// A JSON string or a CSV field.
    Str(String),
    /// A JSON object or array, as its JSON text.
    Json(String),
    /// A Parquet value: a one-row slice of its column, in the column's Arrow type.
    Arrow(ArrayRef),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) | (Value::Json(a), Value::Json(b)) => a == b,
            (Value::Arrow(a), Value::Arrow(b)) => a.to_data() == b.to_data(),
            _ => false,
        }
    }
}

impl Value {
    /// From a parsed JSON value.
    pub fn from_json(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s),
            other => Value::Json(other.to_string()),
        }
    }

    /// Whether the value is null (an Arrow slice holding a null counts).
    pub fn is_null(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Arrow(a) => a.null_count() == a.len(),
            _ => false,
        }
    }

    /// The type a value of this kind takes when nothing else is known (JSON type inference):
    /// `None` for a null.
    pub fn natural_type(&self) -> Option<DataType> {
        match self {
            Value::Null => None,
            Value::Bool(_) => Some(DataType::Boolean),
            Value::Int(_) => Some(DataType::Int64),
            Value::Float(_) => Some(DataType::Float64),
            Value::Str(_) | Value::Json(_) => Some(DataType::Utf8),
            Value::Arrow(a) => Some(a.data_type().clone()),
        }
    }

    /// A short name of what the value is, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(_) => "a boolean".into(),
            Value::Int(_) => "an integer".into(),
            Value::Float(_) => "a number".into(),
            Value::Str(_) => "a string".into(),
            Value::Json(j) if j.starts_with('[') => "an array".into(),
            Value::Json(_) => "an object".into(),
            Value::Arrow(a) => a.data_type().to_string(),
        }
    }

    /// This value in the job's type `ty`, or why not. Strings take any JSON value (as its JSON
    /// text); Float64 takes integers; Int64, Float64 and Boolean parse CSV strings (`true`/`false`);
    /// an Arrow value must already have the type; null fits every type.
    pub fn conform(self, ty: &DataType) -> Result<Value, Mismatch> {
        let mismatch = |v: &Value| {
            Err(Mismatch {
                expected: ty.to_string(),
                found: v.describe(),
            })
        };
        let unparsed = |s: &str, what: &str| Mismatch {
            expected: format!("{ty}{what}"),
            found: format!("{s:?}"),
        };
        match (self, ty) {
            (Value::Null, _) => Ok(Value::Null),
            (Value::Arrow(a), t) if a.data_type() == t => Ok(Value::Arrow(a)),
            (v @ Value::Arrow(_), _) => mismatch(&v),
            (v @ Value::Str(_), DataType::Utf8) => Ok(v),
            (Value::Json(j), DataType::Utf8) => Ok(Value::Str(j)),
            (Value::Bool(b), DataType::Utf8) => Ok(Value::Str(b.to_string())),
            (Value::Int(i), DataType::Utf8) => Ok(Value::Str(i.to_string())),
            (Value::Float(f), DataType::Utf8) => Ok(Value::Str(json_float(f))),
            (v @ Value::Int(_), DataType::Int64) => Ok(v),
            (Value::Str(s), DataType::Int64) => s
                .trim()
                .parse::<i64>()
                .map(Value::Int)
                .map_err(|_| unparsed(&s, "")),
            (v @ Value::Float(_), DataType::Float64) => Ok(v),
            (Value::Int(i), DataType::Float64) => Ok(Value::Float(i as f64)),
            (Value::Str(s), DataType::Float64) => s
                .trim()
                .parse::<f64>()
                .map(Value::Float)
                .map_err(|_| unparsed(&s, "")),
            (v @ Value::Bool(_), DataType::Boolean) => Ok(v),
            (Value::Str(s), DataType::Boolean) => match s.trim() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(unparsed(&s, " (true or false)")),
            },
            (v, _) => mismatch(&v),
        }
    }

    /// The value as JSON (for JSONL output). Arrow values of primitive and string types become
    /// their JSON counterparts; others (dates, timestamps, decimals, nested) their display text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| J::String(j.clone())),
            Value::Arrow(a) => arrow_to_json(a.as_ref()),
        }
    }
}

/// Why a value does not fit a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The type wanted.
    pub expected: String,
    /// What the value is.
    pub found: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expected {}, found {}", self.expected, self.found)
    }
}

/// A float as JSON writes it (integral floats keep their `.0`).
fn json_float(f: f64) -> String {
    serde_json::Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string())
}

fn arrow_to_json(a: &dyn Array) -> serde_json::Value {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use serde_json::Value as J;
    if a.is_empty() || a.is_null(0) {
        return J::Null;
    }
    macro_rules! prim {
        ($t:ty) => {
            J::from(a.as_primitive::<$t>().value(0))
        };
    }
    match a.data_type() {
        DataType::Boolean => J::Bool(a.as_boolean().value(0)),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => {
            serde_json::Number::from_f64(f64::from(a.as_primitive::<Float32Type>().value(0)))
                .map_or(J::Null, J::Number)
        }
        DataType::Float64 => serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(0))
            .map_or(J::Null, J::Number),
        DataType::Utf8 => J::String(a.as_string::<i32>().value(0).to_string()),
        DataType::LargeUtf8 => J::String(a.as_string::<i64>().value(0).to_string()),
        DataType::Utf8View => J::String(a.as_string_view().value(0).to_string()),
        _ => {
            let opts = arrow_cast::display::FormatOptions::default();
            match arrow_cast::display::ArrayFormatter::try_new(a, &opts) {
                Ok(f) => J::String(f.value(0).to_string()),
                Err(_) => J::Null,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn json_values_keep_their_types() {
        let v: serde_json::Value = serde_json::from_str(
            r#"[1, -2.5, "x", true, null, {"a":1}, [1,2], 18446744073709551615]"#,
        )
        .unwrap();
        let vals: Vec<Value> = v
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(Value::from_json)
            .collect();
        assert_eq!(vals[0], Value::Int(1));
        assert_eq!(vals[1], Value::Float(-2.5));
        assert_eq!(vals[2], Value::Str("x".into()));
        assert_eq!(vals[3], Value::Bool(true));
        assert_eq!(vals[4], Value::Null);
        assert_eq!(vals[5], Value::Json(r#"{"a":1}"#.into()));
        assert_eq!(vals[6].describe(), "an array");
        assert_eq!(vals[7], Value::Float(18446744073709551615.0));
    }

    #[test]
    fn conform_converts_what_is_safe_and_names_the_rest() {
        assert_eq!(
            Value::Int(3).conform(&DataType::Float64).unwrap(),
            Value::Float(3.0)
        );
        assert_eq!(
            Value::Float(3.0).conform(&DataType::Utf8).unwrap(),
            Value::Str("3.0".into())
        );
        assert_eq!(
            Value::Str(" 42".into()).conform(&DataType::Int64).unwrap(),
            Value::Int(42)
        );
        assert_eq!(
            Value::Str("false".into())
                .conform(&DataType::Boolean)
                .unwrap(),
            Value::Bool(false)
        );
        assert_eq!(Value::Null.conform(&DataType::Int64).unwrap(), Value::Null);
        let e = Value::Str("abc".into())
            .conform(&DataType::Int64)
            .unwrap_err();
        assert_eq!(e.to_string(), r#"expected Int64, found "abc""#);
        let e = Value::Float(1.5).conform(&DataType::Int64).unwrap_err();
        assert_eq!(e.found, "a number");
        let a: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![7]));
        assert!(Value::Arrow(a.clone()).conform(&DataType::Int32).is_ok());
        assert!(Value::Arrow(a).conform(&DataType::Int64).is_err());
    }

    #[test]
    fn arrow_values_become_json() {
        let a: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![Some(7)]));
        assert_eq!(Value::Arrow(a).to_json(), serde_json::json!(7));
        let s: ArrayRef = Arc::new(arrow_array::StringArray::from(vec!["x"]));
        assert_eq!(Value::Arrow(s).to_json(), serde_json::json!("x"));
        let d: ArrayRef = Arc::new(arrow_array::Date32Array::from(vec![19000]));
        assert_eq!(Value::Arrow(d).to_json(), serde_json::json!("2022-01-08"));
        let n: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![None::<i64>]));
        assert!(Value::Arrow(n.clone()).is_null());
        assert_eq!(Value::Arrow(n).to_json(), serde_json::Value::Null);
    }
}
