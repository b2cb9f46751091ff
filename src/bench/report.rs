//! The figures of a bench run: rows (direct, plain tunnel and TLS tunnel, or unstalled and
//! stalled), the samples and transfers they are computed from, each tunnel's memory, CPU and
//! set-up time, and the notes.

use std::io;

use super::harness::procfs;
use super::udp::Step;

/// The stalled-stream target: another stream's round trips/s keep this share of their rate.
pub(super) const STALLED_TARGET_RATIO: f64 = 0.9;
/// The UDP targets: 64-byte round trips on one flow through a tunnel keep this share of
/// direct's...
pub(super) const UDP_RR_TARGET_RATIO: f64 = 0.5;
/// ...a tunnel carries this many Mbit/s of 1,200-byte datagrams with under 1 % loss...
pub(super) const UDP_RATE_TARGET_MBIT: f64 = 1000.0;
/// ...and TCP round trips beside a UDP flood through the same tunnel keep this share of
/// theirs alone.
pub(super) const FLOOD_TARGET_RATIO: f64 = 0.8;

/// A tunnel the bench measures, each over a server and client of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tunnel {
    /// `TLS=off` on the server, `--tls off` on the client.
    Plain,
    /// TLS 1.3 (the default of both roles), the server's certificate self-signed at start-up.
    Tls,
}

impl Tunnel {
    /// Its name in the table, the progress lines and the notes.
    pub(super) fn name(self) -> &'static str {
        match self {
            Tunnel::Plain => "plain",
            Tunnel::Tls => "TLS",
        }
    }

    /// The value of the server's `TLS` key and of the client's `--tls`.
    pub(super) fn tls_flag(self) -> &'static str {
        match self {
            Tunnel::Plain => "off",
            Tunnel::Tls => "on",
        }
    }
}

/// One value per tunnel; `None` for a tunnel the run does not measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ByTunnel<T> {
    pub(super) plain: Option<T>,
    pub(super) tls: Option<T>,
}

impl<T> Default for ByTunnel<T> {
    fn default() -> Self {
        ByTunnel {
            plain: None,
            tls: None,
        }
    }
}

impl<T> ByTunnel<T> {
    pub(super) fn get(&self, t: Tunnel) -> Option<&T> {
        match t {
            Tunnel::Plain => self.plain.as_ref(),
            Tunnel::Tls => self.tls.as_ref(),
        }
    }

    pub(super) fn set(&mut self, t: Tunnel, v: T) {
        match t {
            Tunnel::Plain => self.plain = Some(v),
            Tunnel::Tls => self.tls = Some(v),
        }
    }

    /// The tunnels that have a value, plain first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Tunnel, &T)> {
        [Tunnel::Plain, Tunnel::Tls]
            .into_iter()
            .filter_map(|t| self.get(t).map(|v| (t, v)))
    }

    /// `f` on each value, plain first.
    pub(super) fn map<U>(&self, mut f: impl FnMut(Tunnel, &T) -> U) -> ByTunnel<U> {
        let mut out = ByTunnel::default();
        for (t, v) in self.iter() {
            let u = f(t, v);
            out.set(t, u);
        }
        out
    }

    /// The tunnels that have a value, plain first, the values mutable.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (Tunnel, &mut T)> {
        [
            (Tunnel::Plain, self.plain.as_mut()),
            (Tunnel::Tls, self.tls.as_mut()),
        ]
        .into_iter()
        .filter_map(|(t, v)| v.map(|v| (t, v)))
    }

    /// `f` on each value, taken, plain first.
    pub(super) fn into_map<U>(self, mut f: impl FnMut(T) -> U) -> ByTunnel<U> {
        let plain = self.plain.map(&mut f);
        ByTunnel {
            plain,
            tls: self.tls.map(f),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    /// Higher is better (Gbit/s, operations per second).
    Rate,
    /// Microseconds, lower is better; the ratio column also shows the added time.
    Latency,
    /// A count or a share that has no meaningful ratio (datagrams lost, a loss in %).
    Count,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) key: String,
    pub(super) label: String,
    pub(super) kind: Kind,
    /// Direct loopback (in a stalled table: before the other stream stalled).
    pub(super) direct: Option<f64>,
    /// Through the plain tunnel (in a stalled table: while the other stream is stalled).
    pub(super) tunnel: Option<f64>,
    /// Through the TLS tunnel (`None` in a stalled table, which has one tunnel).
    pub(super) tls: Option<f64>,
}

/// `num / den`, when both are there and `den` is positive.
pub(super) fn ratio_of(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

impl Row {
    /// Plain tunnel / direct (in a stalled table: stalled / unstalled).
    pub(super) fn ratio(&self) -> Option<f64> {
        ratio_of(self.tunnel, self.direct)
    }

    /// The figure through a tunnel.
    pub(super) fn through(&self, t: Tunnel) -> Option<f64> {
        match t {
            Tunnel::Plain => self.tunnel,
            Tunnel::Tls => self.tls,
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

/// The tunnel's set-up time over several client starts, in milliseconds, each list sorted.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Setup {
    /// From spawning the client process to the first 1-byte echo through a public port.
    pub(super) spawn_ms: Vec<f64>,
    /// From the server's accepting the client's connection to that echo.
    pub(super) connect_ms: Vec<f64>,
}

impl Setup {
    /// Sorts both lists.
    pub(super) fn new(mut spawn_ms: Vec<f64>, mut connect_ms: Vec<f64>) -> Setup {
        spawn_ms.sort_unstable_by(f64::total_cmp);
        connect_ms.sort_unstable_by(f64::total_cmp);
        Setup {
            spawn_ms,
            connect_ms,
        }
    }

    pub(super) fn spawn_median(&self) -> Option<f64> {
        median(&self.spawn_ms)
    }

    pub(super) fn connect_median(&self) -> Option<f64> {
        median(&self.connect_ms)
    }
}

/// The median of a sorted list (the mean of the middle two for an even count).
pub(super) fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// What is measured of one tunnel alone: its processes, memory, CPU per byte, set-up time,
/// and the stalled-stream workload (which has no direct side).
#[derive(Debug, Default)]
pub(super) struct TunnelFigures {
    pub(super) server_pid: u32,
    pub(super) client_pid: u32,
    pub(super) mem_idle: Option<MemPair>,
    /// The anonymous part of `mem_idle`: the memory the processes own, without the code
    /// and library pages mapped from files (shared, and counted by VmRSS in each process).
    pub(super) mem_idle_anon: Option<MemPair>,
    pub(super) mem_streams: Option<MemPair>,
    pub(super) mem_peak: Option<MemPair>,
    /// The stalled-stream workload: rows whose `direct` holds the figure before the other
    /// stream stalled and `tunnel` the figure while it is.
    pub(super) stalled_rows: Vec<Row>,
    pub(super) stall: Option<Stall>,
    pub(super) mem_stalled: Option<MemPair>,
    /// TCP round trips beside a UDP flood: rows whose `direct` holds the figure alone and
    /// `tunnel` the figure while the flood runs through the same tunnel.
    pub(super) flood_rows: Vec<Row>,
    /// The flood itself: what it sent and what reached the sink.
    pub(super) flood: Option<Step>,
    pub(super) cpu_upload: Option<f64>,
    pub(super) cpu_download: Option<f64>,
    pub(super) setup: Option<Setup>,
}

impl TunnelFigures {
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

/// The bandwidth-limit workload: a limited port's rate each way, and what an unlimited port
/// of the same tunnel moved meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LimitFigures {
    pub(super) tunnel: Tunnel,
    pub(super) limit_mbit: f64,
    pub(super) seconds: f64,
    /// Upload (visitor -> target), then download: the limited port's Mbit/s and the
    /// unlimited port's Gbit/s at the same time.
    pub(super) up: Option<(f64, f64)>,
    pub(super) down: Option<(f64, f64)>,
}

#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) seconds: f64,
    pub(super) nofile: u64,
    /// The tunnels measured, plain first.
    pub(super) tunnels: Vec<Tunnel>,
    pub(super) rows: Vec<Row>,
    pub(super) plain: TunnelFigures,
    pub(super) tls: TunnelFigures,
    pub(super) limit: Option<LimitFigures>,
    pub(super) notes: Vec<String>,
    pub(super) failed: bool,
}

/// What the notes call a side of a row.
fn side_name(t: Tunnel) -> &'static str {
    match t {
        Tunnel::Plain => "plain tunnel",
        Tunnel::Tls => "TLS tunnel",
    }
}

impl Report {
    pub(super) fn figures(&self, t: Tunnel) -> &TunnelFigures {
        match t {
            Tunnel::Plain => &self.plain,
            Tunnel::Tls => &self.tls,
        }
    }

    pub(super) fn figures_mut(&mut self, t: Tunnel) -> &mut TunnelFigures {
        match t {
            Tunnel::Plain => &mut self.plain,
            Tunnel::Tls => &mut self.tls,
        }
    }

    /// Record one rate, direct and through each tunnel measured; a failed side is noted and
    /// marks the run as failed.
    pub(super) fn push(
        &mut self,
        key: &str,
        label: &str,
        direct: io::Result<f64>,
        through: ByTunnel<io::Result<f64>>,
    ) {
        self.push_kind(key, label, Kind::Rate, direct, through);
    }

    /// Record one figure of `kind`, as [`Report::push`] does a rate.
    pub(super) fn push_kind(
        &mut self,
        key: &str,
        label: &str,
        kind: Kind,
        direct: io::Result<f64>,
        through: ByTunnel<io::Result<f64>>,
    ) {
        let figures = self.take_all(label, direct, through);
        self.push_figures(key, label, kind, figures);
    }

    /// A row of figures already taken: direct, plain tunnel, TLS tunnel.
    pub(super) fn push_figures(&mut self, key: &str, label: &str, kind: Kind, f: [Option<f64>; 3]) {
        let [direct, tunnel, tls] = f;
        self.rows.push(Row {
            key: key.to_string(),
            label: label.to_string(),
            kind,
            direct,
            tunnel,
            tls,
        });
    }

    /// The outcomes of a workload direct and through each tunnel, each `None` when not
    /// measured or failed; a failure is noted under `label` and marks the run as failed.
    pub(super) fn take_all<T>(
        &mut self,
        label: &str,
        direct: io::Result<T>,
        through: ByTunnel<io::Result<T>>,
    ) -> [Option<T>; 3] {
        let direct = self.take(label, "direct", direct);
        let [tunnel, tls] = self.take_tunnels(label, through);
        [direct, tunnel, tls]
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

    /// The plain and the TLS figure, each `None` when not measured or failed (noted).
    fn take_tunnels<T>(&mut self, label: &str, through: ByTunnel<io::Result<T>>) -> [Option<T>; 2] {
        let ByTunnel { plain, tls } = through;
        let plain = plain.and_then(|r| self.take(label, side_name(Tunnel::Plain), r));
        let tls = tls.and_then(|r| self.take(label, side_name(Tunnel::Tls), r));
        [plain, tls]
    }

    /// Record a request/response measurement, direct and through each tunnel measured: a
    /// rate row and p50/p99 latency rows.
    pub(super) fn push_samples(
        &mut self,
        key: &str,
        label: &str,
        direct: io::Result<Samples>,
        through: ByTunnel<io::Result<Samples>>,
    ) {
        let [direct, tunnel, tls] = self.take_all(label, direct, through);
        let sides = [
            ("direct", direct.as_ref()),
            (side_name(Tunnel::Plain), tunnel.as_ref()),
            (side_name(Tunnel::Tls), tls.as_ref()),
        ];
        self.note_errors(label, &sides);
        let rows = sample_rows(key, label, [direct.as_ref(), tunnel.as_ref(), tls.as_ref()]);
        self.rows.extend(rows);
    }

    /// Notes the failed attempts of each side's samples.
    fn note_errors(&mut self, label: &str, sides: &[(&str, Option<&Samples>)]) {
        for (side, s) in sides {
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
    }

    /// The rows of a workload of one tunnel measured twice, before and while something else
    /// happens on it (another stream stalled, a UDP flood): a rate row and p50/p99 latency
    /// rows, the first figure in each row's `direct` and the second in its `tunnel`; `sides`
    /// names them in the notes. A failed side is noted and marks the run as failed.
    pub(super) fn paired_rows(
        &mut self,
        t: Tunnel,
        sides: [&str; 2],
        key: &str,
        label: &str,
        first: io::Result<Samples>,
        second: io::Result<Samples>,
    ) -> Vec<Row> {
        let sides = sides.map(|side| format!("{}, {side}", side_name(t)));
        let first = self.take(label, &sides[0], first);
        let second = self.take(label, &sides[1], second);
        self.note_errors(
            label,
            &[(&sides[0], first.as_ref()), (&sides[1], second.as_ref())],
        );
        sample_rows(key, label, [first.as_ref(), second.as_ref(), None])
    }
}

/// A rate row and p50/p99 latency rows from up to three request/response measurements, in
/// each row's `direct`, `tunnel` and `tls`, and a row of the requests lost where they count
/// them (UDP).
fn sample_rows(key: &str, label: &str, s: [Option<&Samples>; 3]) -> Vec<Row> {
    let row = |key: String, label: String, kind, f: &dyn Fn(&Samples) -> Option<f64>| Row {
        key,
        label,
        kind,
        direct: s[0].and_then(f),
        tunnel: s[1].and_then(f),
        tls: s[2].and_then(f),
    };
    let mut rows = vec![row(
        format!("{key}_per_s"),
        format!("{label} (/s)"),
        Kind::Rate,
        &|s| Some(s.rate()),
    )];
    for p in [50.0, 99.0] {
        rows.push(row(
            format!("{key}_p{p}_us"),
            format!("{label}, p{p} (µs)"),
            Kind::Latency,
            &|s| s.percentile_us(p),
        ));
    }
    if s.iter().flatten().any(|s| s.lost.is_some()) {
        rows.push(row(
            format!("{key}_lost"),
            format!("{label}, lost"),
            Kind::Count,
            &|s| s.lost.map(|n| n as f64),
        ));
    }
    rows
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
    /// Requests that timed out and were sent again (UDP round trips; `None` elsewhere).
    pub(super) lost: Option<u64>,
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

    #[test]
    fn medians_of_sorted_lists() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[1.0, 2.0, 9.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), Some(3.0));
        let s = Setup::new(vec![5.0, 1.0, 3.0], vec![2.0, 0.5]);
        assert_eq!(s.spawn_ms, [1.0, 3.0, 5.0]);
        assert_eq!(s.spawn_median(), Some(3.0));
        assert_eq!(s.connect_median(), Some(1.25));
        assert_eq!(Setup::default().connect_median(), None);
    }

    #[test]
    fn by_tunnel_keeps_plain_first() {
        let mut b = ByTunnel::default();
        b.set(Tunnel::Tls, 2);
        b.set(Tunnel::Plain, 1);
        let order: Vec<(Tunnel, i32)> = b.iter().map(|(t, v)| (t, *v)).collect();
        assert_eq!(order, [(Tunnel::Plain, 1), (Tunnel::Tls, 2)]);
        assert_eq!(b.map(|_, v| v * 10).tls, Some(20));
        let only_tls = ByTunnel {
            plain: None,
            tls: Some("x"),
        };
        assert_eq!(only_tls.iter().count(), 1);
        assert_eq!(only_tls.get(Tunnel::Plain), None);
        assert_eq!(Tunnel::Plain.tls_flag(), "off");
        assert_eq!(Tunnel::Tls.tls_flag(), "on");
    }

    /// A report of both tunnels with figures of every kind, a failed side and notes.
    pub(in crate::bench) fn sample_report() -> Report {
        let mut r = Report {
            seconds: 2.0,
            nofile: 20_000,
            tunnels: vec![Tunnel::Plain, Tunnel::Tls],
            ..Report::default()
        };
        r.plain.server_pid = 10;
        r.plain.client_pid = 11;
        r.tls.server_pid = 12;
        r.tls.client_pid = 13;
        r.push(
            "upload_gbps",
            "upload, 1 stream (Gbit/s)",
            Ok(40.0),
            ByTunnel {
                plain: Some(Ok(20.0)),
                tls: Some(Ok(15.0)),
            },
        );
        r.push(
            "download_gbps",
            "download, 1 stream (Gbit/s)",
            Ok(40.0),
            ByTunnel {
                plain: Some(Err(io::Error::other("boom"))),
                tls: Some(Ok(16.0)),
            },
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
            lost: None,
        };
        let tls = Samples {
            lat_ns: vec![25_000; 40],
            secs: 1.0,
            ..Samples::default()
        };
        r.push_samples(
            "rr1",
            "64 B round trips, 1 conn",
            Ok(direct),
            ByTunnel {
                plain: Some(Ok(tunnel)),
                tls: Some(Ok(tls)),
            },
        );
        for (t, base) in [(Tunnel::Plain, 30_000), (Tunnel::Tls, 35_000)] {
            let unstalled = Samples {
                lat_ns: vec![base; 100],
                secs: 1.0,
                ..Samples::default()
            };
            let stalled = Samples {
                lat_ns: vec![base + 10_000; 90],
                secs: 1.0,
                ..Samples::default()
            };
            let rows = r.paired_rows(
                t,
                ["unstalled", "stalled"],
                "rr1",
                "64 B round trips, 1 conn",
                Ok(unstalled),
                Ok(stalled),
            );
            r.figures_mut(t).stalled_rows = rows;
        }
        r.plain.stall = Some(Stall {
            after_s: 0.25,
            held_bytes: 3 * 1024 * 1024,
        });
        r.plain.mem_idle = Some(MemPair {
            server_kib: Some(2048),
            client_kib: Some(1024),
        });
        r.tls.mem_idle = Some(MemPair {
            server_kib: Some(3072),
            client_kib: Some(2048),
        });
        r.plain.mem_stalled = Some(MemPair {
            server_kib: Some(4096),
            client_kib: Some(3072),
        });
        r.plain.cpu_upload = Some(0.4);
        r.tls.cpu_upload = Some(0.8);
        r.plain.setup = Some(Setup::new(vec![3.0, 2.0, 4.0], vec![1.0, 1.5, 0.5]));
        r.tls.setup = Some(Setup::new(vec![6.0, 5.0, 7.0], vec![3.0, 2.5, 3.5]));
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
        assert_eq!(r.rows[0].through(Tunnel::Tls), Some(15.0));
        assert_eq!(ratio_of(r.rows[0].tls, r.rows[0].tunnel), Some(0.75));
        assert_eq!(r.rows[1].ratio(), None);
        assert_eq!(r.rows[1].tls, Some(16.0));
        assert_eq!(r.rows[2].direct, Some(100.0));
        assert_eq!(r.rows[2].tunnel, Some(50.0));
        assert_eq!(r.rows[2].tls, Some(40.0));
        assert_eq!(r.rows[3].tunnel, Some(20.0));
        assert_eq!(r.rows[3].tls, Some(25.0));
        assert!(r.notes.iter().any(|n| n.contains("plain tunnel: boom")));
        assert!(r.notes.iter().any(|n| n.contains(
            "64 B round trips, 1 conn, plain tunnel: 2 attempts failed (first: refused)"
        )));
        let keys: Vec<&str> = r
            .plain
            .stalled_rows
            .iter()
            .map(|row| row.key.as_str())
            .collect();
        assert_eq!(keys, ["rr1_per_s", "rr1_p50_us", "rr1_p99_us"]);
        assert_eq!(r.plain.stalled_rows[0].ratio(), Some(0.9));
        assert_eq!(r.tls.stalled_rows[1].direct, Some(35.0));
        assert!(r.tls.stalled_rows.iter().all(|row| row.tls.is_none()));
    }

    #[test]
    fn a_tunnel_not_measured_is_no_failure() {
        let mut r = Report::default();
        r.push(
            "upload_gbps",
            "upload, 1 stream (Gbit/s)",
            Ok(40.0),
            ByTunnel {
                plain: None,
                tls: Some(Ok(10.0)),
            },
        );
        assert!(!r.failed);
        assert!(r.notes.is_empty());
        assert_eq!(r.rows[0].tunnel, None);
        assert_eq!(r.rows[0].tls, Some(10.0));
    }

    #[test]
    fn a_failed_stalled_side_is_noted_by_its_name() {
        let mut r = Report::default();
        let rows = r.paired_rows(
            Tunnel::Tls,
            ["unstalled", "stalled"],
            "rr1",
            "64 B round trips, 1 conn",
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
            [
                "64 B round trips, 1 conn, TLS tunnel, stalled: the other stream did not stall: still moving"
            ]
        );
    }
}
