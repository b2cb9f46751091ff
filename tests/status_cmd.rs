//! `tcp-forward status` against a stand-in admin API: a thread on 127.0.0.1 answering the
//! API's fixed JSON, and 401 when the Authorization header is not the expected token.
//!
//! Every wait is bounded: the stand-in stops accepting when dropped (or after 30 s), its
//! sockets carry timeouts, and the binary is killed if it runs for more than 20 s.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_tcp-forward");
const TOKEN: &str = "s3cret-admin-token";

const SERVER_STATUS: &str =
    r#"{"role":"server","version":"0.1.0","uptime_secs":12,"clients":1,"mappings":2,"streams":3}"#;
const CLIENTS: &str = r#"{"clients": [{"id": 7, "addr": "203.0.113.9:51514", "tag": "default", "connected_at": "2026-12-01T20:00:00Z", "streams": 2, "bytes_in": 1258291, "bytes_out": 0, "rate_in": 12595, "rate_out": 0, "avg_in": 0, "avg_out": 0}]}"#;
const MAPPINGS: &str = r#"{"mappings": [{"port": 1234, "target": "192.168.10.5:22", "tag": "default", "streams": 3, "bytes_in": 0, "bytes_out": 0}, {"port": 8022, "target": "192.168.10.6:22", "tag": "lab", "streams": 0, "bytes_in": 0, "bytes_out": 0}]}"#;
const STREAMS: &str = r#"{"streams": [{"id": 3, "client": 7, "port": 1234, "visitor": "198.51.100.4:40000", "target": "192.168.10.5:22", "opened_at": "2026-12-01T20:01:00Z", "bytes_in": 0, "bytes_out": 0}]}"#;
const CLIENT_STATUS: &str = r#"{"role":"client","version":"0.1.0","state":"up","server":"203.0.113.1:7000","tag":"default","connected_at":"2026-12-01T20:00:00Z","streams":2,"bytes_in":0,"bytes_out":0,"reconnects":1}"#;

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
    /// Answers /api/status with a 500 and an error message.
    Failing,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// The stand-in admin API.
struct FakeAdmin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAdmin {
    fn start(role: Role) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((conn, _)) => answer(conn, role, &seen),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        FakeAdmin {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let result = t.join();
            if !thread::panicking() {
                result.expect("stand-in admin API thread");
            }
        }
    }
}

/// Read one request head and answer it.
fn answer(mut conn: TcpStream, role: Role, seen: &Mutex<Vec<Seen>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let authorization = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_string())
    });
    let authorized = authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization,
    });
    let (status, body) = if !authorized {
        ("401 Unauthorized", r#"{"error":"unauthorized"}"#)
    } else {
        match (role, path.as_str()) {
            (Role::Server, "/api/status") => ("200 OK", SERVER_STATUS),
            (Role::Server, "/api/clients") => ("200 OK", CLIENTS),
            (Role::Server, "/api/mappings") => ("200 OK", MAPPINGS),
            (Role::Server, "/api/streams") => ("200 OK", STREAMS),
            (Role::Client, "/api/status") => ("200 OK", CLIENT_STATUS),
            (Role::Failing, _) => (
                "500 Internal Server Error",
                r#"{"error":"the event loop did not answer"}"#,
            ),
            _ => ("404 Not Found", r#"{"error":"no such endpoint"}"#),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `tcp-forward status ARGS` with TCP_FORWARD_ADMIN_TOKEN set to `env_token` (or unset).
fn status(args: &[&str], env_token: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("status")
        .args(args)
        .env_remove("TCP_FORWARD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = env_token {
        cmd.env("TCP_FORWARD_ADMIN_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("start tcp-forward status");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The output is a few KiB at most: it fits the pipes while the child runs.
    while child.try_wait().expect("wait for tcp-forward").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tcp-forward status {args:?} still running after 20 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("collect the output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The lines of the section titled `title`, up to the blank line after it.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != title);
    assert_eq!(lines.next(), Some(title), "no section {title} in:\n{text}");
    lines.take_while(|l| !l.is_empty()).collect()
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn server_tables_with_the_token_from_the_environment() {
    let api = FakeAdmin::start(Role::Server);
    let admin = api.addr.to_string();
    let run = status(&["--admin", &admin], Some(TOKEN));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(
        out.lines().next(),
        Some("server 0.1.0, up 12s: 1 client, 2 mappings, 3 streams"),
        "{out}"
    );
    let clients = section(out, "Clients");
    assert_eq!(
        words(clients[0]),
        [
            "ID",
            "ADDRESS",
            "TAG",
            "CONNECTED",
            "STREAMS",
            "IN",
            "OUT",
            "RATE",
            "IN",
            "RATE",
            "OUT"
        ],
        "{out}"
    );
    assert_eq!(
        words(clients[1]),
        [
            "7",
            "203.0.113.9:51514",
            "default",
            "2026-12-01T20:00:00Z",
            "2",
            "1.2",
            "MiB",
            "0",
            "B",
            "12.3",
            "KiB/s",
            "0",
            "B/s"
        ],
        "{out}"
    );
    let mappings = section(out, "Mappings");
    assert_eq!(mappings.len(), 3, "{out}");
    assert_eq!(
        words(mappings[1]),
        [
            "1234",
            "192.168.10.5:22",
            "default",
            "3",
            "0",
            "B",
            "0",
            "B"
        ]
    );
    assert_eq!(words(mappings[2])[..3], ["8022", "192.168.10.6:22", "lab"]);
    let streams = section(out, "Streams");
    assert_eq!(
        words(streams[1]),
        [
            "3",
            "7",
            "1234",
            "198.51.100.4:40000",
            "192.168.10.5:22",
            "2026-12-01T20:01:00Z",
            "0",
            "B",
            "0",
            "B"
        ],
        "{out}"
    );
    // Columns line up: every row of a table starts its cells where the titles do.
    let at = |line: &str, cell: &str| line.find(cell).unwrap();
    assert_eq!(at(clients[0], "TAG"), at(clients[1], "default"), "{out}");

    let seen = api.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/status",
            "/api/clients",
            "/api/mappings",
            "/api/streams"
        ]
    );
    for s in &seen {
        assert_eq!(
            s.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
}

#[test]
fn server_json() {
    let api = FakeAdmin::start(Role::Server);
    let admin = api.addr.to_string();
    let run = status(&["--admin", &admin, "--token", TOKEN, "--json"], None);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    let got: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let field = |text: &str, key: &str| serde_json::from_str::<Value>(text).unwrap()[key].take();
    let want = json!({
        "status": serde_json::from_str::<Value>(SERVER_STATUS).unwrap(),
        "clients": field(CLIENTS, "clients"),
        "mappings": field(MAPPINGS, "mappings"),
        "streams": field(STREAMS, "streams"),
    });
    assert_eq!(got, want);
    let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["status", "clients", "mappings", "streams"]);
}

#[test]
fn client_fields_and_json() {
    let api = FakeAdmin::start(Role::Client);
    let admin = api.addr.to_string();
    let run = status(&["--admin", &admin], Some(TOKEN));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(out.lines().next(), Some("client 0.1.0, up"), "{out}");
    for (label, value) in [
        ("State", "up"),
        ("Server", "203.0.113.1:7000"),
        ("Tag", "default"),
        ("Connected", "2026-12-01T20:00:00Z"),
        ("Streams", "2"),
        ("In", "0 B"),
        ("Reconnects", "1"),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("no {label} line in:\n{out}"));
        assert_eq!(line[label.len()..].trim(), value, "{out}");
    }
    // A client has no clients, mappings or streams tables.
    assert!(!out.contains("Mappings"), "{out}");

    let run = status(&["--admin", &admin, "--json"], Some(TOKEN));
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let got: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let want = json!({"status": serde_json::from_str::<Value>(CLIENT_STATUS).unwrap()});
    assert_eq!(got, want);
    let paths: Vec<_> = api.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/status", "/api/status"]);
}

#[test]
fn a_missing_or_wrong_token_is_named() {
    let api = FakeAdmin::start(Role::Server);
    let admin = api.addr.to_string();

    let run = status(&["--admin", &admin], None);
    assert_eq!(run.code, Some(1), "stdout:\n{}", run.stdout);
    assert!(
        run.stderr.contains(
            "the admin API requires a token: pass --token or set TCP_FORWARD_ADMIN_TOKEN"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let run = status(&["--admin", &admin, "--token", "guess"], None);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("wrong token"), "{}", run.stderr);
    // The token given is not echoed.
    assert!(!run.stderr.contains("guess"), "{}", run.stderr);

    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].authorization, None);
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer guess"));
}

#[test]
fn an_error_answer_is_shown_with_its_message() {
    let api = FakeAdmin::start(Role::Failing);
    let admin = api.addr.to_string();
    let run = status(&["--admin", &admin], Some(TOKEN));
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!(
            "the admin API at {admin} answered GET /api/status with 500 Internal Server Error: \
             the event loop did not answer"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn nothing_listening() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let admin = format!("127.0.0.1:{port}");
    let run = status(&["--admin", &admin], None);
    assert_eq!(run.code, Some(1), "stdout:\n{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("cannot reach the admin API at {admin}: ")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("ADMIN_ADDR"), "{}", run.stderr);
}

#[test]
fn a_bad_admin_address_is_a_usage_error() {
    for bad in ["localhost", "::1:8080", "127.0.0.1:99999"] {
        let run = status(&["--admin", bad], None);
        assert_eq!(run.code, Some(2), "{bad}: {}", run.stderr);
        assert!(run.stderr.contains("--admin"), "{bad}: {}", run.stderr);
    }
}
