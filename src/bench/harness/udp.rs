//! The bench's UDP services on 127.0.0.1, each one mio loop on a thread of its own: an echo
//! (every datagram goes back to its sender) and a sink that counts what it receives, so that
//! a sender can tell its losses. Both read [`dgram::BATCH`] datagrams per system call into
//! 4 MiB socket buffers, as the tunnel's UDP sockets do.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use crate::net::dgram::{self, RecvBatch};
use crate::net::sys;
use crate::net::udp::UDP_SOCKET_BUFFER;

/// Datagrams and payload bytes a sink has received so far.
#[derive(Debug, Default)]
pub struct UdpCount {
    pub datagrams: AtomicU64,
    pub bytes: AtomicU64,
}

impl UdpCount {
    /// Datagrams received so far.
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::Relaxed)
    }
}

/// A UDP service's loop thread; dropping it stops the loop and waits for the thread.
#[derive(Debug)]
pub struct UdpService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpService {
    /// The echo on `bind`: each datagram is sent back to where it came from (one the socket
    /// refuses is lost, as on a network).
    pub fn echo(bind: SocketAddr) -> io::Result<UdpService> {
        UdpService::spawn("udp-echo", bind, |sock, batch| {
            for i in 0..batch.len() {
                let (d, from, _) = batch.get(i);
                if let Some(from) = from {
                    let _ = sock.send_to(d, from);
                }
            }
        })
    }

    /// The sink on `bind`: counts the datagrams and bytes it receives into `count`.
    pub fn sink(bind: SocketAddr, count: Arc<UdpCount>) -> io::Result<UdpService> {
        UdpService::spawn("udp-sink", bind, move |_, batch| {
            let bytes: usize = (0..batch.len()).map(|i| batch.get(i).0.len()).sum();
            count
                .datagrams
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            count.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        })
    }

    /// Bind `bind` (port 0: one of the OS's choice) and run `on_batch` on every batch read.
    fn spawn<F>(name: &str, bind: SocketAddr, mut on_batch: F) -> io::Result<UdpService>
    where
        F: FnMut(&UdpSocket, &RecvBatch) + Send + 'static,
    {
        let mut sock = UdpSocket::bind(bind)?;
        sys::set_socket_buffers(&sock, UDP_SOCKET_BUFFER);
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut run = || -> io::Result<()> {
                    let mut poll = Poll::new()?;
                    let mut events = Events::with_capacity(4);
                    poll.registry()
                        .register(&mut sock, Token(0), Interest::READABLE)?;
                    let mut batch = RecvBatch::default();
                    while !flag.load(Ordering::Relaxed) {
                        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
                            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
                            _ => {}
                        }
                        // Edge-triggered: read until the socket would block. Another error (an
                        // ICMP report for an earlier reply, say) is skipped, a few times at most.
                        let mut errors = 0;
                        loop {
                            match dgram::recv_batch(&sock, &mut batch) {
                                Ok(n) => {
                                    on_batch(&sock, &batch);
                                    if n < dgram::BATCH {
                                        break;
                                    }
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) if errors < 16 => errors += 1,
                                Err(_) => break,
                            }
                        }
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    eprintln!("bench: a UDP service failed: {e}");
                }
            })?;
        Ok(UdpService {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}
