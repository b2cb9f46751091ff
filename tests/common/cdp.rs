//! Headless Chromium driven over the Chrome DevTools Protocol, for tests of the admin
//! dashboard: the browser as a child process in a process group of its own, a minimal HTTP
//! request for the DevTools listing, a minimal WebSocket client (RFC 6455: upgrade handshake,
//! masked client frames, 7/16/64-bit lengths, fragmented messages, ping and close) and a CDP
//! session on one page (commands, events kept for later checks, `Runtime.evaluate`).
//!
//! Every wait is bounded: socket reads carry timeouts derived from a deadline, and the
//! browser is stopped on drop (SIGTERM to its group, then SIGKILL), panics included.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Proc, TempDir, spawn_cmd};

/// Bound for one DevTools command (navigation and evaluation answer well within it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound for the browser to start and announce its DevTools port.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A message larger than this is refused (a page's DOM dump stays far below).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Events kept per session; older ones are dropped first.
const MAX_EVENTS: usize = 10_000;

// ---------------------------------------------------------------------------------------
// Small encodings: base64 and SHA-1 (for Sec-WebSocket-Key / Sec-WebSocket-Accept)
// ---------------------------------------------------------------------------------------

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (FIPS 180-4), which the WebSocket handshake uses to prove the upgrade.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64).wrapping_mul(8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, hi) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&hi.to_be_bytes());
    }
    out
}

/// The Sec-WebSocket-Accept value a server must answer to `key`.
pub fn websocket_accept(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    base64(&sha1(format!("{key}{GUID}").as_bytes()))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("randomness from the OS");
    b
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(io::Error::new(ErrorKind::TimedOut, "deadline passed"));
    }
    Ok((deadline - now).max(Duration::from_millis(1)))
}

// ---------------------------------------------------------------------------------------
// HTTP: one request on its own connection
// ---------------------------------------------------------------------------------------

/// An HTTP answer: status code, header lines (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one HTTP/1.1 request (`Connection: close`) and read the whole answer, within
/// `within`. Bodies come by `Content-Length`, chunked, or up to the end of the connection.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    within: Duration,
) -> io::Result<HttpAnswer> {
    let deadline = Instant::now() + within;
    let mut s = TcpStream::connect_timeout(&addr, left(deadline)?)?;
    s.set_write_timeout(Some(left(deadline)?))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_MESSAGE {
                    return Err(io::Error::other("HTTP answer too large"));
                }
                if let Some(done) = complete_answer(&raw) {
                    raw.truncate(done);
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_answer(&raw)
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The length of a complete answer with a `Content-Length`, once it has all arrived.
fn complete_answer(raw: &[u8]) -> Option<usize> {
    let end = header_end(raw)?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    })?;
    (raw.len() >= end + len).then_some(end + len)
}

fn parse_answer(raw: &[u8]) -> io::Result<HttpAnswer> {
    let bad = |what: &str| io::Error::new(ErrorKind::InvalidData, what.to_string());
    let end = header_end(raw).ok_or_else(|| bad("HTTP answer without a complete header"))?;
    let head = String::from_utf8_lossy(&raw[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(bad("HTTP body shorter than its Content-Length"));
        }
        body.truncate(len);
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------

/// Frame opcodes (RFC 6455 section 5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xa;
}

/// One client connection. Bytes read past a frame stay buffered, so a read that times out
/// in the middle of a frame loses nothing.
pub struct WebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The opcode and payload of a fragmented message still arriving.
    partial: Option<(u8, Vec<u8>)>,
}

/// `ws://host:port/path` split into the address and the path.
fn split_ws_url(url: &str) -> io::Result<(String, String)> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        io::Error::new(ErrorKind::InvalidInput, format!("not a ws:// URL: {url}"))
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_string(), path.to_string()))
}

impl WebSocket {
    /// Open `ws://host:port/path` and complete the upgrade handshake within `within`.
    pub fn connect(url: &str, within: Duration) -> io::Result<WebSocket> {
        let deadline = Instant::now() + within;
        let (host, path) = split_ws_url(url)?;
        let addr: SocketAddr = host.parse().map_err(|e| {
            io::Error::new(ErrorKind::InvalidInput, format!("address {host:?}: {e}"))
        })?;
        let stream = TcpStream::connect_timeout(&addr, left(deadline)?)?;
        stream.set_nodelay(true)?;
        let mut ws = WebSocket {
            stream,
            buf: Vec::new(),
            partial: None,
        };
        let key = base64(&random_bytes::<16>());
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.stream.set_write_timeout(Some(left(deadline)?))?;
        ws.stream.write_all(req.as_bytes())?;
        let end = loop {
            if let Some(end) = header_end(&ws.buf) {
                break end;
            }
            if ws.buf.len() > 64 * 1024 {
                return Err(io::Error::other("upgrade answer header too large"));
            }
            ws.fill_more(deadline)?;
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        ws.buf.drain(..end);
        let answer = parse_answer(head.as_bytes())?;
        if answer.status != 101 {
            return Err(io::Error::other(format!(
                "upgrade refused: {}",
                head.lines().next().unwrap_or_default()
            )));
        }
        let want = websocket_accept(&key);
        match answer.header("sec-websocket-accept") {
            Some(got) if got == want => Ok(ws),
            got => Err(io::Error::other(format!(
                "Sec-WebSocket-Accept is {got:?}, expected {want:?}"
            ))),
        }
    }

    /// Read what is there (at least one byte) into the buffer, waiting until `deadline`.
    fn fill_more(&mut self, deadline: Instant) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            self.stream.set_read_timeout(Some(left(deadline)?))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the WebSocket peer closed the connection",
                    ));
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(io::Error::new(ErrorKind::TimedOut, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send one frame, masked with a fresh key as a client must.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if let Ok(len16) = u16::try_from(len) {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&len16.to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = random_bytes::<4>();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        self.stream.write_all(&frame)
    }

    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(true, op::TEXT, text.as_bytes())
    }

    /// The next whole frame: (fin, opcode, unmasked payload).
    fn read_frame(&mut self, deadline: Instant) -> io::Result<(bool, u8, Vec<u8>)> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            self.fill_more(deadline)?;
        }
    }

    /// Cut one complete frame off the buffer, if it holds one.
    fn take_frame(&mut self) -> io::Result<Option<(bool, u8, Vec<u8>)>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0f);
        if b[0] & 0x70 != 0 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "reserved frame bits set",
            ));
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_MESSAGE)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "frame too large"))?;
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            for (p, k) in payload.iter_mut().zip(m.iter().cycle()) {
                *p ^= k;
            }
        }
        self.buf.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }

    /// The next text or binary message, fragments joined; pings are answered on the way.
    /// A close frame is answered and reported as `ConnectionAborted`.
    pub fn recv(&mut self, deadline: Instant) -> io::Result<(u8, Vec<u8>)> {
        let invalid = |what: &str| io::Error::new(ErrorKind::InvalidData, what.to_string());
        loop {
            let (fin, opcode, payload) = self.read_frame(deadline)?;
            match opcode {
                op::PING | op::PONG | op::CLOSE if !fin || payload.len() > 125 => {
                    return Err(invalid("control frame fragmented or too long"));
                }
                op::PING => self.send_frame(true, op::PONG, &payload)?,
                op::PONG => {}
                op::CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let _ = self.send_frame(true, op::CLOSE, payload.get(..2).unwrap_or(&[]));
                    return Err(io::Error::new(
                        ErrorKind::ConnectionAborted,
                        format!("the WebSocket peer closed (code {code:?})"),
                    ));
                }
                op::TEXT | op::BINARY => {
                    if self.partial.is_some() {
                        return Err(invalid("new message inside a fragmented one"));
                    }
                    if fin {
                        return Ok((opcode, payload));
                    }
                    self.partial = Some((opcode, payload));
                }
                op::CONTINUATION => {
                    let Some((first, mut data)) = self.partial.take() else {
                        return Err(invalid("continuation frame without a message"));
                    };
                    data.extend_from_slice(&payload);
                    if data.len() > MAX_MESSAGE {
                        return Err(invalid("message too large"));
                    }
                    if fin {
                        return Ok((first, data));
                    }
                    self.partial = Some((first, data));
                }
                other => return Err(invalid(&format!("unknown opcode {other:#x}"))),
            }
        }
    }

    /// The next message as text.
    pub fn recv_text(&mut self, deadline: Instant) -> io::Result<String> {
        let (_, data) = self.recv(deadline)?;
        String::from_utf8(data)
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, "text message is not UTF-8"))
    }

    /// Send a close frame (normal closure); the connection drops with the value.
    pub fn close(&mut self) {
        let _ = self.send_frame(true, op::CLOSE, &1000u16.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// DevTools session on one page
// ---------------------------------------------------------------------------------------

/// A CDP session: commands get answers by id; every event that arrives meanwhile is kept.
pub struct Cdp {
    ws: WebSocket,
    next_id: u64,
    pub events: Vec<Value>,
}

impl Cdp {
    pub fn connect(ws_url: &str) -> io::Result<Cdp> {
        Ok(Cdp {
            ws: WebSocket::connect(ws_url, CALL_TIMEOUT)?,
            next_id: 1,
            events: Vec::new(),
        })
    }

    fn keep(&mut self, msg: Value) {
        if msg.get("method").is_some() {
            if self.events.len() >= MAX_EVENTS {
                self.events.remove(0);
            }
            self.events.push(msg);
        }
    }

    /// Send a command and wait for its answer: the `result`, or the protocol's error text.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send_text(&msg)
            .map_err(|e| format!("{method}: send: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let text = self
                .ws
                .recv_text(deadline)
                .map_err(|e| format!("{method}: no answer: {e}"))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{method}: bad JSON from the browser: {e}: {text}"))?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
            self.keep(v);
        }
    }

    /// Collect the events that arrive within `within`.
    pub fn pump(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(text) = self.ws.recv_text(deadline) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                self.keep(v);
            }
        }
    }

    /// Evaluate `expr` in the page (promises awaited) and return its value as JSON; an
    /// exception thrown by it is an error.
    pub fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex
                .pointer("/exception/description")
                .or_else(|| ex.get("text"))
                .cloned()
                .unwrap_or(Value::Null);
            return Err(format!("evaluation threw: {text}"));
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluate `expr` up to `tries` times, `pause` apart, until it gives `true`; the last
    /// value or error otherwise.
    pub fn wait_true(&mut self, expr: &str, tries: usize, pause: Duration) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..tries {
            match self.eval(expr) {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(v) => last = format!("value {v}"),
                Err(e) => last = e,
            }
            thread::sleep(pause);
        }
        Err(format!("not true after {tries} tries: {last}"))
    }

    /// Navigate and wait for the answer (the load itself goes on; wait on the page's state).
    pub fn navigate(&mut self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        match r.get("errorText").and_then(Value::as_str) {
            Some(e) if !e.is_empty() => Err(format!("navigate to {url}: {e}")),
            _ => Ok(()),
        }
    }

    /// The events of one method.
    pub fn events_of<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events
            .iter()
            .filter(move |e| e.get("method").and_then(Value::as_str) == Some(method))
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.ws.close();
    }
}

// ---------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------

/// Headless Chromium with its DevTools port; its profile lives in a temp dir of its own.
/// Dropping it stops its whole process group.
pub struct Browser {
    proc: Proc,
    pub devtools: SocketAddr,
    _profile: TempDir,
}

impl Browser {
    /// `chromium` (or `chromium-browser`) on PATH.
    pub fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
            .find(|p| p.is_file())
    }

    /// Start it and wait (bounded) for `DevTools listening on ws://...` on its stderr.
    pub fn start(exe: &Path) -> Browser {
        let profile = TempDir::new("chromium");
        let mut cmd = Command::new(exe);
        cmd.arg("--headless=new")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args([
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,800",
                "about:blank",
            ]);
        {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let proc = spawn_cmd("chromium", &mut cmd)
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        const LISTENING: &str = "DevTools listening on ws://";
        let line = proc.wait_for_line(LISTENING, START_TIMEOUT);
        let rest = &line[line.find(LISTENING).map_or(0, |i| i + LISTENING.len())..];
        let host = rest.split('/').next().unwrap_or_default();
        let devtools: SocketAddr = host
            .parse()
            .unwrap_or_else(|e| panic!("DevTools address in {line:?}: {e}"));
        Browser {
            proc,
            devtools,
            _profile: profile,
        }
    }

    fn json(&self, method: &str, path: &str) -> Result<Value, String> {
        let a = http_request(self.devtools, method, path, &[], &[], CALL_TIMEOUT)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if a.status != 200 {
            return Err(format!("{method} {path}: HTTP {}: {}", a.status, a.text()));
        }
        serde_json::from_slice(&a.body).map_err(|e| format!("{method} {path}: {e}"))
    }

    /// A session on a page target: the first one listed, or a new one.
    pub fn page(&self) -> Cdp {
        let mut url = None;
        for _ in 0..20 {
            let list = self.json("GET", "/json/list").unwrap_or(Value::Null);
            url = list.as_array().and_then(|targets| {
                targets
                    .iter()
                    .filter(|t| t.get("type").and_then(Value::as_str) == Some("page"))
                    .find_map(|t| t.get("webSocketDebuggerUrl")?.as_str().map(String::from))
            });
            if url.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let url = match url {
            Some(u) => u,
            None => {
                let t = self
                    .json("PUT", "/json/new?about:blank")
                    .unwrap_or_else(|e| panic!("no page target and none made: {e}"));
                t.get("webSocketDebuggerUrl")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| panic!("new target without a WebSocket URL: {t}"))
            }
        };
        Cdp::connect(&url).unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    /// The browser's log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        self.proc.tail(n)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = self.proc.pid();
        if !self.proc.is_running() {
            return;
        }
        // SAFETY: kill(2) on the process group of a child of ours that has not been reaped.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        if self.proc.wait_exit(Duration::from_secs(5)).is_none() {
            // SAFETY: as above; the group leader is still unreaped.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = self.proc.wait_exit(Duration::from_secs(5));
        }
    }
}
