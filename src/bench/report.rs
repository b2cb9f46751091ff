//! The figures of a bench run: rows (direct and tunnel, or unstalled and stalled), the
//! samples and transfers they are computed from, memory and CPU, and the notes.

use std::io;

use super::harness::procfs;

/// The stalled-stream target: another stream's round trips/s keep this share of their rate.
pub(super) const STALLED_TARGET_RATIO: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    /// Higher is better (Gbit/s, operations per second).
    Rate,
    /// Microseconds, lower is better; the ratio column also shows the added time.
    Latency,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) key: String,
    pub(super) label: String,
    pub(super) kind: Kind,
    pub(super) direct: Option<f64>,
    pub(super) tunnel: Option<f64>,
}

impl Row {
    pub(super) fn ratio(&self) -> Option<f64> {
        match (self.direct, self.tunnel) {
            (Some(d), Some(t)) if d > 0.0 => Some(t / d),
            _ => None,
        }
    }
}

/// How the stalled stream of the stalled-stream workload came to a stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stall {
    /// Seconds from opening the stream until it stopped moving.
    pub(super) after_s: f64,
    /// Bytes the source wrote until then: what the path holds for the reader that does not read
    /// (a 256 KiB write blocked midway is not counted).
    pub(super) held_bytes: u64,
}

/// Resident memory of the server and client roles, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct MemPair {
    pub(super) server_kib: Option<u64>,
    pub(super) client_kib: Option<u64>,
}

impl MemPair {
    /// A `kB` field of both roles' /proc/<pid>/status (server first).
    pub(super) fn read(pids: [u32; 2], field: &str) -> MemPair {
        MemPair {
            server_kib: procfs::status_kib(pids[0], field),
            client_kib: procfs::status_kib(pids[1], field),
        }
    }

    /// Both roles' VmRSS.
    pub(super) fn rss(pids: [u32; 2]) -> MemPair {
        MemPair::read(pids, "VmRSS")
    }

    pub(super) fn total_kib(&self) -> Option<u64> {
        Some(self.server_kib? + self.client_kib?)
    }
}

#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) seconds: f64,
    pub(super) nofile: u64,
    pub(super) server_pid: u32,
    pub(super) client_pid: u32,
    pub(super) rows: Vec<Row>,
    pub(super) mem_idle: Option<MemPair>,
    /// The anonymous part of `mem_idle`: the memory the processes own, without the code
    /// and library pages mapped from files (shared, and counted by VmRSS in each process).
    pub(super) mem_idle_anon: Option<MemPair>,
    pub(super) mem_streams: Option<MemPair>,
    pub(super) mem_peak: Option<MemPair>,
    /// The stalled-stream workload (tunnel only): rows whose `direct` holds the figure before
    /// the other stream stalled and `tunnel` the figure while it is.
    pub(super) stalled_rows: Vec<Row>,
    pub(super) stall: Option<Stall>,
    pub(super) mem_stalled: Option<MemPair>,
    pub(super) cpu_upload: Option<f64>,
    pub(super) cpu_download: Option<f64>,
    pub(super) notes: Vec<String>,
    pub(super) failed: bool,
}

impl Report {
    /// Record one rate, direct and through the tunnel; a failed side is noted and marks the
    /// run as failed.
    pub(super) fn push(
        &mut self,
        key: &str,
        label: &str,
        direct: io::Result<f64>,
        tunnel: io::Result<f64>,
    ) {
        let direct = self.take(label, "direct", direct);
        let tunnel = self.take(label, "tunnel", tunnel);
        self.rows.push(Row {
            key: key.to_string(),
            label: label.to_string(),
            kind: Kind::Rate,
            direct,
            tunnel,
        });
    }

    fn take<T>(&mut self, label: &str, side: &str, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed = true;
                self.notes.push(format!("{label}, {side}: {e}"));
                None
            }
        }
    }

    /// Record a request/response measurement: a rate row and p50/p99 latency rows.
    pub(super) fn push_samples(
        &mut self,
        key: &str,
        label: &str,
        direct: io::Result<Samples>,
        tunnel: io::Result<Samples>,
    ) {
        let rows = self.sample_rows(key, label, ["direct", "tunnel"], direct, tunnel);
        self.rows.extend(rows);
    }

    /// A rate row and p50/p99 latency rows from two request/response measurements, the first
    /// in each row's `direct`, the second in its `tunnel`; `sides` names them in the notes. A
    /// failed side is noted and marks the run as failed.
    pub(super) fn sample_rows(
        &mut self,
        key: &str,
        label: &str,
        sides: [&str; 2],
        direct: io::Result<Samples>,
        tunnel: io::Result<Samples>,
    ) -> Vec<Row> {
        let direct = self.take(label, sides[0], direct);
        let tunnel = self.take(label, sides[1], tunnel);
        for (side, s) in [(sides[0], &direct), (sides[1], &tunnel)] {
            if let Some(s) = s
                && s.errors > 0
            {
                let first = s.first_error.as_deref().unwrap_or("?");
                self.notes.push(format!(
                    "{label}, {side}: {} attempts failed (first: {first})",
                    s.errors
                ));
            }
        }
        let (d, t) = (direct.as_ref(), tunnel.as_ref());
        let mut rows = vec![Row {
            key: format!("{key}_per_s"),
            label: format!("{label} (/s)"),
            kind: Kind::Rate,
            direct: d.map(Samples::rate),
            tunnel: t.map(Samples::rate),
        }];
        for p in [50.0, 99.0] {
            rows.push(Row {
                key: format!("{key}_p{p}_us"),
                label: format!("{label}, p{p} (µs)"),
                kind: Kind::Latency,
                direct: d.and_then(|s| s.percentile_us(p)),
                tunnel: t.and_then(|s| s.percentile_us(p)),
            });
        }
        rows
    }

    /// The memory figures: (table label, JSON name, figure).
    pub(super) fn memory(&self) -> [(&'static str, &'static str, Option<MemPair>); 5] {
        [
            ("idle, tunnel attached", "idle", self.mem_idle),
            (
                "  of which anonymous (RssAnon)",
                "idle_anonymous",
                self.mem_idle_anon,
            ),
            ("1,000 idle streams open", "streams_1000", self.mem_streams),
            (
                "peak during 8-stream upload",
                "peak_8_streams",
                self.mem_peak,
            ),
            (
                "while one stream is stalled",
                "stalled_stream",
                self.mem_stalled,
            ),
        ]
    }

    /// The CPU figures: (table label, JSON name, figure).
    pub(super) fn cpu(&self) -> [(&'static str, &'static str, Option<f64>); 2] {
        [
            ("upload, 1 stream", "upload", self.cpu_upload),
            ("download, 1 stream", "download", self.cpu_download),
        ]
    }
}

/// Outcome of a bulk transfer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transfer {
    pub(super) bytes: u64,
    pub(super) secs: f64,
}

impl Transfer {
    pub(super) fn gbits(self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e9
        } else {
            0.0
        }
    }
}

/// Outcome of a request/response or connection workload.
#[derive(Debug, Default)]
pub(super) struct Samples {
    /// Latencies of the completed operations, in nanoseconds, sorted.
    pub(super) lat_ns: Vec<u64>,
    pub(super) secs: f64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

impl Samples {
    /// Samples from unsorted latencies measured over `secs`.
    pub(super) fn new(mut lat_ns: Vec<u64>, secs: f64) -> Samples {
        lat_ns.sort_unstable();
        Samples {
            lat_ns,
            secs,
            ..Samples::default()
        }
    }

    pub(super) fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.lat_ns.len() as f64 / self.secs
        } else {
            0.0
        }
    }

    pub(super) fn percentile_us(&self, p: f64) -> Option<f64> {
        percentile(&self.lat_ns, p).map(|ns| ns as f64 / 1000.0)
    }
}

/// Nearest-rank percentile of a sorted slice (`p` in 0..=100); `None` when empty.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// CPU seconds per GB (10^9 bytes) moved, from clock ticks before and after.
pub(super) fn cpu_per_gb(before: Option<u64>, after: Option<u64>, bytes: u64) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    if bytes == 0 {
        return None;
    }
    Some(ticks as f64 / procfs::clock_ticks_per_sec() / (bytes as f64 / 1e9))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 250.0), Some(100));
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
        assert_eq!(percentile(&[10, 20, 30], 50.0), Some(20));
    }

    #[test]
    fn samples_rate_and_microseconds() {
        let s = Samples {
            lat_ns: vec![1_000, 2_000, 3_000, 4_000],
            secs: 2.0,
            ..Samples::default()
        };
        assert_eq!(s.rate(), 2.0);
        assert_eq!(s.percentile_us(50.0), Some(2.0));
        assert_eq!(s.percentile_us(99.0), Some(4.0));
        assert_eq!(Samples::default().rate(), 0.0);
        assert_eq!(Samples::default().percentile_us(50.0), None);
    }

    #[test]
    fn transfer_in_gigabits() {
        assert_eq!(
            Transfer {
                bytes: 1_000_000_000,
                secs: 2.0
            }
            .gbits(),
            4.0
        );
        assert_eq!(
            Transfer {
                bytes: 5,
                secs: 0.0
            }
            .gbits(),
            0.0
        );
    }

    #[test]
    fn cpu_seconds_per_gigabyte() {
        let hz = procfs::clock_ticks_per_sec();
        let ticks = hz.round() as u64; // one second of CPU
        let v = cpu_per_gb(Some(10), Some(10 + ticks), 2_000_000_000).unwrap_or(f64::NAN);
        assert!((v - 0.5 * ticks as f64 / hz).abs() < 1e-9, "{v}");
        assert_eq!(cpu_per_gb(None, Some(5), 100), None);
        assert_eq!(cpu_per_gb(Some(5), Some(4), 100), None);
        assert_eq!(cpu_per_gb(Some(5), Some(6), 0), None);
    }

    /// A report with figures of every kind, a failed side and notes.
    pub(in crate::bench) fn sample_report() -> Report {
        let mut r = Report {
            seconds: 2.0,
            server_pid: 10,
            client_pid: 11,
            nofile: 20_000,
            ..Report::default()
        };
        r.push(
            "upload_gbps",
            "upload, 1 stream (Gbit/s)",
            Ok(40.0),
            Ok(20.0),
        );
        r.push(
            "download_gbps",
            "download, 1 stream (Gbit/s)",
            Ok(40.0),
            Err(io::Error::other("boom")),
        );
        let direct = Samples {
            lat_ns: vec![10_000; 100],
            secs: 1.0,
            ..Samples::default()
        };
        let tunnel = Samples {
            lat_ns: vec![20_000; 50],
            secs: 1.0,
            errors: 2,
            first_error: Some("refused".to_string()),
        };
        r.push_samples("rr1", "64 B round trips, 1 conn", Ok(direct), Ok(tunnel));
        let unstalled = Samples {
            lat_ns: vec![30_000; 100],
            secs: 1.0,
            ..Samples::default()
        };
        let stalled = Samples {
            lat_ns: vec![40_000; 90],
            secs: 1.0,
            ..Samples::default()
        };
        r.stalled_rows = r.sample_rows(
            "rr1",
            "64 B round trips, 1 conn",
            ["unstalled", "stalled"],
            Ok(unstalled),
            Ok(stalled),
        );
        r.stall = Some(Stall {
            after_s: 0.25,
            held_bytes: 3 * 1024 * 1024,
        });
        r.mem_idle = Some(MemPair {
            server_kib: Some(2048),
            client_kib: Some(1024),
        });
        r.mem_stalled = Some(MemPair {
            server_kib: Some(4096),
            client_kib: Some(3072),
        });
        r.cpu_upload = Some(0.4);
        r
    }

    #[test]
    fn report_rows_ratios_and_notes() {
        let r = sample_report();
        assert!(r.failed);
        let keys: Vec<&str> = r.rows.iter().map(|row| row.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upload_gbps",
                "download_gbps",
                "rr1_per_s",
                "rr1_p50_us",
                "rr1_p99_us"
            ]
        );
        assert_eq!(r.rows[0].ratio(), Some(0.5));
        assert_eq!(r.rows[1].ratio(), None);
        assert_eq!(r.rows[2].direct, Some(100.0));
        assert_eq!(r.rows[2].tunnel, Some(50.0));
        assert_eq!(r.rows[3].tunnel, Some(20.0));
        assert!(r.notes.iter().any(|n| n.contains("tunnel: boom")));
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("2 attempts failed (first: refused)"))
        );
        let keys: Vec<&str> = r.stalled_rows.iter().map(|row| row.key.as_str()).collect();
        assert_eq!(keys, ["rr1_per_s", "rr1_p50_us", "rr1_p99_us"]);
        assert_eq!(r.stalled_rows[0].ratio(), Some(0.9));
    }

    #[test]
    fn a_failed_stalled_side_is_noted_by_its_name() {
        let mut r = Report::default();
        let rows = r.sample_rows(
            "rr1",
            "64 B round trips, 1 conn",
            ["unstalled", "stalled"],
            Ok(Samples::new(vec![5_000; 10], 1.0)),
            Err(io::Error::other(
                "the other stream did not stall: still moving",
            )),
        );
        assert!(r.failed);
        assert_eq!(rows[0].direct, Some(10.0));
        assert_eq!(rows[0].tunnel, None);
        assert_eq!(
            r.notes,
            ["64 B round trips, 1 conn, stalled: the other stream did not stall: still moving"]
        );
    }
}
