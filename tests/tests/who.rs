//! `portwatch who`: who holds a port now, and who held it before — after the process is gone and
//! after the daemon restarted.
use std::time::{Duration, Instant};

use portwatch_tests::{
    Daemon, count, find, free_port, json_lines, on_port, portwatch, portwatch_output, scenario,
};
use serde_json::Value;

fn who(args: &[&str], state_dir: &std::path::Path) -> (i32, Vec<Value>, String) {
    let state_dir = state_dir.to_str().unwrap();
    let (code, out, err) =
        portwatch([&["who"], args, &["--json", "--state-dir", state_dir]].concat());
    (code, json_lines(&out), err)
}

/// Polls `who` until a history row satisfies `ok` (the store commits in batches).
fn history(args: &[&str], d: &std::path::Path, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, rows, err) = who(args, d);
        assert_eq!(code, 0, "{err}");
        if let Some(r) = rows.into_iter().find(|r| r["source"] == "history" && ok(r)) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no matching history for who {args:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_listener_that_lived_milliseconds_is_named_after_it_exited_and_after_a_restart() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The state outlives both daemons.
    let state_tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with_state(state_tmp.path());
    let s = scenario(["exit-fast", addr.as_str()]);
    d.events_of(s.pid, |e| count(e, "close") >= 1);
    let p = port.to_string();
    let row = history(&[&p], &d.state_dir, |r| r["process"]["pid"] == s.pid);
    assert_eq!(row["role"], "listening");
    assert_eq!(row["transport"], "tcp");
    assert_eq!(row["local"]["address"], "127.0.0.1");
    // The same port class as events carry.
    assert_eq!(
        row["port"]["class"],
        if port >= 49152 {
            "dynamic"
        } else {
            "registered"
        }
    );
    assert!(row["port"]["ephemeral"].is_boolean());
    assert!(
        row["process"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("/portwatch-scenario"),
        "{row}"
    );
    let argv = row["process"]["command_line"].as_array().unwrap();
    assert_eq!(argv[1], "exit-fast");
    assert_eq!(argv[2], addr.as_str());
    let (from, to) = (row["from"].as_str().unwrap(), row["to"].as_str().unwrap());
    assert!(from <= to, "{row}");
    // The process is gone; the daemon restarts; the history stays.
    let state = d.state_dir.clone();
    let (exit, _) = d.stop();
    assert!(exit.success());
    let d2 = portwatch_tests::Daemon::start_with_state(&state);
    let row = history(&[&p, "--since", "10m"], &state, |r| {
        r["process"]["pid"] == s.pid
    });
    assert_eq!(row["from"], from);
    drop(d2);
}

#[test]
fn a_connects_ephemeral_port_names_the_client_and_its_peer_at_that_time() {
    let mut d = Daemon::start(&[]);
    let s = scenario(["tcp-connect", "127.0.0.1:0"]);
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 2);
    let connect = find(&evs, "connect", "success");
    let local_port = connect["network"]["local"]["port"]
        .as_u64()
        .unwrap()
        .to_string();
    let at = connect["timestamp"].as_str().unwrap();
    let row = history(&[&local_port, "--at", at], &d.state_dir, |r| {
        r["role"] == "connected"
    });
    assert_eq!(row["process"]["pid"], s.pid);
    assert_eq!(row["peer"]["address"], "127.0.0.1");
    assert_eq!(row["peer"]["port"], connect["network"]["peer"]["port"]);
    // Long before it, nobody held that ephemeral port in this history.
    let (_, rows, _) = who(&[&local_port, "--at", "2000-01-01T00:00:00Z"], &d.state_dir);
    assert!(
        rows.iter().all(|r| r["process"]["pid"] != s.pid),
        "{rows:?}"
    );
}

#[test]
fn a_port_taken_by_sendto_without_bind_is_named_while_held_and_after() {
    let mut d = Daemon::start(&[]);
    let s = scenario(["udp-sendto", "hold"]);
    let evs = d.events_of(s.pid, |e| count(e, "bind") >= 3);
    let implicit = evs
        .iter()
        .find(|e| e["implicit"] == true && e["network"]["type"] == "ipv4")
        .unwrap_or_else(|| panic!("{evs:#?}"));
    let port = implicit["network"]["local"]["port"].as_u64().unwrap();
    assert_eq!(
        s.report["local4"].as_str().unwrap(),
        format!("0.0.0.0:{port}")
    );
    let p = port.to_string();
    // While the socket lives: its open interval names the process.
    let row = history(&[&p], &d.state_dir, |r| r["process"]["pid"] == s.pid);
    assert_eq!(row["role"], "bound", "{row}");
    assert_eq!(row["transport"], "udp", "{row}");
    assert!(row["to"].is_null(), "still held: {row}");
    // And once it is gone, the closed interval still does.
    let pid = s.pid;
    drop(s);
    d.events_of(pid, |e| count(e, "close") >= 3);
    let row = history(&[&p, "--since", "10m"], &d.state_dir, |r| {
        r["process"]["pid"] == pid && !r["to"].is_null()
    });
    assert!(
        row["process"]["executable"]
            .as_str()
            .is_some_and(|e| e.ends_with("/portwatch-scenario")),
        "{row}"
    );
}

#[test]
fn a_listener_opened_before_any_daemon_is_found_now_from_the_kernel() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = scenario(["hold-listen", addr.as_str()]);
    let dir = tempfile::tempdir().unwrap();
    let (code, rows, err) = who(&[&port.to_string()], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("no tenancy history"),
        "says there is no history: {err}"
    );
    let now = rows
        .iter()
        .find(|r| r["source"] == "now")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(now["role"], "listening");
    assert_eq!(now["process"]["pid"], s.pid);
    assert!(
        now["process"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("/portwatch-scenario")
    );
    assert_eq!(now["process"]["user"]["name"], "root");
    // The readable form says what kind of port it is, then the table.
    let table = portwatch_output([
        "who",
        &port.to_string(),
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with(&format!("port {port}: ")), "{text}");
    assert!(
        text.contains("listening") && text.contains(&s.pid.to_string()),
        "{text}"
    );
}

#[test]
fn sockets_opened_before_the_daemon_are_snapshot_events_and_in_history() {
    let port = free_port();
    let addr = format!("[::1]:{port}");
    let listener = scenario(["hold-listen", addr.as_str()]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let d = Daemon::start(&[]);
    // The scan is over once the status line is written, so its events are already in the log.
    let lines = d.lines();
    let snap: Vec<&Value> = lines.iter().filter(|l| l["origin"] == "snapshot").collect();
    let l = snap
        .iter()
        .find(|l| on_port(l, port))
        .unwrap_or_else(|| panic!("no snapshot event for port {port}: {snap:?}"));
    assert_eq!(l["event"], "listen");
    assert_eq!(l["probe"], "sock_diag");
    assert_eq!(l["network"]["transport"], "tcp");
    assert_eq!(l["network"]["type"], "ipv6");
    assert_eq!(l["network"]["local"]["address"], "::1");
    assert_eq!(l["process"]["pid"], listener.pid);
    assert_eq!(l["process"]["comm"], "portwatch-scena");
    assert!(
        l["process"]["ppid"].is_u64() && l["process"]["parent_comm"].is_string(),
        "{l}"
    );
    let u = snap
        .iter()
        .find(|l| on_port(l, udp_port))
        .unwrap_or_else(|| panic!("no snapshot event for UDP port {udp_port}"));
    assert_eq!(
        (&u["event"], &u["network"]["transport"]),
        (&"bind".into(), &"udp".into())
    );
    assert_eq!(u["process"]["pid"], std::process::id());
    // Live events say where they came from too.
    let p = port.to_string();
    let row = history(&[&p], &d.state_dir, |r| r["process"]["pid"] == listener.pid);
    assert_eq!(row["role"], "listening");
    assert!(row["to"].is_null(), "still open: {row}");
    let start = &lines[0];
    assert_eq!(
        (&start["event"], &start["reason"]),
        (&"status".into(), &"start".into())
    );
    let (exit, lines) = d.stop();
    assert!(exit.success());
    let stop = lines.last().unwrap();
    assert_eq!(
        (&stop["event"], &stop["reason"]),
        (&"status".into(), &"stop".into())
    );
    assert!(
        stop["counters"]["events"]["snapshot"].as_u64().unwrap() >= 2,
        "{stop}"
    );
    assert!(stop["counters"]["caches"]["processes"]["evictions"].is_u64());
    portwatch_tests::schema::check_log(&lines).unwrap();
    drop(udp);
}

#[test]
fn bad_input_is_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = who(&["htttp"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("`htttp` is not a service name in /etc/services"),
        "{err}"
    );
    let (code, _, err) = who(&["70000"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("`70000` is not a port number"), "{err}");
    let (code, _, err) = who(&["80", "--at", "yesterday-ish"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("`yesterday-ish` is not a time"), "{err}");
    std::fs::write(dir.path().join("history.sqlite"), vec![7u8; 4096]).unwrap();
    let (code, _, err) = who(&["80"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("history.sqlite") && err.contains("not a database"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The daemon refuses a corrupt store at start, naming it, before attaching anything.
    let out = portwatch_output([
        "run",
        "--no-stdout",
        "--status-socket",
        dir.path().join("s.sock").to_str().unwrap(),
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("history.sqlite") && err.contains("not a database"),
        "{err}"
    );
}
