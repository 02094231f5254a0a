//! The kernel-to-log pipeline on the running kernel: real sockets from a scenario child with a known
//! pid, and the exact JSON lines the real daemon writes for them.
use std::os::unix::fs::MetadataExt;

use portwatch_tests::{Daemon, count, find, scenario, schema, split_addr};
use serde_json::{Value, json};

/// The scenario binary's comm: its file name cut to 15 bytes by the kernel.
const SCENARIO_COMM: &str = "portwatch-scena";

fn netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net")
        .expect("own netns")
        .ino()
}

/// Asserts the fields every port event of a scenario carries.
fn assert_process(ev: &Value, pid: u32, args: &[&str]) {
    let p = &ev["process"];
    assert_eq!(p["pid"], pid, "{ev}");
    assert_eq!(p["tid"], pid, "single-threaded client: {ev}");
    assert_eq!(p["ppid"], std::process::id(), "{ev}");
    assert_eq!(p["comm"], SCENARIO_COMM, "{ev}");
    assert_eq!(p["user"], json!({"id": 0, "name": "root"}), "{ev}");
    assert_eq!(p["group"], json!({"id": 0}), "{ev}");
    let exe = p["executable"].as_str().expect("executable");
    assert!(exe.ends_with("/portwatch-scenario"), "{ev}");
    let argv: Vec<&str> = p["command_line"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv[0].ends_with("portwatch-scenario"), "{ev}");
    assert_eq!(&argv[1..], args, "{ev}");
    assert_eq!(ev["network"]["netns"], netns(), "{ev}");
}

fn assert_net(ev: &Value, transport: &str, local: &str, peer: Option<&str>) {
    let (addr, port) = split_addr(local);
    let ip_type = if addr.contains(':') { "ipv6" } else { "ipv4" };
    assert_eq!(ev["network"]["transport"], transport, "{ev}");
    assert_eq!(ev["network"]["type"], ip_type, "{ev}");
    assert_eq!(
        ev["network"]["local"],
        json!({"address": addr, "port": port}),
        "{ev}"
    );
    match peer {
        Some(p) => {
            let (a, port) = split_addr(p);
            assert_eq!(
                ev["network"]["peer"],
                json!({"address": a, "port": port}),
                "{ev}"
            );
        }
        None => assert!(ev["network"].get("peer").is_none(), "{ev}"),
    }
}

fn finish(d: Daemon) {
    let (status, lines) = d.stop();
    assert!(status.success(), "daemon exit: {status}");
    schema::check_log(&lines).unwrap_or_else(|e| panic!("schema: {e}"));
}

/// bind(port 0) → listen → close, reported with the port the kernel chose.
fn tcp_listen(bind: &str, probe_bind: &str) {
    let mut d = Daemon::start(&[]);
    let s = scenario(["tcp-listen", bind]);
    let local = s.report["local"].as_str().unwrap().to_string();
    assert_ne!(split_addr(&local).1, 0);
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    let kinds: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bind", "listen", "close"], "{evs:#?}");
    for ev in &evs {
        assert_eq!(ev["outcome"], "success");
        assert_process(ev, s.pid, &["tcp-listen", bind]);
        assert_net(ev, "tcp", &local, None);
    }
    assert_eq!(evs[0]["probe"], probe_bind);
    assert_eq!(evs[1]["probe"], "tracepoint:sock:inet_sock_set_state");
    assert_eq!(evs[2]["probe"], "cgroup:sock_release");
    finish(d);
}

#[test]
fn tcp_listen_ipv4_loopback() {
    tcp_listen("127.0.0.1:0", "cgroup:post_bind4");
}

#[test]
fn tcp_listen_ipv4_wildcard() {
    tcp_listen("0.0.0.0:0", "cgroup:post_bind4");
}

#[test]
fn tcp_listen_ipv6_loopback() {
    tcp_listen("[::1]:0", "cgroup:post_bind6");
}

#[test]
fn tcp_listen_ipv6_wildcard() {
    tcp_listen("[::]:0", "cgroup:post_bind6");
}

fn udp_bind(bind: &str, probe: &str) {
    let mut d = Daemon::start(&[]);
    let s = scenario(["udp-bind", bind]);
    let local = s.report["local"].as_str().unwrap().to_string();
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    let kinds: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bind", "close"], "{evs:#?}");
    for ev in &evs {
        assert_process(ev, s.pid, &["udp-bind", bind]);
        assert_net(ev, "udp", &local, None);
    }
    assert_eq!(evs[0]["probe"], probe);
    finish(d);
}

#[test]
fn udp_bind_ipv4() {
    udp_bind("127.0.0.1:0", "cgroup:post_bind4");
}

#[test]
fn udp_bind_ipv6() {
    udp_bind("[::1]:0", "cgroup:post_bind6");
}

/// The connect event carries the local ephemeral port the client's getsockname() saw.
fn tcp_connect(listen: &str, probe: &str) {
    let mut d = Daemon::start(&[]);
    let s = scenario(["tcp-connect", listen]);
    let (local, peer, server) = (
        s.report["local"].as_str().unwrap(),
        s.report["peer"].as_str().unwrap(),
        s.report["listener"].as_str().unwrap(),
    );
    // listener: bind, listen, close; client: connect, close; accepted socket: close.
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 3);
    let connect = find(&evs, "connect", "success");
    assert_process(connect, s.pid, &["tcp-connect", listen]);
    assert_net(connect, "tcp", local, Some(peer));
    assert_eq!(connect["probe"], probe);
    let client_close = evs
        .iter()
        .find(|e| e["event"] == "close" && e["network"]["local"]["port"] == split_addr(local).1)
        .unwrap_or_else(|| panic!("no close of the client socket: {evs:#?}"));
    assert_net(client_close, "tcp", local, Some(server));
    finish(d);
}

#[test]
fn tcp_connect_ipv4() {
    tcp_connect("127.0.0.1:0", "cgroup:connect4");
}

#[test]
fn tcp_connect_ipv6() {
    tcp_connect("[::1]:0", "cgroup:connect6");
}

fn udp_connect(target: &str, probe: &str) {
    let mut d = Daemon::start(&[]);
    let s = scenario(["udp-connect", target]);
    let local = s.report["local"].as_str().unwrap();
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    let kinds: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["connect", "close"],
        "an autobound UDP socket has no bind event: {evs:#?}"
    );
    assert_process(&evs[0], s.pid, &["udp-connect", target]);
    assert_net(&evs[0], "udp", local, Some(target));
    assert_eq!(evs[0]["probe"], probe);
    assert_net(&evs[1], "udp", local, Some(target));
    finish(d);
}

#[test]
fn udp_connect_ipv4() {
    udp_connect("127.0.0.1:9", "cgroup:connect4");
}

#[test]
fn udp_connect_ipv6() {
    udp_connect("[::1]:9", "cgroup:connect6");
}

#[test]
fn bind_eaddrinuse_is_a_failure_with_the_requested_port() {
    let mut d = Daemon::start(&[]);
    let s = scenario(["bind-in-use", "127.0.0.1:0"]);
    assert_eq!(s.report["errno"], libc::EADDRINUSE);
    let taken = s.report["local"].as_str().unwrap();
    let evs = d.events_of(s.pid, |e| {
        e.iter().any(|x| x["outcome"] == "failure") && count(e, "close") >= 1
    });
    let fail = find(&evs, "bind", "failure");
    assert_eq!(fail["error"], "EADDRINUSE");
    assert_eq!(fail["errno"], libc::EADDRINUSE);
    assert_eq!(fail["probe"], "cgroup:bind4");
    assert_process(fail, s.pid, &["bind-in-use", "127.0.0.1:0"]);
    assert_net(fail, "tcp", taken, None);
    finish(d);
}

#[test]
fn connect_econnrefused_is_a_failure_naming_the_peer() {
    let mut d = Daemon::start(&[]);
    let s = scenario(["connect-refused", "[::1]:0"]);
    assert_eq!(s.report["errno"], libc::ECONNREFUSED);
    let peer = s.report["peer"].as_str().unwrap();
    let evs = d.events_of(s.pid, |e| e.iter().any(|x| x["event"] == "connect"));
    let fail = find(&evs, "connect", "failure");
    assert_eq!(fail["error"], "ECONNREFUSED");
    assert_eq!(fail["errno"], libc::ECONNREFUSED);
    assert_eq!(
        fail["network"]["peer"],
        json!({"address": "::1", "port": split_addr(peer).1})
    );
    assert_eq!(fail["network"]["transport"], "tcp");
    assert_eq!(fail["probe"], "cgroup:connect6");
    assert_process(fail, s.pid, &["connect-refused", "[::1]:0"]);
    finish(d);
}

#[test]
fn process_that_binds_and_exits_at_once_keeps_its_kernel_facts() {
    let mut d = Daemon::start(&[]);
    let s = scenario(["exit-fast", "127.0.0.1:0"]);
    let local = s.report["local"].as_str().unwrap();
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    for ev in &evs {
        let p = &ev["process"];
        assert_eq!(p["pid"], s.pid);
        assert_eq!(p["comm"], SCENARIO_COMM);
        assert_eq!(p["user"]["id"], 0);
        // /proc may already be gone: then these are null, never invented.
        if !p["executable"].is_null() {
            assert!(
                p["executable"]
                    .as_str()
                    .unwrap()
                    .ends_with("/portwatch-scenario")
            );
        }
        assert_net(ev, "tcp", local, None);
    }
    let kinds: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bind", "listen", "close"]);
    finish(d);
}

#[test]
fn hostile_comm_and_command_line_stay_valid_json() {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
    let mut d = Daemon::start(&[]);
    // comm: a quote, a newline, a backslash and an invalid UTF-8 byte.
    let comm_hex = "71220a5cff";
    let weird_arg = OsStr::from_bytes(b"arg\"with\nnewline\x01and\xffbad");
    let s = scenario([OsStr::new("rename"), OsStr::new(comm_hex), weird_arg]);
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    let ev = find(&evs, "listen", "success");
    assert_eq!(ev["process"]["comm"], "q\"\n\\\u{fffd}");
    let argv = ev["process"]["command_line"].as_array().unwrap();
    assert_eq!(argv[3], "arg\"with\nnewline\u{1}and\u{fffd}bad");
    // Every line of the raw file is one JSON object: no raw newline escaped the encoder.
    let raw = std::fs::read_to_string(&d.log).unwrap();
    for line in raw.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
    finish(d);
}

#[test]
fn status_line_comes_first_and_names_each_family_strategy() {
    let d = Daemon::start(&[]);
    let lines = d.lines();
    let st = &lines[0];
    assert_eq!(st["event"], "status");
    assert_eq!(st["seq"], 1);
    assert_eq!(st["daemon"]["pid"], d.pid());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(st["kernel"]["release"], release.trim());
    // This kernel refuses fentry and has no kprobes (DESIGN.md): auto lands on tracepoint.
    for fam in ["bind", "listen", "connect", "release"] {
        assert_eq!(st["attach"][fam]["strategy"], "tracepoint", "{st}");
    }
    finish(d);
}

#[test]
fn forced_strategy_that_fails_is_a_clear_error() {
    portwatch_tests::require_root();
    let out = std::process::Command::new(portwatch_tests::daemon_binary())
        .args(["run", "--attach", "fentry"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("portwatch: error:") && err.contains("fentry strategy"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no event line on a failed start");
}

#[test]
fn sigint_drains_and_exits_zero() {
    let d = Daemon::start(&[]);
    let s = scenario(["udp-storm", "200"]);
    d.signal(libc::SIGINT);
    let (status, lines) = d.stop();
    assert!(status.success());
    let mine = portwatch_tests::of_pid(&lines, s.pid);
    assert_eq!(count(&mine, "bind"), 200, "every bind written before exit");
    assert_eq!(count(&mine, "close"), 200);
    schema::check_log(&lines).unwrap();
}
