//! Name resolution off the event loop. `getaddrinfo` blocks, so a small fixed pool of worker
//! threads does it and hands results back through a channel and a `mio::Waker`. The pool is
//! bounded (two threads); requests queue behind a slow resolver, and each requester has its
//! own deadline on the loop, so a hung name server delays only the streams that need it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;

use mio::Waker;

/// Who asked: a slab key and the generation of the endpoint that was there.
pub type Ticket = (usize, u64);

pub struct Resolver {
    requests: Sender<(Ticket, String, u16)>,
    results: Receiver<(Ticket, Result<Vec<SocketAddr>, String>)>,
}

impl Resolver {
    pub fn new(waker: Arc<Waker>, threads: usize) -> std::io::Result<Resolver> {
        let (req_tx, req_rx) = channel::<(Ticket, String, u16)>();
        let (res_tx, res_rx) = channel();
        let req_rx = Arc::new(Mutex::new(req_rx));
        for i in 0..threads {
            let req_rx = Arc::clone(&req_rx);
            let res_tx = res_tx.clone();
            let waker = Arc::clone(&waker);
            thread::Builder::new()
                .name(format!("resolver-{i}"))
                .spawn(move || {
                    loop {
                        let next = match req_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((ticket, host, port)) = next else {
                            return;
                        };
                        let result = resolve(&host, port);
                        if res_tx.send((ticket, result)).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                })?;
        }
        Ok(Resolver {
            requests: req_tx,
            results: res_rx,
        })
    }

    pub fn submit(&self, ticket: Ticket, host: &str, port: u16) {
        let _ = self.requests.send((ticket, host.to_owned(), port));
    }

    /// Results that are ready, without blocking.
    pub fn ready(&self) -> impl Iterator<Item = (Ticket, Result<Vec<SocketAddr>, String>)> + '_ {
        self.results.try_iter()
    }
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("name {host} has no addresses"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}
