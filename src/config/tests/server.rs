//! `load_server`: the server's config file and its mapping file, their defaults, every key,
//! the warnings, and each error's file, line and message.

use super::*;

#[test]
fn server_defaults() {
    let s = Scratch::new("defaults");
    let path = s.server(CFG, MAPPER);
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.cfg_file, path);
    assert_eq!(cfg.mapper_file, s.0.join("port_mapper.cfg"));
    assert_eq!(cfg.inner_port, 1111);
    assert_eq!(cfg.bind_addr, None);
    assert_eq!(cfg.log_level, None);
    assert!(cfg.token.is_none());
    assert_eq!(cfg.max_streams, 4096);
    assert_eq!(cfg.heartbeat, DEFAULT_HEARTBEAT);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.mappings.len(), 1);
    let m = &cfg.mappings[0];
    assert_eq!(m.public_port, 1234);
    assert_eq!(m.target.to_string(), "192.168.10.5:22");
    assert_eq!(m.tag, "default");
}

#[test]
fn server_all_keys_case_insensitive_and_comments() {
    let s = Scratch::new("keys");
    let path = s.server(
        "; server\n[default]\ninner_port = 1111  # clients\n  Log_Level=debug\nToken=a#b;c  ; secret\n\
         bind_addr=[::]\nmax_streams=1000000\nheartbeat=2.5\n",
        "# map\n[mapper]\n2000=db.internal:5432   # db\n1234=192.168.10.5:22 ; ssh\n\
         3000 = [2001:db8::5]:80\n[Tag]\n2000=office\n\n",
    );
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.inner_port, 1111);
    assert_eq!(cfg.log_level, Some(LevelFilter::Debug));
    assert_eq!(cfg.token.as_ref().unwrap().expose(), b"a#b;c");
    assert_eq!(cfg.bind_addr, Some("::".parse::<IpAddr>().unwrap()));
    assert_eq!(cfg.max_streams, 1_000_000);
    assert_eq!(cfg.heartbeat, std::time::Duration::from_millis(2500));
    let got: Vec<(u16, String, &str)> = cfg
        .mappings
        .iter()
        .map(|m| (m.public_port, m.target.to_string(), m.tag.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1234, "192.168.10.5:22".to_string(), "default"),
            (2000, "db.internal:5432".to_string(), "office"),
            (3000, "[2001:db8::5]:80".to_string(), "default"),
        ]
    );
    assert_eq!(
        cfg.mappings[2].target.host,
        Host::Ip("2001:db8::5".parse().unwrap())
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn server_keys_without_header_and_crlf_bom() {
    let s = Scratch::new("general");
    let path = s.server(
        "\u{feff}INNER_PORT=1111\r\nLOG_LEVEL=WARNING\r\n",
        "[MAPPER]\r\n1234=10.0.0.1:22\r\n",
    );
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.inner_port, 1111);
    assert_eq!(cfg.log_level, Some(LevelFilter::Warn));
    assert_eq!(cfg.mappings[0].target.to_string(), "10.0.0.1:22");
}

#[test]
fn outer_ports_file_relative_and_absolute() {
    let s = Scratch::new("outer");
    s.write("maps/ports.cfg", "[MAPPER]\n1234=10.0.0.1:22\n");
    let path = s.write(
        "forward_server.cfg",
        "[DEFAULT]\nINNER_PORT=1111\nOUTER_PORTS_FILE=maps/ports.cfg\n",
    );
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.mapper_file, s.0.join("maps/ports.cfg"));
    assert_eq!(cfg.mappings.len(), 1);

    let abs = s.write("elsewhere.cfg", "[MAPPER]\n5555=10.0.0.2:80\n");
    let text = format!(
        "[DEFAULT]\nINNER_PORT=1111\nOUTER_PORTS_FILE={}\n",
        abs.display()
    );
    let path = s.write("sub/forward_server.cfg", &text);
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.mapper_file, abs);
    assert_eq!(cfg.mappings[0].public_port, 5555);
}

#[test]
fn server_warnings() {
    let s = Scratch::new("warn");
    let path = s.server(
        "[DEFAULT]\nINNER_PORT=1111\nBANDWIDTH=10\nREST_PORT=8080\nAPI_TOKEN=x\nuser_file=u\nFOO=1\n[EXTRA]\nA=1\n[MAPPER]\n",
        "[MAPPER]\n[OTHER]\nx=1\n",
    );
    let cfg = load_server(&path).unwrap();
    let f = path.display().to_string();
    let w = &cfg.warnings;
    let has = |needle: &str| w.iter().any(|l| l.contains(needle));
    assert!(!has("BANDWIDTH"), "{w:?}");
    assert_eq!(
        cfg.default_limit.map(|r| r.bits_per_sec()),
        Some(10_000_000)
    );
    assert!(
        has(&format!(
            "{f}: line 4: [DEFAULT] key REST_PORT: not supported"
        )),
        "{w:?}"
    );
    assert!(
        has(&format!(
            "{f}: line 5: [DEFAULT] key API_TOKEN: not supported"
        )),
        "{w:?}"
    );
    assert!(
        has(&format!(
            "{f}: line 6: [DEFAULT] key user_file: not supported"
        )),
        "{w:?}"
    );
    assert!(
        has(&format!(
            "{f}: line 7: [DEFAULT] key FOO: unknown key, ignored"
        )),
        "{w:?}"
    );
    assert!(
        has(&format!("{f}: line 8: unknown section [EXTRA], ignored")),
        "{w:?}"
    );
    assert!(
        has(&format!(
            "{f}: line 10: section [MAPPER] belongs in the port mapping file"
        )),
        "{w:?}"
    );
    let m = s.0.join("port_mapper.cfg").display().to_string();
    assert!(
        has(&format!("{m}: line 2: unknown section [OTHER]")),
        "{w:?}"
    );
    assert!(
        has(&format!("{m}: no port mappings: nothing will be published")),
        "{w:?}"
    );
    assert!(cfg.mappings.is_empty());

    let s = Scratch::new("warn-empty");
    let path = s.server(CFG, "# nothing yet\n");
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0].ends_with("port_mapper.cfg: no port mappings: nothing will be published")
    );

    let s = Scratch::new("warn-general");
    let path = s.server(CFG, "1234=10.0.0.1:22\n");
    let cfg = load_server(&path).unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|l| l.contains("line 1: key 1234: key outside a section"))
    );
}

#[test]
fn missing_files() {
    let s = Scratch::new("missing");
    let cfg = s.0.join("nope.cfg");
    let e = load_server(&cfg).unwrap_err();
    assert_err(
        &e,
        &cfg,
        &["cannot read config file", "No such file or directory"],
    );

    let path = s.write("forward_server.cfg", CFG);
    let e = load_server(&path).unwrap_err();
    assert_err(
        &e,
        &s.0.join("port_mapper.cfg"),
        &["cannot read port mapping file", "No such file"],
    );
}

#[test]
fn server_cfg_errors() {
    for (cfg, line, parts) in [
        (
            "[DEFAULT]\nLOG_LEVEL=INFO\n",
            None,
            &["[DEFAULT] key INNER_PORT: required key is missing"][..],
        ),
        (
            "[DEFAULT]\nINNER_PORT=abc\n",
            Some(2),
            &[r#"[DEFAULT] key INNER_PORT: "abc" is not a port (1-65535)"#],
        ),
        ("[DEFAULT]\nINNER_PORT=0\n", Some(2), &["is not a port"]),
        ("[DEFAULT]\nINNER_PORT=65536\n", Some(2), &["is not a port"]),
        (
            "[DEFAULT]\n\nINNER_PORT=1\ninner_port=2\n",
            Some(4),
            &["key given twice (first on line 3)"],
        ),
        (
            "INNER_PORT=1\n[DEFAULT]\nINNER_PORT=2\n",
            Some(3),
            &["key given twice (first on line 1)"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nLOG_LEVEL=LOUD\n",
            Some(3),
            &["key LOG_LEVEL", "is not a log level"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nTOKEN=\n",
            Some(3),
            &["key TOKEN: empty token"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nTOKEN= # comment\n",
            Some(3),
            &["key TOKEN: empty token"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nBIND_ADDR=localhost\n",
            Some(3),
            &["key BIND_ADDR", "not an IP"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nMAX_STREAMS=0\n",
            Some(3),
            &["key MAX_STREAMS", "1 to 1000000"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nMAX_STREAMS=1000001\n",
            Some(3),
            &["key MAX_STREAMS"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nMAX_STREAMS=many\n",
            Some(3),
            &["key MAX_STREAMS"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nHEARTBEAT=0.01\n",
            Some(3),
            &["key HEARTBEAT", "0.1 to 3600"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nOUTER_PORTS_FILE=\n",
            Some(3),
            &["key OUTER_PORTS_FILE: empty"],
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\ngarbage\n",
            Some(3),
            &["expected key=value or [section]"],
        ),
        (
            "[DEFAULT\nINNER_PORT=1111\n",
            Some(1),
            &["does not end with ']'"],
        ),
        ("[]\nINNER_PORT=1111\n", Some(1), &["bad section header"]),
        ("[DEFAULT]\n=1111\n", Some(2), &["missing key"]),
        (
            "[DEFAULT]\nINNER_PORT=1111\nTOKEN=abc\\\n",
            Some(3),
            &["line continuation"],
        ),
    ] {
        let (s, e) = server_err(cfg, MAPPER);
        assert_err(&e, &s.0.join("forward_server.cfg"), parts);
        assert_eq!(e.line(), line, "{e}");
        if let Some(l) = line {
            assert!(e.to_string().contains(&format!("line {l}: ")), "{e}");
        }
    }
}

/// Check that `mapper` fails to load, on line `line` of the mapping file, with each of `parts`.
fn mapper_err_at(mapper: &str, line: usize, parts: &[&str]) {
    let (s, e) = server_err(CFG, mapper);
    assert_err(&e, &s.0.join("port_mapper.cfg"), parts);
    assert_eq!(e.line(), Some(line), "{e}");
    assert!(e.to_string().contains(&format!("line {line}: ")), "{e}");
}

#[test]
fn mapper_errors() {
    for (mapper, line, parts) in [
        (
            "[MAPPER]\n1234=10.0.0.1\n",
            2,
            &[r#"[MAPPER] key 1234: target "10.0.0.1" has no port"#][..],
        ),
        (
            "[MAPPER]\nssh=10.0.0.1:22\n",
            2,
            &[r#"[MAPPER] key ssh: public port "ssh" is not a port (1-65535)"#],
        ),
        (
            "[MAPPER]\n0=10.0.0.1:22\n",
            2,
            &["[MAPPER] key 0: public port"],
        ),
        (
            "[MAPPER]\n65536=10.0.0.1:22\n",
            2,
            &["[MAPPER] key 65536: public port"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:99999\n",
            2,
            &["[MAPPER] key 1234", "is not a port"],
        ),
        (
            "[MAPPER]\n1234=bad host:22\n",
            2,
            &["[MAPPER] key 1234", "not allowed"],
        ),
        (
            "[MAPPER]\n4444=192.168.105:22\n",
            2,
            &["[MAPPER] key 4444", "not a valid IPv4 address"],
        ),
        (
            "[MAPPER]\n1234=::1:22\n",
            2,
            &["[MAPPER] key 1234", "brackets"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n\n1234=10.0.0.2:22\n",
            4,
            &["public port 1234 is mapped twice (first on line 2)"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n01234=10.0.0.2:22\n",
            3,
            &["mapped twice (first on line 2)"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1=x\n[MAPPER]\n1234=10.0.0.2:22\n",
            6,
            &["mapped twice (first on line 2)"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[MAPPER]\n1234=10.0.0.2:22\n",
            4,
            &["mapped twice (first on line 2)"],
        ),
        (
            "[MAPPER]\n1111=10.0.0.1:22\n",
            2,
            &["[MAPPER] key 1111: public port 1111 is the INNER_PORT of"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n4321=office\n",
            4,
            &["[TAG] key 4321: port 4321 has no [MAPPER] or [UDP] entry"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=\n",
            4,
            &["[TAG] key 1234: empty tag"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=  # none\n",
            4,
            &["[TAG] key 1234: empty tag"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=my office\n",
            4,
            &["[TAG] key 1234", "whitespace"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=a\n1234=b\n",
            5,
            &["port 1234 is tagged twice (first on line 4)"],
        ),
        (
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\nx=a\n",
            4,
            &["[TAG] key x: public port \"x\""],
        ),
        ("[MAPPER]\n1234 10.0.0.1\n", 2, &["expected key=value"]),
    ] {
        mapper_err_at(mapper, line, parts);
    }
    let long = format!(
        "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234={}\n",
        "t".repeat(65)
    );
    let (_s, e) = server_err(CFG, &long);
    assert!(e.to_string().contains("longer than 64 bytes"), "{e}");
    let ok = format!(
        "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234={}\n",
        "t".repeat(64)
    );
    let s = Scratch::new("tag64");
    assert_eq!(
        load_server(&s.server(CFG, &ok)).unwrap().mappings[0]
            .tag
            .len(),
        64
    );
}

#[test]
fn exact_brief_message() {
    let (s, e) = server_err(CFG, "[MAPPER]\n1234=10.0.0.1\n");
    let file = s.0.join("port_mapper.cfg");
    assert_eq!(
        e.to_string(),
        format!(
            r#"{}: line 2: [MAPPER] key 1234: target "10.0.0.1" has no port"#,
            file.display()
        )
    );
}

#[test]
fn server_tls_keys() {
    let s = Scratch::new("tls");
    let cfg = load_server(&s.server(CFG, MAPPER)).unwrap();
    assert!(
        matches!(cfg.tls, ServerTlsSetting::SelfSigned),
        "on by default"
    );
    let off = load_server(&s.server("[DEFAULT]\nINNER_PORT=1\nTLS = Off\n", MAPPER)).unwrap();
    assert!(matches!(off.tls, ServerTlsSetting::Off));

    // The files `tcp-forward cert` writes, named relative to the config file.
    let (cert, key, fp) = crate::tls::write_cert_files(&s.0.join("pki"), &["x".into()]).unwrap();
    assert!(cert.starts_with(&s.0) && key.starts_with(&s.0));
    let text =
        "[DEFAULT]\nINNER_PORT=1\nTLS_CERT=pki/tcp-forward.crt\nTLS_KEY=pki/tcp-forward.key\n";
    let cfg = load_server(&s.server(text, MAPPER)).unwrap();
    match &cfg.tls {
        ServerTlsSetting::Files(t) => assert_eq!(t.fingerprint, fp),
        other => panic!("{other:?}"),
    }
    // With TLS off they are not loaded, and that is said.
    let text = "[DEFAULT]\nINNER_PORT=1\nTLS=off\nTLS_CERT=nowhere.crt\n";
    let cfg = load_server(&s.server(text, MAPPER)).unwrap();
    assert!(
        cfg.warnings.iter().any(|w| w.contains("TLS is off")),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn server_tls_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "TLS=maybe\n",
            &["line 3", "TLS", "\"maybe\" is not on or off"],
        ),
        ("TLS_CERT=a.crt\n", &["TLS_CERT", "TLS_KEY is missing"]),
        ("TLS_KEY=a.key\n", &["TLS_KEY", "TLS_CERT is missing"]),
        ("TLS_CERT=\nTLS_KEY=k\n", &["TLS_CERT", "empty file name"]),
        (
            "TLS_CERT=missing.crt\nTLS_KEY=missing.key\n",
            &["TLS_CERT", "missing.crt: cannot read"],
        ),
    ];
    for (lines, parts) in cases {
        let (s, e) = server_err(&format!("[DEFAULT]\nINNER_PORT=1\n{lines}"), MAPPER);
        assert_err(&e, &s.0.join("forward_server.cfg"), parts);
    }
    // A key file that holds no key, and a certificate file that holds a key.
    let s = Scratch::new("tls-bad");
    let (cert, key, _) = crate::tls::write_cert_files(&s.0, &["x".into()]).unwrap();
    let garbage = s.write("garbage.pem", "not a key\n");
    let text = format!(
        "[DEFAULT]\nINNER_PORT=1\nTLS_CERT={}\nTLS_KEY={}\n",
        cert.display(),
        garbage.display()
    );
    let e = load_server(&s.server(&text, MAPPER)).unwrap_err();
    assert_err(
        &e,
        &s.0.join("forward_server.cfg"),
        &["TLS_KEY", "garbage.pem", "not a PEM private key"],
    );
    let text = format!(
        "[DEFAULT]\nINNER_PORT=1\nTLS_CERT={}\nTLS_KEY={}\n",
        key.display(),
        key.display()
    );
    let e = load_server(&s.server(&text, MAPPER)).unwrap_err();
    assert_err(
        &e,
        &s.0.join("forward_server.cfg"),
        &["TLS_CERT", "no CERTIFICATE"],
    );
}

#[test]
fn allow_lists_and_max_per_source() {
    let s = Scratch::new("allow");
    let path = s.server(
        "[DEFAULT]\nINNER_PORT=1111\nALLOW = 10.0.0.0/8, ::1\nMAX_PER_SOURCE=3\n",
        "[MAPPER]\n1234=10.0.0.1:22\n2000=10.0.0.2:80\n[allow]\n1234=203.0.113.0/24, 2001:db8::/32\n",
    );
    let cfg = load_server(&path).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let shown = |l: &Option<Vec<Cidr>>| {
        l.as_ref()
            .map(|l| l.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    assert_eq!(shown(&cfg.client_allow).unwrap(), ["10.0.0.0/8", "::1/128"]);
    assert_eq!(cfg.max_per_source, 3);
    assert_eq!(
        shown(&cfg.mappings[0].allow).unwrap(),
        ["203.0.113.0/24", "2001:db8::/32"]
    );
    assert_eq!(cfg.mappings[1].allow, None);

    let s = Scratch::new("allow-defaults");
    let cfg = load_server(&s.server(CFG, MAPPER)).unwrap();
    assert_eq!(cfg.client_allow, None);
    assert_eq!(cfg.max_per_source, 0);
    assert_eq!(cfg.mappings[0].allow, None);
}

#[test]
fn allow_errors_name_the_line() {
    let mapper = |allow: &str| format!("[MAPPER]\n1234=10.0.0.1:22\n[ALLOW]\n{allow}\n");
    for (allow, parts) in [
        (
            "1234=10.0.0.0/33",
            &[r#"[ALLOW] key 1234: "10.0.0.0/33": "33" is not a prefix length (0-32)"#][..],
        ),
        (
            "1234=1.2.3.4/x",
            &["[ALLOW] key 1234", "not a prefix length"],
        ),
        ("1234=10.0.0.1/8", &["[ALLOW] key 1234", "10.0.0.0/8"]),
        ("1234=", &["[ALLOW] key 1234", "empty allow-list"]),
        ("1234=nobody", &["[ALLOW] key 1234", "is not an IP address"]),
        (
            "999=10.0.0.0/8",
            &["[ALLOW] key 999: port 999 has no [MAPPER] or [UDP] entry"],
        ),
        ("x=10.0.0.0/8", &["[ALLOW] key x", "not a port"]),
    ] {
        let (s, e) = server_err(CFG, &mapper(allow));
        let text = e.to_string();
        assert!(
            text.starts_with(&s.0.join("port_mapper.cfg").display().to_string()),
            "{text}"
        );
        assert_eq!(e.line(), Some(4), "{allow}: {text}");
        for p in parts {
            assert!(text.contains(p), "{allow}: {text}");
        }
    }
    let (_s, e) = server_err(
        CFG,
        "[MAPPER]\n1234=10.0.0.1:22\n[ALLOW]\n1234=10.0.0.0/8\n1234=::1\n",
    );
    assert_eq!(e.line(), Some(5));
    assert!(e.to_string().contains("two allow-lists"), "{e}");

    for (cfg, want) in [
        (
            "[DEFAULT]\nINNER_PORT=1111\nALLOW=10.0.0.0/40\n",
            "[DEFAULT] key ALLOW",
        ),
        ("[DEFAULT]\nINNER_PORT=1111\nALLOW=\n", "empty allow-list"),
        (
            "[DEFAULT]\nINNER_PORT=1111\nMAX_PER_SOURCE=-1\n",
            r#"[DEFAULT] key MAX_PER_SOURCE: "-1" is not a number of visitors"#,
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nMAX_PER_SOURCE=many\n",
            "MAX_PER_SOURCE",
        ),
        (
            "[DEFAULT]\nINNER_PORT=1111\nMAX_PER_SOURCE=4294967296\n",
            "MAX_PER_SOURCE",
        ),
    ] {
        let (s, e) = server_err(cfg, MAPPER);
        let text = e.to_string();
        assert!(
            text.starts_with(&s.0.join("forward_server.cfg").display().to_string()),
            "{text}"
        );
        assert_eq!(e.line(), Some(3), "{cfg}: {text}");
        assert!(text.contains(want), "{cfg}: {text}");
    }
}

#[test]
fn port_ranges_expand_to_one_mapping_per_port() {
    let s = Scratch::new("ranges");
    let path = s.server(
        CFG,
        "[MAPPER]\n6000-6002=10.0.0.5:7000-7002\n6100-6101=10.0.0.6\n\
         6200-6201=[2001:db8::5]:80-81\n6300-6301=[::1]\n6400-6401=db.internal\n22=10.0.0.7:22\n\
         [TAG]\n6000-6001=office\n[ALLOW]\n6100-6101=10.0.0.0/8\n6000=192.0.2.1\n",
    );
    let cfg = load_server(&path).unwrap();
    let got: Vec<(u16, String, &str, Option<usize>)> = cfg
        .mappings
        .iter()
        .map(|m| {
            let allow = m.allow.as_ref().map(Vec::len);
            (m.public_port, m.target.to_string(), m.tag.as_str(), allow)
        })
        .collect();
    let want: Vec<(u16, &str, &str, Option<usize>)> = vec![
        (22, "10.0.0.7:22", "default", None),
        (6000, "10.0.0.5:7000", "office", Some(1)),
        (6001, "10.0.0.5:7001", "office", None),
        (6002, "10.0.0.5:7002", "default", None),
        (6100, "10.0.0.6:6100", "default", Some(1)),
        (6101, "10.0.0.6:6101", "default", Some(1)),
        (6200, "[2001:db8::5]:80", "default", None),
        (6201, "[2001:db8::5]:81", "default", None),
        (6300, "[::1]:6300", "default", None),
        (6301, "[::1]:6301", "default", None),
        (6400, "db.internal:6400", "default", None),
        (6401, "db.internal:6401", "default", None),
    ];
    let want: Vec<(u16, String, &str, Option<usize>)> = want
        .into_iter()
        .map(|(p, t, tag, a)| (p, t.to_string(), tag, a))
        .collect();
    assert_eq!(got, want);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn a_range_of_thousands_of_ports_loads_quickly() {
    let s = Scratch::new("big-range");
    let path = s.server(
        CFG,
        "[MAPPER]\n20000-29999=10.0.0.5:30000-39999\n[TAG]\n20000-29999=t\n",
    );
    let started = std::time::Instant::now();
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.mappings.len(), 10_000);
    assert_eq!(cfg.mappings[9_999].public_port, 29_999);
    assert_eq!(cfg.mappings[9_999].target.port, 39_999);
    assert!(cfg.mappings.iter().all(|m| m.tag == "t"));
    // Generous: this is a check against a quadratic slip, not a benchmark.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn port_range_errors_name_the_line() {
    for (mapper, line, parts) in [
        (
            "[MAPPER]\n6000-6009=10.0.0.5:7000-7008\n",
            2,
            &[
                "[MAPPER] key 6000-6009",
                "the 10 public ports 6000-6009 map to 9 target ports (7000-7008): both ranges must have the same length",
            ][..],
        ),
        (
            "[MAPPER]\n6000-6009=10.0.0.5:7000\n",
            2,
            &["map to 1 target port (7000): both ranges must have the same length"],
        ),
        (
            "[MAPPER]\n6000=10.0.0.5:7000-7009\n",
            2,
            &["one public port cannot map to the range 7000-7009"],
        ),
        (
            "[MAPPER]\n6009-6000=10.0.0.5\n",
            2,
            &[r#"public port range "6009-6000" ends before it starts"#],
        ),
        (
            "[MAPPER]\n6000-70000=10.0.0.5\n",
            2,
            &[r#"public port "70000" is not a port (1-65535)"#],
        ),
        (
            "[MAPPER]\n6000-6001=10.0.0.5:7001-7000\n",
            2,
            &[r#"target "10.0.0.5:7001-7000": port range "7001-7000" ends before it starts"#],
        ),
        (
            "[MAPPER]\n6000-6001=10.0.0.5:x\n",
            2,
            &[r#"target "10.0.0.5:x": "x" is not a port"#],
        ),
        ("[MAPPER]\n6000-6001=::1\n", 2, &["brackets"]),
        (
            "[MAPPER]\n6000-6009=10.0.0.5\n6005=10.0.0.6:22\n",
            3,
            &["public port 6005 is mapped twice (first on line 2)"],
        ),
        (
            "[MAPPER]\n1100-1200=10.0.0.5\n",
            2,
            &["public port 1111 is the INNER_PORT of"],
        ),
        (
            "[MAPPER]\n6000-6009=10.0.0.5\n[TAG]\n6005-6010=x\n",
            4,
            &["[TAG] key 6005-6010: port 6010 has no [MAPPER] or [UDP] entry"],
        ),
        (
            "[MAPPER]\n6000-6009=10.0.0.5\n[TAG]\n6000-6004=x\n6004-6009=y\n",
            5,
            &["port 6004 is tagged twice (first on line 4)"],
        ),
        (
            "[MAPPER]\n6000-6009=10.0.0.5\n[ALLOW]\n6000-6009=10.0.0.0/33\n",
            4,
            &["[ALLOW] key 6000-6009"],
        ),
    ] {
        mapper_err_at(mapper, line, parts);
    }
}

#[test]
fn proxy_lines_are_read_and_their_errors_name_the_line() {
    use crate::protocol::proxy::ProxyVersion;
    let s = Scratch::new("proxy");
    let cfg = load_server(&s.server(
        CFG,
        "[MAPPER]\n1234=10.0.0.1:22\n2000=10.0.0.2:22\n3000=10.0.0.3:22\n[proxy]\n1234=v1\n2000=V2\n",
    ))
    .unwrap();
    let got: Vec<_> = cfg.mappings.iter().map(|m| m.proxy).collect();
    assert_eq!(got, [Some(ProxyVersion::V1), Some(ProxyVersion::V2), None]);

    let mapper = |line: &str| format!("[MAPPER]\n1234=10.0.0.1:22\n[PROXY]\n{line}\n");
    for (line, want) in [
        (
            "1234=v3",
            r#"[PROXY] key 1234: "v3" is not a PROXY protocol version (expected v1 or v2)"#,
        ),
        ("1234=", "expected v1 or v2"),
        ("1234=1", "expected v1 or v2"),
        (
            "999=v1",
            "[PROXY] key 999: port 999 has no [MAPPER] or [UDP] entry",
        ),
        ("x=v1", "[PROXY] key x"),
    ] {
        let (s, e) = server_err(CFG, &mapper(line));
        let text = e.to_string();
        assert!(
            text.starts_with(&s.0.join("port_mapper.cfg").display().to_string()),
            "{text}"
        );
        assert_eq!(e.line(), Some(4), "{line}: {text}");
        assert!(text.contains(want), "{line}: {text}");
    }
    let (_s, e) = server_err(CFG, &mapper("1234=v1\n1234=v2"));
    assert_eq!(e.line(), Some(5));
    assert!(
        e.to_string()
            .contains("port 1234 has two [PROXY] lines (first on line 4)"),
        "{e}"
    );
}

#[test]
fn proxy_lines_take_ranges() {
    use crate::protocol::proxy::ProxyVersion;
    let s = Scratch::new("proxy-range");
    let cfg = load_server(&s.server(
        CFG,
        "[MAPPER]\n6000-6003=10.0.0.5\n[PROXY]\n6000-6001=v1\n6003=v2\n",
    ))
    .unwrap();
    let got: Vec<_> = cfg.mappings.iter().map(|m| m.proxy).collect();
    assert_eq!(
        got,
        [
            Some(ProxyVersion::V1),
            Some(ProxyVersion::V1),
            None,
            Some(ProxyVersion::V2)
        ]
    );
    let (s, e) = server_err(
        CFG,
        "[MAPPER]\n6000-6003=10.0.0.5\n[PROXY]\n6000-6003=v1\n6002=v2\n",
    );
    assert_err(
        &e,
        &s.0.join("port_mapper.cfg"),
        &["line 5: [PROXY] key 6002: port 6002 has two [PROXY] lines (first on line 4)"],
    );
}

#[test]
fn limits_and_the_bandwidth_default() {
    let s = Scratch::new("limits");
    let path = s.server(
        "[DEFAULT]\nINNER_PORT=1111\nBANDWIDTH=2.5\n",
        "[MAPPER]\n1234=10.0.0.1:22\n2000=10.0.0.2:80\n3000=10.0.0.3:80\n[limit]\n1234=10mbit\n3000 = None\n",
    );
    let cfg = load_server(&path).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let bits: Vec<Option<u64>> = cfg
        .mappings
        .iter()
        .map(|m| m.limit.map(|r| r.bits_per_sec()))
        .collect();
    assert_eq!(bits, [Some(10_000_000), Some(2_500_000), None]);

    let s = Scratch::new("limits-no-default");
    let path = s.server(
        CFG,
        "[MAPPER]\n1234=10.0.0.1:22\n2000=h:1\n[LIMIT]\n2000=2MB\n",
    );
    let cfg = load_server(&path).unwrap();
    assert_eq!(cfg.default_limit, None);
    assert_eq!(cfg.mappings[0].limit, None);
    assert_eq!(
        cfg.mappings[1].limit.map(|r| r.bytes_per_sec()),
        Some(2_000_000)
    );
}

#[test]
fn limit_errors_name_the_line() {
    let mapper = |limit: &str| format!("[MAPPER]\n1234=10.0.0.1:22\n[LIMIT]\n{limit}\n");
    for (limit, parts) in [
        ("1234=10", &[r#"[LIMIT] key 1234: "10": no unit"#][..]),
        ("1234=10mb", &["[LIMIT] key 1234", "ambiguous"]),
        ("1234=10furlongs", &["[LIMIT] key 1234", "unknown unit"]),
        ("1234=0mbit", &["[LIMIT] key 1234", "a limit of 0"]),
        ("1234=", &["[LIMIT] key 1234", "empty limit"]),
        ("1234=10MiB", &["[LIMIT] key 1234", "binary units"]),
        (
            "999=1mbit",
            &["[LIMIT] key 999: port 999 has no [MAPPER] or [UDP] entry"],
        ),
        ("x=1mbit", &["[LIMIT] key x", "not a port"]),
    ] {
        let (s, e) = server_err(CFG, &mapper(limit));
        let text = e.to_string();
        assert!(
            text.starts_with(&s.0.join("port_mapper.cfg").display().to_string()),
            "{text}"
        );
        assert_eq!(e.line(), Some(4), "{limit}: {text}");
        for p in parts {
            assert!(text.contains(p), "{limit}: {text}");
        }
    }
    let (_s, e) = server_err(
        CFG,
        "[MAPPER]\n1234=10.0.0.1:22\n[LIMIT]\n1234=1mbit\n1234=2mbit\n",
    );
    assert_eq!(e.line(), Some(5));
    assert!(e.to_string().contains("two limits"), "{e}");

    for (bandwidth, want) in [
        ("0", "a limit of 0"),
        ("", "empty"),
        ("fast", "not a rate"),
        ("10mb", "ambiguous"),
        ("1.2.3", "not a number of Mbit/s"),
    ] {
        let cfg = format!("[DEFAULT]\nINNER_PORT=1111\nBANDWIDTH={bandwidth}\n");
        let (s, e) = server_err(&cfg, MAPPER);
        let text = e.to_string();
        assert!(
            text.starts_with(&s.0.join("forward_server.cfg").display().to_string()),
            "{text}"
        );
        assert_eq!(e.line(), Some(3), "{bandwidth}: {text}");
        assert!(text.contains("[DEFAULT] key BANDWIDTH"), "{text}");
        assert!(text.contains(want), "{bandwidth}: {text}");
    }
}

#[test]
fn limit_lines_take_ranges_each_port_its_own() {
    let s = Scratch::new("limit-range");
    let cfg = load_server(&s.server(
        CFG,
        "[MAPPER]\n6000-6003=10.0.0.5\n[LIMIT]\n6000-6002=10mbit\n6002-6003=1MB\n",
    ));
    let e = cfg.expect_err("6002 has two limits");
    assert!(
        e.to_string()
            .contains("line 5: [LIMIT] key 6002-6003: port 6002 has two limits (first on line 4)"),
        "{e}"
    );
    let cfg = load_server(&s.server(
        CFG,
        "[MAPPER]\n6000-6003=10.0.0.5\n[LIMIT]\n6000-6001=10mbit\n6003=1MB\n",
    ))
    .unwrap();
    let got: Vec<Option<u64>> = cfg
        .mappings
        .iter()
        .map(|m| m.limit.map(|r| r.bits_per_sec()))
        .collect();
    assert_eq!(
        got,
        [Some(10_000_000), Some(10_000_000), None, Some(8_000_000)]
    );
}

#[test]
fn udp_mappings_take_every_target_form() {
    let s = Scratch::new("udp");
    let cfg = load_server(&s.server(
        CFG,
        "[udp]\n5353=10.0.0.5:53\n6000-6002=10.0.0.5:7000-7002\n6100-6101=10.0.0.6\n\
         6200=[2001:db8::5]:53\n6300-6301=[::1]\n6400=dns.internal:53\n",
    ))
    .unwrap();
    assert!(cfg.mappings.is_empty(), "{:?}", cfg.mappings);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(
        triples(&cfg.udp_mappings),
        want(&[
            (5353, "10.0.0.5:53", "default"),
            (6000, "10.0.0.5:7000", "default"),
            (6001, "10.0.0.5:7001", "default"),
            (6002, "10.0.0.5:7002", "default"),
            (6100, "10.0.0.6:6100", "default"),
            (6101, "10.0.0.6:6101", "default"),
            (6200, "[2001:db8::5]:53", "default"),
            (6300, "[::1]:6300", "default"),
            (6301, "[::1]:6301", "default"),
            (6400, "dns.internal:53", "default"),
        ])
    );
    assert_eq!(
        cfg.udp_mappings[6].target.host,
        Host::Ip("2001:db8::5".parse().unwrap())
    );
    assert_eq!(
        cfg.udp_mappings[9].target.host,
        Host::Name("dns.internal".into())
    );
    assert!(cfg.udp_mappings.iter().all(|m| m.proxy.is_none()));
}

#[test]
fn one_port_mapped_for_tcp_and_udp_shares_tag_allow_and_limit() {
    use crate::protocol::proxy::ProxyVersion;
    let s = Scratch::new("udp-both");
    let cfg = load_server(&s.server(
        "[DEFAULT]\nINNER_PORT=1111\nBANDWIDTH=5\n",
        "[MAPPER]\n53=10.0.0.5:53\n80=10.0.0.5:80\n[UDP]\n53=10.0.0.6:5353\n5353=10.0.0.7:53\n\
         [TAG]\n53=dns\n5353=mdns\n[ALLOW]\n53=10.0.0.0/8\n5353=192.0.2.1\n\
         [LIMIT]\n53=1mbit\n5353=none\n[PROXY]\n53=v2\n",
    ))
    .unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    type Seen<'m> = (
        u16,
        String,
        &'m str,
        Option<String>,
        Option<ProxyVersion>,
        Option<u64>,
    );
    /// Port, target, tag, first allowed range, PROXY, limit.
    fn seen(m: &Mapping) -> Seen<'_> {
        (
            m.public_port,
            m.target.to_string(),
            m.tag.as_str(),
            m.allow.as_ref().map(|l| l[0].to_string()),
            m.proxy,
            m.limit.map(|r| r.bits_per_sec()),
        )
    }
    let tcp: Vec<_> = cfg.mappings.iter().map(seen).collect();
    assert_eq!(
        tcp,
        [
            (
                53,
                "10.0.0.5:53".to_string(),
                "dns",
                Some("10.0.0.0/8".to_string()),
                Some(ProxyVersion::V2),
                Some(1_000_000)
            ),
            (
                80,
                "10.0.0.5:80".to_string(),
                "default",
                None,
                None,
                Some(5_000_000)
            ),
        ]
    );
    let udp: Vec<_> = cfg.udp_mappings.iter().map(seen).collect();
    assert_eq!(
        udp,
        [
            (
                53,
                "10.0.0.6:5353".to_string(),
                "dns",
                Some("10.0.0.0/8".to_string()),
                None,
                Some(1_000_000)
            ),
            (
                5353,
                "10.0.0.7:53".to_string(),
                "mdns",
                Some("192.0.2.1/32".to_string()),
                None,
                None
            ),
        ]
    );
}

#[test]
fn a_udp_port_may_be_the_inner_port() {
    let s = Scratch::new("udp-inner");
    let cfg = load_server(&s.server(CFG, "[UDP]\n1111=10.0.0.5:53\n1100-1200=10.0.0.6\n"));
    let e = cfg.expect_err("1111 is mapped twice");
    assert_eq!(e.line(), Some(3), "{e}");
    let cfg = load_server(&s.server(CFG, "[UDP]\n1111=10.0.0.5:53\n")).unwrap();
    assert_eq!(
        triples(&cfg.udp_mappings),
        want(&[(1111, "10.0.0.5:53", "default")])
    );
    let cfg = load_server(&s.server(CFG, "[UDP]\n1100-1200=10.0.0.6\n")).unwrap();
    assert_eq!(cfg.udp_mappings.len(), 101);
    assert_eq!(cfg.udp_mappings[11].public_port, 1111);
    // Still not for TCP.
    let (s, e) = server_err(CFG, "[UDP]\n1111=10.0.0.5:53\n[MAPPER]\n1111=10.0.0.5:22\n");
    assert_err(
        &e,
        &s.0.join("port_mapper.cfg"),
        &["line 4: [MAPPER] key 1111: public port 1111 is the INNER_PORT of"],
    );
}

#[test]
fn udp_errors_name_the_line() {
    for (mapper, line, parts) in [
        (
            "[UDP]\n5353=10.0.0.5:53\n\n5353=10.0.0.6:53\n",
            4,
            &["[UDP] key 5353: public port 5353 is mapped twice (first on line 2)"][..],
        ),
        (
            "[UDP]\n6000-6009=10.0.0.5\n[MAPPER]\n6005=10.0.0.5:22\n[UDP]\n6004-6005=h\n",
            6,
            &["[UDP] key 6004-6005: public port 6004 is mapped twice (first on line 2)"],
        ),
        (
            "[UDP]\n6000-6009=10.0.0.5:7000-7008\n",
            2,
            &[
                "[UDP] key 6000-6009",
                "both ranges must have the same length",
            ],
        ),
        (
            "[UDP]\n5353=10.0.0.5\n",
            2,
            &[r#"[UDP] key 5353: target "10.0.0.5" has no port"#],
        ),
        (
            "[UDP]\ndns=10.0.0.5:53\n",
            2,
            &[r#"[UDP] key dns: public port "dns" is not a port"#],
        ),
        ("[UDP]\n5353=::1:53\n", 2, &["[UDP] key 5353", "brackets"]),
        (
            "[UDP]\n5353=10.0.0.5:53\n[PROXY]\n5353=v1\n",
            4,
            &[
                "[PROXY] key 5353: PROXY headers are for TCP mappings; port 5353 has only a [UDP] mapping",
            ],
        ),
        (
            "[UDP]\n6000-6009=10.0.0.5\n[MAPPER]\n6000=10.0.0.5:22\n[PROXY]\n6000-6001=v2\n",
            6,
            &["[PROXY] key 6000-6001: PROXY headers are for TCP mappings; port 6001 has only"],
        ),
        (
            "[UDP]\n5353=10.0.0.5:53\n[MAPPER]\n22=10.0.0.5:22\n[TAG]\n53=x\n",
            6,
            &["[TAG] key 53: port 53 has no [MAPPER] or [UDP] entry"],
        ),
        (
            "[UDP]\n5353=10.0.0.5:53\n[ALLOW]\n5353-5354=10.0.0.0/8\n",
            4,
            &["[ALLOW] key 5353-5354: port 5354 has no [MAPPER] or [UDP] entry"],
        ),
        (
            "[UDP]\n5353=10.0.0.5:53\n[LIMIT]\n999=1mbit\n",
            4,
            &["[LIMIT] key 999: port 999 has no [MAPPER] or [UDP] entry"],
        ),
        (
            "[UDP]\n5353=10.0.0.5:53\n[PROXY]\n999=v1\n",
            4,
            &["[PROXY] key 999: port 999 has no [MAPPER] or [UDP] entry"],
        ),
        (
            "[UDP]\n5353=10.0.0.5:53\n[LIMIT]\n5353=10\n",
            4,
            &[r#"[LIMIT] key 5353: "10": no unit"#],
        ),
    ] {
        mapper_err_at(mapper, line, parts);
    }
}

#[test]
fn udp_sections_in_the_warnings() {
    let s = Scratch::new("udp-warn");
    let path = s.server(
        "[DEFAULT]\nINNER_PORT=1111\n[UDP]\n53=h:53\n",
        "[UDP]\n53=h:53\n[OTHER]\n",
    );
    let cfg = load_server(&path).unwrap();
    let w = &cfg.warnings;
    let f = path.display();
    let m = s.0.join("port_mapper.cfg");
    let m = m.display();
    assert_eq!(
        w,
        &[
            format!(
                "{f}: line 3: section [UDP] belongs in the port mapping file (OUTER_PORTS_FILE), ignored here"
            ),
            format!(
                "{m}: line 3: unknown section [OTHER], ignored (expected [MAPPER], [UDP], [TAG], [ALLOW], [PROXY] and [LIMIT])"
            ),
        ]
    );
    // A file with UDP mappings only publishes something: no "nothing mapped" warning.
    assert_eq!(cfg.udp_mappings.len(), 1);
    assert!(cfg.mappings.is_empty());
}

#[test]
fn udp_timeout_and_max_udp_flows() {
    let s = Scratch::new("udp-keys");
    let cfg = load_server(&s.server(CFG, MAPPER)).unwrap();
    assert_eq!(cfg.udp_timeout, std::time::Duration::from_secs(60));
    assert_eq!(cfg.udp_timeout, DEFAULT_UDP_TIMEOUT);
    assert_eq!(cfg.max_udp_flows, 1024);
    assert!(cfg.udp_mappings.is_empty());
    let cfg = load_server(&s.server(
        "[DEFAULT]\nINNER_PORT=1111\nudp_timeout = 5\nMAX_UDP_FLOWS=1\n",
        MAPPER,
    ))
    .unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.udp_timeout, std::time::Duration::from_secs(5));
    assert_eq!(cfg.max_udp_flows, 1);
    let cfg = load_server(&s.server(
        "[DEFAULT]\nINNER_PORT=1111\nUDP_TIMEOUT=86400\nMAX_UDP_FLOWS=1000000\n",
        MAPPER,
    ))
    .unwrap();
    assert_eq!(cfg.udp_timeout, std::time::Duration::from_secs(86_400));
    assert_eq!(cfg.max_udp_flows, 1_000_000);

    for (line, want) in [
        (
            "UDP_TIMEOUT=0",
            r#"[DEFAULT] key UDP_TIMEOUT: "0" is not a number of seconds from 1 to 86400"#,
        ),
        ("UDP_TIMEOUT=soon", r#"key UDP_TIMEOUT: "soon" is not"#),
        ("UDP_TIMEOUT=1.5", r#"key UDP_TIMEOUT: "1.5" is not"#),
        ("UDP_TIMEOUT=-1", "key UDP_TIMEOUT"),
        ("UDP_TIMEOUT=86401", "key UDP_TIMEOUT"),
        ("UDP_TIMEOUT=", "key UDP_TIMEOUT"),
        (
            "MAX_UDP_FLOWS=0",
            r#"[DEFAULT] key MAX_UDP_FLOWS: "0" is not a number from 1 to 1000000"#,
        ),
        ("MAX_UDP_FLOWS=lots", r#"key MAX_UDP_FLOWS: "lots""#),
        ("MAX_UDP_FLOWS=1000001", "key MAX_UDP_FLOWS"),
        ("MAX_UDP_FLOWS=99999999999999999999", "key MAX_UDP_FLOWS"),
    ] {
        let (s, e) = server_err(&format!("[DEFAULT]\nINNER_PORT=1111\n{line}\n"), MAPPER);
        assert_err(&e, &s.0.join("forward_server.cfg"), &["line 3: ", want]);
        assert_eq!(e.line(), Some(3), "{e}");
    }
}

#[test]
fn a_reload_diffs_the_udp_list_on_its_own() {
    let s = Scratch::new("udp-diff");
    let old = load_server(&s.server(
        CFG,
        "[MAPPER]\n53=10.0.0.5:53\n[UDP]\n53=10.0.0.5:53\n5353=10.0.0.7:53\n",
    ))
    .unwrap();
    let new = load_server(&s.server(
        CFG,
        "[MAPPER]\n53=10.0.0.5:53\n[UDP]\n53=10.0.0.6:53\n6000=10.0.0.8:53\n",
    ))
    .unwrap();
    assert!(diff(&old.mappings, &new.mappings).is_empty());
    let d = diff(&old.udp_mappings, &new.udp_mappings);
    let ports = |l: &[Mapping]| l.iter().map(|m| m.public_port).collect::<Vec<_>>();
    assert_eq!(ports(&d.added), [6000]);
    assert_eq!(ports(&d.removed), [5353]);
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].0.target.to_string(), "10.0.0.5:53");
    assert_eq!(d.changed[0].1.target.to_string(), "10.0.0.6:53");
}
