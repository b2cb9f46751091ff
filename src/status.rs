//! `tcp-forward status`: ask a running server or client what it is doing, through its admin
//! API, and print it as tables (or, with `--json`, as one JSON object).
//!
//! The API answers JSON over HTTP/1.1. `GET /api/status` says which role answers; a server
//! is then asked for `/api/clients`, `/api/mappings` and `/api/streams`. Each request is one
//! connection (`Connection: close`) from a blocking socket with 5 s connect, read and write
//! timeouts, and a response is read whole (at most 16 MiB) before it is looked at.
//!
//! The rendering functions take the JSON as it came and print `-` for whatever is missing
//! or of another type, so a newer or older API still gives a table.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::StatusArgs;

/// Connect, read and write timeout of every request.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a whole response may take to arrive, however it trickles in.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(30);
/// The largest response read.
const MAX_RESPONSE: usize = 16 << 20;
/// The largest response head (status line and headers) read.
const MAX_HEAD: usize = 64 << 10;

/// Run `tcp-forward status`; returns the exit status: 0, 1 when no usable answer came, 2 for
/// a bad `--admin` or `--token`.
pub fn run(args: &StatusArgs) -> u8 {
    let admin = match AdminAddr::parse(&args.admin) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcp-forward: --admin {:?}: {e}", args.admin);
            return 2;
        }
    };
    let token = args.token.as_deref().filter(|t| !t.is_empty());
    if token.is_some_and(|t| t.chars().any(char::is_control)) {
        eprintln!("tcp-forward: the admin token cannot contain control characters");
        return 2;
    }
    let text = match report(&admin, token, args.json) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("tcp-forward: {e}");
            return 1;
        }
    };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Ask the API and render what it said.
fn report(admin: &AdminAddr, token: Option<&str>, as_json: bool) -> Result<String, String> {
    let status = get_json(admin, "/api/status", token)?;
    match status.get("role").and_then(Value::as_str) {
        Some("server") => {
            let clients = list(get_json(admin, "/api/clients", token)?, "clients");
            let mappings = list(get_json(admin, "/api/mappings", token)?, "mappings");
            let streams = list(get_json(admin, "/api/streams", token)?, "streams");
            Ok(if as_json {
                format!("{}\n", server_json(&status, &clients, &mappings, &streams))
            } else {
                render_server(&status, &clients, &mappings, &streams)
            })
        }
        Some("client") => Ok(if as_json {
            format!("{}\n", client_json(&status))
        } else {
            render_client(&status)
        }),
        Some(role) => Err(format!(
            "the admin API at {} reports the role {:?}; expected \"server\" or \"client\"",
            admin.text,
            sanitize(role)
        )),
        None => Err(format!(
            "the admin API at {} answered GET /api/status without a \"role\"",
            admin.text
        )),
    }
}

/// The array under `key` of a list endpoint's answer (`{"clients": [...]}`); an answer that
/// is itself an array is taken as it is; anything else is an empty list.
fn list(mut body: Value, key: &str) -> Value {
    match body.get_mut(key).map(Value::take) {
        Some(v @ Value::Array(_)) => v,
        _ if body.is_array() => body,
        _ => Value::Array(Vec::new()),
    }
}

// ---------------------------------------------------------------------------------------
// The admin API's address
// ---------------------------------------------------------------------------------------

/// What `--admin` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminAddr {
    /// A host name or IP address, without brackets.
    host: String,
    port: u16,
    /// `host:port` as given (IPv6 in brackets): for messages and the Host header.
    text: String,
}

impl AdminAddr {
    /// `host:port` or `[IPv6]:port`; an `http://` in front and a `/` behind are dropped.
    pub(crate) fn parse(s: &str) -> Result<AdminAddr, String> {
        let text = s.strip_prefix("http://").unwrap_or(s);
        let text = text.strip_suffix('/').unwrap_or(text);
        const HINT: &str = "give host:port or [IPv6]:port, e.g. 127.0.0.1:8080";
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((ip, port)) = rest.split_once(']') else {
                return Err(format!("no closing ']'; {HINT}"));
            };
            if ip.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{ip:?} is not an IPv6 address"));
            }
            let Some(port) = port.strip_prefix(':') else {
                return Err(format!("no port after the address; {HINT}"));
            };
            (ip, port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(format!("no port; {HINT}"));
            };
            if host.contains(':') {
                return Err("write an IPv6 address in brackets, e.g. [::1]:8080".to_string());
            }
            if host.is_empty() {
                return Err(format!("no host; {HINT}"));
            }
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(format!("{host:?} is not a host name or address; {HINT}"));
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{port:?} is not a port (1-65535)")),
        };
        Ok(AdminAddr {
            host: host.to_string(),
            port,
            text: text.to_string(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// GET `path` and parse the body of a 2xx answer as JSON.
fn get_json(admin: &AdminAddr, path: &str, token: Option<&str>) -> Result<Value, String> {
    let resp = get(admin, path, token)?;
    if !(200..300).contains(&resp.status) {
        return Err(refusal(admin, path, token.is_some(), &resp));
    }
    serde_json::from_slice(&resp.body).map_err(|e| {
        format!(
            "the admin API at {} answered GET {path} with a body that is not JSON: {e}",
            admin.text
        )
    })
}

/// The message for a non-2xx answer.
fn refusal(admin: &AdminAddr, path: &str, token_given: bool, resp: &Response) -> String {
    if resp.status == 401 {
        return if token_given {
            format!(
                "the admin API at {} refused the token: wrong token (from --token or \
                 TCP_FORWARD_ADMIN_TOKEN)",
                admin.text
            )
        } else {
            "the admin API requires a token: pass --token or set TCP_FORWARD_ADMIN_TOKEN"
                .to_string()
        };
    }
    let mut msg = format!(
        "the admin API at {} answered GET {path} with {}",
        admin.text, resp.status
    );
    if !resp.reason.is_empty() {
        msg.push(' ');
        msg.push_str(&sanitize(&resp.reason));
    }
    if let Some(why) = error_text(&resp.body) {
        msg.push_str(": ");
        msg.push_str(&why);
    }
    msg
}

/// What a refusal's body says: the `"error"` of a JSON body, else a short text body's first
/// line.
fn error_text(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v.get("error").and_then(Value::as_str).map(sanitize);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    let line = text.lines().next()?.trim();
    (!line.is_empty() && line.len() <= 200).then(|| sanitize(line))
}

/// One request on a connection of its own; the response read whole.
fn get(admin: &AdminAddr, path: &str, token: Option<&str>) -> Result<Response, String> {
    let mut conn = connect(admin)?;
    let io_failed = |e: io::Error| {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            format!(
                "the admin API at {} did not answer GET {path} within {} s",
                admin.text,
                TIMEOUT.as_secs()
            )
        } else {
            format!("GET {path} from the admin API at {}: {e}", admin.text)
        }
    };
    let set = conn
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)));
    set.map_err(io_failed)?;
    conn.write_all(request(&admin.text, path, token).as_bytes())
        .map_err(io_failed)?;

    let deadline = Instant::now() + RESPONSE_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failed(e)),
        };
        if n == 0 {
            return match parse_response(&buf, true) {
                Ok(Some(resp)) => Ok(resp),
                Ok(None) => unreachable!("parse_response decides at the end of the stream"),
                Err(e) => Err(bad_response(admin, path, &e)),
            };
        }
        if buf.len() + n > MAX_RESPONSE {
            return Err(bad_response(
                admin,
                path,
                &format!("larger than {} MiB", MAX_RESPONSE >> 20),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, false) {
            Ok(Some(resp)) => return Ok(resp),
            Ok(None) => {}
            Err(e) => return Err(bad_response(admin, path, &e)),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the admin API at {} did not finish answering GET {path} within {} s",
                admin.text,
                RESPONSE_DEADLINE.as_secs()
            ));
        }
    }
}

fn bad_response(admin: &AdminAddr, path: &str, why: &str) -> String {
    format!(
        "the admin API at {} sent a broken answer to GET {path}: {why}",
        admin.text
    )
}

/// A connection to the first of the host's addresses that takes one.
fn connect(admin: &AdminAddr) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match (admin.host.as_str(), admin.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(format!(
                "cannot resolve {} for the admin API: {e}",
                admin.host
            ));
        }
    };
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, TIMEOUT) {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(e),
        }
    }
    let why = match last {
        Some(e) if e.kind() == ErrorKind::TimedOut => {
            format!("no answer within {} s", TIMEOUT.as_secs())
        }
        Some(e) => e.to_string(),
        None => "the name has no addresses".to_string(),
    };
    Err(format!(
        "cannot reach the admin API at {}: {why}; is the server running with ADMIN_ADDR set?",
        admin.text
    ))
}

/// The request text. `host` is `host:port` as given; the token has no control characters.
fn request(host: &str, path: &str, token: Option<&str>) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tcp-forward/{}\r\n\
         Accept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = token {
        r.push_str("Authorization: Bearer ");
        r.push_str(t);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// An HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub reason: String,
    /// Names as sent; look them up without regard to case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The response in `buf` once it is whole: when the body has its `Content-Length`, or, at the
/// end of the stream (`eof`), whatever came after the head. `Ok(None)`: read more (never at
/// the end of the stream).
pub(crate) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some((head_len, body_start)) = head_end(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(format!("no end of the headers in {} KiB", MAX_HEAD >> 10));
        }
        if eof {
            return Err(if buf.is_empty() {
                "the connection closed without an answer".to_string()
            } else {
                "the connection closed in the middle of the headers".to_string()
            });
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| "the headers are not text".to_string())?;
    let mut lines = head.lines();
    let (status, reason) = status_line(lines.next().unwrap_or(""))?;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a header line without ':': {:?}", sanitize(line)));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    if header(&headers, "transfer-encoding").is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err("a transfer encoding other than plain Content-Length".to_string());
    }
    let body = &buf[body_start..];
    let wanted = match header(&headers, "content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| format!("Content-Length {:?} is not a number", sanitize(v)))?,
        ),
        // No body, whatever follows.
        None if status == 204 || status == 304 || (100..200).contains(&status) => Some(0),
        None => None,
    };
    let body = match wanted {
        Some(n) if body.len() >= n => &body[..n],
        Some(n) if eof => {
            return Err(format!(
                "the connection closed after {} of {n} body bytes",
                body.len()
            ));
        }
        None if eof => body,
        _ => return Ok(None),
    };
    Ok(Some(Response {
        status,
        reason,
        headers,
        body: body.to_vec(),
    }))
}

/// The length of the head without its blank line, and where the body starts. Lines end in
/// CRLF, or LF alone.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let window = &buf[..buf.len().min(MAX_HEAD + 4)];
    let mut i = 0;
    while let Some(off) = window[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let rest = &window[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some((nl + 1, nl + 3));
        }
        if rest.starts_with(b"\n") {
            return Some((nl + 1, nl + 2));
        }
        i = nl + 1;
    }
    None
}

/// `HTTP/1.1 200 OK` → (200, "OK").
fn status_line(line: &str) -> Result<(u16, String), String> {
    let bad = || format!("not an HTTP status line: {:?}", sanitize(line));
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, ' ');
    let _minor = parts.next().filter(|m| m.len() == 1).ok_or_else(bad)?;
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..600).contains(&status) {
        return Err(bad());
    }
    Ok((status, parts.next().unwrap_or("").trim().to_string()))
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

/// `--json` for a server: `{"status": ..., "clients": [...], "mappings": [...], "streams":
/// [...]}`.
pub fn server_json(status: &Value, clients: &Value, mappings: &Value, streams: &Value) -> Value {
    json!({"status": status, "clients": clients, "mappings": mappings, "streams": streams})
}

/// `--json` for a client: `{"status": ...}`.
pub fn client_json(status: &Value) -> Value {
    json!({ "status": status })
}

/// `list` with the port of every UDP entry written `5353/udp`: one port number may have a
/// TCP and a UDP mapping, and the tables tell them apart so.
fn udp_ports_marked(list: &Value) -> Value {
    let mut list = list.clone();
    if let Some(rows) = list.as_array_mut() {
        for row in rows {
            if row.get("proto").and_then(Value::as_str) == Some("udp")
                && let Some(port) = row.get("port").cloned()
            {
                row["port"] = json!(format!("{}/udp", text(Some(&port))));
            }
        }
    }
    list
}

/// A server's status as text: a header line, then the clients, mappings and streams tables.
pub fn render_server(status: &Value, clients: &Value, mappings: &Value, streams: &Value) -> String {
    let (mappings, streams) = (&udp_ports_marked(mappings), &udp_ports_marked(streams));
    let mut out = format!(
        "server {}, up {}: {}, {}, {}\n",
        text(status.get("version")),
        duration(status.get("uptime_secs")),
        count(status.get("clients"), "client", "clients"),
        count(status.get("mappings"), "mapping", "mappings"),
        count(status.get("streams"), "stream", "streams"),
    );
    section(
        &mut out,
        "Clients",
        &[
            ("ID", Left, "id", text),
            ("ADDRESS", Left, "addr", text),
            ("TAG", Left, "tag", text),
            ("CONNECTED", Left, "connected_at", text),
            ("STREAMS", Right, "streams", text),
            ("IN", Right, "bytes_in", bytes),
            ("OUT", Right, "bytes_out", bytes),
            ("RATE IN", Right, "rate_in", rate),
            ("RATE OUT", Right, "rate_out", rate),
        ],
        clients,
    );
    section(
        &mut out,
        "Mappings",
        &[
            ("PORT", Left, "port", text),
            ("TARGET", Left, "target", text),
            ("TAG", Left, "tag", text),
            ("STREAMS", Right, "streams", text),
            ("IN", Right, "bytes_in", bytes),
            ("OUT", Right, "bytes_out", bytes),
        ],
        mappings,
    );
    section(
        &mut out,
        "Streams",
        &[
            ("ID", Left, "id", text),
            ("CLIENT", Left, "client", text),
            ("PORT", Left, "port", text),
            ("VISITOR", Left, "visitor", text),
            ("TARGET", Left, "target", text),
            ("OPENED", Left, "opened_at", text),
            ("IN", Right, "bytes_in", bytes),
            ("OUT", Right, "bytes_out", bytes),
        ],
        streams,
    );
    out
}

/// A client's status as text: a header line, then one line per field.
pub fn render_client(status: &Value) -> String {
    let state = status.get("state");
    let mut out = format!(
        "client {}, {}\n\n",
        text(status.get("version")),
        text(state)
    );
    type Cell = fn(Option<&Value>) -> String;
    let known: [(&str, &str, Cell); 9] = [
        ("state", "State", text),
        ("server", "Server", text),
        ("tag", "Tag", text),
        ("connected_at", "Connected", text),
        ("uptime_secs", "Up", duration),
        ("streams", "Streams", text),
        ("bytes_in", "In", bytes),
        ("bytes_out", "Out", bytes),
        ("reconnects", "Reconnects", text),
    ];
    let mut rows: Vec<(String, String)> = known
        .iter()
        // A client's status has no uptime as the API stands: no row for it unless it has.
        .filter(|(key, _, _)| *key != "uptime_secs" || status.get(key).is_some())
        .map(|(key, label, cell)| (label.to_string(), cell(status.get(key))))
        .collect();
    if let Some(fields) = status.as_object() {
        for (key, value) in fields {
            let shown = matches!(key.as_str(), "role" | "version")
                || known.iter().any(|(k, _, _)| *k == key.as_str());
            if !shown {
                rows.push((sanitize(key), text(Some(value))));
            }
        }
    }
    let label_width = rows.iter().map(|(l, _)| width(l)).max().unwrap_or(0);
    for (label, value) in rows {
        out.push_str(&label);
        pad(&mut out, label_width - width(&label) + 2);
        out.push_str(&value);
        out.push('\n');
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// A table column: title, alignment, the field shown and how.
type Column<'a> = (&'a str, Align, &'a str, fn(Option<&Value>) -> String);

/// A blank line, the title, and the table of `rows` (or "(none)").
fn section(out: &mut String, title: &str, columns: &[Column], rows: &Value) {
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        out.push_str("(none)\n");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, _, key, cell)| cell(row.get(key)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, ..))| {
            cells
                .iter()
                .map(|r| width(&r[i]))
                .chain([width(title)])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let titles: Vec<String> = columns.iter().map(|(t, ..)| t.to_string()).collect();
    for line in std::iter::once(&titles).chain(&cells) {
        let start = out.len();
        for (i, cell) in line.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let fill = widths[i] - width(cell);
            match columns[i].1 {
                Left => {
                    out.push_str(cell);
                    pad(out, fill);
                }
                Right => {
                    pad(out, fill);
                    out.push_str(cell);
                }
            }
        }
        let end = out[start..].trim_end().len() + start;
        out.truncate(end);
        out.push('\n');
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Columns a cell takes (one a character).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// A field as text: strings as they are (control characters made `?`), numbers and booleans
/// as JSON writes them, `-` for missing or null, other JSON compact.
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => sanitize(s),
        Some(other) => sanitize(&other.to_string()),
    }
}

/// A byte count: `512 B`, `1.2 MiB`.
fn bytes(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(n) => human_bytes(n),
        None => text(v),
    }
}

/// A rate in bytes per second: `12.3 KiB/s`.
fn rate(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(n) => format!("{}/s", human_bytes(n)),
        None => text(v),
    }
}

/// Seconds as the two largest units that apply: `12s`, `5m 3s`, `2h 0m`, `3d 4h`.
fn duration(v: Option<&Value>) -> String {
    let Some(secs) = v.and_then(Value::as_f64).filter(|s| *s >= 0.0) else {
        return text(v);
    };
    let s = secs as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `1 client`, `3 clients`, `- clients`.
fn count(v: Option<&Value>, one: &str, many: &str) -> String {
    match v.and_then(Value::as_u64) {
        Some(1) => format!("1 {one}"),
        _ => format!("{} {many}", text(v)),
    }
}

fn human_bytes(n: f64) -> String {
    if !n.is_finite() || n < 0.0 {
        return format!("{n} B");
    }
    if n < 1024.0 {
        return format!("{} B", n.round() as u64);
    }
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as 1024.0 KiB: go up a unit first.
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Text from the API with control characters (a terminal's escape sequences among them)
/// replaced by `?`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_status() -> Value {
        json!({"role": "server", "version": "0.1.0", "uptime_secs": 3725, "clients": 1,
               "mappings": 2, "streams": 3})
    }

    fn clients() -> Value {
        json!([{"id": 7, "addr": "203.0.113.9:51514", "tag": "default",
                "connected_at": "2026-12-01T20:00:00Z", "streams": 2, "bytes_in": 1_258_291,
                "bytes_out": 0, "rate_in": 12_595.2, "rate_out": 0, "avg_in": 0, "avg_out": 0}])
    }

    fn mappings() -> Value {
        json!([
            {"port": 1234, "target": "192.168.10.5:22", "tag": "default", "streams": 3,
             "bytes_in": 512, "bytes_out": 1024},
            {"port": 80, "target": "192.168.10.6:8080", "tag": "web", "streams": 0,
             "bytes_in": 0, "bytes_out": 0},
        ])
    }

    fn streams() -> Value {
        json!([{"id": 3, "client": 7, "port": 1234, "visitor": "198.51.100.4:40000",
                "target": "192.168.10.5:22", "opened_at": "2026-12-01T20:01:00Z",
                "bytes_in": 2048, "bytes_out": 5_368_709_120_u64}])
    }

    /// The lines of the section titled `title`, up to the blank line after it.
    fn section_of<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
        let mut lines = text.lines().skip_while(|l| *l != title);
        assert_eq!(lines.next(), Some(title), "no section {title} in:\n{text}");
        lines.take_while(|l| !l.is_empty()).collect()
    }

    #[test]
    fn server_tables() {
        let text = render_server(&server_status(), &clients(), &mappings(), &streams());
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("server 0.1.0, up 1h 2m: 1 client, 2 mappings, 3 streams")
        );
        assert_eq!(
            section_of(&text, "Clients"),
            [
                "ID  ADDRESS            TAG      CONNECTED             STREAMS       IN  OUT     RATE IN  RATE OUT",
                "7   203.0.113.9:51514  default  2026-12-01T20:00:00Z        2  1.2 MiB  0 B  12.3 KiB/s     0 B/s",
            ]
        );
        assert_eq!(
            section_of(&text, "Mappings"),
            [
                "PORT  TARGET             TAG      STREAMS     IN      OUT",
                "1234  192.168.10.5:22    default        3  512 B  1.0 KiB",
                "80    192.168.10.6:8080  web            0    0 B      0 B",
            ]
        );
        assert_eq!(
            section_of(&text, "Streams"),
            [
                "ID  CLIENT  PORT  VISITOR             TARGET           OPENED                     IN      OUT",
                "3   7       1234  198.51.100.4:40000  192.168.10.5:22  2026-12-01T20:01:00Z  2.0 KiB  5.0 GiB",
            ]
        );
        assert!(!text.lines().any(|l| l.ends_with(' ')), "{text}");
    }

    #[test]
    fn udp_mappings_and_flows_show_their_protocol() {
        let mappings = json!([
            {"port": 53, "proto": "tcp", "target": "10.0.0.5:53", "tag": "default", "streams": 0,
             "bytes_in": 0, "bytes_out": 0},
            {"port": 53, "proto": "udp", "target": "10.0.0.5:53", "tag": "default", "streams": 1,
             "bytes_in": 40, "bytes_out": 120},
        ]);
        let streams = json!([{"id": 9, "client": 7, "port": 53, "proto": "udp",
                "visitor": "198.51.100.4:5353", "target": "10.0.0.5:53",
                "opened_at": "2026-12-01T20:01:00Z", "bytes_in": 40, "bytes_out": 120}]);
        let text = render_server(&server_status(), &clients(), &mappings, &streams);
        assert_eq!(
            section_of(&text, "Mappings"),
            [
                "PORT    TARGET       TAG      STREAMS    IN    OUT",
                "53      10.0.0.5:53  default        0   0 B    0 B",
                "53/udp  10.0.0.5:53  default        1  40 B  120 B",
            ]
        );
        assert!(
            section_of(&text, "Streams")[1].starts_with("9   7       53/udp  198.51.100.4:5353")
        );
    }

    #[test]
    fn empty_sections_say_none() {
        let status = json!({"role": "server", "version": "0.1.0", "uptime_secs": 5,
                            "clients": 0, "mappings": 0, "streams": 0});
        let empty = json!([]);
        let text = render_server(&status, &empty, &Value::Null, &empty);
        assert!(text.starts_with("server 0.1.0, up 5s: 0 clients, 0 mappings, 0 streams\n"));
        for title in ["Clients", "Mappings", "Streams"] {
            assert_eq!(section_of(&text, title), ["(none)"], "{text}");
        }
    }

    #[test]
    fn missing_odd_and_extra_fields() {
        let status = json!({"role": "server", "extra": true});
        let clients = json!([
            {"id": 1, "addr": "a", "new_field": [1, 2]},
            "not an object",
            {"id": "x\u{1b}[2J", "tag": null, "bytes_in": "lots", "rate_in": -1},
        ]);
        let text = render_server(&status, &clients, &json!([{}]), &json!([]));
        assert!(text.starts_with("server -, up -: - clients, - mappings, - streams\n"));
        let c = section_of(&text, "Clients");
        assert_eq!(c.len(), 4, "{text}");
        assert_eq!(
            c[1].split_whitespace().collect::<Vec<_>>(),
            ["1", "a", "-", "-", "-", "-", "-", "-", "-"]
        );
        assert_eq!(c[2].split_whitespace().collect::<Vec<_>>(), ["-"; 9]);
        // No escape character reaches the terminal; a string where a number belongs is shown.
        let odd: Vec<_> = c[3].split_whitespace().collect();
        assert_eq!(odd[0], "x?[2J");
        assert_eq!(odd[5], "lots");
        assert!(c[3].contains("-1 B/s"), "{text}");
        let m = section_of(&text, "Mappings");
        assert_eq!(m[1].split_whitespace().collect::<Vec<_>>(), ["-"; 6]);
    }

    #[test]
    fn client_fields() {
        let status = json!({"role": "client", "version": "0.1.0", "state": "up",
                            "server": "203.0.113.1:7000", "tag": "default",
                            "connected_at": "2026-12-01T20:00:00Z", "streams": 2,
                            "bytes_in": 3_145_728, "bytes_out": 10, "reconnects": 1,
                            "later": {"a": 1}});
        assert_eq!(
            render_client(&status),
            "client 0.1.0, up\n\n\
             State       up\n\
             Server      203.0.113.1:7000\n\
             Tag         default\n\
             Connected   2026-12-01T20:00:00Z\n\
             Streams     2\n\
             In          3.0 MiB\n\
             Out         10 B\n\
             Reconnects  1\n\
             later       {\"a\":1}\n"
        );
    }

    #[test]
    fn connecting_client_with_little_said() {
        let status = json!({"role": "client", "state": "connecting", "connected_at": null,
                            "uptime_secs": 61});
        let text = render_client(&status);
        assert!(text.starts_with("client -, connecting\n\n"), "{text}");
        assert!(text.contains("\nConnected   -\n"), "{text}");
        assert!(text.contains("\nUp          1m 1s\n"), "{text}");
        assert!(text.contains("\nReconnects  -\n"), "{text}");
    }

    #[test]
    fn json_output_keeps_what_came() {
        let v = server_json(&server_status(), &clients(), &mappings(), &streams());
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["status", "clients", "mappings", "streams"]);
        assert_eq!(v["clients"], clients());
        assert_eq!(v["status"], server_status());
        let c = client_json(&json!({"role": "client"}));
        assert_eq!(c, json!({"status": {"role": "client"}}));
    }

    #[test]
    fn list_takes_the_array_under_its_key() {
        assert_eq!(list(json!({"clients": [1, 2]}), "clients"), json!([1, 2]));
        assert_eq!(list(json!([3]), "clients"), json!([3]));
        assert_eq!(list(json!({"clients": 5}), "clients"), json!([]));
        assert_eq!(list(json!({"other": [1]}), "clients"), json!([]));
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(1023.0), "1023 B");
        assert_eq!(human_bytes(1024.0), "1.0 KiB");
        assert_eq!(human_bytes(1_258_291.0), "1.2 MiB");
        assert_eq!(human_bytes(1024.0 * 1024.0 - 1.0), "1.0 MiB");
        assert_eq!(human_bytes(u64::MAX as f64), "16.0 EiB");
        assert_eq!(rate(Some(&json!(12_595.2))), "12.3 KiB/s");
        assert_eq!(rate(None), "-");
        let d = |s: u64| duration(Some(&json!(s)));
        assert_eq!(d(0), "0s");
        assert_eq!(d(59), "59s");
        assert_eq!(d(60), "1m 0s");
        assert_eq!(d(7200), "2h 0m");
        assert_eq!(d(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(count(Some(&json!(1)), "client", "clients"), "1 client");
        assert_eq!(count(Some(&json!(0)), "client", "clients"), "0 clients");
    }

    #[test]
    fn admin_addresses() {
        let ok = |s: &str| AdminAddr::parse(s).unwrap();
        let a = ok("127.0.0.1:8080");
        assert_eq!(
            (a.host.as_str(), a.port, a.text.as_str()),
            ("127.0.0.1", 8080, "127.0.0.1:8080")
        );
        let a = ok("[::1]:9000");
        assert_eq!(
            (a.host.as_str(), a.port, a.text.as_str()),
            ("::1", 9000, "[::1]:9000")
        );
        let a = ok("localhost:1");
        assert_eq!((a.host.as_str(), a.port), ("localhost", 1));
        let a = ok("http://admin.example-1.net:8080/");
        assert_eq!(
            (a.host.as_str(), a.text.as_str()),
            ("admin.example-1.net", "admin.example-1.net:8080")
        );
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            ":8080",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:80x",
            "::1:8080",
            "[::1]8080",
            "[::1",
            "[1.2.3.4]:80",
            "a b:80",
            "https://x:80",
            "[::1]:",
        ] {
            assert!(AdminAddr::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            AdminAddr::parse("::1:8080")
                .unwrap_err()
                .contains("brackets")
        );
    }

    #[test]
    fn request_text() {
        let r = request("127.0.0.1:8080", "/api/status", Some("s3cret"));
        assert!(r.starts_with("GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(r.contains("\r\nConnection: close\r\n"));
        assert!(r.ends_with("\r\nAuthorization: Bearer s3cret\r\n\r\n"));
        assert!(!request("h:1", "/", None).contains("Authorization"));
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        content-length: 12\r\n\r\n{\"role\":\"x\"}";

    #[test]
    fn response_with_content_length() {
        let r = parse_response(OK, false).unwrap().unwrap();
        assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
        assert_eq!(r.body, b"{\"role\":\"x\"}");
        assert_eq!(header(&r.headers, "Content-Type"), Some("application/json"));
        // Anything after the body is not part of it.
        let mut more = OK.to_vec();
        more.extend_from_slice(b"junk");
        assert_eq!(parse_response(&more, false).unwrap().unwrap().body, r.body);
    }

    #[test]
    fn partial_responses_ask_for_more() {
        for cut in 0..OK.len() {
            assert_eq!(parse_response(&OK[..cut], false), Ok(None), "cut at {cut}");
            assert!(parse_response(&OK[..cut], true).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn response_read_to_the_end_without_content_length() {
        let raw = b"HTTP/1.0 404 Not Found\nX: y\n\n{\"error\":\"no such\"}";
        assert_eq!(parse_response(raw, false), Ok(None));
        let r = parse_response(raw, true).unwrap().unwrap();
        assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
        assert_eq!(r.body, b"{\"error\":\"no such\"}");
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert_eq!(r.unwrap().body, b"");
        let r = parse_response(b"HTTP/1.1 200\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.reason.as_str(), r.body.len()), (200, "", 0));
    }

    #[test]
    fn broken_responses() {
        for raw in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                parse_response(raw, true).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(raw)
            );
        }
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert!(parse_response(&endless, false).is_err());
    }

    fn admin() -> AdminAddr {
        AdminAddr::parse("127.0.0.1:8080").unwrap()
    }

    fn resp(raw: &[u8]) -> Response {
        parse_response(raw, true).unwrap().unwrap()
    }

    #[test]
    fn refusal_messages() {
        let unauthorized = resp(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        let m = refusal(&admin(), "/api/status", false, &unauthorized);
        assert_eq!(
            m,
            "the admin API requires a token: pass --token or set TCP_FORWARD_ADMIN_TOKEN"
        );
        let m = refusal(&admin(), "/api/status", true, &unauthorized);
        assert!(m.contains("wrong token"), "{m}");

        let failed =
            resp(b"HTTP/1.1 500 Internal Server Error\r\n\r\n{\"error\":\"out of\\u001b memory\"}");
        assert_eq!(
            refusal(&admin(), "/api/clients", false, &failed),
            "the admin API at 127.0.0.1:8080 answered GET /api/clients with 500 Internal \
             Server Error: out of? memory"
        );
        let text = resp(b"HTTP/1.1 404 Not Found\r\n\r\nno such page\nsecond line");
        assert_eq!(
            refusal(&admin(), "/x", false, &text),
            "the admin API at 127.0.0.1:8080 answered GET /x with 404 Not Found: no such page"
        );
        let bare = resp(b"HTTP/1.1 503 \r\n\r\n");
        assert_eq!(
            refusal(&admin(), "/x", false, &bare),
            "the admin API at 127.0.0.1:8080 answered GET /x with 503"
        );
    }
}
