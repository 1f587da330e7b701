//! RFC 3339 times (`job.deadline`): parsed to Unix seconds without a date library, and read from
//! a manifest written either as text or as a TOML date-time.

use std::fmt;

/// Unix seconds of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.fraction]` and `Z` or `±HH:MM`
/// (`t`/`z` and a space for `T` accepted, as RFC 3339 allows). A time without its zone is refused:
/// a deadline must not depend on where it is read.
pub fn parse(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let bad = || "not an RFC 3339 time (like 2026-12-01T06:00:00Z)".to_string();
    let b = s.as_bytes();
    if b.len() < 19 || !b.is_ascii() {
        return Err(if b.len() == 10 && b.get(4) == Some(&b'-') {
            "a date without a time: write the time and its zone (like 2026-12-01T06:00:00Z)".into()
        } else {
            bad()
        });
    }
    let num = |from: usize, to: usize| -> Result<u32, String> {
        let part = &s[from..to];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<u32>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("{year:04}-{month:02}-{day:02} is not a date"));
    }
    // 60: a leap second, counted as the next second's start.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day"
        ));
    }
    let mut rest = &s[19..];
    let mut fraction = 0.0;
    if let Some(after) = rest.strip_prefix('.') {
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        fraction = format!("0.{}", &after[..digits])
            .parse::<f64>()
            .map_err(|_| bad())?;
        rest = &after[digits..];
    }
    let offset_s: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Result<i64, String> {
                if a.is_ascii_digit() && b.is_ascii_digit() {
                    Ok(i64::from((a - b'0') * 10 + (b - b'0')))
                } else {
                    Err(bad())
                }
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let off = h * 3_600 + m * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        [] => return Err("no time zone: end it with Z (UTC) or an offset like +01:00".to_string()),
        _ => return Err(bad()),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second)
        - offset_s;
    Ok(secs as f64 + fraction)
}

/// Unix seconds as an RFC 3339 time in UTC, to the second (`2026-12-01T06:00:00Z`).
pub fn format(unix_s: f64) -> String {
    let secs = if unix_s.is_finite() {
        unix_s.floor().clamp(-62_135_596_800.0, 253_402_300_799.0) as i64
    } else {
        0
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The date `days` after 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads `job.deadline`: text, or a TOML date-time (which the toml crate hands over as a map of
/// one private key to its text), kept as its text.
pub(crate) fn text_or_datetime<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 time like 2026-12-01T06:00:00Z")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            // A TOML date-time: one entry, its text.
            let Some((_, text)) = map.next_entry::<String, String>()? else {
                return Err(serde::de::Error::invalid_type(
                    serde::de::Unexpected::Map,
                    &self,
                ));
            };
            if map.next_entry::<String, String>()?.is_some() {
                return Err(serde::de::Error::invalid_type(
                    serde::de::Unexpected::Map,
                    &self,
                ));
            }
            Ok(Some(text))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_their_zone_are_unix_seconds() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0.0));
        assert_eq!(parse("2000-03-01T00:00:00Z"), Ok(951_868_800.0));
        assert_eq!(parse("2026-12-01T06:00:00Z"), Ok(1_796_104_800.0));
        assert_eq!(parse("2026-12-01T07:30:00+01:30"), Ok(1_796_104_800.0));
        assert_eq!(parse("2026-12-01 01:00:00-05:00"), Ok(1_796_104_800.0));
        assert_eq!(parse("2026-12-01t06:00:00.25z"), Ok(1_796_104_800.25));
        assert_eq!(parse("2024-02-29T00:00:00Z"), Ok(1_709_164_800.0));
    }

    #[test]
    fn unix_seconds_format_back_to_the_same_time() {
        assert_eq!(format(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(format(1_796_104_800.9), "2026-12-01T06:00:00Z");
        assert_eq!(format(1_709_164_800.0 + 86_399.0), "2024-02-29T23:59:59Z");
        for t in [
            951_868_800.0,
            1_709_164_800.0,
            1_796_104_800.0,
            4_102_444_800.0,
        ] {
            assert_eq!(parse(&format(t)), Ok(t));
        }
    }

    #[test]
    fn anything_else_is_refused_with_why() {
        for (s, why) in [
            ("2026-12-01", "without a time"),
            ("2026-12-01T06:00:00", "no time zone"),
            ("2026-02-29T00:00:00Z", "not a date"),
            ("2026-13-01T00:00:00Z", "not a date"),
            ("2026-12-01T24:00:00Z", "not a time of day"),
            ("2026-12-01T06:00:00+1:00", "not an RFC 3339 time"),
            ("tomorrow at six", "not an RFC 3339 time"),
            ("2026-12-01T06:00:00.Z", "not an RFC 3339 time"),
            ("２026-12-01T06:00:00Z", "not an RFC 3339 time"),
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
