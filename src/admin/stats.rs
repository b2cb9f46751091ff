//! The counters the admin API and the metrics read: plain integers bumped where a thing
//! happens (a visitor's outcome, a handshake, a tunnel's end), never per frame; and the
//! views that add the live streams' counts to those of the streams that ended, walking the
//! slab once per request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::net::endpoint::Endpoint;
use crate::net::reactor::{ByteCount, Core};

/// What became of a visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// The client connected the target.
    Served,
    /// No client of the mapping's tag was attached.
    NoClient,
    /// The client could not connect the target (or did not answer in time).
    TargetFailed,
    /// Turned away at the server: every client at its stream limit, or no resources.
    Refused,
}

impl Visit {
    pub const ALL: [Visit; 4] = [
        Visit::Served,
        Visit::NoClient,
        Visit::TargetFailed,
        Visit::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Visit::Served => "served",
            Visit::NoClient => "no_client",
            Visit::TargetFailed => "target_failed",
            Visit::Refused => "refused",
        }
    }
}

/// Results a handshake is counted under.
pub const HANDSHAKE_RESULTS: [&str; 5] = ["ok", "auth_failed", "timeout", "malformed", "version"];

/// The server's counters.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Visitors by public port (every port ever mapped) and [`Visit`].
    pub visitors: BTreeMap<u16, [u64; 4]>,
    /// The same for UDP ports: flows served (the client connected their target) or whose
    /// target failed, and datagrams from new sources that got no flow (no client, refused).
    pub udp_visitors: BTreeMap<u16, [u64; 4]>,
    /// Established tunnels that ended, by close-reason label.
    pub tunnel_closes: BTreeMap<&'static str, u64>,
    /// Handshakes by result.
    pub handshakes: BTreeMap<&'static str, u64>,
    /// Connections on INNER_PORT closed at accept for coming from outside `ALLOW`.
    pub clients_refused: u64,
}

impl ServerCounters {
    /// A port is mapped (at start-up, by reload or through the API): its series exist from
    /// then on.
    pub fn mapped(&mut self, port: u16) {
        self.visitors.entry(port).or_default();
    }

    pub fn visit(&mut self, port: u16, v: Visit) {
        self.visitors.entry(port).or_default()[v as usize] += 1;
    }

    /// A UDP port is mapped: its series exist from then on.
    pub fn mapped_udp(&mut self, port: u16) {
        self.udp_visitors.entry(port).or_default();
    }

    pub fn udp_visit(&mut self, port: u16, v: Visit) {
        self.udp_visitors.entry(port).or_default()[v as usize] += 1;
    }

    pub fn handshake(&mut self, result: &'static str) {
        *self.handshakes.entry(result).or_default() += 1;
    }

    pub fn tunnel_closed(&mut self, label: &'static str) {
        *self.tunnel_closes.entry(label).or_default() += 1;
    }
}

/// Open streams and what they moved, with the ended ones' counts added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub streams: usize,
    pub bytes: ByteCount,
}

/// Every live stream's counts, by public port and by tunnel, from one walk of the slab.
/// UDP flows count as streams of their tunnel and in the total, and by port apart from the
/// TCP streams (`udp_flows`); their bytes are the core's `udp_stats`.
#[derive(Debug, Default)]
pub struct Live {
    pub by_port: HashMap<u16, Traffic>,
    pub by_tunnel: HashMap<usize, Traffic>,
    pub total: Traffic,
    /// Flows open, by public UDP port (0 on the client).
    pub udp_flows: HashMap<u16, usize>,
}

impl Live {
    pub fn of(core: &Core) -> Live {
        let mut live = Live::default();
        for (_, entry) in core.slab.iter() {
            let (port, tunnel, bytes) = match &entry.ep {
                Endpoint::Relay(r) => (
                    r.port,
                    r.tunnel,
                    ByteCount {
                        read: r.bytes_read,
                        written: r.bytes_written,
                    },
                ),
                Endpoint::Resolving(p) => (0, p.tunnel, ByteCount::default()),
                Endpoint::UdpFlow(f) => {
                    *live.udp_flows.entry(f.port).or_default() += 1;
                    live.by_tunnel.entry(f.tunnel).or_default().streams += 1;
                    live.total.streams += 1;
                    continue;
                }
                _ => continue,
            };
            for t in [
                live.by_port.entry(port).or_default(),
                live.by_tunnel.entry(tunnel).or_default(),
                &mut live.total,
            ] {
                t.streams += 1;
                t.bytes.add(bytes);
            }
        }
        live
    }

    /// A port's open streams, and its bytes with those of its ended streams.
    pub fn port(&self, core: &Core, port: u16) -> Traffic {
        let mut t = self.by_port.get(&port).copied().unwrap_or_default();
        if let Some(done) = core.retired.get(&port) {
            t.bytes.add(*done);
        }
        t
    }

    /// A tunnel's open streams, and its bytes with those of its ended streams.
    pub fn tunnel(&self, core: &Core, key: usize) -> Traffic {
        let mut t = self.by_tunnel.get(&key).copied().unwrap_or_default();
        if let Some(Endpoint::Tunnel(tunnel)) = core.endpoint(key) {
            t.bytes.add(tunnel.retired);
        }
        t
    }

    /// Every stream's bytes, ended ones included.
    pub fn all(&self, core: &Core) -> Traffic {
        let mut t = self.total;
        for done in core.retired.values() {
            t.bytes.add(*done);
        }
        t
    }
}

/// How many samples a tunnel keeps: one a second, a little over the rate's window.
const SAMPLES: usize = 6;
/// The window of the current rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A tunnel's byte counts over the last seconds, for its current rate.
#[derive(Debug, Default)]
pub struct RateHistory {
    samples: VecDeque<(Instant, ByteCount)>,
}

impl RateHistory {
    pub fn record(&mut self, at: Instant, bytes: ByteCount) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, bytes));
    }

    /// Bytes per second (read, written) from the oldest sample within the window (or the
    /// oldest there is) to `now`'s counts; 0 before a sample a second old exists.
    pub fn rate(&self, now: Instant, bytes: ByteCount) -> ByteCount {
        let from = self
            .samples
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= RATE_WINDOW + Duration::from_millis(500))
            .or(self.samples.front());
        let Some(&(at, old)) = from else {
            return ByteCount::default();
        };
        per_second(bytes, old, now.duration_since(at))
    }
}

/// `(now - then) / elapsed`, per direction; 0 over less than half a second.
pub fn per_second(now: ByteCount, then: ByteCount, elapsed: Duration) -> ByteCount {
    let secs = elapsed.as_secs_f64();
    if secs < 0.5 {
        return ByteCount::default();
    }
    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs).round() as u64;
    ByteCount {
        read: rate(now.read, then.read),
        written: rate(now.written, then.written),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(read: u64, written: u64) -> ByteCount {
        ByteCount { read, written }
    }

    #[test]
    fn rate_covers_the_last_five_seconds() {
        let t0 = Instant::now();
        let mut h = RateHistory::default();
        assert_eq!(h.rate(t0, bytes(100, 0)), bytes(0, 0));
        // 1,000 bytes a second read for 10 s, then nothing.
        for s in 0..=10 {
            h.record(t0 + Duration::from_secs(s), bytes(1000 * s, 10 * s));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(h.rate(now, bytes(10_000, 100)), bytes(1000, 10));
        // Idle for 5 s: the rate falls to 0.
        for s in 11..=15 {
            h.record(t0 + Duration::from_secs(s), bytes(10_000, 100));
        }
        let now = t0 + Duration::from_secs(15);
        assert_eq!(h.rate(now, bytes(10_000, 100)), bytes(0, 0));
    }

    #[test]
    fn counters_start_every_port_at_zero() {
        let mut c = ServerCounters::default();
        c.mapped(80);
        c.mapped(82);
        c.visit(80, Visit::Served);
        c.visit(80, Visit::Served);
        c.visit(81, Visit::NoClient);
        assert_eq!(c.visitors[&80], [2, 0, 0, 0]);
        assert_eq!(c.visitors[&81], [0, 1, 0, 0]);
        assert_eq!(c.visitors[&82], [0, 0, 0, 0]);
        c.tunnel_closed("kicked");
        assert_eq!(c.tunnel_closes["kicked"], 1);
    }
}
