//! The stalled-stream workload, through the tunnel only (a direct path has no shared tunnel
//! to stall): the round trips of one stream before and while another stream through the same
//! tunnel is stalled (its reader never reads), and what the stalled stream holds.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{Endpoints, Targets};
use super::render::{fmt_mib, mem_text, rows_text};
use super::report::{MemPair, Report, Stall, Tunnel};
use super::workloads::{connect, request_response};

/// A stalled stream counts as stalled once nothing has moved on it for this long...
const STALL_QUIET: Duration = Duration::from_millis(100);
/// ...and at least this long after it was opened.
const STALL_SETTLE: Duration = Duration::from_millis(300);
/// A stream still moving this long after its reader stopped reading is buffered without bound.
const STALL_LIMIT: Duration = Duration::from_secs(3);
/// How long the source connection of a closed stalled stream gets to end.
const SOURCE_END_TIMEOUT: Duration = Duration::from_secs(2);

/// The stalled-stream workload, through the tunnel only: 64-byte round trips on one connection
/// to the echo service; then a second stream from the source, never read, and the same round
/// trips again while it stays stalled, with the roles' memory at the end; then the stalled
/// stream is closed and its source connection must end. The figures go to those of tunnel `t`;
/// returns the progress text.
pub(super) fn stalled_stream(
    t: Tunnel,
    tunnel: Endpoints,
    source: &Targets,
    dur: Duration,
    pids: [u32; 2],
    report: &mut Report,
) -> String {
    let unstalled = request_response(tunnel.echo, 1, dur);
    // A source connection of an earlier workload still ending would blur the stall detection.
    let _ = wait_sources_ended(source, SOURCE_END_TIMEOUT);
    let stalled = match open_stalled(tunnel.source, source) {
        Ok((stream, stall)) => {
            report.figures_mut(t).stall = Some(stall);
            let r = request_response(tunnel.echo, 1, dur);
            report.figures_mut(t).mem_stalled = Some(MemPair::rss(pids));
            drop(stream);
            r
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("the other stream did not stall: {e}"),
        )),
    };
    if let Err(e) = wait_sources_ended(source, SOURCE_END_TIMEOUT) {
        report
            .notes
            .push(format!("stalled stream, {} tunnel: {e}", t.name()));
    }
    let label = "64 B round trips, 1 conn";
    let sides = ["unstalled", "stalled"];
    let rows = report.paired_rows(t, sides, "rr1", label, unstalled, stalled);
    let figures = report.figures_mut(t);
    figures.stalled_rows = rows;
    let mut text = rows_text(&figures.stalled_rows, sides);
    if let Some(st) = figures.stall {
        let _ = write!(
            text,
            "; stalled after {:.2} s holding {} MiB; memory while stalled: {}",
            st.after_s,
            fmt_mib(Some(st.held_bytes / 1024)),
            mem_text(figures.mem_stalled)
        );
    }
    text
}

/// Open a stream from the source at `addr` and never read it. Returns once nothing has moved
/// on it for `STALL_QUIET` (neither the bytes the source has written nor those waiting at this
/// end), at least `STALL_SETTLE` after it was opened. `Err` when it still moves after
/// `STALL_LIMIT` (something on the path buffers it without bound) or nothing ever arrived.
fn open_stalled(addr: SocketAddr, source: &Targets) -> io::Result<(TcpStream, Stall)> {
    let written = || source.source_written();
    let base = written();
    let s = connect(addr)?;
    let start = Instant::now();
    let mut last = (written(), queued_bytes(&s));
    let mut quiet_since = start;
    loop {
        thread::sleep(Duration::from_millis(10));
        let now = (written(), queued_bytes(&s));
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if start.elapsed() >= STALL_SETTLE
            && quiet_since.elapsed() >= STALL_QUIET
            && last.1.is_some_and(|q| q > 0)
        {
            let stall = Stall {
                after_s: quiet_since.duration_since(start).as_secs_f64(),
                held_bytes: last.0.saturating_sub(base),
            };
            return Ok((s, stall));
        }
        if start.elapsed() >= STALL_LIMIT {
            let why = if last.1.is_some_and(|q| q > 0) {
                "still moving"
            } else {
                "nothing arrived"
            };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{why} {} s after it was opened ({} MiB written by the source)",
                    STALL_LIMIT.as_secs(),
                    fmt_mib(Some(last.0.saturating_sub(base) / 1024))
                ),
            ));
        }
    }
}

/// Bytes waiting in a socket's receive queue (`None` when the kernel does not say).
fn queued_bytes(s: &TcpStream) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer; the descriptor is owned by `s`.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { u64::try_from(n).ok() } else { None }
}

/// Wait until every connection of the source service has ended (its thread returned and
/// closed the socket); `Err` after `timeout`.
fn wait_sources_ended(source: &Targets, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let open = source.source_open();
        if open == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{open} source connection(s) still writing {} s after the reader closed \
                 (the close did not reach the target; the source's write timeout ends them)",
                timeout.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_never_read_stalls_and_its_source_ends_when_it_closes() {
        let targets = Targets::start().expect("targets start on 127.0.0.1");
        let (stream, stall) =
            open_stalled(targets.addr.source, &targets).expect("the unread stream stalls");
        assert!(stall.held_bytes > 0);
        assert!(stall.after_s < STALL_LIMIT.as_secs_f64());
        assert!(queued_bytes(&stream).is_some_and(|q| q > 0));
        assert_eq!(targets.source_open(), 1);
        drop(stream);
        wait_sources_ended(&targets, SOURCE_END_TIMEOUT)
            .expect("the source connection ends once its reader closes");
    }
}
