//! The kernel-to-log pipeline on the running kernel: real sockets from a scenario child with a known
//! pid, and the exact JSON lines the real daemon writes for them. The scenarios and their
//! assertions are shared with the VM tests (`portwatch_tests::scenarios`).
use std::time::Duration;

use portwatch_tests::{
    Daemon, count, find, of_pid, portwatch_output, scenario,
    scenarios::{self, Ctx, Strategy},
    schema, wait_until,
};
use serde_json::Value;

fn finish(d: Daemon) {
    let (status, lines) = d.stop();
    assert!(status.success(), "daemon exit: {status}");
    schema::check_log(&lines).unwrap_or_else(|e| panic!("schema: {e}"));
}

/// One shared scenario against a fresh daemon on this kernel (tracepoint + cgroup strategy).
fn host(name: &str) {
    host_as(name, Strategy::Tracepoint, &[]);
}

/// One shared scenario against a fresh daemon started with `args`, checked as `strategy`.
fn host_as(name: &str, strategy: Strategy, args: &[&str]) {
    let case = scenarios::case(name);
    let mut d = Daemon::start(args);
    let (report, events) = scenarios::run(&mut d, &case, Duration::from_secs(10));
    (case.check)(&Ctx::here(strategy), &case, &report, &events);
    finish(d);
}

/// Without syscall tracepoints, the status line says which failed calls the log shows, no hook
/// is a syscall tracepoint, and a bind that fails before it touched its socket (the second
/// bind of a port in use) is simply not there: no record, no loss, no stale call (the socket
/// that failed never held a port, so its release is not reported either).
#[test]
fn without_syscall_tracepoints_the_status_line_says_which_failures_are_seen() {
    let mut d = Daemon::start(&["--syscall-tracepoints", "false"]);
    let status = d
        .lines()
        .into_iter()
        .find(|l| l["event"] == "status")
        .expect("status");
    let attach = &status["attach"];
    assert_eq!(attach["bind"]["failed_calls"], "none", "{attach}");
    assert_eq!(attach["listen"]["failed_calls"], "none", "{attach}");
    assert_eq!(attach["connect"]["failed_calls"], "handshake", "{attach}");
    assert_eq!(attach["release"].get("failed_calls"), None, "{attach}");
    assert_eq!(
        attach["handshake"]["hooks"][0], "cgroup:sock_ops_calls",
        "{attach}"
    );
    for (family, a) in attach.as_object().expect("attach") {
        for hook in a["hooks"].as_array().expect("hooks") {
            let hook = hook.as_str().expect("hook");
            assert!(!hook.contains("syscalls:"), "{family} hooks {hook}");
        }
    }
    let case = scenarios::case("bind_eaddrinuse");
    let s = scenario(case.args);
    let events = d
        .wait_for(Duration::from_secs(10), |lines| {
            count(&of_pid(lines, s.pid), "close") >= 1
        })
        .map(|lines| of_pid(&lines, s.pid))
        .expect("the holder's close");
    let holder = find(&events, "bind", "success");
    let port = &holder["network"]["local"]["port"];
    assert_eq!(count(&events, "bind"), 1, "{events:#?}");
    assert!(
        events.iter().all(|e| e["outcome"] != "failure"),
        "{events:#?}"
    );
    let (status, lines) = d.stop();
    assert!(status.success());
    let last = lines
        .iter()
        .rev()
        .find(|l| l["event"] == "status")
        .expect("final status");
    assert_eq!(last["counters"]["lost"]["pending_stale"], 0, "{last}");
    assert_eq!(last["counters"]["lost"]["ring_buffer"], 0, "{last}");
    assert!(port.as_u64().is_some_and(|p| p > 0), "{holder}");
}

/// One shared scenario against a daemon without syscall tracepoints.
fn host_without_syscall_tracepoints(name: &str) {
    host_as(
        name,
        Strategy::SocketHooks,
        &["--syscall-tracepoints", "false"],
    );
}

macro_rules! host_scenarios {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { host(stringify!($name)); } )*
    };
}

host_scenarios!(
    tcp_listen_ipv4_loopback,
    tcp_listen_ipv4_wildcard,
    tcp_listen_ipv6_loopback,
    tcp_listen_ipv6_wildcard,
    tcp_listen_without_bind_ipv4,
    tcp_listen_without_bind_ipv6,
    udp_bind_ipv4,
    udp_bind_ipv6,
    tcp_connect_ipv4,
    tcp_connect_ipv6,
    tcp_connect_reset_by_client,
    udp_connect_ipv4,
    udp_connect_ipv6,
    bind_eaddrinuse,
    rebind_tcp_ipv4,
    rebind_udp_ipv6,
    listen_einval_connected,
    connect_econnrefused,
    connect_nonblocking_refused,
    connect_nonblocking_established_ipv6,
    connect_nonblocking_timeout,
    udp_sendto_unbound,
    connect_nonblocking_aborted,
    connect_nonblocking_to_itself,
    udp_sendto_mapped_and_after_disconnect,
    udp_named_bind_after_disconnect,
    short_lived_process,
);

/// The same scenarios on the default configuration, without syscall tracepoints: every one
/// whose calls change a socket. Those that check a call failing before it touched the socket
/// (`bind_eaddrinuse`, ...) are left out: that is what the mode gives up (docs/benchmarks.md).
mod without_syscall_tracepoints {
    macro_rules! socket_hook_scenarios {
        ($($name:ident),* $(,)?) => {
            $( #[test] fn $name() { super::host_without_syscall_tracepoints(stringify!($name)); } )*
        };
    }

    socket_hook_scenarios!(
        tcp_listen_ipv4_loopback,
        tcp_listen_ipv4_wildcard,
        tcp_listen_ipv6_loopback,
        tcp_listen_ipv6_wildcard,
        tcp_listen_without_bind_ipv4,
        tcp_listen_without_bind_ipv6,
        udp_bind_ipv4,
        udp_bind_ipv6,
        tcp_connect_ipv4,
        tcp_connect_ipv6,
        tcp_connect_reset_by_client,
        udp_connect_ipv4,
        udp_connect_ipv6,
        connect_econnrefused,
        connect_nonblocking_refused,
        connect_nonblocking_established_ipv6,
        connect_nonblocking_timeout,
        udp_sendto_unbound,
        connect_nonblocking_aborted,
        connect_nonblocking_to_itself,
        udp_sendto_mapped_and_after_disconnect,
        udp_named_bind_after_disconnect,
        short_lived_process,
    );
}

#[test]
fn every_shared_scenario_has_a_host_test() {
    let src = include_str!("pipeline.rs");
    for c in scenarios::cases() {
        assert!(
            src.contains(&format!("    {},\n", c.name)),
            "scenario {} is not run on the host",
            c.name
        );
        let without = &src[src
            .find("mod without_syscall_tracepoints")
            .expect("the module")..];
        assert_eq!(
            without.contains(&format!("        {},\n", c.name)),
            scenarios::applies(Strategy::SocketHooks, c.name),
            "scenario {} without syscall tracepoints",
            c.name
        );
    }
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
    // This kernel refuses fentry and has no kprobes (docs/architecture.md): auto lands on tracepoint.
    for fam in ["bind", "listen", "connect", "release"] {
        assert_eq!(st["attach"][fam]["strategy"], "tracepoint", "{st}");
    }
    finish(d);
}

#[test]
fn forced_strategy_that_fails_is_a_clear_error() {
    portwatch_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = portwatch_output([
        "run",
        "--attach",
        "fentry",
        "--status-socket",
        dir.path().join("status.sock").to_str().unwrap(),
    ]);
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

#[test]
fn a_partial_last_line_from_a_crash_is_cut_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let whole = "{\"schema\":1,\"event\":\"bind\"}\n";
    std::fs::write(&log, format!("{whole}{{\"schema\":1,\"ev")).unwrap();
    let d = Daemon::start_with_log(dir, log.clone(), &[]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with(whole), "the complete line survives");
    let second: Value =
        serde_json::from_str(text.lines().nth(1).unwrap()).expect("the next line is whole JSON");
    assert_eq!(second["event"], "status");
    assert!(
        d.stderr_text().contains("repaired a partial last line"),
        "{}",
        d.stderr_text()
    );
    // stderr is a pipe here: diagnostics carry no terminal colour codes.
    assert!(!d.stderr_text().contains('\x1b'), "{:?}", d.stderr_text());
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn status_answers_on_its_socket_and_says_clearly_when_no_daemon_runs() {
    let d = Daemon::start(&[]);
    let s = scenario(["udp-bind", "127.0.0.1:0"]);
    let mut d = d;
    d.events_of(s.pid, |e| count(e, "close") >= 1);
    let st = d.status();
    assert_eq!(st["pid"], d.pid());
    assert!(
        st["events"]["bind"].as_u64().unwrap() >= 1 && st["events"]["close"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert_eq!(st["attach"]["bind"], "tracepoint");
    assert_eq!(st["lost"]["ring_buffer"], 0);
    assert_eq!(st["log"]["path"], d.log.display().to_string());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let table = portwatch_output(["status", "--socket", d.socket.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("events bind"));
    finish(d);

    let out = portwatch_output(["status", "--socket", "/nonexistent/status.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no portwatch daemon answers on /nonexistent/status.sock"),
        "{err}"
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let d = Daemon::start(&[]);
    let out = portwatch_output([
        "run",
        "--no-stdout",
        "--status-socket",
        d.socket.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another portwatch is already running"),
        "{err}"
    );
    // The first one is unaffected.
    let s = scenario(["udp-bind", "127.0.0.1:0"]);
    let mut d = d;
    d.events_of(s.pid, |e| count(e, "bind") >= 1);
    finish(d);
}

#[test]
fn config_errors_name_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portwatch.toml");
    std::fs::write(&cfg, "attach = \"auto\"\n[log]\nrotate_keep = \"many\"\n").unwrap();
    let out = portwatch_output(["run", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&cfg.display().to_string()) && err.contains("line 3, column 15"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let defaults = portwatch_output(["config", "--print-defaults"]);
    assert!(String::from_utf8_lossy(&defaults.stdout).contains("ring_buffer_kib = 1024"));
}

#[test]
fn a_listen_is_attributed_to_the_image_that_made_it_even_after_an_exec() {
    let mut d = Daemon::start(&[]);
    // Stalled, the daemon attributes the listen only after the process has exec'd /bin/cat.
    d.signal(libc::SIGSTOP);
    let s = scenario(["listen-exec", "127.0.0.1:0"]);
    let exe = s.report["executable"].as_str().unwrap().to_string();
    wait_until(
        "the exec",
        Duration::from_secs(5),
        || std::fs::read_link(format!("/proc/{}/exe", s.pid)).is_ok_and(|p| p.ends_with("cat")),
        String::new,
    );
    d.signal(libc::SIGCONT);
    let evs = d.events_of(s.pid, |e| count(e, "listen") >= 1);
    let listen = find(&evs, "listen", "success");
    assert_eq!(listen["process"]["comm"], "portwatch-scena");
    assert_eq!(listen["process"]["executable"], exe.as_str(), "{listen}");
    assert_ne!(listen["process"]["command_line"][0], "/bin/cat", "{listen}");
    finish(d);
}
