//! The admin dashboard (`GET /` on `ADMIN_ADDR`): the page file on its own (self-contained,
//! small, its Content-Security-Policy hashes matching its script and style), and the page
//! in headless Chromium against a real server and client, driven over the DevTools
//! Protocol: it lists the attached client and the mappings, adds a mapping through its form
//! (which then carries traffic), asks for the admin token when the server has one, and
//! logs no error or warning on the way.
//!
//! The browser tests are skipped (with a message) when `chromium` is not on PATH.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use common::cdp::{self, Browser, Cdp, WebSocket, op};
use common::*;

const PAGE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/admin/dashboard.html"
));
const TAG: &str = "dash-tag";
const ADMIN_TOKEN: &str = "adm1n-Token-93d0";
/// Page-state checks: at most this many evaluations, `PAUSE` apart.
const TRIES: usize = 100;
const PAUSE: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------------------
// The page file
// ---------------------------------------------------------------------------------------

/// The text between `<tag>` and `</tag>`; the page has exactly one such element.
fn only_element<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    assert_eq!(page.matches(&open).count(), 1, "one {open} in the page");
    let start = page.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = page[start..].find(&close).map_or(page.len(), |i| start + i);
    &page[start..end]
}

fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", cdp::base64(&Sha256::digest(text.as_bytes())))
}

#[test]
fn page_is_self_contained_and_its_csp_hashes_match() {
    assert!(
        PAGE.len() < 40 * 1024,
        "the page has grown to {} bytes",
        PAGE.len()
    );
    // Nothing is fetched from elsewhere: the only URL is the SVG namespace.
    let urls = PAGE.replace("http://www.w3.org/2000/svg", "");
    for scheme in [
        "http://",
        "https://",
        "//cdn",
        "@import",
        "<script src",
        "<link rel=\"stylesheet\"",
    ] {
        assert!(!urls.contains(scheme), "the page refers to {scheme}");
    }
    // Data from the API goes into the page as text only.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!PAGE.contains(sink), "the page uses {sink}");
    }
    for needle in [
        "id=\"mapping-form\"",
        "name=\"port\"",
        "name=\"target\"",
        "name=\"tag\"",
        "id=\"clients\"",
        "id=\"mappings\"",
        "id=\"streams\"",
        "id=\"error\"",
        "id=\"token-form\"",
    ] {
        assert!(PAGE.contains(needle), "the page lacks {needle}");
    }
    // The policy the page sets for itself allows its own script and style by hash; a change
    // to either needs the new hash here, or the browser runs neither.
    let csp_start = PAGE
        .find("http-equiv=\"Content-Security-Policy\" content=\"")
        .expect("the page sets a Content-Security-Policy");
    let csp = PAGE[csp_start..].split('"').nth(3).unwrap_or_default();
    for (directive, tag) in [("script-src", "script"), ("style-src", "style")] {
        let want = format!("{directive} {}", csp_hash(only_element(PAGE, tag)));
        assert!(
            csp.split(';').any(|d| d.trim() == want),
            "the page's CSP should say `{want}`; it says `{csp}`"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The WebSocket client the browser tests use, against a scripted server
// ---------------------------------------------------------------------------------------

/// One unmasked server frame.
fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Read one client frame: it must be masked; returns (fin, opcode, unmasked payload).
fn client_frame(s: &mut std::net::TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame header");
    assert!(h[1] & 0x80 != 0, "client frames are masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).expect("16-bit length");
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).expect("64-bit length");
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    s.read_exact(&mut mask).expect("mask");
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).expect("payload");
    for (b, m) in p.iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
    (h[0] & 0x80 != 0, h[0] & 0x0f, p)
}

#[test]
fn websocket_client_speaks_rfc_6455() {
    // Known answers: FIPS 180 and the handshake example of RFC 6455 section 1.3.
    assert_eq!(
        cdp::base64(&cdp::sha1(b"abc")),
        cdp::base64(&[
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
        ])
    );
    assert_eq!(
        cdp::websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(cdp::base64(b""), "");
    assert_eq!(cdp::base64(b"f"), "Zg==");
    assert_eq!(cdp::base64(b"fo"), "Zm8=");
    assert_eq!(cdp::base64(b"foobar"), "Zm9vYmFy");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let long16 = "x".repeat(300);
    let long64 = "y".repeat(70_000);
    let (l16, l64) = (long16.clone(), long64.clone());
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut s = with_timeouts(s);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("request");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("UTF-8 request");
        assert!(
            head.starts_with("GET /devtools/page/x HTTP/1.1\r\n"),
            "{head}"
        );
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key");
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            cdp::websocket_accept(key)
        )
        .into_bytes();
        // In the same write as the handshake answer: a short message, then a 16-bit and a
        // 64-bit length, then a fragmented message with a ping between its fragments.
        out.extend(server_frame(true, op::TEXT, b"hello"));
        out.extend(server_frame(true, op::TEXT, l16.as_bytes()));
        out.extend(server_frame(true, op::TEXT, l64.as_bytes()));
        out.extend(server_frame(false, op::TEXT, b"frag"));
        out.extend(server_frame(true, op::PING, b"p1"));
        out.extend(server_frame(false, op::CONTINUATION, b"men"));
        out.extend(server_frame(true, op::CONTINUATION, b"ted"));
        // Byte by byte for the last one: reads that stop inside a frame lose nothing.
        let split = server_frame(true, op::TEXT, b"slow");
        s.write_all(&out).expect("write frames");
        for b in split {
            s.write_all(&[b]).expect("write a byte");
            thread::sleep(Duration::from_millis(2));
        }
        let pong = client_frame(&mut s);
        assert_eq!(pong, (true, op::PONG, b"p1".to_vec()));
        let text = client_frame(&mut s);
        assert_eq!(text, (true, op::TEXT, "z".repeat(200).into_bytes()));
        s.write_all(&server_frame(true, op::CLOSE, &1000u16.to_be_bytes()))
            .expect("close");
        let close = client_frame(&mut s);
        assert_eq!(close.1, op::CLOSE);
    });

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ws = WebSocket::connect(
        &format!("ws://{addr}/devtools/page/x"),
        Duration::from_secs(5),
    )
    .expect("connect");
    assert_eq!(ws.recv_text(deadline).expect("short"), "hello");
    assert_eq!(ws.recv_text(deadline).expect("16-bit"), long16);
    assert_eq!(ws.recv_text(deadline).expect("64-bit"), long64);
    assert_eq!(ws.recv_text(deadline).expect("fragmented"), "fragmented");
    assert_eq!(ws.recv_text(deadline).expect("slow"), "slow");
    ws.send_text(&"z".repeat(200)).expect("send");
    let end = ws.recv_text(deadline).expect_err("closed");
    assert_eq!(end.kind(), std::io::ErrorKind::ConnectionAborted);
    server.join().expect("scripted server");
}

// ---------------------------------------------------------------------------------------
// The page in a browser, against a real server
// ---------------------------------------------------------------------------------------

/// The browser, or `None` (after saying so) when it is not installed.
fn chromium() -> Option<PathBuf> {
    let found = Browser::find();
    if found.is_none() {
        println!("skipping: chromium not installed");
    }
    found
}

/// A loopback port for the admin API, distinct from the tunnel's.
fn admin_port(setup: &ServerSetup) -> u16 {
    loop {
        let p = free_port();
        if p != setup.inner_port && !setup.mappings.iter().any(|m| m.public == p) {
            return p;
        }
    }
}

/// Write `forward_server.cfg` and its mapping file, start the server and wait until its
/// admin address takes connections.
fn start_server(dir: &TempDir, setup: &ServerSetup, admin: SocketAddr) -> Proc {
    dir.write("port_mapper.cfg", &setup.mapper_text());
    let cfg = dir.write("forward_server.cfg", &setup.server_cfg_text());
    let server = start_server_cfg(&cfg, "server");
    if let Err(e) = connect_retry(admin, READY) {
        panic!(
            "the admin API on {admin} takes no connection: {e}\n{}",
            server.tail(30)
        );
    }
    server
}

/// A server with one mapping (tag `dash-tag`) to an echo target and `ADMIN_ADDR` on
/// loopback (plus `extra` lines), and one attached client with that tag:
/// (echo, server, client, setup, public port, admin address).
fn dash_setup(
    dir: &TempDir,
    extra: &[String],
) -> (Target, Proc, Proc, ServerSetup, u16, SocketAddr) {
    let echo = Target::echo();
    let mut setup = ServerSetup::new();
    let port = setup.map(echo.target(), Some(TAG));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port(&setup)));
    setup.extra.push(format!("ADMIN_ADDR={admin}"));
    setup.extra.extend(extra.iter().cloned());
    let server = start_server(dir, &setup, admin);
    let client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            tag: Some(TAG),
            ..ClientOpts::default()
        },
    );
    (echo, server, client, setup, port, admin)
}

/// A page session with `Runtime`, `Log` and `Page` events on, at `url`.
fn open(browser: &Browser, url: &str) -> Cdp {
    let mut page = browser.page();
    for domain in ["Runtime", "Log", "Page"] {
        page.call(
            &format!("{domain}.enable"),
            Value::Object(Default::default()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", browser.tail(30)));
    }
    page.navigate(url).unwrap_or_else(|e| panic!("{e}"));
    page
}

/// JavaScript string literal of `s`.
fn js(s: &str) -> String {
    Value::from(s).to_string()
}

/// `true` once the table `sel` has a cell whose text is exactly `text`.
fn cell_is(sel: &str, text: &str) -> String {
    format!(
        "Array.from(document.querySelectorAll({} + ' td')).some(td => td.textContent.trim() === {})",
        js(sel),
        js(text)
    )
}

/// `true` once the element `sel` is shown and its text contains `text`.
fn shows(sel: &str, text: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({}); return !!e && e.checkVisibility() && e.textContent.includes({}); }})()",
        js(sel),
        js(text)
    )
}

/// `true` when the element `sel` exists and is shown.
fn visible(sel: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({}); return !!e && e.checkVisibility(); }})()",
        js(sel)
    )
}

/// Set the named fields of the form `form` and click its submit button.
fn submit(page: &mut Cdp, form: &str, fields: &[(&str, &str)]) {
    let sets: String = fields
        .iter()
        .map(|(name, value)| format!("f.elements[{}].value = {};", js(name), js(value)))
        .collect();
    let expr = format!(
        "(() => {{ const f = document.querySelector({}); {sets} f.querySelector('[type=submit]').click(); return true; }})()",
        js(form)
    );
    if let Err(e) = page.eval(&expr) {
        panic!("submit {form}: {e}");
    }
}

/// Text of `sel` in the page (for failure messages).
fn text_of(page: &mut Cdp, sel: &str) -> String {
    let expr = format!(
        "(() => {{ const e = document.querySelector({}); return e ? e.textContent : '(no such element)'; }})()",
        js(sel)
    );
    match page.eval(&expr) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(e) => e,
    }
}

fn wait_page(page: &mut Cdp, what: &str, expr: &str) {
    if let Err(e) = page.wait_true(expr, TRIES, PAUSE) {
        let body = text_of(page, "body");
        panic!(
            "{what}: {e}\npage text:\n{body}\nevents: {:#?}",
            problems(page, &[])
        );
    }
}

/// Exceptions, console errors and warnings, and log errors and warnings the page caused,
/// except log entries containing one of `allowed`.
fn problems(page: &Cdp, allowed: &[&str]) -> Vec<Value> {
    let mut out: Vec<Value> = page.events_of("Runtime.exceptionThrown").cloned().collect();
    out.extend(
        page.events_of("Runtime.consoleAPICalled")
            .filter(|e| {
                matches!(
                    e.pointer("/params/type").and_then(Value::as_str),
                    Some("error" | "warning" | "assert")
                )
            })
            .cloned(),
    );
    out.extend(
        page.events_of("Log.entryAdded")
            .filter(|e| {
                matches!(
                    e.pointer("/params/entry/level").and_then(Value::as_str),
                    Some("error" | "warning")
                )
            })
            .filter(|e| {
                let text = e
                    .pointer("/params/entry/text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                !allowed.iter().any(|a| text.contains(a))
            })
            .cloned(),
    );
    out
}

fn assert_no_problems(page: &mut Cdp, allowed: &[&str]) {
    page.pump(Duration::from_millis(300));
    let found = problems(page, allowed);
    assert!(
        found.is_empty(),
        "the page logged {} problem(s):\n{found:#?}",
        found.len()
    );
}

#[test]
fn dashboard_lists_the_client_and_mappings_and_adds_a_mapping() {
    let Some(exe) = chromium() else { return };
    let dir = TempDir::new("dashboard");
    let (echo, _server, _client, setup, port, admin) = dash_setup(&dir, &[]);
    let browser = Browser::start(&exe);
    let mut page = open(&browser, &format!("http://{admin}/"));

    wait_page(
        &mut page,
        "the client's tag in #clients",
        &shows("#clients", TAG),
    );
    wait_page(
        &mut page,
        "the mapping's port in #mappings",
        &cell_is("#mappings", &port.to_string()),
    );
    wait_page(
        &mut page,
        "the mapping's target in #mappings",
        &shows("#mappings", &echo.target()),
    );
    wait_page(
        &mut page,
        "the server's version in the header",
        &shows("header", env!("CARGO_PKG_VERSION")),
    );

    // A new mapping through the form, served by the same client.
    let new_port = loop {
        let p = free_port();
        if p != port && p != setup.inner_port && p != admin.port() {
            break p;
        }
    };
    submit(
        &mut page,
        "#mapping-form",
        &[
            ("port", &new_port.to_string()),
            ("target", &echo.target()),
            ("tag", TAG),
        ],
    );
    let data = pattern(u64::from(new_port), 1000);
    let mut echoed = Err(std::io::Error::other("not tried"));
    for _ in 0..40 {
        echoed = connect_retry(SocketAddr::from(([127, 0, 0, 1], new_port)), PAUSE)
            .and_then(|mut s| echo_on(&mut s, &data));
        if echoed.is_ok() {
            break;
        }
        thread::sleep(PAUSE);
    }
    if let Err(e) = echoed {
        let said = text_of(&mut page, "#mapping-form") + " / " + &text_of(&mut page, "#form-error");
        panic!("the mapping added on port {new_port} does not echo: {e}\nnext to the form: {said}");
    }
    wait_page(
        &mut page,
        "the new port in #mappings",
        &cell_is("#mappings", &new_port.to_string()),
    );

    // A UDP mapping on the same port number, through the same form: its own row.
    let udp_target = udp_echo_target();
    submit(
        &mut page,
        "#mapping-form",
        &[
            ("port", &new_port.to_string()),
            ("target", &udp_target.to_string()),
            ("tag", TAG),
            ("proto", "udp"),
        ],
    );
    wait_page(
        &mut page,
        "the UDP mapping in #mappings",
        &cell_is("#mappings", &format!("{new_port}/udp")),
    );
    assert!(
        udp_echoes(new_port, b"through the dashboard's mapping"),
        "the UDP mapping added on port {new_port} does not echo"
    );
    wait_page(
        &mut page,
        "the TCP mapping still in #mappings",
        &cell_is("#mappings", &new_port.to_string()),
    );
    let banner = text_of(&mut page, "#error");
    assert_eq!(
        page.eval(&visible("#error")).ok(),
        Some(Value::Bool(false)),
        "the error banner shows while the server answers: {banner}"
    );
    assert_eq!(
        page.eval(&visible("#token-form")).ok(),
        Some(Value::Bool(false)),
        "the token form shows although the server has no ADMIN_TOKEN"
    );
    assert_no_problems(&mut page, &[]);
}

#[test]
fn dashboard_asks_for_the_admin_token() {
    let Some(exe) = chromium() else { return };
    let dir = TempDir::new("dashboard-token");
    let (_echo, _server, _client, _setup, port, admin) =
        dash_setup(&dir, &[format!("ADMIN_TOKEN={ADMIN_TOKEN}")]);
    let refused =
        cdp::http_request(admin, "GET", "/api/status", &[], &[], READY).expect("GET /api/status");
    assert_eq!(refused.status, 401, "without a token: {}", refused.text());

    let browser = Browser::start(&exe);
    let mut page = open(&browser, &format!("http://{admin}/"));
    wait_page(&mut page, "the token form", &visible("#token-form"));
    assert_eq!(
        page.eval(&shows("#clients", TAG)).ok(),
        Some(Value::Bool(false)),
        "data shows before a token was given"
    );

    // A wrong token is refused and the form stays.
    submit(&mut page, "#token-form", &[("token", "not-the-token")]);
    wait_page(
        &mut page,
        "the token form again, with a message",
        &format!(
            "{} && document.querySelector('#token-error').textContent.trim() !== ''",
            visible("#token-form")
        ),
    );

    submit(&mut page, "#token-form", &[("token", ADMIN_TOKEN)]);
    wait_page(
        &mut page,
        "the client's tag in #clients",
        &shows("#clients", TAG),
    );
    wait_page(
        &mut page,
        "the mapping's port in #mappings",
        &cell_is("#mappings", &port.to_string()),
    );
    assert_eq!(
        page.eval(&visible("#token-form")).ok(),
        Some(Value::Bool(false)),
        "the token form still shows with the right token"
    );

    // The token lasts for the tab: a reload shows the data without asking again. (The mark
    // tells the reloaded document from the one before.)
    page.eval("window.beforeReload = true")
        .unwrap_or_else(|e| panic!("{e}"));
    page.call("Page.reload", Value::Object(Default::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    wait_page(
        &mut page,
        "the client's tag in #clients after a reload",
        &format!(
            "!window.beforeReload && {} && !{}",
            shows("#clients", TAG),
            visible("#token-form")
        ),
    );
    // The browser reports the refused requests themselves (401) as errors; nothing else.
    assert_no_problems(&mut page, &["status of 401"]);
}
