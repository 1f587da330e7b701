//! How the commands say things: counts with their plurals, rates at a sensible precision, keys
//! on one line, and stderr shared with the progress bar (a log line or a message while the bar
//! is drawn goes above it, never onto the end of its line).

use std::io::Write;
use std::sync::Mutex;

/// `1 shard`, `2 shards`, `0 error rows`, `3 deliveries`.
pub fn count(n: impl Into<u64>, one: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {}", plural(one))
    }
}

fn plural(one: &str) -> String {
    match one.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{one}s"),
    }
}

/// A rate per second with as many digits as mean something: `1234`, `99.5`, `7.25`, `0.04`.
pub fn rate(per_s: f64) -> String {
    let r = if per_s.is_finite() {
        per_s.max(0.0)
    } else {
        0.0
    };
    if r == 0.0 {
        "0".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.3}")
    }
}

/// A key (or any name from outside) as one line: control characters escaped.
pub fn key(k: &str) -> String {
    if k.chars().any(char::is_control) {
        k.escape_debug().to_string()
    } else {
        k.to_string()
    }
}

static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// The progress bar drawn now (or none): what goes to stderr meanwhile is written above it.
pub fn set_bar(bar: Option<indicatif::ProgressBar>) {
    if let Ok(mut b) = BAR.lock() {
        *b = bar;
    }
}

/// Writes to stderr, above the progress bar when one is drawn.
fn write_stderr(buf: &[u8]) -> std::io::Result<()> {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(bar) => bar.suspend(|| std::io::stderr().lock().write_all(buf)),
        None => std::io::stderr().lock().write_all(buf),
    }
}

/// Prints a line to stderr (above the progress bar when one is drawn).
pub fn line(text: &str) {
    let _ = write_stderr(format!("{text}\n").as_bytes());
}

/// `eprintln!` that keeps out of the progress bar's way.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::say::line(&format!($($arg)*)) };
}

/// stderr for the log, written above the progress bar when one is drawn.
#[derive(Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_stderr(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

/// The log filter: `SPOTBATCH_LOG` (default `warn`). ONNX Runtime's own messages below warnings
/// are chatter at `info` (a hundred lines per model load): they show at `debug` or when asked
/// for by name (`ort=info`).
pub fn log_filter(spec: Option<&str>) -> String {
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("warn");
    let names_ort = spec.split(',').any(|d| {
        let target = d.split(['=', '[']).next().unwrap_or("").trim();
        target == "ort" || target.starts_with("ort::")
    });
    if names_ort || spec.contains("debug") || spec.contains("trace") {
        spec.to_string()
    } else {
        format!("{spec},ort=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_their_plurals() {
        assert_eq!(count(1u64, "shard"), "1 shard");
        assert_eq!(count(2u64, "shard"), "2 shards");
        assert_eq!(count(0u64, "error row"), "0 error rows");
        assert_eq!(count(3u64, "delivery"), "3 deliveries");
        assert_eq!(count(1u64, "delivery"), "1 delivery");
    }

    #[test]
    fn rates_keep_the_digits_that_mean_something() {
        assert_eq!(rate(99.4733), "99.5");
        assert_eq!(rate(1234.56), "1235");
        assert_eq!(rate(7.254), "7.25");
        assert_eq!(rate(0.04), "0.040");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(f64::NAN), "0");
    }

    #[test]
    fn keys_stay_on_one_line() {
        assert_eq!(key("a b/ü.png"), "a b/ü.png");
        assert_eq!(key("bad\nname.png"), "bad\\nname.png");
    }

    #[test]
    fn onnx_runtime_chatter_is_kept_below_debug() {
        assert_eq!(log_filter(None), "warn,ort=warn");
        assert_eq!(log_filter(Some("info")), "info,ort=warn");
        assert_eq!(log_filter(Some("debug")), "debug");
        assert_eq!(log_filter(Some("info,ort=info")), "info,ort=info");
        assert_eq!(
            log_filter(Some("spotbatch::report=info")),
            "spotbatch::report=info,ort=warn"
        );
    }
}
