//! The workloads, each a function of an address and a duration: bulk transfers (upload,
//! download, eight uploads at once), 64-byte round trips on one or many connections,
//! connection rate, and idle streams held open. Blocking sockets with timeouts, one thread
//! per connection on the bench side (the 50-connection round trips: one mio loop).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{CHUNK, procfs};
use super::report::{MemPair, Samples, Transfer, cpu_per_gb};

/// Streams in the parallel upload.
const PARALLEL_STREAMS: usize = 8;
/// Payload of one request and of its response.
pub(super) const RR_SIZE: usize = 64;
/// Threads in the connection-rate workload.
const CONNECT_THREADS: usize = 8;
/// Idle streams held open for the memory figure.
pub(super) const IDLE_STREAMS: usize = 1000;
/// Read and write timeout of every socket the bench opens, and connect timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// Workloads (blocking sockets with timeouts, one thread per connection on the bench side)

pub(super) fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
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

/// A bulk transfer through a tunnel with its roles' CPU time measured: (Gbit/s, CPU seconds
/// per GB).
pub(super) fn bulk_with_cpu(
    work: fn(SocketAddr, Duration) -> io::Result<Transfer>,
    addr: SocketAddr,
    dur: Duration,
    pids: [u32; 2],
) -> (io::Result<f64>, Option<f64>) {
    let before = cpu_ticks_pair(pids);
    let t = work(addr, dur);
    let after = cpu_ticks_pair(pids);
    let cpu = t
        .as_ref()
        .ok()
        .and_then(|t| cpu_per_gb(before, after, t.bytes));
    (t.map(Transfer::gbits), cpu)
}

/// Both roles' CPU time so far, in clock ticks.
fn cpu_ticks_pair(pids: [u32; 2]) -> Option<u64> {
    Some(procfs::cpu_ticks(pids[0])? + procfs::cpu_ticks(pids[1])?)
}

/// The memory of a tunnel's roles with 1,000 idle streams open through it, when the open-file
/// limit `nofile` allows them.
pub(super) fn idle_streams(addr: SocketAddr, pids: [u32; 2], nofile: u64) -> IdleStreams {
    let needed = 2 * IDLE_STREAMS as u64 + 256;
    if nofile < needed {
        return IdleStreams::Skipped(format!(
            "1,000 idle streams skipped: the open-file limit is {nofile}, {needed} are needed (raise `ulimit -Hn`)"
        ));
    }
    match hold_streams(addr, IDLE_STREAMS) {
        Ok(streams) => {
            thread::sleep(Duration::from_millis(200));
            let mem = MemPair::rss(pids);
            drop(streams);
            IdleStreams::Held(mem)
        }
        Err(e) => IdleStreams::Failed(e.to_string()),
    }
}

/// What [`idle_streams`] found.
pub(super) enum IdleStreams {
    /// The roles' memory while the streams were open.
    Held(MemPair),
    /// Not run, and why.
    Skipped(String),
    /// The streams could not all be opened.
    Failed(String),
}

/// Write 256 KiB chunks to a sink for `dur`, then half-close and wait for the sink to close:
/// the time counts until the last byte has reached the target.
pub(super) fn upload(addr: SocketAddr, dur: Duration) -> io::Result<Transfer> {
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
pub(super) fn download(addr: SocketAddr, dur: Duration) -> io::Result<Transfer> {
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
pub(super) fn parallel_upload(addr: SocketAddr, dur: Duration) -> io::Result<Transfer> {
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
pub(super) fn request_response(
    addr: SocketAddr,
    conns: usize,
    dur: Duration,
) -> io::Result<Samples> {
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
pub(super) fn request_response_poll(
    addr: SocketAddr,
    conns: usize,
    dur: Duration,
) -> io::Result<Samples> {
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
pub(super) fn connection_rate(addr: SocketAddr, dur: Duration) -> io::Result<Samples> {
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
pub(super) fn echo_byte(s: &mut TcpStream, byte: u8) -> io::Result<()> {
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

pub(super) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Polls the resident memory of both roles every 10 ms and keeps the maximum.
pub(super) struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<MemPair>>,
}

impl RssSampler {
    pub(super) fn start(pids: [u32; 2]) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("rss-sampler".to_string())
            .spawn(move || {
                let mut peak = MemPair::default();
                while !flag.load(Ordering::Relaxed) {
                    let now = MemPair::rss(pids);
                    peak.server_kib = peak.server_kib.max(now.server_kib);
                    peak.client_kib = peak.client_kib.max(now.client_kib);
                    thread::sleep(Duration::from_millis(10));
                }
                peak
            })
            .ok();
        RssSampler { stop, handle }
    }

    pub(super) fn finish(mut self) -> Option<MemPair> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take()?.join().ok()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::env::probe_echo;
    use crate::bench::harness::Targets;

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
}
