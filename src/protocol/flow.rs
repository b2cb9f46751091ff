//! Per-stream flow control and half-close state: pure accounting, no I/O.
//!
//! Each side announces a receive window per stream in the handshake. A sender may have at
//! most that many bytes in flight: bytes sent that the receiver has not yet handed to the
//! destination socket. The receiver returns credit as it delivers, in batches of a quarter
//! window, so a bulk transfer costs one CREDIT frame per quarter window, not one per frame.
//! A peer that sends beyond its credit, or data after FIN, violates the protocol.

/// Why a peer's frame breaks the stream's rules. Closes the tunnel.
pub type Violation = &'static str;

/// One direction of a stream: open, or finished by a FIN (sent or received).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Open,
    Finished,
}

/// A tunnel's two receive windows per stream, announced in the handshake. They are the same
/// for every stream of the tunnel, so they are kept once, not in every stream's `Flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// The peer's: our credit can never exceed it.
    pub send: u32,
    /// Ours.
    pub recv: u32,
}

#[derive(Debug, Clone)]
pub struct Flow {
    /// Bytes we may still send.
    send_credit: u32,
    /// Bytes received and not yet returned as credit (delivered or still buffered).
    recv_in_flight: u32,
    /// Of those, bytes delivered to the destination but not yet announced as credit.
    delivered_unannounced: u32,
    /// Our direction: data may be sent until our FIN.
    send: Half,
    /// The peer's direction: data may arrive until its FIN.
    recv: Half,
}

impl Flow {
    pub fn new(w: Windows) -> Flow {
        Flow {
            send_credit: w.send,
            recv_in_flight: 0,
            delivered_unannounced: 0,
            send: Half::Open,
            recv: Half::Open,
        }
    }

    /// How many bytes we may send now.
    pub fn send_credit(&self) -> usize {
        if !self.may_send() {
            0
        } else {
            self.send_credit as usize
        }
    }

    /// We sent `n` bytes of data (`n` must be within `send_credit`).
    pub fn on_sent(&mut self, n: usize) {
        debug_assert!(n <= self.send_credit());
        self.send_credit -= n as u32;
    }

    /// The peer granted `n` more bytes.
    pub fn on_credit(&mut self, n: u32, w: Windows) -> Result<(), Violation> {
        match self.send_credit.checked_add(n) {
            Some(c) if c <= w.send => {
                self.send_credit = c;
                Ok(())
            }
            _ => Err("credit beyond the announced window"),
        }
    }

    /// The peer sent `n` bytes of data.
    pub fn on_received(&mut self, n: usize, w: Windows) -> Result<(), Violation> {
        if !self.may_recv() {
            return Err("data after FIN");
        }
        let total = self.recv_in_flight as usize + n;
        if total > w.recv as usize {
            return Err("data beyond the stream's window");
        }
        self.recv_in_flight = total as u32;
        Ok(())
    }

    /// `n` received bytes reached the destination. Returns the credit to announce, if a
    /// batch is due.
    pub fn on_delivered(&mut self, n: usize, w: Windows) -> Option<u32> {
        debug_assert!(self.delivered_unannounced as usize + n <= self.recv_in_flight as usize);
        self.delivered_unannounced += n as u32;
        if self.delivered_unannounced >= (w.recv / 4).max(1) {
            let credit = self.delivered_unannounced;
            self.recv_in_flight -= credit;
            self.delivered_unannounced = 0;
            Some(credit)
        } else {
            None
        }
    }

    /// Bytes received but not yet delivered.
    pub fn undelivered(&self) -> usize {
        (self.recv_in_flight - self.delivered_unannounced) as usize
    }

    pub fn on_fin_sent(&mut self) {
        self.send = Half::Finished;
    }

    pub fn on_fin_received(&mut self) -> Result<(), Violation> {
        if !self.may_recv() {
            return Err("second FIN on a stream");
        }
        self.recv = Half::Finished;
        Ok(())
    }

    /// Our FIN is not sent yet: data may still go out.
    pub fn may_send(&self) -> bool {
        self.send == Half::Open
    }

    /// The peer's FIN has not arrived: data may still come.
    pub fn may_recv(&self) -> bool {
        self.recv == Half::Open
    }

    /// The peer's FIN arrived and every byte before it was delivered: the destination's
    /// write half can be shut.
    pub fn recv_complete(&self) -> bool {
        !self.may_recv() && self.undelivered() == 0
    }

    /// Both directions finished and everything received was delivered: the stream is over.
    pub fn is_done(&self) -> bool {
        !self.may_send() && self.recv_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(n: u32) -> Windows {
        Windows { send: n, recv: n }
    }

    #[test]
    fn sender_stops_at_the_window_and_resumes_on_credit() {
        let w = both(100);
        let mut f = Flow::new(w);
        assert_eq!(f.send_credit(), 100);
        f.on_sent(60);
        f.on_sent(40);
        assert_eq!(f.send_credit(), 0);
        f.on_credit(25, w).unwrap();
        assert_eq!(f.send_credit(), 25);
        assert!(
            f.on_credit(76, w).is_err(),
            "credit past the window is a violation"
        );
        assert!(f.on_credit(u32::MAX, w).is_err());
    }

    #[test]
    fn receiver_enforces_its_window() {
        let w = both(100);
        let mut f = Flow::new(w);
        f.on_received(100, w).unwrap();
        assert!(f.on_received(1, w).is_err());
    }

    #[test]
    fn credit_is_returned_in_quarter_window_batches() {
        let w = both(1000);
        let mut f = Flow::new(w);
        f.on_received(1000, w).unwrap();
        assert_eq!(f.on_delivered(100, w), None);
        assert_eq!(f.on_delivered(100, w), None);
        assert_eq!(f.on_delivered(50, w), Some(250));
        assert_eq!(f.undelivered(), 750);
        // The freed window can be filled again, and no more.
        f.on_received(250, w).unwrap();
        assert!(f.on_received(1, w).is_err());
    }

    #[test]
    fn two_peers_move_a_large_transfer_without_exceeding_the_window() {
        // Sender A, receiver B, a window of 64 KiB, destination takes 3000 bytes per turn.
        let window = 65536;
        let w = both(window);
        let mut a = Flow::new(w);
        let mut b = Flow::new(w);
        let (mut sent, mut delivered, total) = (0usize, 0usize, 10_000_000usize);
        let mut in_flight: Vec<usize> = Vec::new();
        for _ in 0..1_000_000 {
            if delivered == total {
                break;
            }
            let n = a.send_credit().min(16384).min(total - sent);
            if n > 0 {
                a.on_sent(n);
                b.on_received(n, w).unwrap();
                in_flight.push(n);
                sent += n;
            }
            let d = b.undelivered().min(3000);
            if d > 0 {
                delivered += d;
                if let Some(c) = b.on_delivered(d, w) {
                    a.on_credit(c, w).unwrap();
                }
            }
            assert!(b.undelivered() <= window as usize);
        }
        assert_eq!(delivered, total);
    }

    #[test]
    fn half_close_in_either_order() {
        let w = both(10);
        let mut f = Flow::new(both(10));
        f.on_fin_sent();
        assert_eq!(f.send_credit(), 0, "nothing may be sent after our FIN");
        assert!(!f.is_done());
        f.on_received(5, w).unwrap();
        f.on_fin_received().unwrap();
        assert!(!f.is_done(), "received data is not delivered yet");
        f.on_delivered(5, w);
        assert!(f.is_done());

        let mut g = Flow::new(both(10));
        g.on_fin_received().unwrap();
        assert!(g.on_received(1, w).is_err(), "data after FIN");
        assert!(g.on_fin_received().is_err(), "second FIN");
        assert_eq!(g.send_credit(), 10, "the other direction still flows");
        g.on_fin_sent();
        assert!(g.is_done());
    }
}
