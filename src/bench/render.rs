//! A report as text: the progress lines on stderr, the table on stdout, or one JSON object
//! (`--json`, written by serde_json with its keys in the order below).

use std::fmt::Write as _;
use std::thread;

use serde_json::{Map, Number, Value, json};

use super::report::{
    FLOOD_TARGET_RATIO, Kind, LimitFigures, MemPair, Report, Row, STALLED_TARGET_RATIO, Setup,
    Tunnel, TunnelFigures, UDP_RATE_TARGET_MBIT, UDP_RR_TARGET_RATIO, median, ratio_of,
};
use super::udp::{FIXED_MBIT, FLOOD_MBIT, LOSS_LIMIT, Step};

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

pub(super) fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), fmt_num)
}

/// A figure of a row: a whole count as an integer, anything else as [`fmt_num`] has it.
fn figure_text(kind: Kind, v: Option<f64>) -> String {
    match v {
        Some(v) if kind == Kind::Count && v.fract() == 0.0 && v.abs() < 1e15 => {
            group_thousands(v as i64)
        }
        v => opt_num(v),
    }
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

/// The progress text of the rows from `from` on (those of the last workload), each with the
/// figure of every tunnel measured: a rate with its ratios, a latency as direct -> tunnels,
/// a count as it is.
pub(super) fn rows_since_text(r: &Report, from: usize) -> String {
    let mut out = String::new();
    for row in r.rows.get(from..).unwrap_or_default() {
        if !out.is_empty() {
            out.push_str("; ");
        }
        match row.kind {
            Kind::Rate => {
                let _ = write!(out, "direct {}", opt_num(row.direct));
                for &t in &r.tunnels {
                    let v = row.through(t);
                    let _ = write!(out, ", {} {}", t.name(), opt_num(v));
                    let mut why = Vec::new();
                    if let Some(q) = ratio_of(v, row.direct) {
                        why.push(format!("ratio {}", fmt_ratio(q)));
                    }
                    if t == Tunnel::Tls
                        && r.tunnels.contains(&Tunnel::Plain)
                        && let Some(q) = ratio_of(row.tls, row.tunnel)
                    {
                        why.push(format!("{} of plain", fmt_ratio(q)));
                    }
                    if !why.is_empty() {
                        let _ = write!(out, " ({})", why.join(", "));
                    }
                }
            }
            Kind::Latency | Kind::Count => {
                let (name, unit) = match row.kind {
                    Kind::Latency => (latency_name(row), " µs"),
                    _ => (row.label.rsplit(", ").next().unwrap_or(""), ""),
                };
                let figure = |v| figure_text(row.kind, v);
                let _ = write!(out, "{name} {} ->", figure(row.direct));
                let figures: Vec<String> = r
                    .tunnels
                    .iter()
                    .map(|&t| format!(" {} {}", t.name(), figure(row.through(t))))
                    .collect();
                let _ = write!(out, "{}{unit}", figures.join(","));
            }
        }
    }
    out
}

/// The steps of a UDP rate search: the rate each sent (Mbit/s) and "ok" or what it lost.
pub(super) fn steps_text(steps: &[Step]) -> String {
    let parts: Vec<String> = steps
        .iter()
        .map(|s| {
            let loss = s.loss();
            let verdict = if loss < LOSS_LIMIT {
                "ok".to_string()
            } else {
                format!("lost {:.1} %", loss * 100.0)
            };
            format!("{} {verdict}", fmt_num(s.sent.mbit()))
        })
        .collect();
    parts.join(", ")
}

/// A UDP flood's figures: what it sent against what was asked, and what it lost.
pub(super) fn flood_text(s: &Step) -> String {
    format!(
        "{} Mbit/s sent ({} asked), {:.2} % lost",
        fmt_num(s.sent.mbit()),
        fmt_num(s.asked_mbit),
        s.loss() * 100.0
    )
}

/// "p50" of a latency row's key.
fn latency_name(row: &Row) -> &str {
    row.key.rsplit('_').nth(1).unwrap_or("")
}

/// The progress text of a stalled table's rows: a rate row as both figures and their ratio,
/// a latency row as both figures; `sides` names the figures of a rate row.
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
            Kind::Latency | Kind::Count => {
                let _ = write!(
                    out,
                    "{} {} -> {} µs",
                    latency_name(row),
                    opt_num(row.direct),
                    opt_num(row.tunnel)
                );
            }
        }
    }
    out
}

/// A ratio cell: the ratio, and for a latency the time added.
fn ratio_cell(kind: Kind, num: Option<f64>, den: Option<f64>) -> String {
    match (ratio_of(num, den), kind, num, den) {
        (_, Kind::Count, _, _) => "-".to_string(),
        (Some(q), Kind::Latency, Some(n), Some(d)) => {
            format!("{} ({} µs)", fmt_ratio(q), fmt_signed(n - d))
        }
        (Some(q), _, _, _) => fmt_ratio(q),
        _ => "-".to_string(),
    }
}

/// The processes of each tunnel measured.
fn pids_text(r: &Report) -> String {
    let parts: Vec<String> = r
        .tunnels
        .iter()
        .map(|&t| {
            let f = r.figures(t);
            format!(
                "{}: server pid {}, client pid {}",
                t.name(),
                f.server_pid,
                f.client_pid
            )
        })
        .collect();
    parts.join("; ")
}

/// The table printed on stdout.
pub(super) fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tcp-forward bench: 127.0.0.1, {} s per workload and path, {} cores; roles as separate processes ({})",
        fmt_num(r.seconds),
        cores(),
        pids_text(r)
    );
    push_main_table(&mut out, r);
    for &t in &r.tunnels {
        let f = r.figures(t);
        let title = format!("{} tunnel, another stream stalled", t.name());
        if push_pair_table(&mut out, &title, ["unstalled", "stalled"], &f.stalled_rows) {
            let _ = match f.stall {
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
    }
    for &t in &r.tunnels {
        let f = r.figures(t);
        let title = format!(
            "{} tunnel, beside a {} Mbit/s UDP flood",
            t.name(),
            fmt_num(FLOOD_MBIT)
        );
        if push_pair_table(&mut out, &title, ["alone", "beside"], &f.flood_rows) {
            let flood = f
                .flood
                .as_ref()
                .map_or_else(|| "failed".to_string(), flood_text);
            let _ = writeln!(
                out,
                "(the flood of 1,200 B datagrams: {flood}; target: round trips/s beside/alone >= {})",
                fmt_ratio(FLOOD_TARGET_RATIO)
            );
        }
    }
    push_udp_targets(&mut out, r);
    push_memory_table(&mut out, r);
    push_cpu_table(&mut out, r);
    push_limit_table(&mut out, r);
    push_setup_table(&mut out, r);
    if !r.notes.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// A table of one tunnel's workload measured twice, the first figure in each row's `direct`
/// and the second in its `tunnel`, with their ratio; false (nothing written) without rows.
fn push_pair_table(out: &mut String, title: &str, sides: [&str; 2], rows: &[Row]) -> bool {
    if rows.is_empty() {
        return false;
    }
    let ratio = format!("{}/{}", sides[1], sides[0]);
    let header = [title, sides[0], sides[1], ratio.as_str()].map(str::to_string);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.label.clone(),
                opt_num(row.direct),
                opt_num(row.tunnel),
                ratio_cell(row.kind, row.tunnel, row.direct),
            ]
        })
        .collect();
    push_table(out, &header, 3, &cells);
    true
}

/// The UDP targets against what each tunnel measured, for the workloads that ran.
fn push_udp_targets(out: &mut String, r: &Report) {
    let row = |key: &str| r.rows.iter().find(|row| row.key == key);
    let mut cells = Vec::new();
    let mut target = |what: String, goal: String, min: f64, got: &dyn Fn(Tunnel) -> Option<f64>| {
        let figures: Vec<Option<f64>> = r.tunnels.iter().map(|&t| got(t)).collect();
        if figures.iter().all(Option::is_none) {
            return;
        }
        let mut c = vec![what, goal];
        c.extend(figures.into_iter().map(|v| match v {
            Some(v) if v >= min => format!("{} met", fmt_num(v)),
            Some(v) => format!("{} missed", fmt_num(v)),
            None => "-".to_string(),
        }));
        cells.push(c);
    };
    if let Some(rr) = row("udp_rr1_per_s") {
        target(
            "UDP round trips, 1 flow, tunnel/direct".to_string(),
            format!(">= {}", fmt_ratio(UDP_RR_TARGET_RATIO)),
            UDP_RR_TARGET_RATIO,
            &|t| ratio_of(rr.through(t), rr.direct),
        );
    }
    if let Some(max) = row("udp_max_mbit") {
        target(
            "UDP 1,200 B under 1 % loss (Mbit/s)".to_string(),
            format!(">= {}", fmt_num(UDP_RATE_TARGET_MBIT)),
            UDP_RATE_TARGET_MBIT,
            &|t| max.through(t),
        );
    }
    target(
        format!(
            "TCP round trips beside a {} Mbit/s UDP flood / alone",
            fmt_num(FLOOD_MBIT)
        ),
        format!(">= {}", fmt_ratio(FLOOD_TARGET_RATIO)),
        FLOOD_TARGET_RATIO,
        &|t| r.figures(t).flood_rows.first().and_then(Row::ratio),
    );
    let mut header = vec!["UDP targets".to_string(), "target".to_string()];
    header.extend(r.tunnels.iter().map(|t| t.name().to_string()));
    push_table(out, &header, 1, &cells);
}

/// The workloads: direct, each tunnel, each tunnel against direct, and TLS against plain
/// when both were measured.
fn push_main_table(out: &mut String, r: &Report) {
    let both = r.tunnels.len() == 2;
    let mut header = vec!["workload".to_string(), "direct".to_string()];
    header.extend(r.tunnels.iter().map(|t| t.name().to_string()));
    header.extend(r.tunnels.iter().map(|t| format!("{}/direct", t.name())));
    if both {
        header.push("TLS/plain".to_string());
    }
    let cells: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            let mut c = vec![row.label.clone(), figure_text(row.kind, row.direct)];
            c.extend(
                r.tunnels
                    .iter()
                    .map(|&t| figure_text(row.kind, row.through(t))),
            );
            c.extend(
                r.tunnels
                    .iter()
                    .map(|&t| ratio_cell(row.kind, row.through(t), row.direct)),
            );
            if both {
                c.push(ratio_cell(row.kind, row.tls, row.tunnel));
            }
            c
        })
        .collect();
    push_table(out, &header, 2 + r.tunnels.len(), &cells);
}

/// Resident memory, server, client and total, of each tunnel side by side.
fn push_memory_table(out: &mut String, r: &Report) {
    let figures: Vec<_> = r.tunnels.iter().map(|&t| r.figures(t).memory()).collect();
    let Some(first) = figures.first() else {
        return;
    };
    let shown: Vec<usize> = (0..first.len())
        .filter(|&i| figures.iter().any(|f| f[i].2.is_some()))
        .collect();
    if shown.is_empty() {
        return;
    }
    let mut header = vec!["resident memory, VmRSS (MiB)".to_string()];
    for t in &r.tunnels {
        for part in ["server", "client", "total"] {
            header.push(format!("{} {part}", t.name()));
        }
    }
    let cells: Vec<Vec<String>> = shown
        .iter()
        .map(|&i| {
            let mut c = vec![first[i].0.to_string()];
            for f in &figures {
                let m = f[i].2;
                c.push(fmt_mib(m.and_then(|m| m.server_kib)));
                c.push(fmt_mib(m.and_then(|m| m.client_kib)));
                c.push(fmt_mib(m.and_then(|m| m.total_kib())));
            }
            c
        })
        .collect();
    push_table(out, &header, header.len(), &cells);
}

/// CPU seconds per GB of each tunnel side by side.
fn push_cpu_table(out: &mut String, r: &Report) {
    let figures: Vec<_> = r.tunnels.iter().map(|&t| r.figures(t).cpu()).collect();
    let Some(first) = figures.first() else {
        return;
    };
    let shown: Vec<usize> = (0..first.len())
        .filter(|&i| figures.iter().any(|f| f[i].2.is_some()))
        .collect();
    if shown.is_empty() {
        return;
    }
    let mut header = vec!["CPU s per GB, server + client (utime + stime)".to_string()];
    header.extend(r.tunnels.iter().map(|t| t.name().to_string()));
    let cells: Vec<Vec<String>> = shown
        .iter()
        .map(|&i| {
            let mut c = vec![first[i].0.to_string()];
            c.extend(figures.iter().map(|f| {
                f[i].2
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
            }));
            c
        })
        .collect();
    push_table(out, &header, header.len(), &cells);
}

/// The bandwidth-limit workload: each way, the limited port's rate against its limit and
/// what the unlimited port moved meanwhile.
fn push_limit_table(out: &mut String, r: &Report) {
    let Some(l) = &r.limit else {
        return;
    };
    let header = [
        format!(
            "[LIMIT] {} mbit, {} tunnel, {} s each way",
            fmt_num(l.limit_mbit),
            l.tunnel.name(),
            fmt_num(l.seconds)
        ),
        "limited (Mbit/s)".to_string(),
        "limited/limit".to_string(),
        "unlimited port meanwhile (Gbit/s)".to_string(),
        "meanwhile/alone".to_string(),
    ];
    // The same tunnel's single-stream figure, when that workload ran.
    let alone = |key: &str| {
        r.rows
            .iter()
            .find(|row| row.key == key)
            .and_then(|row| row.through(l.tunnel))
    };
    let row = |what: &str, side: Option<(f64, f64)>, key: &str| {
        vec![
            what.to_string(),
            opt_num(side.map(|s| s.0)),
            side.map_or_else(|| "-".to_string(), |s| format!("{:.3}", s.0 / l.limit_mbit)),
            opt_num(side.map(|s| s.1)),
            ratio_of(side.map(|s| s.1), alone(key)).map_or_else(|| "-".to_string(), fmt_ratio),
        ]
    };
    let cells = [
        row("upload", l.up, "upload_gbps"),
        row("download", l.down, "download_gbps"),
    ];
    push_table(out, &header, header.len(), &cells);
}

/// The progress text of the bandwidth-limit workload.
pub(super) fn limit_text(l: &LimitFigures) -> String {
    let side = |what: &str, s: Option<(f64, f64)>| match s {
        Some((mbit, gbit)) => format!(
            "{what} {} Mbit/s ({:.3} of the limit; unlimited port meanwhile {} Gbit/s)",
            fmt_num(mbit),
            mbit / l.limit_mbit,
            fmt_num(gbit)
        ),
        None => format!("{what} failed"),
    };
    format!(
        "{} tunnel, {} s each way: {}; {}",
        l.tunnel.name(),
        fmt_num(l.seconds),
        side("upload", l.up),
        side("download", l.down)
    )
}

/// The bandwidth-limit workload as JSON: `{}` when it did not run.
fn limit_json(r: &Report) -> Value {
    let Some(l) = &r.limit else {
        return json!({});
    };
    let side = |s: Option<(f64, f64)>| match s {
        Some((mbit, gbit)) => json!({
            "mbit": json_num(Some(mbit)),
            "ratio": json_num(Some(mbit / l.limit_mbit)),
            "unlimited_gbit": json_num(Some(gbit)),
        }),
        None => Value::Null,
    };
    json!({
        "tunnel": match l.tunnel {
            Tunnel::Plain => "plain",
            Tunnel::Tls => "tls",
        },
        "limit_mbit": json_num(Some(l.limit_mbit)),
        "seconds": json_num(Some(l.seconds)),
        "upload": side(l.up),
        "download": side(l.down),
    })
}

/// The tunnel's set-up time of each tunnel side by side: medians, and the spread.
fn push_setup_table(out: &mut String, r: &Report) {
    let setups: Vec<_> = r
        .tunnels
        .iter()
        .map(|&t| r.figures(t).setup.as_ref())
        .collect();
    let Some(n) = setups.iter().flatten().map(|s| s.spawn_ms.len()).max() else {
        return;
    };
    let mut header = vec![format!("tunnel set-up (ms, median of {n} client starts)")];
    header.extend(r.tunnels.iter().map(|t| t.name().to_string()));
    let median_cell = |list: Option<&Vec<f64>>| match list {
        Some(l) if !l.is_empty() => format!(
            "{} [{}-{}]",
            opt_num(median(l)),
            fmt_num(l[0]),
            fmt_num(l[l.len() - 1])
        ),
        _ => "-".to_string(),
    };
    let mut spawn = vec!["client started -> first echo".to_string()];
    spawn.extend(setups.iter().map(|s| median_cell(s.map(|s| &s.spawn_ms))));
    let mut connect = vec!["server accepts client -> first echo".to_string()];
    connect.extend(setups.iter().map(|s| median_cell(s.map(|s| &s.connect_ms))));
    push_table(out, &header, header.len(), &[spawn, connect]);
}

/// A blank line, then a table: a header, a rule, and the rows' cells. The first column is
/// aligned left, the next ones up to `right_until` (exclusive) right, the rest left.
/// Nothing when there are no rows.
fn push_table(out: &mut String, header: &[String], right_until: usize, rows: &[Vec<String>]) {
    if rows.is_empty() {
        return;
    }
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for c in rows {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let _ = writeln!(out);
    push_cells(out, header, &width, right_until);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", rule.join("  "));
    for c in rows {
        push_cells(out, c, &width, right_until);
    }
}

fn push_cells(out: &mut String, cells: &[String], width: &[usize], right_until: usize) {
    let mut line = String::new();
    for (i, (s, &w)) in cells.iter().zip(width).enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        let pad = " ".repeat(w.saturating_sub(s.chars().count()));
        if i > 0 && i < right_until {
            line.push_str(&pad);
            line.push_str(s);
        } else {
            line.push_str(s);
            line.push_str(&pad);
        }
    }
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

/// `a - b` when both are there.
fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a - b)
}

/// Stalled rows as an object keyed by each row's key: both figures named by `sides`, their
/// ratio, and for a latency the time added.
fn rows_json(rows: &[Row], sides: [&str; 2]) -> Map<String, Value> {
    rows.iter()
        .map(|row| {
            let mut o = Map::new();
            o.insert(sides[0].to_string(), json_num(row.direct));
            o.insert(sides[1].to_string(), json_num(row.tunnel));
            o.insert("ratio".to_string(), json_num(row.ratio()));
            if row.kind == Kind::Latency {
                let added = diff(row.tunnel, row.direct);
                o.insert("added_us".to_string(), json_num(added));
            }
            (row.key.clone(), Value::Object(o))
        })
        .collect()
}

/// The workloads as an object keyed by each row's key: `direct`, the plain tunnel's figure
/// as `tunnel` with its `ratio` to direct (and `added_us` for a latency), and an object
/// `tls` with the TLS tunnel's figure as `tunnel`, its `ratio` to direct, its ratio
/// `to_plain` (and `added_us`, `added_to_plain_us`). A tunnel not measured has nulls.
fn workloads_json(rows: &[Row]) -> Map<String, Value> {
    rows.iter()
        .map(|row| {
            let latency = row.kind == Kind::Latency;
            // A count has no ratio.
            let ratio = |num, den| match row.kind {
                Kind::Count => None,
                _ => ratio_of(num, den),
            };
            let mut o = Map::new();
            o.insert("direct".to_string(), json_num(row.direct));
            o.insert("tunnel".to_string(), json_num(row.tunnel));
            o.insert("ratio".to_string(), json_num(ratio(row.tunnel, row.direct)));
            if latency {
                o.insert(
                    "added_us".to_string(),
                    json_num(diff(row.tunnel, row.direct)),
                );
            }
            let mut tls = Map::new();
            tls.insert("tunnel".to_string(), json_num(row.tls));
            tls.insert("ratio".to_string(), json_num(ratio(row.tls, row.direct)));
            if latency {
                tls.insert("added_us".to_string(), json_num(diff(row.tls, row.direct)));
            }
            tls.insert("to_plain".to_string(), json_num(ratio(row.tls, row.tunnel)));
            if latency {
                tls.insert(
                    "added_to_plain_us".to_string(),
                    json_num(diff(row.tls, row.tunnel)),
                );
            }
            o.insert("tls".to_string(), Value::Object(tls));
            (row.key.clone(), Value::Object(o))
        })
        .collect()
}

/// One tunnel's stalled-stream figures.
fn stalled_json(f: &TunnelFigures) -> Map<String, Value> {
    let mut stalled = rows_json(&f.stalled_rows, ["unstalled", "stalled"]);
    if let Some(st) = f.stall {
        stalled.insert("stalled_after_s".to_string(), json_num(Some(st.after_s)));
        let held_mib = st.held_bytes as f64 / (1024.0 * 1024.0);
        stalled.insert("held_mib".to_string(), json_num(Some(held_mib)));
    }
    stalled
}

/// One tunnel's round trips beside a UDP flood, and the flood's figures.
fn flood_json(f: &TunnelFigures) -> Map<String, Value> {
    let mut o = rows_json(&f.flood_rows, ["alone", "beside_flood"]);
    if let Some(s) = &f.flood {
        let flood = json!({
            "asked_mbit": json_num(Some(s.asked_mbit)),
            "sent_mbit": json_num(Some(s.sent.mbit())),
            "loss_pct": json_num(Some(s.loss() * 100.0)),
        });
        o.insert("flood".to_string(), flood);
    }
    o
}

/// One tunnel's memory figures, those measured only.
fn memory_json(f: &TunnelFigures) -> Map<String, Value> {
    let mib = |k: Option<u64>| json_num(k.map(|k| k as f64 / 1024.0));
    f.memory()
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
        .collect()
}

/// One tunnel's CPU figures.
fn cpu_json(f: &TunnelFigures) -> Map<String, Value> {
    f.cpu()
        .into_iter()
        .map(|(_, name, v)| (name.to_string(), json_num(v)))
        .collect()
}

/// One tunnel's set-up times: medians and the number of client starts.
fn setup_json(f: &TunnelFigures) -> Map<String, Value> {
    let s = f.setup.as_ref();
    let mut o = Map::new();
    o.insert(
        "spawn_to_echo".to_string(),
        json_num(s.and_then(Setup::spawn_median)),
    );
    o.insert(
        "connect_to_echo".to_string(),
        json_num(s.and_then(Setup::connect_median)),
    );
    o.insert(
        "samples".to_string(),
        Value::from(s.map_or(0, |s| s.spawn_ms.len())),
    );
    o
}

/// A section: the plain tunnel's figures at its top, the TLS tunnel's in its `tls` object.
fn section(r: &Report, part: fn(&TunnelFigures) -> Map<String, Value>) -> Value {
    let mut o = part(&r.plain);
    o.insert("tls".to_string(), Value::Object(part(&r.tls)));
    Value::Object(o)
}

/// The one JSON object printed with `--json`.
pub(super) fn render_json(r: &Report) -> String {
    let first = r.tunnels.first().map_or(&r.plain, |&t| r.figures(t));
    let pids: Map<String, Value> = r
        .tunnels
        .iter()
        .map(|&t| {
            let f = r.figures(t);
            let key = match t {
                Tunnel::Plain => "plain",
                Tunnel::Tls => "tls",
            };
            let pair = json!({"server": f.server_pid, "client": f.client_pid});
            (key.to_string(), pair)
        })
        .collect();
    let tunnels: Vec<&str> = r
        .tunnels
        .iter()
        .map(|t| match t {
            Tunnel::Plain => "plain",
            Tunnel::Tls => "tls",
        })
        .collect();
    json!({
        "seconds": json_num(Some(r.seconds)),
        "address": "127.0.0.1",
        "roles": "separate processes",
        "server_pid": first.server_pid,
        "client_pid": first.client_pid,
        "cores": cores(),
        "nofile_limit": r.nofile,
        "tunnels": tunnels,
        "pids": pids,
        "workloads": workloads_json(&r.rows),
        "stalled_stream": section(r, stalled_json),
        "memory_mib": section(r, memory_json),
        "cpu_s_per_gb": section(r, cpu_json),
        "setup_ms": section(r, setup_json),
        "limit": limit_json(r),
        "udp_flood": section(r, flood_json),
        "udp_targets": {
            "rr1_ratio": json_num(Some(UDP_RR_TARGET_RATIO)),
            "max_mbit": json_num(Some(UDP_RATE_TARGET_MBIT)),
            "flood_ratio": json_num(Some(FLOOD_TARGET_RATIO)),
            "flood_mbit": json_num(Some(FLOOD_MBIT)),
            "fixed_mbit": json_num(Some(FIXED_MBIT)),
        },
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
        let text = rows_since_text(&r, 2);
        assert_eq!(
            text,
            "direct 100, plain 50.0 (ratio 0.50), TLS 40.0 (ratio 0.40, 0.80 of plain); \
             p50 10.0 -> plain 20.0, TLS 25.0 µs; p99 10.0 -> plain 20.0, TLS 25.0 µs"
        );
        assert_eq!(
            rows_text(&r.plain.stalled_rows, ["unstalled", "stalled"]),
            "unstalled 100, stalled 90.0 (ratio 0.90); p50 30.0 -> 40.0 µs; p99 30.0 -> 40.0 µs"
        );
        let mut only_tls = sample_report();
        only_tls.tunnels = vec![Tunnel::Tls];
        assert_eq!(
            rows_since_text(&only_tls, 2),
            "direct 100, TLS 40.0 (ratio 0.40); p50 10.0 -> TLS 25.0 µs; p99 10.0 -> TLS 25.0 µs"
        );
    }

    #[test]
    fn without_the_stalled_workload_its_section_is_empty() {
        // Without the workload, neither the section nor its figures appear.
        assert!(!render_table(&Report::default()).contains("stalled"));
        assert!(render_json(&Report::default()).contains("\"stalled_stream\":{\"tls\":{}},"));
    }

    /// The line of `table` that starts with `start`, after the line that starts with `after`.
    fn line_after<'a>(table: &'a str, after: &str, start: &str) -> &'a str {
        table
            .lines()
            .skip_while(|l| !l.starts_with(after))
            .find(|l| l.starts_with(start))
            .unwrap_or("")
    }

    #[test]
    fn table_shows_figures_ratios_and_memory() {
        let table = render_table(&sample_report());
        assert!(table.contains("separate processes (plain: server pid 10, client pid 11; TLS: server pid 12, client pid 13)"), "{table}");
        let header = table
            .lines()
            .find(|l| l.starts_with("workload"))
            .unwrap_or("");
        assert!(
            header.ends_with("direct  plain   TLS  plain/direct     TLS/direct       TLS/plain"),
            "{table}"
        );
        let upload = line_after(&table, "workload", "upload, 1 stream");
        assert!(
            upload.ends_with("40.0   20.0  15.0  0.50             0.38             0.75"),
            "{table}"
        );
        let p50 = line_after(&table, "workload", "64 B round trips, 1 conn, p50");
        assert!(
            p50.ends_with("10.0   20.0  25.0  2.00 (+10.0 µs)  2.50 (+15.0 µs)  1.25 (+5.00 µs)"),
            "{table}"
        );
        let download = line_after(&table, "workload", "download");
        assert!(
            download.ends_with("40.0      -  16.0  -                0.40             -"),
            "{table}"
        );
        let idle = line_after(&table, "resident memory", "idle, tunnel attached");
        assert!(
            idle.ends_with("2.0           1.0          3.0         3.0         2.0        5.0"),
            "{table}"
        );
        assert!(
            table.contains(
                "plain server  plain client  plain total  TLS server  TLS client  TLS total"
            ),
            "{table}"
        );
        let stalled_mem = line_after(&table, "resident memory", "while one stream is stalled");
        assert!(
            stalled_mem
                .ends_with("4.0           3.0          7.0           -           -          -"),
            "{table}"
        );
        assert!(!table.contains("1,000 idle streams open"));
        let cpu = line_after(&table, "CPU s per GB", "upload, 1 stream");
        assert!(cpu.ends_with("0.400  0.800"), "{table}");
        let setup = line_after(&table, "tunnel set-up", "client started -> first echo");
        assert!(
            setup.ends_with("3.00 [2.00-4.00]  6.00 [5.00-7.00]"),
            "{table}"
        );
        assert!(
            table.contains("tunnel set-up (ms, median of 3 client starts)"),
            "{table}"
        );
        let accepted = line_after(&table, "tunnel set-up", "server accepts client");
        assert!(
            accepted.ends_with("1.00 [0.50-1.50]  3.00 [2.50-3.50]"),
            "{table}"
        );
        assert!(table.contains("- download, 1 stream (Gbit/s), plain tunnel: boom"));
        for (t, last) in [("plain", "0.25 s"), ("TLS", "did not stall")] {
            let stalled: Vec<&str> = table
                .lines()
                .skip_while(|l| !l.starts_with(&format!("{t} tunnel, another stream stalled")))
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
            assert!(stalled[5].contains(last), "{table}");
        }
        let plain_p50 = line_after(
            &table,
            "plain tunnel, another",
            "64 B round trips, 1 conn, p50",
        );
        assert!(
            plain_p50.ends_with("30.0     40.0  1.33 (+10.0 µs)"),
            "{table}"
        );
        assert!(table.contains("stopped 0.25 s after it opened, holding 3.0 MiB"));
    }

    #[test]
    fn a_table_of_one_tunnel_has_its_columns_only() {
        let mut r = sample_report();
        r.tunnels = vec![Tunnel::Plain];
        let table = render_table(&r);
        let header = table
            .lines()
            .find(|l| l.starts_with("workload"))
            .unwrap_or("");
        assert!(header.ends_with("direct  plain  plain/direct"), "{table}");
        // The notes of the sample name both tunnels: look above them.
        let figures = table.split("notes:").next().unwrap_or("");
        assert!(!figures.contains("TLS"), "{table}");
        r.tunnels = vec![Tunnel::Tls];
        let table = render_table(&r);
        let header = table
            .lines()
            .find(|l| l.starts_with("workload"))
            .unwrap_or("");
        assert!(header.ends_with("direct   TLS  TLS/direct"), "{table}");
        let figures = table.split("notes:").next().unwrap_or("");
        assert!(!figures.contains("plain"), "{table}");
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
                "tunnels",
                "pids",
                "workloads",
                "stalled_stream",
                "memory_mib",
                "cpu_s_per_gb",
                "setup_ms",
                "limit",
                "udp_flood",
                "udp_targets",
                "notes",
                "ok"
            ]
        );
        assert!(json.starts_with("{\"seconds\":2,\"address\":\"127.0.0.1\","));
        assert!(json.contains("\"server_pid\":10,\"client_pid\":11,"));
        assert!(json.contains("\"tunnels\":[\"plain\",\"tls\"],\"pids\":{\"plain\":{\"server\":10,\"client\":11},\"tls\":{\"server\":12,\"client\":13}},"));
        assert!(
            json.contains("\"upload_gbps\":{\"direct\":40,\"tunnel\":20,\"ratio\":0.5,\"tls\":{\"tunnel\":15,\"ratio\":0.375,\"to_plain\":0.75}}"),
            "{json}"
        );
        assert!(json.contains("\"download_gbps\":{\"direct\":40,\"tunnel\":null,\"ratio\":null,\"tls\":{\"tunnel\":16,\"ratio\":0.4,\"to_plain\":null}}"), "{json}");
        assert!(
            json.contains(
                "\"rr1_p50_us\":{\"direct\":10,\"tunnel\":20,\"ratio\":2,\"added_us\":10,\"tls\":{\"tunnel\":25,\"ratio\":2.5,\"added_us\":15,\"to_plain\":1.25,\"added_to_plain_us\":5}}"
            ),
            "{json}"
        );
        assert!(json.contains(
            "\"memory_mib\":{\"idle\":{\"server\":2,\"client\":1,\"total\":3},\"stalled_stream\":{\"server\":4,\"client\":3,\"total\":7},\"tls\":{\"idle\":{\"server\":3,\"client\":2,\"total\":5}}}"
        ), "{json}");
        assert!(
            json.contains(
                "\"stalled_stream\":{\"rr1_per_s\":{\"unstalled\":100,\"stalled\":90,\"ratio\":0.9},\"rr1_p50_us\":{\"unstalled\":30,\"stalled\":40,\"ratio\":1.3333,\"added_us\":10},"
            ),
            "{json}"
        );
        assert!(json.contains(",\"stalled_after_s\":0.25,\"held_mib\":3,\"tls\":{\"rr1_per_s\":{\"unstalled\":100,"), "{json}");
        assert!(json.contains("\"cpu_s_per_gb\":{\"upload\":0.4,\"download\":null,\"tls\":{\"upload\":0.8,\"download\":null}}"), "{json}");
        assert!(json.contains("\"setup_ms\":{\"spawn_to_echo\":3,\"connect_to_echo\":1,\"samples\":3,\"tls\":{\"spawn_to_echo\":6,\"connect_to_echo\":3,\"samples\":3}}"), "{json}");
        assert!(json.contains("\"roles\":\"separate processes\""));
        assert!(json.contains("\"notes\":[\"download, 1 stream (Gbit/s), plain tunnel: boom\","));
        assert!(json.ends_with("\"ok\":false}"));
    }

    #[test]
    fn json_of_one_tunnel_keeps_every_key() {
        let mut r = sample_report();
        r.tunnels = vec![Tunnel::Tls];
        let json = render_json(&r);
        assert!(
            json.contains("\"server_pid\":12,\"client_pid\":13,"),
            "{json}"
        );
        assert!(
            json.contains(
                "\"tunnels\":[\"tls\"],\"pids\":{\"tls\":{\"server\":12,\"client\":13}},"
            ),
            "{json}"
        );
        let r = Report {
            tunnels: vec![Tunnel::Plain],
            ..Report::default()
        };
        let json = render_json(&r);
        assert!(json.contains("\"setup_ms\":{\"spawn_to_echo\":null,\"connect_to_echo\":null,\"samples\":0,\"tls\":{\"spawn_to_echo\":null,\"connect_to_echo\":null,\"samples\":0}}"), "{json}");
        assert!(json.contains("\"cpu_s_per_gb\":{\"upload\":null,\"download\":null,\"tls\":{\"upload\":null,\"download\":null}}"), "{json}");
    }

    #[test]
    fn the_limit_workload_has_a_table_and_an_object() {
        use crate::bench::report::LimitFigures;
        let mut r = sample_report();
        assert!(render_json(&r).contains(r#""limit":{}"#));
        r.limit = Some(LimitFigures {
            tunnel: Tunnel::Plain,
            limit_mbit: 100.0,
            seconds: 10.0,
            up: Some((102.4, 4.0)),
            down: None,
        });
        let table = render_table(&r);
        let line = |start: &str| {
            table
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} in {table}"))
                .to_string()
        };
        assert!(
            line("[LIMIT] 100 mbit, plain tunnel, 10.0 s each way").contains("meanwhile/alone")
        );
        let up: Vec<String> = line("upload  ")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(up[..4], ["upload", "102", "1.024", "4.00"], "{table}");
        let down: Vec<String> = line("download  ")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(down[1..], ["-", "-", "-", "-"], "{table}");
        let v: Value = serde_json::from_str(&render_json(&r)).unwrap();
        assert_eq!(v["limit"]["upload"]["ratio"], 1.024);
        assert_eq!(v["limit"]["upload"]["unlimited_gbit"], 4.0);
        assert!(v["limit"]["download"].is_null());
        assert!(limit_text(r.limit.as_ref().unwrap()).contains("download failed"));
    }

    #[test]
    fn udp_rows_the_flood_table_and_the_targets() {
        use crate::bench::report::{ByTunnel, Samples};
        use crate::bench::udp::{Sent, Step};
        let mut r = Report {
            tunnels: vec![Tunnel::Plain],
            ..Report::default()
        };
        let samples = |ns: u64, n: usize, lost: u64| Samples {
            lost: Some(lost),
            ..Samples::new(vec![ns; n], 1.0)
        };
        r.push_samples(
            "udp_rr1",
            "UDP 64 B round trips, 1 flow",
            Ok(samples(10_000, 100, 0)),
            ByTunnel {
                plain: Some(Ok(samples(20_000, 60, 3))),
                tls: None,
            },
        );
        r.push_figures(
            "udp_max_mbit",
            "UDP 1,200 B, highest rate under 1 % loss (Mbit/s)",
            Kind::Rate,
            [Some(3000.0), Some(1500.0), None],
        );
        r.push_figures(
            "udp_fixed_loss_pct",
            "UDP 1,200 B, 2,000 Mbit/s asked: lost (%)",
            Kind::Count,
            [Some(0.0), Some(12.5), None],
        );
        let alone = Samples::new(vec![50_000; 100], 1.0);
        let beside = Samples::new(vec![60_000; 85], 1.0);
        let sides = ["alone", "beside the flood"];
        r.plain.flood_rows = r.paired_rows(
            Tunnel::Plain,
            sides,
            "rr1",
            "64 B round trips, 1 conn",
            Ok(alone),
            Ok(beside),
        );
        r.plain.flood = Some(Step {
            asked_mbit: 500.0,
            sent: Sent {
                datagrams: 52_000,
                secs: 1.0,
            },
            received: 51_948,
        });
        let table = render_table(&r);
        let lost = line_after(&table, "workload", "UDP 64 B round trips, 1 flow, lost");
        assert!(lost.ends_with("0      3  -"), "{table}");
        let loss = line_after(&table, "workload", "UDP 1,200 B, 2,000 Mbit/s asked");
        assert!(loss.ends_with("0   12.5  -"), "{table}");
        let beside = line_after(
            &table,
            "plain tunnel, beside a 500 Mbit/s UDP flood",
            "64 B round trips, 1 conn (/s)",
        );
        assert!(beside.ends_with("100    85.0  0.85"), "{table}");
        assert!(table.contains("(the flood of 1,200 B datagrams: 499 Mbit/s sent (500 asked), 0.10 % lost; target: round trips/s beside/alone >= 0.80)"), "{table}");
        let rr = line_after(
            &table,
            "UDP targets",
            "UDP round trips, 1 flow, tunnel/direct",
        );
        assert!(rr.ends_with(">= 0.50   0.60 met"), "{table}");
        let max = line_after(&table, "UDP targets", "UDP 1,200 B under 1 % loss");
        assert!(max.ends_with(">= 1,000  1,500 met"), "{table}");
        let flood = line_after(&table, "UDP targets", "TCP round trips beside");
        assert!(flood.ends_with(">= 0.80   0.85 met"), "{table}");
        assert_eq!(
            rows_since_text(&r, 3),
            "lost 0 -> plain 3; direct 3,000, plain 1,500 (ratio 0.50); 2,000 Mbit/s asked: lost (%) 0 -> plain 12.5"
        );
        let v: Value = serde_json::from_str(&render_json(&r)).expect("valid JSON");
        assert!(v["workloads"]["udp_rr1_lost"]["ratio"].is_null(), "{v}");
        assert_eq!(v["workloads"]["udp_rr1_lost"]["tunnel"], 3);
        assert_eq!(v["workloads"]["udp_max_mbit"]["ratio"], 0.5);
        assert_eq!(v["udp_flood"]["rr1_per_s"]["ratio"], 0.85);
        assert_eq!(v["udp_flood"]["flood"]["loss_pct"], 0.1);
        assert_eq!(v["udp_targets"]["max_mbit"], 1000);
    }
}
