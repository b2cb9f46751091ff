//! `client_from_args`: the positionals, the flags, `forward_client.cfg`, and their errors; and
//! the sample files in `etc/`, which both loaders must accept.

use super::*;

#[test]
fn client_positionals() {
    let cfg = client_from_args(&client_args(None, Some("221.10.12.34"), Some("1111"))).unwrap();
    assert_eq!(cfg.server_host, "221.10.12.34");
    assert_eq!(cfg.server_port, 1111);
    assert_eq!(cfg.tag, "default");
    assert!(cfg.token.is_none());
    assert_eq!(cfg.log_level, None);
    assert!(cfg.warnings.is_empty());

    for (ip, want) in [
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("tunnel.example.com", "tunnel.example.com"),
    ] {
        let cfg = client_from_args(&client_args(None, Some(ip), Some("1"))).unwrap();
        assert_eq!(cfg.server_host, want);
    }

    let mut args = client_args(None, Some("10.0.0.1"), Some("1111"));
    args.tag = Some("office".into());
    args.token = Some("s3cret".into());
    let cfg = client_from_args(&args).unwrap();
    assert_eq!(cfg.tag, "office");
    assert_eq!(cfg.token.unwrap().expose(), b"s3cret");
}

#[test]
fn client_cli_errors() {
    let e = client_from_args(&client_args(None, Some("10.0.0.1"), Some("abc"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"command line: server_port: "abc" is not a port (1-65535)"#
    );
    assert_eq!(e.file(), None);
    for (ip, port, want) in [
        ("", "1", "command line: server_ip: empty server address"),
        ("[nope]", "1", "command line: server_ip:"),
        ("1.2.3:4", "1", "command line: server_ip:"),
        ("bad name", "1", "command line: server_ip:"),
        ("10.0.0.1", "0", "command line: server_port:"),
        ("10.0.0.1", "65536", "command line: server_port:"),
    ] {
        let e = client_from_args(&client_args(None, Some(ip), Some(port))).unwrap_err();
        assert!(e.to_string().starts_with(want), "{ip} {port}: {e}");
    }
    let mut args = client_args(None, Some("10.0.0.1"), Some("1"));
    args.tag = Some("a b".into());
    assert!(
        client_from_args(&args)
            .unwrap_err()
            .to_string()
            .starts_with("command line: --tag: ")
    );
    args.tag = Some(String::new());
    assert!(
        client_from_args(&args)
            .unwrap_err()
            .to_string()
            .contains("--tag: empty tag")
    );
    args.tag = None;
    args.token = Some(String::new());
    assert!(
        client_from_args(&args)
            .unwrap_err()
            .to_string()
            .contains("--token: empty token")
    );
    let e = client_from_args(&client_args(None, None, None)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("command line: server_ip: missing"),
        "{e}"
    );
}

#[test]
fn client_file() {
    let s = Scratch::new("client");
    let path = s.write(
        "forward_client.cfg",
        "[default]\nserver_ip = [2001:db8::7]  # server\nSERVER_PORT=1111\nTag=office\nTOKEN=file-token\n\
         LOG_LEVEL=debug\nHEARTBEAT=30\n[MORE]\n",
    );
    let cfg = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap();
    assert_eq!(cfg.server_host, "2001:db8::7");
    assert_eq!(cfg.server_port, 1111);
    assert_eq!(cfg.tag, "office");
    assert_eq!(cfg.token.as_ref().unwrap().expose(), b"file-token");
    assert_eq!(cfg.log_level, Some(LevelFilter::Debug));
    let f = path.display().to_string();
    assert!(cfg.warnings.contains(&format!(
        "{f}: line 7: [DEFAULT] key HEARTBEAT: unknown key, ignored"
    )));
    assert!(
        cfg.warnings
            .contains(&format!("{f}: line 8: unknown section [MORE], ignored"))
    );

    let mut args = client_args(Some(path.clone()), None, None);
    args.tag = Some("lab".into());
    args.token = Some("flag-token".into());
    let cfg = client_from_args(&args).unwrap();
    assert_eq!(cfg.tag, "lab");
    assert_eq!(cfg.token.unwrap().expose(), b"flag-token");

    let defaults = s.write(
        "c2.cfg",
        "[DEFAULT]\nSERVER_IP=tunnel.example.com\nSERVER_PORT=1111\n",
    );
    let cfg = client_from_args(&client_args(Some(defaults), None, None)).unwrap();
    assert_eq!(cfg.tag, "default");
    assert!(cfg.token.is_none());
}

#[test]
fn client_file_errors() {
    let s = Scratch::new("client-err");
    for (text, line, parts) in [
        (
            "[DEFAULT]\nSERVER_PORT=1111\n",
            None,
            &["[DEFAULT] key SERVER_IP: required key is missing"][..],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\n",
            None,
            &["[DEFAULT] key SERVER_PORT: required key is missing"],
        ),
        (
            "[DEFAULT]\nSERVER_IP=\nSERVER_PORT=1\n",
            Some(2),
            &["[DEFAULT] key SERVER_IP: empty server address"],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=x\n",
            Some(3),
            &[r#"key SERVER_PORT: "x" is not a port"#],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTAG=a b\n",
            Some(4),
            &["key TAG", "whitespace"],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTOKEN=\n",
            Some(4),
            &["key TOKEN: empty token"],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nLOG_LEVEL=x\n",
            Some(4),
            &["key LOG_LEVEL"],
        ),
        (
            "[DEFAULT]\nSERVER_IP=a\nSERVER_IP=b\nSERVER_PORT=1\n",
            Some(3),
            &["key given twice"],
        ),
    ] {
        let path = s.write("forward_client.cfg", text);
        let e = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap_err();
        assert_err(&e, &path, parts);
        assert_eq!(e.line(), line, "{e}");
    }
    let missing = s.0.join("absent.cfg");
    let e = client_from_args(&client_args(Some(missing.clone()), None, None)).unwrap_err();
    assert_err(&e, &missing, &["cannot read config file", "No such file"]);
    let path = s.write("ok.cfg", "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\n");
    let e = client_from_args(&client_args(Some(path), Some("10.0.0.1"), None)).unwrap_err();
    assert!(e.to_string().starts_with("command line: --config: "), "{e}");
}

#[test]
fn sample_files_load() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
    let cfg = load_server(&etc.join("forward_server.cfg")).unwrap();
    assert_eq!(cfg.mapper_file, etc.join("port_mapper.cfg"));
    assert_eq!(cfg.inner_port, 1111);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let ssh = cfg.mappings.iter().find(|m| m.public_port == 1234).unwrap();
    assert_eq!(ssh.target.to_string(), "192.168.10.5:22");
    assert_eq!(ssh.tag, "default");

    let client = client_from_args(&client_args(
        Some(etc.join("forward_client.cfg")),
        None,
        None,
    ))
    .unwrap();
    assert_eq!(client.server_port, 1111);
    assert_eq!(client.tag, "default");
    assert!(client.warnings.is_empty(), "{:?}", client.warnings);
}

#[test]
fn client_tls_flags_and_keys() {
    let args = client_args(None, Some("tunnel.example.com"), Some("1"));
    let cfg = client_from_args(&args).unwrap();
    let tls = cfg.tls.expect("on by default");
    assert!(!tls.authenticates_server);
    assert_eq!(
        format!("{:?}", tls.server_name),
        format!("{:?}", server_name("tunnel.example.com"))
    );

    let mut args = client_args(None, Some("10.0.0.1"), Some("1"));
    args.tls = Some("OFF".into());
    assert!(client_from_args(&args).unwrap().tls.is_none());

    let fp = "ab".repeat(32);
    let mut args = client_args(None, Some("10.0.0.1"), Some("1"));
    args.fingerprint = Some(fp.clone());
    args.server_name = Some("gw.example.com".into());
    let tls = client_from_args(&args).unwrap().tls.unwrap();
    assert!(tls.authenticates_server);
    assert_eq!(
        format!("{:?}", tls.server_name),
        format!("{:?}", server_name("gw.example.com"))
    );

    // The same from a file; the flags override it.
    let s = Scratch::new("client-tls");
    let (cert, _, _) = crate::tls::write_cert_files(&s.0.join("pki"), &["x".into()]).unwrap();
    assert!(cert.exists());
    let path = s.write(
        "forward_client.cfg",
        &format!(
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTLS=on\nTLS_CA=pki/tcp-forward.crt\n\
             TLS_SERVER_NAME=x\nTLS_FINGERPRINT={fp}\n"
        ),
    );
    let cfg = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert!(cfg.tls.unwrap().authenticates_server);
    let mut args = client_args(Some(path), None, None);
    args.tls = Some("off".into());
    let e = client_from_args(&args).unwrap_err();
    assert_eq!(e.key(), Some("--ca"), "{e}");
    assert!(e.message().contains("TLS is off"), "{e}");
}

fn server_name(s: &'static str) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(s).unwrap()
}

#[test]
fn client_tls_errors() {
    let base = || client_args(None, Some("10.0.0.1"), Some("1"));
    let mut a = base();
    a.tls = Some("maybe".into());
    assert_eq!(client_from_args(&a).unwrap_err().key(), Some("--tls"));
    let mut a = base();
    a.fingerprint = Some("12:34".into());
    let e = client_from_args(&a).unwrap_err();
    assert_eq!(e.key(), Some("--fingerprint"));
    assert!(e.message().contains("64 hex digits"), "{e}");
    let mut a = base();
    a.ca = Some("/nonexistent/ca.pem".into());
    let e = client_from_args(&a).unwrap_err();
    assert_eq!(e.key(), Some("--ca"));
    assert!(
        e.message().contains("/nonexistent/ca.pem: cannot read"),
        "{e}"
    );
    let mut a = base();
    a.server_name = Some("bad name!".into());
    assert_eq!(
        client_from_args(&a).unwrap_err().key(),
        Some("--server-name")
    );

    let s = Scratch::new("client-tls-err");
    let path = s.write(
        "forward_client.cfg",
        "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTLS_CA=none.pem\n",
    );
    let e = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap_err();
    assert_err(&e, &path, &["TLS_CA", "none.pem: cannot read"]);
    let path = s.write(
        "forward_client.cfg",
        "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTLS_FINGERPRINT=zz\n",
    );
    let e = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap_err();
    assert_err(
        &e,
        &path,
        &["line 4", "TLS_FINGERPRINT", "not a SHA-256 fingerprint"],
    );
}

#[test]
fn a_server_ip_that_cannot_name_a_certificate_points_to_server_name() {
    // A resolver takes "gw-.example.com"; TLS's name rules do not.
    let args = client_args(None, Some("gw-.example.com"), Some("1"));
    let e = client_from_args(&args).unwrap_err();
    assert_eq!(e.key(), Some("server_ip"), "{e}");
    assert!(e.message().contains("--server-name"), "{e}");
    let mut args = client_args(None, Some("gw-.example.com"), Some("1"));
    args.server_name = Some("gw.example.com".into());
    assert!(client_from_args(&args).unwrap().tls.is_some());
    let mut args = client_args(None, Some("gw-.example.com"), Some("1"));
    args.tls = Some("off".into());
    assert!(client_from_args(&args).unwrap().tls.is_none());
}

#[test]
fn client_allow_list() {
    let cfg = client_from_args(&client_args(None, Some("10.0.0.1"), Some("1"))).unwrap();
    assert!(cfg.allow.is_none(), "no list unless one is given");

    let mut args = client_args(None, Some("10.0.0.1"), Some("1"));
    args.allow = Some("10.0.0.0/8:22, db.internal:5432".into());
    let allow = client_from_args(&args).unwrap().allow.unwrap();
    assert_eq!(allow.to_string(), "10.0.0.0/8:22,db.internal:5432");
    args.allow = Some("*".into());
    assert!(
        client_from_args(&args)
            .unwrap()
            .allow
            .unwrap()
            .allows_everything()
    );
    for (v, want) in [
        ("10.0.0.0/33:22", "10.0.0.0/33:22"),
        ("", "empty allow-list"),
        ("host:5-3", "ends before it starts"),
    ] {
        args.allow = Some(v.into());
        let e = client_from_args(&args).unwrap_err();
        assert!(
            e.to_string().starts_with("command line: --allow: ") && e.to_string().contains(want),
            "{v:?}: {e}"
        );
    }

    let s = Scratch::new("client-allow");
    let path = s.write(
        "forward_client.cfg",
        "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nALLOW = 192.168.0.0/16:*, [::1]:22  # lab\n",
    );
    let allow = client_from_args(&client_args(Some(path.clone()), None, None))
        .unwrap()
        .allow
        .unwrap();
    assert_eq!(allow.to_string(), "192.168.0.0/16:*,[::1]:22");
    // The flag replaces the file's list.
    let mut args = client_args(Some(path), None, None);
    args.allow = Some("db:1".into());
    let allow = client_from_args(&args).unwrap().allow.unwrap();
    assert_eq!(allow.to_string(), "db:1");

    for (text, parts) in [
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nALLOW=1.2.3.4/x:22\n",
            &["[DEFAULT] key ALLOW", "\"x\" is not a prefix length"][..],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nALLOW=\n",
            &["[DEFAULT] key ALLOW", "empty allow-list"],
        ),
        (
            "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nALLOW=db:1,,db:2\n",
            &["[DEFAULT] key ALLOW", "empty entry"],
        ),
    ] {
        let path = s.write("bad.cfg", text);
        let e = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap_err();
        assert_err(&e, &path, parts);
        assert_eq!(e.line(), Some(4), "{e}");
    }
}
