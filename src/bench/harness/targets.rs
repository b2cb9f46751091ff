//! Target servers on loopback threads: [`Target`], any handler on a thread per accepted
//! connection, and [`Targets`], the bench's echo, sink and source services.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::loopback;
use super::udp::{UdpCount, UdpService};

/// Size of each read of the sink and each write of the source (and of the bench's uploads
/// and downloads).
pub const CHUNK: usize = 256 * 1024;

/// A loopback server running a handler on a thread per accepted connection, counting the
/// connections; it stops accepting on drop (the handlers run on until they return).
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

/// Counts a connection as active until its handler returns.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Target {
    /// Listen on `bind` (e.g. "127.0.0.1:0") and serve each connection with `handler`.
    pub fn spawn<F>(bind: impl ToSocketAddrs, handler: F) -> io::Result<Target>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Target::serve(TcpListener::bind(bind)?, handler)
    }

    /// Serve each connection of `listener` with `handler`.
    pub fn serve<F>(listener: TcpListener, handler: F) -> io::Result<Target>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let target = Target {
            addr,
            stop: Arc::default(),
            active: Arc::default(),
            accepted: Arc::default(),
        };
        let (stop, active, accepted) = (
            Arc::clone(&target.stop),
            Arc::clone(&target.active),
            Arc::clone(&target.accepted),
        );
        let handler = Arc::new(handler);
        let name = format!("target-{}", addr.port());
        thread::Builder::new().name(name.clone()).spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else {
                    // Out of descriptors or a connection reset before accept: try again shortly.
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                active.fetch_add(1, Ordering::SeqCst);
                let guard = ActiveGuard(Arc::clone(&active));
                let handler = Arc::clone(&handler);
                // A thread that cannot start drops the connection (and the guard with it).
                let _ = thread::Builder::new().name(name.clone()).spawn(move || {
                    let _guard = guard;
                    handler(conn);
                });
            }
        })?;
        Ok(target)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// "127.0.0.1:port" (or "[::1]:port"), as written in a mapping.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Connections whose handler has not returned yet.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Wait up to `within` until no handler runs; false when some still do.
    pub fn wait_idle(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.active() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}

/// Addresses of the echo, sink and source services, and of the UDP echo and sink.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    pub source: SocketAddr,
    pub udp_echo: SocketAddr,
    pub udp_sink: SocketAddr,
}

/// The bench's services on 127.0.0.1: echo (one mio loop, so that a thousand idle streams
/// cost no thread each), sink and source (a thread per connection), and the UDP echo and
/// sink (a mio loop each).
#[derive(Debug)]
pub struct Targets {
    pub addr: Endpoints,
    _echo: EchoService,
    _sink: Target,
    source: Target,
    /// Bytes written by all the source's connections so far.
    source_written: Arc<AtomicU64>,
    _udp_echo: UdpService,
    _udp_sink: UdpService,
    /// What the UDP sink has received from all its senders so far.
    udp_received: Arc<UdpCount>,
}

impl Targets {
    pub fn start() -> io::Result<Targets> {
        let (echo_service, echo) = EchoService::start_on(loopback(0))?;
        let sink = Target::spawn(loopback(0), sink_conn)?;
        let source_written = Arc::new(AtomicU64::new(0));
        let written = Arc::clone(&source_written);
        let source = Target::spawn(loopback(0), move |s| source_conn(s, &written))?;
        let udp_echo = UdpService::echo(loopback(0))?;
        let udp_received = Arc::new(UdpCount::default());
        let udp_sink = UdpService::sink(loopback(0), Arc::clone(&udp_received))?;
        Ok(Targets {
            addr: Endpoints {
                echo,
                sink: sink.addr(),
                source: source.addr(),
                udp_echo: udp_echo.addr(),
                udp_sink: udp_sink.addr(),
            },
            _echo: echo_service,
            _sink: sink,
            source,
            source_written,
            _udp_echo: udp_echo,
            _udp_sink: udp_sink,
            udp_received,
        })
    }

    /// What the UDP sink has received so far.
    pub fn udp_received(&self) -> &UdpCount {
        &self.udp_received
    }

    /// Bytes written by the source's connections so far.
    pub fn source_written(&self) -> u64 {
        self.source_written.load(Ordering::Relaxed)
    }

    /// Connections of the source that have not ended yet.
    pub fn source_open(&self) -> usize {
        self.source.active()
    }
}

/// The echo loop's thread; dropping it stops the loop and waits for the thread.
#[derive(Debug)]
pub struct EchoService {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoService {
    /// The echo loop on `bind`; the address it listens on.
    pub fn start_on(bind: SocketAddr) -> io::Result<(EchoService, SocketAddr)> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = mio::net::TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("echo".to_string())
            .spawn(move || {
                if let Err(e) = echo_loop(listener, &flag) {
                    eprintln!("bench: the echo service failed: {e}");
                }
            })?;
        let service = EchoService {
            stop,
            thread: Some(thread),
        };
        Ok((service, addr))
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
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
/// bytes written.
fn source_conn(mut s: TcpStream, written: &AtomicU64) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let buf = vec![0xa5_u8; CHUNK];
    loop {
        match s.write(&buf) {
            Ok(0) => return,
            Ok(n) => {
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
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
