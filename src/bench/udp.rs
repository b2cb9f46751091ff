//! The UDP workloads, each a function of an address (the UDP echo or sink, directly or
//! through a tunnel's public UDP port):
//!
//! - 64-byte request/response on one or many flows (a socket each, so a flow each through the
//!   tunnel), driven by one mio loop: a request not answered within [`REQUEST_TIMEOUT`] is
//!   counted lost and sent again, so a lost datagram costs that much time and never hangs
//!   the workload;
//! - 1,200-byte datagrams to the sink from a paced sender: the highest offered rate that
//!   loses under 1 %, found by a bounded search (doubling, then bisecting), and the loss at
//!   a fixed high rate;
//! - a paced flood on a thread of its own, to run beside another workload.
//!
//! Losses are what the sender sent less what the sink counted once it stopped moving.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{UdpCount, UdpService, loopback};
use super::report::{Samples, Transfer};
use super::workloads::{self, RR_SIZE, duration_ns};
use crate::net::dgram::{self, BATCH, Segmentation};
use crate::net::sys;
use crate::net::udp::UDP_SOCKET_BUFFER;

/// Payload of each datagram of the rate workloads and of the flood.
pub(super) const DGRAM_SIZE: usize = 1200;
/// A request unanswered this long is counted lost and sent again.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// The rate search looks for the highest rate that loses less than this share...
pub(super) const LOSS_LIMIT: f64 = 0.01;
/// ...starting at this rate (Mbit/s of payload)...
const SEARCH_START_MBIT: f64 = 500.0;
/// ...in at most this many steps.
const SEARCH_STEPS: usize = 8;
/// The fixed high rate whose loss is reported (Mbit/s of payload, offered).
pub(super) const FIXED_MBIT: f64 = 2000.0;
/// The rate of the flood beside the TCP round trips (Mbit/s of payload, offered).
pub(super) const FLOOD_MBIT: f64 = 500.0;
/// A sender that reaches less than this share of the rate asked is at its ceiling.
const REACHED: f64 = 0.9;
/// A sender this many datagrams late forgets the rest: it does not catch up in a burst.
const MAX_OWED: u64 = 16 * BATCH as u64;
/// The sink has received all once its count has not moved for this long...
const DRAIN_QUIET: Duration = Duration::from_millis(30);
/// ...or this long after the sender stopped.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// A UDP socket on 127.0.0.1 connected to `addr`, with the tunnel's socket buffers.
fn connected(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(loopback(0))?;
    sock.connect(addr)?;
    sys::set_socket_buffers(&sock, UDP_SOCKET_BUFFER);
    Ok(sock)
}

fn udp_error(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("UDP {what}: {e}"))
}

/// 64-byte requests on `flows` flows, each sending its next request as soon as the answer
/// to the last one came back (or it timed out), for `dur`. Each request carries its
/// sequence number, so a late answer to a request counted lost is told apart and ignored.
pub(super) fn request_response(
    addr: SocketAddr,
    flows: usize,
    dur: Duration,
) -> io::Result<Samples> {
    use mio::{Events, Interest, Poll, Token};
    struct Flow {
        sock: mio::net::UdpSocket,
        seq: u64,
        sent_at: Instant,
        done: bool,
    }
    impl Flow {
        /// Send request `seq` (a refused send is a loss that the timeout finds).
        fn send(&mut self, request: &mut [u8; RR_SIZE]) -> io::Result<()> {
            request[..8].copy_from_slice(&self.seq.to_be_bytes());
            self.sent_at = Instant::now();
            match self.sock.send(request) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(udp_error(e, "round trip: send")),
            }
        }
    }
    let mut request = [0x42_u8; RR_SIZE];
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(flows.max(16));
    let mut table = Vec::with_capacity(flows);
    for i in 0..flows {
        let std_sock = connected(addr)?;
        std_sock.set_nonblocking(true)?;
        let mut sock = mio::net::UdpSocket::from_std(std_sock);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)?;
        table.push(Flow {
            sock,
            seq: 0,
            sent_at: Instant::now(),
            done: false,
        });
    }
    let start = Instant::now();
    let deadline = start + dur;
    for f in &mut table {
        f.send(&mut request)?;
    }
    let mut lat_ns = Vec::with_capacity(4096);
    let mut lost = 0u64;
    let mut buf = [0u8; 2048];
    let mut open = flows;
    while open > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let expiry = table
            .iter()
            .filter(|f| !f.done)
            .map(|f| f.sent_at + REQUEST_TIMEOUT)
            .min()
            .unwrap_or(deadline)
            .min(deadline);
        match poll.poll(&mut events, Some(expiry.saturating_duration_since(now))) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
            _ => {}
        }
        for event in &events {
            let Some(f) = table.get_mut(event.token().0) else {
                continue;
            };
            // Edge-triggered: read until the socket would block.
            while !f.done {
                let n = match f.sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(udp_error(e, "round trip: receive")),
                };
                if n != RR_SIZE || buf[..8] != f.seq.to_be_bytes() {
                    // The late answer to a request counted lost (or a stray datagram).
                    continue;
                }
                if buf[8..RR_SIZE] != request[8..] {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "UDP round trip: the echo came back altered",
                    ));
                }
                let now = Instant::now();
                lat_ns.push(duration_ns(now - f.sent_at));
                f.seq += 1;
                if now >= deadline {
                    f.done = true;
                    open -= 1;
                } else {
                    f.send(&mut request)?;
                }
            }
        }
        let now = Instant::now();
        for f in table.iter_mut().filter(|f| !f.done) {
            if now.duration_since(f.sent_at) >= REQUEST_TIMEOUT {
                lost += 1;
                f.seq += 1;
                f.send(&mut request)?;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if lat_ns.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("UDP round trip: no answer in {secs:.2} s ({lost} requests timed out)"),
        ));
    }
    Ok(Samples {
        lost: Some(lost),
        ..Samples::new(lat_ns, secs)
    })
}

/// What a paced sender sent, over how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sent {
    pub(super) datagrams: u64,
    pub(super) secs: f64,
}

impl Sent {
    /// Payload Mbit/s as sent.
    pub(super) fn mbit(self) -> f64 {
        let bytes = self.datagrams * DGRAM_SIZE as u64;
        Transfer {
            bytes,
            secs: self.secs,
        }
        .gbits()
            * 1e3
    }
}

/// Send 1,200-byte datagrams on `sock` at `mbit` Mbit/s of payload for `dur` or until `stop`
/// is set: a batch of [`BATCH`] in one system call each time a batch falls due, sleeping in
/// between. A sender that falls behind (descheduled, or at its ceiling) catches up by at most
/// [`MAX_OWED`] at once, so that it never bursts for long.
fn send_paced(
    sock: &UdpSocket,
    mbit: f64,
    dur: Duration,
    stop: Option<&AtomicBool>,
) -> io::Result<Sent> {
    let per_s = (mbit * 1e6 / 8.0 / DGRAM_SIZE as f64).max(1.0);
    let payload = [0x5a_u8; DGRAM_SIZE];
    let parts: [&[u8]; BATCH] = [&payload; BATCH];
    // Each datagram its own message, as a plain sender sends them.
    let mut plain = Segmentation::off();
    let start = Instant::now();
    let end = start + dur;
    // Datagrams sent, and those the sender gave up catching up on.
    let (mut sent, mut forgiven) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= end || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let due = (per_s * now.duration_since(start).as_secs_f64()) as u64;
        let mut owed = due.saturating_sub(sent + forgiven);
        if owed > MAX_OWED {
            forgiven += owed - MAX_OWED;
            owed = MAX_OWED;
        }
        if owed < BATCH as u64 {
            let next = (sent + forgiven + BATCH as u64) as f64 / per_s;
            let wait = (start + Duration::from_secs_f64(next)).saturating_duration_since(now);
            thread::sleep(wait.min(end - now).min(Duration::from_millis(1)));
            continue;
        }
        match dgram::send_batch(sock, None, &parts, &mut plain) {
            Ok(k) => sent += k as u64,
            // The socket's buffer is full: let the kernel drain it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_micros(50));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(udp_error(e, "send")),
        }
    }
    Ok(Sent {
        datagrams: sent,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// The datagrams the sink received since it counted `before`, once its count stops moving
/// (bounded by [`DRAIN_LIMIT`]).
fn drained(sink: &UdpCount, before: u64) -> u64 {
    let limit = Instant::now() + DRAIN_LIMIT;
    let mut last = sink.datagrams();
    let mut quiet_since = Instant::now();
    while Instant::now() < limit {
        thread::sleep(Duration::from_millis(2));
        let now = sink.datagrams();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= DRAIN_QUIET {
            break;
        }
    }
    last.saturating_sub(before)
}

/// One paced step: what was sent and what arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    /// The rate asked for, Mbit/s of payload.
    pub(super) asked_mbit: f64,
    pub(super) sent: Sent,
    pub(super) received: u64,
}

impl Step {
    /// The share of the datagrams sent that did not arrive.
    pub(super) fn loss(&self) -> f64 {
        if self.sent.datagrams == 0 {
            return 0.0;
        }
        self.sent.datagrams.saturating_sub(self.received) as f64 / self.sent.datagrams as f64
    }

    /// Datagrams per second as sent.
    pub(super) fn per_s(&self) -> f64 {
        if self.sent.secs > 0.0 {
            self.sent.datagrams as f64 / self.sent.secs
        } else {
            0.0
        }
    }

    /// The sender did not reach the rate asked: its ceiling.
    fn sender_limited(&self) -> bool {
        self.sent.mbit() < REACHED * self.asked_mbit
    }
}

fn step(sock: &UdpSocket, sink: &UdpCount, mbit: f64, dur: Duration) -> io::Result<Step> {
    let before = sink.datagrams();
    let sent = send_paced(sock, mbit, dur, None)?;
    Ok(Step {
        asked_mbit: mbit,
        sent,
        received: drained(sink, before),
    })
}

/// The rate workload's outcome on one path.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rates {
    /// The step of the highest rate sent that lost under [`LOSS_LIMIT`].
    pub(super) best: Option<Step>,
    /// That rate was the sender's ceiling: the path may carry more.
    pub(super) sender_limited: bool,
    /// Every step of the search, in order.
    pub(super) steps: Vec<Step>,
    /// The step at [`FIXED_MBIT`].
    pub(super) fixed: Step,
}

/// On one flow to the sink at `addr` (whose count is `sink`): the highest rate that loses
/// under 1 % (doubling from [`SEARCH_START_MBIT`] until a step loses more, then bisecting,
/// each step `step_dur`, at most [`SEARCH_STEPS`] steps), then the loss at [`FIXED_MBIT`].
pub(super) fn rates(addr: SocketAddr, sink: &UdpCount, step_dur: Duration) -> io::Result<Rates> {
    let sock = connected(addr)?;
    // Open the flow through the tunnel before anything is measured.
    let before = sink.datagrams();
    for _ in 0..4 {
        sock.send(&[0u8; DGRAM_SIZE])
            .map_err(|e| udp_error(e, "send"))?;
    }
    drained(sink, before);
    let mut steps: Vec<Step> = Vec::with_capacity(SEARCH_STEPS);
    let (mut best, mut lowest_failed) = (None::<Step>, None::<f64>);
    // The last step fell short of the rate asked, and the search ended at the sender's
    // ceiling.
    let (mut short, mut sender_limited) = (false, false);
    let mut mbit = SEARCH_START_MBIT;
    for _ in 0..SEARCH_STEPS {
        let s = step(&sock, sink, mbit, step_dur)?;
        steps.push(s);
        // A step short of the rate asked may have gone without the CPU for a moment (the
        // machine is shared): it is tried again. Short twice in a row, the sender is at its
        // ceiling: a pass ends the search there, a loss counts at the rate sent.
        if s.sender_limited() && !short {
            short = true;
            continue;
        }
        let was_short = std::mem::take(&mut short);
        let rate = s.sent.mbit();
        if s.loss() < LOSS_LIMIT {
            if best.is_none_or(|b| rate > b.sent.mbit()) {
                best = Some(s);
            }
            if was_short && s.sender_limited() {
                sender_limited = true;
                break;
            }
        } else {
            lowest_failed = Some(lowest_failed.map_or(rate, |f| f.min(rate)));
        }
        mbit = match (best, lowest_failed) {
            (_, None) => mbit * 2.0,
            (None, Some(failed)) => failed / 2.0,
            (Some(b), Some(failed)) => {
                let passed = b.sent.mbit();
                if failed <= passed * 1.1 {
                    break;
                }
                (passed + failed) / 2.0
            }
        };
    }
    let fixed = step(&sock, sink, FIXED_MBIT, step_dur)?;
    Ok(Rates {
        best,
        sender_limited,
        steps,
        fixed,
    })
}

/// A paced sender on a thread of its own ([`flood`]).
pub(super) struct Flood {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<io::Result<Sent>>>,
}

/// Start sending 1,200-byte datagrams to `addr` at `mbit` Mbit/s of payload, for at most
/// `max` or until [`Flood::finish`].
pub(super) fn flood(addr: SocketAddr, mbit: f64, max: Duration) -> io::Result<Flood> {
    let sock = connected(addr)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = thread::Builder::new()
        .name("udp-flood".to_string())
        .spawn(move || send_paced(&sock, mbit, max, Some(&flag)))?;
    Ok(Flood {
        stop,
        handle: Some(handle),
    })
}

impl Flood {
    /// Stop the flood; what it sent.
    pub(super) fn finish(mut self) -> io::Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the UDP flood's thread panicked")),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the sink counted from a flood: the flood sent, and the datagrams received since
/// `before`, once they stopped arriving.
pub(super) fn flood_step(flood: Flood, sink: &UdpCount, before: u64) -> io::Result<Step> {
    let sent = flood.finish()?;
    Ok(Step {
        asked_mbit: FLOOD_MBIT,
        sent,
        received: drained(sink, before),
    })
}

/// The flood starts this long before the round trips beside it are timed.
const FLOOD_LEAD: Duration = Duration::from_millis(100);

/// 64-byte round trips on one TCP connection, alone and beside a flood.
pub(super) struct BesideFlood {
    pub alone: io::Result<Samples>,
    pub beside: io::Result<Samples>,
    pub flood: io::Result<Step>,
}

/// 64-byte round trips on one connection to the TCP echo at `echo` for `dur`, then again
/// for `dur` beside a flood of [`FLOOD_MBIT`] to `flood_to`, whose datagrams `sink` counts.
pub(super) fn beside_flood(
    echo: SocketAddr,
    flood_to: SocketAddr,
    sink: &UdpCount,
    dur: Duration,
) -> BesideFlood {
    let alone = workloads::request_response(echo, 1, dur);
    let before = sink.datagrams();
    match flood(flood_to, FLOOD_MBIT, dur * 2 + FLOOD_LEAD) {
        Ok(f) => {
            thread::sleep(FLOOD_LEAD);
            let beside = workloads::request_response(echo, 1, dur);
            BesideFlood {
                alone,
                beside,
                flood: flood_step(f, sink, before),
            }
        }
        Err(e) => BesideFlood {
            alone,
            beside: Err(io::Error::other("no flood to measure beside")),
            flood: Err(e),
        },
    }
}

/// `tcp-forward bench --udp-peer ECHO,SINK,PUBLIC_ECHO,PUBLIC_SINK`, for
/// scripts/compare-peers.sh: the UDP echo and sink on ports ECHO and SINK of 127.0.0.1,
/// 1-flow round trips for `dur` through PUBLIC_ECHO, then the rate search and the fixed rate
/// through PUBLIC_SINK. Prints one line on stdout: round trips/s, p50 and p99 (µs), requests
/// lost, the highest rate under 1 % loss (Mbit/s, datagrams/s; `-` when none), whether that
/// was the sender's ceiling (1 or 0), and at the fixed rate: Mbit/s sent and % lost. The
/// steps go to stderr. Returns the exit code.
///
/// With `tcp` (`--tcp-echo-peer TCP_ECHO,PUBLIC_TCP_ECHO`) it also serves a TCP echo on
/// TCP_ECHO and times 64-byte round trips through PUBLIC_TCP_ECHO alone and beside the
/// flood of the `udp-flood` workload through PUBLIC_SINK, adding to the line: round trips/s
/// alone and beside, their p99 (µs) alone and beside, and the flood's % lost (each `-` when
/// that part failed, which stderr explains).
pub(super) fn peer(ports: [u16; 4], tcp: Option<[u16; 2]>, dur: Duration) -> u8 {
    match peer_line(ports, tcp, dur) {
        Ok((line, steps)) => {
            eprintln!("steps: {steps}");
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("tcp-forward bench --udp-peer: {e}");
            1
        }
    }
}

/// [`peer`]'s line of figures and its rate steps as text.
fn peer_line(
    ports: [u16; 4],
    tcp: Option<[u16; 2]>,
    dur: Duration,
) -> io::Result<(String, String)> {
    let [echo, sink, public_echo, public_sink] = ports.map(loopback);
    let count = Arc::new(UdpCount::default());
    let serving =
        |e: io::Error, what: String| io::Error::new(e.kind(), format!("cannot serve {what}: {e}"));
    let _echo =
        UdpService::echo(echo).map_err(|e| serving(e, format!("the UDP echo on {echo}")))?;
    let _sink = UdpService::sink(sink, Arc::clone(&count))
        .map_err(|e| serving(e, format!("the UDP sink on {sink}")))?;
    let rr = request_response(public_echo, 1, dur)?;
    let r = rates(public_sink, &count, step_duration(dur))?;
    let us = |s: &Samples, p| {
        s.percentile_us(p)
            .map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
    };
    let (mbit, per_s) = r.best.map_or_else(
        || ("-".to_string(), "-".to_string()),
        |b| (format!("{:.1}", b.sent.mbit()), format!("{:.0}", b.per_s())),
    );
    let mut line = format!(
        "{:.0} {} {} {} {mbit} {per_s} {} {:.1} {:.3}",
        rr.rate(),
        us(&rr, 50.0),
        us(&rr, 99.0),
        rr.lost.unwrap_or(0),
        u8::from(r.sender_limited),
        r.fixed.sent.mbit(),
        r.fixed.loss() * 100.0
    );
    if let Some([tcp_echo, public_tcp_echo]) = tcp {
        // A failure here keeps the UDP figures: its fields are `-` and stderr says why.
        let tcp_figures = super::harness::EchoService::start_on(loopback(tcp_echo))
            .map_err(|e| serving(e, format!("the TCP echo on {}", loopback(tcp_echo))))
            .and_then(|_echo| {
                let b = beside_flood(loopback(public_tcp_echo), public_sink, &count, dur);
                Ok((b.alone?, b.beside?, b.flood?))
            });
        match tcp_figures {
            Ok((alone, beside, flood)) => line.push_str(&format!(
                " {:.0} {:.0} {} {} {:.3}",
                alone.rate(),
                beside.rate(),
                us(&alone, 99.0),
                us(&beside, 99.0),
                flood.loss() * 100.0
            )),
            Err(e) => {
                eprintln!("tcp-forward bench --udp-peer: TCP round trips beside the flood: {e}");
                line.push_str(" - - - - -");
            }
        }
    }
    Ok((line, super::render::steps_text(&r.steps)))
}

/// Each step of the rate search lasts a quarter of `--seconds`, between 50 ms and 1 s: the
/// search and the fixed rate then take at most 9 of them per path.
pub(super) fn step_duration(seconds: Duration) -> Duration {
    (seconds / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::harness::Targets;

    #[test]
    fn round_trips_rates_and_a_flood_against_the_udp_targets() {
        let targets = Targets::start().expect("targets start on 127.0.0.1");
        let short = Duration::from_millis(50);
        for flows in [1, 5] {
            let rr = request_response(targets.addr.udp_echo, flows, short).expect("round trips");
            assert!(rr.lat_ns.len() >= flows, "{flows} flows");
            assert!(rr.lost.is_some());
        }
        let sink = targets.udp_received();
        let r = rates(targets.addr.udp_sink, sink, short).expect("rates");
        assert!(!r.steps.is_empty() && r.steps.len() <= SEARCH_STEPS);
        assert!(r.fixed.sent.datagrams > 0);
        let before = sink.datagrams();
        let f = flood(targets.addr.udp_sink, 100.0, Duration::from_secs(5)).expect("flood");
        thread::sleep(short);
        let s = flood_step(f, sink, before).expect("the flood's figures");
        assert!(s.sent.datagrams > 0 && s.received > 0);
        assert!(s.sent.secs < 1.0, "the flood stops when told");
    }

    #[test]
    fn a_step_knows_its_loss_and_rate() {
        let s = Step {
            asked_mbit: 96.0,
            sent: Sent {
                datagrams: 10_000,
                secs: 1.0,
            },
            received: 9_950,
        };
        assert!((s.loss() - 0.005).abs() < 1e-12);
        assert_eq!(s.per_s(), 10_000.0);
        assert_eq!(s.sent.mbit(), 96.0);
        assert!(!s.sender_limited());
        assert!(
            Step {
                asked_mbit: 200.0,
                ..s
            }
            .sender_limited()
        );
        assert_eq!(
            step_duration(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            step_duration(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(
            step_duration(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }
}
