//! The loopback integration tests' helpers: connections and their ends, data patterns and
//! digests, the `tcp-forward` binary as a child process, server and client set-ups, and small
//! target servers (echo, sink, source, half-close responder, ...).
//!
//! Temporary directories, free ports, child processes with their stderr collected, /proc and
//! the thread-per-connection target server come from the library's `bench::harness`, which
//! `tcp-forward bench` uses too; here they are thin wrappers that panic with a message where
//! the harness returns an error.
//!
//! Every wait is bounded: reads carry timeouts, log waits take a deadline, connects retry a
//! bounded number of times. Nothing here sleeps to "let things settle".

#![allow(dead_code)]

pub mod admin;

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::{Deref, DerefMut};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use tcp_forward::bench::harness::{self, ProcessOptions, procfs};

pub mod cdp;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tcp-forward");

/// Default bound for "the thing should be ready by now" waits.
pub const READY: Duration = Duration::from_secs(10);
/// Read/write timeout on every test socket: a hang fails the test instead of blocking CI.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Temporary directory
// ---------------------------------------------------------------------------------------

/// A directory unique to one test, removed on drop.
pub struct TempDir(harness::TempDir);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(harness::TempDir::new(&format!("test-{name}")).expect("create temp dir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        self.0.write(name, contents).expect("write temp file")
    }
}

// ---------------------------------------------------------------------------------------
// Ports and connections
// ---------------------------------------------------------------------------------------

/// A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, drop the socket).
pub fn free_port() -> u16 {
    harness::free_port().expect("bind 127.0.0.1:0")
}

/// A loopback port where nothing listens and nothing else can start listening while this
/// value lives: a socket bound to it without `listen()`. Connections to it are refused.
/// (Binding and dropping a listener would free the port for the next `bind(0)` of a test
/// running alongside, which then answers instead.)
pub struct RefusedPort {
    fd: std::os::fd::OwnedFd,
    addr: SocketAddr,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket calls on a descriptor we own; results are checked.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                len,
            );
            assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
            let mut got = len;
            let rc = libc::getsockname(
                fd.as_raw_fd(),
                (&mut sin as *mut libc::sockaddr_in).cast(),
                &mut got,
            );
            assert_eq!(rc, 0, "getsockname: {}", io::Error::last_os_error());
            let addr =
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port)));
            RefusedPort { fd, addr }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        let _ = &self.fd;
        self.addr
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        RefusedPort::new()
    }
}

/// Apply the standard timeouts to a test socket.
pub fn with_timeouts(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("set_write_timeout");
    s
}

/// Connect with bounded retries (up to `within`), for listeners that may still be starting.
pub fn connect_retry(addr: SocketAddr, within: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(with_timeouts(s));
            }
            Err(e) if Instant::now() + delay >= deadline => return Err(e),
            Err(_) => {
                thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// A visitor: a connection to a public port on 127.0.0.1, with timeouts set.
pub fn visit(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    connect_retry(addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to public port {port}: {e}"))
}

fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// How a connection ended when we waited for it to close.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Closed {
    /// Orderly EOF (after `bytes` bytes of data, if any arrived).
    Eof { bytes: u64 },
    /// Reset or aborted.
    Reset { bytes: u64 },
    /// Still open when the time ran out.
    StillOpen { bytes: u64 },
}

impl Closed {
    pub fn is_closed(self) -> bool {
        !matches!(self, Closed::StillOpen { .. })
    }

    /// Data bytes read before the end.
    pub fn bytes(self) -> u64 {
        match self {
            Closed::Eof { bytes } | Closed::Reset { bytes } | Closed::StillOpen { bytes } => bytes,
        }
    }
}

/// Read (and discard) until EOF or reset, for at most `within`.
pub fn wait_closed(s: &mut TcpStream, within: Duration) -> Closed {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Closed::StillOpen { bytes };
        }
        let left = (deadline - now).max(Duration::from_millis(1));
        if s.set_read_timeout(Some(left)).is_err() {
            return Closed::Reset { bytes };
        }
        match s.read(&mut buf) {
            Ok(0) => return Closed::Eof { bytes },
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return Closed::StillOpen { bytes };
            }
            Err(e) if is_closed_error(&e) => return Closed::Reset { bytes },
            Err(_) => return Closed::Reset { bytes },
        }
    }
}

/// Assert that the visitor connection is closed (EOF or reset) within `within`.
pub fn assert_closed(s: &mut TcpStream, within: Duration, what: &str) {
    let r = wait_closed(s, within);
    assert!(
        r.is_closed(),
        "{what}: connection still open after {within:?} ({r:?})"
    );
}

/// Connect a visitor to `port` and assert that it is closed (EOF or reset) within `within`.
pub fn assert_visit_closed(port: u16, within: Duration, what: &str) {
    let mut v = visit(port);
    assert_closed(&mut v, within, what);
}

/// Errors after which a socket loop with timeouts just tries again.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Write pattern blocks (seeded) as fast as the connection takes them, up to `limit` bytes,
/// counting the bytes accepted into `pushed`; stops when `stop` is set or on an error.
pub fn push_until(s: &mut TcpStream, seed: u64, limit: u64, pushed: &AtomicU64, stop: &AtomicBool) {
    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
    let block = pattern(seed, 64 * 1024);
    let mut total = 0u64;
    while total < limit && !stop.load(Ordering::SeqCst) {
        match s.write(&block) {
            Ok(0) => return,
            Ok(n) => {
                total += n as u64;
                pushed.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    }
}

/// Read exactly `n` bytes.
pub fn read_exact_n(s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

/// Read until EOF, at most `limit` bytes (more is an error).
pub fn read_to_eof(s: &mut TcpStream, limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > limit {
                    return Err(io::Error::other(format!(
                        "more than {limit} bytes before EOF"
                    )));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One echo round trip of `data` on a fresh visitor connection; the writer runs on its own
/// thread so large payloads cannot deadlock on socket buffers.
pub fn echo_roundtrip(port: u16, data: &[u8]) -> io::Result<()> {
    let mut s = visit(port);
    echo_on(&mut s, data)
}

/// One echo round trip on an existing connection.
pub fn echo_on(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut w = s.try_clone()?;
    let got = thread::scope(|scope| {
        let writer = scope.spawn(move || w.write_all(data));
        let got = read_exact_n(s, data.len());
        let wr = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
        wr.and(got)
    })?;
    if got != data {
        let at = got.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
        return Err(io::Error::other(format!(
            "echo of {} bytes differs at offset {at}",
            data.len()
        )));
    }
    Ok(())
}

/// Assert that the port echoes.
pub fn assert_echo(port: u16, what: &str) {
    let data = pattern(0xec40 ^ u64::from(port), 1000);
    if let Err(e) = echo_roundtrip(port, &data) {
        panic!("{what}: echo through public port {port} failed: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Data patterns and digests
// ---------------------------------------------------------------------------------------

/// One step of splitmix64: the generator behind [`pattern`], for tests that draw sizes or
/// choices from a printed seed.
pub fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` pseudo-random bytes determined by `seed`.
pub fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Length and hash of a byte stream, independent of how the stream was chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub len: u64,
    pub hash: u64,
}

impl Sum {
    pub fn line(&self) -> String {
        format!("{} {:016x}\n", self.len, self.hash)
    }
}

/// Streaming digest over 8-byte words (fast enough for hundreds of MiB in a debug build).
#[derive(Clone)]
pub struct Digest {
    h: u64,
    len: u64,
    pending: [u8; 8],
    npending: usize,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            h: 0xcbf2_9ce4_8422_2325,
            len: 0,
            pending: [0; 8],
            npending: 0,
        }
    }
}

impl Digest {
    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(0x0000_0100_0000_01b3 | (1 << 63));
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
            self.npending = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.word(u64::from_le_bytes(a));
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    pub fn finish(&self) -> Sum {
        let mut d = self.clone();
        let mut last = [0u8; 8];
        last[..d.npending].copy_from_slice(&d.pending[..d.npending]);
        d.word(u64::from_le_bytes(last));
        d.word(d.len);
        Sum {
            len: self.len,
            hash: d.h,
        }
    }
}

pub fn digest_of(data: &[u8]) -> Sum {
    let mut d = Digest::default();
    d.update(data);
    d.finish()
}

/// The byte stream `send_pattern` writes, produced in blocks of up to 64 KiB.
fn for_each_pattern_block(
    seed: u64,
    total: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Sum> {
    const BLOCK: usize = 64 * 1024;
    let mut d = Digest::default();
    let mut done = 0u64;
    let mut state = seed;
    let mut block = vec![0u8; BLOCK];
    while done < total {
        let n = ((total - done) as usize).min(BLOCK);
        for c in block[..n].chunks_mut(8) {
            let w = splitmix(&mut state).to_le_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
        f(&block[..n])?;
        d.update(&block[..n]);
        done += n as u64;
    }
    Ok(d.finish())
}

/// Write `total` pattern bytes (seeded) in 64 KiB blocks; returns the digest of what was sent.
pub fn send_pattern(s: &mut TcpStream, seed: u64, total: u64) -> io::Result<Sum> {
    for_each_pattern_block(seed, total, |b| s.write_all(b))
}

/// The digest of what `send_pattern(_, seed, total)` sends.
pub fn pattern_digest(seed: u64, total: u64) -> Sum {
    for_each_pattern_block(seed, total, |_| Ok(())).unwrap_or(Sum { len: 0, hash: 0 })
}

/// Read until EOF and digest everything read.
pub fn recv_digest(s: &mut TcpStream) -> io::Result<Sum> {
    let mut d = Digest::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(d.finish()),
            Ok(n) => d.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {} bytes: {e}", d.len),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A running child process (`tcp-forward`, or a program a test drives); stderr collected by
/// a background thread. Stopped on drop (SIGTERM, then SIGKILL if it does not exit in 3 s),
/// after printing its log's tail when the test is failing. Derefs to the harness's
/// `Process` for `lines`, `count`, `wait_any`, `signal`, `wait_exit`, `is_running`, `rss_kib`.
pub struct Proc {
    pub name: String,
    inner: harness::Process,
}

/// Spawn the binary with `args` (and `envs`); TCP_FORWARD_TOKEN is cleared unless given.
pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TCP_FORWARD_TOKEN")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    spawn_cmd(name, &mut cmd).unwrap_or_else(|e| panic!("spawn {BIN}: {e}"))
}

/// Spawn `cmd` with no stdin, stdout discarded and stderr collected line by line (copied to
/// this test's stderr when TCP_FORWARD_TEST_ECHO is set).
pub fn spawn_cmd(name: &str, cmd: &mut Command) -> io::Result<Proc> {
    let opts = ProcessOptions {
        echo: std::env::var_os("TCP_FORWARD_TEST_ECHO").is_some(),
        ..ProcessOptions::default()
    };
    let inner = harness::Process::spawn(name, cmd, &opts)?;
    Ok(Proc {
        name: name.to_string(),
        inner,
    })
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.inner.pid() as i32
    }

    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Wait until at least `n` lines contain `substr`; false on timeout or when stderr closes
    /// first.
    pub fn try_wait_for_count(&self, substr: &str, n: usize, timeout: Duration) -> bool {
        self.inner.wait_count(substr, n, timeout)
    }

    /// Like `try_wait_for_count`, but panics with the collected log on failure.
    pub fn wait_for_count(&self, substr: &str, n: usize, timeout: Duration) {
        if !self.try_wait_for_count(substr, n, timeout) {
            panic!(
                "{}: no {n} line(s) containing {substr:?} within {timeout:?}; log:\n{}",
                self.name,
                self.tail(80)
            );
        }
    }

    /// Wait for a line containing `substr` (bounded); panics with the log on failure and
    /// returns the first matching line.
    pub fn wait_for_line(&self, substr: &str, timeout: Duration) -> String {
        self.wait_for_count(substr, 1, timeout);
        self.lines()
            .into_iter()
            .find(|l| l.contains(substr))
            .unwrap_or_default()
    }

    pub fn try_wait_for_line(&self, substr: &str, timeout: Duration) -> bool {
        self.try_wait_for_count(substr, 1, timeout)
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        self.inner
            .last_lines(n)
            .iter()
            .map(|l| format!("  | {l}\n"))
            .collect()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(5));
    }
}

impl Deref for Proc {
    type Target = harness::Process;

    fn deref(&self) -> &harness::Process {
        &self.inner
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut harness::Process {
        &mut self.inner
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log tail ----\n{}",
                self.name,
                self.pid(),
                self.tail(60)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server and client set-up
// ---------------------------------------------------------------------------------------

/// One line of the mapping file.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub public: u16,
    pub target: String,
    pub tag: Option<String>,
}

/// A server configuration written to a temp dir as `server.cfg` + `port_mapper.cfg`.
#[derive(Clone, Debug)]
pub struct ServerSetup {
    pub inner_port: u16,
    pub mappings: Vec<Mapping>,
    pub token: Option<String>,
    /// Extra `[DEFAULT]` lines (e.g. "MAX_STREAMS=8").
    pub extra: Vec<String>,
    /// Lines appended to the mapping file (e.g. "[ALLOW]", "1234=127.0.0.1").
    pub mapper_extra: Vec<String>,
}

impl Default for ServerSetup {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerSetup {
    pub fn new() -> ServerSetup {
        ServerSetup {
            inner_port: free_port(),
            mappings: Vec::new(),
            token: None,
            extra: Vec::new(),
            mapper_extra: Vec::new(),
        }
    }

    /// Add a mapping from a fresh public port to `target`; returns the public port.
    pub fn map(&mut self, target: impl std::fmt::Display, tag: Option<&str>) -> u16 {
        let public = loop {
            let p = free_port();
            if p != self.inner_port && !self.mappings.iter().any(|m| m.public == p) {
                break p;
            }
        };
        self.mappings.push(Mapping {
            public,
            target: target.to_string(),
            tag: tag.map(String::from),
        });
        public
    }

    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }

    /// Run the server with `TLS=off` (the default is on).
    pub fn tls_off(mut self) -> Self {
        self.extra.push("TLS=off".to_string());
        self
    }

    /// Run the server with TLS on (the default) or off.
    pub fn with_tls(self, tls: Tls) -> Self {
        match tls {
            Tls::On => self,
            Tls::Off => self.tls_off(),
        }
    }

    pub fn server_cfg_text(&self) -> String {
        let mut s = String::from("[DEFAULT]\n");
        let _ = writeln!(s, "INNER_PORT={}", self.inner_port);
        s.push_str("BIND_ADDR=127.0.0.1\n");
        s.push_str("OUTER_PORTS_FILE=port_mapper.cfg\n");
        if let Some(t) = &self.token {
            let _ = writeln!(s, "TOKEN={t}");
        }
        for e in &self.extra {
            let _ = writeln!(s, "{e}");
        }
        s
    }

    pub fn mapper_text(&self) -> String {
        let mut s = String::from("[MAPPER]\n");
        for m in &self.mappings {
            let _ = writeln!(s, "{}={}", m.public, m.target);
        }
        if self.mappings.iter().any(|m| m.tag.is_some()) {
            s.push_str("[TAG]\n");
            for m in &self.mappings {
                if let Some(t) = &m.tag {
                    let _ = writeln!(s, "{}={t}", m.public);
                }
            }
        }
        for line in &self.mapper_extra {
            let _ = writeln!(s, "{line}");
        }
        s
    }

    /// Write both files into `dir`; returns the server.cfg path.
    pub fn write(&self, dir: &TempDir) -> PathBuf {
        dir.write("port_mapper.cfg", &self.mapper_text());
        dir.write("server.cfg", &self.server_cfg_text())
    }

    /// Write the files and start the server; waits until it listens for clients and has
    /// announced every public port.
    pub fn start(&self, dir: &TempDir) -> Proc {
        let cfg = self.write(dir);
        start_server_cfg(&cfg, "server")
    }
}

/// Start a server on an already written cfg file and wait for readiness.
///
/// A port `free_port` picked lies below the kernel's ephemeral range, out of reach of other
/// tests' outgoing connections, but another program may still bind it first: a start that
/// fails with "Address already in use" is tried again, a few times, before it counts as a
/// failure.
pub fn start_server_cfg(cfg: &Path, name: &str) -> Proc {
    const IN_USE: &str = "Address already in use";
    const ATTEMPTS: usize = 5;
    const READY_LINE: &str = "listening for clients on";
    let cfg = cfg.to_string_lossy().to_string();
    let mut attempt = 1;
    loop {
        let mut p = spawn(name, &["server", &cfg], &[]);
        if attempt < ATTEMPTS && p.wait_any(&[IN_USE, READY_LINE], READY) == Some(0) {
            let _ = p.wait_exit(READY);
            eprintln!("{name}: a port was taken meanwhile; starting again ({attempt})");
            thread::sleep(Duration::from_millis(200));
            attempt += 1;
            continue;
        }
        // The server says this once every public port listens.
        p.wait_for_line(READY_LINE, READY);
        return p;
    }
}

/// Whether a tunnel runs TLS (the default) or plain TCP: tests that are about the data path
/// run both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    On,
    Off,
}

impl Tls {
    /// Client options that match a server run with `self`.
    pub fn client<'a>(self) -> ClientOpts<'a> {
        ClientOpts {
            tls_off: self == Tls::Off,
            ..ClientOpts::default()
        }
    }
}

/// Options for a client process.
#[derive(Clone, Debug, Default)]
pub struct ClientOpts<'a> {
    pub tag: Option<&'a str>,
    pub token: Option<&'a str>,
    pub env_token: Option<&'a str>,
    pub name: Option<&'a str>,
    /// `--tls off` (the default is on).
    pub tls_off: bool,
    /// More arguments, as given (`--fingerprint HEX`, say).
    pub extra: Vec<&'a str>,
}

/// Start a client dialling 127.0.0.1:inner_port (does not wait).
pub fn spawn_client(inner_port: u16, o: &ClientOpts<'_>) -> Proc {
    let port = inner_port.to_string();
    let mut args: Vec<&str> = vec!["client", "127.0.0.1", &port];
    if let Some(t) = o.tag {
        args.push("--tag");
        args.push(t);
    }
    if let Some(t) = o.token {
        args.push("--token");
        args.push(t);
    }
    if o.tls_off {
        args.push("--tls");
        args.push("off");
    }
    args.extend(o.extra.iter().copied());
    let mut envs = Vec::new();
    if let Some(t) = o.env_token {
        envs.push(("TCP_FORWARD_TOKEN", t));
    }
    spawn(o.name.unwrap_or("client"), &args, &envs)
}

/// Start a client and wait until the server logs one more `tunnel attached` line and the
/// client logs `tunnel up`.
pub fn attach_client(server: &Proc, inner_port: u16, o: &ClientOpts<'_>) -> Proc {
    attach_spawned(server, || spawn_client(inner_port, o))
}

/// Start a client with `start` and wait until the server logs one more `tunnel attached`
/// line and the client logs `tunnel up`.
pub fn attach_spawned(server: &Proc, start: impl FnOnce() -> Proc) -> Proc {
    let before = server.count("tunnel attached");
    let c = start();
    if !server.try_wait_for_count("tunnel attached", before + 1, READY) {
        panic!(
            "client did not attach within {READY:?}\nserver log:\n{}\nclient log:\n{}",
            server.tail(40),
            c.tail(40)
        );
    }
    c.wait_for_line("tunnel up", READY);
    c
}

/// Server with the given setup plus one attached default-tag client.
pub fn server_and_client(dir: &TempDir, setup: &ServerSetup) -> (Proc, Proc) {
    server_and_client_over(dir, setup, Tls::On)
}

/// Like `server_and_client`, with TLS on or off at both ends.
pub fn server_and_client_over(dir: &TempDir, setup: &ServerSetup, tls: Tls) -> (Proc, Proc) {
    let setup = setup.clone().with_tls(tls);
    let s = setup.start(dir);
    // Logged before the server listens, so already collected.
    let announced = match tls {
        Tls::On => "TLS on",
        Tls::Off => "TLS is off",
    };
    assert!(
        s.count(announced) > 0,
        "the server should log {announced:?}:\n{}",
        s.tail(20)
    );
    let c = attach_client(&s, setup.inner_port, &tls.client());
    (s, c)
}

/// An echo target and a server setup mapping one fresh public port to it (default tag):
/// (target, setup, public port).
pub fn echo_mapping() -> (Target, ServerSetup, u16) {
    let echo = Target::echo();
    let mut setup = ServerSetup::new();
    let port = setup.map(echo.target(), None);
    (echo, setup, port)
}

/// A server mapping one fresh public port to `target`, with one attached default-tag
/// client: (server, client, public port).
pub fn tunnel_to(dir: &TempDir, target: impl std::fmt::Display) -> (Proc, Proc, u16) {
    tunnel_over(dir, target, Tls::On)
}

/// Like `tunnel_to`, with TLS on or off at both ends.
pub fn tunnel_over(dir: &TempDir, target: impl std::fmt::Display, tls: Tls) -> (Proc, Proc, u16) {
    let mut setup = ServerSetup::new();
    let port = setup.map(target, None);
    let (server, client) = server_and_client_over(dir, &setup, tls);
    (server, client, port)
}

// ---------------------------------------------------------------------------------------
// Target servers
// ---------------------------------------------------------------------------------------

/// A loopback server running a handler on a thread per accepted connection (the harness's
/// `Target`, which it derefs to for `port`, `target`, `active`, `accepted`, `wait_idle`);
/// every connection gets `TCP_NODELAY` and the standard timeouts.
pub struct Target {
    pub addr: SocketAddr,
    inner: harness::Target,
}

impl Target {
    /// Listen on `bind` (e.g. "127.0.0.1:0") and serve each connection with `handler`.
    pub fn spawn<F>(bind: &str, handler: F) -> io::Result<Target>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(bind)?;
        Ok(Self::serve(listener, handler))
    }

    pub fn serve<F>(listener: TcpListener, handler: F) -> Target
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let inner = harness::Target::serve(listener, move |s| {
            let _ = s.set_nodelay(true);
            handler(with_timeouts(s));
        })
        .expect("serve a target");
        Target {
            addr: inner.addr(),
            inner,
        }
    }

    /// Echo everything back; on EOF shut down the write half.
    pub fn echo() -> Target {
        Self::echo_on("127.0.0.1:0").expect("bind echo target")
    }

    pub fn echo_on(bind: &str) -> io::Result<Target> {
        Self::spawn(bind, |mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = s.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
    }

    /// Read until EOF; report the digest of what arrived, then close.
    pub fn sink() -> (Target, Receiver<io::Result<Sum>>) {
        let (tx, rx) = mpsc::channel();
        let t = Self::spawn("127.0.0.1:0", move |mut s| {
            let r = recv_digest(&mut s);
            let _ = tx.send(r);
        })
        .expect("bind sink target");
        (t, rx)
    }

    /// Send `n` pattern bytes (seed) then close.
    pub fn source(n: u64, seed: u64) -> Target {
        Self::spawn("127.0.0.1:0", move |mut s| {
            let _ = send_pattern(&mut s, seed, n);
        })
        .expect("bind source target")
    }

    /// Read until EOF, then reply with the digest line of what was read, then close.
    pub fn half_close_responder() -> Target {
        Self::spawn("127.0.0.1:0", |mut s| {
            if let Ok(sum) = recv_digest(&mut s) {
                let _ = s.write_all(sum.line().as_bytes());
            }
        })
        .expect("bind half-close responder")
    }

    /// Send `n` pattern bytes (seed) and shut down the write half, while reading until EOF at
    /// the same time; reports (sent, received).
    pub fn duplex(n: u64, seed: u64) -> (Target, Receiver<io::Result<(Sum, Sum)>>) {
        let (tx, rx) = mpsc::channel();
        let t = Self::spawn("127.0.0.1:0", move |mut s| {
            let r = (|| {
                let mut w = s.try_clone()?;
                let writer = thread::spawn(move || {
                    let r = send_pattern(&mut w, seed, n);
                    let _ = w.shutdown(Shutdown::Write);
                    r
                });
                let received = recv_digest(&mut s);
                let sent = writer
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("panic")));
                Ok((sent?, received?))
            })();
            let _ = tx.send(r);
        })
        .expect("bind duplex target");
        (t, rx)
    }

    /// Write `text` and close.
    pub fn banner(text: &'static str) -> Target {
        Self::spawn("127.0.0.1:0", move |mut s| {
            let _ = s.write_all(text.as_bytes());
            let _ = s.shutdown(Shutdown::Write);
            // Drain until the peer closes so the close is orderly.
            let _ = wait_closed(&mut s, Duration::from_secs(5));
        })
        .expect("bind banner target")
    }

    /// Push data as fast as the connection takes it, up to `limit` bytes, counting bytes
    /// accepted into `pushed`; stops when `stop` is set.
    pub fn firehose(limit: u64, pushed: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Target {
        Self::spawn("127.0.0.1:0", move |mut s| {
            push_until(&mut s, 7, limit, &pushed, &stop);
        })
        .expect("bind firehose target")
    }
}

impl Deref for Target {
    type Target = harness::Target;

    fn deref(&self) -> &harness::Target {
        &self.inner
    }
}

/// Resolve "host:port" to the first address (test helper for IPv6 checks).
pub fn resolve(s: &str) -> Option<SocketAddr> {
    s.to_socket_addrs().ok()?.next()
}

/// VmRSS of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: i32) -> Option<u64> {
    procfs::rss_kib(u32::try_from(pid).ok()?)
}

/// Throughput in MiB/s.
pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-6)
}

// ---------------------------------------------------------------------------------------
// Sources other than 127.0.0.1, and configuration errors
// ---------------------------------------------------------------------------------------

/// A connection to 127.0.0.1:`port` from `src` (a loopback address), with the standard
/// timeouts.
pub fn connect_from(src: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    let sin = |ip: Ipv4Addr, port: u16| {
        // SAFETY: an all-zero sockaddr_in is a valid value; the fields are set below.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(ip).to_be();
        sin.sin_port = port.to_be();
        sin
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned by the TcpStream from the start;
    // every result is checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sin(Ipv4Addr::LOCALHOST, port);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(with_timeouts(stream))
    }
}

/// `server <cfg>` exits 2 at once, naming `file`, `line N` and every string in `mentions`.
pub fn expect_server_config_error(dir: &TempDir, file: &str, line: usize, mentions: &[&str]) {
    let cfg = dir.path().join("server.cfg").to_string_lossy().into_owned();
    let mut p = spawn("server", &["server", &cfg], &[]);
    let status = p.wait_exit(Duration::from_secs(5));
    let log = p.log_text();
    let status = status.unwrap_or_else(|| panic!("still running with a bad config:\n{log}"));
    assert_eq!(status.code(), Some(2), "exit status:\n{log}");
    for m in [file, &format!("line {line}:")]
        .into_iter()
        .chain(mentions.iter().copied())
    {
        assert!(log.contains(m), "stderr should mention {m:?}:\n{log}");
    }
    assert!(!log.contains("listening for clients"), "{log}");
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

/// A UDP echo target on 127.0.0.1 that answers every datagram with the same bytes, for as
/// long as the test runs (its thread ends with the process).
pub fn udp_echo_target() -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on loopback");
    let addr = sock.local_addr().expect("its address");
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Send `data` from `v` to UDP port `port` on 127.0.0.1 and wait for the same bytes back:
/// up to five tries of half a second, as loopback may drop a datagram under load.
pub fn udp_echoes_on(v: &std::net::UdpSocket, port: u16, data: &[u8]) -> bool {
    let mut buf = vec![0u8; 65_536];
    let _ = v.set_read_timeout(Some(Duration::from_millis(500)));
    for _ in 0..5 {
        if v.send_to(data, ("127.0.0.1", port)).is_err() {
            return false;
        }
        if let Ok(n) = v.recv(&mut buf) {
            return &buf[..n] == data;
        }
    }
    false
}

/// [`udp_echoes_on`] from a fresh visitor socket.
pub fn udp_echoes(port: u16, data: &[u8]) -> bool {
    let v = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on loopback");
    udp_echoes_on(&v, port, data)
}

/// A UDP port that was free a moment ago on 127.0.0.1 (a port free for TCP may be taken for
/// UDP, and the other way round).
pub fn free_udp_port() -> u16 {
    harness::free_udp_ports::<1>().expect("bind UDP 127.0.0.1:0")[0]
}

/// A visitor socket on `ip` (127.0.0.x, `::1`), port 0, with a half-second read timeout.
pub fn udp_visitor(ip: impl Into<std::net::IpAddr>) -> std::net::UdpSocket {
    let ip = ip.into();
    let s = std::net::UdpSocket::bind((ip, 0))
        .unwrap_or_else(|e| panic!("a UDP visitor socket on {ip}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
    s
}

/// A UDP target that answers each datagram with `reply(datagram)` and notes the sources it
/// hears from (the client's sockets), for as long as the test runs.
pub struct UdpTarget {
    pub addr: SocketAddr,
    sources: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl UdpTarget {
    pub fn spawn(
        bind: SocketAddr,
        reply: impl Fn(&[u8]) -> Vec<u8> + Send + 'static,
    ) -> io::Result<UdpTarget> {
        let sock = std::net::UdpSocket::bind(bind)?;
        let addr = sock.local_addr()?;
        let sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sources);
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if !seen.contains(&from) {
                        seen.push(from);
                    }
                }
                let _ = sock.send_to(&reply(&buf[..n]), from);
            }
        });
        Ok(UdpTarget { addr, sources })
    }

    /// An echo on 127.0.0.1.
    pub fn echo() -> UdpTarget {
        UdpTarget::spawn(harness::loopback(0), <[u8]>::to_vec).expect("bind a UDP echo target")
    }

    /// The distinct sources heard from so far, in the order first heard.
    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The local UDP ports (IPv4 and IPv6) of the sockets process `pid` holds: its
/// `/proc/<pid>/fd` socket inodes looked up in `/proc/net/udp` and `/proc/net/udp6`.
pub fn udp_ports_of(pid: i32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
        // timeout inode ...
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.iter().any(|i| i == f[9]) {
                let port = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}
