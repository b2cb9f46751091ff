//! Bandwidth limits (`[LIMIT]`, `BANDWIDTH`): one token bucket per limited public port and
//! direction, shared by all the port's streams, enforced on the server by the backpressure
//! the pumps already have.
//!
//! - **Up** (visitor -> target): a relay reads from the visitor's socket at most the tokens
//!   of its port's up-bucket. With none left it keeps its `readable` flag (readiness is
//!   edge-triggered: no second event would come), is noted as throttled and waits; the
//!   visitor's unread bytes wait in its socket, and TCP slows the visitor down.
//! - **Down** (target -> visitor): a relay writes to the visitor's socket at most the tokens
//!   of the down-bucket; the rest stays in its bounded `pending` (or its pipe). Credit is
//!   returned only for bytes written, so the client sends no more than a window ahead.
//!
//! A bucket holds at most a quarter second of its rate (the burst) and starts full. A port
//! whose relays wait has one timer, set for when the bucket will hold a wake-up's worth of
//! tokens (a fiftieth of a second of its rate, or 1460 bytes if more, within the burst; at
//! least 1 ms away), and with fewer tokens than that nothing moves: a relay woken by its
//! socket a moment after it took the last ones waits too, rather than read the few bytes
//! the moment brought, turn after turn. Never a busy loop. The timer wakes the waiting
//! relays in the order they began to wait, writers only while tokens last; a relay that
//! moved bytes and must wait again goes behind the others, so the port's streams take the
//! refills in turn.
//!
//! Unlimited ports pay one `is_empty` check (no limit anywhere: the client, most servers)
//! or one hash lookup per read and write; limited ports pay the bucket arithmetic there.
//! The bucket is a pure function of the `Instant`s it is given (tested below with made-up
//! ones).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::Rate;
use crate::net::reactor::{Core, TimerTarget};

/// The burst: a bucket holds at most this fraction of a second of its rate (1/4).
const BURST_DIVISOR: u64 = 4;
/// A waiting port's timer fires when a fiftieth of a second of its rate has come in.
const WAKE_DIVISOR: u64 = 50;
/// Nor before a packet's worth (within the burst), so that a slow limit does not move its
/// bytes a few at a time, in many small frames.
const MIN_CHUNK: u64 = 1460;
/// And never sooner than this.
const MIN_WAKE: Duration = Duration::from_millis(1);

const NANOS: u128 = 1_000_000_000;

/// A token bucket counting bytes, filled at a rate given in bits per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bits_per_sec: u64,
    /// At most this many tokens (bytes): a quarter second.
    capacity: u64,
    tokens: u64,
    /// The time up to which `tokens` counts what came in.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        let capacity = capacity_of(rate);
        TokenBucket {
            bits_per_sec: rate.bits_per_sec(),
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.bits_per_sec
    }

    /// Change the rate; the tokens already in are kept, up to the new burst.
    pub fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.bits_per_sec = rate.bits_per_sec();
        self.capacity = capacity_of(rate);
        self.tokens = self.tokens.min(self.capacity);
        self.at = now;
    }

    /// Tokens (bytes) that may move now.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    /// Spend `n` tokens (no more than there are).
    pub fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    /// Tokens that may move now, if at least a wake-up's worth: with fewer, nothing moves
    /// until the timer. (Time passes between two loop turns, so there are always a few
    /// tokens: a relay that took those and was queued again would read a few bytes a turn,
    /// a busy loop.)
    pub fn usable(&mut self, now: Instant) -> u64 {
        let tokens = self.available(now);
        if tokens >= self.chunk() { tokens } else { 0 }
    }

    /// A wake-up's worth of tokens: a fiftieth of a second of the rate, at least
    /// `MIN_CHUNK`, at most the burst.
    fn chunk(&self) -> u64 {
        (self.bits_per_sec / 8 / WAKE_DIVISOR)
            .max(MIN_CHUNK)
            .min(self.capacity)
    }

    /// When the bucket will hold a wake-up's worth of tokens (at least `MIN_WAKE` after
    /// `now`).
    pub fn wake_at(&self, now: Instant) -> Instant {
        let need = self.chunk().saturating_sub(self.tokens);
        let nanos = (u128::from(need) * 8 * NANOS).div_ceil(u128::from(self.bits_per_sec));
        let at = self.at + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        at.max(now + MIN_WAKE)
    }

    /// Count what came in since `at`, keeping the fraction of a byte for the next time.
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.at) else {
            return;
        };
        let rate = u128::from(self.bits_per_sec);
        let came = elapsed.as_nanos() * rate / (8 * NANOS);
        let room = u128::from(self.capacity - self.tokens);
        if came >= room {
            self.tokens = self.capacity;
            self.at = now;
        } else {
            self.tokens += came as u64;
            // The time those whole bytes took; what is left over counts next time.
            let used = came * 8 * NANOS / rate;
            self.at += Duration::from_nanos(used as u64);
        }
    }
}

/// A quarter second of `rate`, in bytes (at least one).
fn capacity_of(rate: Rate) -> u64 {
    (rate.bits_per_sec() / 8 / BURST_DIVISOR).max(1)
}

/// Which way bytes move, seen from the visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Read from the visitor's socket, toward the target.
    Up = 0,
    /// Written to the visitor's socket, from the target.
    Down = 1,
}

impl Dir {
    /// The relay's `throttled` bit for this direction.
    pub fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// One limited port: its two buckets and the relays waiting for them.
#[derive(Debug)]
struct PortLimit {
    buckets: [TokenBucket; 2],
    /// Relays waiting for tokens, by direction: (key, generation), oldest first.
    waiting: [VecDeque<(usize, u64)>; 2],
    /// The port's wake-up timer, when one is set.
    timer: Option<Instant>,
}

/// The limited ports, by public port.
#[derive(Debug, Default)]
pub struct Limits {
    ports: HashMap<u16, PortLimit>,
}

impl Limits {
    /// The tokens relays of `port` may move `dir` now (0 below a wake-up's worth): `None`
    /// when the port is not limited.
    #[inline]
    pub fn allowance(&mut self, port: u16, dir: Dir, now: Instant) -> Option<usize> {
        if self.ports.is_empty() {
            return None;
        }
        let l = self.ports.get_mut(&port)?;
        let n = l.buckets[dir as usize].usable(now);
        Some(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Spend `n` tokens of `port`'s bucket for `dir`. True when the port is limited and its
    /// bucket holds less than a wake-up's worth now.
    #[inline]
    pub fn spend(&mut self, port: u16, dir: Dir, n: usize, now: Instant) -> bool {
        if self.ports.is_empty() {
            return false;
        }
        let Some(l) = self.ports.get_mut(&port) else {
            return false;
        };
        let b = &mut l.buckets[dir as usize];
        b.take(n as u64);
        b.usable(now) == 0
    }

    /// A datagram of `n` bytes may move `dir` on `port` (always, when the port is not
    /// limited): its tokens are spent. Policing, not shaping: one that does not fit the
    /// bucket now is the caller's to drop.
    #[inline]
    pub fn take_datagram(&mut self, port: u16, dir: Dir, n: usize, now: Instant) -> bool {
        if self.ports.is_empty() {
            return true;
        }
        let Some(l) = self.ports.get_mut(&port) else {
            return true;
        };
        let b = &mut l.buckets[dir as usize];
        if b.available(now) < n as u64 {
            return false;
        }
        b.take(n as u64);
        true
    }

    /// Whether `port` is limited.
    #[inline]
    pub fn is_limited(&self, port: u16) -> bool {
        !self.ports.is_empty() && self.ports.contains_key(&port)
    }

    /// The rate `port` is limited to.
    pub fn rate(&self, port: u16) -> Option<u64> {
        self.ports.get(&port).map(|l| l.buckets[0].rate())
    }
}

impl Core {
    /// Limit `port` to `rate` (`None`: no limit), at once for its open streams too. Relays
    /// waiting for its tokens are woken to find out how much the new rate lets them move.
    pub fn set_limit(&mut self, port: u16, rate: Option<Rate>) {
        let now = self.now;
        let waiting = match (rate, self.limits.ports.get_mut(&port)) {
            (None, None) => return,
            (Some(rate), None) => {
                let bucket = TokenBucket::new(rate, now);
                self.limits.ports.insert(
                    port,
                    PortLimit {
                        buckets: [bucket.clone(), bucket],
                        waiting: Default::default(),
                        timer: None,
                    },
                );
                return;
            }
            (Some(rate), Some(l)) if l.buckets[0].rate() == rate.bits_per_sec() => return,
            (Some(rate), Some(l)) => {
                for b in &mut l.buckets {
                    b.set_rate(rate, now);
                }
                l.timer = None;
                std::mem::take(&mut l.waiting)
            }
            (None, Some(_)) => match self.limits.ports.remove(&port) {
                Some(l) => l.waiting,
                None => return,
            },
        };
        self.wake(waiting);
    }

    /// Relay `rkey` found its port's bucket for `dir` empty: it waits for the port's timer.
    pub(crate) fn throttle(&mut self, rkey: usize, dir: Dir) {
        let Some(generation) = self.generation_of(rkey) else {
            return;
        };
        let Some(r) = self.relay_mut(rkey) else {
            return;
        };
        if r.throttled & dir.bit() != 0 {
            return;
        }
        r.throttled |= dir.bit();
        let port = r.port;
        let Some(l) = self.limits.ports.get_mut(&port) else {
            return;
        };
        l.waiting[dir as usize].push_back((rkey, generation));
        self.arm(port);
    }

    /// Set the port's timer, if relays wait and none is set.
    fn arm(&mut self, port: u16) {
        let now = self.now;
        let Some(l) = self.limits.ports.get_mut(&port) else {
            return;
        };
        if l.timer.is_some() {
            return;
        }
        let at = [Dir::Up, Dir::Down]
            .into_iter()
            .filter(|&d| !l.waiting[d as usize].is_empty())
            .map(|d| l.buckets[d as usize].wake_at(now))
            .min();
        if let Some(at) = at {
            l.timer = Some(at);
            self.schedule(at, TimerTarget::Limit(port));
        }
    }

    /// The timer of `port`, set for `at`: wake the relays waiting for its tokens. The oldest
    /// waiting reader goes to the ready queue when there are tokens upward (it reads what
    /// they allow, and waits again behind the others if it used them up: a port with
    /// thousands of waiting visitors costs one wake-up a tick, not thousands); writers write
    /// now, oldest first, while tokens last: one that wrote and must wait again goes behind
    /// those that did not get to write.
    pub(crate) fn limit_tick(&mut self, port: u16, at: Instant) {
        let now = self.now;
        let Some(l) = self.limits.ports.get_mut(&port) else {
            return;
        };
        if l.timer != Some(at) {
            return; // a timer the rate change replaced
        }
        l.timer = None;
        let mut reader = VecDeque::new();
        if l.buckets[Dir::Up as usize].usable(now) > 0 {
            // Stale entries (relays gone since) do not use up the turn.
            while let Some((rkey, generation)) = self
                .limits
                .ports
                .get_mut(&port)
                .and_then(|l| l.waiting[Dir::Up as usize].pop_front())
            {
                if self.generation_of(rkey) == Some(generation) {
                    reader.push_back((rkey, generation));
                    break;
                }
            }
        }
        let Some(l) = self.limits.ports.get_mut(&port) else {
            return;
        };
        let mut turns = l.waiting[Dir::Down as usize].len();
        self.wake([reader, VecDeque::new()]);
        while turns > 0 {
            turns -= 1;
            let Some(l) = self.limits.ports.get_mut(&port) else {
                return;
            };
            if l.buckets[Dir::Down as usize].usable(now) == 0 {
                break;
            }
            let Some(writer) = l.waiting[Dir::Down as usize].pop_front() else {
                break;
            };
            self.wake([VecDeque::new(), VecDeque::from([writer])]);
        }
        self.arm(port);
    }

    /// Let waiting relays move again: readers go to the ready queue, writers write now.
    fn wake(&mut self, waiting: [VecDeque<(usize, u64)>; 2]) {
        let [up, down] = waiting;
        for (dir, list) in [(Dir::Up, up), (Dir::Down, down)] {
            for (rkey, generation) in list {
                if self.generation_of(rkey) != Some(generation) {
                    continue;
                }
                let Some(r) = self.relay_mut(rkey) else {
                    continue;
                };
                r.throttled &= !dir.bit();
                match dir {
                    Dir::Up if r.readable => self.enqueue_relay(rkey),
                    Dir::Up => {}
                    Dir::Down => self.relay_writable(rkey),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(bits: u64) -> Rate {
        Rate::from_bits(bits).unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_full_with_a_quarter_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(8_000_000), t0); // 1 MB/s
        assert_eq!(b.available(t0), 250_000);
        // It never holds more than the burst, however long it waits.
        assert_eq!(b.available(t0 + Duration::from_secs(100)), 250_000);
    }

    #[test]
    fn refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(8_000_000), t0);
        b.take(250_000);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + 10 * MS), 10_000);
        b.take(10_000);
        assert_eq!(b.available(t0 + 10 * MS), 0);
        assert_eq!(b.available(t0 + 110 * MS), 100_000);
        // Spending more than there is leaves none, not a debt.
        b.take(1_000_000);
        assert_eq!(b.available(t0 + 110 * MS), 0);
    }

    /// Over many small refills the fractions of a byte add up: no byte is lost to rounding.
    #[test]
    fn fractions_of_a_byte_are_kept() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(1_000), t0); // 125 bytes/s, 31 bytes of burst
        b.take(31);
        let mut moved = 0;
        for i in 1..=10_000u32 {
            let now = t0 + Duration::from_micros(100) * i; // one second in 10,000 steps
            let n = b.available(now);
            b.take(n);
            moved += n;
        }
        assert_eq!(moved, 125);
    }

    #[test]
    fn a_drained_bucket_moves_its_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(100_000_000), t0); // 12.5 MB/s
        let mut moved = 0u64;
        let mut now = t0;
        // A greedy reader woken every 7 ms for 10 s.
        while now < t0 + Duration::from_secs(10) {
            let n = b.available(now);
            b.take(n);
            moved += n;
            now += 7 * MS;
        }
        let expected = 12_500_000 * 10 + 3_125_000; // ten seconds and the first burst
        assert!(moved.abs_diff(expected) < 12_500_000 / 100, "{moved}");
    }

    #[test]
    fn wake_up_when_a_fiftieth_of_a_second_came_in() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(8_000_000), t0);
        b.take(250_000);
        // 20,000 bytes at 1 MB/s: 20 ms.
        assert_eq!(b.wake_at(t0), t0 + 20 * MS);
        assert_eq!(b.available(t0 + 20 * MS), 20_000);
        // Never sooner than a millisecond: no busy loop, even with tokens in.
        assert_eq!(b.wake_at(t0 + 20 * MS), t0 + 21 * MS);
        // A slow rate waits for its whole burst (31 bytes at 125 bytes/s: 248 ms).
        let mut slow = TokenBucket::new(rate(1_000), t0);
        slow.take(31);
        assert_eq!(slow.wake_at(t0), t0 + 248 * MS);
    }

    /// A few tokens, the time between two loop turns, move nothing: the relay waits for a
    /// fiftieth of a second's worth, which the timer is set for.
    #[test]
    fn nothing_moves_below_a_wake_up_s_worth() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(8_000_000), t0); // chunk 20,000 bytes
        b.take(250_000);
        assert_eq!(b.usable(t0 + MS), 0);
        assert_eq!(b.available(t0 + MS), 1_000);
        assert_eq!(b.usable(t0 + 19 * MS), 0);
        assert_eq!(b.usable(t0 + 20 * MS), 20_000);
        assert_eq!(b.wake_at(t0 + MS), t0 + 20 * MS);
    }

    #[test]
    fn a_new_rate_keeps_the_tokens_within_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(80_000_000), t0); // burst 2.5 MB
        b.set_rate(rate(8_000_000), t0);
        assert_eq!(b.available(t0), 250_000);
        b.take(250_000);
        b.set_rate(rate(80_000_000), t0 + 10 * MS);
        assert_eq!(b.available(t0 + 10 * MS), 10_000);
        assert_eq!(b.available(t0 + 20 * MS), 110_000);
        assert_eq!(b.rate(), 80_000_000);
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new(rate(8_000_000), t0);
        b.take(250_000);
        assert_eq!(b.available(t0 - 500 * MS), 0);
        assert_eq!(b.available(t0 + MS), 1_000);
    }

    #[test]
    fn limits_know_only_limited_ports() {
        let t0 = Instant::now();
        let mut l = Limits::default();
        assert_eq!(l.allowance(1, Dir::Up, t0), None);
        assert!(!l.spend(1, Dir::Up, 10, t0));
        let b = TokenBucket::new(rate(8_000), t0); // burst 250 bytes
        l.ports.insert(
            7,
            PortLimit {
                buckets: [b.clone(), b],
                waiting: Default::default(),
                timer: None,
            },
        );
        assert_eq!(l.allowance(1, Dir::Up, t0), None);
        assert_eq!(l.allowance(7, Dir::Up, t0), Some(250));
        // Below a wake-up's worth (here the whole burst) nothing moves.
        assert!(l.spend(7, Dir::Up, 1, t0));
        assert_eq!(l.allowance(7, Dir::Up, t0), Some(0));
        assert_eq!(
            l.allowance(7, Dir::Up, t0 + Duration::from_millis(1)),
            Some(250)
        );
        // Each direction has its own bucket.
        assert_eq!(l.allowance(7, Dir::Down, t0), Some(250));
        assert_eq!(l.rate(7), Some(8_000));
    }
}
