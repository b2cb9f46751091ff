//! Prometheus text exposition format, version 0.0.4: what `GET /metrics` answers.
//!
//! A metric family is a `# HELP` and a `# TYPE` line followed by its samples, one a line:
//! `name value`, or `name{label="value",...} value`. Label values escape backslash, double
//! quote and newline; HELP text escapes backslash and newline. Names (of metrics and labels)
//! are the caller's constants and are written as given.
//!
//! Everything is written straight into one `String`: a sample costs no allocation beyond
//! the growth of that string.

use std::fmt::Write as _;

/// The `Content-Type` of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts from zero when the process does). Name it `..._total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition { out: String::new() }
    }

    /// Starts a metric family: writes `# HELP name help` and `# TYPE name counter|gauge`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_metric_name(name), "metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    /// One sample of the family last started: `name{l1="v1",l2="v2"} value`. No labels:
    /// `name value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.sample_head(name, labels);
        // Writing into a String cannot fail.
        let _ = write!(self.out, "{value}");
        self.out.push('\n');
    }

    /// A sample with a floating-point value. NaN and the infinities are written `NaN`,
    /// `+Inf` and `-Inf`; other values in the shortest form that reads back the same
    /// (`1.5`, `0.0`, `1e-7`).
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.sample_head(name, labels);
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value == f64::INFINITY {
            self.out.push_str("+Inf");
        } else if value == f64::NEG_INFINITY {
            self.out.push_str("-Inf");
        } else {
            // Debug is the shortest round-trip form, switching to an exponent for very large
            // and very small magnitudes (Display would write 1e300 as 301 digits).
            let _ = write!(self.out, "{value:?}");
        }
        self.out.push('\n');
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn sample_head(&mut self, name: &str, labels: &[(&str, &str)]) {
        debug_assert!(valid_metric_name(name), "metric name {name:?}");
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(label), "label name {label:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_into(&mut self.out, value, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
    }
}

/// Append `s` with backslash and newline escaped, and double quote too for a label value.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    let mut rest = s;
    while let Some(i) = rest.find(|c| c == '\\' || c == '\n' || (quote && c == '"')) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            _ => "\\\"",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Test support: run `promtool check metrics` on `text`. `None` when promtool is not on PATH;
/// otherwise whether it passed, with its output.
#[cfg(test)]
pub(crate) fn promtool_check(text: &str) -> Option<(bool, String)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("promtool not run ({e}): skipping its check");
            return None;
        }
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for promtool");
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), said))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_f64(v: f64) -> String {
        let mut e = Exposition::new();
        e.sample_f64("x", &[], v);
        e.finish()
    }

    #[test]
    fn family_header_and_plain_sample() {
        let mut e = Exposition::new();
        e.family("tcp_forward_streams", Kind::Gauge, "Open streams.");
        e.sample("tcp_forward_streams", &[], 3);
        assert_eq!(
            e.finish(),
            "# HELP tcp_forward_streams Open streams.\n\
             # TYPE tcp_forward_streams gauge\n\
             tcp_forward_streams 3\n"
        );
    }

    #[test]
    fn counter_keeps_the_name_given() {
        let mut e = Exposition::new();
        e.family("tcp_forward_bytes_total", Kind::Counter, "Bytes.");
        e.sample("tcp_forward_bytes_total", &[], u64::MAX);
        assert_eq!(
            e.finish(),
            "# HELP tcp_forward_bytes_total Bytes.\n\
             # TYPE tcp_forward_bytes_total counter\n\
             tcp_forward_bytes_total 18446744073709551615\n"
        );
    }

    #[test]
    fn labels_in_order_with_values_escaped() {
        let mut e = Exposition::new();
        e.sample(
            "m",
            &[("port", "1234"), ("tag", "a\\b\"c\nd"), ("empty", "")],
            7,
        );
        assert_eq!(
            e.finish(),
            "m{port=\"1234\",tag=\"a\\\\b\\\"c\\nd\",empty=\"\"} 7\n"
        );
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quote() {
        let mut e = Exposition::new();
        e.family("m", Kind::Gauge, "a \"q\" \\ b\nc");
        assert_eq!(e.finish(), "# HELP m a \"q\" \\\\ b\\nc\n# TYPE m gauge\n");
    }

    #[test]
    fn escaping_keeps_multibyte_text() {
        let mut e = Exposition::new();
        e.sample("m", &[("tag", "überall\n\"ü\"")], 1);
        assert_eq!(e.finish(), "m{tag=\"überall\\n\\\"ü\\\"\"} 1\n");
    }

    #[test]
    fn floats() {
        assert_eq!(one_f64(1.5), "x 1.5\n");
        assert_eq!(one_f64(0.0), "x 0.0\n");
        assert_eq!(one_f64(1e-3), "x 0.001\n");
        assert_eq!(one_f64(1e-7), "x 1e-7\n");
        assert_eq!(one_f64(1e300), "x 1e300\n");
        assert_eq!(one_f64(-2.25), "x -2.25\n");
        assert_eq!(one_f64(1_796_155_200.0), "x 1796155200.0\n");
        assert_eq!(one_f64(f64::NAN), "x NaN\n");
        assert_eq!(one_f64(f64::INFINITY), "x +Inf\n");
        assert_eq!(one_f64(f64::NEG_INFINITY), "x -Inf\n");
    }

    #[test]
    fn floats_read_back_the_same() {
        for v in [0.1, 1.0 / 3.0, 123_456.789, 5e-324, f64::MAX, 12.3e12] {
            let text = one_f64(v);
            let back: f64 = text["x ".len()..text.len() - 1].parse().unwrap();
            assert_eq!(back, v, "{text}");
        }
    }

    #[test]
    fn name_checks() {
        assert!(valid_metric_name("process_cpu_seconds_total"));
        assert!(valid_metric_name("a:b_c9"));
        assert!(!valid_metric_name("9a"));
        assert!(!valid_metric_name("a-b"));
        assert!(!valid_metric_name(""));
        assert!(valid_label_name("_tag1"));
        assert!(!valid_label_name("a:b"));
    }

    #[test]
    fn promtool_accepts_a_few_families() {
        let mut e = Exposition::new();
        e.family(
            "tcp_forward_clients",
            Kind::Gauge,
            "Clients attached, by \\ tag.\nSecond line.",
        );
        e.sample("tcp_forward_clients", &[("tag", "default")], 2);
        e.sample("tcp_forward_clients", &[("tag", "we\"ird\\\nname")], 0);
        e.family(
            "tcp_forward_bytes_total",
            Kind::Counter,
            "Bytes carried, by port and direction.",
        );
        e.sample(
            "tcp_forward_bytes_total",
            &[("port", "1234"), ("direction", "in")],
            1 << 40,
        );
        e.sample(
            "tcp_forward_bytes_total",
            &[("port", "1234"), ("direction", "out")],
            0,
        );
        e.family(
            "tcp_forward_rate_bytes_per_second",
            Kind::Gauge,
            "Recent rate.",
        );
        for (i, v) in [1.5, 0.0, 1e-3, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
            .into_iter()
            .enumerate()
        {
            let i = i.to_string();
            e.sample_f64("tcp_forward_rate_bytes_per_second", &[("n", &i)], v);
        }
        e.family("tcp_forward_up", Kind::Gauge, "1 when up.");
        e.sample("tcp_forward_up", &[], 1);
        let text = e.finish();
        let Some((ok, said)) = promtool_check(&text) else {
            return;
        };
        assert!(ok, "promtool check metrics failed:\n{said}\non:\n{text}");
    }
}
