//! The engine's output: the queue of frames waiting for the socket, filled in place by the
//! application's reads, and the caller-moved payloads queued in it.

use crate::buffer::Buf;
use crate::protocol::flow::Flow;
use crate::protocol::frame::{
    self, Frame, HEADER_LEN, LONG_HEADER_LEN, MAX_LONG_PAYLOAD, MAX_PAYLOAD, kind,
};

use super::{Phase, Session, TX_CAP};
use crate::protocol::close::CloseReason;

/// Frames waiting for the socket: bytes, and possibly a payload the caller moves itself,
/// due after `tx`, with what was queued meanwhile in `after`.
pub(super) struct Out {
    pub(super) tx: Buf,
    pub(super) external: usize,
    pub(super) after: Buf,
}

impl Out {
    pub(super) fn queued(&self) -> usize {
        self.tx.len() + self.external + self.after.len()
    }

    pub(super) fn tail(&mut self) -> &mut Buf {
        if self.external > 0 {
            &mut self.after
        } else {
            &mut self.tx
        }
    }
}

/// What to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    Bytes(&'a [u8]),
    /// The caller's own payload of this many bytes is due now (see `queue_payload`).
    Payload(usize),
    Idle,
}

/// Room in the output queue for one DATA frame's payload, filled in place (a read from
/// the source socket straight behind the reserved header).
pub struct DataRoom<'s> {
    buf: &'s mut Buf,
    flow: &'s mut Flow,
    id: u32,
    header_len: usize,
    want: usize,
}

impl DataRoom<'_> {
    /// The payload area: `len()` bytes.
    pub fn buf(&mut self) -> &mut [u8] {
        let (h, w) = (self.header_len, self.want);
        &mut self.buf.room(h + w)[h..h + w]
    }

    pub fn len(&self) -> usize {
        self.want
    }

    pub fn is_empty(&self) -> bool {
        self.want == 0
    }

    /// Queue the first `n` bytes of the payload area as one DATA frame.
    pub fn commit(self, n: usize) {
        debug_assert!(n > 0 && n <= self.want);
        let h = self.header_len;
        let room = self.buf.room(h + self.want);
        if h == LONG_HEADER_LEN {
            frame::put_long_header(room, self.id, n);
        } else {
            frame::put_header(room, kind::DATA, self.id, n);
        }
        self.buf.commit(h + n);
        self.flow.on_sent(n);
    }
}

impl<H: Copy> Session<H> {
    /// Room for one DATA frame of stream `id` of up to `want` bytes (within its credit), in
    /// place in the output queue. None when there is no credit or no room: wait for
    /// `Event::Credit` or a drained queue.
    pub fn data_room(&mut self, id: u32, want: usize) -> Option<DataRoom<'_>> {
        if !self.tx_has_room() {
            return None;
        }
        let s = self.streams.get_mut(id)?;
        let want = want.min(s.flow.send_credit()).min(MAX_LONG_PAYLOAD);
        if want == 0 {
            return None;
        }
        let header_len = if want > MAX_PAYLOAD {
            LONG_HEADER_LEN
        } else {
            HEADER_LEN
        };
        let buf = self.out.tail();
        if buf.room(header_len + want).len() < header_len + want {
            return None;
        }
        Some(DataRoom {
            buf,
            flow: &mut s.flow,
            id,
            header_len,
            want,
        })
    }

    /// A long payload may be queued with `queue_payload` now.
    pub fn can_queue_payload(&self) -> bool {
        self.tx_has_room() && self.out.external == 0
    }

    /// Queue a long DATA header for `n` payload bytes of stream `id` that the caller moves
    /// itself when `poll_transmit` says `Payload`. `n` must be within the stream's credit.
    pub fn queue_payload(&mut self, id: u32, n: usize) -> bool {
        if !self.can_queue_payload() || n == 0 || n > MAX_LONG_PAYLOAD {
            return false;
        }
        let Some(s) = self.streams.get_mut(id) else {
            return false;
        };
        if n > s.flow.send_credit() {
            return false;
        }
        let mut header = [0u8; LONG_HEADER_LEN];
        frame::put_long_header(&mut header, id, n);
        if !self.push(&header) {
            return false;
        }
        if let Some(s) = self.streams.get_mut(id) {
            s.flow.on_sent(n);
        }
        self.out.external = n;
        true
    }

    pub fn poll_transmit(&self) -> Transmit<'_> {
        if !self.out.tx.is_empty() {
            Transmit::Bytes(self.out.tx.data())
        } else if self.out.external > 0 {
            Transmit::Payload(self.out.external)
        } else {
            Transmit::Idle
        }
    }

    /// `n` bytes of `Transmit::Bytes` went out.
    pub fn transmitted(&mut self, n: usize) {
        self.out.tx.consume(n);
    }

    /// `n` bytes of the caller's payload went out. True once all of it did.
    pub fn payload_transmitted(&mut self, n: usize) -> bool {
        debug_assert!(n <= self.out.external);
        self.out.external = self.out.external.saturating_sub(n);
        if self.out.external > 0 {
            return false;
        }
        std::mem::swap(&mut self.out.tx, &mut self.out.after);
        true
    }

    /// The output queue's memory is held.
    pub fn buffers_allocated(&self) -> bool {
        self.out.tx.is_allocated() || self.out.after.is_allocated()
    }

    /// Return the output queue's memory, if it is empty.
    pub fn release_buffers(&mut self) {
        self.out.tx.release();
        self.out.after.release();
    }

    /// Queue encoded bytes; a peer that let the queue fill to its cap is cut off.
    pub(super) fn push(&mut self, bytes: &[u8]) -> bool {
        if matches!(self.phase, Phase::Closed { .. }) {
            return false;
        }
        let queued = self.out.queued();
        if queued + bytes.len() <= TX_CAP && self.out.tail().push(bytes) {
            return true;
        }
        self.fail(CloseReason::PeerNotReading { queued });
        false
    }

    pub(super) fn queue(&mut self, f: &Frame<'_>) -> bool {
        let mut tmp = Vec::new();
        frame::encode(f, &mut tmp);
        self.push(&tmp)
    }

    /// Queue a frame without a payload or with a small fixed one, without allocating.
    pub(super) fn queue_small(&mut self, kind: u8, id: u32, payload: &[u8]) -> bool {
        let mut tmp = [0u8; HEADER_LEN + 8];
        debug_assert!(payload.len() <= 8);
        frame::put_header(&mut tmp, kind, id, payload.len());
        tmp[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.push(&tmp[..HEADER_LEN + payload.len()])
    }
}
