//! The JSON-lines log of `strata node`: one object per line, `"ev"` first and
//! `"t"` (CLOCK_MONOTONIC nanoseconds) second, each line handed to the kernel
//! with a single `write(2)` on a file opened with `O_APPEND`, so that a reader
//! (or a crash) never sees half a line and the line exists before the event
//! it records can be observed anywhere else.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The host's `CLOCK_MONOTONIC` in nanoseconds: comparable between processes
/// on one host, unlike tokio's or std's `Instant`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// A JSON string literal for `s`, escaped by serde_json.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".to_string())
}

/// One log line under construction. `"t"` is read when the line is started,
/// so lines written one after another from one task have non-decreasing `t`.
pub struct Line {
    buf: String,
}

impl Line {
    /// A line for event `ev`, stamped now.
    pub fn new(ev: &str) -> Line {
        let mut buf = String::with_capacity(160);
        buf.push_str("{\"ev\":");
        buf.push_str(&json_str(ev));
        buf.push_str(",\"t\":");
        buf.push_str(&monotonic_ns().to_string());
        Line { buf }
    }

    fn key(&mut self, key: &str) {
        self.buf.push(',');
        self.buf.push_str(&json_str(key));
        self.buf.push(':');
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, value: &str) -> Line {
        self.key(key);
        self.buf.push_str(&json_str(value));
        self
    }

    /// Adds an integer field.
    pub fn u64(mut self, key: &str, value: u64) -> Line {
        self.key(key);
        self.buf.push_str(&value.to_string());
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Line {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// Adds a number field (`null` if it is not finite, which JSON cannot say).
    pub fn f64(mut self, key: &str, value: Option<f64>) -> Line {
        self.key(key);
        match value.and_then(serde_json::Number::from_f64) {
            Some(n) => self.buf.push_str(&n.to_string()),
            None => self.buf.push_str("null"),
        }
        self
    }

    /// Adds a list of strings.
    pub fn strs<S: AsRef<str>>(mut self, key: &str, values: impl IntoIterator<Item = S>) -> Line {
        self.key(key);
        self.buf.push('[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(',');
            }
            self.buf.push_str(&json_str(v.as_ref()));
        }
        self.buf.push(']');
        self
    }

    /// Adds a value that is already JSON text.
    pub fn raw(mut self, key: &str, json: &str) -> Line {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    /// The finished line, newline included.
    pub fn finish(mut self) -> String {
        self.buf.push_str("}\n");
        self.buf
    }
}

/// The log file.
pub struct JsonLog {
    file: File,
}

impl JsonLog {
    /// Creates (or empties) the log: one file holds one run.
    pub fn create(path: &Path) -> io::Result<JsonLog> {
        // std refuses `append` together with `truncate`; O_APPEND is passed by hand.
        let file = OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_APPEND).open(path)?;
        Ok(JsonLog { file })
    }

    /// Writes one line with one `write(2)` (a regular file takes a short
    /// write whole; `write_all` only loops on a signal or a full disk).
    pub fn write(&self, line: Line) -> io::Result<()> {
        let text = line.finish();
        (&self.file).write_all(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_ev_and_t_first() {
        let text =
            Line::new("deliver").str("id", "a\"b\n").u64("len", 7).f64("rate", None).strs("members", ["x", "y"]).raw("o", "{}").bool("p", false).finish();
        assert!(text.starts_with("{\"ev\":\"deliver\",\"t\":"), "{text}");
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "a\"b\n");
        assert_eq!(v["len"], 7);
        assert!(v["rate"].is_null());
        assert_eq!(v["members"][1], "y");
        assert_eq!(v["p"], false);
        assert!(v["t"].as_u64().unwrap() > 0);
    }
}
