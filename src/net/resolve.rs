//! Name resolution off the event loop. `getaddrinfo` blocks, so a small fixed pool of worker
//! threads does it and hands results back through a channel and a `mio::Waker`. The pool is
//! bounded (two threads) and starts with the first request; requests queue behind a slow
//! resolver, and each requester has its own deadline on the loop, so a hung name server
//! delays only the streams that need it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;

use mio::Waker;

/// Who asked: a slab key and the generation of the endpoint that was there.
pub type Ticket = (usize, u64);

type Request = (Ticket, String, u16);
type Answer = (Ticket, Result<Vec<SocketAddr>, String>);

pub struct Resolver {
    requests: Sender<Request>,
    results: Receiver<Answer>,
    /// What the workers need, until the first request starts them: a process that never
    /// resolves a name (a server, a client of IP targets) runs no extra thread.
    idle: Option<Workers>,
}

struct Workers {
    threads: usize,
    requests: Arc<Mutex<Receiver<Request>>>,
    results: Sender<Answer>,
    waker: Arc<Waker>,
}

impl Resolver {
    pub fn new(waker: Arc<Waker>, threads: usize) -> std::io::Result<Resolver> {
        let (req_tx, req_rx) = channel::<Request>();
        let (res_tx, res_rx) = channel();
        Ok(Resolver {
            requests: req_tx,
            results: res_rx,
            idle: Some(Workers {
                threads,
                requests: Arc::new(Mutex::new(req_rx)),
                results: res_tx,
                waker,
            }),
        })
    }

    pub fn submit(&mut self, ticket: Ticket, host: &str, port: u16) {
        if let Some(workers) = self.idle.take()
            && let Err(e) = workers.start()
        {
            // No worker: the request fails now, through the usual path.
            let _ = workers
                .results
                .send((ticket, Err(format!("cannot start name resolution: {e}"))));
            let _ = workers.waker.wake();
            self.idle = Some(workers);
            return;
        }
        let _ = self.requests.send((ticket, host.to_owned(), port));
    }

    /// Results that are ready, without blocking.
    pub fn ready(&self) -> impl Iterator<Item = Answer> + '_ {
        self.results.try_iter()
    }
}

impl Workers {
    /// Start the worker threads; Ok when at least one runs.
    fn start(&self) -> std::io::Result<()> {
        let mut failure = None;
        let mut started = 0;
        for i in 0..self.threads {
            let req_rx = Arc::clone(&self.requests);
            let res_tx = self.results.clone();
            let waker = Arc::clone(&self.waker);
            let spawned = thread::Builder::new()
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
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if started == 0 => Err(e),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// No thread runs until a name is asked for; then the answer comes back through the
    /// waker, like any other event of the loop.
    #[test]
    fn workers_start_with_the_first_request() {
        let mut poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(7)).expect("waker"));
        let mut resolver = Resolver::new(waker, 2).expect("resolver");
        assert!(resolver.idle.is_some(), "nothing started yet");
        resolver.submit((3, 9), "localhost", 22);
        assert!(resolver.idle.is_none(), "started by the request");
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            if let Some(answer) = resolver.ready().next() {
                break answer;
            }
            assert!(Instant::now() < deadline, "no answer in time");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
        };
        let (ticket, result) = answer;
        assert_eq!(ticket, (3, 9));
        let addrs = result.expect("localhost resolves");
        assert!(addrs.iter().all(|a| a.port() == 22 && a.ip().is_loopback()));
    }
}
