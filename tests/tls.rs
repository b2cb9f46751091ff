//! TLS on the tunnel: what a wiretap between client and server sees, a man in the middle
//! (with and without a token, relaying or posing as the server), the client's trust (`--ca`,
//! `--fingerprint`, and their keys in forward_client.cfg), `tcp-forward cert`, TLS on one side
//! only, TLS configuration errors, and bytes that are not a TLS handshake (or half of one)
//! sent to a server.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData, StreamOwned};
use sha2::{Digest as _, Sha256};

use common::*;
use tcp_forward::bench::harness::loopback;
use tcp_forward::protocol::frame::{self, Frame};
use tcp_forward::protocol::handshake::{
    self, Accept, Challenge, Hello, NONCE_LEN, PREAMBLE_LEN, PROOF_LEN, PreambleCheck,
};
use tcp_forward::protocol::session::HANDSHAKE_TIMEOUT;
use tcp_forward::tls::{ClientTls, Trust};

const TOKEN: &str = "tls-Token-5be1c9e7";
/// Bound for one connection attempt (refused, or failing TLS) to show in the logs: the
/// client's back-off after such an attempt is longer, so a test waits for one attempt only.
const ATTEMPT: Duration = Duration::from_secs(5);
/// Longest life of a relay thread in these tests.
const RELAY_LIFE: Duration = Duration::from_secs(120);
/// What the server logs before the fingerprint of its certificate.
const FINGERPRINT_LOG: &str = "SHA-256 fingerprint ";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `AB:CD:...`, as the server and `tcp-forward cert` print a fingerprint.
fn colon_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint in a line ending with `SHA-256 fingerprint AB:CD:...`.
fn fingerprint_in(line: &str) -> String {
    let at = line
        .find(FINGERPRINT_LOG)
        .unwrap_or_else(|| panic!("no fingerprint in {line:?}"));
    let fp: String = line[at + FINGERPRINT_LOG.len()..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == ':')
        .collect();
    assert_eq!(fp.len(), 32 * 3 - 1, "a SHA-256 fingerprint in {line:?}");
    fp
}

/// A client dialling `port` (the server's, or a relay's in front of `server`) with these
/// options, expected to fail its first attempt with `why` in its log; no tunnel may come up
/// meanwhile.
fn expect_client_failure(server: &Proc, port: u16, opts: &ClientOpts<'_>, why: &str) -> Proc {
    let attached = server.count("tunnel attached");
    let c = spawn_client(port, opts);
    c.wait_for_line(why, ATTEMPT);
    assert_eq!(
        server.count("tunnel attached"),
        attached,
        "{}: a tunnel came up:\n{}",
        c.name,
        server.tail(20)
    );
    assert_eq!(
        c.count("tunnel up"),
        0,
        "{}: tunnel up:\n{}",
        c.name,
        c.tail(20)
    );
    c
}

/// The `n`th line (from 0) of `p`'s log that contains `needle`, once there is one (bounded).
fn nth_line(p: &Proc, needle: &str, n: usize, within: Duration) -> String {
    p.wait_for_count(needle, n + 1, within);
    p.lines()
        .into_iter()
        .filter(|l| l.contains(needle))
        .nth(n)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// rustls pieces for the relays
// ---------------------------------------------------------------------------------------

/// What the man in the middle's client side uses: tcp-forward's own trust with neither a CA
/// nor a pin, which takes any certificate whose key signs the handshake.
fn trusting_client_config() -> Arc<rustls::ClientConfig> {
    let name = ServerName::try_from("tcp-forward").expect("a name");
    ClientTls::new(&Trust::default(), name)
        .expect("a client configuration")
        .config
}

/// A server configuration with a self-signed certificate of its own for `name`.
fn own_server_config(name: &str) -> Arc<rustls::ServerConfig> {
    let made = tcp_forward::tls::generate(&[name.to_string()]).expect("certificate");
    let key = made.key();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_no_client_auth()
    .with_single_cert(vec![made.cert_der.into()], key)
    .expect("a certificate and its key");
    Arc::new(config)
}

/// Drive a blocking TLS connection until its handshake is done (bounded in rounds; each
/// round is bounded by the socket's timeouts).
fn finish_handshake<C, S>(s: &mut StreamOwned<C, TcpStream>) -> io::Result<()>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    for _ in 0..100 {
        if !s.conn.is_handshaking() {
            return Ok(());
        }
        s.conn.complete_io(&mut s.sock)?;
    }
    Err(io::Error::other("the TLS handshake does not end"))
}

// ---------------------------------------------------------------------------------------
// A wiretap: a plain TCP relay that records every byte
// ---------------------------------------------------------------------------------------

/// Bytes a relay passed on, per direction.
#[derive(Default)]
struct Recorded {
    /// Client to server.
    up: Vec<u8>,
    /// Server to client.
    down: Vec<u8>,
}

/// A relay between client and server that records what crosses it.
struct Tap {
    relay: Target,
    seen: Arc<Mutex<Recorded>>,
}

impl Tap {
    fn new(upstream: u16) -> Tap {
        let seen = Arc::new(Mutex::new(Recorded::default()));
        let record = Arc::clone(&seen);
        let relay = Target::spawn("127.0.0.1:0", move |client| {
            let Ok(server) = connect_retry(loopback(upstream), Duration::from_secs(2)) else {
                return;
            };
            let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let record = &record;
            thread::scope(|scope| {
                scope.spawn(move || {
                    copy(client, server_w, |b| {
                        record.lock().unwrap().up.extend_from_slice(b)
                    })
                });
                copy(server, client_w, |b| {
                    record.lock().unwrap().down.extend_from_slice(b)
                });
            });
        })
        .expect("bind the tap");
        Tap { relay, seen }
    }

    fn port(&self) -> u16 {
        self.relay.port()
    }

    fn taken(&self) -> Recorded {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Copy until end of stream (then half-close `to`) or an error (then close both), showing
/// each chunk to `record` first.
fn copy(mut from: TcpStream, mut to: TcpStream, mut record: impl FnMut(&[u8])) {
    let deadline = Instant::now() + RELAY_LIFE;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                record(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

const MARKER: &[u8] = b"<<visitor-secret-7c1d>>";

/// A 256 KiB visitor payload of the marker repeated.
fn marked_payload() -> Vec<u8> {
    MARKER.iter().copied().cycle().take(256 * 1024).collect()
}

/// A tunnel with a token through a tap, a marked payload echoed through it: what the tap saw.
fn wiretap(tls: Tls) -> Recorded {
    let dir = TempDir::new("wiretap");
    let (echo, setup, port) = echo_mapping();
    let setup = setup.token(TOKEN).with_tls(tls);
    let server = setup.start(&dir);
    let tap = Tap::new(setup.inner_port);
    let opts = ClientOpts {
        token: Some(TOKEN),
        ..tls.client()
    };
    let _client = attach_client(&server, tap.port(), &opts);
    let payload = marked_payload();
    echo_roundtrip(port, &payload).unwrap_or_else(|e| panic!("echo through the tap: {e}"));
    assert_eq!(echo.accepted(), 1, "the echo target saw the visitor");
    // What the visitor got back has crossed the tap both ways, so it is all recorded.
    let seen = tap.taken();
    for (dir, bytes) in [
        ("client to server", &seen.up),
        ("server to client", &seen.down),
    ] {
        assert!(
            bytes.len() >= payload.len(),
            "{dir}: the tap passed only {} bytes of a {}-byte echo",
            bytes.len(),
            payload.len()
        );
    }
    seen
}

#[test]
fn a_wiretap_sees_neither_data_nor_token_nor_preamble_under_tls() {
    let seen = wiretap(Tls::On);
    let secrets: [(&str, Vec<u8>); 5] = [
        ("the visitor's data", MARKER.to_vec()),
        ("the token", TOKEN.as_bytes().to_vec()),
        ("the token in hex", hex(TOKEN.as_bytes()).into_bytes()),
        (
            "the token in HEX",
            hex(TOKEN.as_bytes()).to_uppercase().into_bytes(),
        ),
        ("the preamble", b"TCPFWD".to_vec()),
    ];
    for (dir, bytes) in [
        ("client to server", &seen.up),
        ("server to client", &seen.down),
    ] {
        assert_eq!(
            bytes.first(),
            Some(&0x16),
            "{dir}: the first byte starts a TLS handshake record"
        );
        for (what, needle) in &secrets {
            assert!(
                !contains(bytes, needle),
                "{dir}: {what} crossed the wire in clear under TLS"
            );
        }
    }
}

#[test]
fn a_wiretap_sees_the_data_with_tls_off() {
    // The control: the same tap on a plain tunnel sees the data (so the tap works), the
    // preamble, but still not the token (only proofs cross the wire).
    let seen = wiretap(Tls::Off);
    for (dir, bytes) in [
        ("client to server", &seen.up),
        ("server to client", &seen.down),
    ] {
        assert!(
            contains(bytes, MARKER),
            "{dir}: the visitor's data should be visible with TLS off"
        );
        assert!(
            contains(bytes, b"TCPFWD"),
            "{dir}: the preamble should be visible with TLS off"
        );
        assert!(
            !contains(bytes, TOKEN.as_bytes()),
            "{dir}: the token crossed the wire"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A man in the middle: TLS terminated on both sides with its own certificate
// ---------------------------------------------------------------------------------------

/// What a man in the middle does once TLS with the client is up.
#[derive(Clone, Copy)]
enum Mitm {
    /// Open its own TLS connection to the server on this port and relay the plaintext.
    Relay(u16),
    /// Never reach the server: answer the handshake itself, with a made-up server proof.
    PoseAsServer,
}

/// What a man in the middle saw.
#[derive(Default)]
struct MitmLog {
    /// Plaintext from the client (the tunnel's preamble and frames).
    from_client: Vec<u8>,
    /// As a server impostor: the HELLOs it got, each with its tag and whether it had a proof.
    hellos: Vec<(String, bool)>,
}

struct ManInTheMiddle {
    listener: Target,
    log: Arc<Mutex<MitmLog>>,
}

impl ManInTheMiddle {
    fn new(mode: Mitm) -> ManInTheMiddle {
        let log = Arc::new(Mutex::new(MitmLog::default()));
        let shared = Arc::clone(&log);
        let front_config = own_server_config("mitm.example");
        let back_config = trusting_client_config();
        let listener = Target::spawn("127.0.0.1:0", move |sock| {
            let conn = ServerConnection::new(Arc::clone(&front_config)).expect("TLS server");
            let mut front = StreamOwned::new(conn, sock);
            if finish_handshake(&mut front).is_err() {
                return;
            }
            match mode {
                Mitm::Relay(port) => {
                    let Ok(up) = connect_retry(loopback(port), Duration::from_secs(2)) else {
                        return;
                    };
                    let name = ServerName::try_from("127.0.0.1").expect("a server name");
                    let conn =
                        ClientConnection::new(Arc::clone(&back_config), name).expect("TLS client");
                    let mut back = StreamOwned::new(conn, up);
                    if finish_handshake(&mut back).is_ok() {
                        relay_plaintext(&mut front, &mut back, &shared);
                    }
                }
                Mitm::PoseAsServer => {
                    let _ = pose_as_server(&mut front, &shared);
                }
            }
        })
        .expect("bind the man in the middle");
        ManInTheMiddle { listener, log }
    }

    fn port(&self) -> u16 {
        self.listener.port()
    }

    fn saw_from_client(&self, needle: &[u8]) -> bool {
        contains(&self.log.lock().unwrap().from_client, needle)
    }
}

/// Move whatever one side has to the other, both ways, on one thread (short read timeouts),
/// until either side ends or fails.
fn relay_plaintext(
    front: &mut StreamOwned<ServerConnection, TcpStream>,
    back: &mut StreamOwned<ClientConnection, TcpStream>,
    log: &Mutex<MitmLog>,
) {
    let poll = Some(Duration::from_millis(5));
    if front.sock.set_read_timeout(poll).is_err() || back.sock.set_read_timeout(poll).is_err() {
        return;
    }
    let deadline = Instant::now() + RELAY_LIFE;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        let up = pass(front, back, &mut buf, |b| {
            log.lock().unwrap().from_client.extend_from_slice(b)
        });
        let down = pass(back, front, &mut buf, |_| {});
        if up.is_err() || down.is_err() {
            break;
        }
    }
    let _ = front.sock.shutdown(Shutdown::Both);
    let _ = back.sock.shutdown(Shutdown::Both);
}

/// One read from `from`, written whole to `to`; an error at the end of the stream too.
fn pass(
    from: &mut impl Read,
    to: &mut impl Write,
    buf: &mut [u8],
    mut record: impl FnMut(&[u8]),
) -> io::Result<()> {
    match from.read(buf) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => {
            record(&buf[..n]);
            to.write_all(&buf[..n])?;
            to.flush()
        }
        Err(e) if is_transient(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Speak the server's part of the handshake: preamble and a CHALLENGE that requires a
/// token, then, given the client's HELLO, an ACCEPT with a proof that is not one.
fn pose_as_server(
    front: &mut StreamOwned<ServerConnection, TcpStream>,
    log: &Mutex<MitmLog>,
) -> io::Result<()> {
    let mut out = handshake::preamble().to_vec();
    let challenge = Challenge {
        auth_required: true,
        nonce: [0x11; NONCE_LEN],
    }
    .encode();
    frame::encode(&Frame::Challenge(&challenge), &mut out);
    front.write_all(&out)?;
    front.flush()?;

    let deadline = Instant::now() + READY;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let hello = loop {
        if got.len() >= PREAMBLE_LEN {
            if handshake::check_preamble(&got[..PREAMBLE_LEN]) != PreambleCheck::Ok {
                return Err(io::Error::other("the client sent no preamble"));
            }
            match frame::decode(&got[PREAMBLE_LEN..]).map_err(io::Error::other)? {
                Some((Frame::Hello(p), _)) => {
                    let hello = Hello::decode(p).map_err(io::Error::other)?;
                    break (hello.tag.to_string(), hello.proof.is_some());
                }
                Some((other, _)) => {
                    return Err(io::Error::other(format!("not a HELLO: {other:?}")));
                }
                None => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match front.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
    };
    {
        let mut log = log.lock().unwrap();
        log.from_client.extend_from_slice(&got);
        log.hellos.push(hello);
    }
    let accept = Accept {
        window: 1024 * 1024,
        max_streams: 16,
        heartbeat_ms: 10_000,
        proof: Some([0x5a; PROOF_LEN]),
    }
    .encode();
    let mut out = Vec::new();
    frame::encode(&Frame::Accept(&accept), &mut out);
    front.write_all(&out)?;
    front.flush()?;
    // The client should hang up now; wait for it (bounded by the socket's read timeout).
    let until = Instant::now() + READY;
    while Instant::now() < until {
        match front.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[test]
fn a_man_in_the_middle_cannot_pass_the_token_proof() {
    let dir = TempDir::new("mitm-token");
    let (echo, setup, port) = echo_mapping();
    let setup = setup.token(TOKEN);
    let server = setup.start(&dir);
    let mitm = ManInTheMiddle::new(Mitm::Relay(setup.inner_port));
    let client = expect_client_failure(
        &server,
        mitm.port(),
        &ClientOpts {
            token: Some(TOKEN),
            ..ClientOpts::default()
        },
        "server refused: authentication failed: wrong token, or a man in the middle",
    );
    let refusal = server.wait_for_line("refused client", ATTEMPT);
    assert!(
        refusal.contains("wrong token, or a man in the middle"),
        "the server's reason: {refusal}"
    );
    assert!(
        mitm.saw_from_client(b"TCPFWD"),
        "the man in the middle relayed the client's handshake in clear"
    );
    // No tunnel: a visitor is turned away and the target never sees a connection.
    assert_visit_closed(
        port,
        Duration::from_secs(2),
        "visitor behind a refused MITM",
    );
    assert_eq!(echo.accepted(), 0);
    assert_eq!(server.count("tunnel attached"), 0, "{}", server.tail(20));
    assert_eq!(client.count("tunnel up"), 0, "{}", client.tail(20));
}

#[test]
fn a_server_impostor_cannot_prove_the_token() {
    let mitm = ManInTheMiddle::new(Mitm::PoseAsServer);
    let client = spawn_client(
        mitm.port(),
        &ClientOpts {
            token: Some(TOKEN),
            ..ClientOpts::default()
        },
    );
    client.wait_for_line("the server did not prove that it knows the token", ATTEMPT);
    assert_eq!(client.count("tunnel up"), 0, "{}", client.tail(20));
    let hellos = std::mem::take(&mut mitm.log.lock().unwrap().hellos);
    assert_eq!(
        hellos,
        vec![("default".to_string(), true)],
        "the impostor got one HELLO, with the client's proof"
    );
}

#[test]
fn without_a_token_a_man_in_the_middle_goes_unnoticed_but_the_client_warns() {
    let dir = TempDir::new("mitm-open");
    let (_echo, setup, port) = echo_mapping();
    let server = setup.start(&dir);
    let mitm = ManInTheMiddle::new(Mitm::Relay(setup.inner_port));
    let client = attach_client(&server, mitm.port(), &ClientOpts::default());
    assert_echo(port, "echo through a man in the middle");
    let warning = client.wait_for_line("the server is not authenticated", READY);
    assert!(warning.contains("WARN"), "a warning: {warning}");
    assert!(
        mitm.saw_from_client(b"TCPFWD"),
        "the man in the middle read the tunnel in clear"
    );
}

// ---------------------------------------------------------------------------------------
// --ca: certificates signed by a CA
// ---------------------------------------------------------------------------------------

/// A certificate authority made for a test (or an intermediate one).
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    /// A root CA.
    fn root(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        Ca(CertifiedIssuer::self_signed(Ca::params(name), key).expect("CA certificate"))
    }

    /// An intermediate CA signed by `self`.
    fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = Ca::params(name);
        params.use_authority_key_identifier_extension = true;
        Ca(CertifiedIssuer::signed_by(params, key, self.issuer()).expect("CA certificate"))
    }

    fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.0
    }

    fn pem(&self) -> String {
        self.0.pem()
    }
}

/// A server certificate for `names` signed by `ca`: (certificate PEM, key PEM).
fn leaf(names: &[&str], ca: &Ca, expired: bool) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "tcp-forward test server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("leaf key");
    let cert = params
        .signed_by(&key, ca.issuer())
        .expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}

/// A server with TLS_CERT and TLS_KEY files, one public port mapped to an echo target.
struct Served {
    dir: TempDir,
    echo: Target,
    inner_port: u16,
    port: u16,
    server: Proc,
}

impl Served {
    fn new(name: &str, cert_pem: &str, key_pem: &str) -> Served {
        let dir = TempDir::new(name);
        let cert = dir.write("server.crt", cert_pem);
        let key = dir.write("server.key", key_pem);
        let (echo, mut setup, port) = echo_mapping();
        setup.extra.push(format!("TLS_CERT={}", cert.display()));
        setup.extra.push(format!("TLS_KEY={}", key.display()));
        let server = setup.start(&dir);
        let line = server.wait_for_line(FINGERPRINT_LOG, READY);
        assert!(
            line.contains(&cert.display().to_string()),
            "the server names its certificate file: {line}"
        );
        Served {
            dir,
            echo,
            inner_port: setup.inner_port,
            port,
            server,
        }
    }

    /// Write `text` into the server's folder; returns the path as a string.
    fn file(&self, name: &str, text: &str) -> String {
        self.dir.write(name, text).to_string_lossy().into_owned()
    }

    /// Stop `client` and wait for the server to see its tunnel go (the `n`th to go).
    fn detach(&self, client: Proc, n: usize) {
        drop(client);
        self.server.wait_for_count("tunnel detached", n, READY);
    }
}

/// Start a client with `args` (after `client`) and wait for it to attach to `server`.
fn attach_with(server: &Proc, name: &str, args: &[&str]) -> Proc {
    let mut all = vec!["client"];
    all.extend_from_slice(args);
    attach_spawned(server, || spawn(name, &all, &[]))
}

fn opts<'a>(name: &'a str, extra: &[&'a str]) -> ClientOpts<'a> {
    ClientOpts {
        name: Some(name),
        extra: extra.to_vec(),
        ..ClientOpts::default()
    }
}

#[test]
fn a_certificate_from_the_ca_is_accepted_by_name_by_address_and_from_the_config_file() {
    let ca = Ca::root("tcp-forward test root CA");
    let (cert, key) = leaf(&["localhost", "127.0.0.1"], &ca, false);
    let s = Served::new("ca-ok", &cert, &key);
    let ca_file = s.file("ca.pem", &ca.pem());

    let args = ["--ca", ca_file.as_str(), "--server-name", "localhost"];
    let by_name = attach_client(&s.server, s.inner_port, &opts("by-name", &args));
    assert_echo(s.port, "--ca with --server-name localhost");
    s.detach(by_name, 1);

    // Without --server-name the certificate must name the address dialled.
    let by_address = attach_client(&s.server, s.inner_port, &opts("by-address", &args[..2]));
    assert_echo(s.port, "--ca, server name 127.0.0.1");
    s.detach(by_address, 2);

    // TLS_CA (relative to the file's folder) and TLS_SERVER_NAME in forward_client.cfg.
    let cfg = s.file(
        "forward_client.cfg",
        &format!(
            "[DEFAULT]\nSERVER_IP=127.0.0.1\nSERVER_PORT={}\nTLS_CA=ca.pem\nTLS_SERVER_NAME=localhost\n",
            s.inner_port
        ),
    );
    let _from_file = attach_with(&s.server, "from-file", &["--config", &cfg]);
    assert_echo(s.port, "TLS_CA and TLS_SERVER_NAME from forward_client.cfg");
    assert_eq!(s.echo.accepted(), 3);
}

#[test]
fn a_chain_in_tls_cert_verifies_up_to_the_root_and_not_without_its_intermediate() {
    let root = Ca::root("tcp-forward test root CA");
    let intermediate = root.intermediate("tcp-forward test intermediate CA");
    let (cert, key) = leaf(&["localhost"], &intermediate, false);

    // TLS_CERT holds the leaf, then the intermediate.
    let s = Served::new("ca-chain", &format!("{cert}{}", intermediate.pem()), &key);
    let root_file = s.file("root.pem", &root.pem());
    let args = ["--ca", root_file.as_str(), "--server-name", "localhost"];
    let _client = attach_client(&s.server, s.inner_port, &opts("chain", &args));
    assert_echo(s.port, "a chain under --ca");

    // The leaf alone: the client cannot link it to the root.
    let s = Served::new("ca-leaf-only", &cert, &key);
    let root_file = s.file("root.pem", &root.pem());
    let args = ["--ca", root_file.as_str(), "--server-name", "localhost"];
    expect_client_failure(
        &s.server,
        s.inner_port,
        &opts("leaf-only", &args),
        "invalid peer certificate: UnknownIssuer",
    );
    let line = s.server.wait_for_line("refused client", ATTEMPT);
    assert!(line.contains("received fatal alert: UnknownCA"), "{line}");
}

#[test]
fn another_ca_or_another_name_fails_the_handshake() {
    let ca = Ca::root("tcp-forward test root CA");
    let other = Ca::root("some other CA");
    let (cert, key) = leaf(&["localhost"], &ca, false);
    let s = Served::new("ca-mismatch", &cert, &key);
    let ca_file = s.file("ca.pem", &ca.pem());
    let other_file = s.file("other.pem", &other.pem());

    let cases: [(&str, Vec<&str>, &str, &str); 3] = [
        (
            "another-ca",
            vec!["--ca", &other_file, "--server-name", "localhost"],
            "invalid peer certificate: UnknownIssuer",
            "UnknownCA",
        ),
        (
            "another-name",
            vec!["--ca", &ca_file, "--server-name", "other.example"],
            "invalid peer certificate: certificate not valid for name \"other.example\"",
            "BadCertificate",
        ),
        (
            "the-address",
            vec!["--ca", &ca_file],
            "invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
            "BadCertificate",
        ),
    ];
    for (i, (name, args, why, alert)) in cases.iter().enumerate() {
        let c = expect_client_failure(&s.server, s.inner_port, &opts(name, args), why);
        // The client told the server why, in an alert.
        let line = nth_line(&s.server, "refused client", i, ATTEMPT);
        assert!(
            line.contains(&format!("received fatal alert: {alert}")),
            "{name}: {line}"
        );
        drop(c);
    }
    assert_eq!(s.echo.accepted(), 0);
}

#[test]
fn an_expired_certificate_fails_the_handshake() {
    let ca = Ca::root("tcp-forward test root CA");
    let (cert, key) = leaf(&["localhost"], &ca, true);
    let s = Served::new("ca-expired", &cert, &key);
    let ca_file = s.file("ca.pem", &ca.pem());
    let args = ["--ca", ca_file.as_str(), "--server-name", "localhost"];
    expect_client_failure(
        &s.server,
        s.inner_port,
        &opts("expired", &args),
        "invalid peer certificate: certificate expired",
    );
    let line = s.server.wait_for_line("refused client", ATTEMPT);
    assert!(
        line.contains("received fatal alert: CertificateExpired"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------
// --fingerprint
// ---------------------------------------------------------------------------------------

/// A server with a certificate made at start-up: (echo, setup, public port, server, the
/// fingerprint it logged).
fn self_signed_server(dir: &TempDir) -> (Target, ServerSetup, u16, Proc, String) {
    let (echo, setup, port) = echo_mapping();
    let server = setup.start(dir);
    let line = server.wait_for_line(FINGERPRINT_LOG, READY);
    assert!(line.contains("INFO"), "logged at INFO: {line}");
    assert!(line.contains("self-signed"), "{line}");
    let fp = fingerprint_in(&line);
    (echo, setup, port, server, fp)
}

#[test]
fn the_logged_fingerprint_pins_the_server_in_any_spelling() {
    let dir = TempDir::new("pin");
    let (echo, setup, port, server, fp) = self_signed_server(&dir);
    let plain = fp.replace(':', "").to_lowercase();
    for (i, (name, pin)) in [("pin-as-logged", &fp), ("pin-lowercase", &plain)]
        .into_iter()
        .enumerate()
    {
        let c = attach_client(
            &server,
            setup.inner_port,
            &opts(name, &["--fingerprint", pin, "-v"]),
        );
        assert_echo(port, name);
        // The echo's stream is logged after the tunnel came up (and after any warning then).
        c.wait_for_line(&format!(": connected to {}", echo.target()), READY);
        assert_eq!(
            c.count("the server is not authenticated"),
            0,
            "{name}: a pinned server is authenticated:\n{}",
            c.tail(20)
        );
        drop(c);
        server.wait_for_count("tunnel detached", i + 1, READY);
    }
    let cfg = dir.write(
        "forward_client.cfg",
        &format!(
            "[DEFAULT]\nSERVER_IP=127.0.0.1\nSERVER_PORT={}\nTLS_FINGERPRINT={plain}\n",
            setup.inner_port
        ),
    );
    let _from_file = attach_with(
        &server,
        "pin-from-file",
        &["--config", &cfg.to_string_lossy()],
    );
    assert_echo(port, "TLS_FINGERPRINT from forward_client.cfg");
}

#[test]
fn another_fingerprint_fails_the_handshake() {
    let dir = TempDir::new("pin-wrong");
    let (echo, setup, _port, server, fp) = self_signed_server(&dir);
    // The same fingerprint with its last digit changed.
    let mut wrong = fp.clone();
    let last = if wrong.ends_with('0') { '1' } else { '0' };
    wrong.pop();
    wrong.push(last);
    let c = expect_client_failure(
        &server,
        setup.inner_port,
        &opts("pin-wrong", &["--fingerprint", &wrong]),
        "not the pinned one",
    );
    let line = c.wait_for_line("not the pinned one", READY);
    assert!(
        line.contains(&fp),
        "the failure names the fingerprint the server has: {line}"
    );
    let line = server.wait_for_line("refused client", ATTEMPT);
    assert!(line.contains("received fatal alert"), "{line}");
    assert_eq!(echo.accepted(), 0);
}

// ---------------------------------------------------------------------------------------
// tcp-forward cert
// ---------------------------------------------------------------------------------------

/// Run the binary to its end (within 10 s): (exit code, stdout, stderr).
fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after 10 s");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // It has exited: its pipes hold everything it wrote.
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).expect("read stdout");
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err).expect("read stderr");
    }
    (status.code(), out, err)
}

#[test]
fn cert_writes_a_key_and_certificate_that_a_server_uses_and_a_client_pins() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cert");
    let keys = dir.path().join("keys");
    let keys_arg = keys.to_string_lossy().into_owned();
    let (code, out, err) = run_to_end(&["cert", &keys_arg]);
    assert_eq!(code, Some(0), "cert: stdout:\n{out}\nstderr:\n{err}");
    let line = out
        .lines()
        .find(|l| l.contains(FINGERPRINT_LOG))
        .unwrap_or_else(|| panic!("cert printed no fingerprint:\n{out}"));
    let printed = fingerprint_in(line);

    let key = keys.join("tcp-forward.key");
    let crt = keys.join("tcp-forward.crt");
    let mode = std::fs::metadata(&key)
        .expect("the key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file's mode");
    let der = CertificateDer::from_pem_file(&crt).expect("a PEM certificate");
    assert_eq!(
        colon_hex(&Sha256::digest(&der)),
        printed,
        "the printed fingerprint is the certificate's"
    );
    PrivateKeyDer::from_pem_file(&key).expect("a PEM private key");

    // A second run keeps both files.
    let before = std::fs::read(&key).expect("read the key");
    let (code, _, err) = run_to_end(&["cert", &keys_arg]);
    assert_ne!(code, Some(0), "cert over existing files succeeded");
    assert!(err.contains("already exists"), "stderr: {err}");
    assert_eq!(std::fs::read(&key).expect("read the key"), before);

    let (_echo, mut setup, port) = echo_mapping();
    setup.extra.push(format!("TLS_CERT={}", crt.display()));
    setup.extra.push(format!("TLS_KEY={}", key.display()));
    let server = setup.start(&dir);
    let logged = fingerprint_in(&server.wait_for_line(FINGERPRINT_LOG, READY));
    assert_eq!(
        logged, printed,
        "the server logs the fingerprint cert printed"
    );
    let _client = attach_client(
        &server,
        setup.inner_port,
        &opts("pin-cert", &["--fingerprint", &printed]),
    );
    assert_echo(port, "a server with cert's files, pinned");
}

// ---------------------------------------------------------------------------------------
// TLS on one side only
// ---------------------------------------------------------------------------------------

#[test]
fn a_plain_client_is_told_that_the_server_requires_tls() {
    let dir = TempDir::new("plain-client");
    let (echo, setup, _port) = echo_mapping();
    let server = setup.start(&dir);
    let started = Instant::now();
    let client = expect_client_failure(
        &server,
        setup.inner_port,
        &Tls::Off.client(),
        "the server requires TLS",
    );
    let line = client.wait_for_line("the server requires TLS", READY);
    assert!(
        line.contains("server refused"),
        "the server's reason: {line}"
    );
    let line = server.wait_for_line("refused client", ATTEMPT);
    assert!(line.contains("requires TLS"), "{line}");
    assert!(
        started.elapsed() < ATTEMPT,
        "the refusal took {:?}",
        started.elapsed()
    );
    assert_eq!(echo.accepted(), 0);
}

#[test]
fn a_tls_client_is_told_that_the_server_runs_with_tls_off() {
    let dir = TempDir::new("plain-server");
    let (echo, setup, _port) = echo_mapping();
    let setup = setup.tls_off();
    let server = setup.start(&dir);
    let started = Instant::now();
    let client = expect_client_failure(
        &server,
        setup.inner_port,
        &ClientOpts::default(),
        "the server answered in clear: it runs with TLS=off",
    );
    let line = server.wait_for_line("refused client", ATTEMPT);
    assert!(
        line.contains("the client speaks TLS, but this server runs with TLS=off"),
        "{line}"
    );
    assert!(
        started.elapsed() < ATTEMPT,
        "the failure took {:?}",
        started.elapsed()
    );
    drop(client);
    assert_eq!(echo.accepted(), 0);
}

// ---------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------

/// Run the binary with `args`, expecting a configuration error: exit status 2 within 5 s,
/// stderr naming each of `mentions`, and nothing started.
fn expect_exit_2(what: &str, args: &[&str], mentions: &[&str]) {
    let mut p = spawn(what, args, &[]);
    let status = p.wait_exit(Duration::from_secs(5));
    let log = p.log_text();
    let status = status.unwrap_or_else(|| panic!("{what}: still running after 5 s:\n{log}"));
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: exit status; stderr:\n{log}"
    );
    for m in mentions {
        assert!(log.contains(m), "{what}: stderr should name {m:?}:\n{log}");
    }
    for started in ["listening for clients", "connected to server", "tunnel up"] {
        assert!(!log.contains(started), "{what}: {started}:\n{log}");
    }
}

#[test]
fn tls_files_that_cannot_be_used_stop_the_server_with_status_2() {
    let dir = TempDir::new("tls-config-server");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let crt = dir.write("good.crt", &made.cert.pem());
    let key = dir.write("good.key", &made.signing_key.serialize_pem());
    let other_key = dir.write(
        "other.key",
        &KeyPair::generate().expect("key").serialize_pem(),
    );
    let garbage = dir.write("garbage.pem", "this is not PEM at all\n");
    let missing_key = dir.path().join("missing.key");
    let missing_crt = dir.path().join("missing.crt");
    let folder = dir.path().join("a-folder.key");
    std::fs::create_dir(&folder).expect("mkdir");
    let pair = |c: &Path, k: &Path| {
        vec![
            format!("TLS_CERT={}", c.display()),
            format!("TLS_KEY={}", k.display()),
        ]
    };

    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "missing-key",
            pair(&crt, &missing_key),
            vec!["missing.key", "TLS_KEY", "cannot read"],
        ),
        (
            "key-is-a-folder",
            pair(&crt, &folder),
            vec!["a-folder.key", "TLS_KEY", "cannot read"],
        ),
        (
            "missing-cert",
            pair(&missing_crt, &key),
            vec!["missing.crt", "TLS_CERT", "cannot read"],
        ),
        (
            "garbage-cert",
            pair(&garbage, &key),
            vec!["garbage.pem", "TLS_CERT", "no CERTIFICATE"],
        ),
        (
            "garbage-key",
            pair(&crt, &garbage),
            vec!["garbage.pem", "TLS_KEY", "not a PEM private key"],
        ),
        (
            "key-does-not-fit",
            pair(&crt, &other_key),
            vec!["other.key", "TLS_KEY", "does not fit"],
        ),
        (
            "cert-without-key",
            vec![format!("TLS_CERT={}", crt.display())],
            vec!["server.cfg", "TLS_KEY is missing"],
        ),
        (
            "key-without-cert",
            vec![format!("TLS_KEY={}", key.display())],
            vec!["server.cfg", "TLS_CERT is missing"],
        ),
        (
            "tls-maybe",
            vec!["TLS=maybe".to_string()],
            vec!["server.cfg", "TLS", "not on or off"],
        ),
    ];
    for (name, lines, mentions) in cases {
        let mut setup = ServerSetup::new();
        setup.map("127.0.0.1:9", None);
        setup.extra = lines;
        let cfg = setup.write(&dir);
        expect_exit_2(name, &["server", &cfg.to_string_lossy()], &mentions);
    }
}

#[test]
fn bad_client_tls_settings_stop_the_client_with_status_2() {
    let dir = TempDir::new("tls-config-client");
    let missing = dir.path().join("missing-ca.pem");
    let missing = missing.to_string_lossy().into_owned();
    let garbage = dir.write("garbage-ca.pem", "no certificate here\n");
    let garbage = garbage.to_string_lossy().into_owned();
    let valid_pin = "AB".repeat(32);
    let port = free_port().to_string();
    let cases: [(&str, Vec<&str>, Vec<&str>); 8] = [
        (
            "ca-missing",
            vec!["--ca", &missing],
            vec!["--ca", "missing-ca.pem", "cannot read"],
        ),
        (
            "ca-garbage",
            vec!["--ca", &garbage],
            vec!["--ca", "garbage-ca.pem", "no CERTIFICATE"],
        ),
        (
            "pin-not-hex",
            vec![
                "--fingerprint",
                "zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz:zz",
            ],
            vec!["--fingerprint", "not hex"],
        ),
        (
            "pin-short",
            vec!["--fingerprint", "AB:CD:EF"],
            vec!["--fingerprint", "64 hex digits"],
        ),
        (
            "tls-maybe",
            vec!["--tls", "maybe"],
            vec!["--tls", "not on or off"],
        ),
        (
            "pin-without-tls",
            vec!["--tls", "off", "--fingerprint", &valid_pin],
            vec!["--fingerprint", "TLS is off"],
        ),
        (
            "ca-without-tls",
            vec!["--tls", "off", "--ca", &garbage],
            vec!["--ca", "TLS is off"],
        ),
        (
            "bad-server-name",
            vec!["--server-name", "not a name!"],
            vec!["--server-name", "not a host name"],
        ),
    ];
    for (name, extra, mentions) in cases {
        let mut args = vec!["client", "127.0.0.1", port.as_str()];
        args.extend(extra);
        expect_exit_2(name, &args, &mentions);
    }
    // The same keys in forward_client.cfg: the error names the file and the key.
    for (name, line, mentions) in [
        (
            "file-ca-missing",
            format!("TLS_CA={missing}"),
            vec!["forward_client.cfg", "TLS_CA", "missing-ca.pem"],
        ),
        (
            "file-pin-short",
            "TLS_FINGERPRINT=AB:CD".to_string(),
            vec!["forward_client.cfg", "TLS_FINGERPRINT", "64 hex digits"],
        ),
    ] {
        let cfg = dir.write(
            "forward_client.cfg",
            &format!("[DEFAULT]\nSERVER_IP=127.0.0.1\nSERVER_PORT={port}\n{line}\n"),
        );
        expect_exit_2(
            name,
            &["client", "--config", &cfg.to_string_lossy()],
            &mentions,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bytes that are not a TLS handshake
// ---------------------------------------------------------------------------------------

/// The first flight of a TLS client: its ClientHello record.
fn client_hello() -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("a server name");
    let mut conn = ClientConnection::new(trusting_client_config(), name).expect("TLS client");
    let mut hello = Vec::new();
    for _ in 0..10 {
        if !conn.wants_write() {
            break;
        }
        conn.write_tls(&mut hello).expect("write into a Vec");
    }
    assert_eq!(hello.first(), Some(&0x16), "a handshake record");
    hello
}

/// A TLS alert record: fatal, handshake_failure.
const FATAL_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

#[test]
fn bad_tls_input_closes_only_its_own_connection() {
    let dir = TempDir::new("tls-garbage");
    let (echo, setup, port) = echo_mapping();
    let setup = setup.token(TOKEN);
    let server = setup.start(&dir);
    let opts = ClientOpts {
        token: Some(TOKEN),
        ..ClientOpts::default()
    };
    let client = attach_client(&server, setup.inner_port, &opts);
    let mut visitor = visit(port);
    echo_on(&mut visitor, b"before").expect("echo before");

    let hello = client_hello();
    let mut bogus_handshake = vec![0x16, 0x03, 0x03, 0x00, 0x08];
    bogus_handshake.extend_from_slice(&[0xff; 8]);
    let cases: [(&str, Vec<u8>, bool, &str); 5] = [
        (
            "a TLS alert first",
            FATAL_ALERT.to_vec(),
            false,
            "not a tcp-forward peer",
        ),
        (
            "a ClientHello, then garbage",
            [hello.as_slice(), b"garbage, not a TLS record\r\n"].concat(),
            false,
            "TLS: received corrupt message",
        ),
        (
            "a ClientHello, then an alert",
            [hello.as_slice(), &FATAL_ALERT].concat(),
            false,
            "TLS: received fatal alert: HandshakeFailure",
        ),
        (
            "half a ClientHello, then end of stream",
            hello[..hello.len() / 2].to_vec(),
            true,
            "the client closed the connection during the TLS handshake",
        ),
        (
            "a handshake record of garbage",
            bogus_handshake,
            false,
            "TLS: received corrupt message",
        ),
    ];
    for (i, (what, bytes, half_close, reason)) in cases.iter().enumerate() {
        let mut s = connect_retry(loopback(setup.inner_port), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        s.write_all(bytes)
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        if *half_close {
            s.shutdown(Shutdown::Write).expect("shutdown");
        }
        assert_closed(&mut s, ATTEMPT, what);
        let line = nth_line(&server, "refused client", i, ATTEMPT);
        assert!(line.contains(reason), "{what}: the server's reason: {line}");
        // The tunnel and the visitor's stream on it carry on.
        echo_on(&mut visitor, what.as_bytes()).unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_echo(port, &format!("a new stream after {what}"));
    }
    assert_eq!(server.count("tunnel detached"), 0, "{}", server.tail(20));
    assert_eq!(client.count("lost"), 0, "{}", client.tail(20));
    assert_eq!(echo.accepted(), 1 + cases.len());
}

#[test]
fn a_server_that_hangs_up_during_the_handshake_is_named_as_such() {
    // Reads the client's ClientHello, then closes without a word.
    let hangup = Target::spawn("127.0.0.1:0", |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 4096];
        for _ in 0..20 {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let _ = s.shutdown(Shutdown::Both);
    })
    .expect("bind");
    let client = spawn_client(hangup.port(), &ClientOpts::default());
    client.wait_for_line(
        "the server closed the connection during the TLS handshake",
        ATTEMPT,
    );
    assert_eq!(client.count("tunnel up"), 0);
}

#[test]
fn a_tls_handshake_that_stalls_is_dropped_in_time() {
    let dir = TempDir::new("tls-stall");
    let (_echo, setup, port) = echo_mapping();
    let server = setup.start(&dir);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    // Half a ClientHello, then silence with the connection open.
    let hello = client_hello();
    let mut s = connect_retry(loopback(setup.inner_port), Duration::from_secs(2)).expect("connect");
    s.write_all(&hello[..hello.len() / 2]).expect("write");
    let started = Instant::now();
    let closed = wait_closed(&mut s, Duration::from_secs(10));
    assert!(closed.is_closed(), "still open after 10 s: {closed:?}");
    let took = started.elapsed();
    let line = server.wait_for_line("refused client", ATTEMPT);
    assert!(line.contains("handshake not completed in time"), "{line}");
    let slack = Duration::from_secs(2);
    assert!(
        took + slack >= HANDSHAKE_TIMEOUT && took < HANDSHAKE_TIMEOUT + slack,
        "dropped after {took:?}, the handshake timeout is {HANDSHAKE_TIMEOUT:?}"
    );
    assert_echo(port, "the tunnel beside a stalled handshake");
}
