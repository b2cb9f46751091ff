//! A reference point for the benchmarks, not part of tcp-forward: the simplest fast TCP relay,
//! blocking I/O with two threads per connection, copying through a 256 KiB buffer or
//! splicing through a pipe. Two of them chained (visitor -> relay -> relay -> target) cross
//! the same number of processes and sockets as a tunnel, without any multiplexing, so they
//! show what the machine allows for that shape (see docs/BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example reference_relay -- LISTEN_PORT TARGET_PORT [copy|splice]
//! ```
//! Both ports are on 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, target, mode) = match args.as_slice() {
        [l, t] => (l, t, "copy"),
        [l, t, m] if m == "copy" || m == "splice" => (l, t, m.as_str()),
        _ => usage(),
    };
    let (Ok(listen), Ok(target)) = (listen.parse::<u16>(), target.parse::<u16>()) else {
        usage()
    };
    let splice = mode == "splice";
    let listener = match TcpListener::bind(("127.0.0.1", listen)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("reference_relay: cannot listen on 127.0.0.1:{listen}: {e}");
            std::process::exit(1);
        }
    };
    for conn in listener.incoming() {
        let Ok(visitor) = conn else { continue };
        let Ok(inner) = TcpStream::connect(("127.0.0.1", target)) else {
            continue;
        };
        let _ = visitor.set_nodelay(true);
        let _ = inner.set_nodelay(true);
        let (Ok(v2), Ok(i2)) = (visitor.try_clone(), inner.try_clone()) else {
            continue;
        };
        thread::spawn(move || pump(visitor, inner, splice));
        thread::spawn(move || pump(i2, v2, splice));
    }
}

fn usage() -> ! {
    eprintln!("usage: reference_relay LISTEN_PORT TARGET_PORT [copy|splice]");
    std::process::exit(2);
}

/// Move bytes from `from` to `to` until end of stream, then pass the half-close on.
fn pump(mut from: TcpStream, mut to: TcpStream, splice: bool) {
    let _ = if splice {
        splice_all(&from, &to)
    } else {
        copy_all(&mut from, &mut to)
    };
    let _ = to.shutdown(Shutdown::Write);
}

fn copy_all(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

fn splice_all(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: plain fcntl/splice/close calls on descriptors we own; errors are checked.
    let result = unsafe {
        libc::fcntl(wr, libc::F_SETPIPE_SZ, 1 << 20);
        loop {
            let n = libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                wr,
                std::ptr::null_mut(),
                1 << 20,
                libc::SPLICE_F_MOVE,
            );
            if n < 0 {
                break Err(io::Error::last_os_error());
            }
            if n == 0 {
                break Ok(());
            }
            let mut left = n as usize;
            while left > 0 {
                let m = libc::splice(
                    rd,
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                );
                if m <= 0 {
                    libc::close(rd);
                    libc::close(wr);
                    return Err(io::Error::last_os_error());
                }
                left -= m as usize;
            }
        }
    };
    // SAFETY: closing the pipe we opened.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
    result
}
