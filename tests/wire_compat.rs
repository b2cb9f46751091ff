//! Wire compatibility with recorded sessions of protocol version 2.
//!
//! Each file in `tests/fixtures/wire_v2/` is one session between a tcp-forward server and
//! client, recorded by `scripts/record-wire.py` through a logging proxy: every frame each
//! side sent, in the order they passed, and what the visitors and targets did (the format
//! is described in `tests/fixtures/wire_v2/README.md`). Each test plays one side of a
//! recording to the binary under test, which runs as the other side:
//!
//! - `client_under_test::*`: the test is the recorded server; `tcp-forward client` dials it
//!   and connects targets that the test runs;
//! - `server_under_test::*`: the test is the recorded client, dialling `tcp-forward server`,
//!   whose public ports visitors that the test runs connect to.
//!
//! What the test sends is the recording's bytes. What the binary sends must match the
//! recording byte for byte (preambles, frame headers, handshake payloads, OPEN targets,
//! reason texts, FIN, CREDIT amounts), except for these fields, each checked another way:
//!
//! - nonces are read from the binary's bytes; proofs are recomputed from the tokens
//!   (`tcp_forward::protocol::handshake`) and compared; PING stamps may be any value, but
//!   a PONG must echo its PING;
//! - target ports in OPEN are this run's;
//! - a client under test sends one frame no recording of version 2 has: its capability
//!   PING (`TFCAPS` and the capability bits), right after its HELLO; it is checked there,
//!   byte for byte, and set aside (an older server answers it as any PING);
//! - DATA may be cut into frames differently: each stream's payload is compared as a byte
//!   stream, every DATA header must be well formed (a long frame only with FLAG_LONG, a
//!   short length of 0 and a length of 1 byte to 1 MiB after it), the binary may never
//!   have more bytes in flight than the window the test announced, and a frame that lines
//!   up with a recorded one must carry the recorded header;
//! - in recordings marked `@credit batched` (bulk transfers, whose credit follows how the
//!   data was chunked) CREDIT amounts are checked by the batching rule instead: each one at
//!   least a quarter window and at most a window, all of them together no more than was
//!   delivered and less than a quarter window short of it.
//!
//! Frames of different streams may interleave differently from the recording; within a
//! stream, and among the CREDIT frames of a stream, the PINGs, the PONGs and the tunnel
//! frames, the order is the recording's. A session ends with both ends closing the tunnel:
//! by then everything the binary sent has been matched, and anything left over fails the
//! test (PINGs beyond the recorded ones excepted, as the heartbeat runs on its own clock).
//! Every wait is bounded.

mod common;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tcp_forward::protocol::caps::CAPS_PING;
use tcp_forward::protocol::handshake::{proof, server_proof};

/// Bound of every wait for the binary, a visitor or a target.
const WAIT: Duration = Duration::from_secs(10);
/// Longest payload of a long DATA frame.
const MAX_LONG: usize = 1024 * 1024;

const HELLO: u8 = 0x02;
const ACCEPT: u8 = 0x03;
const DATA: u8 = 0x13;
const CREDIT: u8 = 0x14;
const PING: u8 = 0x20;
const PONG: u8 = 0x21;
const FLAG_LONG: u8 = 0x01;

const KINDS: &[(u8, &str)] = &[
    (0x01, "CHALLENGE"),
    (HELLO, "HELLO"),
    (ACCEPT, "ACCEPT"),
    (0x04, "REFUSE"),
    (0x10, "OPEN"),
    (0x11, "OPEN_OK"),
    (0x12, "OPEN_FAIL"),
    (DATA, "DATA"),
    (CREDIT, "CREDIT"),
    (0x15, "FIN"),
    (0x16, "RESET"),
    (PING, "PING"),
    (PONG, "PONG"),
    (0x22, "GOAWAY"),
];

fn kind_name(kind: u8) -> String {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or_else(|| format!("type 0x{kind:02x}"), |(_, n)| n.to_string())
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// At most the first 64 bytes, in hex, for messages.
fn hex_short(b: &[u8]) -> String {
    if b.len() <= 64 {
        hex(b)
    } else {
        format!("{}... ({} bytes)", hex(&b[..64]), b.len())
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// Which side the binary under test plays.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Live {
    Client,
    Server,
}

impl Live {
    fn name(self) -> &'static str {
        match self {
            Live::Client => "client",
            Live::Server => "server",
        }
    }

    /// The direction in which the binary sends.
    fn sends(self) -> Dir {
        match self {
            Live::Client => Dir::C2S,
            Live::Server => Dir::S2C,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    S2C,
    C2S,
}

/// A piece of a payload template.
#[derive(Clone, Debug)]
enum Tok {
    Bytes(Vec<u8>),
    /// `{name}`: a nonce, a proof, a PING stamp or a port.
    Var(String),
    /// `pattern SEED @OFFSET +LEN`: a slice of tests/common's `pattern(SEED, _)`.
    Pattern {
        seed: u64,
        off: usize,
        len: usize,
    },
}

#[derive(Clone, Debug)]
enum Wire {
    Preamble(Vec<Tok>),
    Raw(Vec<Tok>),
    Frame {
        kind: u8,
        header: Vec<u8>,
        payload: Vec<Tok>,
    },
    /// The sender closed the tunnel (`EOF`) or reset it (`RST`).
    End {
        rst: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ActorKind {
    Visitor,
    Target,
}

#[derive(Clone, Debug)]
enum Op {
    /// A visitor connects to the public port of mapping N.
    Connect(usize),
    /// A target's listener accepts the client's connection.
    Accept,
    Send(Vec<Tok>),
    Recv(Vec<Tok>),
    Eof,
    SeesReset,
    Shutdown,
    Reset,
}

#[derive(Clone, Debug)]
enum Step {
    Wire {
        dir: Dir,
        what: Wire,
    },
    Actor {
        kind: ActorKind,
        name: String,
        op: Op,
    },
    Sigterm(Live),
    /// The client has taken the ACCEPT in (its log says so; nothing on the wire does).
    ClientUp,
}

struct Line {
    no: usize,
    text: String,
    step: Step,
}

struct MapSpec {
    target: Vec<Tok>,
    refused: bool,
}

struct Fixture {
    name: String,
    sides: Vec<Live>,
    tag: String,
    server_token: Option<String>,
    client_token: Option<String>,
    heartbeat: Option<String>,
    batched: bool,
    maps: Vec<MapSpec>,
    /// Nonces and proofs as they were recorded (`@recorded`).
    recorded: Vec<(String, Vec<u8>)>,
    lines: Vec<Line>,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire_v2")
}

enum Word {
    Quoted(Vec<Tok>),
    Bare(String),
}

/// Split a line into words: quoted strings (with `\n \r \t \\ \" \xNN` escapes and `{var}`
/// parts) and bare words, up to a `#` comment.
fn words(s: &str) -> Result<Vec<Word>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => i += 1,
            b'#' => break,
            b'"' => {
                i += 1;
                let mut toks = Vec::new();
                let mut cur = Vec::new();
                loop {
                    let c = *b.get(i).ok_or("unterminated string")?;
                    match c {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            let e = *b.get(i + 1).ok_or("dangling escape")?;
                            i += 2;
                            cur.push(match e {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'\\' | b'"' => e,
                                b'x' => {
                                    let h = s.get(i..i + 2).ok_or("short \\x escape")?;
                                    i += 2;
                                    u8::from_str_radix(h, 16).map_err(|_| "bad \\x escape")?
                                }
                                _ => return Err(format!("unknown escape \\{}", e as char)),
                            });
                        }
                        b'{' => {
                            let end = s[i..].find('}').ok_or("unterminated {var}")? + i;
                            if !cur.is_empty() {
                                toks.push(Tok::Bytes(std::mem::take(&mut cur)));
                            }
                            toks.push(Tok::Var(s[i + 1..end].to_string()));
                            i = end + 1;
                        }
                        _ => {
                            cur.push(c);
                            i += 1;
                        }
                    }
                }
                if !cur.is_empty() {
                    toks.push(Tok::Bytes(cur));
                }
                out.push(Word::Quoted(toks));
            }
            _ => {
                let start = i;
                while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                    i += 1;
                }
                out.push(Word::Bare(s[start..i].to_string()));
            }
        }
    }
    Ok(out)
}

fn unhex(w: &str) -> Result<Vec<u8>, String> {
    if !w.len().is_multiple_of(2) || !w.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{w:?} is not hex"));
    }
    (0..w.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&w[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn bare(w: &Word) -> Result<&str, String> {
    match w {
        Word::Bare(s) => Ok(s),
        Word::Quoted(_) => Err("unexpected string".into()),
    }
}

/// A payload template from words: hex, strings, `{var}` and `pattern SEED @OFF +LEN`.
fn template(ws: &[Word]) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < ws.len() {
        match &ws[i] {
            Word::Quoted(t) => toks.extend(t.iter().cloned()),
            Word::Bare(w) if w == "pattern" => {
                let arg = |k: usize, prefix: &str| -> Result<u64, String> {
                    let w = ws.get(i + k).ok_or("short pattern")?;
                    bare(w)?
                        .strip_prefix(prefix)
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| format!("bad pattern argument {k}"))
                };
                let (seed, off, len) = (arg(1, "")?, arg(2, "@")?, arg(3, "+")?);
                toks.push(Tok::Pattern {
                    seed,
                    off: off as usize,
                    len: len as usize,
                });
                i += 3;
            }
            Word::Bare(w) if w.starts_with('{') && w.ends_with('}') => {
                toks.push(Tok::Var(w[1..w.len() - 1].to_string()));
            }
            Word::Bare(w) => toks.push(Tok::Bytes(unhex(w)?)),
        }
        i += 1;
    }
    Ok(toks)
}

/// The fixed length of a variable, where it has one.
fn var_len(name: &str) -> Option<usize> {
    match name {
        "server_nonce" | "client_nonce" | "proof" | "server_proof" => Some(32),
        _ if name.starts_with("ping_") => Some(8),
        _ => None,
    }
}

/// The side whose bytes first carry a variable: nonces and PING stamps are made by one side
/// and echoed or used by the other; proofs and ports are computed or set up by the replay.
fn var_owner(name: &str) -> Option<Live> {
    match name {
        "server_nonce" => Some(Live::Server),
        "client_nonce" => Some(Live::Client),
        _ if name.starts_with("ping_s") => Some(Live::Server),
        _ if name.starts_with("ping_c") => Some(Live::Client),
        _ => None,
    }
}

/// The length of a template whose variables all have fixed lengths (None with a port).
fn fixed_len(toks: &[Tok]) -> Option<usize> {
    toks.iter()
        .map(|t| match t {
            Tok::Bytes(b) => Some(b.len()),
            Tok::Var(v) => var_len(v),
            Tok::Pattern { len, .. } => Some(*len),
        })
        .sum()
}

fn parse_wire(rest: &str) -> Result<Wire, String> {
    let (head, body) = match rest.split_once(" | ") {
        Some((h, b)) => (h, Some(b)),
        None => (rest, None),
    };
    let hw = words(head)?;
    let name = bare(hw.first().ok_or("empty line")?)?;
    let payload = match body {
        Some(b) => template(&words(b)?)?,
        None => Vec::new(),
    };
    Ok(match name {
        "PREAMBLE" => Wire::Preamble(payload),
        "RAW" => Wire::Raw(payload),
        "EOF" | "RST" => Wire::End { rst: name == "RST" },
        _ => {
            let mut header = Vec::new();
            for w in &hw[1..] {
                header.extend(unhex(bare(w)?)?);
            }
            if header.len() != 8 && header.len() != 12 {
                return Err(format!("a frame header of {} bytes", header.len()));
            }
            let kind = header[0];
            if kind_name(kind) != name {
                return Err(format!("{name} with type byte 0x{kind:02x}"));
            }
            // Lengths must agree with the payload as recorded (ports excepted: this run's
            // may have another number of digits; the replay recomputes the field).
            if let Some(n) = fixed_len(&payload) {
                let field = if header.len() == 12 {
                    if kind != DATA || header[1] != FLAG_LONG || header[2..4] != [0, 0] {
                        return Err("a 12-byte header that is not a long DATA header".into());
                    }
                    u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize
                } else {
                    usize::from(u16::from_be_bytes([header[2], header[3]]))
                };
                if field != n {
                    return Err(format!("length field {field} for a payload of {n} bytes"));
                }
            }
            Wire::Frame {
                kind,
                header,
                payload,
            }
        }
    })
}

fn parse_actor(name: &str, rest: &str) -> Result<Step, String> {
    let kind = if name.starts_with("visitor") {
        ActorKind::Visitor
    } else {
        ActorKind::Target
    };
    let ws = words(rest)?;
    let verb = bare(ws.first().ok_or("no action")?)?;
    let args = &ws[1..];
    let op = match verb {
        "connect" => Op::Connect(
            bare(args.first().ok_or("connect to which mapping?")?)?
                .parse()
                .map_err(|_| "bad mapping number")?,
        ),
        "accept" => Op::Accept,
        "send" => Op::Send(template(args)?),
        "recv" => Op::Recv(template(args)?),
        "eof" => Op::Eof,
        "sees-reset" => Op::SeesReset,
        "shutdown" => Op::Shutdown,
        "reset" => Op::Reset,
        _ => return Err(format!("unknown action {verb:?}")),
    };
    Ok(Step::Actor {
        kind,
        name: name.to_string(),
        op,
    })
}

fn load(name: &str) -> Fixture {
    let path = fixture_dir().join(format!("{name}.wire"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_fixture(name, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_fixture(name: &str, text: &str) -> Result<Fixture, String> {
    let mut fx = Fixture {
        name: name.to_string(),
        sides: Vec::new(),
        tag: "default".into(),
        server_token: None,
        client_token: None,
        heartbeat: None,
        batched: false,
        maps: Vec::new(),
        recorded: Vec::new(),
        lines: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
        let at = |e: String| format!("line {no}: {e}\n  {line}");
        if let Some(key) = first.strip_prefix('@') {
            let value = rest.trim().to_string();
            match key {
                "sides" => {
                    fx.sides = match value.as_str() {
                        "both" => vec![Live::Client, Live::Server],
                        "server" => vec![Live::Server],
                        "client" => vec![Live::Client],
                        _ => return Err(at(format!("@sides {value:?}"))),
                    }
                }
                "tag" => fx.tag = value,
                "server-token" => fx.server_token = Some(value),
                "client-token" => fx.client_token = Some(value),
                "heartbeat" => fx.heartbeat = Some(value),
                "credit" if value == "batched" => fx.batched = true,
                "recorded" => {
                    let (k, v) = value
                        .split_once(' ')
                        .ok_or_else(|| at("@recorded NAME HEX".into()))?;
                    fx.recorded.push((k.to_string(), unhex(v).map_err(at)?));
                }
                "map" => {
                    let ws = words(rest).map_err(at)?;
                    let index: usize = ws
                        .first()
                        .and_then(|w| bare(w).ok())
                        .and_then(|w| w.parse().ok())
                        .ok_or_else(|| at("@map needs a number".into()))?;
                    if index != fx.maps.len() + 1 {
                        return Err(at(format!("@map {index} out of order")));
                    }
                    let target = match ws.get(1) {
                        Some(Word::Quoted(t)) => t.clone(),
                        _ => return Err(at("@map needs a quoted target".into())),
                    };
                    let refused = matches!(ws.get(2), Some(Word::Bare(w)) if w == "refused");
                    fx.maps.push(MapSpec { target, refused });
                }
                _ => return Err(at(format!("unknown directive @{key}"))),
            }
            continue;
        }
        let step = match first {
            "s>c" => Step::Wire {
                dir: Dir::S2C,
                what: parse_wire(rest).map_err(at)?,
            },
            "c>s" => Step::Wire {
                dir: Dir::C2S,
                what: parse_wire(rest).map_err(at)?,
            },
            "server" if rest == "SIGTERM" => Step::Sigterm(Live::Server),
            "client" if rest == "SIGTERM" => Step::Sigterm(Live::Client),
            "client" if rest == "tunnel-up" => Step::ClientUp,
            a if a.starts_with("visitor") || a.starts_with("target") => {
                parse_actor(a, rest).map_err(at)?
            }
            _ => return Err(at("unknown line".into())),
        };
        fx.lines.push(Line {
            no,
            text: line.to_string(),
            step,
        });
    }
    if fx.sides.is_empty() {
        return Err("no @sides".into());
    }
    // Both ends close the tunnel in every recording: the replay then has seen everything
    // the binary sent.
    for dir in [Dir::S2C, Dir::C2S] {
        let ends = fx
            .lines
            .iter()
            .any(|l| matches!(&l.step, Step::Wire { dir: d, what: Wire::End { .. } } if *d == dir));
        if !ends {
            return Err(format!(
                "no {dir:?} EOF: the recording must end with the tunnel"
            ));
        }
    }
    Ok(fx)
}

// ---------------------------------------------------------------------------------------
// Variables and patterns
// ---------------------------------------------------------------------------------------

struct Vars {
    /// The side the binary under test plays.
    live: Live,
    vals: HashMap<String, Vec<u8>>,
    tag: String,
    server_token: Option<String>,
    client_token: Option<String>,
    fresh: u64,
}

impl Vars {
    fn nonce(&self, name: &str) -> Result<[u8; 32], String> {
        let v = self
            .vals
            .get(name)
            .ok_or_else(|| format!("{{{name}}} is not known yet"))?;
        v.as_slice()
            .try_into()
            .map_err(|_| format!("{{{name}}} is not 32 bytes"))
    }

    /// Proofs, computed from the tokens and the nonces of this run.
    fn computed(&self, name: &str) -> Option<Result<Vec<u8>, String>> {
        let token = |t: &Option<String>, whose: &str| {
            t.clone()
                .ok_or_else(|| format!("the recording has a {name} but no {whose} token"))
        };
        match name {
            "proof" => Some((|| {
                let t = token(&self.client_token, "client")?;
                let n = self.nonce("server_nonce")?;
                Ok(proof(t.as_bytes(), None, &n, &self.tag).to_vec())
            })()),
            "server_proof" => Some((|| {
                let t = token(&self.server_token, "server")?;
                let c = self.nonce("client_nonce")?;
                let s = self.nonce("server_nonce")?;
                Ok(server_proof(t.as_bytes(), None, &c, &s, &self.tag).to_vec())
            })()),
            _ => None,
        }
    }

    /// The value to send for `name`: computed, known, or fresh (our nonces and stamps).
    fn produce(&mut self, name: &str) -> Result<Vec<u8>, String> {
        if let Some(v) = self.computed(name) {
            return v;
        }
        if let Some(v) = self.vals.get(name) {
            return Ok(v.clone());
        }
        let n = var_len(name).ok_or_else(|| format!("{{{name}}} has no value"))?;
        if var_owner(name) == Some(self.live) {
            return Err(format!(
                "{{{name}}} comes from the {}, which has not sent it yet",
                self.live.name()
            ));
        }
        self.fresh += 1;
        let v = pattern(0x7763_0000 + self.fresh, n);
        self.vals.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// The length `name` takes in a received payload.
    fn len_of(&self, name: &str) -> Result<usize, String> {
        match self.vals.get(name) {
            Some(v) => Ok(v.len()),
            None => var_len(name).ok_or_else(|| format!("{{{name}}} has no value")),
        }
    }

    /// Check a received value: against the computed or known one, or learn it.
    fn check(&mut self, name: &str, got: &[u8]) -> Result<(), String> {
        if let Some(want) = self.computed(name) {
            let want = want?;
            return if want == got {
                Ok(())
            } else {
                Err(format!(
                    "{{{name}}} is {}, but the tokens and nonces give {}",
                    hex(got),
                    hex(&want)
                ))
            };
        }
        match self.vals.get(name) {
            Some(want) if want.as_slice() == got => Ok(()),
            Some(want) => Err(format!(
                "{{{name}}} is {}, expected {}",
                hex_short(got),
                hex_short(want)
            )),
            None => {
                if var_owner(name) != Some(self.live) {
                    return Err(format!(
                        "{{{name}}} is {}: an echo of a value that was never sent",
                        hex_short(got)
                    ));
                }
                if name.ends_with("_nonce") && got.iter().all(|&b| b == got[0]) {
                    return Err(format!("{{{name}}} {} is not random", hex(got)));
                }
                self.vals.insert(name.to_string(), got.to_vec());
                Ok(())
            }
        }
    }
}

/// Pattern streams, generated once per seed.
#[derive(Default)]
struct Patterns(HashMap<u64, Vec<u8>>);

impl Patterns {
    fn slice(&mut self, seed: u64, off: usize, len: usize) -> &[u8] {
        let v = self.0.entry(seed).or_default();
        if v.len() < off + len {
            *v = pattern(seed, (off + len).max(2 * v.len()));
        }
        &v[off..off + len]
    }
}

// ---------------------------------------------------------------------------------------
// Visitors and targets
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ActorEnd {
    Eof,
    Reset,
}

#[derive(Default)]
struct ActorState {
    rx: Vec<u8>,
    end: Option<ActorEnd>,
    error: Option<String>,
}

enum Cmd {
    Send(Vec<u8>),
    Shutdown,
    Reset,
}

/// A visitor or target connection, served by a thread that reads everything that arrives
/// and writes what it is told, in order, without ever blocking the replay.
struct Actor {
    name: String,
    shared: Arc<(Mutex<ActorState>, Condvar)>,
    cmds: Sender<Cmd>,
    consumed: usize,
}

/// Close with a reset (SO_LINGER 0), as a crashed or aborting program does.
fn abort(sock: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor we own, with a pointer to a live value of the
    // size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(sock);
}

fn run_actor(mut sock: TcpStream, shared: Arc<(Mutex<ActorState>, Condvar)>, cmds: Receiver<Cmd>) {
    let (m, cv) = &*shared;
    let note = |f: &dyn Fn(&mut ActorState)| {
        if let Ok(mut st) = m.lock() {
            f(&mut st);
        }
        cv.notify_all();
    };
    let mut queue = VecDeque::new();
    let mut out: Option<(Vec<u8>, usize)> = None;
    let mut reading = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            match cmds.try_recv() {
                Ok(c) => queue.push_back(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let mut busy = false;
        loop {
            if out.is_none() {
                match queue.pop_front() {
                    Some(Cmd::Send(b)) => out = Some((b, 0)),
                    Some(Cmd::Shutdown) => {
                        if let Err(e) = sock.shutdown(Shutdown::Write) {
                            note(&|st| st.error = Some(format!("shutdown: {e}")));
                        }
                        busy = true;
                        continue;
                    }
                    Some(Cmd::Reset) => {
                        abort(sock);
                        // Nothing more to do; wait for the replay to finish.
                        while cmds.recv().is_ok() {}
                        return;
                    }
                    None => break,
                }
            }
            let Some((b, at)) = out.as_mut() else { break };
            match sock.write(&b[*at..]) {
                Ok(n) => {
                    *at += n;
                    busy = true;
                    if *at == b.len() {
                        out = None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    note(&|st| st.error = Some(format!("write: {e}")));
                    out = None;
                    queue.clear();
                    break;
                }
            }
        }
        if reading {
            match sock.read(&mut buf) {
                Ok(0) => {
                    reading = false;
                    note(&|st| st.end = Some(ActorEnd::Eof));
                }
                Ok(n) => {
                    busy = true;
                    note(&|st| st.rx.extend_from_slice(&buf[..n]));
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    reading = false;
                    note(&|st| st.end = Some(ActorEnd::Reset));
                }
                Err(e) => {
                    reading = false;
                    note(&|st| st.error = Some(format!("read: {e}")));
                }
            }
        }
        if !busy {
            let mut events = 0;
            if reading {
                events |= libc::POLLIN;
            }
            if out.is_some() {
                events |= libc::POLLOUT;
            }
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: poll(2) on one valid pollfd for at most 5 ms.
            unsafe {
                libc::poll(&mut pfd, 1, 5);
            }
        }
    }
}

impl Actor {
    fn new(name: &str, sock: TcpStream) -> Actor {
        sock.set_nonblocking(true).expect("set_nonblocking");
        let _ = sock.set_nodelay(true);
        let shared = Arc::new((Mutex::new(ActorState::default()), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let s2 = Arc::clone(&shared);
        thread::spawn(move || run_actor(sock, s2, rx));
        Actor {
            name: name.to_string(),
            shared,
            cmds: tx,
            consumed: 0,
        }
    }

    fn tell(&self, c: Cmd) -> Result<(), String> {
        self.cmds
            .send(c)
            .map_err(|_| format!("{} has stopped", self.name))
    }

    /// Wait (bounded) until `done` holds for the state; returns the guard either way.
    fn wait(&self, done: impl Fn(&ActorState) -> bool) -> MutexGuard<'_, ActorState> {
        let deadline = Instant::now() + WAIT;
        let (m, cv) = &*self.shared;
        let mut st = m.lock().expect("actor state");
        while !done(&st) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = cv.wait_timeout(st, deadline - now).expect("actor state").0;
        }
        st
    }

    fn describe(&self, st: &ActorState) -> String {
        format!(
            "{} bytes unread, end {:?}, error {:?}",
            st.rx.len() - self.consumed,
            st.end,
            st.error
        )
    }

    fn recv(&mut self, want: &[u8]) -> Result<(), String> {
        let c = self.consumed;
        let st = self.wait(|st| {
            let have = &st.rx[c..];
            let n = have.len().min(want.len());
            have[..n] != want[..n] || n == want.len() || st.end.is_some() || st.error.is_some()
        });
        let have = &st.rx[c..];
        let n = have.len().min(want.len());
        if let Some(at) = (0..n).find(|&i| have[i] != want[i]) {
            return Err(format!(
                "{} received {:02x} at byte {at} of the line, the recording has {:02x}",
                self.name, have[at], want[at]
            ));
        }
        if n < want.len() {
            return Err(format!(
                "{} received {n} of the {} bytes recorded ({})",
                self.name,
                want.len(),
                self.describe(&st)
            ));
        }
        drop(st);
        self.consumed += want.len();
        Ok(())
    }

    fn end(&self, want: ActorEnd) -> Result<(), String> {
        let c = self.consumed;
        let st = self.wait(|st| st.rx.len() > c || st.end.is_some() || st.error.is_some());
        if st.rx.len() > c || st.end != Some(want) {
            return Err(format!(
                "{} expected {want:?}: {}",
                self.name,
                self.describe(&st)
            ));
        }
        Ok(())
    }

    /// Nothing arrived beyond what the recording has, and nothing failed.
    fn settled(&self) -> Result<(), String> {
        let st = self.shared.0.lock().expect("actor state");
        if st.rx.len() > self.consumed || st.error.is_some() {
            return Err(format!(
                "{} at the end: {} (bytes {})",
                self.name,
                self.describe(&st),
                hex_short(&st.rx[self.consumed..])
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// What the binary sends
// ---------------------------------------------------------------------------------------

struct Received {
    header: Vec<u8>,
    kind: u8,
    id: u32,
    payload: Vec<u8>,
}

impl Received {
    fn describe(&self) -> String {
        format!(
            "{} {} | {}",
            kind_name(self.kind),
            hex(&self.header),
            hex_short(&self.payload)
        )
    }
}

enum Item {
    Preamble(Vec<u8>),
    Frame(Received),
    End { rst: bool, why: String },
}

impl Item {
    fn describe(&self) -> String {
        match self {
            Item::Preamble(p) => format!("preamble {}", hex(p)),
            Item::Frame(f) => f.describe(),
            Item::End { why, .. } => format!("the end of the tunnel ({why})"),
        }
    }
}

/// Frames of one queue keep their order; across queues the order is free.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Chan {
    Tunnel,
    Ping,
    Pong,
    Stream(u32),
    Credit(u32),
}

fn chan_of(kind: u8, id: u32) -> Chan {
    match kind {
        PING => Chan::Ping,
        PONG => Chan::Pong,
        CREDIT => Chan::Credit(id),
        0x10..=0x16 => Chan::Stream(id),
        _ => Chan::Tunnel,
    }
}

enum Chunk {
    Bytes(Vec<u8>),
    End { rst: bool, why: String },
}

fn spawn_reader(mut sock: TcpStream, stop: Arc<AtomicBool>) -> Receiver<Chunk> {
    let (tx, rx) = mpsc::channel();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set_read_timeout");
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::SeqCst) {
            let chunk = match sock.read(&mut buf) {
                Ok(0) => Chunk::End {
                    rst: false,
                    why: "EOF".into(),
                },
                Ok(n) => Chunk::Bytes(buf[..n].to_vec()),
                Err(e) if is_transient(&e) => continue,
                Err(e) => Chunk::End {
                    rst: e.kind() == ErrorKind::ConnectionReset,
                    why: e.to_string(),
                },
            };
            let last = matches!(chunk, Chunk::End { .. });
            if tx.send(chunk).is_err() || last {
                return;
            }
        }
    });
    rx
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---------------------------------------------------------------------------------------
// The replay
// ---------------------------------------------------------------------------------------

struct Replay<'f> {
    fx: &'f Fixture,
    live: Live,
    sock: TcpStream,
    rx: Receiver<Chunk>,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
    start: usize,
    want_preamble: bool,
    closed: Option<String>,
    queues: HashMap<Chan, VecDeque<Item>>,
    /// Bytes of the first queued DATA frame of a stream already matched.
    data_off: HashMap<u32, usize>,
    vars: Vars,
    patterns: Patterns,
    /// The receive window we announced, and the binary's.
    our_window: Option<u32>,
    peer_window: Option<u32>,
    /// The binary's DATA bytes per stream that we have not returned as credit.
    in_flight: HashMap<u32, u64>,
    /// What we may still send per stream, and what we sent.
    credit: HashMap<u32, u64>,
    sent: HashMap<u32, u64>,
    /// `@credit batched`: the amounts the binary granted per stream.
    granted: HashMap<u32, Vec<u32>>,
    /// The type of the binary's last frame (the capability PING must follow HELLO).
    last_kind: Option<u8>,
    actors: HashMap<String, Actor>,
    /// The client's targets, by mapping (None: a refused port).
    targets: Vec<Option<TcpListener>>,
    public: Vec<u16>,
    _refused: Vec<RefusedPort>,
    proc_: Proc,
    _dir: TempDir,
}

impl Drop for Replay<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn resolve(vars: &mut Vars, patterns: &mut Patterns, toks: &[Tok]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for t in toks {
        match t {
            Tok::Bytes(b) => out.extend_from_slice(b),
            Tok::Var(v) => out.extend(vars.produce(v)?),
            Tok::Pattern { seed, off, len } => {
                out.extend_from_slice(patterns.slice(*seed, *off, *len))
            }
        }
    }
    Ok(out)
}

/// Set up the binary as `live` for the recording, with the test as its peer.
fn start<'f>(fx: &'f Fixture, live: Live) -> Replay<'f> {
    let mut vars = Vars {
        live,
        vals: HashMap::new(),
        tag: fx.tag.clone(),
        server_token: fx.server_token.clone(),
        client_token: fx.client_token.clone(),
        fresh: 0,
    };
    let mut patterns = Patterns::default();
    let dir = TempDir::new(&format!("wire-{}-{}", fx.name, live.name()));
    let tag = (fx.tag != "default").then_some(fx.tag.as_str());
    let mut targets = Vec::new();
    let mut public = Vec::new();
    let mut refused = Vec::new();
    let (proc_, sock) = match live {
        Live::Client => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tunnel port");
            for (i, m) in fx.maps.iter().enumerate() {
                let (t, port) = if m.refused {
                    let r = RefusedPort::new();
                    let port = r.addr().port();
                    refused.push(r);
                    (None, port)
                } else {
                    let l = TcpListener::bind("127.0.0.1:0").expect("bind a target");
                    l.set_nonblocking(true).expect("set_nonblocking");
                    let port = l.local_addr().expect("local_addr").port();
                    (Some(l), port)
                };
                vars.vals
                    .insert(format!("port{}", i + 1), port.to_string().into_bytes());
                targets.push(t);
            }
            let port = listener.local_addr().expect("local_addr").port();
            let opts = ClientOpts {
                tag,
                env_token: fx.client_token.as_deref(),
                // The recordings are of plain TCP; TLS adds only the binding (tests/tls.rs).
                tls_off: true,
                ..ClientOpts::default()
            };
            let p = spawn_client(port, &opts);
            listener.set_nonblocking(true).expect("set_nonblocking");
            let deadline = Instant::now() + WAIT;
            let sock = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if is_transient(&e) && Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("the client did not connect: {e}\n{}", p.tail(20)),
                }
            };
            // One tunnel per session: the client's reconnects are refused.
            drop(listener);
            sock.set_nonblocking(false).expect("set_nonblocking");
            (p, with_timeouts(sock))
        }
        Live::Server => {
            let mut setup = ServerSetup::new().tls_off();
            for (i, m) in fx.maps.iter().enumerate() {
                // The server never connects targets: any port that nobody serves.
                let r = RefusedPort::new();
                vars.vals.insert(
                    format!("port{}", i + 1),
                    r.addr().port().to_string().into_bytes(),
                );
                refused.push(r);
                let target = resolve(&mut vars, &mut patterns, &m.target).expect("map target");
                let target = String::from_utf8(target).expect("map target is UTF-8");
                public.push(setup.map(target, tag));
            }
            if let Some(t) = &fx.server_token {
                setup = setup.token(t);
            }
            if let Some(h) = &fx.heartbeat {
                setup.extra.push(format!("HEARTBEAT={h}"));
            }
            let p = setup.start(&dir);
            let addr = SocketAddr::from(([127, 0, 0, 1], setup.inner_port));
            let sock = connect_retry(addr, WAIT)
                .unwrap_or_else(|e| panic!("cannot connect to the server: {e}"));
            (p, sock)
        }
    };
    let _ = sock.set_nodelay(true);
    let stop = Arc::new(AtomicBool::new(false));
    let rx = spawn_reader(
        sock.try_clone().expect("clone the tunnel"),
        Arc::clone(&stop),
    );
    let want_preamble = fx.lines.iter().any(
        |l| matches!(&l.step, Step::Wire { dir, what: Wire::Preamble(_) } if *dir == live.sends()),
    );
    Replay {
        fx,
        live,
        sock,
        rx,
        stop,
        buf: Vec::new(),
        start: 0,
        want_preamble,
        closed: None,
        queues: HashMap::new(),
        data_off: HashMap::new(),
        vars,
        patterns,
        our_window: None,
        peer_window: None,
        in_flight: HashMap::new(),
        credit: HashMap::new(),
        sent: HashMap::new(),
        granted: HashMap::new(),
        last_kind: None,
        actors: HashMap::new(),
        targets,
        public,
        _refused: refused,
        proc_,
        _dir: dir,
    }
}

impl Replay<'_> {
    fn who(&self) -> &'static str {
        self.live.name()
    }

    fn queue(&mut self, c: Chan) -> &mut VecDeque<Item> {
        self.queues.entry(c).or_default()
    }

    // -- receiving ------------------------------------------------------------------------

    /// Take in one chunk of the binary's bytes (bounded by `deadline`).
    fn pull(&mut self, deadline: Instant, line: &Line) -> Result<(), String> {
        if let Some(why) = &self.closed {
            return Err(format!(
                "the {} closed the tunnel ({why}) before sending what the recording has",
                self.who()
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(Chunk::Bytes(b)) => {
                self.buf.extend_from_slice(&b);
                self.parse()
            }
            Ok(Chunk::End { rst, why }) => {
                if self.start < self.buf.len() {
                    return Err(format!(
                        "the {} closed the tunnel ({why}) in the middle of a frame: {}",
                        self.who(),
                        hex_short(&self.buf[self.start..])
                    ));
                }
                self.closed = Some(why.clone());
                self.queue(Chan::Tunnel).push_back(Item::End { rst, why });
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "nothing more from the {} within {WAIT:?} (waiting for line {})",
                self.who(),
                line.no
            )),
            Err(RecvTimeoutError::Disconnected) => Err("the tunnel reader stopped".into()),
        }
    }

    /// Split what arrived into the preamble and frames; check each DATA and CREDIT on
    /// arrival.
    fn parse(&mut self) -> Result<(), String> {
        loop {
            let b = &self.buf[self.start..];
            if self.want_preamble {
                if b.len() < 8 {
                    break;
                }
                let p = b[..8].to_vec();
                self.start += 8;
                self.want_preamble = false;
                self.queue(Chan::Tunnel).push_back(Item::Preamble(p));
                continue;
            }
            if b.len() < 8 {
                break;
            }
            let (kind, flags) = (b[0], b[1]);
            let short = usize::from(u16::from_be_bytes([b[2], b[3]]));
            let id = u32_at(b, 4);
            let (hlen, len) = if kind == DATA && flags == FLAG_LONG {
                if b.len() < 12 {
                    break;
                }
                let n = u32_at(b, 8) as usize;
                if short != 0 || n == 0 || n > MAX_LONG {
                    return Err(format!(
                        "the {} sent a long DATA header with a bad length: {}",
                        self.who(),
                        hex(&b[..12])
                    ));
                }
                (12, n)
            } else {
                (8, short)
            };
            if b.len() < hlen + len {
                break;
            }
            let f = Received {
                header: b[..hlen].to_vec(),
                kind,
                id,
                payload: b[hlen..hlen + len].to_vec(),
            };
            self.start += hlen + len;
            self.arrived(f)?;
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }

    fn arrived(&mut self, f: Received) -> Result<(), String> {
        let who = self.who();
        let after = self.last_kind.replace(f.kind);
        if self.live == Live::Client && f.kind == PING && f.payload == CAPS_PING {
            let want = [PING, 0, 0, 8, 0, 0, 0, 0];
            if after != Some(HELLO) || f.header != want {
                return Err(format!(
                    "the client's capability PING must follow its HELLO, with header {}: {}",
                    hex(&want),
                    f.describe()
                ));
            }
            return Ok(());
        }
        match f.kind {
            DATA => {
                let flags = f.header[1];
                if flags != 0 && flags != FLAG_LONG {
                    return Err(format!("the {who} sent DATA with flags 0x{flags:02x}"));
                }
                if f.payload.is_empty() || f.id == 0 {
                    return Err(format!("the {who} sent a malformed DATA: {}", f.describe()));
                }
                let window = self
                    .our_window
                    .ok_or_else(|| format!("the {who} sent DATA before the handshake"))?;
                let n = self.in_flight.entry(f.id).or_default();
                *n += f.payload.len() as u64;
                if *n > u64::from(window) {
                    return Err(format!(
                        "the {who} has {n} bytes in flight on stream {}, beyond the window \
                         of {window} we announced",
                        f.id
                    ));
                }
                self.queue(Chan::Stream(f.id)).push_back(Item::Frame(f));
            }
            CREDIT if f.payload.len() == 4 && f.header[1] == 0 && f.id != 0 => {
                let amount = u32_at(&f.payload, 0);
                let window = self
                    .peer_window
                    .ok_or_else(|| format!("the {who} sent CREDIT before the handshake"))?;
                let c = self.credit.entry(f.id).or_insert(u64::from(window));
                *c += u64::from(amount);
                if *c > u64::from(window) {
                    return Err(format!(
                        "the {who} granted credit beyond its window of {window} on stream {}",
                        f.id
                    ));
                }
                if self.fx.batched {
                    self.granted.entry(f.id).or_default().push(amount);
                } else {
                    self.queue(Chan::Credit(f.id)).push_back(Item::Frame(f));
                }
            }
            _ => {
                let c = chan_of(f.kind, f.id);
                self.queue(c).push_back(Item::Frame(f));
            }
        }
        Ok(())
    }

    fn wait_front(&mut self, c: Chan, line: &Line) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while self.queue(c).is_empty() {
            self.pull(deadline, line)?;
        }
        Ok(())
    }

    /// Compare a received payload with a template, learning or checking its variables.
    fn match_payload(&mut self, toks: &[Tok], got: &[u8]) -> Result<(), String> {
        let mut at = 0;
        for t in toks {
            let n = match t {
                Tok::Var(v) => self.vars.len_of(v)?,
                Tok::Bytes(b) => b.len(),
                Tok::Pattern { len, .. } => *len,
            };
            let part = got.get(at..at + n).ok_or_else(|| {
                format!("the payload is {} bytes, the recording has more", got.len())
            })?;
            match t {
                Tok::Var(v) => self.vars.check(v, part)?,
                Tok::Bytes(b) if b.as_slice() != part => {
                    return Err(format!(
                        "payload bytes {at}..{}: {}, the recording has {}",
                        at + n,
                        hex_short(part),
                        hex_short(b)
                    ));
                }
                Tok::Pattern { seed, off, len } => {
                    if self.patterns.slice(*seed, *off, *len) != part {
                        return Err(format!("payload bytes {at}..{} differ", at + n));
                    }
                }
                Tok::Bytes(_) => {}
            }
            at += n;
        }
        if at != got.len() {
            return Err(format!(
                "the payload has {} bytes beyond the recording's: {}",
                got.len() - at,
                hex_short(&got[at..])
            ));
        }
        Ok(())
    }

    fn template_len(&self, toks: &[Tok]) -> Result<usize, String> {
        toks.iter()
            .map(|t| match t {
                Tok::Var(v) => self.vars.len_of(v),
                Tok::Bytes(b) => Ok(b.len()),
                Tok::Pattern { len, .. } => Ok(*len),
            })
            .sum()
    }

    fn expect(&mut self, line: &Line, what: &Wire) -> Result<(), String> {
        let who = self.who();
        match what {
            Wire::Preamble(toks) => {
                self.wait_front(Chan::Tunnel, line)?;
                match self.queue(Chan::Tunnel).pop_front() {
                    Some(Item::Preamble(p)) => self.match_payload(toks, &p),
                    Some(other) => Err(format!("the {who} sent {}", other.describe())),
                    None => unreachable!("waited for an item"),
                }
            }
            Wire::Raw(_) => Err("raw bytes from the binary cannot be replayed".into()),
            Wire::Frame {
                kind: DATA,
                header,
                payload,
            } => {
                let want = resolve(&mut self.vars, &mut self.patterns, payload)?;
                self.expect_data(line, u32_at(header, 4), header, &want)
            }
            Wire::Frame { kind: CREDIT, .. } if self.fx.batched => Ok(()),
            Wire::Frame {
                kind,
                header,
                payload,
            } => {
                let id = u32_at(header, 4);
                let c = chan_of(*kind, id);
                self.wait_front(c, line)?;
                let f = match self.queue(c).pop_front() {
                    Some(Item::Frame(f)) => f,
                    Some(other) => return Err(format!("the {who} sent {}", other.describe())),
                    None => unreachable!("waited for an item"),
                };
                let mut want = header.clone();
                let len = self.template_len(payload)?;
                want[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                if f.header != want {
                    return Err(format!(
                        "the {who} sent {}: header {}, the recording has {}",
                        f.describe(),
                        hex(&f.header),
                        hex(&want)
                    ));
                }
                self.match_payload(payload, &f.payload)
                    .map_err(|e| format!("the {who} sent {}: {e}", f.describe()))?;
                if (*kind == HELLO || *kind == ACCEPT) && f.payload.len() >= 4 {
                    self.peer_window = Some(u32_at(&f.payload, 0));
                }
                Ok(())
            }
            Wire::End { rst } => {
                self.wait_front(Chan::Tunnel, line)?;
                match self.queue(Chan::Tunnel).pop_front() {
                    Some(Item::End { rst: r, .. }) if r == *rst => self.check_drained(),
                    Some(Item::End { why, .. }) => Err(format!(
                        "the {who} ended the tunnel with {why}, the recording with {}",
                        if *rst { "a reset" } else { "EOF" }
                    )),
                    Some(other) => Err(format!("the {who} sent {}", other.describe())),
                    None => unreachable!("waited for an item"),
                }
            }
        }
    }

    /// Match `want` against the stream's DATA, however it is cut into frames.
    fn expect_data(
        &mut self,
        line: &Line,
        id: u32,
        header: &[u8],
        want: &[u8],
    ) -> Result<(), String> {
        let who = self.who();
        let aligned_check = !self.fx.batched;
        let mut pos = 0;
        while pos < want.len() {
            self.wait_front(Chan::Stream(id), line)?;
            let off = self.data_off.get(&id).copied().unwrap_or(0);
            let q = self.queues.entry(Chan::Stream(id)).or_default();
            let f = match q.front() {
                Some(Item::Frame(f)) if f.kind == DATA => f,
                Some(other) => {
                    return Err(format!(
                        "after {pos} of the {} bytes of this line the {who} sent {}",
                        want.len(),
                        other.describe()
                    ));
                }
                None => unreachable!("waited for an item"),
            };
            let take = (f.payload.len() - off).min(want.len() - pos);
            let got = &f.payload[off..off + take];
            if let Some(i) = (0..take).find(|&i| got[i] != want[pos + i]) {
                return Err(format!(
                    "DATA on stream {id}: byte {} of this line is {:02x}, the recording has \
                     {:02x}",
                    pos + i,
                    got[i],
                    want[pos + i]
                ));
            }
            // A frame cut where the recorded one was must carry the recorded header.
            if aligned_check
                && off == 0
                && pos == 0
                && f.payload.len() == want.len()
                && f.header != header
            {
                return Err(format!(
                    "the {who} sent DATA with header {}, the recording has {}",
                    hex(&f.header),
                    hex(header)
                ));
            }
            let done = off + take == f.payload.len();
            pos += take;
            if done {
                q.pop_front();
                self.data_off.remove(&id);
            } else {
                self.data_off.insert(id, off + take);
            }
        }
        Ok(())
    }

    /// Everything received has been matched (PINGs beyond the recorded ones excepted).
    fn check_drained(&mut self) -> Result<(), String> {
        let mut left = Vec::new();
        for (c, q) in &self.queues {
            for item in q {
                let spare_ping = matches!(item, Item::Frame(f)
                    if *c == Chan::Ping && f.header == [PING, 0, 0, 8, 0, 0, 0, 0]);
                if !spare_ping {
                    left.push(item.describe());
                }
            }
        }
        if let Some((id, off)) = self.data_off.iter().next() {
            left.push(format!(
                "the rest of a DATA frame on stream {id} after {off} bytes"
            ));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the {} sent what the recording does not have:\n  {}",
                self.who(),
                left.join("\n  ")
            ))
        }
    }

    // -- sending --------------------------------------------------------------------------

    fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.sock
            .write_all(b)
            .map_err(|e| format!("writing to the {}: {e}", self.who()))
    }

    fn send(&mut self, line: &Line, what: &Wire) -> Result<(), String> {
        match what {
            Wire::Preamble(toks) | Wire::Raw(toks) => {
                let b = resolve(&mut self.vars, &mut self.patterns, toks)?;
                self.write(&b)
            }
            Wire::Frame {
                kind: DATA,
                header,
                payload,
            } => {
                let data = resolve(&mut self.vars, &mut self.patterns, payload)?;
                self.send_data(line, u32_at(header, 4), header, &data)
            }
            Wire::Frame {
                kind,
                header,
                payload,
            } => {
                let p = resolve(&mut self.vars, &mut self.patterns, payload)?;
                let mut h = header.clone();
                h[2..4].copy_from_slice(&(p.len() as u16).to_be_bytes());
                let id = u32_at(header, 4);
                if *kind == CREDIT {
                    let amount = u64::from(u32_at(&p, 0));
                    let n = self.in_flight.entry(id).or_default();
                    if amount > *n {
                        return Err(format!(
                            "the recorded CREDIT of {amount} exceeds the {n} bytes in flight"
                        ));
                    }
                    *n -= amount;
                }
                if *kind == HELLO || *kind == ACCEPT {
                    self.our_window = Some(u32_at(&p, 0));
                }
                h.extend_from_slice(&p);
                self.write(&h)
            }
            Wire::End { rst: false } => {
                // Our half of the tunnel ends; the binary may have closed it already.
                let _ = self.sock.shutdown(Shutdown::Write);
                Ok(())
            }
            Wire::End { rst: true } => Err("resetting the tunnel is not replayed".into()),
        }
    }

    /// Send a recorded DATA frame, within the credit the binary granted: when it has
    /// granted less than the frame, the frame goes out in pieces, as credit arrives.
    fn send_data(
        &mut self,
        line: &Line,
        id: u32,
        header: &[u8],
        data: &[u8],
    ) -> Result<(), String> {
        let window = u64::from(
            self.peer_window
                .ok_or("DATA to send before the handshake gave a window")?,
        );
        let mut pos = 0;
        while pos < data.len() {
            let deadline = Instant::now() + WAIT;
            while *self.credit.entry(id).or_insert(window) == 0 {
                self.pull(deadline, line)?;
            }
            let avail = self.credit[&id];
            let n = ((data.len() - pos) as u64).min(avail) as usize;
            let mut frame = if n == data.len() {
                header.to_vec()
            } else if header.len() == 12 {
                let mut h = vec![DATA, FLAG_LONG, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&(n as u32).to_be_bytes());
                h
            } else {
                let mut h = vec![DATA, 0];
                h.extend_from_slice(&(n as u16).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h
            };
            frame.extend_from_slice(&data[pos..pos + n]);
            self.write(&frame)?;
            *self.credit.entry(id).or_default() -= n as u64;
            *self.sent.entry(id).or_default() += n as u64;
            pos += n;
        }
        Ok(())
    }

    // -- visitors and targets -------------------------------------------------------------

    fn actor(&mut self, name: &str) -> Result<&mut Actor, String> {
        self.actors
            .get_mut(name)
            .ok_or_else(|| format!("{name} is not connected"))
    }

    fn act(&mut self, name: &str, op: &Op) -> Result<(), String> {
        match op {
            Op::Connect(m) => {
                let port = *self
                    .public
                    .get(m - 1)
                    .ok_or_else(|| format!("no mapping {m}"))?;
                let s = connect_retry(SocketAddr::from(([127, 0, 0, 1], port)), WAIT)
                    .map_err(|e| format!("{name} cannot connect to port {port}: {e}"))?;
                self.actors.insert(name.to_string(), Actor::new(name, s));
                Ok(())
            }
            Op::Accept => {
                let i: usize = name
                    .strip_prefix("target")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("{name}: which target?"))?;
                let Some(Some(l)) = self.targets.get(i - 1) else {
                    return Err(format!("{name} does not listen"));
                };
                let deadline = Instant::now() + WAIT;
                let s = loop {
                    match l.accept() {
                        Ok((s, _)) => break s,
                        Err(e) if is_transient(&e) && Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Err(format!("the client did not connect {name}: {e}")),
                    }
                };
                s.set_nonblocking(false).expect("set_nonblocking");
                self.actors.insert(name.to_string(), Actor::new(name, s));
                Ok(())
            }
            Op::Send(toks) => {
                let b = resolve(&mut self.vars, &mut self.patterns, toks)?;
                self.actor(name)?.tell(Cmd::Send(b))
            }
            Op::Recv(toks) => {
                let b = resolve(&mut self.vars, &mut self.patterns, toks)?;
                self.actor(name)?.recv(&b)
            }
            Op::Eof => self.actor(name)?.end(ActorEnd::Eof),
            Op::SeesReset => self.actor(name)?.end(ActorEnd::Reset),
            Op::Shutdown => self.actor(name)?.tell(Cmd::Shutdown),
            Op::Reset => self.actor(name)?.tell(Cmd::Reset),
        }
    }

    // -- the whole session ----------------------------------------------------------------

    fn run(&mut self) -> Result<(), String> {
        let fx = self.fx;
        for line in &fx.lines {
            self.step(line)
                .map_err(|e| format!("line {}: {e}\n  recorded: {}", line.no, line.text))?;
        }
        self.finish()
    }

    fn step(&mut self, line: &Line) -> Result<(), String> {
        match &line.step {
            Step::Wire { dir, what } if *dir == self.live.sends() => self.expect(line, what),
            Step::Wire { what, .. } => self.send(line, what),
            Step::Actor { kind, name, op } => match (kind, self.live) {
                (ActorKind::Visitor, Live::Server) | (ActorKind::Target, Live::Client) => {
                    self.act(name, op)
                }
                // The other side's visitors or targets: their bytes are in our frames.
                _ => Ok(()),
            },
            Step::Sigterm(role) if *role == self.live => {
                self.proc_.signal(libc::SIGTERM);
                Ok(())
            }
            Step::Sigterm(_) => Ok(()),
            Step::ClientUp if self.live == Live::Client => {
                if self.proc_.try_wait_for_line("tunnel up", WAIT) {
                    Ok(())
                } else {
                    Err("the client never logged \"tunnel up\"".into())
                }
            }
            Step::ClientUp => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        self.check_drained()?;
        if self.fx.batched {
            let window = self.peer_window.ok_or("no window announced")?;
            let quarter = u64::from(window / 4);
            let mut ids: Vec<u32> = self
                .sent
                .keys()
                .chain(self.granted.keys())
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let sent = self.sent.get(&id).copied().unwrap_or(0);
                let amounts = self.granted.get(&id).cloned().unwrap_or_default();
                if let Some(a) = amounts
                    .iter()
                    .find(|&&a| u64::from(a) < quarter || a > window)
                {
                    return Err(format!(
                        "stream {id}: a CREDIT of {a}, outside {quarter} to {window} (one per \
                         quarter window delivered)"
                    ));
                }
                let total: u64 = amounts.iter().map(|&a| u64::from(a)).sum();
                if total > sent || sent - total >= quarter {
                    return Err(format!(
                        "stream {id}: {sent} bytes delivered, {total} returned as credit in \
                         {:?}: all but less than a quarter window must be",
                        amounts
                    ));
                }
            }
        }
        for a in self.actors.values() {
            a.settled()?;
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Some(l) = t
                && l.accept().is_ok()
            {
                return Err(format!("an unrecorded connection to target{}", i + 1));
            }
        }
        Ok(())
    }
}

/// The proofs that `tcp_forward::protocol::handshake` computes over the recorded nonces
/// are the recorded proofs: the replay's proofs are the recorded construction.
fn check_recorded_proofs(fx: &Fixture) {
    let mut vars = Vars {
        live: Live::Client,
        vals: HashMap::new(),
        tag: fx.tag.clone(),
        server_token: fx.server_token.clone(),
        client_token: fx.client_token.clone(),
        fresh: 0,
    };
    for (k, v) in &fx.recorded {
        if k.ends_with("_nonce") {
            vars.vals.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in &fx.recorded {
        if !k.ends_with("_nonce") {
            vars.check(k, v).unwrap_or_else(|e| {
                panic!(
                    "{}: the recorded {k} is not what the handshake code computes: {e}",
                    fx.name
                )
            });
        }
    }
}

/// Replay recording `name` to the binary running as `live`.
fn replay(name: &str, live: Live) {
    let fx = load(name);
    check_recorded_proofs(&fx);
    assert!(
        fx.sides.contains(&live),
        "{name} records the {} side from a stand-in, not from tcp-forward",
        live.name()
    );
    let mut r = start(&fx, live);
    if let Err(e) = r.run() {
        panic!(
            "{name}: the {} under test departs from the recording: {e}",
            live.name()
        );
    }
}

macro_rules! replays {
    ($module:ident, $list:ident, $live:expr; $($name:ident),* $(,)?) => {
        /// The recordings this module replays.
        const $list: &[&str] = &[$(stringify!($name)),*];

        mod $module {
            $(
                #[test]
                fn $name() {
                    super::replay(stringify!($name), $live);
                }
            )*
        }
    };
}

// The binary as the client; the test plays the recorded server.
replays!(client_under_test, CLIENT_REPLAYS, super::Live::Client;
    handshake_token, echo, target_fin_first, early_data, bulk, paced_credit, visitor_reset,
    target_reset, open_refused, two_streams, heartbeat, client_goaway, wrong_token,
    missing_token, new_version_server, unproven_server,
);

// The binary as the server; the test plays the recorded client.
replays!(server_under_test, SERVER_REPLAYS, super::Live::Server;
    handshake_token, echo, target_fin_first, early_data, bulk, paced_credit, visitor_reset,
    target_reset, open_refused, two_streams, heartbeat, client_goaway, wrong_token,
    missing_token, old_version_client, not_a_peer,
);

/// Every recording is replayed in each direction it records, and the fixtures parse.
#[test]
fn every_recording_is_replayed() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("read tests/fixtures/wire_v2")
        .filter_map(|e| {
            let p = e.expect("directory entry").path();
            if p.extension()? != "wire" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no recordings");
    for name in &names {
        let fx = load(name);
        for (live, list) in [
            (Live::Client, CLIENT_REPLAYS),
            (Live::Server, SERVER_REPLAYS),
        ] {
            assert_eq!(
                fx.sides.contains(&live),
                list.contains(&name.as_str()),
                "{name}: @sides and the {} replays disagree",
                live.name()
            );
        }
    }
    for name in CLIENT_REPLAYS.iter().chain(SERVER_REPLAYS) {
        assert!(names.iter().any(|n| n == name), "no recording {name}.wire");
    }
}
