//! `tcp-forward bench`: measure the tunnel against direct loopback on this machine.
//!
//! The server and client roles run as separate child processes of this same binary, so their
//! resident memory and CPU time can be read from `/proc/<pid>`; the target servers (echo, sink,
//! source) run in threads of the bench process on 127.0.0.1, on ports chosen by the OS ([`env`]).
//! Every workload runs twice in the same run: directly (bench thread -> target) and through the
//! tunnel (bench thread -> public port -> server -> tunnel -> client -> target); the table shows
//! both figures and the tunnel/direct ratio. One workload runs through the tunnel only, since a
//! direct path has no shared tunnel to stall ([`stalled`]).
//!
//! Everything is bounded: each workload stops after its duration, every socket has read and
//! write timeouts, and the roles are stopped (SIGTERM, then SIGKILL) on every path out.
//!
//! - this file: the command line, the choice and order of the workloads;
//! - [`workloads`] and [`stalled`]: what each workload does and measures;
//! - [`report`]: the figures (rows, samples, memory, CPU, notes); [`render`]: table and JSON;
//! - [`env`]: the targets and the two roles; [`harness`]: the pieces the integration tests
//!   share (temporary directories, free ports, child processes, /proc, target servers).

use std::thread;
use std::time::Duration;

use clap::ValueEnum as _;

mod env;
pub mod harness;
mod render;
mod report;
mod stalled;
mod workloads;

pub use env::Harness;

use env::Env;
use render::{last_rows_text, mem_text, render_json, render_table};
use report::{MemPair, Report, Transfer};
use workloads::RssSampler;

/// Connections in the many-connection request/response workload.
const RR_CONNS: usize = 50;

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
    report.mem_idle = Some(MemPair::rss(pids));
    report.mem_idle_anon = Some(MemPair::read(pids, "RssAnon"));
    eprintln!("bench: memory, idle: {}", mem_text(report.mem_idle));

    for &workload in workloads {
        let (during, title) = workload.names();
        env.check_alive(during)?;
        eprint!("bench: {title}: ");
        match workload {
            Workload::Upload => {
                let (d, t, cpu) =
                    workloads::bulk(workloads::upload, direct.sink, tunnel.sink, duration, pids);
                report.cpu_upload = cpu;
                report.push("upload_gbps", "upload, 1 stream (Gbit/s)", d, t);
            }
            Workload::Download => {
                let (d, t, cpu) = workloads::bulk(
                    workloads::download,
                    direct.source,
                    tunnel.source,
                    duration,
                    pids,
                );
                report.cpu_download = cpu;
                report.push("download_gbps", "download, 1 stream (Gbit/s)", d, t);
            }
            Workload::Parallel => {
                let d = workloads::parallel_upload(direct.sink, duration);
                let sampler = RssSampler::start(pids);
                let t = workloads::parallel_upload(tunnel.sink, duration);
                report.mem_peak = sampler.finish();
                let (d, t) = (d.map(Transfer::gbits), t.map(Transfer::gbits));
                report.push("parallel8_gbps", "upload, 8 streams (Gbit/s)", d, t);
            }
            Workload::Rr1 => {
                let d = workloads::request_response(direct.echo, 1, duration);
                let t = workloads::request_response(tunnel.echo, 1, duration);
                report.push_samples("rr1", "64 B round trips, 1 conn", d, t);
            }
            Workload::Rr50 => {
                let d = workloads::request_response_poll(direct.echo, RR_CONNS, duration);
                let t = workloads::request_response_poll(tunnel.echo, RR_CONNS, duration);
                report.push_samples("rr50", "64 B round trips, 50 conns", d, t);
            }
            Workload::Connect => {
                let d = workloads::connection_rate(direct.echo, duration);
                // Let the sockets of the direct run leave the accept queues before the tunnel run.
                thread::sleep(Duration::from_millis(100));
                let t = workloads::connection_rate(tunnel.echo, duration);
                report.push_samples("connect", "connect+echo+close, 8 thr", d, t);
            }
            Workload::Streams => {
                workloads::idle_streams(tunnel.echo, pids, report);
                continue;
            }
            Workload::Stalled => {
                stalled::stalled_stream(tunnel, &env.targets, duration, pids, report);
                continue;
            }
        }
        eprintln!("{}", last_rows_text(report));
    }
    env.check_alive("the end of the run")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn nofile_limit_is_at_least_the_old_soft_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let now = crate::net::sys::raise_nofile_limit().expect("open-file limit");
        // rlim_t is unsigned on Linux and macOS, signed on the BSDs.
        assert!(i128::from(now) >= i128::from(lim.rlim_cur));
    }
}
