//! `tcp-forward bench`: measure the tunnel against direct loopback on this machine.
//!
//! The server and client roles run as separate child processes of this same binary
//! (`tcp-forward server <tmp cfg>` and `tcp-forward client 127.0.0.1 <inner port>`), so their
//! resident memory and CPU time can be read from `/proc/<pid>`. The target servers (echo, sink,
//! source) run in threads of the bench process on 127.0.0.1, on ports chosen by the OS. Every
//! workload runs twice in the same run: directly (bench thread -> target) and through the tunnel
//! (bench thread -> public port -> server -> tunnel -> client -> target); the table shows both
//! figures and the tunnel/direct ratio. One workload runs through the tunnel only, since a direct
//! path has no shared tunnel to stall: the round trips of one stream before and while another
//! stream through the same tunnel is stalled (its reader never reads), and their ratio.
//!
//! Everything is bounded: each workload stops after its duration, every socket has read and
//! write timeouts, and the roles are stopped (SIGTERM, then SIGKILL) on every path out.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum as _;

use crate::config::DEFAULT_MAPPER_FILE;

/// Size of each write (upload) and read (download) in the throughput workloads.
const CHUNK: usize = 256 * 1024;
/// Streams in the parallel upload.
const PARALLEL_STREAMS: usize = 8;
/// Payload of one request and of its response.
const RR_SIZE: usize = 64;
/// Connections in the many-connection request/response workload.
const RR_CONNS: usize = 50;
/// Threads in the connection-rate workload.
const CONNECT_THREADS: usize = 8;
/// Idle streams held open for the memory figure.
const IDLE_STREAMS: usize = 1000;
/// Read and write timeout of every socket the bench opens, and connect timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the roles get to listen and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a role gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each role's stderr kept for error messages.
const TAIL_LINES: usize = 30;
/// A stalled stream counts as stalled once nothing has moved on it for this long...
const STALL_QUIET: Duration = Duration::from_millis(100);
/// ...and at least this long after it was opened.
const STALL_SETTLE: Duration = Duration::from_millis(300);
/// A stream still moving this long after its reader stopped reading is buffered without bound.
const STALL_LIMIT: Duration = Duration::from_secs(3);
/// How long the source connection of a closed stalled stream gets to end.
const SOURCE_END_TIMEOUT: Duration = Duration::from_secs(2);
/// The stalled-stream target: another stream's round trips/s keep this share of their rate.
const STALLED_TARGET_RATIO: f64 = 0.9;

/// Options of `tcp-forward bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds per workload, run once directly and once through the tunnel
    #[arg(long, value_name = "N", default_value_t = 2.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// Run only this workload (repeatable; default: all)
    #[arg(long, value_enum, value_name = "WORKLOAD")]
    pub only: Vec<Workload>,
}

/// The workloads `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Single-stream upload to a sink (with CPU per GB)
    Upload,
    /// Single-stream download from a source (with CPU per GB)
    Download,
    /// 8 parallel upload streams (with peak memory)
    Parallel,
    /// 64-byte request/response on 1 connection
    Rr1,
    /// 64-byte request/response on 50 connections
    Rr50,
    /// Connect, 1-byte echo, close, from 8 threads
    Connect,
    /// Memory with 1,000 idle streams open
    Streams,
    /// 64-byte round trips on 1 connection before and while another stream is stalled
    Stalled,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.05..=3600.0).contains(&v) {
        return Err(format!("{s:?}: seconds must be between 0.05 and 3600"));
    }
    Ok(v)
}

/// Run the benchmark; returns the process exit code (0 all went well, 1 a failure).
pub fn run(args: BenchArgs) -> u8 {
    // Children inherit the raised limit.
    let nofile = crate::net::sys::raise_nofile_limit().unwrap_or(0);
    let mut env = match Env::start(None) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("tcp-forward bench: {e}");
            return 1;
        }
    };
    let mut report = Report {
        seconds: args.seconds,
        nofile,
        server_pid: env.server.pid(),
        client_pid: env.client.pid(),
        ..Report::default()
    };
    eprintln!(
        "bench: server (pid {}) and client (pid {}) roles running as separate processes; tunnel attached",
        report.server_pid, report.client_pid
    );

    let selected = |w: &Workload| args.only.is_empty() || args.only.contains(w);
    let workloads: Vec<Workload> = Workload::value_variants()
        .iter()
        .copied()
        .filter(selected)
        .collect();
    let duration = Duration::from_secs_f64(args.seconds);
    let outcome = run_workloads(&mut env, duration, &workloads, &mut report);
    report.notes.extend(env.stop());
    if let Err(e) = &outcome {
        eprintln!("\ntcp-forward bench: {e}");
        report.failed = true;
        report.notes.push(format!("stopped early: {e}"));
    }
    if args.json {
        println!("{}", render_json(&report));
    } else {
        print!("{}", render_table(&report));
    }
    if report.failed { 1 } else { 0 }
}

impl Workload {
    /// What the "role exited before ..." message and the progress line call it.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Workload::Upload => ("the upload workload", "upload, 1 stream"),
            Workload::Download => ("the download workload", "download, 1 stream"),
            Workload::Parallel => ("the 8-stream workload", "upload, 8 streams"),
            Workload::Rr1 => (
                "the 1-connection round-trip workload",
                "64 B round trips, 1 connection",
            ),
            Workload::Rr50 => (
                "the 50-connection round-trip workload",
                "64 B round trips, 50 connections",
            ),
            Workload::Connect => (
                "the connection-rate workload",
                "connect + 1 B echo + close, 8 threads",
            ),
            Workload::Streams => ("the 1,000-stream workload", "memory, 1,000 idle streams"),
            Workload::Stalled => (
                "the stalled-stream workload",
                "64 B round trips, 1 connection, before and while another stream is stalled",
            ),
        }
    }
}

/// Run the workloads in order. `Err` means the run cannot go on (a role died); a single
/// workload's failure is recorded in the report and the run continues.
fn run_workloads(
    env: &mut Env,
    duration: Duration,
    workloads: &[Workload],
    report: &mut Report,
) -> Result<(), String> {
    let pids = [env.server.pid(), env.client.pid()];
    let (direct, tunnel) = (env.targets.addr, env.public);
    thread::sleep(Duration::from_millis(100));
    report.mem_idle = Some(read_rss_pair(pids));
    report.mem_idle_anon = Some(read_mem_pair(pids, "RssAnon"));
    eprintln!("bench: memory, idle: {}", mem_text(report.mem_idle));

    for &workload in workloads {
        let (during, title) = workload.names();
        env.check_alive(during)?;
        eprint!("bench: {title}: ");
        match workload {
            Workload::Upload => {
                let (d, t, cpu) = bulk(upload, direct.sink, tunnel.sink, duration, pids);
                report.cpu_upload = cpu;
                report.push("upload_gbps", "upload, 1 stream (Gbit/s)", d, t);
            }
            Workload::Download => {
                let (d, t, cpu) = bulk(download, direct.source, tunnel.source, duration, pids);
                report.cpu_download = cpu;
                report.push("download_gbps", "download, 1 stream (Gbit/s)", d, t);
            }
            Workload::Parallel => {
                let d = parallel_upload(direct.sink, duration);
                let sampler = RssSampler::start(pids);
                let t = parallel_upload(tunnel.sink, duration);
                report.mem_peak = sampler.finish();
                let (d, t) = (d.map(Transfer::gbits), t.map(Transfer::gbits));
                report.push("parallel8_gbps", "upload, 8 streams (Gbit/s)", d, t);
            }
            Workload::Rr1 => {
                let d = request_response(direct.echo, 1, duration);
                let t = request_response(tunnel.echo, 1, duration);
                report.push_samples("rr1", "64 B round trips, 1 conn", d, t);
            }
            Workload::Rr50 => {
                let d = request_response_poll(direct.echo, RR_CONNS, duration);
                let t = request_response_poll(tunnel.echo, RR_CONNS, duration);
                report.push_samples("rr50", "64 B round trips, 50 conns", d, t);
            }
            Workload::Connect => {
                let d = connection_rate(direct.echo, duration);
                // Let the sockets of the direct run leave the accept queues before the tunnel run.
                thread::sleep(Duration::from_millis(100));
                let t = connection_rate(tunnel.echo, duration);
                report.push_samples("connect", "connect+echo+close, 8 thr", d, t);
            }
            Workload::Streams => {
                idle_streams(tunnel.echo, pids, report);
                continue;
            }
            Workload::Stalled => {
                stalled_stream(tunnel, &env.targets.source_stats, duration, pids, report);
                continue;
            }
        }
        eprintln!("{}", report.last_row_text());
    }
    env.check_alive("the end of the run")?;
    Ok(())
}

/// A bulk transfer directly, then through the tunnel with the roles' CPU time measured:
/// (direct Gbit/s, tunnel Gbit/s, CPU seconds per GB of the tunnel run).
fn bulk(
    work: fn(SocketAddr, Duration) -> io::Result<Transfer>,
    direct: SocketAddr,
    tunnel: SocketAddr,
    dur: Duration,
    pids: [u32; 2],
) -> (io::Result<f64>, io::Result<f64>, Option<f64>) {
    let d = work(direct, dur);
    let before = cpu_ticks_pair(pids);
    let t = work(tunnel, dur);
    let after = cpu_ticks_pair(pids);
    let cpu = t
        .as_ref()
        .ok()
        .and_then(|t| cpu_per_gb(before, after, t.bytes));
    (d.map(Transfer::gbits), t.map(Transfer::gbits), cpu)
}

/// The memory figure with 1,000 idle streams open through the tunnel (when the open-file
/// limit allows them); prints its own progress result.
fn idle_streams(addr: SocketAddr, pids: [u32; 2], report: &mut Report) {
    let needed = 2 * IDLE_STREAMS as u64 + 256;
    if report.nofile < needed {
        eprintln!("skipped");
        report.notes.push(format!(
            "1,000 idle streams skipped: the open-file limit is {}, {needed} are needed (raise `ulimit -Hn`)",
            report.nofile
        ));
        return;
    }
    match hold_streams(addr, IDLE_STREAMS) {
        Ok(streams) => {
            thread::sleep(Duration::from_millis(200));
            report.mem_streams = Some(read_rss_pair(pids));
            drop(streams);
            eprintln!("{}", mem_text(report.mem_streams));
        }
        Err(e) => {
            eprintln!("failed: {e}");
            report.failed = true;
            report
                .notes
                .push(format!("1,000 idle streams through the tunnel: {e}"));
        }
    }
}

/// The stalled-stream workload, through the tunnel only: 64-byte round trips on one connection
/// to the echo service; then a second stream from the source, never read, and the same round
/// trips again while it stays stalled, with the roles' memory at the end; then the stalled
/// stream is closed and its source connection must end. Prints its own progress result.
fn stalled_stream(
    tunnel: Endpoints,
    source: &SourceStats,
    dur: Duration,
    pids: [u32; 2],
    report: &mut Report,
) {
    let unstalled = request_response(tunnel.echo, 1, dur);
    // A source connection of an earlier workload still ending would blur the stall detection.
    let _ = wait_sources_ended(source, SOURCE_END_TIMEOUT);
    let stalled = match open_stalled(tunnel.source, source) {
        Ok((stream, stall)) => {
            report.stall = Some(stall);
            let r = request_response(tunnel.echo, 1, dur);
            report.mem_stalled = Some(read_rss_pair(pids));
            drop(stream);
            r
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("the other stream did not stall: {e}"),
        )),
    };
    if let Err(e) = wait_sources_ended(source, SOURCE_END_TIMEOUT) {
        report.notes.push(format!("stalled stream: {e}"));
    }
    let sides = ["unstalled", "stalled"];
    report.stalled_rows =
        report.sample_rows("rr1", "64 B round trips, 1 conn", sides, unstalled, stalled);
    let mut text = rows_text(&report.stalled_rows, sides);
    if let Some(st) = report.stall {
        let _ = write!(
            text,
            "; stalled after {:.2} s holding {} MiB; memory while stalled: {}",
            st.after_s,
            fmt_mib(Some(st.held_bytes / 1024)),
            mem_text(report.mem_stalled)
        );
    }
    eprintln!("{text}");
}

/// Open a stream from the source at `addr` and never read it. Returns once nothing has moved
/// on it for `STALL_QUIET` (neither the bytes the source has written nor those waiting at this
/// end), at least `STALL_SETTLE` after it was opened. `Err` when it still moves after
/// `STALL_LIMIT` (something on the path buffers it without bound) or nothing ever arrived.
fn open_stalled(addr: SocketAddr, source: &SourceStats) -> io::Result<(TcpStream, Stall)> {
    let written = || source.written.load(Ordering::Relaxed);
    let base = written();
    let s = connect(addr)?;
    let start = Instant::now();
    let mut last = (written(), queued_bytes(&s));
    let mut quiet_since = start;
    loop {
        thread::sleep(Duration::from_millis(10));
        let now = (written(), queued_bytes(&s));
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if start.elapsed() >= STALL_SETTLE
            && quiet_since.elapsed() >= STALL_QUIET
            && last.1.is_some_and(|q| q > 0)
        {
            let stall = Stall {
                after_s: quiet_since.duration_since(start).as_secs_f64(),
                held_bytes: last.0.saturating_sub(base),
            };
            return Ok((s, stall));
        }
        if start.elapsed() >= STALL_LIMIT {
            let why = if last.1.is_some_and(|q| q > 0) {
                "still moving"
            } else {
                "nothing arrived"
            };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{why} {} s after it was opened ({} MiB written by the source)",
                    STALL_LIMIT.as_secs(),
                    fmt_mib(Some(last.0.saturating_sub(base) / 1024))
                ),
            ));
        }
    }
}

/// Bytes waiting in a socket's receive queue (`None` when the kernel does not say).
fn queued_bytes(s: &TcpStream) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer; the descriptor is owned by `s`.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { u64::try_from(n).ok() } else { None }
}

/// Wait until every connection of the source service has ended (its thread returned and
/// closed the socket); `Err` after `timeout`.
fn wait_sources_ended(source: &SourceStats, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let open = source.open.load(Ordering::Relaxed);
        if open == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{open} source connection(s) still writing {} s after the reader closed \
                 (the close did not reach the target; the source's write timeout ends them)",
                timeout.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Higher is better (Gbit/s, operations per second).
    Rate,
    /// Microseconds, lower is better; the ratio column also shows the added time.
    Latency,
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    key: String,
    label: String,
    kind: Kind,
    direct: Option<f64>,
    tunnel: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.direct, self.tunnel) {
            (Some(d), Some(t)) if d > 0.0 => Some(t / d),
            _ => None,
        }
    }
}

/// How the stalled stream of the stalled-stream workload came to a stop.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stall {
    /// Seconds from opening the stream until it stopped moving.
    after_s: f64,
    /// Bytes the source wrote until then: what the path holds for the reader that does not read
    /// (a 256 KiB write blocked midway is not counted).
    held_bytes: u64,
}

/// Resident memory of the server and client roles, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct MemPair {
    server_kib: Option<u64>,
    client_kib: Option<u64>,
}

impl MemPair {
    fn total_kib(&self) -> Option<u64> {
        Some(self.server_kib? + self.client_kib?)
    }
}

#[derive(Debug, Default)]
struct Report {
    seconds: f64,
    nofile: u64,
    server_pid: u32,
    client_pid: u32,
    rows: Vec<Row>,
    mem_idle: Option<MemPair>,
    /// The anonymous part of `mem_idle`: the memory the processes own, without the code
    /// and library pages mapped from files (shared, and counted by VmRSS in each process).
    mem_idle_anon: Option<MemPair>,
    mem_streams: Option<MemPair>,
    mem_peak: Option<MemPair>,
    /// The stalled-stream workload (tunnel only): rows whose `direct` holds the figure before
    /// the other stream stalled and `tunnel` the figure while it is.
    stalled_rows: Vec<Row>,
    stall: Option<Stall>,
    mem_stalled: Option<MemPair>,
    cpu_upload: Option<f64>,
    cpu_download: Option<f64>,
    notes: Vec<String>,
    failed: bool,
}

impl Report {
    /// Record one rate, direct and through the tunnel; a failed side is noted and marks the
    /// run as failed.
    fn push(&mut self, key: &str, label: &str, direct: io::Result<f64>, tunnel: io::Result<f64>) {
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
    fn push_samples(
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
    fn sample_rows(
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
    fn memory(&self) -> [(&'static str, &'static str, Option<MemPair>); 5] {
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
    fn cpu(&self) -> [(&'static str, &'static str, Option<f64>); 2] {
        [
            ("upload, 1 stream", "upload", self.cpu_upload),
            ("download, 1 stream", "download", self.cpu_download),
        ]
    }

    /// The progress text of the last workload: its rate row and, after a request/response
    /// workload, its latency rows.
    fn last_row_text(&self) -> String {
        let n = match self.rows.last() {
            Some(last) if last.kind == Kind::Latency => 3.min(self.rows.len()),
            Some(_) => 1,
            None => 0,
        };
        rows_text(&self.rows[self.rows.len() - n..], ["direct", "tunnel"])
    }
}

/// The progress text of rows: a rate row as both figures and their ratio, a latency row as
/// both figures; `sides` names the figures of a rate row.
fn rows_text(rows: &[Row], sides: [&str; 2]) -> String {
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

/// Outcome of a bulk transfer.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    bytes: u64,
    secs: f64,
}

impl Transfer {
    fn gbits(self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e9
        } else {
            0.0
        }
    }
}

/// Outcome of a request/response or connection workload.
#[derive(Debug, Default)]
struct Samples {
    /// Latencies of the completed operations, in nanoseconds, sorted.
    lat_ns: Vec<u64>,
    secs: f64,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    /// Samples from unsorted latencies measured over `secs`.
    fn new(mut lat_ns: Vec<u64>, secs: f64) -> Samples {
        lat_ns.sort_unstable();
        Samples {
            lat_ns,
            secs,
            ..Samples::default()
        }
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.lat_ns.len() as f64 / self.secs
        } else {
            0.0
        }
    }

    fn percentile_us(&self, p: f64) -> Option<f64> {
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
fn cpu_per_gb(before: Option<u64>, after: Option<u64>, bytes: u64) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    if bytes == 0 {
        return None;
    }
    Some(ticks as f64 / clock_ticks_per_sec() / (bytes as f64 / 1e9))
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// A figure with about three significant digits, thousands grouped for large ones.
fn fmt_num(v: f64) -> String {
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

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn mem_text(m: Option<MemPair>) -> String {
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

/// The table printed on stdout.
fn render_table(r: &Report) -> String {
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

/// A JSON number, or `null` when missing or not finite.
fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let s = format!("{v:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s.is_empty() || s == "-" || s == "-0" {
                "0".to_string()
            } else {
                s.to_string()
            }
        }
        _ => "null".to_string(),
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The one JSON object printed with `--json`.
fn render_json(r: &Report) -> String {
    let rows_json = |rows: &[Row], sides: [&str; 2]| -> Vec<String> {
        rows.iter()
            .map(|row| {
                let mut o = format!(
                    "{}:{{\"{}\":{},\"{}\":{},\"ratio\":{}",
                    json_str(&row.key),
                    sides[0],
                    json_num(row.direct),
                    sides[1],
                    json_num(row.tunnel),
                    json_num(row.ratio())
                );
                if row.kind == Kind::Latency {
                    let added = row.direct.zip(row.tunnel).map(|(d, t)| t - d);
                    let _ = write!(o, ",\"added_us\":{}", json_num(added));
                }
                o.push('}');
                o
            })
            .collect()
    };
    let workloads = rows_json(&r.rows, ["direct", "tunnel"]);
    let mut stalled = rows_json(&r.stalled_rows, ["unstalled", "stalled"]);
    if let Some(st) = r.stall {
        stalled.push(format!(
            "\"stalled_after_s\":{}",
            json_num(Some(st.after_s))
        ));
        stalled.push(format!(
            "\"held_mib\":{}",
            json_num(Some(st.held_bytes as f64 / (1024.0 * 1024.0)))
        ));
    }
    let mib = |k: Option<u64>| json_num(k.map(|k| k as f64 / 1024.0));
    let memory: Vec<String> = r
        .memory()
        .into_iter()
        .filter_map(|(_, name, m)| {
            let m = m?;
            Some(format!(
                "\"{name}\":{{\"server\":{},\"client\":{},\"total\":{}}}",
                mib(m.server_kib),
                mib(m.client_kib),
                mib(m.total_kib())
            ))
        })
        .collect();
    let cpu: Vec<String> = r
        .cpu()
        .into_iter()
        .map(|(_, name, v)| format!("\"{name}\":{}", json_num(v)))
        .collect();
    let notes: Vec<String> = r.notes.iter().map(|n| json_str(n)).collect();
    format!(
        "{{\"seconds\":{},\"address\":\"127.0.0.1\",\"roles\":\"separate processes\",\"server_pid\":{},\"client_pid\":{},\"cores\":{},\"nofile_limit\":{},\"workloads\":{{{}}},\"stalled_stream\":{{{}}},\"memory_mib\":{{{}}},\"cpu_s_per_gb\":{{{}}},\"notes\":[{}],\"ok\":{}}}",
        json_num(Some(r.seconds)),
        r.server_pid,
        r.client_pid,
        cores(),
        r.nofile,
        workloads.join(","),
        stalled.join(","),
        memory.join(","),
        cpu.join(","),
        notes.join(","),
        !r.failed
    )
}

/// Cores available to this process (0 when unknown).
fn cores() -> usize {
    thread::available_parallelism().map_or(0, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Workloads (blocking sockets with timeouts, one thread per connection on the bench side)

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| context(e, &format!("connect to {addr}")))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn context(e: io::Error, what: &str) -> io::Error {
    let msg = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timed out"),
        io::ErrorKind::UnexpectedEof => format!("{what}: connection closed early"),
        _ => format!("{what}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// Write 256 KiB chunks to a sink for `dur`, then half-close and wait for the sink to close:
/// the time counts until the last byte has reached the target.
fn upload(addr: SocketAddr, dur: Duration) -> io::Result<Transfer> {
    let mut s = connect(addr)?;
    let buf = vec![0x5a_u8; CHUNK];
    let start = Instant::now();
    let deadline = start + dur;
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        s.write_all(&buf).map_err(|e| context(e, "upload: write"))?;
        bytes += CHUNK as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| context(e, "upload: shutdown"))?;
    io::copy(&mut s, &mut io::sink())
        .map_err(|e| context(e, "upload: waiting for the sink to confirm the end"))?;
    Ok(Transfer {
        bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Read 256 KiB at a time from a source for `dur`.
fn download(addr: SocketAddr, dur: Duration) -> io::Result<Transfer> {
    let mut s = connect(addr)?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let deadline = start + dur;
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "download: the source closed early",
                ));
            }
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(context(e, "download: read")),
        }
    }
    Ok(Transfer {
        bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Run `work` on one scoped thread per item and collect the results in order; a thread
/// that panicked yields `panicked()`.
fn in_threads<I: Send, T: Send>(
    items: impl IntoIterator<Item = I>,
    work: impl Fn(I) -> T + Sync,
    panicked: impl Fn() -> T,
) -> Vec<T> {
    let work = &work;
    thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panicked()))
            .collect()
    })
}

/// Eight uploads at once; the aggregate is all bytes over the longest stream's time.
fn parallel_upload(addr: SocketAddr, dur: Duration) -> io::Result<Transfer> {
    let results = in_threads(
        0..PARALLEL_STREAMS,
        |_| upload(addr, dur),
        || Err(io::Error::other("upload thread panicked")),
    );
    let mut total = Transfer {
        bytes: 0,
        secs: 0.0,
    };
    for r in results {
        let t = r?;
        total.bytes += t.bytes;
        total.secs = total.secs.max(t.secs);
    }
    Ok(total)
}

/// 64-byte request, 64-byte response, on `conns` connections each driven by its own thread.
fn request_response(addr: SocketAddr, conns: usize, dur: Duration) -> io::Result<Samples> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(connect(addr)?);
    }
    let start = Instant::now();
    let deadline = start + dur;
    let results = in_threads(
        streams,
        |s| rr_loop(s, deadline),
        || Err(io::Error::other("round-trip thread panicked")),
    );
    let secs = start.elapsed().as_secs_f64();
    let mut lat_ns = Vec::new();
    for r in results {
        lat_ns.extend(r?);
    }
    Ok(Samples::new(lat_ns, secs))
}

/// 64-byte request, 64-byte response, on `conns` connections driven by one mio loop in this
/// thread: each connection sends its next request as soon as its response is complete.
fn request_response_poll(addr: SocketAddr, conns: usize, dur: Duration) -> io::Result<Samples> {
    use mio::{Events, Interest, Poll, Token};
    struct Conn {
        sock: mio::net::TcpStream,
        sent_at: Instant,
        got: usize,
        done: bool,
    }
    let request = [0x42_u8; RR_SIZE];
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(conns.max(16));
    let mut table = Vec::with_capacity(conns);
    for i in 0..conns {
        let std_sock = connect(addr)?;
        std_sock.set_nonblocking(true)?;
        let mut sock = mio::net::TcpStream::from_std(std_sock);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)?;
        table.push(Conn {
            sock,
            sent_at: Instant::now(),
            got: 0,
            done: false,
        });
    }
    let start = Instant::now();
    let deadline = start + dur;
    for c in &mut table {
        send_request(&mut c.sock, &request)?;
        c.sent_at = Instant::now();
    }
    let mut lat_ns = Vec::with_capacity(4096);
    let mut response = [0u8; RR_SIZE];
    let mut open = conns;
    while open > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        poll.poll(&mut events, Some(IO_TIMEOUT.min(deadline - now)))
            .or_else(|e| {
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        if events.is_empty() && Instant::now() < deadline {
            let stalled = table
                .iter()
                .filter(|c| !c.done)
                .map(|c| c.sent_at.elapsed())
                .max();
            if stalled.is_some_and(|d| d >= IO_TIMEOUT) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "round trip: no response for 5 s",
                ));
            }
        }
        for event in &events {
            let Some(c) = table.get_mut(event.token().0) else {
                continue;
            };
            // Edge-triggered: read until the socket would block.
            while !c.done {
                match c.sock.read(&mut response[c.got..]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "round trip: connection closed early",
                        ));
                    }
                    Ok(n) => {
                        c.got += n;
                        if c.got < RR_SIZE {
                            continue;
                        }
                        if response != request {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "round trip: the echo came back altered",
                            ));
                        }
                        let now = Instant::now();
                        lat_ns.push(duration_ns(now - c.sent_at));
                        c.got = 0;
                        if now >= deadline {
                            c.done = true;
                            open -= 1;
                        } else {
                            send_request(&mut c.sock, &request)?;
                            c.sent_at = Instant::now();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(context(e, "round trip: read")),
                }
            }
        }
    }
    Ok(Samples::new(lat_ns, start.elapsed().as_secs_f64()))
}

/// Write one request on a non-blocking socket. With at most one 64-byte request in flight
/// per connection the send buffer always has room, so a short write is an error.
fn send_request(sock: &mut mio::net::TcpStream, request: &[u8]) -> io::Result<()> {
    loop {
        match sock.write(request) {
            Ok(n) if n == request.len() => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "round trip: short write",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(context(e, "round trip: write")),
        }
    }
}

fn rr_loop(mut s: TcpStream, deadline: Instant) -> io::Result<Vec<u64>> {
    let request = [0x42_u8; RR_SIZE];
    let mut response = [0u8; RR_SIZE];
    let mut lat = Vec::with_capacity(4096);
    loop {
        let t0 = Instant::now();
        if t0 >= deadline {
            return Ok(lat);
        }
        s.write_all(&request)
            .map_err(|e| context(e, "round trip: write"))?;
        s.read_exact(&mut response)
            .map_err(|e| context(e, "round trip: read"))?;
        if response != request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "round trip: the echo came back altered",
            ));
        }
        lat.push(duration_ns(t0.elapsed()));
    }
}

/// From 8 threads: connect, send 1 byte, read it back, close; as many times as fit in `dur`.
fn connection_rate(addr: SocketAddr, dur: Duration) -> io::Result<Samples> {
    let start = Instant::now();
    let deadline = start + dur;
    let parts = in_threads(
        0..CONNECT_THREADS,
        |_| connect_loop(addr, deadline),
        || Samples {
            errors: 1,
            first_error: Some("connection thread panicked".to_string()),
            ..Samples::default()
        },
    );
    let secs = start.elapsed().as_secs_f64();
    let (mut lat_ns, mut errors, mut first_error) = (Vec::new(), 0, None);
    for p in parts {
        lat_ns.extend(p.lat_ns);
        errors += p.errors;
        first_error = first_error.or(p.first_error);
    }
    if lat_ns.is_empty() {
        let why = first_error.unwrap_or_else(|| "no connection completed".to_string());
        return Err(io::Error::other(why));
    }
    // A few failures are reported as a note; many mean the figure is meaningless.
    if errors * 10 > lat_ns.len() as u64 {
        return Err(io::Error::other(format!(
            "{errors} of {} connections failed (first: {})",
            errors + lat_ns.len() as u64,
            first_error.unwrap_or_default()
        )));
    }
    Ok(Samples {
        errors,
        first_error,
        ..Samples::new(lat_ns, secs)
    })
}

fn connect_loop(addr: SocketAddr, deadline: Instant) -> Samples {
    let mut out = Samples::default();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        match connect_echo_close(addr) {
            Ok(()) => out.lat_ns.push(duration_ns(t0.elapsed())),
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
                // Back off a little: errors here are usually exhausted ports or a full backlog.
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    out
}

fn connect_echo_close(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| context(e, "connect"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    echo_byte(&mut s, 0x17)
}

/// Send one byte and expect it back.
fn echo_byte(s: &mut TcpStream, byte: u8) -> io::Result<()> {
    s.write_all(&[byte]).map_err(|e| context(e, "write"))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| context(e, "read"))?;
    if b[0] != byte {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo came back altered",
        ));
    }
    Ok(())
}

/// Open `n` connections, each verified with a 1-byte echo, and keep them open.
fn hold_streams(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpStream>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("only {i} streams opened in 30 s"),
            ));
        }
        let s = connect(addr)
            .and_then(|mut s| echo_byte(&mut s, 0x33).map(|()| s))
            .map_err(|e| io::Error::new(e.kind(), format!("stream {}: {e}", i + 1)))?;
        streams.push(s);
    }
    Ok(streams)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Polls the resident memory of both roles every 10 ms and keeps the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<MemPair>>,
}

impl RssSampler {
    fn start(pids: [u32; 2]) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("rss-sampler".to_string())
            .spawn(move || {
                let mut peak = MemPair::default();
                while !flag.load(Ordering::Relaxed) {
                    let now = read_rss_pair(pids);
                    peak.server_kib = peak.server_kib.max(now.server_kib);
                    peak.client_kib = peak.client_kib.max(now.client_kib);
                    thread::sleep(Duration::from_millis(10));
                }
                peak
            })
            .ok();
        RssSampler { stop, handle }
    }

    fn finish(mut self) -> Option<MemPair> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take()?.join().ok()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// /proc and limits

/// A `kB` field (`VmRSS`, `VmHWM`) of /proc/<pid>/status.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, field)
}

fn read_mem_pair(pids: [u32; 2], field: &str) -> MemPair {
    MemPair {
        server_kib: read_status_kib(pids[0], field),
        client_kib: read_status_kib(pids[1], field),
    }
}

fn read_rss_pair(pids: [u32; 2]) -> MemPair {
    read_mem_pair(pids, "VmRSS")
}

/// utime + stime, in clock ticks, from the text of /proc/<pid>/stat.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn cpu_ticks_pair(pids: [u32; 2]) -> Option<u64> {
    Some(cpu_ticks(pids[0])? + cpu_ticks(pids[1])?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

// ---------------------------------------------------------------------------------------------
// The environment: targets in threads, the two roles as child processes

/// Addresses of the echo, sink and source services.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    echo: SocketAddr,
    sink: SocketAddr,
    source: SocketAddr,
}

struct Env {
    targets: Targets,
    /// The target services through the tunnel: the server's public ports.
    public: Endpoints,
    // Field order matters for Drop: the client goes before the server, both before the files.
    client: Role,
    server: Role,
    _dir: TempDir,
}

/// Target services on loopback and a server and client (child processes of `exe`) carrying
/// them through a tunnel: what the criterion benches measure end to end.
pub struct Harness(Env);

impl Harness {
    pub fn start(exe: &Path) -> Result<Harness, String> {
        Env::start(Some(exe)).map(Harness)
    }

    fn endpoints(&self, tunnel: bool) -> Endpoints {
        if tunnel {
            self.0.public
        } else {
            self.0.targets.addr
        }
    }

    /// The echo service, directly or through the tunnel.
    pub fn echo(&self, tunnel: bool) -> SocketAddr {
        self.endpoints(tunnel).echo
    }

    /// The sink service (reads and discards), directly or through the tunnel.
    pub fn sink(&self, tunnel: bool) -> SocketAddr {
        self.endpoints(tunnel).sink
    }
}

impl Env {
    /// Start the targets and the roles; `exe` is this program when `None`.
    fn start(exe: Option<&Path>) -> Result<Env, String> {
        let targets = Targets::start()
            .map_err(|e| format!("cannot start the target servers on 127.0.0.1: {e}"))?;
        // Ports are picked by binding port 0 and released for the server: another program may
        // take one meanwhile, so a start where the server exits at once is retried with fresh
        // ports (a tunnel that never comes up is not retried: that would only repeat the wait).
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Env::start_roles(&targets, exe) {
                Ok((public, client, server, dir)) => {
                    return Ok(Env {
                        targets,
                        public,
                        client,
                        server,
                        _dir: dir,
                    });
                }
                Err(StartError { message, retry }) if !retry || attempt == 3 => {
                    return Err(message);
                }
                Err(_) => {}
            }
        }
    }

    fn start_roles(
        targets: &Targets,
        exe: Option<&Path>,
    ) -> Result<(Endpoints, Role, Role, TempDir), StartError> {
        let fatal = |message: String| StartError {
            message,
            retry: false,
        };
        let exe = match exe {
            Some(exe) => exe.to_path_buf(),
            None => std::env::current_exe()
                .map_err(|e| fatal(format!("cannot find this program's own path: {e}")))?,
        };
        let [inner, echo, sink, source] =
            free_ports().map_err(|e| fatal(format!("cannot pick free ports on 127.0.0.1: {e}")))?;
        let dir = TempDir::create()
            .map_err(|e| fatal(format!("cannot create a temporary directory: {e}")))?;
        let token = random_token().map_err(|e| fatal(format!("cannot make a bench token: {e}")))?;
        let cfg = dir.0.join("server.cfg");
        // The mapping file goes where the server looks without OUTER_PORTS_FILE.
        let cfg_text =
            format!("[DEFAULT]\nINNER_PORT={inner}\nBIND_ADDR=127.0.0.1\nTOKEN={token}\n");
        let t = targets.addr;
        let map_text = format!(
            "[MAPPER]\n{echo}={}\n{sink}={}\n{source}={}\n",
            t.echo, t.sink, t.source
        );
        std::fs::write(&cfg, cfg_text)
            .and_then(|()| std::fs::write(dir.0.join(DEFAULT_MAPPER_FILE), map_text))
            .map_err(|e| {
                fatal(format!(
                    "cannot write the bench configuration in {}: {e}",
                    dir.0.display()
                ))
            })?;

        let mut server_cmd = Command::new(&exe);
        server_cmd.arg("server").arg(&cfg).arg("-q");
        let mut server = Role::spawn("server", server_cmd).map_err(fatal)?;
        let inner_addr = loopback(inner);
        // The server exiting here is most likely a port taken since it was picked: retry.
        wait_until(
            &mut [&mut server],
            ATTACH_TIMEOUT,
            "listening on the inner port",
            || TcpStream::connect_timeout(&inner_addr, Duration::from_millis(500)).is_ok(),
        )
        .map_err(|(message, exited)| StartError {
            message,
            retry: exited,
        })?;
        // The public ports may be bound just after the inner one.
        thread::sleep(Duration::from_millis(20));

        let mut client_cmd = Command::new(&exe);
        client_cmd
            .arg("client")
            .arg("127.0.0.1")
            .arg(inner.to_string())
            .arg("-q");
        client_cmd.env("TCP_FORWARD_TOKEN", &token);
        let mut client = Role::spawn("client", client_cmd).map_err(fatal)?;
        let public = Endpoints {
            echo: loopback(echo),
            sink: loopback(sink),
            source: loopback(source),
        };
        let what = "working tunnel (a 1-byte echo through the public port)";
        wait_until(
            &mut [&mut server, &mut client],
            ATTACH_TIMEOUT,
            what,
            || probe_echo(public.echo),
        )
        .map_err(|(message, exited)| StartError {
            message,
            retry: exited && server.exited().is_some(),
        })?;
        Ok((public, client, server, dir))
    }

    /// `Err` with the role's last log lines when a role has exited.
    fn check_alive(&mut self, during: &str) -> Result<(), String> {
        for role in [&mut self.server, &mut self.client] {
            if let Some(status) = role.exited() {
                return Err(format!(
                    "the {} role exited ({status}) before {during}{}",
                    role.name,
                    role.tail_text()
                ));
            }
        }
        Ok(())
    }

    /// Stop both roles; returns notes on roles that did not exit cleanly on SIGTERM.
    fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for role in [&mut self.client, &mut self.server] {
            if let Some(note) = role.stop() {
                notes.push(note);
            }
        }
        notes
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Why the roles could not be started, and whether fresh ports might help.
struct StartError {
    message: String,
    retry: bool,
}

/// Poll `ready` every 50 ms until it holds, a role exits or `timeout` passes. The error says
/// whether a role exited.
fn wait_until(
    roles: &mut [&mut Role],
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), (String, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        for role in roles.iter_mut() {
            if let Some(status) = role.exited() {
                let msg = format!(
                    "the {} role exited ({status}) while waiting for a {what}{}",
                    role.name,
                    role.tail_text()
                );
                return Err((msg, true));
            }
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut msg = format!("no {what} after {} s", timeout.as_secs());
            for role in roles.iter() {
                let tail = role.tail_text();
                if !tail.is_empty() {
                    let _ = write!(msg, "\nlast lines of the {} role's log:{tail}", role.name);
                }
            }
            return Err((msg, false));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One byte through the echo service; false on any failure.
fn probe_echo(addr: SocketAddr) -> bool {
    let wait = Duration::from_millis(500);
    TcpStream::connect_timeout(&addr, wait)
        .and_then(|mut s| {
            s.set_read_timeout(Some(wait))?;
            echo_byte(&mut s, 0x01)
        })
        .is_ok()
}

/// `N` distinct ports the OS considers free on 127.0.0.1 right now.
fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    // All bound at once, so that they differ.
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// A fresh token for the bench's server and client.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    crate::net::sys::random_bytes(&mut bytes)?;
    let mut out = String::from("bench-");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> io::Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("tcp-forward-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A role running as a child process; its stderr is drained by a thread that keeps the last
/// lines. Dropping it stops the process.
struct Role {
    name: &'static str,
    child: Child,
    /// The last lines of its stderr, each with how many times in a row it came.
    tail: Arc<Mutex<VecDeque<(String, u32)>>>,
    status: Option<ExitStatus>,
    stopped: bool,
}

impl Role {
    fn spawn(name: &'static str, mut cmd: Command) -> Result<Role, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the bench process dies without running its guards (a signal, an abort), the
        // kernel sends SIGTERM to the role so that it never outlives the bench.
        // SAFETY: getpid is async-signal-safe; the hook below only calls prctl and getppid.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the hook runs between fork and exec and only makes async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0
                    || libc::getppid() != parent
                {
                    return Err(io::Error::other("the bench process is gone"));
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the {name} role: {e}"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let keep = Arc::clone(&tail);
            // The thread ends when the child's stderr closes (the child exited).
            let spawned = thread::Builder::new()
                .name(format!("{name}-stderr"))
                .spawn(move || drain_lines(stderr, &keep));
            if let Err(e) = spawned {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot start a thread for the {name} role: {e}"));
            }
        }
        Ok(Role {
            name,
            child,
            tail,
            status: None,
            stopped: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the process has ended.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last 10 lines of its stderr, each on a new line.
    fn tail_text(&self) -> String {
        let mut out = String::new();
        let Ok(tail) = self.tail.lock() else {
            return out;
        };
        for (line, count) in tail.iter().skip(tail.len().saturating_sub(10)) {
            let _ = write!(out, "\n  {}: {line}", self.name);
            if *count > 1 {
                let _ = write!(out, " (x{count})");
            }
        }
        out
    }

    /// SIGTERM, up to 2 s to exit, then SIGKILL. A note when the exit was not clean.
    fn stop(&mut self) -> Option<String> {
        if self.stopped {
            return None;
        }
        self.stopped = true;
        if let Some(status) = self.exited() {
            return Some(format!(
                "the {} role had already exited ({status})",
                self.name
            ));
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid()) {
            // SAFETY: plain signal to our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return None,
                Ok(Some(status)) => {
                    return Some(format!(
                        "the {} role exited with {status} on SIGTERM",
                        self.name
                    ));
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Some(format!(
            "the {} role did not exit within {} s of SIGTERM and was killed",
            self.name,
            STOP_TIMEOUT.as_secs()
        ))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn drain_lines(stderr: impl Read, keep: &Mutex<VecDeque<(String, u32)>>) {
    let mut reader = io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match io::BufRead::read_until(&mut reader, b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = strip_ansi(String::from_utf8_lossy(&line).trim_end());
                if let Ok(mut tail) = keep.lock() {
                    push_line(&mut tail, text);
                }
            }
        }
    }
}

/// Keep the last lines, a run of identical ones as one line with a count.
fn push_line(tail: &mut VecDeque<(String, u32)>, line: String) {
    if let Some((last, count)) = tail.back_mut()
        && *last == line
    {
        *count += 1;
        return;
    }
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back((line, 1));
}

/// Remove terminal colour sequences (ESC [ ... letter) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Target servers, in threads of the bench process

/// The echo (one mio loop), sink and source (a thread per connection) services.
struct Targets {
    addr: Endpoints,
    source_stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    echo_thread: Option<thread::JoinHandle<()>>,
}

/// What the connections of the source service have done: the stalled-stream workload watches
/// them come to a stop, and end once their reader closes.
#[derive(Debug, Default)]
struct SourceStats {
    /// Bytes written by all of them so far.
    written: AtomicU64,
    /// Connections whose thread has not ended yet.
    open: AtomicUsize,
}

impl Targets {
    fn start() -> io::Result<Targets> {
        let stop = Arc::new(AtomicBool::new(false));
        let echo_listener = mio::net::TcpListener::bind(loopback(0))?;
        let echo = echo_listener.local_addr()?;
        let flag = Arc::clone(&stop);
        let echo_thread = thread::Builder::new()
            .name("echo".to_string())
            .spawn(move || {
                if let Err(e) = echo_loop(echo_listener, &flag) {
                    eprintln!("bench: the echo service failed: {e}");
                }
            })?;
        // Built first so that an error below still stops the echo thread.
        let mut targets = Targets {
            addr: Endpoints {
                echo,
                sink: loopback(0),
                source: loopback(0),
            },
            source_stats: Arc::new(SourceStats::default()),
            stop,
            echo_thread: Some(echo_thread),
        };
        targets.addr.sink = spawn_acceptor("sink", Arc::clone(&targets.stop), sink_conn)?;
        let stats = Arc::clone(&targets.source_stats);
        targets.addr.source = spawn_acceptor("source", Arc::clone(&targets.stop), move |s| {
            source_conn(s, &stats)
        })?;
        Ok(targets)
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept loops so they see the flag; they end on their own.
        for addr in [self.addr.sink, self.addr.source] {
            if addr.port() != 0 {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
            }
        }
        if let Some(h) = self.echo_thread.take() {
            let _ = h.join();
        }
    }
}

fn spawn_acceptor(
    name: &str,
    stop: Arc<AtomicBool>,
    serve: impl Fn(TcpStream) + Clone + Send + 'static,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(loopback(0))?;
    let addr = listener.local_addr()?;
    let conn_name = format!("{name}-conn");
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else {
                    // Out of descriptors or a connection reset before accept: try again shortly.
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let serve = serve.clone();
                let _ = thread::Builder::new()
                    .name(conn_name.clone())
                    .spawn(move || serve(conn));
            }
        })?;
    Ok(addr)
}

/// Read and discard until the peer closes, then close (which tells an uploader all arrived).
fn sink_conn(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; CHUNK];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Write 256 KiB chunks until the peer goes away (or a write stalls for 10 s), counting the
/// bytes written and the connections still open in `stats`.
fn source_conn(mut s: TcpStream, stats: &SourceStats) {
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let buf = vec![0xa5_u8; CHUNK];
    loop {
        match s.write(&buf) {
            Ok(0) => break,
            Ok(n) => {
                stats.written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(s);
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

const ECHO_LISTENER: mio::Token = mio::Token(usize::MAX);

/// A single-threaded echo server: every connection gets back what it sends.
fn echo_loop(mut listener: mio::net::TcpListener, stop: &AtomicBool) -> io::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    poll.registry()
        .register(&mut listener, ECHO_LISTENER, Interest::READABLE)?;
    let mut conns: slab::Slab<EchoConn> = slab::Slab::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == ECHO_LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let entry = conns.vacant_entry();
                            let token = Token(entry.key());
                            if poll
                                .registry()
                                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                entry.insert(EchoConn {
                                    sock,
                                    pending: Vec::new(),
                                });
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // Out of descriptors or an aborted connection: the rest stay queued.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = event.token().0;
            let close = conns.get_mut(key).is_some_and(|c| c.service(&mut buf));
            if close {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.sock);
            }
        }
    }
    Ok(())
}

struct EchoConn {
    sock: mio::net::TcpStream,
    /// Bytes read but not yet written back; reading pauses while any are pending.
    pending: Vec<u8>,
}

impl EchoConn {
    /// Flush, then read and echo until the socket would block. True when it should close.
    fn service(&mut self, buf: &mut [u8]) -> bool {
        loop {
            if !self.pending.is_empty() {
                match self.sock.write(&self.pending) {
                    Ok(0) => return true,
                    Ok(n) => {
                        self.pending.drain(..n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return true,
                }
            }
            match self.sock.read(buf) {
                Ok(0) => return true,
                Ok(n) => match self.sock.write(&buf[..n]) {
                    Ok(m) => self.pending.extend_from_slice(&buf[m..n]),
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        self.pending.extend_from_slice(&buf[..n]);
                    }
                    Err(_) => return true,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let hz = clock_ticks_per_sec();
        let ticks = hz.round() as u64; // one second of CPU
        let v = cpu_per_gb(Some(10), Some(10 + ticks), 2_000_000_000).unwrap_or(f64::NAN);
        assert!((v - 0.5 * ticks as f64 / hz).abs() < 1e-9, "{v}");
        assert_eq!(cpu_per_gb(None, Some(5), 100), None);
        assert_eq!(cpu_per_gb(Some(5), Some(4), 100), None);
        assert_eq!(cpu_per_gb(Some(5), Some(6), 0), None);
    }

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
        assert_eq!(json_num(Some(1.5)), "1.5");
        assert_eq!(json_num(Some(2.0)), "2");
        assert_eq!(json_num(Some(0.123_456)), "0.1235");
        assert_eq!(json_num(Some(-0.000_01)), "0");
        assert_eq!(json_num(Some(-3.25)), "-3.25");
        assert_eq!(json_num(Some(120.0)), "120");
        assert_eq!(json_num(Some(f64::NAN)), "null");
        assert_eq!(json_num(None), "null");
        assert_eq!(json_str("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn proc_status_and_stat_are_parsed() {
        let status = "Name:\ttcp-forward\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\nThreads:\t1\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(4096));
        assert_eq!(status_kib(status, "VmHWM"), Some(5120));
        assert_eq!(status_kib(status, "VmSwap"), None);
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat =
            "1234 (tcp (fwd) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 99 1000 200";
        assert_eq!(stat_cpu_ticks(stat), Some(22));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
        let own = cpu_ticks(std::process::id());
        assert!(own.is_some());
        assert!(read_status_kib(std::process::id(), "VmRSS").is_some_and(|kib| kib > 0));
        assert!(read_status_kib(std::process::id(), "RssAnon").is_some_and(|kib| kib > 0));
    }

    #[test]
    fn seconds_are_validated() {
        assert_eq!(parse_seconds("2"), Ok(2.0));
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("two").is_err());
    }

    #[test]
    fn repeated_log_lines_are_counted() {
        let mut tail = VecDeque::new();
        for line in ["a", "b", "b", "b", "a"] {
            push_line(&mut tail, line.to_string());
        }
        let got: Vec<(&str, u32)> = tail.iter().map(|(l, c)| (l.as_str(), *c)).collect();
        assert_eq!(got, [("a", 1), ("b", 3), ("a", 1)]);
        for i in 0..100 {
            push_line(&mut tail, i.to_string());
        }
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.back().map(|(l, _)| l.as_str()), Some("99"));
    }

    #[test]
    fn colour_sequences_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m boom"), "ERROR boom");
        assert_eq!(strip_ansi("plain [text]"), "plain [text]");
    }

    fn sample_report() -> Report {
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
        let text = r.last_row_text();
        assert_eq!(
            text,
            "direct 100, tunnel 50.0 (ratio 0.50); p50 10.0 -> 20.0 µs; p99 10.0 -> 20.0 µs"
        );
        let keys: Vec<&str> = r.stalled_rows.iter().map(|row| row.key.as_str()).collect();
        assert_eq!(keys, ["rr1_per_s", "rr1_p50_us", "rr1_p99_us"]);
        assert_eq!(r.stalled_rows[0].ratio(), Some(0.9));
        assert_eq!(
            rows_text(&r.stalled_rows, ["unstalled", "stalled"]),
            "unstalled 100, stalled 90.0 (ratio 0.90); p50 30.0 -> 40.0 µs; p99 30.0 -> 40.0 µs"
        );
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
    fn json_is_one_balanced_object() {
        let json = render_json(&sample_report());
        assert!(json.starts_with('{') && json.ends_with('}'));
        assert!(!json.contains('\n'));
        let mut depth = 0i32;
        let mut in_str = false;
        let mut escaped = false;
        for c in json.chars() {
            match (in_str, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => in_str = false,
                (false, _, '"') => in_str = true,
                (false, _, '{' | '[') => depth += 1,
                (false, _, '}' | ']') => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0);
        }
        assert_eq!(depth, 0);
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
        assert!(json.ends_with("\"ok\":false}"));
    }

    #[test]
    fn random_tokens_differ() {
        let a = random_token().expect("token");
        let b = random_token().expect("token");
        assert_eq!(a.len(), "bench-".len() + 64);
        assert_ne!(a, b);
    }

    #[test]
    fn targets_serve_echo_sink_and_source_on_loopback() {
        let targets = Targets::start().expect("targets start on 127.0.0.1");
        assert!(probe_echo(targets.addr.echo));
        let short = Duration::from_millis(50);
        let up = upload(targets.addr.sink, short).expect("upload to the sink");
        assert!(up.bytes >= CHUNK as u64);
        let down = download(targets.addr.source, short).expect("download from the source");
        assert!(down.bytes > 0);
        let par = parallel_upload(targets.addr.sink, short).expect("parallel upload");
        assert!(par.bytes >= (PARALLEL_STREAMS * CHUNK) as u64);
        let rr = request_response(targets.addr.echo, 3, short).expect("round trips");
        assert!(!rr.lat_ns.is_empty());
        assert!(rr.lat_ns.windows(2).all(|w| w[0] <= w[1]));
        let polled =
            request_response_poll(targets.addr.echo, 5, short).expect("polled round trips");
        assert!(polled.lat_ns.len() >= 5);
        assert!(polled.lat_ns.windows(2).all(|w| w[0] <= w[1]));
        let conns = connection_rate(targets.addr.echo, short).expect("connection rate");
        assert!(!conns.lat_ns.is_empty());
        let held = hold_streams(targets.addr.echo, 20).expect("idle streams");
        assert_eq!(held.len(), 20);
    }

    #[test]
    fn a_stream_never_read_stalls_and_its_source_ends_when_it_closes() {
        let targets = Targets::start().expect("targets start on 127.0.0.1");
        let stats = &targets.source_stats;
        let (stream, stall) =
            open_stalled(targets.addr.source, stats).expect("the unread stream stalls");
        assert!(stall.held_bytes > 0);
        assert!(stall.after_s < STALL_LIMIT.as_secs_f64());
        assert!(queued_bytes(&stream).is_some_and(|q| q > 0));
        assert_eq!(stats.open.load(Ordering::Relaxed), 1);
        drop(stream);
        wait_sources_ended(stats, SOURCE_END_TIMEOUT)
            .expect("the source connection ends once its reader closes");
    }

    #[test]
    fn nofile_limit_is_at_least_the_old_soft_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let now = crate::net::sys::raise_nofile_limit().expect("open-file limit");
        assert!(now >= lim.rlim_cur);
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::create().expect("temporary directory");
        let path = dir.0.clone();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }
}
