//! Many datagrams per system call: `recvmmsg(2)` and `sendmmsg(2)` on Linux, a loop of
//! `recvfrom` / `sendto` elsewhere. The loop's UDP pumps (`udp.rs`) receive a batch into
//! [`RecvBatch`] and send the parts of one tunnel read with [`send_batch`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Datagrams received per call at most.
pub const BATCH: usize = 16;
/// Room per datagram: more than the largest one (65,507 bytes over IPv4, 65,527 over
/// IPv6), so none is cut short.
const SLOT: usize = 64 * 1024;

/// A batch of received datagrams, in slots of one zeroed allocation: the allocator maps it
/// lazily, so only the pages datagrams touched take memory.
pub struct RecvBatch {
    buf: Vec<u8>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    /// The datagram did not fit its slot (it cannot happen with `SLOT` above; checked anyway).
    cut: [bool; BATCH],
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            from: [None; BATCH],
            cut: [false; BATCH],
            n: 0,
        }
    }
}

impl RecvBatch {
    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i`: its bytes, its sender (`None` when the call did not say, as on a
    /// connected socket) and whether it was cut short.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        let start = i * SLOT;
        (
            &self.buf[start..start + self.lens[i]],
            self.from[i],
            self.cut[i],
        )
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
        let base = b.buf.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i].iov_base = base.add(i * SLOT).cast();
            iovs[i].iov_len = SLOT;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
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
            b.lens[i] = (msgs[i].msg_len as usize).min(SLOT);
            b.cut[i] = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            b.from[i] = socket_addr(&names[i], msgs[i].msg_hdr.msg_namelen);
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
                b.n += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && b.n > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(b.n)
}

/// Send `datagrams` in order, each as one datagram, to `to` (or to the connected peer with
/// `None`), as many per call as the platform allows. Returns how many went: fewer when the
/// socket's buffer filled (`Err(WouldBlock)` when none did).
#[cfg(target_os = "linux")]
pub fn send_batch(
    sock: &impl AsRawFd,
    to: Option<SocketAddr>,
    datagrams: &[&[u8]],
) -> io::Result<usize> {
    let mut sent = 0;
    let (name, namelen) = match to {
        Some(addr) => sockaddr_of(addr),
        // SAFETY: an all-zero sockaddr_storage is a valid value (unused with length 0).
        None => (unsafe { std::mem::zeroed() }, 0),
    };
    while sent < datagrams.len() {
        let chunk = &datagrams[sent..datagrams.len().min(sent + BATCH)];
        // SAFETY: the iovecs point at the caller's slices and `name`, which outlive the
        // call; the kernel only reads them.
        let rc = unsafe {
            let mut iovs: [libc::iovec; BATCH] = std::mem::zeroed();
            let mut msgs: [libc::mmsghdr; BATCH] = std::mem::zeroed();
            for (i, d) in chunk.iter().enumerate() {
                iovs[i].iov_base = d.as_ptr() as *mut libc::c_void;
                iovs[i].iov_len = d.len();
                let h = &mut msgs[i].msg_hdr;
                if namelen > 0 {
                    h.msg_name = (&name as *const libc::sockaddr_storage) as *mut libc::c_void;
                    h.msg_namelen = namelen;
                }
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
            }
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return if sent > 0 { Ok(sent) } else { Err(e) };
        }
        sent += rc as usize;
        if (rc as usize) < chunk.len() {
            break;
        }
    }
    Ok(sent)
}

#[cfg(not(target_os = "linux"))]
pub fn send_batch(
    sock: &impl AsRawFd,
    to: Option<SocketAddr>,
    datagrams: &[&[u8]],
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
            assert_eq!(send_batch(&tx, Some(to), &parts).unwrap(), parts.len());
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
        assert_eq!(send_batch(&tx, None, &[b"a", b"bc"]).unwrap(), 2);
        let mut buf = [0u8; 8];
        rx.set_nonblocking(false).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 1);
        assert_eq!(rx.recv(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"bc");
    }
}
