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

#[derive(Debug, Clone)]
pub struct Flow {
    /// Bytes we may still send.
    send_credit: u32,
    /// The peer's receive window: our credit can never exceed it.
    send_window: u32,
    /// Our receive window.
    recv_window: u32,
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
    pub fn new(send_window: u32, recv_window: u32) -> Flow {
        Flow {
            send_credit: send_window,
            send_window,
            recv_window,
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
    pub fn on_credit(&mut self, n: u32) -> Result<(), Violation> {
        match self.send_credit.checked_add(n) {
            Some(c) if c <= self.send_window => {
                self.send_credit = c;
                Ok(())
            }
            _ => Err("credit beyond the announced window"),
        }
    }

    /// The peer sent `n` bytes of data.
    pub fn on_received(&mut self, n: usize) -> Result<(), Violation> {
        if !self.may_recv() {
            return Err("data after FIN");
        }
        let total = self.recv_in_flight as usize + n;
        if total > self.recv_window as usize {
            return Err("data beyond the stream's window");
        }
        self.recv_in_flight = total as u32;
        Ok(())
    }

    /// `n` received bytes reached the destination. Returns the credit to announce, if a
    /// batch is due.
    pub fn on_delivered(&mut self, n: usize) -> Option<u32> {
        debug_assert!(self.delivered_unannounced as usize + n <= self.recv_in_flight as usize);
        self.delivered_unannounced += n as u32;
        if self.delivered_unannounced >= (self.recv_window / 4).max(1) {
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

    #[test]
    fn sender_stops_at_the_window_and_resumes_on_credit() {
        let mut f = Flow::new(100, 100);
        assert_eq!(f.send_credit(), 100);
        f.on_sent(60);
        f.on_sent(40);
        assert_eq!(f.send_credit(), 0);
        f.on_credit(25).unwrap();
        assert_eq!(f.send_credit(), 25);
        assert!(
            f.on_credit(76).is_err(),
            "credit past the window is a violation"
        );
        assert!(f.on_credit(u32::MAX).is_err());
    }

    #[test]
    fn receiver_enforces_its_window() {
        let mut f = Flow::new(100, 100);
        f.on_received(100).unwrap();
        assert!(f.on_received(1).is_err());
    }

    #[test]
    fn credit_is_returned_in_quarter_window_batches() {
        let mut f = Flow::new(1000, 1000);
        f.on_received(1000).unwrap();
        assert_eq!(f.on_delivered(100), None);
        assert_eq!(f.on_delivered(100), None);
        assert_eq!(f.on_delivered(50), Some(250));
        assert_eq!(f.undelivered(), 750);
        // The freed window can be filled again, and no more.
        f.on_received(250).unwrap();
        assert!(f.on_received(1).is_err());
    }

    #[test]
    fn two_peers_move_a_large_transfer_without_exceeding_the_window() {
        // Sender A, receiver B, a window of 64 KiB, destination takes 3000 bytes per turn.
        let window = 65536;
        let mut a = Flow::new(window, window);
        let mut b = Flow::new(window, window);
        let (mut sent, mut delivered, total) = (0usize, 0usize, 10_000_000usize);
        let mut in_flight: Vec<usize> = Vec::new();
        for _ in 0..1_000_000 {
            if delivered == total {
                break;
            }
            let n = a.send_credit().min(16384).min(total - sent);
            if n > 0 {
                a.on_sent(n);
                b.on_received(n).unwrap();
                in_flight.push(n);
                sent += n;
            }
            let d = b.undelivered().min(3000);
            if d > 0 {
                delivered += d;
                if let Some(c) = b.on_delivered(d) {
                    a.on_credit(c).unwrap();
                }
            }
            assert!(b.undelivered() <= window as usize);
        }
        assert_eq!(delivered, total);
    }

    #[test]
    fn half_close_in_either_order() {
        let mut f = Flow::new(10, 10);
        f.on_fin_sent();
        assert_eq!(f.send_credit(), 0, "nothing may be sent after our FIN");
        assert!(!f.is_done());
        f.on_received(5).unwrap();
        f.on_fin_received().unwrap();
        assert!(!f.is_done(), "received data is not delivered yet");
        f.on_delivered(5);
        assert!(f.is_done());

        let mut g = Flow::new(10, 10);
        g.on_fin_received().unwrap();
        assert!(g.on_received(1).is_err(), "data after FIN");
        assert!(g.on_fin_received().is_err(), "second FIN");
        assert_eq!(g.send_credit(), 10, "the other direction still flows");
        g.on_fin_sent();
        assert!(g.is_done());
    }
}
