//! HTTP/1.1 for the admin API, served on the process's one loop (what the API answers is
//! `crate::admin`'s business).
//!
//! An [`AdminConn`] is an endpoint like any other: the reactor hands it readiness, it reads
//! requests into a buffer of at most [`MAX_REQUEST`] bytes, parses them with `httparse`,
//! asks the role for each answer ([`Request`] in, [`Response`] out) and writes the answers
//! back, one request at a time, keeping the connection alive unless told otherwise. Caps:
//! at most [`MAX_CONNS`] connections (more are closed at accept), [`IDLE`] to send a whole
//! request or to read an answer, [`TURN_REQUESTS`] requests per loop turn. A slow or
//! hostile admin client costs its own buffers and nothing else.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

/// Admin connections open at once; one more is closed at accept.
pub const MAX_CONNS: usize = 64;
/// The largest request, head and body.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A connection that completes no request (or reads no answer) for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);
/// Requests answered per connection per loop turn; the rest wait for the next turn.
pub const TURN_REQUESTS: usize = 16;
/// After a last answer, what the peer still sends is read and dropped for this long (and
/// this much at most), so that closing with unread bytes does not reset the connection
/// before the answer is read.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// Bytes dropped per turn while lingering.
const LINGER_TURN: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// One parsed request, borrowed from the connection's buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub query: &'a str,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a [u8]>,
    /// The `Host` and `Origin` headers' values, if any.
    pub host: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// An answer: status, type and body; `Content-Length` and `Connection` are added when
/// it is written.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Allow`, for a 405.
    pub allow: Option<&'static str>,
    /// `WWW-Authenticate`, for a 401.
    pub challenge: bool,
    /// Close the connection after this answer (a refused request keeps no slot).
    pub close: bool,
}

pub const JSON: &str = "application/json";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            body,
            allow: None,
            challenge: false,
            close: false,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response::new(status, JSON, body)
    }

    /// `{"error": "<why>"}` with a 4xx or 5xx status.
    pub fn error(status: u16, why: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": why }))
    }

    pub fn no_content() -> Response {
        Response::new(204, JSON, Vec::new())
    }

    pub fn not_found() -> Response {
        Response::error(404, "no such endpoint")
    }

    /// 405 naming the methods the path takes.
    pub fn method_not_allowed(allow: &'static str) -> Response {
        let mut r = Response::error(405, &format!("method not allowed (allowed: {allow})"));
        r.allow = Some(allow);
        r
    }

    pub fn unauthorized(why: &str) -> Response {
        let mut r = Response::error(401, why);
        r.challenge = true;
        r.close = true;
        r
    }

    pub fn forbidden(why: &str) -> Response {
        let mut r = Response::error(403, why);
        r.close = true;
        r
    }
}

/// What the role answers requests with.
pub trait Handler {
    fn handle(&mut self, req: &Request<'_>) -> Response;
}

impl<F: FnMut(&Request<'_>) -> Response> Handler for F {
    fn handle(&mut self, req: &Request<'_>) -> Response {
        self(req)
    }
}

/// What to do with the connection after [`AdminConn::drive`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for readiness.
    Wait,
    /// Requests are buffered beyond this turn's share: come back next turn.
    Again,
    /// Done: close it.
    Close,
}

pub struct AdminConn {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    rx: Vec<u8>,
    tx: Vec<u8>,
    sent: usize,
    /// The peer has sent its last byte.
    eof: bool,
    /// Close once the queued answer is out.
    close: bool,
    /// 100 Continue already sent for the request being read.
    continued: bool,
    /// The last answer is out and our side shut: input is dropped until the peer closes.
    lingering: bool,
    /// Bytes dropped while lingering.
    dropped: usize,
    /// In the loop's queue of work for the next turn.
    pub queued: bool,
    /// When the connection is closed unless it makes progress.
    pub deadline: Instant,
    /// When its idle timer is due (one at a time, moved on as the deadline moves).
    pub timer_at: Instant,
}

/// How the bytes at the head of the buffer parse.
enum Parsed {
    Incomplete {
        expect_continue: bool,
    },
    /// A request whose head is `head` bytes and body `body` bytes long.
    Complete {
        head: usize,
        body: usize,
    },
    Bad(u16, &'static str),
}

impl AdminConn {
    pub fn new(sock: TcpStream, peer: SocketAddr, now: Instant) -> AdminConn {
        AdminConn {
            sock,
            peer,
            rx: Vec::new(),
            tx: Vec::new(),
            sent: 0,
            eof: false,
            close: false,
            continued: false,
            lingering: false,
            dropped: 0,
            queued: false,
            deadline: now + IDLE,
            timer_at: now + IDLE,
        }
    }

    /// Do all the connection can do now: write what is queued, answer the requests that are
    /// in, read more. Returns what the loop should do next.
    pub fn drive(&mut self, now: Instant, handler: &mut dyn Handler) -> io::Result<Next> {
        let mut answered = 0;
        loop {
            if self.sent < self.tx.len() {
                let before = self.sent;
                self.write_out()?;
                if self.sent > before {
                    self.deadline = now + IDLE;
                }
                if self.sent < self.tx.len() {
                    return Ok(Next::Wait);
                }
            }
            self.tx.clear();
            self.sent = 0;
            if self.close {
                return self.linger(now);
            }
            match parse(&self.rx) {
                Parsed::Complete { head, body } => {
                    if answered == TURN_REQUESTS {
                        return Ok(Next::Again);
                    }
                    answered += 1;
                    self.answer(head, body, handler);
                    self.rx.drain(..head + body);
                    self.continued = false;
                    self.deadline = now + IDLE;
                    continue;
                }
                Parsed::Bad(status, why) => {
                    self.queue_last(&Response::error(status, why));
                    continue;
                }
                Parsed::Incomplete { expect_continue } => {
                    if expect_continue && !self.continued {
                        self.continued = true;
                        self.tx.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        continue;
                    }
                }
            }
            if self.eof {
                return Ok(Next::Close);
            }
            if self.rx.len() >= MAX_REQUEST {
                self.queue_last(&Response::error(413, "request larger than 64 KiB"));
                continue;
            }
            if !self.read_in()? {
                return Ok(Next::Wait);
            }
        }
    }

    /// The last answer is out: close now if the peer sent nothing more, else shut our side
    /// and drop its input until it closes (or [`LINGER`] passes).
    fn linger(&mut self, now: Instant) -> io::Result<Next> {
        if !self.lingering {
            if self.eof {
                return Ok(Next::Close);
            }
            self.lingering = true;
            self.rx = Vec::new();
            self.deadline = now + LINGER;
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
        }
        let mut scratch = [0u8; 4096];
        let mut this_turn = 0;
        loop {
            if self.dropped >= LINGER_BYTES {
                return Ok(Next::Close);
            }
            if this_turn >= LINGER_TURN {
                return Ok(Next::Again);
            }
            match self.sock.read(&mut scratch) {
                Ok(0) => return Ok(Next::Close),
                Ok(n) => {
                    self.dropped += n;
                    this_turn += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Next::Wait),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(Next::Close),
            }
        }
    }

    /// Read what the socket has, up to the request cap. False when it had nothing.
    fn read_in(&mut self) -> io::Result<bool> {
        let start = self.rx.len();
        let want = (MAX_REQUEST - start).min(16 * 1024);
        self.rx.resize(start + want, 0);
        let result = loop {
            match self.sock.read(&mut self.rx[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                self.rx.truncate(start);
                self.eof = true;
                Ok(true)
            }
            Ok(n) => {
                self.rx.truncate(start + n);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.rx.truncate(start);
                if self.rx.is_empty() {
                    self.rx = Vec::new(); // an idle connection holds no buffer
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        while self.sent < self.tx.len() {
            match self.sock.write(&self.tx[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Parse the complete request at the head of the buffer again (borrowing it this time),
    /// ask the handler, and queue the answer.
    fn answer(&mut self, head: usize, body: usize, handler: &mut dyn Handler) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // `parse` accepted these bytes a moment ago.
        if !matches!(
            req.parse(&self.rx[..head]),
            Ok(httparse::Status::Complete(_))
        ) {
            self.queue_last(&Response::error(400, "malformed request"));
            return;
        }
        let keep_alive = keep_alive(&req);
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = Request {
            method: req.method.unwrap_or(""),
            path,
            query,
            authorization: header(&req, "authorization"),
            host: header(&req, "host"),
            origin: header(&req, "origin"),
            body: &self.rx[head..head + body],
        };
        let response = handler.handle(&request);
        let head_only = request.method == "HEAD";
        self.close |= !keep_alive || response.close;
        let close = self.close;
        self.queue_response(&response, close, head_only);
    }

    /// Queue an answer after which the connection closes.
    fn queue_last(&mut self, response: &Response) {
        self.close = true;
        self.queue_response(response, true, false);
    }

    fn queue_response(&mut self, r: &Response, close: bool, head_only: bool) {
        let tx = &mut self.tx;
        let _ = write!(tx, "HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
        if r.status != 204 {
            let _ = write!(tx, "Content-Type: {}\r\n", r.content_type);
            let _ = write!(tx, "Content-Length: {}\r\n", r.body.len());
        }
        if let Some(allow) = r.allow {
            let _ = write!(tx, "Allow: {allow}\r\n");
        }
        if r.challenge {
            tx.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
        }
        tx.extend_from_slice(
            b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
              X-Frame-Options: DENY\r\nContent-Security-Policy: frame-ancestors 'none'\r\n",
        );
        if close {
            tx.extend_from_slice(b"Connection: close\r\n");
        }
        tx.extend_from_slice(b"\r\n");
        if !head_only && r.status != 204 {
            tx.extend_from_slice(&r.body);
        }
    }
}

/// Where the first request in `buf` ends, or why it cannot be served.
fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete {
            expect_continue: false,
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Parsed::Incomplete {
                expect_continue: false,
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(431, "too many headers"),
        Err(_) => return Parsed::Bad(400, "malformed request"),
    };
    if header(&req, "transfer-encoding").is_some() {
        return Parsed::Bad(411, "send the body with a Content-Length");
    }
    let body = match header(&req, "content-length") {
        None => 0,
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return Parsed::Bad(400, "bad Content-Length"),
        },
    };
    if head.saturating_add(body) > MAX_REQUEST {
        return Parsed::Bad(413, "request larger than 64 KiB");
    }
    if buf.len() < head + body {
        let expect_continue =
            header(&req, "expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        return Parsed::Incomplete { expect_continue };
    }
    Parsed::Complete { head, body }
}

fn header<'a>(req: &httparse::Request<'_, 'a>, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked to keep it.
fn keep_alive(req: &httparse::Request<'_, '_>) -> bool {
    let connection = header(req, "connection").unwrap_or(b"");
    let has = |token: &[u8]| {
        connection
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    match req.version {
        Some(1) => !has(b"close"),
        _ => has(b"keep-alive"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (usize, usize) {
        match parse(buf) {
            Parsed::Complete { head, body } => (head, body),
            Parsed::Incomplete { .. } => panic!("incomplete"),
            Parsed::Bad(s, why) => panic!("bad {s}: {why}"),
        }
    }

    fn bad(buf: &[u8]) -> u16 {
        match parse(buf) {
            Parsed::Bad(s, _) => s,
            _ => panic!("accepted"),
        }
    }

    #[test]
    fn requests_split_at_their_length() {
        let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(complete(get), (get.len(), 0));
        let mut two = get.to_vec();
        two.extend_from_slice(get);
        assert_eq!(complete(&two), (get.len(), 0));
        let put = b"PUT /api/mappings/1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(complete(put), (put.len() - 5, 5));
        assert!(matches!(
            parse(&put[..put.len() - 1]),
            Parsed::Incomplete { .. }
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Parsed::Incomplete { .. }
        ));
    }

    #[test]
    fn expect_continue_is_noticed() {
        let head = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(
            parse(head),
            Parsed::Incomplete {
                expect_continue: true
            }
        ));
    }

    #[test]
    fn bad_requests_are_named() {
        assert_eq!(bad(b"\x16\x03\x01\x00\x00garbage\r\n\r\n"), 400);
        assert_eq!(bad(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(bad(b"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"), 400);
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(bad(b"GET / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n"), 413);
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(bad(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_header() {
        let check = |raw: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(raw).unwrap();
            keep_alive(&req)
        };
        assert!(check(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!check(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!check(b"GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"));
        assert!(!check(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(check(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }
}
