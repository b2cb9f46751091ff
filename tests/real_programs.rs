//! Real programs through the tunnel: OpenSSH, nginx + curl, dnsmasq + dig over a UDP
//! mapping, and the original's example topology built from network namespaces.
//!
//! Each test skips (prints `SKIP: <reason>` and returns) when a program it needs is missing
//! or cannot be started, or, for the namespace test, when not running as root. Every child
//! process is killed on drop and every command runs with a bounded wait.

mod common;

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    BIN, ClientOpts, Proc, READY, ServerSetup, TempDir, attach_client, echo_on, free_port,
    free_udp_port, is_transient, pattern, spawn_cmd, tunnel_to, with_timeouts,
};
use sha2::{Digest as _, Sha256};

/// Bound on any single external command (ssh, curl, ip).
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Local helpers: locating programs, bounded commands, daemons on free ports
// ---------------------------------------------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Find a program on PATH or in the usual sbin folders (not on PATH for normal users).
fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Find every program in `names`, or say which one is missing.
fn find_programs<const N: usize>(names: [&str; N]) -> Result<[PathBuf; N], String> {
    let mut out: [PathBuf; N] = std::array::from_fn(|_| PathBuf::new());
    for (i, n) in names.iter().enumerate() {
        out[i] = find_program(n).ok_or_else(|| format!("{n} not found"))?;
    }
    Ok(out)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The result of a bounded command.
struct Output {
    /// None when the command was killed for running past its time.
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        match self.status {
            Some(s) => format!("{s}; stderr: {}", self.stderr.trim()),
            None => format!("timed out; stderr: {}", self.stderr.trim()),
        }
    }
}

fn read_pipe_in_thread<R: Read + Send + 'static>(r: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        let _ = tx.send(v);
    });
    rx
}

/// Run `cmd` with stdin from `stdin` (or nothing), collecting stdout and stderr; killed
/// after `timeout`.
fn run(cmd: &mut Command, stdin: Option<&Path>, timeout: Duration) -> io::Result<Output> {
    let input = match stdin {
        Some(p) => Stdio::from(File::open(p)?),
        None => Stdio::null(),
    };
    let mut child = cmd
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out_rx = read_pipe_in_thread(child.stdout.take());
    let err_rx = read_pipe_in_thread(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Run a short set-up command; Err with its stderr when it fails.
fn run_ok(program: &Path, args: &[&str]) -> Result<Output, String> {
    let out = run(
        Command::new(program).args(args),
        None,
        Duration::from_secs(10),
    )
    .map_err(|e| format!("{} {}: {e}", program.display(), args.join(" ")))?;
    if out.success() {
        Ok(out)
    } else {
        Err(format!(
            "{} {}: {}",
            program.display(),
            args.join(" "),
            out.describe()
        ))
    }
}

/// Start a daemon listening on a fresh free port, retrying with another port when the one
/// chosen was taken in the meantime. `make` builds the command for a port; `ready` and
/// `in_use` are stderr substrings. Err (a skip reason) when it does not start.
fn start_on_free_port(
    name: &str,
    mut make: impl FnMut(u16) -> io::Result<Command>,
    ready: &str,
    in_use: &str,
) -> Result<(Proc, u16), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut cmd = make(port).map_err(|e| format!("{name}: set-up: {e}"))?;
        let d = spawn_cmd(name, &mut cmd).map_err(|e| format!("{name}: spawn: {e}"))?;
        match d.wait_any(&[ready, in_use], Duration::from_secs(10)) {
            Some(0) => {
                // Listening per its log; make sure the port answers.
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
                    return Ok((d, port));
                }
                last = format!("{name} logged {ready:?} but port {port} does not answer");
            }
            Some(_) => last = format!("port {port} taken:\n{}", d.tail(40)),
            None => {
                return Err(format!(
                    "{name} did not start (no {ready:?} in its log):\n{}",
                    d.tail(40)
                ));
            }
        }
    }
    Err(format!("{name} did not start: {last}"))
}

// ---------------------------------------------------------------------------------------
// ssh
// ---------------------------------------------------------------------------------------

fn current_user() -> Option<String> {
    if is_root() {
        return Some("root".into());
    }
    let out = run(Command::new("id").arg("-un"), None, Duration::from_secs(5)).ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.success() && !name.is_empty()).then_some(name)
}

fn start_sshd(dir: &TempDir, sshd: &Path, keygen: &Path) -> Result<(Proc, u16), String> {
    let d = dir.path();
    let host_key = d.join("host_key");
    let user_key = d.join("user_key");
    for k in [&host_key, &user_key] {
        let k = k.to_string_lossy();
        run_ok(
            keygen,
            &["-q", "-t", "ed25519", "-N", "", "-C", "", "-f", &k],
        )?;
    }
    let public = fs::read_to_string(d.join("user_key.pub")).map_err(|e| e.to_string())?;
    let authorized = dir.write("authorized_keys", &public);
    start_on_free_port(
        "sshd",
        |port| {
            let cfg = format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {}\n\
                 AuthorizedKeysFile {}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 LogLevel INFO\n",
                host_key.display(),
                authorized.display()
            );
            let cfg_path = dir.write("sshd_config", &cfg);
            let mut c = Command::new(sshd);
            c.arg("-D").arg("-e").arg("-f").arg(cfg_path);
            Ok(c)
        },
        "Server listening on",
        "Address already in use",
    )
}

#[test]
fn ssh_through_the_tunnel() {
    let started = Instant::now();
    let [sshd, ssh, keygen] = match find_programs(["sshd", "ssh", "ssh-keygen"]) {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIP: ssh_through_the_tunnel: {why}"),
    };
    let Some(user) = current_user() else {
        return eprintln!("SKIP: ssh_through_the_tunnel: cannot tell the current user name");
    };
    let dir = TempDir::new("ssh");
    let (sshd_proc, sshd_port) = match start_sshd(&dir, &sshd, &keygen) {
        Ok(x) => x,
        Err(why) => return eprintln!("SKIP: ssh_through_the_tunnel: {why}"),
    };

    let key = dir.path().join("user_key");
    let dest = format!("{user}@127.0.0.1");
    let ssh_cmd = |port: u16, remote: &str| {
        let mut c = Command::new(&ssh);
        c.args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
            .arg(&key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
                &dest,
                remote,
            ]);
        c
    };

    // Without the tunnel first: if sshd does not let this user in (locked account, no
    // shell), that is the machine, not the tunnel.
    let direct = run(&mut ssh_cmd(sshd_port, "echo hello"), None, CMD_TIMEOUT).expect("run ssh");
    if !direct.success() || direct.stdout != b"hello\n" {
        return eprintln!(
            "SKIP: ssh_through_the_tunnel: ssh {dest} straight to sshd fails: {}\nsshd:\n{}",
            direct.describe(),
            sshd_proc.tail(40)
        );
    }

    let (server, _client, public) = tunnel_to(&dir, format!("127.0.0.1:{sshd_port}"));

    // A command.
    let t = Instant::now();
    let out = run(&mut ssh_cmd(public, "echo hello"), None, CMD_TIMEOUT).expect("run ssh");
    assert!(
        out.success(),
        "ssh echo through public port {public}: {}",
        out.describe()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    eprintln!("ssh 'echo hello' through the tunnel in {:?}", t.elapsed());

    // 100 MiB of random data up, digested on the far side.
    const N: usize = 100 * 1024 * 1024;
    let data = pattern(0x55_4d_1b, N);
    let expected = sha256_hex(&data);
    let file = dir.path().join("payload.bin");
    fs::write(&file, &data).expect("write payload");
    drop(data);
    let t = Instant::now();
    let out = run(&mut ssh_cmd(public, "sha256sum"), Some(&file), CMD_TIMEOUT).expect("run ssh");
    let elapsed = t.elapsed();
    assert!(
        out.success(),
        "ssh sha256sum of 100 MiB: {}",
        out.describe()
    );
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.split_whitespace().next(),
        Some(expected.as_str()),
        "sha256 of 100 MiB sent through ssh through the tunnel"
    );
    eprintln!(
        "100 MiB through ssh through the tunnel in {elapsed:?} ({:.0} MiB/s); test {:?}",
        100.0 / elapsed.as_secs_f64().max(1e-6),
        started.elapsed()
    );
    assert_eq!(server.count("tunnel detached"), 0, "{}", server.tail(20));
}

// ---------------------------------------------------------------------------------------
// nginx + curl
// ---------------------------------------------------------------------------------------

const INDEX: &str = "<!doctype html><title>tcp-forward</title><p>through the tunnel</p>\n";

fn start_nginx(dir: &TempDir, nginx: &Path) -> Result<(Proc, u16), String> {
    start_nginx_with(dir, nginx, "", "")
}

/// nginx serving `www` on a free loopback port, with `listen_opts` after its `listen`
/// address (`proxy_protocol`, say) and `server_body` in its `server` block.
fn start_nginx_with(
    dir: &TempDir,
    nginx: &Path,
    listen_opts: &str,
    server_body: &str,
) -> Result<(Proc, u16), String> {
    let d = dir.path().to_path_buf();
    let www = d.join("www");
    fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    start_on_free_port(
        "nginx",
        |port| {
            let user = if is_root() { "user root;\n" } else { "" };
            let p = |s: &str| d.join(s).display().to_string();
            let cfg = format!(
                "{user}worker_processes 1;\n\
                 pid {pid};\n\
                 error_log stderr notice;\n\
                 events {{ worker_connections 128; }}\n\
                 http {{\n\
                   access_log off;\n\
                   default_type application/octet-stream;\n\
                   client_body_temp_path {cb};\n\
                   proxy_temp_path {px};\n\
                   fastcgi_temp_path {fc};\n\
                   uwsgi_temp_path {uw};\n\
                   scgi_temp_path {sc};\n\
                   keepalive_requests 1000;\n\
                   keepalive_timeout 30s;\n\
                   server {{\n\
                     listen 127.0.0.1:{port} {listen_opts};\n\
                     root {www};\n\
                     {server_body}\n\
                   }}\n\
                 }}\n",
                pid = p("nginx.pid"),
                cb = p("client_body"),
                px = p("proxy"),
                fc = p("fastcgi"),
                uw = p("uwsgi"),
                sc = p("scgi"),
                www = www.display(),
            );
            let cfg_path = dir.write("nginx.conf", &cfg);
            let mut c = Command::new(nginx);
            c.arg("-p")
                .arg(&d)
                .arg("-e")
                .arg("stderr")
                .arg("-c")
                .arg(cfg_path)
                .args(["-g", "daemon off;"]);
            Ok(c)
        },
        "start worker process",
        "Address already in use",
    )
}

#[test]
fn http_through_the_tunnel() {
    let started = Instant::now();
    let [nginx, curl] = match find_programs(["nginx", "curl"]) {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIP: http_through_the_tunnel: {why}"),
    };
    let dir = TempDir::new("http");
    let www = dir.path().join("www");
    fs::create_dir_all(&www).expect("www dir");
    fs::write(www.join("index.html"), INDEX).expect("index.html");
    const BIG: usize = 20 * 1024 * 1024;
    let big = pattern(0x0b16_f11e, BIG);
    let big_sha = sha256_hex(&big);
    fs::write(www.join("big.bin"), &big).expect("big.bin");
    drop(big);

    let (_nginx, nginx_port) = match start_nginx(&dir, &nginx) {
        Ok(x) => x,
        Err(why) => return eprintln!("SKIP: http_through_the_tunnel: {why}"),
    };

    let (server, _client, public) = tunnel_to(&dir, format!("127.0.0.1:{nginx_port}"));
    let base = format!("http://127.0.0.1:{public}");
    let curl_cmd = || {
        let mut c = Command::new(&curl);
        c.args(["-q", "-s", "-S", "-f", "--max-time", "30", "--noproxy", "*"]);
        c
    };

    // The small page.
    let out = run(curl_cmd().arg(format!("{base}/")), None, CMD_TIMEOUT).expect("run curl");
    assert!(out.success(), "curl {base}/: {}", out.describe());
    assert_eq!(String::from_utf8_lossy(&out.stdout), INDEX);

    // The 20 MiB file.
    let t = Instant::now();
    let out = run(curl_cmd().arg(format!("{base}/big.bin")), None, CMD_TIMEOUT).expect("curl");
    let elapsed = t.elapsed();
    assert!(out.success(), "curl {base}/big.bin: {}", out.describe());
    assert_eq!(
        out.stdout.len(),
        BIG,
        "length of big.bin through the tunnel"
    );
    assert_eq!(sha256_hex(&out.stdout), big_sha, "sha256 of big.bin");
    eprintln!("20 MiB over HTTP through the tunnel in {elapsed:?}");

    // 100 sequential requests on one keep-alive connection.
    const REQUESTS: usize = 100;
    let mut c = curl_cmd();
    c.args(["-w", "%{http_code} %{num_connects} %{size_download}\\n"]);
    for _ in 0..REQUESTS {
        c.args(["-o", "/dev/null"])
            .arg(format!("{base}/index.html"));
    }
    let t = Instant::now();
    let out = run(&mut c, None, CMD_TIMEOUT).expect("run curl");
    let elapsed = t.elapsed();
    assert!(out.success(), "curl x{REQUESTS}: {}", out.describe());
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), REQUESTS, "one status line per request:\n{text}");
    let mut connects = 0usize;
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), 3, "request {i}: {r:?}");
        assert_eq!(r[0], "200", "request {i}: status");
        assert_eq!(r[2], INDEX.len().to_string(), "request {i}: body size");
        connects += r[1].parse::<usize>().unwrap_or(usize::MAX / 2);
    }
    assert_eq!(
        connects, 1,
        "{REQUESTS} requests should share one keep-alive connection"
    );
    eprintln!(
        "{REQUESTS} keep-alive requests in {elapsed:?}; test {:?}",
        started.elapsed()
    );
    assert_eq!(server.count("tunnel detached"), 0, "{}", server.tail(20));
}

/// The README's locked-down deployment with nginx as the inner web server: the port has a
/// source allow-list, a limit and PROXY headers, the client may dial nginx only, and nginx
/// (`listen ... proxy_protocol`, `real_ip_header proxy_protocol`) logs and answers with the
/// visitor's own address, 127.0.0.2, rather than the client's; v1 and then, after a reload,
/// v2. A visitor from outside the list gets no answer.
#[test]
fn nginx_sees_the_visitors_address_through_proxy_protocol() {
    let [nginx, curl] = match find_programs(["nginx", "curl"]) {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIP: nginx_sees_the_visitors_address: {why}"),
    };
    let dir = TempDir::new("http-proxy");
    fs::create_dir_all(dir.path().join("www")).expect("www dir");
    let body = "set_real_ip_from 127.0.0.1; real_ip_header proxy_protocol; \
                location = /ip { default_type text/plain; \
                return 200 \"$remote_addr $proxy_protocol_addr\\n\"; }";
    let (_nginx, nginx_port) = match start_nginx_with(&dir, &nginx, "proxy_protocol", body) {
        Ok(x) => x,
        Err(why) => return eprintln!("SKIP: nginx_sees_the_visitors_address: {why}"),
    };
    let mut setup = ServerSetup::new();
    let public = setup.map(format!("127.0.0.1:{nginx_port}"), None);
    let mapper = |version: &str| {
        vec![
            "[ALLOW]".to_string(),
            format!("{public}=127.0.0.2"),
            "[PROXY]".to_string(),
            format!("{public}={version}"),
            "[LIMIT]".to_string(),
            format!("{public}=50mbit"),
        ]
    };
    setup.mapper_extra = mapper("v1");
    let server = setup.start(&dir);
    let allow = format!("127.0.0.1:{nginx_port}");
    let _client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            extra: vec!["--allow", &allow],
            ..ClientOpts::default()
        },
    );
    let get_ip = |from: &str| {
        let mut c = Command::new(&curl);
        c.args(["-q", "-s", "-S", "-f", "--max-time", "10", "--noproxy", "*"])
            .args(["--interface", from])
            .arg(format!("http://127.0.0.1:{public}/ip"));
        run(&mut c, None, CMD_TIMEOUT).expect("run curl")
    };

    let out = get_ip("127.0.0.2");
    assert!(out.success(), "curl from 127.0.0.2: {}", out.describe());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "127.0.0.2 127.0.0.2\n"
    );
    let out = get_ip("127.0.0.1");
    assert!(
        !out.success(),
        "a visitor outside [ALLOW] was answered: {}",
        out.describe()
    );
    assert!(out.stdout.is_empty());

    setup.mapper_extra = mapper("v2");
    setup.write(&dir);
    server.signal(libc::SIGHUP);
    server.wait_for_line("reload: 0 port(s) added, 0 removed, 1 changed", READY);
    let out = get_ip("127.0.0.2");
    assert!(
        out.success(),
        "curl after the reload to v2: {}",
        out.describe()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "127.0.0.2 127.0.0.2\n"
    );
}

// ---------------------------------------------------------------------------------------
// dnsmasq + dig: DNS through a UDP mapping
// ---------------------------------------------------------------------------------------

/// The name dnsmasq answers for, and its address.
const DNS_NAME: &str = "www.tunnel.test";
const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

/// dnsmasq answering on 127.0.0.1 (a free port, UDP and TCP) from a local zone only.
fn start_dnsmasq(dir: &TempDir, dnsmasq: &Path) -> Result<(Proc, u16), String> {
    let pid_file = dir.path().join("dnsmasq.pid");
    start_on_free_port(
        "dnsmasq",
        |port| {
            let mut c = Command::new(dnsmasq);
            c.args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--address=/tunnel.test/10.1.2.3",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", pid_file.display()));
            if is_root() {
                // Rather than drop to "nobody", who may not read the temp dir.
                c.arg("--user=root");
            }
            Ok(c)
        },
        "started, version",
        "Address already in use",
    )
}

/// A DNS query for `name`'s A record, with `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    // Recursion desired; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    // The root; type A, class IN.
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The addresses of the A records in the answer section of reply `r` to query `q`.
fn dns_answers(q: &[u8], r: &[u8]) -> Result<Vec<Ipv4Addr>, String> {
    if r.len() < q.len() || r[..2] != q[..2] {
        return Err(format!("not an answer to the query: {r:?}"));
    }
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode}"));
    }
    let count = u16::from_be_bytes([r[6], r[7]]);
    // The question comes back as it was asked; the answers follow it.
    let mut at = q.len();
    let mut out = Vec::new();
    for _ in 0..count {
        // A compressed name (a pointer) or a full one.
        if r.get(at).is_some_and(|b| b & 0xc0 == 0xc0) {
            at += 2;
        } else {
            while let Some(&len) = r.get(at) {
                at += 1 + len as usize;
                if len == 0 {
                    break;
                }
            }
        }
        let head = r.get(at..at + 10).ok_or("a short answer")?;
        let (kind, len) = (
            u16::from_be_bytes([head[0], head[1]]),
            u16::from_be_bytes([head[8], head[9]]) as usize,
        );
        let data = r.get(at + 10..at + 10 + len).ok_or("a short record")?;
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(out)
}

#[test]
fn dns_through_a_udp_mapping() {
    let Some(dnsmasq) = find_program("dnsmasq") else {
        return eprintln!("SKIP: dns_through_a_udp_mapping: dnsmasq (dnsmasq-base) not found");
    };
    let dir = TempDir::new("dns");
    let (dns, dns_port) = match start_dnsmasq(&dir, &dnsmasq) {
        Ok(x) => x,
        Err(why) => return eprintln!("SKIP: dns_through_a_udp_mapping: {why}"),
    };
    let mut setup = ServerSetup::new();
    let public = free_udp_port();
    setup.mapper_extra.push("[UDP]".into());
    setup
        .mapper_extra
        .push(format!("{public}=127.0.0.1:{dns_port}"));
    let server = setup.start(&dir);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());

    // A query of our own, sent again on a read timeout (loopback may drop one).
    let v = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    v.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("a read timeout");
    let q = dns_query(0x7f01, DNS_NAME);
    let mut buf = [0u8; 1500];
    let reply = (0..5)
        .find_map(|_| {
            v.send_to(&q, ("127.0.0.1", public))
                .expect("send the query");
            v.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
        })
        .unwrap_or_else(|| panic!("no DNS answer through port {public}:\n{}", dns.tail(20)));
    let answers = dns_answers(&q, &reply).unwrap_or_else(|e| panic!("the DNS answer: {e}"));
    assert_eq!(answers, [DNS_ADDR], "A records of {DNS_NAME}");

    // dig, when installed.
    let Some(dig) = find_program("dig") else {
        return eprintln!("SKIP: dns_through_a_udp_mapping: dig (dnsutils) not found");
    };
    let port = public.to_string();
    let dig_query = |query: &[&str]| {
        let mut cmd = Command::new(&dig);
        cmd.args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=3"])
            .args(query);
        run(&mut cmd, None, CMD_TIMEOUT).expect("run dig")
    };
    let out = dig_query(&[DNS_NAME, "A", "+short"]);
    assert!(out.success(), "dig: {}", out.describe());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        DNS_ADDR.to_string(),
        "dig's answer for {DNS_NAME} through the UDP mapping"
    );
    // A name outside the zone: dnsmasq has no upstream, so it refuses, through the tunnel too.
    let out = dig_query(&["example.org"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: REFUSED"), "dig example.org:\n{text}");
    assert_eq!(server.count("tunnel detached"), 0, "{}", server.tail(20));
}

// ---------------------------------------------------------------------------------------
// Network namespaces: inner --- public --- outside
// ---------------------------------------------------------------------------------------

/// Namespaces created by this test; deleted on drop (also on panic).
struct Namespaces {
    ip: PathBuf,
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) -> Result<(), String> {
        run_ok(&self.ip, &["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            if let Err(e) = run_ok(&self.ip, &["netns", "del", n]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Move the calling thread into the named network namespace (this thread only).
fn enter_netns(name: &str) -> io::Result<()> {
    let f = File::open(Path::new("/run/netns").join(name))?;
    // SAFETY: setns(2) with a valid namespace fd; CLONE_NEWNET affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Run `f` on a fresh thread inside the named namespace.
fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let name = name.to_string();
    thread::spawn(move || -> io::Result<T> {
        enter_netns(&name)?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
}

/// An echo server on a thread inside a namespace; stopped and joined on drop.
struct NetnsEcho {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl NetnsEcho {
    fn start(ns: &str, bind: SocketAddr) -> io::Result<NetnsEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let ns = ns.to_string();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let handle = thread::spawn(move || {
            let listener = match enter_netns(&ns)
                .and_then(|()| TcpListener::bind(bind))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut workers = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        let stop3 = stop2.clone();
                        workers.push(thread::spawn(move || echo_until_eof(s, &stop3)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| Err(io::Error::other("echo thread did not report")));
        let echo = NetnsEcho {
            stop,
            accepted,
            handle: Some(handle),
        };
        ready.map(|()| echo)
    }
}

fn echo_until_eof(s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(15)));
    let mut s = s;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    }
}

impl Drop for NetnsEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Build the topology; Err is a skip reason.
fn build_topology(ns: &mut Namespaces, net: u8) -> Result<[String; 3], String> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let id = format!("tf{}x{n}", std::process::id());
    let [inner, public, outside] = ["in", "pub", "out"].map(|s| format!("{id}-{s}"));
    for name in [&inner, &public, &outside] {
        ns.add(name)?;
    }
    let ip = ns.ip.clone();
    let ipn = |name: &str, args: &str| -> Result<(), String> {
        let mut v = vec!["-n", name];
        v.extend(args.split(' '));
        run_ok(&ip, &v).map(|_| ())
    };
    // inner <-> public: 10.N.1.0/24, outside <-> public: 10.N.2.0/24.
    ipn(
        &inner,
        &format!("link add vin type veth peer name vpin netns {public}"),
    )?;
    ipn(
        &outside,
        &format!("link add vout type veth peer name vpout netns {public}"),
    )?;
    ipn(&inner, &format!("addr add 10.{net}.1.1/24 dev vin"))?;
    ipn(&public, &format!("addr add 10.{net}.1.2/24 dev vpin"))?;
    ipn(&outside, &format!("addr add 10.{net}.2.1/24 dev vout"))?;
    ipn(&public, &format!("addr add 10.{net}.2.2/24 dev vpout"))?;
    for (name, dev) in [
        (&inner, "vin"),
        (&public, "vpin"),
        (&public, "vpout"),
        (&outside, "vout"),
    ] {
        ipn(name, &format!("link set {dev} up"))?;
    }
    for name in [&inner, &public, &outside] {
        ipn(name, "link set lo up")?;
    }
    // Both ends route everything via public; public does not forward, so outside's packets
    // for inner go nowhere.
    ipn(&inner, &format!("route add default via 10.{net}.1.2"))?;
    ipn(&outside, &format!("route add default via 10.{net}.2.2"))?;
    in_netns(&public, || {
        fs::write("/proc/sys/net/ipv4/ip_forward", "0\n")
            .and_then(|()| fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
    })
    .and_then(|r| r)
    .map_err(|e| format!("ip_forward in {public}: {e}"))
    .and_then(|v| {
        if v.trim() == "0" {
            Ok(())
        } else {
            Err(format!("ip_forward in {public} is {}", v.trim()))
        }
    })?;
    Ok([inner, public, outside])
}

#[test]
fn netns_topology() {
    let started = Instant::now();
    if !is_root() {
        return eprintln!("SKIP: netns_topology: not root");
    }
    let Some(ip) = find_program("ip") else {
        return eprintln!("SKIP: netns_topology: ip (iproute2) not found");
    };
    let mut ns = Namespaces {
        ip: ip.clone(),
        names: Vec::new(),
    };
    // Addresses live only inside our own namespaces; the second octet varies anyway.
    let net = 200 + (std::process::id() % 50) as u8;
    let [inner, public, outside] = match build_topology(&mut ns, net) {
        Ok(x) => x,
        Err(why) => return eprintln!("SKIP: netns_topology: {why}"),
    };
    let inner_ip = Ipv4Addr::new(10, net, 1, 1);
    let public_ip_in = Ipv4Addr::new(10, net, 1, 2);
    let public_ip_out = Ipv4Addr::new(10, net, 2, 2);
    const ECHO_PORT: u16 = 7000;
    const INNER_PORT: u16 = 7001;
    const PUBLIC_PORT: u16 = 8022;
    let echo_addr = SocketAddr::V4(SocketAddrV4::new(inner_ip, ECHO_PORT));

    let echo = NetnsEcho::start(&inner, echo_addr).expect("echo server in inner");

    // Sanity: public reaches inner directly.
    let direct = in_netns(&public, move || {
        TcpStream::connect_timeout(&echo_addr, Duration::from_secs(2)).map(|_| ())
    })
    .and_then(|r| r);
    assert!(
        direct.is_ok(),
        "public cannot reach inner {echo_addr}: {direct:?}"
    );

    // Outside does not reach inner.
    let t = Instant::now();
    let blocked = in_netns(&outside, move || {
        TcpStream::connect_timeout(&echo_addr, Duration::from_secs(2)).map(|_| ())
    })
    .expect("thread in outside");
    assert!(
        blocked.is_err(),
        "outside connected to inner {echo_addr} directly"
    );
    eprintln!(
        "outside -> inner {echo_addr} directly: {blocked:?} after {:?}",
        t.elapsed()
    );

    // tcp-forward server in public, client in inner.
    let dir = TempDir::new("netns");
    let cfg = dir.write(
        "server.cfg",
        &format!("[DEFAULT]\nINNER_PORT={INNER_PORT}\nBIND_ADDR=0.0.0.0\nLOG_LEVEL=DEBUG\n"),
    );
    dir.write(
        "port_mapper.cfg",
        &format!("[MAPPER]\n{PUBLIC_PORT}={echo_addr}\n"),
    );
    let server = spawn_cmd(
        "server",
        Command::new(&ip)
            .args(["netns", "exec", &public, BIN, "server"])
            .arg(&cfg),
    )
    .expect("spawn server in public");
    server.wait_for_line("listening for clients on", READY);
    server.wait_for_line(&format!("public port {PUBLIC_PORT} "), READY);
    let client = spawn_cmd(
        "client",
        Command::new(&ip).args([
            "netns",
            "exec",
            &inner,
            BIN,
            "client",
            &public_ip_in.to_string(),
            &INNER_PORT.to_string(),
        ]),
    )
    .expect("spawn client in inner");
    client.wait_for_line("tunnel up", READY);
    server.wait_for_line("tunnel attached", READY);

    // From outside, through public's port, to inner's echo.
    let visitor = SocketAddr::V4(SocketAddrV4::new(public_ip_out, PUBLIC_PORT));
    let result = in_netns(&outside, move || -> io::Result<usize> {
        let mut total = 0;
        for (i, size) in [1usize, 4096, 16 * 1024].into_iter().enumerate() {
            let s = TcpStream::connect_timeout(&visitor, Duration::from_secs(2))?;
            let mut s = with_timeouts(s);
            echo_on(&mut s, &pattern(0x0e70 + i as u64, size))?;
            total += size;
        }
        Ok(total)
    })
    .and_then(|r| r);
    match result {
        Ok(total) => eprintln!("outside -> {visitor} -> inner echo: {total} bytes echoed"),
        Err(e) => panic!(
            "echo from outside through {visitor}: {e}\nserver:\n{}\nclient:\n{}",
            server.tail(40),
            client.tail(40)
        ),
    }
    assert!(echo.accepted.load(Ordering::SeqCst) >= 4);
    assert_eq!(server.count("tunnel detached"), 0, "{}", server.tail(40));
    drop(client);
    drop(server);
    drop(echo);
    drop(ns);
    eprintln!("netns_topology: {:?}", started.elapsed());
}
