//! A report as text: the progress lines on stderr, the table on stdout, or one JSON object
//! (`--json`, written by serde_json with its keys in the order below).

use std::fmt::Write as _;
use std::thread;

use serde_json::{Map, Number, Value, json};

use super::report::{Kind, MemPair, Report, Row, STALLED_TARGET_RATIO};

/// A figure with about three significant digits, thousands grouped for large ones.
pub(super) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_string();
    }
    let a = v.abs();
    if a >= 1000.0 {
        group_thousands(v.round() as i64)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn group_thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// A difference, always with its sign.
fn fmt_signed(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", fmt_num(-v))
    } else {
        format!("+{}", fmt_num(v))
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), fmt_num)
}

fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}")
}

pub(super) fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

pub(super) fn mem_text(m: Option<MemPair>) -> String {
    match m {
        Some(m) => format!(
            "server {} MiB + client {} MiB = {} MiB",
            fmt_mib(m.server_kib),
            fmt_mib(m.client_kib),
            fmt_mib(m.total_kib())
        ),
        None => "-".to_string(),
    }
}

/// The progress text of the last workload: its rate row and, after a request/response
/// workload, its latency rows.
pub(super) fn last_rows_text(r: &Report) -> String {
    let n = match r.rows.last() {
        Some(last) if last.kind == Kind::Latency => 3.min(r.rows.len()),
        Some(_) => 1,
        None => 0,
    };
    rows_text(&r.rows[r.rows.len() - n..], ["direct", "tunnel"])
}

/// The progress text of rows: a rate row as both figures and their ratio, a latency row as
/// both figures; `sides` names the figures of a rate row.
pub(super) fn rows_text(rows: &[Row], sides: [&str; 2]) -> String {
    let mut out = String::new();
    for row in rows {
        if !out.is_empty() {
            out.push_str("; ");
        }
        match row.kind {
            Kind::Rate => {
                let _ = write!(
                    out,
                    "{} {}, {} {}",
                    sides[0],
                    opt_num(row.direct),
                    sides[1],
                    opt_num(row.tunnel)
                );
                if let Some(r) = row.ratio() {
                    let _ = write!(out, " (ratio {})", fmt_ratio(r));
                }
            }
            Kind::Latency => {
                let name = row.key.rsplit('_').nth(1).unwrap_or("");
                let _ = write!(
                    out,
                    "{name} {} -> {} µs",
                    opt_num(row.direct),
                    opt_num(row.tunnel)
                );
            }
        }
    }
    out
}

/// The table printed on stdout.
pub(super) fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tcp-forward bench: 127.0.0.1, {} s per workload and path, {} cores; server (pid {}) and client (pid {}) as separate processes",
        fmt_num(r.seconds),
        cores(),
        r.server_pid,
        r.client_pid
    );
    push_table(
        &mut out,
        ["workload", "direct", "tunnel", "tunnel/direct"],
        &r.rows,
    );
    if !r.stalled_rows.is_empty() {
        push_table(
            &mut out,
            [
                "tunnel, another stream stalled",
                "unstalled",
                "stalled",
                "stalled/unstalled",
            ],
            &r.stalled_rows,
        );
        let _ = match r.stall {
            Some(st) => writeln!(
                out,
                "(the stalled stream stopped {:.2} s after it opened, holding {} MiB; target: round trips/s stalled/unstalled >= {})",
                st.after_s,
                fmt_mib(Some(st.held_bytes / 1024)),
                fmt_ratio(STALLED_TARGET_RATIO)
            ),
            None => writeln!(out, "(the other stream did not stall)"),
        };
    }
    let mems = r.memory();
    if mems.iter().any(|(_, _, m)| m.is_some()) {
        let _ = writeln!(
            out,
            "\nresident memory, VmRSS (MiB)      server   client    total"
        );
        for (label, _, m) in mems {
            if let Some(m) = m {
                let _ = writeln!(
                    out,
                    "{label:<32} {:>7}  {:>7}  {:>7}",
                    fmt_mib(m.server_kib),
                    fmt_mib(m.client_kib),
                    fmt_mib(m.total_kib())
                );
            }
        }
    }
    let cpu = r.cpu();
    if cpu.iter().any(|(_, _, v)| v.is_some()) {
        let _ = writeln!(
            out,
            "\nCPU seconds per GB moved, server + client (utime + stime)"
        );
        for (label, _, v) in cpu {
            if let Some(v) = v {
                let _ = writeln!(out, "{label:<32} {v:>7.3}");
            }
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// A blank line, then a table of rows: a header, a rule, and each row's label, both figures
/// and their ratio (with the added time for a latency). Nothing when there are no rows.
fn push_table(out: &mut String, header: [&str; 4], rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            let ratio = match (row.ratio(), row.kind, row.direct, row.tunnel) {
                (Some(q), Kind::Latency, Some(d), Some(t)) => {
                    format!("{} ({} µs)", fmt_ratio(q), fmt_signed(t - d))
                }
                (Some(q), _, _, _) => fmt_ratio(q),
                _ => "-".to_string(),
            };
            [
                row.label.clone(),
                opt_num(row.direct),
                opt_num(row.tunnel),
                ratio,
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let _ = writeln!(out);
    push_cells(out, &header.map(str::to_string), &width);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", rule.join("  "));
    for c in &cells {
        push_cells(out, c, &width);
    }
}

fn push_cells(out: &mut String, cells: &[String; 4], width: &[usize; 4]) {
    let pad = |s: &str, w: usize| " ".repeat(w.saturating_sub(s.chars().count()));
    let line = format!(
        "{}{}  {}{}  {}{}  {}",
        cells[0],
        pad(&cells[0], width[0]),
        pad(&cells[1], width[1]),
        cells[1],
        pad(&cells[2], width[2]),
        cells[2],
        cells[3]
    );
    let _ = writeln!(out, "{}", line.trim_end());
}

/// A JSON number rounded to 4 decimals, an integer when it has none left (`2`, not `2.0`);
/// `null` when missing or not finite.
fn json_num(v: Option<f64>) -> Value {
    let Some(v) = v.filter(|v| v.is_finite()) else {
        return Value::Null;
    };
    let text = format!("{v:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if let Ok(i) = text.parse::<i64>() {
        // "-0" parses as 0.
        return Value::Number(i.into());
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Rows as an object keyed by each row's key: both figures named by `sides`, their ratio,
/// and for a latency the time added.
fn rows_json(rows: &[Row], sides: [&str; 2]) -> Map<String, Value> {
    rows.iter()
        .map(|row| {
            let mut o = Map::new();
            o.insert(sides[0].to_string(), json_num(row.direct));
            o.insert(sides[1].to_string(), json_num(row.tunnel));
            o.insert("ratio".to_string(), json_num(row.ratio()));
            if row.kind == Kind::Latency {
                let added = row.direct.zip(row.tunnel).map(|(d, t)| t - d);
                o.insert("added_us".to_string(), json_num(added));
            }
            (row.key.clone(), Value::Object(o))
        })
        .collect()
}

/// The one JSON object printed with `--json`.
pub(super) fn render_json(r: &Report) -> String {
    let mut stalled = rows_json(&r.stalled_rows, ["unstalled", "stalled"]);
    if let Some(st) = r.stall {
        stalled.insert("stalled_after_s".to_string(), json_num(Some(st.after_s)));
        let held_mib = st.held_bytes as f64 / (1024.0 * 1024.0);
        stalled.insert("held_mib".to_string(), json_num(Some(held_mib)));
    }
    let mib = |k: Option<u64>| json_num(k.map(|k| k as f64 / 1024.0));
    let memory: Map<String, Value> = r
        .memory()
        .into_iter()
        .filter_map(|(_, name, m)| {
            let m = m?;
            let figures = json!({
                "server": mib(m.server_kib),
                "client": mib(m.client_kib),
                "total": mib(m.total_kib()),
            });
            Some((name.to_string(), figures))
        })
        .collect();
    let cpu: Map<String, Value> = r
        .cpu()
        .into_iter()
        .map(|(_, name, v)| (name.to_string(), json_num(v)))
        .collect();
    json!({
        "seconds": json_num(Some(r.seconds)),
        "address": "127.0.0.1",
        "roles": "separate processes",
        "server_pid": r.server_pid,
        "client_pid": r.client_pid,
        "cores": cores(),
        "nofile_limit": r.nofile,
        "workloads": rows_json(&r.rows, ["direct", "tunnel"]),
        "stalled_stream": stalled,
        "memory_mib": memory,
        "cpu_s_per_gb": cpu,
        "notes": r.notes,
        "ok": !r.failed,
    })
    .to_string()
}

/// Cores available to this process (0 when unknown).
fn cores() -> usize {
    thread::available_parallelism().map_or(0, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample_report;

    #[test]
    fn numbers_are_formatted_to_about_three_digits() {
        assert_eq!(fmt_num(0.0), "0.00");
        assert_eq!(fmt_num(0.456), "0.46");
        assert_eq!(fmt_num(9.999), "10.00");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(999.4), "999");
        assert_eq!(fmt_num(12_345.6), "12,346");
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(f64::NAN), "-");
        assert_eq!(fmt_num(f64::INFINITY), "-");
        assert_eq!(opt_num(None), "-");
        assert_eq!(fmt_signed(12.34), "+12.3");
        assert_eq!(fmt_signed(-2706.5), "-2,707");
        assert_eq!(fmt_ratio(0.456), "0.46");
        assert_eq!(fmt_mib(Some(2048)), "2.0");
        assert_eq!(fmt_mib(None), "-");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(123_456), "123,456");
        assert_eq!(group_thousands(-1_234_567), "-1,234,567");
    }

    #[test]
    fn json_numbers_and_strings() {
        let num = |v| json_num(v).to_string();
        assert_eq!(num(Some(1.5)), "1.5");
        assert_eq!(num(Some(2.0)), "2");
        assert_eq!(num(Some(0.123_456)), "0.1235");
        assert_eq!(num(Some(-0.000_01)), "0");
        assert_eq!(num(Some(-3.25)), "-3.25");
        assert_eq!(num(Some(120.0)), "120");
        assert_eq!(num(Some(1_234.567_89)), "1234.5679");
        // The text is that of the figure rounded to 4 decimals, zeros trimmed, for every
        // magnitude a bench figure takes.
        for i in -300..300 {
            for scale in [1e-3, 0.1, 1.0, 7.0, 1e3, 1e6, 1e9] {
                let v = f64::from(i) / 7.0 * scale;
                let text = format!("{v:.4}");
                let text = text.trim_end_matches('0').trim_end_matches('.');
                let text = if text == "-0" { "0" } else { text };
                assert_eq!(num(Some(v)), text, "{v}");
            }
        }
        assert_eq!(num(Some(f64::NAN)), "null");
        assert_eq!(num(None), "null");
        let s = Value::from("a\"b\\c\nd\u{1}é").to_string();
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn progress_text_of_rows() {
        let r = sample_report();
        let text = last_rows_text(&r);
        assert_eq!(
            text,
            "direct 100, tunnel 50.0 (ratio 0.50); p50 10.0 -> 20.0 µs; p99 10.0 -> 20.0 µs"
        );
        assert_eq!(
            rows_text(&r.stalled_rows, ["unstalled", "stalled"]),
            "unstalled 100, stalled 90.0 (ratio 0.90); p50 30.0 -> 40.0 µs; p99 30.0 -> 40.0 µs"
        );
    }

    #[test]
    fn without_the_stalled_workload_its_section_is_empty() {
        // Without the workload, neither the section nor its figures appear.
        assert!(!render_table(&Report::default()).contains("stalled"));
        assert!(render_json(&Report::default()).contains("\"stalled_stream\":{},"));
    }

    #[test]
    fn table_shows_figures_ratios_and_memory() {
        let table = render_table(&sample_report());
        assert!(table.contains("separate processes"), "{table}");
        let upload = table
            .lines()
            .find(|l| l.starts_with("upload, 1 stream"))
            .unwrap_or("");
        assert!(
            upload.contains("40.0") && upload.contains("20.0") && upload.ends_with("0.50"),
            "{upload}"
        );
        let p50 = table.lines().find(|l| l.contains("p50")).unwrap_or("");
        assert!(p50.ends_with("2.00 (+10.0 µs)"), "{p50}");
        let download = table
            .lines()
            .find(|l| l.starts_with("download"))
            .unwrap_or("");
        assert!(download.ends_with(" -"), "{download}");
        assert!(table.contains("idle, tunnel attached"));
        assert!(table.contains("    2.0      1.0      3.0"), "{table}");
        assert!(table.contains("0.400"));
        assert!(!table.contains("1,000 idle streams open"));
        assert!(table.contains("- download, 1 stream (Gbit/s), tunnel: boom"));
        let stalled: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("tunnel, another stream stalled"))
            .collect();
        assert!(
            stalled[0].ends_with("unstalled  stalled  stalled/unstalled"),
            "{table}"
        );
        assert!(
            stalled[2].starts_with("64 B round trips, 1 conn (/s)"),
            "{table}"
        );
        assert!(stalled[2].ends_with("100     90.0  0.90"), "{table}");
        assert!(
            stalled[3].ends_with("30.0     40.0  1.33 (+10.0 µs)"),
            "{table}"
        );
        assert!(stalled[5].contains("stopped 0.25 s after it opened, holding 3.0 MiB"));
        assert!(table.contains("while one stream is stalled"));
        assert!(table.contains("    4.0      3.0      7.0"), "{table}");
    }

    #[test]
    fn json_is_one_object_with_keys_in_order() {
        let json = render_json(&sample_report());
        assert!(json.starts_with('{') && json.ends_with('}'));
        assert!(!json.contains('\n'));
        let parsed: Value = serde_json::from_str(&json).expect("valid JSON");
        let keys: Vec<&str> = parsed
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "seconds",
                "address",
                "roles",
                "server_pid",
                "client_pid",
                "cores",
                "nofile_limit",
                "workloads",
                "stalled_stream",
                "memory_mib",
                "cpu_s_per_gb",
                "notes",
                "ok"
            ]
        );
        assert!(json.starts_with("{\"seconds\":2,\"address\":\"127.0.0.1\","));
        assert!(
            json.contains("\"upload_gbps\":{\"direct\":40,\"tunnel\":20,\"ratio\":0.5}"),
            "{json}"
        );
        assert!(json.contains("\"download_gbps\":{\"direct\":40,\"tunnel\":null,\"ratio\":null}"));
        assert!(
            json.contains(
                "\"rr1_p50_us\":{\"direct\":10,\"tunnel\":20,\"ratio\":2,\"added_us\":10}"
            )
        );
        assert!(json.contains(
            "\"memory_mib\":{\"idle\":{\"server\":2,\"client\":1,\"total\":3},\"stalled_stream\":{\"server\":4,\"client\":3,\"total\":7}}"
        ));
        assert!(
            json.contains(
                "\"stalled_stream\":{\"rr1_per_s\":{\"unstalled\":100,\"stalled\":90,\"ratio\":0.9},\"rr1_p50_us\":{\"unstalled\":30,\"stalled\":40,\"ratio\":1.3333,\"added_us\":10},"
            ),
            "{json}"
        );
        assert!(json.contains(",\"stalled_after_s\":0.25,\"held_mib\":3},"));
        assert!(json.contains("\"cpu_s_per_gb\":{\"upload\":0.4,\"download\":null}"));
        assert!(json.contains("\"roles\":\"separate processes\""));
        assert!(json.contains("\"notes\":[\"download, 1 stream (Gbit/s), tunnel: boom\","));
        assert!(json.ends_with("\"ok\":false}"));
    }
}
