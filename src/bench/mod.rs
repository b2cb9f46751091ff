//! `tcp-forward bench`: measure the tunnel against direct loopback on this machine.
//!
//! The server and client roles run as separate child processes of this same binary, so their
//! resident memory and CPU time can be read from `/proc/<pid>`; the target servers (echo, sink,
//! source) run in threads of the bench process on 127.0.0.1, on ports chosen by the OS ([`env`]).
//! Every workload runs directly (bench thread -> target) and then through each tunnel measured
//! (bench thread -> public port -> server -> tunnel -> client -> target): a plain one and a TLS
//! one by default (`--tls both`), each with a server and client of its own, both running for the
//! whole run; the table shows the figures side by side with the tunnel/direct and TLS/plain
//! ratios. Two workloads run through the tunnels only: the stalled stream, since a direct path
//! has no shared tunnel to stall ([`stalled`]), and the set-up time, which starts each tunnel's
//! client again.
//!
//! Everything is bounded: each workload stops after its duration, every socket has read and
//! write timeouts, and the roles are stopped (SIGTERM, then SIGKILL) on every path out.
//!
//! - this file: the command line, the choice and order of the workloads;
//! - [`workloads`] and [`stalled`]: what each workload does and measures;
//! - [`report`]: the figures (rows, samples, memory, CPU, notes); [`render`]: table and JSON;
//! - [`env`]: the targets and the two roles; [`harness`]: the pieces the integration tests
//!   share (temporary directories, free ports, child processes, /proc, target servers).

use std::io;
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use clap::ValueEnum as _;

mod env;
pub mod harness;
mod render;
mod report;
mod stalled;
mod udp;
mod workloads;

pub use env::Harness;

use env::Env;
use harness::Endpoints;
use render::{mem_text, render_json, render_table, rows_since_text};
use report::{ByTunnel, Kind, LimitFigures, MemPair, Report, Setup, Transfer, Tunnel};
use workloads::{IdleStreams, RssSampler};

/// Connections in the many-connection request/response workload, and flows in its UDP one.
const RR_CONNS: usize = 50;
/// Client starts timed by the set-up workload, for each tunnel.
const SETUP_STARTS: usize = 5;
/// The bandwidth-limit workload runs each way for this many times `--seconds`...
const LIMIT_FACTOR: f64 = 5.0;
/// ...and no longer than this (10 s with the default 2 s).
const LIMIT_SECONDS: f64 = 10.0;

/// Options of `tcp-forward bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds per workload, run once directly and once through each tunnel
    #[arg(long, value_name = "N", default_value_t = 2.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// The tunnels measured beside direct loopback: on (TLS), off (plain TCP) or both
    #[arg(long, value_enum, value_name = "on|off|both", default_value_t = TlsMode::Both)]
    pub tls: TlsMode,
    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// Run only this workload (repeatable; default: all)
    #[arg(long, value_enum, value_name = "WORKLOAD")]
    pub only: Vec<Workload>,
    /// For scripts/compare-peers.sh: serve the UDP echo and sink on ports ECHO and SINK of
    /// 127.0.0.1, measure 1-flow round trips through PUBLIC_ECHO and the rate under 1 % loss
    /// through PUBLIC_SINK (the same ports for direct), and print one line of figures
    #[arg(long, hide = true, value_name = "ECHO,SINK,PUBLIC_ECHO,PUBLIC_SINK", value_parser = parse_ports::<4>)]
    pub udp_peer: Option<[u16; 4]>,
    /// With --udp-peer: serve a TCP echo on port TCP_ECHO of 127.0.0.1 and time round trips
    /// through PUBLIC_TCP_ECHO alone and beside a UDP flood through PUBLIC_SINK
    #[arg(long, hide = true, requires = "udp_peer", value_name = "TCP_ECHO,PUBLIC_TCP_ECHO", value_parser = parse_ports::<2>)]
    pub tcp_echo_peer: Option<[u16; 2]>,
}

/// What `--tls` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// The TLS tunnel only
    On,
    /// The plain tunnel only
    Off,
    /// A plain and a TLS tunnel, side by side
    Both,
}

impl TlsMode {
    fn tunnels(self) -> Vec<Tunnel> {
        match self {
            TlsMode::On => vec![Tunnel::Tls],
            TlsMode::Off => vec![Tunnel::Plain],
            TlsMode::Both => vec![Tunnel::Plain, Tunnel::Tls],
        }
    }
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
    /// 64-byte UDP round trips on 1 flow (a request unanswered in 200 ms is lost and sent
    /// again)
    UdpRr1,
    /// 64-byte UDP round trips on 50 flows
    UdpRr50,
    /// 1,200-byte UDP datagrams: the highest rate under 1 % loss (a search in steps of a
    /// quarter of --seconds), and the loss at 2,000 Mbit/s
    UdpRate,
    /// 64-byte round trips on 1 connection alone and beside a 500 Mbit/s UDP flood through
    /// the same tunnel
    UdpFlood,
    /// A port limited to 100 mbit, each way for 5 times --seconds (10 s at most), beside an
    /// unlimited one
    Limit,
    /// Tunnel set-up time: the client started again, until the first echo through it
    Setup,
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

/// `N` ports, comma-separated.
fn parse_ports<const N: usize>(s: &str) -> Result<[u16; N], String> {
    let ports: Vec<u16> = s
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|&p| p > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{s:?}: ports are numbers from 1 to 65535"))?;
    ports
        .try_into()
        .map_err(|_| format!("{s:?}: {N} ports, comma-separated"))
}

/// Run the benchmark; returns the process exit code (0 all went well, 1 a failure).
pub fn run(args: BenchArgs) -> u8 {
    if let Some(ports) = args.udp_peer {
        return udp::peer(
            ports,
            args.tcp_echo_peer,
            Duration::from_secs_f64(args.seconds),
        );
    }
    // Children inherit the raised limit.
    let nofile = crate::net::sys::raise_nofile_limit().unwrap_or(0);
    let tunnels = args.tls.tunnels();
    let mut envs: ByTunnel<Env> = ByTunnel::default();
    let mut report = Report {
        seconds: args.seconds,
        nofile,
        tunnels: tunnels.clone(),
        ..Report::default()
    };
    for &t in &tunnels {
        match Env::start(None, t) {
            Ok(env) => {
                let f = report.figures_mut(t);
                f.server_pid = env.server.pid();
                f.client_pid = env.client.pid();
                eprintln!(
                    "bench: {} tunnel: server (pid {}) and client (pid {}) roles running as separate processes; tunnel attached",
                    t.name(),
                    f.server_pid,
                    f.client_pid
                );
                envs.set(t, env);
            }
            Err(e) => {
                eprintln!("tcp-forward bench: {} tunnel: {e}", t.name());
                return 1;
            }
        }
    }

    let selected = |w: &Workload| args.only.is_empty() || args.only.contains(w);
    let workloads: Vec<Workload> = Workload::value_variants()
        .iter()
        .copied()
        .filter(selected)
        .collect();
    let duration = Duration::from_secs_f64(args.seconds);
    let outcome = run_workloads(&mut envs, duration, &workloads, &mut report);
    for (t, env) in envs.iter_mut() {
        let notes = env.stop();
        report.notes.extend(
            notes
                .into_iter()
                .map(|n| format!("{} tunnel: {n}", t.name())),
        );
    }
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
            Workload::UdpRr1 => (
                "the 1-flow UDP round-trip workload",
                "UDP 64 B round trips, 1 flow",
            ),
            Workload::UdpRr50 => (
                "the 50-flow UDP round-trip workload",
                "UDP 64 B round trips, 50 flows",
            ),
            Workload::UdpRate => (
                "the UDP rate workload",
                "UDP 1,200 B datagrams, highest rate under 1 % loss, and the loss at 2,000 Mbit/s",
            ),
            Workload::UdpFlood => (
                "the UDP flood workload",
                "64 B round trips, 1 connection, alone and beside a 500 Mbit/s UDP flood",
            ),
            Workload::Setup => ("the set-up workload", "tunnel set-up, client started again"),
            Workload::Limit => (
                "the bandwidth-limit workload",
                "a port limited to 100 mbit, beside an unlimited one",
            ),
        }
    }
}

/// The roles' pids of a tunnel: server, client.
fn pids(env: &Env) -> [u32; 2] {
    [env.server.pid(), env.client.pid()]
}

/// Run the workloads in order, each directly and then through each tunnel. `Err` means the
/// run cannot go on (a role died); a single workload's failure is recorded in the report and
/// the run continues.
fn run_workloads(
    envs: &mut ByTunnel<Env>,
    duration: Duration,
    workloads: &[Workload],
    report: &mut Report,
) -> Result<(), String> {
    let Some((_, first)) = envs.iter().next() else {
        return Ok(());
    };
    let direct = first.targets.addr;
    thread::sleep(Duration::from_millis(100));
    for (t, env) in envs.iter() {
        let f = report.figures_mut(t);
        f.mem_idle = Some(MemPair::rss(pids(env)));
        f.mem_idle_anon = Some(MemPair::read(pids(env), "RssAnon"));
        eprintln!(
            "bench: {} tunnel: memory, idle: {}",
            t.name(),
            mem_text(f.mem_idle)
        );
    }

    for &workload in workloads {
        let (during, title) = workload.names();
        for (t, env) in envs.iter_mut() {
            env.check_alive(during)
                .map_err(|e| format!("{} tunnel: {e}", t.name()))?;
        }
        eprint!("bench: {title}: ");
        let rows_before = report.rows.len();
        match workload {
            Workload::Upload => {
                let (d, through) = bulk(envs, direct.sink, |e| e.sink, workloads::upload, duration);
                for (t, (_, cpu)) in through.iter() {
                    report.figures_mut(t).cpu_upload = *cpu;
                }
                let through = through.into_map(|(gbits, _)| gbits);
                report.push("upload_gbps", "upload, 1 stream (Gbit/s)", d, through);
            }
            Workload::Download => {
                let (d, through) = bulk(
                    envs,
                    direct.source,
                    |e| e.source,
                    workloads::download,
                    duration,
                );
                for (t, (_, cpu)) in through.iter() {
                    report.figures_mut(t).cpu_download = *cpu;
                }
                let through = through.into_map(|(gbits, _)| gbits);
                report.push("download_gbps", "download, 1 stream (Gbit/s)", d, through);
            }
            Workload::Parallel => {
                let d = workloads::parallel_upload(direct.sink, duration);
                let through = envs.map(|_, env| {
                    let sampler = RssSampler::start(pids(env));
                    let r = workloads::parallel_upload(env.public.sink, duration);
                    (r.map(Transfer::gbits), sampler.finish())
                });
                for (t, (_, peak)) in through.iter() {
                    report.figures_mut(t).mem_peak = *peak;
                }
                let gbits = through.into_map(|(gbits, _)| gbits);
                let d = d.map(Transfer::gbits);
                report.push("parallel8_gbps", "upload, 8 streams (Gbit/s)", d, gbits);
            }
            Workload::Rr1 => {
                let d = workloads::request_response(direct.echo, 1, duration);
                let t =
                    envs.map(|_, env| workloads::request_response(env.public.echo, 1, duration));
                report.push_samples("rr1", "64 B round trips, 1 conn", d, t);
            }
            Workload::Rr50 => {
                let d = workloads::request_response_poll(direct.echo, RR_CONNS, duration);
                let t = envs.map(|_, env| {
                    workloads::request_response_poll(env.public.echo, RR_CONNS, duration)
                });
                report.push_samples("rr50", "64 B round trips, 50 conns", d, t);
            }
            Workload::UdpRr1 | Workload::UdpRr50 => {
                let (flows, key, label) = match workload {
                    Workload::UdpRr1 => (1, "udp_rr1", "UDP 64 B round trips, 1 flow"),
                    _ => (RR_CONNS, "udp_rr50", "UDP 64 B round trips, 50 flows"),
                };
                let d = udp::request_response(direct.udp_echo, flows, duration);
                let t =
                    envs.map(|_, env| udp::request_response(env.public.udp_echo, flows, duration));
                report.push_samples(key, label, d, t);
            }
            Workload::UdpRate => {
                let steps = udp_rates(envs, udp::step_duration(duration), report);
                eprint!("{steps}; ");
            }
            Workload::UdpFlood => {
                let mut texts = Vec::new();
                for (t, env) in envs.iter() {
                    texts.push(format!(
                        "{}: {}",
                        t.name(),
                        udp_flood(t, env, duration, report)
                    ));
                }
                eprintln!("{}", texts.join("; "));
                continue;
            }
            Workload::Connect => {
                let d = workloads::connection_rate(direct.echo, duration);
                let t = envs.map(|_, env| {
                    // Let the sockets of the run before leave the accept queues.
                    thread::sleep(Duration::from_millis(100));
                    workloads::connection_rate(env.public.echo, duration)
                });
                report.push_samples("connect", "connect+echo+close, 8 thr", d, t);
            }
            Workload::Streams => {
                let mut texts = Vec::new();
                for (t, env) in envs.iter() {
                    let text =
                        match workloads::idle_streams(env.public.echo, pids(env), report.nofile) {
                            IdleStreams::Held(mem) => {
                                report.figures_mut(t).mem_streams = Some(mem);
                                mem_text(Some(mem))
                            }
                            IdleStreams::Skipped(why) => {
                                report.notes.push(why);
                                "skipped".to_string()
                            }
                            IdleStreams::Failed(e) => {
                                report.failed = true;
                                report.notes.push(format!(
                                    "1,000 idle streams through the {} tunnel: {e}",
                                    t.name()
                                ));
                                format!("failed: {e}")
                            }
                        };
                    texts.push(format!("{} {text}", t.name()));
                    if text == "skipped" {
                        break;
                    }
                }
                eprintln!("{}", texts.join("; "));
                continue;
            }
            Workload::Stalled => {
                let mut texts = Vec::new();
                for (t, env) in envs.iter() {
                    let text = stalled::stalled_stream(
                        t,
                        env.public,
                        &env.targets,
                        duration,
                        pids(env),
                        report,
                    );
                    texts.push(format!("{}: {text}", t.name()));
                }
                eprintln!("{}", texts.join("; "));
                continue;
            }
            Workload::Limit => {
                // Through one tunnel (plain when both run): the limit is the server's, the
                // same whatever carries the bytes, and 10 s each way is long enough.
                let Some((t, env)) = envs.iter().next() else {
                    continue;
                };
                let seconds = (duration.as_secs_f64() * LIMIT_FACTOR).min(LIMIT_SECONDS);
                let figures = limit_figures(t, env, Duration::from_secs_f64(seconds), report);
                eprintln!("{}", render::limit_text(&figures));
                report.limit = Some(figures);
                continue;
            }
            Workload::Setup => {
                let mut texts = Vec::new();
                for (t, env) in envs.iter_mut() {
                    let (setup, error) = time_setup(env);
                    if let Some(e) = error {
                        report.failed = true;
                        report
                            .notes
                            .push(format!("tunnel set-up, {} tunnel: {e}", t.name()));
                    }
                    texts.push(format!(
                        "{} {} ms (server accepts client -> echo {} ms)",
                        t.name(),
                        render::opt_num(setup.spawn_median()),
                        render::opt_num(setup.connect_median())
                    ));
                    report.figures_mut(t).setup = Some(setup);
                }
                eprintln!("{}", texts.join("; "));
                continue;
            }
        }
        eprintln!("{}", rows_since_text(report, rows_before));
    }
    for (t, env) in envs.iter_mut() {
        env.check_alive("the end of the run")
            .map_err(|e| format!("{} tunnel: {e}", t.name()))?;
    }
    Ok(())
}

/// A transfer's Gbit/s and the CPU seconds per GB it cost the tunnel's roles.
type BulkFigures = (io::Result<f64>, Option<f64>);

/// A single-stream transfer directly to `direct`, then through each tunnel to the service
/// `service` picks, with the tunnel's CPU seconds per GB: (direct Gbit/s, per tunnel
/// (Gbit/s, CPU s/GB)).
fn bulk(
    envs: &ByTunnel<Env>,
    direct: SocketAddr,
    service: fn(&Endpoints) -> SocketAddr,
    work: fn(SocketAddr, Duration) -> io::Result<Transfer>,
    duration: Duration,
) -> (io::Result<f64>, ByTunnel<BulkFigures>) {
    let d = work(direct, duration).map(Transfer::gbits);
    let through = envs
        .map(|_, env| workloads::bulk_with_cpu(work, service(&env.public), duration, pids(env)));
    (d, through)
}

/// The UDP rate workload directly and through each tunnel, into rows; returns the steps of
/// each path's search, as text.
fn udp_rates(envs: &ByTunnel<Env>, step: Duration, report: &mut Report) -> String {
    let Some((_, first)) = envs.iter().next() else {
        return String::new();
    };
    let sink = &first.targets;
    let d = udp::rates(sink.addr.udp_sink, sink.udp_received(), step);
    let t = envs.map(|_, env| udp::rates(env.public.udp_sink, env.targets.udp_received(), step));
    let label = "UDP 1,200 B, highest rate under 1 % loss (Mbit/s)";
    let [d, plain, tls] = report.take_all(label, d, t);
    let sides = [("direct", &d), ("plain", &plain), ("TLS", &tls)];
    let mut texts = Vec::new();
    for (side, r) in sides {
        let Some(r) = r else { continue };
        texts.push(format!("{side} steps {}", render::steps_text(&r.steps)));
        match r.best {
            None => {
                report.failed = true;
                report.notes.push(format!(
                    "{label}, {side}: every rate tried lost 1 % or more ({})",
                    render::steps_text(&r.steps)
                ));
            }
            Some(best) if r.sender_limited => report.notes.push(format!(
                "{label}, {side}: the sender's ceiling, {} Mbit/s, lost under 1 %: the path may carry more",
                render::fmt_num(best.sent.mbit())
            )),
            Some(_) => {}
        }
    }
    let fig =
        |f: &dyn Fn(&udp::Rates) -> Option<f64>| [&d, &plain, &tls].map(|r| r.as_ref().and_then(f));
    report.push_figures(
        "udp_max_mbit",
        label,
        Kind::Rate,
        fig(&|r| r.best.map(|b| b.sent.mbit())),
    );
    report.push_figures(
        "udp_max_per_s",
        "UDP 1,200 B, that rate (datagrams/s)",
        Kind::Rate,
        fig(&|r| r.best.map(|b| b.per_s())),
    );
    let fixed = render::fmt_num(udp::FIXED_MBIT);
    report.push_figures(
        "udp_fixed_sent_mbit",
        &format!("UDP 1,200 B, {fixed} Mbit/s asked: sent (Mbit/s)"),
        Kind::Count,
        fig(&|r| Some(r.fixed.sent.mbit())),
    );
    report.push_figures(
        "udp_fixed_loss_pct",
        &format!("UDP 1,200 B, {fixed} Mbit/s asked: lost (%)"),
        Kind::Count,
        fig(&|r| Some(r.fixed.loss() * 100.0)),
    );
    texts.join("; ")
}

/// The flood workload through tunnel `t`: 64-byte round trips on one connection alone, then
/// beside a UDP flood of [`udp::FLOOD_MBIT`] to the sink through the same tunnel; the rows
/// and the flood's figures go to those of `t`. Returns the progress text.
fn udp_flood(t: Tunnel, env: &Env, dur: Duration, report: &mut Report) -> String {
    let udp::BesideFlood {
        alone,
        beside,
        flood,
    } = udp::beside_flood(
        env.public.echo,
        env.public.udp_sink,
        env.targets.udp_received(),
        dur,
    );
    let sides = ["alone", "beside the flood"];
    let label = "64 B round trips, 1 conn";
    let rows = report.paired_rows(t, sides, "rr1", label, alone, beside);
    let mut text = render::rows_text(&rows, sides);
    match flood {
        Ok(step) => {
            text.push_str(&format!("; flood: {}", render::flood_text(&step)));
            report.figures_mut(t).flood = Some(step);
        }
        Err(e) => {
            report.failed = true;
            report
                .notes
                .push(format!("UDP flood, {} tunnel: {e}", t.name()));
        }
    }
    report.figures_mut(t).flood_rows = rows;
    text
}

/// The limited port's rate each way for `dur`, with an unlimited port of the same tunnel
/// moving as fast as it can at the same time. A failed side is noted and fails the run.
fn limit_figures(t: Tunnel, env: &Env, dur: Duration, report: &mut Report) -> LimitFigures {
    let mut side = |label: &str,
                    work: fn(SocketAddr, Duration) -> io::Result<Transfer>,
                    limited: SocketAddr,
                    free: SocketAddr| {
        let (limited, free) = thread::scope(|scope| {
            let limited = scope.spawn(move || work(limited, dur));
            let free = work(free, dur);
            let limited = limited
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked")));
            (limited, free)
        });
        match (limited, free) {
            (Ok(l), Ok(f)) => Some((l.gbits() * 1e3, f.gbits())),
            (l, f) => {
                report.failed = true;
                for (what, r) in [("limited port", l), ("unlimited port", f)] {
                    if let Err(e) = r {
                        report
                            .notes
                            .push(format!("bandwidth limit, {label}, {what}: {e}"));
                    }
                }
                None
            }
        }
    };
    let up = side(
        "upload",
        workloads::upload,
        env.limited.sink,
        env.public.sink,
    );
    let down = side(
        "download",
        workloads::download,
        env.limited.source,
        env.public.source,
    );
    LimitFigures {
        tunnel: t,
        limit_mbit: env::LIMIT_MBIT as f64,
        seconds: dur.as_secs_f64(),
        up,
        down,
    }
}

/// Start a tunnel's client again `SETUP_STARTS` times, timing each; stops at the first
/// failure, which it returns beside the times so far.
fn time_setup(env: &mut Env) -> (Setup, Option<String>) {
    let (mut spawn, mut connect) = (Vec::new(), Vec::new());
    let mut error = None;
    for _ in 0..SETUP_STARTS {
        match env.restart_client() {
            Ok(times) => {
                spawn.push(times.spawn_to_echo.as_secs_f64() * 1e3);
                if let Some(c) = times.connect_to_echo {
                    connect.push(c.as_secs_f64() * 1e3);
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    (Setup::new(spawn, connect), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// `tcp-forward bench ARGS...` as the command line parses it.
    fn parse(args: &[&str]) -> Result<BenchArgs, String> {
        let argv = ["tcp-forward", "bench"].iter().chain(args);
        match crate::cli::Cli::try_parse_from(argv) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Bench(b),
            }) => Ok(b),
            Ok(other) => Err(format!("not the bench: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn tls_defaults_to_both_tunnels() {
        let b = parse(&[]).expect("bench without options");
        assert_eq!(b.tls, TlsMode::Both);
        assert_eq!(b.tls.tunnels(), [Tunnel::Plain, Tunnel::Tls]);
        assert_eq!(b.seconds, 2.0);
        assert!(!b.json);
        assert!(b.only.is_empty());
        assert_eq!(b.udp_peer, None);
        let b = parse(&["--udp-peer", "1,2,3,4"]).expect("--udp-peer");
        assert_eq!(b.udp_peer, Some([1, 2, 3, 4]));
        for bad in ["1,2,3", "1,2,3,4,5", "0,1,2,3", "a,b,c,d"] {
            assert!(parse(&["--udp-peer", bad]).is_err(), "{bad}");
        }
        assert_eq!(b.tcp_echo_peer, None);
        let b = parse(&["--udp-peer", "1,2,3,4", "--tcp-echo-peer", "5,6"]).expect("both");
        assert_eq!(b.tcp_echo_peer, Some([5, 6]));
        for bad in ["5", "5,6,7", "0,6", "5,x"] {
            let args = ["--udp-peer", "1,2,3,4", "--tcp-echo-peer", bad];
            assert!(parse(&args).is_err(), "{bad}");
        }
        // The TCP pair only goes with the UDP ports.
        assert!(parse(&["--tcp-echo-peer", "5,6"]).is_err());
    }

    #[test]
    fn tls_on_off_and_both_pick_the_tunnels() {
        for (arg, mode, tunnels) in [
            ("on", TlsMode::On, vec![Tunnel::Tls]),
            ("off", TlsMode::Off, vec![Tunnel::Plain]),
            ("both", TlsMode::Both, vec![Tunnel::Plain, Tunnel::Tls]),
        ] {
            let b = parse(&["--tls", arg]).expect(arg);
            assert_eq!(b.tls, mode, "--tls {arg}");
            assert_eq!(b.tls.tunnels(), tunnels, "--tls {arg}");
            let b = parse(&[&format!("--tls={arg}"), "--json"]).expect(arg);
            assert_eq!(b.tls, mode, "--tls={arg}");
        }
        for bad in ["yes", "ON", "", "tls"] {
            let e = parse(&["--tls", bad]).expect_err(bad);
            assert!(e.contains("possible values: on, off, both"), "{bad}: {e}");
        }
        assert!(parse(&["--tls"]).is_err());
    }

    #[test]
    fn setup_is_a_workload_of_its_own() {
        let b = parse(&["--only", "setup", "--only", "rr1", "--tls", "off"]).expect("--only setup");
        assert_eq!(b.only, [Workload::Setup, Workload::Rr1]);
        assert_eq!(Workload::value_variants().last(), Some(&Workload::Setup));
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
