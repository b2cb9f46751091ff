//! `tcp-forward bench` itself, run short: the plain and the TLS tunnel side by side
//! (`--tls both`, the default) and one tunnel alone, checked through the shape of `--json`.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tcp_forward::bench::harness;

const BIN: &str = env!("CARGO_BIN_EXE_tcp-forward");
/// A short bench takes a few seconds; past this it hangs.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Run `tcp-forward bench --json ARGS...`; returns the parsed object and stderr.
fn bench_json(args: &[&str]) -> (Value, String) {
    let mut child = Command::new(BIN)
        .arg("bench")
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcp-forward bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the bench") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench {args:?} still running after {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let json: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("bench {args:?}: stdout is not one JSON object ({e}):\n{out}\nstderr:\n{err}")
    });
    assert!(
        status.success() && json["ok"] == Value::Bool(true),
        "bench {args:?} exited with {status}, notes {}:\nstderr:\n{err}",
        json["notes"]
    );
    (json, err)
}

fn is_num(v: &Value) -> bool {
    v.as_f64().is_some_and(f64::is_finite)
}

/// The figures of both roles of one memory figure.
fn assert_mem(v: &Value, what: &str) {
    for part in ["server", "client", "total"] {
        assert!(
            v[part].as_f64().is_some_and(|m| m > 0.0),
            "{what}.{part}: {v}"
        );
    }
}

#[test]
fn a_short_bench_measures_the_plain_and_the_tls_tunnel_side_by_side() {
    let (json, err) = bench_json(&[
        "--seconds",
        "0.1",
        "--tls",
        "both",
        "--only",
        "upload",
        "--only",
        "rr1",
        "--only",
        "streams",
        "--only",
        "setup",
    ]);
    assert_eq!(
        json["tunnels"],
        serde_json::json!(["plain", "tls"]),
        "{json}"
    );
    for t in ["plain", "tls"] {
        for role in ["server", "client"] {
            assert!(json["pids"][t][role].as_u64().is_some(), "pids.{t}: {json}");
        }
    }
    assert_eq!(json["server_pid"], json["pids"]["plain"]["server"]);

    // Workloads: the plain tunnel where it always was, the TLS tunnel in `tls`.
    let workloads = json["workloads"].as_object().expect("workloads");
    let keys: Vec<&str> = workloads.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["upload_gbps", "rr1_per_s", "rr1_p50_us", "rr1_p99_us"]
    );
    for (key, row) in workloads {
        for field in ["direct", "tunnel", "ratio"] {
            assert!(is_num(&row[field]), "{key}.{field}: {row}");
        }
        for field in ["tunnel", "ratio", "to_plain"] {
            assert!(is_num(&row["tls"][field]), "{key}.tls.{field}: {row}");
        }
        let latency = key.ends_with("_us");
        for (o, field) in [
            (row, "added_us"),
            (&row["tls"], "added_us"),
            (&row["tls"], "added_to_plain_us"),
        ] {
            assert_eq!(is_num(&o[field]), latency, "{key}: {field} in {row}");
        }
    }

    // Memory and CPU of both tunnels.
    let mem = &json["memory_mib"];
    for (o, name) in [(mem, "memory_mib"), (&mem["tls"], "memory_mib.tls")] {
        assert_mem(&o["idle"], &format!("{name}.idle"));
        assert_mem(&o["idle_anonymous"], &format!("{name}.idle_anonymous"));
        if o.get("streams_1000").is_some() {
            assert_mem(&o["streams_1000"], &format!("{name}.streams_1000"));
        } else {
            let skipped = json["notes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n.as_str().is_some_and(|n| n.contains("skipped")))
            });
            assert!(skipped, "no 1,000-stream figure and no note why: {json}");
        }
    }
    let cpu = &json["cpu_s_per_gb"];
    for o in [cpu, &cpu["tls"]] {
        assert!(
            o.get("upload").is_some() && o.get("download").is_some(),
            "{cpu}"
        );
    }

    // Set-up time: every client start timed, through each tunnel.
    let setup = &json["setup_ms"];
    for o in [setup, &setup["tls"]] {
        assert!(
            o["spawn_to_echo"].as_f64().is_some_and(|ms| ms > 0.0),
            "{setup}"
        );
        assert!(
            o["connect_to_echo"].as_f64().is_some_and(|ms| ms > 0.0),
            "{setup}"
        );
        assert_eq!(o["samples"], 5, "{setup}");
        assert!(
            o["connect_to_echo"].as_f64() <= o["spawn_to_echo"].as_f64(),
            "{setup}"
        );
    }
    assert!(
        err.contains("bench: tunnel set-up, client started again: plain "),
        "{err}"
    );
    assert!(err.contains("(ratio"), "{err}");
    assert!(err.contains(" of plain)"), "{err}");
}

#[test]
fn one_tunnel_alone_leaves_the_other_null() {
    let (json, _) = bench_json(&["--seconds", "0.1", "--tls", "off", "--only", "rr1"]);
    assert_eq!(json["tunnels"], serde_json::json!(["plain"]), "{json}");
    assert!(json["pids"].get("tls").is_none(), "{json}");
    let row = &json["workloads"]["rr1_p50_us"];
    assert!(is_num(&row["tunnel"]), "{row}");
    for field in [
        "tunnel",
        "ratio",
        "added_us",
        "to_plain",
        "added_to_plain_us",
    ] {
        assert!(row["tls"][field].is_null(), "tls.{field}: {row}");
    }
    assert!(json["memory_mib"]["idle"].is_object(), "{json}");
    assert_eq!(json["memory_mib"]["tls"], serde_json::json!({}), "{json}");

    let (json, _) = bench_json(&["--seconds", "0.1", "--tls", "on", "--only", "rr1"]);
    assert_eq!(json["tunnels"], serde_json::json!(["tls"]), "{json}");
    assert_eq!(json["server_pid"], json["pids"]["tls"]["server"]);
    let row = &json["workloads"]["rr1_per_s"];
    assert!(row["tunnel"].is_null() && row["ratio"].is_null(), "{row}");
    assert!(
        is_num(&row["tls"]["tunnel"]) && row["tls"]["to_plain"].is_null(),
        "{row}"
    );
    assert!(json["memory_mib"]["tls"]["idle"].is_object(), "{json}");
    assert!(json["memory_mib"].get("idle").is_none(), "{json}");
}

/// The bandwidth-limit workload, run short: the limited port is limited at all (its burst
/// weighs more in a short run than in the bench's 10 s), and the unlimited one is not.
#[test]
fn the_limit_workload_measures_a_limited_port_beside_an_unlimited_one() {
    let (json, err) = bench_json(&["--seconds", "0.2", "--tls", "off", "--only", "limit"]);
    let l = &json["limit"];
    assert_eq!(l["tunnel"], "plain", "{l}");
    assert_eq!(l["limit_mbit"], 100, "{l}");
    assert_eq!(l["seconds"], 1, "{l}");
    for way in ["upload", "download"] {
        let side = &l[way];
        let mbit = side["mbit"]
            .as_f64()
            .unwrap_or_else(|| panic!("{way}: {l}"));
        let ratio = side["ratio"]
            .as_f64()
            .unwrap_or_else(|| panic!("{way}: {l}"));
        let free = side["unlimited_gbit"]
            .as_f64()
            .unwrap_or_else(|| panic!("{way}: {l}"));
        assert!((0.5..2.0).contains(&ratio), "{way}: {side}");
        assert!((mbit / 100.0 - ratio).abs() < 1e-3, "{way}: {side}");
        assert!(free * 1e3 > 3.0 * mbit, "{way}: the unlimited port: {side}");
    }
    assert!(err.contains("a port limited to 100 mbit"), "{err}");
    assert!(json["workloads"].as_object().unwrap().is_empty(), "{json}");
}

/// The UDP workloads, run short through the plain tunnel: round trips on 1 and 50 flows with
/// their losses, the rate search and the fixed rate, and TCP round trips beside a flood.
#[test]
fn the_udp_workloads_measure_round_trips_rates_and_a_flood() {
    let (json, err) = bench_json(&[
        "--seconds",
        "0.1",
        "--tls",
        "off",
        "--only",
        "udp-rr1",
        "--only",
        "udp-rr50",
        "--only",
        "udp-rate",
        "--only",
        "udp-flood",
    ]);
    let workloads = json["workloads"].as_object().expect("workloads");
    let keys: Vec<&str> = workloads.keys().map(String::as_str).collect();
    let mut expected = Vec::new();
    for rr in ["udp_rr1", "udp_rr50"] {
        for figure in ["per_s", "p50_us", "p99_us", "lost"] {
            expected.push(format!("{rr}_{figure}"));
        }
    }
    for key in [
        "udp_max_mbit",
        "udp_max_per_s",
        "udp_fixed_sent_mbit",
        "udp_fixed_loss_pct",
    ] {
        expected.push(key.to_string());
    }
    assert_eq!(keys, expected, "{json}");
    for (key, row) in workloads {
        for field in ["direct", "tunnel"] {
            assert!(is_num(&row[field]), "{key}.{field}: {row}");
        }
        let count = key.ends_with("_lost") || key.starts_with("udp_fixed");
        assert_eq!(is_num(&row["ratio"]), !count, "{key}: {row}");
    }
    assert!(
        workloads["udp_rr1_per_s"]["tunnel"].as_f64() > Some(0.0),
        "{json}"
    );
    let flood = &json["udp_flood"];
    for field in ["alone", "beside_flood", "ratio"] {
        assert!(is_num(&flood["rr1_per_s"][field]), "{field}: {flood}");
    }
    assert_eq!(flood["flood"]["asked_mbit"], 500, "{flood}");
    assert!(flood["flood"]["sent_mbit"].as_f64() > Some(0.0), "{flood}");
    assert_eq!(json["udp_flood"]["tls"], serde_json::json!({}), "{json}");
    assert!(err.contains("UDP 1,200 B datagrams"), "{err}");
    assert!(err.contains("plain steps "), "{err}");
}

/// `--udp-peer` as scripts/compare-peers.sh runs it for `direct` (the public ports are the
/// services' own): one line of figures, and with `--tcp-echo-peer` the TCP round trips alone
/// and beside the flood after them.
#[test]
fn the_peer_mode_prints_its_figures_and_the_round_trips_beside_a_flood() {
    let [echo, sink] = harness::free_udp_ports().expect("free UDP ports");
    let tcp = harness::free_port().expect("a free TCP port");
    let udp = format!("{echo},{sink},{echo},{sink}");
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["bench", "--seconds", "0.2", "--udp-peer", &udp])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run tcp-forward bench --udp-peer");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{extra:?}: {stdout}\n{stderr}");
        assert!(stderr.contains("steps: "), "{stderr}");
        let failed = stdout.contains(" - - - - -");
        let said = stderr.contains("TCP round trips beside the flood: cannot serve the TCP echo");
        assert_eq!(failed, said, "{stdout}\n{stderr}");
        let fields: Vec<f64> = stdout
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(f64::NAN))
            .collect();
        (fields, stdout)
    };
    let (udp_only, line) = run(&[]);
    assert_eq!(udp_only.len(), 9, "{line}");
    assert!(udp_only[0] > 0.0, "round trips/s: {line}");

    let tcp = format!("{tcp},{tcp}");
    let (fields, line) = run(&["--tcp-echo-peer", &tcp]);
    assert_eq!(fields.len(), 14, "{line}");
    let [alone, beside, p99_alone, p99_beside, lost] = fields[9..] else {
        unreachable!("14 fields")
    };
    assert!(alone > 0.0 && beside > 0.0, "round trips/s: {line}");
    assert!(p99_alone > 0.0 && p99_beside > 0.0, "p99: {line}");
    assert!((0.0..=100.0).contains(&lost), "flood lost %: {line}");

    // A TCP echo port already taken fails the TCP part only: the UDP figures stay.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP port to take");
    let port = taken.local_addr().expect("its address").port();
    let tcp = format!("{port},{port}");
    let (fields, line) = run(&["--tcp-echo-peer", &tcp]);
    assert_eq!(fields.len(), 14, "{line}");
    assert!(fields[0] > 0.0, "round trips/s: {line}");
    assert!(line.trim_end().ends_with(" - - - - -"), "{line}");
}
