//! The listener policy and its alerts, with real listeners on loopback (and one network namespace
//! of a scenario's own): every alert kind, dedup across a restart, reconciliation after lost
//! events, the exec hook, and policy reloads.
use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use portwatch_tests::{
    Daemon, alerts, free_fixed_port, free_port, on_port, portwatch, scenario, schema, wait_until,
    write_policy,
};
use serde_json::Value;

#[test]
fn unexpected_and_wildcard_listeners_alert_once_and_repeats_are_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = free_fixed_port();
    let (wide_port, other) = (allowed + 1, allowed + 2);
    let mut d = Daemon::start_with_policy(
        dir.path(),
        &format!(
            "[settings]\nsummary_interval_seconds = 2\n[[allow]]\nnote = \"loopback only\"\ntransport = \"tcp\"\nport = [{allowed}, {wide_port}]\naddress = \"loopback\"\n"
        ),
        &[],
    );
    let ok = scenario(["hold-listen", &format!("127.0.0.1:{allowed}")]);
    let wide = scenario(["hold-listen", &format!("0.0.0.0:{wide_port}")]);
    let a = d.wait_alert("wildcard_listener", |a| {
        a["alert"]["kind"] == "wildcard_listener"
    });
    assert_eq!(a["process"]["pid"], wide.pid);
    assert_eq!(a["network"]["local"]["address"], "0.0.0.0");
    assert_eq!(a["origin"], "kernel");
    assert_eq!(a["alert"]["severity"], "high");
    assert!(
        a["alert"]["rule"]
            .as_str()
            .unwrap()
            .contains("loopback only"),
        "{a}"
    );
    let first = scenario(["hold-listen", &format!("127.0.0.1:{other}")]);
    let u = d.wait_alert("unexpected_listener", |a| {
        a["alert"]["kind"] == "unexpected_listener" && on_port(a, other)
    });
    assert_eq!(u["process"]["pid"], first.pid);
    assert!(
        u["process"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("/portwatch-scenario")
    );
    assert_eq!(u["alert"]["count"], 1);
    // The same executable on the same port and scope again: counted, not alerted again.
    drop(first);
    let again = scenario(["hold-listen", &format!("127.0.0.1:{other}")]);
    let s = d.wait_alert("summary", |a| {
        a["alert"]["summary"] == true && on_port(a, other)
    });
    assert_eq!(s["alert"]["count"], 2);
    assert_eq!(s["alert"]["first_seen"], u["alert"]["first_seen"]);
    let all = alerts(&d.lines());
    assert_eq!(
        all.iter()
            .filter(|a| on_port(a, other) && a["alert"]["summary"].is_null())
            .count(),
        1,
        "{all:#?}"
    );
    assert!(
        !all.iter().any(|a| a["process"]["pid"] == ok.pid),
        "the allowed listener raised nothing: {all:#?}"
    );
    // Outputs besides the log: a WARN diagnostic.
    assert!(d.stderr_text().contains("WARN") && d.stderr_text().contains("ALERT"));
    let st = d.status();
    assert!(
        st["alerts"]["counters"]["repeats"].as_u64().unwrap() >= 1,
        "{st}"
    );
    let (_, lines) = d.stop();
    schema::check_log(&lines).unwrap();
    drop((ok, wide, again));
}

#[test]
fn a_listener_inside_the_ephemeral_range_alerts_even_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut d = Daemon::start_with_policy(dir.path(), &format!("[[allow]]\nport = {port}\n"), &[]);
    let s = scenario(["hold-listen", &format!("[::1]:{port}")]);
    let a = d.wait_alert("ephemeral_port_listener", |a| on_port(a, port));
    assert_eq!(a["alert"]["kind"], "ephemeral_port_listener");
    assert_eq!(a["port"]["ephemeral"], true);
    assert_eq!(a["process"]["pid"], s.pid);
    let kinds: Vec<Value> = alerts(&d.lines())
        .iter()
        .filter(|a| on_port(a, port))
        .map(|a| a["alert"]["kind"].clone())
        .collect();
    assert_eq!(kinds, ["ephemeral_port_listener"]);
}

#[test]
fn a_udp_socket_on_a_port_it_named_is_a_listener_even_inside_the_ephemeral_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with_policy(dir.path(), "[[allow]]\nport = 1\n", &[]);
    // A port the kernel would pick (inside the range), but named by the caller: like mosh.
    let named = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = scenario(["udp-bind", &format!("127.0.0.1:{named}")]);
    let a = d.wait_alert("named UDP port", |a| {
        a["alert"]["kind"] == "unexpected_listener" && on_port(a, named)
    });
    assert_eq!(a["network"]["transport"], "udp");
    assert_eq!(a["port"]["requested"], true);
    assert_eq!(a["process"]["pid"], s.pid);
    d.wait_alert("ephemeral UDP listener", |a| {
        a["alert"]["kind"] == "ephemeral_port_listener" && on_port(a, named)
    });
    // bind(…, 0): the kernel picked the port; not a listener.
    let picked = scenario(["udp-bind", "127.0.0.1:0"]);
    let evs = d.events_of(picked.pid, |e| e.iter().any(|e| e["event"] == "close"));
    let bind = evs.iter().find(|e| e["event"] == "bind").unwrap();
    assert_eq!(bind["port"]["requested"], false);
    let port = bind["network"]["local"]["port"].as_u64().unwrap() as u16;
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alerts(&d.lines()).iter().any(|a| on_port(a, port)));
}

#[test]
fn a_required_listener_alerts_when_missing_at_start_and_when_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (present, absent) = (free_fixed_port(), free_fixed_port() + 7);
    let holder = scenario(["hold-listen", &format!("127.0.0.1:{present}")]);
    let mut d = Daemon::start_with_policy(
        dir.path(),
        &format!(
            "[[allow]]\nnote = \"present\"\nport = {present}\nrequired = true\n\n[[allow]]\nnote = \"absent\"\nport = {absent}\nrequired = true\n"
        ),
        &[],
    );
    let a = d.wait_alert("required (absent)", |a| {
        a["alert"]["kind"] == "required_listener_missing"
    });
    assert!(
        a["alert"]["rule"].as_str().unwrap().contains("\"absent\""),
        "{a}"
    );
    assert_eq!(a["origin"], "snapshot");
    assert!(a["process"].is_null() && a["network"].is_null());
    drop(holder);
    let gone = d.wait_alert("required (present, gone)", |a| {
        a["alert"]["kind"] == "required_listener_missing"
            && a["alert"]["rule"].as_str().unwrap().contains("\"present\"")
    });
    assert_eq!(gone["origin"], "kernel");
    assert_eq!(gone["alert"]["detail"]["ports"][0], present.to_string());
}

#[test]
fn ephemeral_port_exhaustion_from_eaddrnotavail_and_from_one_busy_destination() {
    let dir = tempfile::tempdir().unwrap();
    // 0.001 of the ~28,000-port range: 40 connections to one destination is too many.
    let mut d = Daemon::start_with_policy(
        dir.path(),
        "[settings]\nreconcile_interval_seconds = 1\nexhaustion_share = 0.001\n",
        &[],
    );
    let s = scenario(["exhaust-ports"]);
    assert_eq!(s.report["errno"], 99, "{}", s.report);
    let a = d.wait_alert("EADDRNOTAVAIL exhaustion", |a| {
        a["alert"]["kind"] == "ephemeral_port_exhaustion" && a["process"]["pid"] == s.pid
    });
    assert_eq!(a["alert"]["detail"]["destination"]["port"], 5000);
    assert_eq!(a["network"]["netns"], s.report["netns"]);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = server.local_addr().unwrap();
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(dest).unwrap()).collect();
    let b = d.wait_alert("busy destination", |a| {
        a["alert"]["kind"] == "ephemeral_port_exhaustion"
            && a["alert"]["detail"]["destination"]["port"] == dest.port()
    });
    assert_eq!(b["origin"], "reconcile");
    assert!(
        b["alert"]["detail"]["sockets"].as_u64().unwrap() >= 40,
        "{b}"
    );
    drop(held);
}

#[test]
fn dedup_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let policy = write_policy(dir.path(), "[[allow]]\nport = 1\n");
    let args = ["--policy", policy.to_str().unwrap()];
    let port = free_fixed_port();
    let holder = scenario(["hold-listen", &format!("127.0.0.1:{port}")]);
    let mut d = Daemon::start_with_state_args(&state, &args);
    let first = d.wait_alert("snapshot listener", |a| on_port(a, port));
    assert_eq!(first["origin"], "snapshot");
    let (exit, _) = d.stop();
    assert!(exit.success());
    let mut d2 = Daemon::start_with_state_args(&state, &args);
    // The restart finds it again in its snapshot and stays quiet about it...
    let other = free_fixed_port() + 3;
    let s = scenario(["hold-listen", &format!("127.0.0.1:{other}")]);
    // ... while a new listener still alerts (so quiet means remembered, not broken).
    d2.wait_alert("new listener after restart", |a| on_port(a, other));
    assert!(
        !alerts(&d2.lines()).iter().any(|a| on_port(a, port)),
        "re-alerted after a restart"
    );
    assert!(d2.status()["alerts"]["remembered"].as_u64().unwrap() >= 2);
    drop((holder, s));
}

#[test]
fn reconciliation_alerts_a_listener_whose_event_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A 16 KiB ring filled by a storm while the daemon is stopped: the listener's own event has
    // no room and is lost.
    let mut d = Daemon::start_with_policy(
        dir.path(),
        "[settings]\nreconcile_interval_seconds = 1\n[[allow]]\nport = 1\n",
        &["--ring-buffer-kib", "16"],
    );
    d.signal(libc::SIGSTOP);
    let storm = scenario(["udp-storm", "3000"]);
    let port = free_fixed_port();
    let s = scenario(["hold-listen", &format!("127.0.0.1:{port}")]);
    d.signal(libc::SIGCONT);
    let a = d.wait_alert("reconciled listener", |a| on_port(a, port));
    assert_eq!(a["origin"], "reconcile", "{a}");
    assert_eq!(a["process"]["pid"], s.pid);
    let lines = d.lines();
    assert!(lines.iter().any(|l| l["event"] == "loss"));
    assert!(
        !lines
            .iter()
            .any(|l| l["event"] == "listen" && l["process"]["pid"] == s.pid),
        "the listen event was delivered after all; the test proved nothing"
    );
    drop((storm, s));
}

#[test]
fn the_exec_hook_gets_the_alert_json_and_a_hanging_hook_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.json");
    let pidfile = dir.path().join("hook.pid");
    let grandchild = dir.path().join("grandchild.pid");
    let envfile = dir.path().join("hook.env");
    // Every port but ours is allowed and the other kinds are off, so only our listener runs the
    // hook (the host's and the other tests' listeners would otherwise take its turn).
    let only_unexpected = "[alerts]\nwildcard_listener = false\nephemeral_port_listener = false\nrequired_listener_missing = false\nephemeral_port_exhaustion = false\n";
    let port = free_fixed_port();
    let mut d = Daemon::start_with_policy(
        dir.path(),
        &format!(
            "{only_unexpected}[[allow]]\nport = [\"1-{}\", \"{}-65535\"]\n[hook]\nargv = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\ntimeout_seconds = 5\n",
            port - 1,
            port + 1,
            out.display()
        ),
        &[],
    );
    let _s = scenario(["hold-listen", &format!("127.0.0.1:{port}")]);
    let a = d.wait_alert("hooked", |a| on_port(a, port));
    let hooked = || {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(&format!("\"seq\":{},", a["seq"])))
            .map(str::to_string)
    };
    wait_until(
        "the hook's copy of the alert",
        Duration::from_secs(10),
        || hooked().is_some(),
        || format!("hook output: {:?}", fs::read_to_string(&out)),
    );
    let got: Value =
        serde_json::from_str(&hooked().unwrap()).expect("the hook received valid JSON");
    assert_eq!(got["event"], "alert");
    assert_eq!(got["seq"], a["seq"]);
    schema::check(&got).unwrap();
    drop(d);

    // One alert only: a required listener that is not there.
    let port = free_fixed_port() + 11;
    let mut d = Daemon::start_with_policy(
        dir.path(),
        &format!(
            "[alerts]\nunexpected_listener = false\nwildcard_listener = false\nephemeral_port_listener = false\n[[allow]]\nport = {port}\nrequired = true\n[hook]\nargv = [\"/bin/sh\", \"-c\", \"env > {}; sleep 60 & echo $! > {}; echo $$ > {}; exec sleep 60\"]\ntimeout_seconds = 1\n",
            envfile.display(),
            grandchild.display(),
            pidfile.display()
        ),
        &[],
    );
    d.wait_alert("hooked (hanging)", |a| {
        a["alert"]["kind"] == "required_listener_missing"
    });
    wait_until(
        "the hanging hook's timeout",
        Duration::from_secs(15),
        || d.status()["alerts"]["hook"]["timed_out"].as_u64() >= Some(1),
        || d.status().to_string(),
    );
    assert_eq!(d.status()["alerts"]["hook"]["running"], 0);
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the hook {pid} outlived its timeout"
    );
    let orphan: i32 = fs::read_to_string(&grandchild)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        "the hook's own child killed with it",
        Duration::from_secs(5),
        || !Path::new(&format!("/proc/{orphan}")).exists(),
        || format!("pid {orphan} still runs"),
    );
    assert!(d.stderr_text().contains("killed at its timeout"));
    // Nothing of the daemon's environment reaches the hook: a fixed PATH and what sh sets.
    let env = fs::read_to_string(&envfile).unwrap();
    assert!(
        env.lines().any(|l| l.starts_with("PATH=/usr/local/sbin:")),
        "{env}"
    );
    for inherited in ["HOME=", "CARGO", "RUST", "USER="] {
        assert!(
            !env.lines().any(|l| l.starts_with(inherited)),
            "{inherited} leaked into the hook: {env}"
        );
    }
}

#[test]
fn sighup_installs_a_good_policy_and_keeps_the_old_one_when_the_new_is_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_fixed_port();
    let (p2, p3, p5) = (base + 2, base + 3, base + 5);
    let mut d = Daemon::start_with_policy(dir.path(), "[[allow]]\nport = 1\n", &[]);
    let _a = scenario(["hold-listen", &format!("127.0.0.1:{p2}")]);
    d.wait_alert("before reload", |a| on_port(a, p2));
    write_policy(dir.path(), &format!("[[allow]]\nport = [{p2}, {p3}]\n"));
    d.signal(libc::SIGHUP);
    wait_until(
        "the reload",
        Duration::from_secs(10),
        || d.stderr_text().contains("policy reloaded"),
        || d.stderr_text(),
    );
    let allowed = scenario(["hold-listen", &format!("127.0.0.1:{p3}")]);
    d.events_of(allowed.pid, |e| !e.is_empty());
    // An alert would be written right after the event it is about.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alerts(&d.lines()).iter().any(|a| on_port(a, p3)));

    write_policy(dir.path(), "[[allow]]\nport = \"99999\"\n");
    d.signal(libc::SIGHUP);
    wait_until(
        "the failed reload",
        Duration::from_secs(10),
        || d.stderr_text().contains("policy reload failed"),
        || d.stderr_text(),
    );
    let err = d.stderr_text();
    let line = err
        .lines()
        .find(|l| l.contains("policy reload failed"))
        .unwrap();
    assert!(line.contains("ERROR") && line.contains("line 2"), "{line}");
    // The previous policy is in force: p3 still allowed, p5 not.
    let again = scenario(["hold-listen", &format!("[::1]:{p3}")]);
    let s5 = scenario(["hold-listen", &format!("127.0.0.1:{p5}")]);
    d.wait_alert("after a bad reload", |a| on_port(a, p5));
    d.events_of(again.pid, |e| !e.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alerts(&d.lines()).iter().any(|a| on_port(a, p3)));
    assert_eq!(d.status()["alerts"]["reload_failures"], 1);
    drop((allowed, again, s5));
}

#[test]
fn check_policy_and_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[[allow]]\nport = \"9000-8000\"\n").unwrap();
    let (code, _, err) = portwatch(["check-policy", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("line 2") && err.contains("runs backwards"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    let (code, _, err) = portwatch(["check-policy", "/nonexistent/policy.toml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot read policy /nonexistent/policy.toml"),
        "{err}"
    );

    let port = free_fixed_port();
    let s = scenario(["hold-listen", &format!("127.0.0.1:{port}")]);
    let (code, text, err) = portwatch(["baseline"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(&port.to_string()), "{text}");
    let good = dir.path().join("baseline.toml");
    fs::write(&good, &text).unwrap();
    let (code, out, err) = portwatch(["check-policy", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{text}");
    assert!(out.contains("valid"));
    // A daemon on the baseline does not alert on what was listening when it was taken.
    let mut d = Daemon::start(&["--policy", good.to_str().unwrap()]);
    d.wait_for(Duration::from_millis(500), |_| false);
    assert!(
        !alerts(&d.lines())
            .iter()
            .any(|a| a["process"]["pid"] == s.pid),
        "{:#?}",
        alerts(&d.lines())
    );
}
