//! Many datagrams per system call: `recvmmsg(2)` and `sendmmsg(2)` on Linux, with runs of
//! equal-sized datagrams as one segmented message each (UDP GSO, [`Segmentation`]), a loop
//! of `recvfrom` / `sendto` elsewhere. The loop's UDP pumps (`udp.rs`) receive a batch into
//! [`RecvBatch`] and send the parts of one tunnel read with [`send_batch`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

#[cfg(target_os = "linux")]
use log::debug;

#[cfg(target_os = "linux")]
use crate::net::sys;

/// Datagrams received per call at most.
pub const BATCH: usize = 16;
/// Room per message: more than the largest datagram (65,507 bytes over IPv4, 65,527 over
/// IPv6) and than a coalesced run (the kernel stops one at 64 KiB with its headers), so
/// none is cut short.
const SLOT: usize = 64 * 1024;

/// A batch of received messages, in slots of one zeroed allocation: the allocator maps it
/// lazily, so only the pages datagrams touched take memory. A message is one datagram, or,
/// on a socket with [`enable_coalescing`], a run of datagrams of one sender that the kernel
/// handed over together ([`RecvBatch::datagrams`] splits it).
pub struct RecvBatch {
    buf: Vec<u8>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    /// The message did not fit its slot, or its control data did not fit its room (neither
    /// can happen with the sizes here; checked anyway).
    cut: [bool; BATCH],
    /// The size of each datagram of a coalesced message (the last may be shorter); 0: the
    /// message is one datagram.
    segment: [usize; BATCH],
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            from: [None; BATCH],
            cut: [false; BATCH],
            segment: [0; BATCH],
            n: 0,
        }
    }
}

impl RecvBatch {
    /// Messages in the batch.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Message `i`: its bytes, its sender (`None` when the call did not say, as on a
    /// connected socket) and whether it was cut short.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        let start = i * SLOT;
        (
            &self.buf[start..start + self.lens[i]],
            self.from[i],
            self.cut[i],
        )
    }

    /// The datagrams of message `i`, in order: the message itself, or the run the kernel
    /// coalesced, cut at its segment size; nothing for an empty message.
    pub fn datagrams(&self, i: usize) -> std::slice::Chunks<'_, u8> {
        let (d, _, _) = self.get(i);
        let size = match self.segment[i] {
            0 => d.len(),
            s => s,
        };
        d.chunks(size.max(1))
    }
}

/// Have the kernel hand this socket a run of datagrams from one sender as one message
/// (UDP GRO, Linux 5.0 and later) where they arrive together: a sender's segmented send
/// over loopback, a network card's coalescing. [`recv_batch`] reads the segment size with
/// each message. False where the kernel lacks it; the socket then works as before.
#[cfg(target_os = "linux")]
pub fn enable_coalescing(sock: &impl AsRawFd) -> bool {
    let on: libc::c_int = 1;
    sys::setsockopt(sock, libc::SOL_UDP, libc::UDP_GRO, &on).is_ok()
}

#[cfg(not(target_os = "linux"))]
pub fn enable_coalescing(_sock: &impl AsRawFd) -> bool {
    false
}

/// The segment size a `UDP_GRO` control message on `h` gives, if there is one.
#[cfg(target_os = "linux")]
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed control messages into
    // the room `msg_control` points at; the CMSG macros walk inside them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
        None
    }
}

/// Receive up to [`BATCH`] datagrams without blocking. `Err(WouldBlock)` when none waits.
#[cfg(target_os = "linux")]
pub fn recv_batch(sock: &impl AsRawFd, b: &mut RecvBatch) -> io::Result<usize> {
    // SAFETY: every pointer handed to the kernel points into `b.buf` (each iovec a slot of
    // SLOT bytes inside it), into `names` or into `msgs`, all alive for the call; the
    // kernel writes at most the lengths given.
    let n = unsafe {
        let mut names: [libc::sockaddr_storage; BATCH] = std::mem::zeroed();
        let mut iovs: [libc::iovec; BATCH] = std::mem::zeroed();
        let mut msgs: [libc::mmsghdr; BATCH] = std::mem::zeroed();
        let mut cmsgs = [SegmentCmsg([0; 32]); BATCH];
        let base = b.buf.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i].iov_base = base.add(i * SLOT).cast();
            iovs[i].iov_len = SLOT;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = cmsgs[i].0.len() as _;
        }
        let rc = libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        );
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = rc as usize;
        for i in 0..n {
            let h = &msgs[i].msg_hdr;
            b.lens[i] = (msgs[i].msg_len as usize).min(SLOT);
            b.cut[i] = h.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
            b.from[i] = socket_addr(&names[i], h.msg_namelen);
            b.segment[i] = gro_segment(h).unwrap_or(0);
        }
        n
    };
    b.n = n;
    Ok(n)
}

#[cfg(not(target_os = "linux"))]
pub fn recv_batch(sock: &impl AsRawFd, b: &mut RecvBatch) -> io::Result<usize> {
    let std_sock = borrowed(sock);
    b.n = 0;
    while b.n < BATCH {
        let i = b.n;
        match std_sock.recv_from(&mut b.buf[i * SLOT..(i + 1) * SLOT]) {
            Ok((len, from)) => {
                b.lens[i] = len;
                b.from[i] = Some(from);
                b.cut[i] = false;
                b.segment[i] = 0;
                b.n += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && b.n > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(b.n)
}

/// Whether a socket sends runs of equal-sized datagrams as one segmented send (Linux's
/// UDP GSO, `UDP_SEGMENT`): one trip down the stack for up to [`GSO_SEGMENTS`] datagrams,
/// which the kernel cuts into datagrams of the given size on the way out, so the receiver
/// sees each datagram as it was. Off where the kernel lacks it; a path that refuses a size
/// (its MTU is smaller; an IPsec route) lowers the largest size tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmentation {
    /// Datagrams of at most this many bytes may share a send; 0: none may.
    max: usize,
}

/// Datagrams in one segmented send at most (`UDP_MAX_SEGMENTS` of the kernels that have
/// the smallest, 64).
pub const GSO_SEGMENTS: usize = 64;
/// Bytes in one segmented send at most: under the largest IPv4 and IPv6 payload.
const GSO_BYTES: usize = 65_000;
/// Datagrams handed to the kernel per `sendmmsg` call, segmented or not.
#[cfg(target_os = "linux")]
const SEND_DATAGRAMS: usize = BATCH * 4;

impl Segmentation {
    /// Never segment: each datagram its own message.
    pub const fn off() -> Segmentation {
        Segmentation { max: 0 }
    }

    /// Segment where this kernel can (probed once per process).
    pub fn available() -> Segmentation {
        static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *PROBED.get_or_init(gso_supported) {
            Segmentation { max: GSO_BYTES }
        } else {
            Segmentation::off()
        }
    }

    /// How many of `datagrams` (at least one) go as the first message: a run of equal
    /// sizes, and a shorter one to close it, as the kernel cuts a segmented send.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn run(self, datagrams: &[&[u8]]) -> usize {
        let size = datagrams[0].len();
        if size == 0 || size > self.max {
            return 1;
        }
        let limit = GSO_SEGMENTS.min(GSO_BYTES / size).min(datagrams.len());
        let mut n = 1;
        while n < limit && datagrams[n].len() == size {
            n += 1;
        }
        if n < limit && !datagrams[n].is_empty() && datagrams[n].len() < size {
            n += 1;
        }
        n
    }
}

/// Whether the kernel takes `UDP_SEGMENT` (Linux 4.18 and later).
#[cfg(target_os = "linux")]
fn gso_supported() -> bool {
    let Ok(sock) =
        std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
    else {
        return false;
    };
    let size: libc::c_int = 1200;
    sys::setsockopt(&sock, libc::SOL_UDP, libc::UDP_SEGMENT, &size).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn gso_supported() -> bool {
    false
}

/// Room for one control message of a segment size (`UDP_SEGMENT` sent, `UDP_GRO`
/// received), aligned as the kernel reads and writes it.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SegmentCmsg([u8; 32]);

/// Send `datagrams` in order, each as one datagram, to `to` (or to the connected peer with
/// `None`), as many per call as the platform allows, runs of equal size as one segmented
/// send where `seg` allows. Returns how many went: fewer when the socket's buffer filled
/// (`Err(WouldBlock)` when none did).
#[cfg(target_os = "linux")]
pub fn send_batch(
    sock: &impl AsRawFd,
    to: Option<SocketAddr>,
    datagrams: &[&[u8]],
    seg: &mut Segmentation,
) -> io::Result<usize> {
    let mut sent = 0;
    let (name, namelen) = match to {
        Some(addr) => sockaddr_of(addr),
        // SAFETY: an all-zero sockaddr_storage is a valid value (unused with length 0).
        None => (unsafe { std::mem::zeroed() }, 0),
    };
    // SAFETY (both): all-zero iovecs and message headers are valid values.
    let mut iovs: [libc::iovec; SEND_DATAGRAMS] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; SEND_DATAGRAMS] = unsafe { std::mem::zeroed() };
    let mut cmsgs = [SegmentCmsg([0; 32]); SEND_DATAGRAMS];
    while sent < datagrams.len() {
        let rest = &datagrams[sent..datagrams.len().min(sent + SEND_DATAGRAMS)];
        // Messages of this call, and how many datagrams each carries.
        let mut runs = [0usize; SEND_DATAGRAMS];
        for (iov, part) in iovs.iter_mut().zip(rest) {
            iov.iov_base = part.as_ptr() as *mut libc::c_void;
            iov.iov_len = part.len();
        }
        let iov_base = iovs.as_mut_ptr();
        let (mut m, mut d) = (0, 0);
        while d < rest.len() {
            let n = seg.run(&rest[d..]);
            let h = &mut msgs[m].msg_hdr;
            // SAFETY: an all-zero msghdr is valid (no name, no data, no control).
            *h = unsafe { std::mem::zeroed() };
            if namelen > 0 {
                h.msg_name = (&name as *const libc::sockaddr_storage) as *mut libc::c_void;
                h.msg_namelen = namelen;
            }
            // SAFETY: d + n <= rest.len() <= SEND_DATAGRAMS: iovecs d..d + n are inside
            // `iovs`, which nothing writes again before the call.
            h.msg_iov = unsafe { iov_base.add(d) };
            h.msg_iovlen = n as _;
            if n > 1 {
                set_segment(h, &mut cmsgs[m], rest[d].len());
            }
            runs[m] = n;
            m += 1;
            d += n;
        }
        // SAFETY: the headers point at `iovs`, `cmsgs` and `name`, and the iovecs at the
        // caller's slices, all alive for the call; the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                m as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first message was a segmented one, refused with an error a path gives
            // for segmentation: if its first datagram goes alone, that was it, and this
            // size goes unsegmented from now on; if not, the error is the datagram's.
            if runs[0] > 1 && refused_segmentation(&e) {
                let name = (namelen > 0).then_some((&name, namelen));
                match send_one(sock, name, rest[0]) {
                    Ok(()) => {
                        seg.max = seg.max.min(rest[0].len() - 1);
                        if e.raw_os_error() == Some(libc::EIO) {
                            seg.max = 0;
                        }
                        debug!(
                            "UDP: segmented send of {}-byte datagrams refused ({e}): sent one \
                             by one",
                            rest[0].len()
                        );
                        sent += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return if sent > 0 { Ok(sent) } else { Err(e) },
                }
            }
            return if sent > 0 { Ok(sent) } else { Err(e) };
        }
        let done = rc as usize;
        sent += runs[..done].iter().sum::<usize>();
        // Stopped part way: at a segmented message the next call tells whether the path
        // refused it; at a single datagram the socket's buffer is full, or the error is
        // that datagram's, and the rest waits either way.
        if done < m && runs[done] == 1 {
            break;
        }
    }
    Ok(sent)
}

/// One datagram, to `name` or to the connected peer.
#[cfg(target_os = "linux")]
fn send_one(
    sock: &impl AsRawFd,
    name: Option<(&libc::sockaddr_storage, libc::socklen_t)>,
    d: &[u8],
) -> io::Result<()> {
    let (addr, len) = match name {
        Some((a, len)) => ((a as *const libc::sockaddr_storage).cast(), len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `d` and the address are alive for the call, which only reads them.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            d.as_ptr().cast(),
            d.len(),
            libc::MSG_DONTWAIT,
            addr,
            len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A `UDP_SEGMENT` control message of `size` on `h`, in `room`.
#[cfg(target_os = "linux")]
fn set_segment(h: &mut libc::msghdr, room: &mut SegmentCmsg, size: usize) {
    // SAFETY: `room` is aligned for a cmsghdr and larger than CMSG_SPACE(2); the header
    // and its data are written inside it.
    unsafe {
        h.msg_control = room.0.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
    }
}

/// An error by which a path may refuse segmented sends (its MTU, an IPsec route), though a
/// datagram or its address can earn it too.
#[cfg(target_os = "linux")]
fn refused_segmentation(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE)
    )
}

#[cfg(not(target_os = "linux"))]
pub fn send_batch(
    sock: &impl AsRawFd,
    to: Option<SocketAddr>,
    datagrams: &[&[u8]],
    _seg: &mut Segmentation,
) -> io::Result<usize> {
    let std_sock = borrowed(sock);
    let mut sent = 0;
    for d in datagrams {
        let r = match to {
            Some(addr) => std_sock.send_to(d, addr),
            None => std_sock.send(d),
        };
        match r {
            Ok(_) => sent += 1,
            Err(e) if sent > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// The caller's socket as a std one, never closed by this side.
#[cfg(not(target_os = "linux"))]
fn borrowed(sock: &impl AsRawFd) -> std::mem::ManuallyDrop<std::net::UdpSocket> {
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor stays open for as long as the caller's socket, which outlives
    // this borrow; ManuallyDrop keeps the std socket from closing it.
    std::mem::ManuallyDrop::new(unsafe { std::net::UdpSocket::from_raw_fd(sock.as_raw_fd()) })
}

/// The address the kernel wrote, if it is an IP one.
#[cfg(target_os = "linux")]
fn socket_addr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `addr` as the kernel takes it, with its length.
#[cfg(target_os = "linux")]
fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the writes below stay within the
    // sockaddr_in / sockaddr_in6 it is large enough to hold.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let p = (&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                (*p).sin_family = libc::AF_INET as libc::sa_family_t;
                (*p).sin_port = a.port().to_be();
                (*p).sin_addr.s_addr = u32::from(*a.ip()).to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let p = (&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                (*p).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*p).sin6_port = a.port().to_be();
                (*p).sin6_addr.s6_addr = a.ip().octets();
                (*p).sin6_flowinfo = a.flowinfo();
                (*p).sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (s, len as libc::socklen_t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair(a: &str) -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind(a).unwrap();
        let tx = UdpSocket::bind(a).unwrap();
        rx.set_nonblocking(true).unwrap();
        tx.set_nonblocking(true).unwrap();
        (rx, tx)
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_whole_with_its_sender() {
        for a in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(probe) = UdpSocket::bind(a) else {
                println!("skipped {a}: cannot bind it here");
                continue;
            };
            drop(probe);
            let (rx, tx) = pair(a);
            let to = rx.local_addr().unwrap();
            let sizes = [
                1usize, 1200, 9000, 65_507, 3, 40_000, 17, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
            ];
            let data: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i + j) as u8).collect())
                .collect();
            let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            assert_eq!(
                send_batch(&tx, Some(to), &parts, &mut Segmentation::off()).unwrap(),
                parts.len()
            );
            let mut b = RecvBatch::default();
            let mut got = Vec::new();
            for _ in 0..1000 {
                match recv_batch(&rx, &mut b) {
                    Ok(n) => {
                        assert!(n <= BATCH);
                        for i in 0..n {
                            let (d, from, cut) = b.get(i);
                            assert!(!cut);
                            assert_eq!(from, Some(tx.local_addr().unwrap()));
                            got.push(d.to_vec());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if got.len() == data.len() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got, data, "{a}: every datagram whole and in order");
            assert_eq!(
                recv_batch(&rx, &mut b).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
        }
    }

    #[test]
    fn a_connected_socket_sends_without_an_address() {
        let (rx, tx) = pair("127.0.0.1:0");
        tx.connect(rx.local_addr().unwrap()).unwrap();
        assert_eq!(
            send_batch(&tx, None, &[b"a", b"bc"], &mut Segmentation::off()).unwrap(),
            2
        );
        let mut buf = [0u8; 8];
        rx.set_nonblocking(false).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 1);
        assert_eq!(rx.recv(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"bc");
    }

    /// Sizes with runs the kernel can segment: equal sizes, a shorter one closing a run,
    /// runs longer than one send takes, and single ones between.
    fn runs_of_sizes() -> Vec<usize> {
        let mut sizes = vec![1200; 70];
        sizes.push(700);
        sizes.extend([1200, 1200, 1200]);
        sizes.extend([9000; 9]);
        sizes.extend([1, 1, 1, 2, 65_507, 3]);
        sizes.extend([600; 5]);
        sizes.push(601);
        sizes
    }

    fn numbered(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
            .collect()
    }

    /// Receive `count` datagrams from `rx` (bounded: 2,000 tries, 1 ms apart).
    fn receive(rx: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut b = RecvBatch::default();
        let mut got = Vec::new();
        for _ in 0..2000 {
            match recv_batch(rx, &mut b) {
                Ok(n) => got.extend((0..n).map(|i| b.get(i).0.to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() >= count {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn runs_of_equal_sizes_share_a_message_closed_by_a_shorter_one() {
        let on = Segmentation { max: GSO_BYTES };
        let d = |sizes: &[usize]| -> Vec<Vec<u8>> { sizes.iter().map(|&n| vec![0; n]).collect() };
        let run = |seg: Segmentation, sizes: &[usize]| {
            let v = d(sizes);
            let parts: Vec<&[u8]> = v.iter().map(Vec::as_slice).collect();
            seg.run(&parts)
        };
        assert_eq!(run(on, &[5, 5, 5, 3, 3]), 4, "a shorter one closes the run");
        assert_eq!(run(on, &[5, 5, 7]), 2, "a longer one starts the next");
        assert_eq!(run(on, &[5, 5, 5, 0]), 3, "an empty one is never in a run");
        assert_eq!(run(on, &[5]), 1);
        assert_eq!(run(on, &[1200; 100]), 54, "under 65,000 bytes");
        assert_eq!(
            run(on, &[10; 100]),
            GSO_SEGMENTS,
            "the kernel's segment limit"
        );
        assert_eq!(run(on, &[40_000, 40_000]), 1, "two would be too large");
        assert_eq!(run(Segmentation::off(), &[5, 5, 5]), 1);
        assert_eq!(
            run(Segmentation { max: 4 }, &[5, 5, 5]),
            1,
            "over the path's size"
        );
        assert_eq!(run(Segmentation { max: 5 }, &[5, 5, 5]), 3);
    }

    /// A receiver (its buffer grown) and a sender on each loopback family this host has;
    /// none, said so, where the kernel cannot segment.
    fn segmenting_pairs(seg: Segmentation) -> Vec<(&'static str, UdpSocket, UdpSocket)> {
        if seg == Segmentation::off() {
            println!("skipped: this kernel has no UDP segmentation offload");
            return Vec::new();
        }
        let mut pairs = Vec::new();
        for a in ["127.0.0.1:0", "[::1]:0"] {
            if UdpSocket::bind(a).is_err() {
                println!("skipped {a}: cannot bind it here");
                continue;
            }
            let (rx, tx) = pair(a);
            grow(&rx);
            pairs.push((a, rx, tx));
        }
        pairs
    }

    #[test]
    fn segmented_sends_arrive_as_the_datagrams_they_were() {
        let seg = Segmentation::available();
        for (a, rx, tx) in segmenting_pairs(seg) {
            let data = numbered(&runs_of_sizes());
            let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let mut s = seg;
            let to = Some(rx.local_addr().unwrap());
            assert_eq!(send_batch(&tx, to, &parts, &mut s).unwrap(), parts.len());
            assert_eq!(s, seg, "{a}: loopback takes every size");
            // Connected, as a client's flow sends.
            tx.connect(rx.local_addr().unwrap()).unwrap();
            assert_eq!(send_batch(&tx, None, &parts, &mut s).unwrap(), parts.len());
            let got = receive(&rx, 2 * data.len());
            let want: Vec<Vec<u8>> = data.iter().chain(&data).cloned().collect();
            assert_eq!(got.len(), want.len(), "{a}: every datagram, none merged");
            assert!(got == want, "{a}: every datagram whole and in order");
        }
    }

    #[test]
    fn a_coalescing_socket_gets_runs_whole_and_splits_them_back() {
        let seg = Segmentation::available();
        for (a, rx, tx) in segmenting_pairs(seg) {
            if !enable_coalescing(&rx) {
                println!("skipped: this kernel has no UDP receive coalescing");
                return;
            }
            let data = numbered(&runs_of_sizes());
            let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let to = Some(rx.local_addr().unwrap());
            let mut s = seg;
            assert_eq!(send_batch(&tx, to, &parts, &mut s).unwrap(), parts.len());
            let mut b = RecvBatch::default();
            let (mut got, mut coalesced) = (Vec::new(), 0);
            for _ in 0..2000 {
                match recv_batch(&rx, &mut b) {
                    Ok(n) => {
                        for i in 0..n {
                            let (d, from, cut) = b.get(i);
                            assert!(!cut, "{a}: message {i} of {} bytes cut", d.len());
                            assert_eq!(from, Some(tx.local_addr().unwrap()));
                            let runs = b.datagrams(i).count();
                            coalesced += usize::from(runs > 1);
                            got.extend(b.datagrams(i).map(<[u8]>::to_vec));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if got.len() >= data.len() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(coalesced > 0, "{a}: the runs arrived coalesced");
            assert_eq!(got.len(), data.len(), "{a}: every datagram, once");
            assert!(got == data, "{a}: every datagram whole and in order");
        }
    }

    #[test]
    fn a_path_that_refuses_segmentation_gets_the_datagrams_one_by_one() {
        let mut seg = Segmentation::available();
        if seg == Segmentation::off() {
            println!("skipped: this kernel has no UDP segmentation offload");
            return;
        }
        let (rx, tx) = pair("127.0.0.1:0");
        grow(&rx);
        // Without checksums the kernel refuses segmented sends (EINVAL).
        let one: libc::c_int = 1;
        sys::setsockopt(&tx, libc::SOL_SOCKET, libc::SO_NO_CHECK, &one).expect("SO_NO_CHECK");
        let data = numbered(&runs_of_sizes());
        let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let to = Some(rx.local_addr().unwrap());
        assert_eq!(send_batch(&tx, to, &parts, &mut seg).unwrap(), parts.len());
        assert!(
            seg.max < 600,
            "every size tried was refused and is sent alone now"
        );
        assert!(
            receive(&rx, data.len()) == data,
            "every datagram whole and in order"
        );
    }

    #[test]
    fn an_error_of_the_datagram_itself_leaves_segmentation_on() {
        let seg = Segmentation::available();
        if seg == Segmentation::off() {
            println!("skipped: this kernel has no UDP segmentation offload");
            return;
        }
        let (_rx, tx) = pair("127.0.0.1:0");
        let data = numbered(&[1200; 8]);
        let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        // Port 0: the kernel refuses any datagram to it (EINVAL), segmented or not.
        let nowhere = "127.0.0.1:0".parse().unwrap();
        let mut s = seg;
        let e = send_batch(&tx, Some(nowhere), &parts, &mut s).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        assert_eq!(s, seg, "one bad address does not turn segmentation down");
    }

    /// A receive buffer for a few of the largest datagrams.
    fn grow(s: &UdpSocket) {
        let bytes: libc::c_int = 4 << 20;
        let _ = sys::setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes);
    }
}
