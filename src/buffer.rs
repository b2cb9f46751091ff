//! A bounded byte buffer: room at the end to read into, data at the front to write from.
//! Memory is allocated on first use, grows on demand up to the cap, and can be released when
//! empty, so an idle connection holds none.

#[derive(Debug, Default)]
pub struct Buf {
    mem: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
    /// Size of the first allocation.
    initial: usize,
}

impl Buf {
    /// A buffer that will hold at most `cap` bytes, all allocated at first use. Allocates
    /// nothing yet.
    pub fn new(cap: usize) -> Buf {
        Buf::growing(cap, cap)
    }

    /// A buffer that will hold at most `cap` bytes, starting with `initial` bytes of memory
    /// and doubling as needed: cheap when it usually holds little.
    pub fn growing(cap: usize, initial: usize) -> Buf {
        Buf {
            mem: Vec::new(),
            start: 0,
            end: 0,
            cap,
            initial: initial.min(cap),
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes that can still be added (after compaction).
    pub fn free(&self) -> usize {
        self.cap - self.len()
    }

    pub fn data(&self) -> &[u8] {
        &self.mem[self.start..self.end]
    }

    /// Drop `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Contiguous room at the end, at least `want` bytes if `free() >= want`: moves the data
    /// to the front when needed. Allocates the memory on first use.
    pub fn room(&mut self, want: usize) -> &mut [u8] {
        if self.mem.is_empty() {
            // A zeroed allocation: large ones come straight from the OS as untouched pages,
            // which cost no resident memory until written.
            self.mem = vec![0; self.initial.max(want).min(self.cap)];
        }
        if self.mem.len() - self.end < want && self.start > 0 {
            self.mem.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.mem.len() - self.end < want && self.mem.len() < self.cap {
            let grown = (self.mem.len() * 2).max(self.end + want).min(self.cap);
            self.mem.resize(grown, 0);
        }
        &mut self.mem[self.end..]
    }

    /// Mark `n` bytes of `room()` as data.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.mem.len());
        self.end += n;
    }

    /// Append `bytes`; false (and nothing appended) when they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        if bytes.len() > self.free() {
            return false;
        }
        let room = self.room(bytes.len());
        room[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
        true
    }

    /// Free the memory if the buffer is empty.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.mem = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether memory is held.
    pub fn is_allocated(&self) -> bool {
        !self.mem.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume_and_compact() {
        let mut b = Buf::new(8);
        assert!(!b.is_allocated());
        assert!(b.push(b"abcdef"));
        assert!(!b.push(b"xyz"), "over capacity");
        b.consume(4);
        assert_eq!(b.data(), b"ef");
        assert!(b.push(b"123456"), "compaction makes room");
        assert_eq!(b.data(), b"ef123456");
        assert_eq!(b.free(), 0);
        b.consume(8);
        assert!(b.is_empty());
        b.release();
        assert!(!b.is_allocated());
    }

    #[test]
    fn a_growing_buffer_doubles_up_to_its_cap() {
        let mut b = Buf::growing(100, 10);
        assert!(b.push(&[1; 8]));
        assert_eq!(b.mem.len(), 10);
        assert!(b.push(&[2; 8]));
        assert_eq!(b.mem.len(), 20);
        assert!(b.push(&[3; 60]));
        assert_eq!(b.mem.len(), 76);
        assert!(b.push(&[4; 24]));
        assert_eq!(b.mem.len(), 100);
        assert!(!b.push(&[5]), "full at the cap");
        assert_eq!(&b.data()[..9], &[1, 1, 1, 1, 1, 1, 1, 1, 2]);
    }

    #[test]
    fn pushing_nothing_allocates_nothing() {
        let mut b = Buf::new(1 << 20);
        assert!(b.push(&[]));
        assert!(!b.is_allocated());
    }

    #[test]
    fn read_into_room() {
        let mut b = Buf::new(16);
        let room = b.room(4);
        room[..3].copy_from_slice(b"xyz");
        b.commit(3);
        assert_eq!(b.data(), b"xyz");
        b.release();
        assert!(b.is_allocated(), "not released while holding data");
    }
}
