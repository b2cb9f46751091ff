//! The client's allow-list (`--allow`, `ALLOW`): targets outside it are refused with
//! OPEN_FAIL `target not allowed by the client`, never dialed and, for names no entry could
//! admit, never resolved; names admitted by CIDR entries are resolved and every address
//! checked; `*` admits everything; no list admits everything and says so once.

mod common;

use std::time::Duration;

use common::*;

const NOT_ALLOWED: &str = "target not allowed by the client";

/// A server with TLS off (these tests are about the client's policy, not the tunnel).
fn server_mapping(dir: &TempDir, targets: &[String]) -> (Proc, ServerSetup, Vec<u16>) {
    let mut setup = ServerSetup::new().tls_off();
    let ports = targets.iter().map(|t| setup.map(t, None)).collect();
    let server = setup.start(dir);
    (server, setup, ports)
}

fn client_with<'a>(extra: Vec<&'a str>) -> ClientOpts<'a> {
    ClientOpts {
        tls_off: true,
        extra,
        ..ClientOpts::default()
    }
}

/// A visitor on `public` is closed, the client logs the refusal of `target` at WARN and the
/// server the OPEN_FAIL reason.
fn assert_refused(server: &Proc, client: &Proc, public: u16, target: &str) {
    let before = server.count(NOT_ALLOWED);
    assert_visit_closed(public, READY, &format!("a visitor to {target}"));
    let line = client.wait_for_line(&format!("refused {target}: {NOT_ALLOWED}"), READY);
    assert!(line.contains("WARN"), "not a warning: {line}");
    server.wait_for_count(NOT_ALLOWED, before + 1, READY);
}

/// Whether the client logged resolving `target` (at DEBUG).
fn resolved(client: &Proc, target: &str) -> bool {
    let want = format!("resolving {target}");
    client.lines().iter().any(|l| l.ends_with(&want))
}

#[test]
fn ip_target_outside_the_list_is_refused_and_never_dialed() {
    let dir = TempDir::new("allow-ip");
    let (allowed, denied) = (Target::echo(), Target::echo());
    let (server, setup, ports) = server_mapping(&dir, &[allowed.target(), denied.target()]);
    let list = format!("127.0.0.1:{}, 10.0.0.0/8:*", allowed.port());
    let client = attach_client(
        &server,
        setup.inner_port,
        &client_with(vec!["--allow", &list]),
    );
    client.wait_for_line(
        &format!(
            "allow-list: the server may open connections only to 127.0.0.1:{},10.0.0.0/8:*",
            allowed.port()
        ),
        READY,
    );

    assert_echo(ports[0], "an allowed target");
    assert_refused(&server, &client, ports[1], &denied.target());
    // A second visitor is refused the same way.
    assert_refused(&server, &client, ports[1], &denied.target());
    assert_eq!(denied.accepted(), 0, "the refused target was dialed");
    assert_echo(ports[0], "the allowed target after the refusals");
    assert_eq!(allowed.accepted(), 2);
}

#[test]
fn names_are_allowed_by_name_or_by_every_address() {
    let dir = TempDir::new("allow-names");
    let by_name = Target::echo();
    let by_cidr = Target::echo();
    let outside_cidr = Target::echo();
    let no_entry = Target::echo();
    let name = |t: &Target| format!("localhost:{}", t.port());
    let (server, setup, ports) = server_mapping(
        &dir,
        &[
            name(&by_name),
            name(&by_cidr),
            name(&outside_cidr),
            name(&no_entry),
        ],
    );
    // localhost may resolve to ::1 as well as 127.0.0.1: both are covered for `by_cidr`.
    let list = format!(
        "LocalHost:{},127.0.0.0/8:{p},::1/128:{p},10.0.0.0/8:{}",
        by_name.port(),
        outside_cidr.port(),
        p = by_cidr.port()
    );
    let client = attach_client(
        &server,
        setup.inner_port,
        &client_with(vec!["--allow", &list, "-v"]),
    );

    assert_echo(ports[0], "a name allowed by a NAME entry (any case)");
    assert_echo(ports[1], "a name whose every address a CIDR entry allows");
    assert!(resolved(&client, &name(&by_cidr)));

    // Resolved (a CIDR entry covers the port), but no address is in 10.0.0.0/8.
    assert_refused(&server, &client, ports[2], &name(&outside_cidr));
    assert!(resolved(&client, &name(&outside_cidr)));
    client.wait_for_line("which no entry allows", READY);
    assert_eq!(
        outside_cidr.accepted(),
        0,
        "a disallowed address was dialed"
    );

    // No entry covers the port: refused without resolving.
    assert_refused(&server, &client, ports[3], &name(&no_entry));
    assert!(
        !resolved(&client, &name(&no_entry)),
        "a name no entry could allow was resolved:\n{}",
        client.tail(40)
    );
    assert_eq!(no_entry.accepted(), 0, "a refused name was dialed");
}

#[test]
fn star_allows_everything() {
    let dir = TempDir::new("allow-star");
    let (a, b) = (Target::echo(), Target::echo());
    let (server, setup, ports) =
        server_mapping(&dir, &[a.target(), format!("localhost:{}", b.port())]);
    let client = attach_client(
        &server,
        setup.inner_port,
        &client_with(vec!["--allow", "*"]),
    );
    client.wait_for_line("allow-list: *", READY);
    assert_echo(ports[0], "an IP target under *");
    assert_echo(ports[1], "a name under *");
    assert_eq!(client.count(NOT_ALLOWED), 0);
}

#[test]
fn no_list_allows_everything_and_says_so_once() {
    let dir = TempDir::new("allow-none");
    let echo = Target::echo();
    let (server, setup, ports) = server_mapping(&dir, &[echo.target()]);
    let client = attach_client(&server, setup.inner_port, &client_with(vec![]));
    assert_echo(ports[0], "a target with no allow-list");
    let want = "no allow-list (--allow, ALLOW): the server may open connections to any host";
    let line = client.wait_for_line(want, READY);
    assert!(line.contains("INFO"), "not at INFO: {line}");
    assert_eq!(client.count(want), 1, "{}", client.tail(20));
}

#[test]
fn allow_key_in_the_config_file() {
    let dir = TempDir::new("allow-file");
    let (allowed, denied) = (Target::echo(), Target::echo());
    let (server, setup, ports) = server_mapping(&dir, &[allowed.target(), denied.target()]);
    let cfg = dir.write(
        "forward_client.cfg",
        &format!(
            "[DEFAULT]\nSERVER_IP=127.0.0.1\nSERVER_PORT={}\nTLS=off\nALLOW = 127.0.0.1:{}  # one\n",
            setup.inner_port,
            allowed.port()
        ),
    );
    let cfg = cfg.to_string_lossy().into_owned();
    let client = attach_spawned(&server, || {
        spawn("client", &["client", "--config", &cfg], &[])
    });
    assert_echo(ports[0], "a target the file's ALLOW allows");
    assert_refused(&server, &client, ports[1], &denied.target());
    assert_eq!(denied.accepted(), 0);

    // SIGHUP applies a new list to the streams opened after it; the tunnel stays up.
    let text = std::fs::read_to_string(&cfg).expect("read the client's file");
    let widened = text.replace(
        &format!("127.0.0.1:{}  # one", allowed.port()),
        &format!("127.0.0.1:{}  # both", denied.port()),
    );
    assert_ne!(text, widened);
    dir.write("forward_client.cfg", &widened);
    client.signal(libc::SIGHUP);
    client.wait_for_line("reloaded: settings changed: ALLOW", READY);
    assert_echo(ports[1], "a target the reloaded ALLOW allows");
    assert_refused(&server, &client, ports[0], &allowed.target());
    assert_eq!(client.count("tunnel up:"), 1, "{}", client.tail(20));

    // A file that does not load changes nothing.
    dir.write(
        "forward_client.cfg",
        &widened.replace("ALLOW = ", "ALLOW = 10.0.0.0/33:22,"),
    );
    client.signal(libc::SIGHUP);
    let line = client.wait_for_line("reload failed, nothing changed", READY);
    assert!(
        line.contains("forward_client.cfg") && line.contains("10.0.0.0/33"),
        "{line}"
    );
    assert_echo(ports[1], "the list before the failed reload");
}

/// Run the client with `args`, expecting exit status 2 and every string of `mentions`.
fn expect_client_config_error(args: &[&str], mentions: &[&str]) {
    let mut p = spawn("client", args, &[]);
    let status = p.wait_exit(Duration::from_secs(5));
    let log = p.log_text();
    let Some(status) = status else {
        panic!("client with a bad allow-list still running after 5 s:\n{log}");
    };
    assert_eq!(status.code(), Some(2), "exit status; stderr:\n{log}");
    for m in mentions {
        assert!(log.contains(m), "stderr should mention {m:?}:\n{log}");
    }
}

#[test]
fn bad_lists_exit_2_naming_where() {
    let port = free_port().to_string();
    expect_client_config_error(
        &["client", "127.0.0.1", &port, "--allow", "10.0.0.0/33:22"],
        &[
            "command line: --allow: ",
            "10.0.0.0/33",
            "is not a prefix length (0-32)",
        ],
    );
    expect_client_config_error(
        &["client", "127.0.0.1", &port, "--allow", "db:5-3"],
        &["command line: --allow: ", "ends before it starts"],
    );
    let dir = TempDir::new("allow-bad-file");
    let cfg = dir.write(
        "forward_client.cfg",
        &format!("[DEFAULT]\nSERVER_IP=127.0.0.1\nSERVER_PORT={port}\nALLOW=10.0.0.0/8:22,,:22\n"),
    );
    let cfg = cfg.to_string_lossy().into_owned();
    expect_client_config_error(
        &["client", "--config", &cfg],
        &[&cfg, "line 4", "ALLOW", "empty entry"],
    );
}
