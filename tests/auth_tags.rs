//! Authentication (token by flag, environment and client config file) and tags.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-Token-7f1c";

/// Read the banner a target sends, to EOF.
fn banner(port: u16) -> String {
    let mut s = visit(port);
    let got = read_to_eof(&mut s, 1024).unwrap_or_else(|e| panic!("banner from {port}: {e}"));
    String::from_utf8_lossy(&got).into_owned()
}

fn assert_no_secret(p: &Proc) {
    assert!(
        !p.log_text().contains(TOKEN),
        "{} logged the token:\n{}",
        p.name,
        p.tail(30)
    );
}

/// Some `tunnel attached` line of the server names `tag`.
fn assert_attached_with_tag(server: &Proc, tag: &str) {
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("tunnel attached") && l.contains(tag)),
        "attach line should name tag {tag}:\n{}",
        server.tail(10)
    );
}

#[test]
fn wrong_token_refused_right_token_served() {
    let dir = TempDir::new("token");
    let (echo, setup, port) = echo_mapping();
    let setup = setup.token(TOKEN);
    let server = setup.start(&dir);
    assert_eq!(
        server.count("no TOKEN set"),
        0,
        "server warned about a missing token it has"
    );

    let wrong = spawn_client(
        setup.inner_port,
        &ClientOpts {
            token: Some("not-the-token"),
            name: Some("wrong-client"),
            ..Default::default()
        },
    );
    server.wait_for_line("authentication failed", Duration::from_secs(5));
    wrong.wait_for_line("server refused", Duration::from_secs(5));
    assert_eq!(
        server.count("tunnel attached"),
        0,
        "a wrong token attached:\n{}",
        server.tail(20)
    );
    assert_visit_closed(
        port,
        Duration::from_secs(2),
        "visitor while only a refused client runs",
    );
    assert_eq!(echo.accepted(), 0);

    // A client without any token is refused as well.
    let none = spawn_client(
        setup.inner_port,
        &ClientOpts {
            name: Some("no-token"),
            ..Default::default()
        },
    );
    none.wait_for_line("server refused", Duration::from_secs(5));

    let right = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            token: Some(TOKEN),
            ..Default::default()
        },
    );
    assert_echo(port, "client with the right token");
    assert_eq!(
        server.count("tunnel attached"),
        1,
        "only the right client attached"
    );
    for p in [&server, &wrong, &none, &right] {
        assert_no_secret(p);
    }
}

#[test]
fn token_from_environment() {
    let dir = TempDir::new("token-env");
    let (_echo, setup, port) = echo_mapping();
    let setup = setup.token(TOKEN);
    let server = setup.start(&dir);
    let client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            env_token: Some(TOKEN),
            ..Default::default()
        },
    );
    assert_echo(port, "client with TCP_FORWARD_TOKEN");
    assert_eq!(server.count("authentication failed"), 0);
    assert_no_secret(&server);
    assert_no_secret(&client);
}

#[test]
fn client_config_file_with_tag_and_token() {
    let dir = TempDir::new("client-cfg");
    let echo = Target::echo();
    let mut setup = ServerSetup::new().token(TOKEN);
    let port = setup.map(echo.target(), Some("cfgtag"));
    let server = setup.start(&dir);
    let cfg = dir.write(
        "forward_client.cfg",
        &format!(
            "[DEFAULT]\nSERVER_IP=127.0.0.1\nSERVER_PORT={}\nTAG=cfgtag\nTOKEN={TOKEN}\nLOG_LEVEL=INFO\n",
            setup.inner_port
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let client = spawn("client-cfg", &["client", "--config", &cfg], &[]);
    server.wait_for_line("tunnel attached", READY);
    assert_attached_with_tag(&server, "cfgtag");
    client.wait_for_line("tunnel up", READY);
    assert_echo(port, "client configured by --config");
}

#[test]
fn two_clients_with_different_tags_serve_their_own_ports() {
    let dir = TempDir::new("tags");
    let alpha = Target::banner("alpha");
    let beta = Target::banner("beta");
    let mut setup = ServerSetup::new();
    let p_alpha = setup.map(alpha.target(), Some("alpha"));
    let p_beta = setup.map(beta.target(), Some("beta"));
    let server = setup.start(&dir);

    let mut c_alpha = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            tag: Some("alpha"),
            name: Some("client-alpha"),
            ..Default::default()
        },
    );
    assert_attached_with_tag(&server, "alpha");
    assert_eq!(banner(p_alpha), "alpha");
    // Nobody serves tag beta yet.
    assert_visit_closed(
        p_beta,
        Duration::from_secs(2),
        "beta visitor before a beta client",
    );
    server.wait_for_line("no client for tag beta", Duration::from_secs(2));
    assert_eq!(
        beta.accepted(),
        0,
        "the alpha client must not serve beta's port"
    );

    let _c_beta = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            tag: Some("beta"),
            name: Some("client-beta"),
            ..Default::default()
        },
    );
    assert_eq!(banner(p_beta), "beta");
    assert_eq!(banner(p_alpha), "alpha");

    // Without the alpha client, alpha's port closes visitors and beta's keeps serving.
    c_alpha.kill9();
    server.wait_for_line("tunnel detached", Duration::from_secs(5));
    assert_visit_closed(
        p_alpha,
        Duration::from_secs(2),
        "alpha visitor after its client died",
    );
    server.wait_for_line("no client for tag alpha", Duration::from_secs(2));
    assert_eq!(banner(p_beta), "beta");
}

#[test]
fn two_clients_with_the_same_tag_both_serve_and_survive_one_kill() {
    let dir = TempDir::new("same-tag");
    let (_echo, setup, port) = echo_mapping();
    let server = setup.start(&dir);
    let mut c1 = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            name: Some("client-1"),
            ..Default::default()
        },
    );
    let _c2 = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            name: Some("client-2"),
            ..Default::default()
        },
    );
    assert_eq!(server.count("tunnel attached"), 2);

    // Streams held open across the kill; some of them may ride on client 1.
    let mut held: Vec<TcpStream> = (0..12).map(|_| visit(port)).collect();
    for (i, s) in held.iter_mut().enumerate() {
        echo_on(s, format!("held {i}").as_bytes())
            .unwrap_or_else(|e| panic!("held stream {i}: {e}"));
    }
    for i in 0..10u64 {
        echo_roundtrip(port, &pattern(i, 5000))
            .unwrap_or_else(|e| panic!("visitor {i} with two clients: {e}"));
    }

    c1.kill9();
    server.wait_for_line("tunnel detached", Duration::from_secs(5));
    for i in 0..20u64 {
        echo_roundtrip(port, &pattern(100 + i, 5000))
            .unwrap_or_else(|e| panic!("visitor {i} after one of two clients died: {e}"));
    }
    // Held streams either closed with their client or keep working; none may hang.
    let mut alive = 0;
    for (i, s) in held.iter_mut().enumerate() {
        if echo_on(s, b"still there?").is_ok() {
            alive += 1;
        } else {
            let r = wait_closed(s, Duration::from_secs(5));
            assert!(
                r.is_closed(),
                "held stream {i} neither works nor closes: {r:?}"
            );
        }
    }
    eprintln!(
        "{alive} of {} held streams survived the kill of one client",
        held.len()
    );
    // New connections are spread over the clients of a tag: some held streams rode on the
    // killed client, some on the survivor.
    assert!(
        alive > 0 && alive < held.len(),
        "{alive} of {} held streams survived: visitors were not spread over both clients",
        held.len()
    );
}

#[test]
fn a_client_with_a_token_does_not_serve_a_server_that_cannot_prove_it() {
    // A server without the token stands for an impostor (a hijacked name or address): it
    // accepts anyone, but cannot answer the client's nonce. The client must not serve it,
    // or the impostor could make it connect anywhere inside the private network.
    let dir = TempDir::new("server-proof");
    let (_echo, setup, port) = echo_mapping();
    let server = setup.start(&dir);
    let client = spawn_client(
        setup.inner_port,
        &ClientOpts {
            token: Some(TOKEN),
            ..Default::default()
        },
    );
    client.wait_for_line("did not prove", Duration::from_secs(5));
    assert_eq!(
        client.count("tunnel up"),
        0,
        "the client served an unproven server:\n{}",
        client.tail(10)
    );
    // The server sees the client go away, and its visitors are not carried.
    server.wait_for_line("tunnel detached", Duration::from_secs(5));
    let mut v = visit(port);
    assert_closed(
        &mut v,
        Duration::from_secs(5),
        "visitor with no proven client",
    );
    assert_no_secret(&client);
}
