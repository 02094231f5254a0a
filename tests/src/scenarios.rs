//! The scenarios every attach strategy must get right, and their assertions. The host integration
//! tests run them against the tracepoint strategy on the running kernel; `cargo xtask vm-test`
//! runs them in a VM on a stock kernel with fentry, kprobe, tracepoint and auto, and checks what
//! comes back with these same functions.
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Daemon, count, find, of_pid, scaled, scenario, split_addr};

/// The scenario binary's comm: its file name cut to 15 bytes by the kernel.
pub const SCENARIO_COMM: &str = "portwatch-scena";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Tracepoint,
    Kprobe,
    Fentry,
    /// The tracepoint strategy without syscall tracepoints (`--syscall-tracepoints false`, the
    /// default): the socket hooks report calls, and failures before a socket changed go unseen.
    SocketHooks,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "tracepoint" => Some(Strategy::Tracepoint),
            "kprobe" => Some(Strategy::Kprobe),
            "fentry" => Some(Strategy::Fentry),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Tracepoint | Strategy::SocketHooks => "tracepoint",
            Strategy::Kprobe => "kprobe",
            Strategy::Fentry => "fentry",
        }
    }
}

/// The operations whose `probe` names differ between strategies.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    BindOk {
        v6: bool,
    },
    BindFail {
        v6: bool,
    },
    /// A failed bind that named no port.
    BindFailPortZero {
        v6: bool,
    },
    Listen,
    TcpConnect {
        v6: bool,
    },
    UdpConnect {
        v6: bool,
    },
    Close,
}

pub fn probe(strategy: Strategy, op: Op) -> &'static str {
    use Op::*;
    use Strategy::*;
    match (strategy, op) {
        (Tracepoint, BindOk { v6: false }) => "cgroup:post_bind4",
        (Tracepoint, BindOk { v6: true }) => "cgroup:post_bind6",
        (Tracepoint, BindFail { v6: false }) => "cgroup:bind4",
        (Tracepoint, BindFail { v6: true }) => "cgroup:bind6",
        (Tracepoint, BindFailPortZero { .. }) => "tracepoint:syscalls:sys_exit_bind",
        (Tracepoint, Listen) => "tracepoint:syscalls:sys_enter_listen",
        (Tracepoint, TcpConnect { v6 } | UdpConnect { v6 }) => {
            if v6 {
                "cgroup:connect6"
            } else {
                "cgroup:connect4"
            }
        }
        (Tracepoint | SocketHooks, Close) => "cgroup:sock_release",
        (SocketHooks, BindOk { v6: false }) => "cgroup:post_bind4",
        (SocketHooks, BindOk { v6: true }) => "cgroup:post_bind6",
        (SocketHooks, BindFail { .. } | BindFailPortZero { .. }) => "(not reported)",
        (SocketHooks, Listen | TcpConnect { .. }) => "cgroup:sock_ops",
        (SocketHooks, UdpConnect { v6 }) => {
            if v6 {
                "cgroup:connect6"
            } else {
                "cgroup:connect4"
            }
        }
        (Kprobe, BindOk { v6 } | BindFail { v6 } | BindFailPortZero { v6 }) => {
            if v6 {
                "kprobe:inet6_bind"
            } else {
                "kprobe:inet_bind"
            }
        }
        (Kprobe, Listen) => "kprobe:inet_listen",
        (Kprobe, TcpConnect { .. }) => "kprobe:inet_stream_connect",
        (Kprobe, UdpConnect { .. }) => "kprobe:inet_dgram_connect",
        (Kprobe, Close) => "kprobe:inet_release",
        (Fentry, BindOk { v6 } | BindFail { v6 } | BindFailPortZero { v6 }) => {
            if v6 {
                "fexit:inet6_bind"
            } else {
                "fexit:inet_bind"
            }
        }
        (Fentry, Listen) => "fexit:inet_listen",
        (Fentry, TcpConnect { .. }) => "fexit:inet_stream_connect",
        (Fentry, UdpConnect { .. }) => "fexit:inet_dgram_connect",
        (Fentry, Close) => "fentry:inet_release",
    }
}

/// This process's cgroup v2 path.
pub fn own_cgroup() -> Option<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Whether `port` is ephemeral on this host, as the daemon should say.
fn ephemeral(port: u16) -> bool {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    let mut it = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    let (lo, hi) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    let in_reserved = reserved
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .any(|s| match s.split_once('-') {
            Some((a, b)) => (a.parse().unwrap_or(1)..=b.parse().unwrap_or(0)).contains(&port),
            None => s.parse::<u16>() == Ok(port),
        });
    (lo..=hi).contains(&port) && !in_reserved
}

/// What the checks need to know about where the scenario ran.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub strategy: Strategy,
    /// The pid that spawned the scenario client (its expected ppid).
    pub parent_pid: u32,
    /// Inode of the network namespace the client ran in.
    pub netns: u64,
    /// The cgroup v2 path the client inherited from its parent.
    pub cgroup: Option<String>,
    /// The kernel's (major, minor) version: what some strategies can do depends on it.
    pub kernel: (u32, u32),
}

/// (major, minor) of a kernel release string such as `5.10.0-32-cloud-amd64`; (0, 0) if unreadable.
pub fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl Ctx {
    /// For a scenario spawned by this process, in this network namespace.
    pub fn here(strategy: Strategy) -> Ctx {
        use std::os::unix::fs::MetadataExt;
        Ctx {
            strategy,
            parent_pid: std::process::id(),
            netns: std::fs::metadata("/proc/self/ns/net")
                .map(|m| m.ino())
                .unwrap_or(0),
            cgroup: own_cgroup(),
            kernel: kernel_version(
                &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
            ),
        }
    }
}

pub struct Case {
    pub name: &'static str,
    pub args: &'static [&'static str],
    /// True once every event the scenario causes is there: strategies are compared on the
    /// complete set, so this must not stop early.
    pub done: fn(&[Value]) -> bool,
    /// Panics with a message when the events are wrong.
    pub check: fn(&Ctx, &Case, &Value, &[Value]),
}

fn closes(n: usize) -> impl Fn(&[Value]) -> bool {
    move |e| count(e, "close") >= n
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "tcp_listen_ipv4_loopback",
            args: &["tcp-listen", "127.0.0.1:0"],
            done: |e| closes(1)(e),
            check: check_tcp_listen,
        },
        Case {
            name: "tcp_listen_ipv4_wildcard",
            args: &["tcp-listen", "0.0.0.0:0"],
            done: |e| closes(1)(e),
            check: check_tcp_listen,
        },
        Case {
            name: "tcp_listen_ipv6_loopback",
            args: &["tcp-listen", "[::1]:0"],
            done: |e| closes(1)(e),
            check: check_tcp_listen,
        },
        Case {
            name: "tcp_listen_ipv6_wildcard",
            args: &["tcp-listen", "[::]:0"],
            done: |e| closes(1)(e),
            check: check_tcp_listen,
        },
        Case {
            name: "tcp_listen_without_bind_ipv4",
            args: &["listen-unbound", "v4"],
            done: |e| closes(1)(e),
            check: check_listen_unbound,
        },
        Case {
            name: "tcp_listen_without_bind_ipv6",
            args: &["listen-unbound", "v6"],
            done: |e| closes(1)(e),
            check: check_listen_unbound,
        },
        Case {
            name: "udp_bind_ipv4",
            args: &["udp-bind", "127.0.0.1:0"],
            done: |e| closes(1)(e),
            check: check_udp_bind,
        },
        Case {
            name: "udp_bind_ipv6",
            args: &["udp-bind", "[::1]:0"],
            done: |e| closes(1)(e),
            check: check_udp_bind,
        },
        // listener: bind, listen, close; client: connect, close. The accepted socket is closed
        // first, and its release is no port event.
        Case {
            name: "tcp_connect_ipv4",
            args: &["tcp-connect", "127.0.0.1:0"],
            done: |e| closes(2)(e),
            check: check_tcp_connect,
        },
        Case {
            name: "tcp_connect_ipv6",
            args: &["tcp-connect", "[::1]:0"],
            done: |e| closes(2)(e),
            check: check_tcp_connect,
        },
        Case {
            name: "tcp_connect_reset_by_client",
            args: &["tcp-connect-reset", "127.0.0.1:0"],
            done: |e| closes(2)(e),
            check: check_tcp_connect_reset,
        },
        Case {
            name: "udp_connect_ipv4",
            args: &["udp-connect", "127.0.0.1:9"],
            done: |e| closes(1)(e),
            check: check_udp_connect,
        },
        Case {
            name: "udp_connect_ipv6",
            args: &["udp-connect", "[::1]:9"],
            done: |e| closes(1)(e),
            check: check_udp_connect,
        },
        Case {
            name: "bind_eaddrinuse",
            args: &["bind-in-use", "127.0.0.1:0"],
            done: |e| e.iter().any(|x| x["outcome"] == "failure") && count(e, "close") >= 1,
            check: check_bind_in_use,
        },
        Case {
            name: "rebind_tcp_ipv4",
            args: &["rebind-tcp", "127.0.0.1:0"],
            done: |e| e.iter().any(|x| x["outcome"] == "failure") && count(e, "close") >= 1,
            check: check_rebind,
        },
        Case {
            name: "rebind_udp_ipv6",
            args: &["rebind-udp", "[::1]:0"],
            done: |e| e.iter().any(|x| x["outcome"] == "failure") && count(e, "close") >= 1,
            check: check_rebind,
        },
        Case {
            name: "listen_einval_connected",
            args: &["listen-connected", "127.0.0.1:0"],
            done: |e| e.iter().any(|x| x["outcome"] == "failure") && count(e, "close") >= 2,
            check: check_listen_connected,
        },
        Case {
            name: "connect_econnrefused",
            args: &["connect-refused", "[::1]:0"],
            // the probe listener's close and the refused client's close
            done: |e| e.iter().any(|x| x["event"] == "connect") && count(e, "close") >= 2,
            check: check_connect_refused,
        },
        Case {
            name: "connect_nonblocking_refused",
            args: &["connect-nonblocking", "127.0.0.1:0"],
            // the probe listener's close and the refused client's close
            done: |e| e.iter().any(|x| x["event"] == "connect_result") && count(e, "close") >= 2,
            check: check_connect_nonblocking,
        },
        Case {
            name: "connect_nonblocking_established_ipv6",
            args: &["connect-nonblocking-ok", "[::1]:0"],
            done: |e| e.iter().any(|x| x["event"] == "connect_result") && count(e, "close") >= 2,
            check: check_connect_nonblocking_ok,
        },
        Case {
            name: "connect_nonblocking_timeout",
            args: &["connect-timeout"],
            // the listener, the connection filling its queue and the one that timed out
            done: |e| e.iter().any(|x| x["event"] == "connect_result") && count(e, "close") >= 3,
            check: check_connect_timeout,
        },
        Case {
            name: "connect_nonblocking_aborted",
            args: &["connect-abort"],
            done: |e| e.iter().any(|x| x["event"] == "connect_result") && count(e, "close") >= 3,
            check: check_connect_abort,
        },
        Case {
            name: "connect_nonblocking_to_itself",
            args: &["connect-self", "127.0.0.1:0"],
            done: |e| e.iter().any(|x| x["event"] == "connect_result") && count(e, "close") >= 1,
            check: check_connect_self,
        },
        Case {
            name: "udp_sendto_mapped_and_after_disconnect",
            args: &["udp-sendto-again"],
            done: |e| closes(2)(e),
            check: check_udp_sendto_again,
        },
        Case {
            name: "udp_sendto_unbound",
            args: &["udp-sendto"],
            done: |e| closes(3)(e),
            check: check_udp_sendto,
        },
        Case {
            name: "udp_named_bind_after_disconnect",
            args: &["udp-disconnect-bind"],
            done: |e| closes(2)(e),
            check: check_udp_disconnect_bind,
        },
        Case {
            name: "short_lived_process",
            args: &["exit-fast", "127.0.0.1:0"],
            done: |e| closes(1)(e),
            check: check_exit_fast,
        },
    ]
}

/// The scenarios whose point is a call failing before it changed a socket: without syscall
/// tracepoints (`Strategy::SocketHooks`) such a call is not written, by design.
pub const NEED_SYSCALL_TRACEPOINTS: [&str; 4] = [
    "bind_eaddrinuse",
    "rebind_tcp_ipv4",
    "rebind_udp_ipv6",
    "listen_einval_connected",
];

/// Whether `strategy` is expected to pass scenario `name`.
pub fn applies(strategy: Strategy, name: &str) -> bool {
    strategy != Strategy::SocketHooks || !NEED_SYSCALL_TRACEPOINTS.contains(&name)
}

pub fn case(name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// Runs one case against a running daemon: the client's report and its events, in log order.
pub fn run(d: &mut Daemon, case: &Case, timeout: Duration) -> (Value, Vec<Value>) {
    let s = scenario(case.args);
    let got = d.wait_for(scaled(timeout), |lines| (case.done)(&of_pid(lines, s.pid)));
    let lines = got.unwrap_or_else(|| d.lines());
    (s.report.clone(), of_pid(&lines, s.pid))
}

fn pid_of(report: &Value) -> u32 {
    report["pid"].as_u64().expect("report pid") as u32
}

fn kinds(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["event"].as_str().unwrap_or("?"))
        .collect()
}

fn is_v6(addr: &str) -> bool {
    addr.starts_with('[')
}

/// The fields every port event of a (live) scenario client carries.
pub fn assert_process(ctx: &Ctx, ev: &Value, pid: u32, args: &[&str]) {
    let p = &ev["process"];
    assert_eq!(p["pid"], pid, "{ev}");
    assert_eq!(p["tid"], pid, "single-threaded client: {ev}");
    assert_eq!(p["ppid"], ctx.parent_pid, "{ev}");
    assert_eq!(p["comm"], SCENARIO_COMM, "{ev}");
    assert_eq!(p["user"], json!({"id": 0, "name": "root"}), "{ev}");
    assert_eq!(p["group"], json!({"id": 0}), "{ev}");
    let exe = p["executable"]
        .as_str()
        .unwrap_or_else(|| panic!("no executable: {ev}"));
    assert!(exe.ends_with("/portwatch-scenario"), "{ev}");
    let argv: Vec<&str> = p["command_line"]
        .as_array()
        .unwrap_or_else(|| panic!("no command_line: {ev}"))
        .iter()
        .map(|a| a.as_str().unwrap_or(""))
        .collect();
    assert!(argv[0].ends_with("portwatch-scenario"), "{ev}");
    assert_eq!(&argv[1..], args, "{ev}");
    assert_eq!(ev["network"]["netns"], ctx.netns, "{ev}");
    assert_eq!(ev["process"]["cgroup"], json!(ctx.cgroup), "{ev}");
    let port = ev["network"]["local"]["port"].as_u64().unwrap_or(0) as u16;
    assert_eq!(ev["port"]["ephemeral"], ephemeral(port), "{ev}");
}

pub fn assert_net(ev: &Value, transport: &str, local: &str, peer: Option<&str>) {
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

/// bind(port 0) → listen → close, reported with the port the kernel chose.
fn check_tcp_listen(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    let v6 = is_v6(local);
    assert_ne!(split_addr(local).1, 0);
    assert_eq!(kinds(evs), ["bind", "listen", "close"], "{evs:#?}");
    for ev in evs {
        assert_eq!(ev["outcome"], "success", "{ev}");
        assert_process(ctx, ev, pid_of(report), case.args);
        assert_net(ev, "tcp", local, None);
    }
    assert_eq!(evs[0]["probe"], probe(ctx.strategy, Op::BindOk { v6 }));
    assert_eq!(
        evs[0]["port"]["requested"], false,
        "bind to port 0: {}",
        evs[0]
    );
    assert_eq!(evs[1]["probe"], probe(ctx.strategy, Op::Listen));
    assert_eq!(evs[2]["probe"], probe(ctx.strategy, Op::Close));
}

/// listen() on an unbound socket: no bind event; the listen carries the port the kernel chose.
fn check_listen_unbound(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    assert_ne!(split_addr(local).1, 0);
    assert_eq!(kinds(evs), ["listen", "close"], "{evs:#?}");
    for ev in evs {
        assert_eq!(ev["outcome"], "success", "{ev}");
        assert_process(ctx, ev, pid_of(report), case.args);
        assert_net(ev, "tcp", local, None);
    }
    assert_eq!(evs[0]["probe"], probe(ctx.strategy, Op::Listen));
    assert_eq!(evs[1]["probe"], probe(ctx.strategy, Op::Close));
}

fn check_udp_bind(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    assert_eq!(kinds(evs), ["bind", "close"], "{evs:#?}");
    for ev in evs {
        assert_eq!(ev["outcome"], "success", "{ev}");
        assert_process(ctx, ev, pid_of(report), case.args);
        assert_net(ev, "udp", local, None);
    }
    assert_eq!(
        evs[0]["probe"],
        probe(ctx.strategy, Op::BindOk { v6: is_v6(local) })
    );
    assert_eq!(
        evs[0]["port"]["requested"], false,
        "bind to port 0: {}",
        evs[0]
    );
    assert!(
        evs[1]["port"].get("requested").is_none(),
        "only binds say: {}",
        evs[1]
    );
    assert_eq!(evs[1]["probe"], probe(ctx.strategy, Op::Close));
}

/// The connect event carries the local ephemeral port the client's getsockname() saw.
fn check_tcp_connect(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    let peer = report["peer"].as_str().expect("peer");
    let server = report["listener"].as_str().expect("listener");
    assert_eq!(count(evs, "connect"), 1, "{evs:#?}");
    let connect = find(evs, "connect", "success");
    assert_process(ctx, connect, pid_of(report), case.args);
    assert_net(connect, "tcp", local, Some(peer));
    assert_eq!(
        connect["probe"],
        probe(ctx.strategy, Op::TcpConnect { v6: is_v6(local) })
    );
    let client_close = evs
        .iter()
        .find(|e| e["event"] == "close" && e["network"]["local"]["port"] == split_addr(local).1)
        .unwrap_or_else(|| panic!("no close of the client socket: {evs:#?}"));
    assert_net(client_close, "tcp", local, Some(server));
    assert_eq!(client_close["probe"], probe(ctx.strategy, Op::Close));
    assert_no_accepted_close(evs, server);
}

/// The client reset the connection before the server closed its accepted socket: still no
/// release of the accepted socket in the log.
fn check_tcp_connect_reset(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    let server = report["listener"].as_str().expect("listener");
    assert_eq!(
        kinds(evs),
        ["bind", "listen", "connect", "close", "close"],
        "{evs:#?}"
    );
    let connect = find(evs, "connect", "success");
    assert_net(connect, "tcp", local, Some(server));
    assert_process(ctx, connect, pid_of(report), case.args);
    assert_net(&evs[3], "tcp", local, Some(server));
    assert_no_accepted_close(evs, server);
}

/// The listener on `server` accepted a connection: that socket's release is not in the log.
fn assert_no_accepted_close(evs: &[Value], server: &str) {
    let port = split_addr(server).1;
    assert!(
        !evs.iter().any(|e| e["event"] == "close"
            && e["network"]["local"]["port"] == port
            && !e["network"]["peer"].is_null()),
        "an accepted socket's release was reported: {evs:#?}"
    );
    assert_eq!(count(evs, "close"), 2, "{evs:#?}");
}

/// The handshake's end of the connect `call`: same socket, same process, from sock_ops.
fn assert_connect_result<'a>(evs: &'a [Value], call: &Value) -> &'a Value {
    let r = evs
        .iter()
        .find(|e| e["event"] == "connect_result")
        .unwrap_or_else(|| panic!("no connect_result: {evs:#?}"));
    assert_eq!(r["network"], call["network"], "{r}");
    assert_eq!(r["process"], call["process"], "{r}");
    assert_eq!(r["probe"], "cgroup:sock_ops", "{r}");
    assert_eq!(r["origin"], "kernel", "{r}");
    assert!(
        r["duration_ns"].as_u64().is_some_and(|d| d > 0),
        "a handshake takes time: {r}"
    );
    r
}

/// An event loop's connect that succeeds: in_progress at the call, then the handshake's success.
fn check_connect_nonblocking_ok(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["call_errno"], libc::EINPROGRESS, "{report}");
    assert_eq!(report["so_error"], 0, "{report}");
    // Asked again once connected: 0 or EISCONN, and no second connect event (the kinds below).
    assert!([0, libc::EISCONN].contains(&(report["again_errno"].as_i64().unwrap_or(-1) as i32)));
    let (local, server) = (
        report["local"].as_str().expect("local"),
        report["listener"].as_str().expect("listener"),
    );
    assert_eq!(
        kinds(evs),
        [
            "bind",
            "listen",
            "connect",
            "connect_result",
            "close",
            "close"
        ],
        "{evs:#?}"
    );
    let c = find(evs, "connect", "in_progress");
    assert_net(c, "tcp", local, Some(server));
    assert_eq!(c["probe"], probe(ctx.strategy, Op::TcpConnect { v6: true }));
    assert_process(ctx, c, pid_of(report), case.args);
    let r = assert_connect_result(evs, c);
    assert_eq!(r["outcome"], "success", "{r}");
    assert!(r.get("error").is_none() && r.get("errno").is_none(), "{r}");
    assert_no_accepted_close(evs, server);
}

/// The events of a non-blocking connect against `syn_dropping_listener` (the listener, the
/// connection filling its queue, the connect, its result, three releases), all in the client's
/// own network namespace; returns the connect_result after checking it belongs to the connect
/// and names the client.
fn dropped_syn_result<'a>(ctx: &Ctx, case: &Case, report: &Value, evs: &'a [Value]) -> &'a Value {
    assert_eq!(report["call_errno"], libc::EINPROGRESS, "{report}");
    let (local, server) = (
        report["local"].as_str().expect("local"),
        report["listener"].as_str().expect("listener"),
    );
    assert_eq!(
        kinds(evs),
        [
            "bind",
            "listen",
            "connect",
            "connect",
            "connect_result",
            "close",
            "close",
            "close"
        ],
        "{evs:#?}"
    );
    let c = find(evs, "connect", "in_progress");
    assert_net(c, "tcp", local, Some(server));
    assert_eq!(
        c["network"]["netns"], report["netns"],
        "the client's own namespace: {c}"
    );
    let r = assert_connect_result(evs, c);
    let own = Ctx {
        netns: report["netns"].as_u64().unwrap_or(0),
        ..ctx.clone()
    };
    assert_process(&own, r, pid_of(report), case.args);
    r
}

/// A SYN that is dropped: the handshake times out after the call returned (ETIMEDOUT).
fn check_connect_timeout(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["so_error"], libc::ETIMEDOUT, "{report}");
    let r = dropped_syn_result(ctx, case, report, evs);
    assert_eq!(r["outcome"], "failure", "{r}");
    assert_eq!(r["error"], "ETIMEDOUT", "{r}");
    assert_eq!(r["errno"], libc::ETIMEDOUT, "{r}");
    // One SYN retry: about 1 s + 2 s.
    let took = r["duration_ns"].as_u64().unwrap_or(0);
    assert!(
        took >= 2_000_000_000
            && took <= report["waited_ms"].as_u64().unwrap_or(0) * 1_000_000 + 1_000_000_000,
        "{took} ns against {report}"
    );
}

/// Closed by its owner while its SYN went unanswered: the handshake's result is `aborted`, written
/// at the release, before the release itself.
fn check_connect_abort(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let r = dropped_syn_result(ctx, case, report, evs);
    assert_eq!(r["outcome"], "aborted", "{r}");
    assert!(r.get("error").is_none() && r.get("errno").is_none(), "{r}");
    assert_eq!(evs[5]["event"], "close");
    assert_eq!(
        evs[5]["network"], r["network"],
        "the client's release: {}",
        evs[5]
    );
}

/// A socket connected to itself: its handshake ends (success) by the path an accepted
/// connection's takes, and its release is still reported.
fn check_connect_self(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["call_errno"], libc::EINPROGRESS, "{report}");
    assert_eq!(report["so_error"], 0, "{report}");
    let me = report["local"].as_str().expect("local");
    assert_eq!(
        kinds(evs),
        ["bind", "connect", "connect_result", "close"],
        "{evs:#?}"
    );
    let c = find(evs, "connect", "in_progress");
    assert_net(c, "tcp", me, Some(me));
    let r = assert_connect_result(evs, c);
    assert_eq!(r["outcome"], "success", "{r}");
    assert_process(ctx, r, pid_of(report), case.args);
    assert_net(&evs[3], "tcp", me, Some(me));
}

/// A socket that connected unbound and disconnected, then binds a port it names: the bind is
/// `requested` (a UDP listener for the policy), and the connect is there, before it.
fn check_udp_disconnect_bind(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(
        kinds(evs),
        ["bind", "close", "connect", "bind", "close"],
        "{evs:#?}"
    );
    let connect = &evs[2];
    assert_eq!(connect["network"]["transport"], "udp", "{connect}");
    assert_eq!(connect["network"]["peer"]["port"], 9, "{connect}");
    // Without syscall tracepoints the connect waits for its port, which the disconnect gave
    // back: it is written without it (docs/schema.md).
    let connected = split_addr(report["connected"].as_str().expect("connected")).1;
    let expected_port = if ctx.strategy == Strategy::SocketHooks {
        0
    } else {
        connected
    };
    assert_eq!(
        connect["network"]["local"]["port"], expected_port,
        "{connect}"
    );
    let bind = &evs[3];
    assert_net(bind, "udp", report["local"].as_str().expect("local"), None);
    assert_eq!(bind["port"]["requested"], true, "{bind}");
    assert_eq!(bind["network"]["local"]["port"], report["named"], "{bind}");
    assert_process(ctx, bind, pid_of(report), case.args);
}

/// An implicit bind is an IPv6 socket's when the socket is (whatever address it sent to), and a
/// new one when a socket that gave its port back sends again.
fn check_udp_sendto_again(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(
        kinds(evs),
        ["bind", "close", "bind", "connect", "bind", "close"],
        "{evs:#?}"
    );
    let mapped = &evs[0];
    assert_net(
        mapped,
        "udp",
        report["mapped"].as_str().expect("mapped"),
        None,
    );
    assert_eq!(mapped["implicit"], true, "{mapped}");
    assert_eq!(mapped["probe"], "cgroup:sendmsg4", "{mapped}");
    assert_net(&evs[1], "udp", report["mapped"].as_str().unwrap(), None);
    let first = report["first"].as_str().expect("first");
    assert_net(&evs[2], "udp", first, None);
    assert_eq!(evs[2]["implicit"], true);
    assert_eq!(
        evs[3]["network"]["local"]["port"],
        split_addr(first).1,
        "{}",
        evs[3]
    );
    let second = report["second"].as_str().expect("second");
    assert_net(&evs[4], "udp", second, None);
    assert_eq!(evs[4]["implicit"], true, "{}", evs[4]);
    for e in [&evs[0], &evs[2], &evs[4]] {
        assert_process(ctx, e, pid_of(report), case.args);
    }
}

/// sendto() from unbound UDP sockets: an implicit bind each, with the port the kernel picked;
/// the socket that was bound first has its bind and no implicit one.
fn check_udp_sendto(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(
        kinds(evs),
        ["bind", "bind", "bind", "close", "close", "close"],
        "{evs:#?}"
    );
    for (i, local, hook) in [
        (0, "local4", "cgroup:sendmsg4"),
        (1, "local6", "cgroup:sendmsg6"),
    ] {
        let b = &evs[i];
        assert_net(b, "udp", report[local].as_str().expect(local), None);
        assert_eq!(b["implicit"], true, "{b}");
        assert_eq!(b["outcome"], "success", "{b}");
        assert_eq!(b["port"]["requested"], false, "{b}");
        assert_eq!(b["probe"], hook, "{b}");
        assert_process(ctx, b, pid_of(report), case.args);
    }
    let bound = &evs[2];
    assert_net(bound, "udp", report["bound"].as_str().expect("bound"), None);
    assert!(bound.get("implicit").is_none(), "{bound}");
    assert_eq!(
        bound["probe"],
        probe(ctx.strategy, Op::BindOk { v6: false })
    );
}

/// An unbound UDP socket gets its port from connect: connect and close, no bind.
fn check_udp_connect(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    let target = report["peer"].as_str().expect("peer");
    assert_eq!(kinds(evs), ["connect", "close"], "{evs:#?}");
    assert_eq!(evs[0]["outcome"], "success");
    assert_process(ctx, &evs[0], pid_of(report), case.args);
    assert_net(&evs[0], "udp", local, Some(target));
    assert_eq!(
        evs[0]["probe"],
        probe(ctx.strategy, Op::UdpConnect { v6: is_v6(local) })
    );
    assert_net(&evs[1], "udp", local, Some(target));
}

fn check_bind_in_use(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["errno"], libc::EADDRINUSE);
    let taken = report["local"].as_str().expect("local");
    let fail = find(evs, "bind", "failure");
    assert_eq!(fail["error"], "EADDRINUSE");
    assert_eq!(fail["errno"], libc::EADDRINUSE);
    assert_eq!(
        fail["port"]["requested"], true,
        "the port was named: {fail}"
    );
    assert_eq!(
        fail["probe"],
        probe(ctx.strategy, Op::BindFail { v6: false })
    );
    assert_process(ctx, fail, pid_of(report), case.args);
    assert_net(fail, "tcp", taken, None);
}

/// A second bind of a bound socket, naming no port: the failure carries the address it asked
/// for, port 0, and is not a requested port.
fn check_rebind(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["errno"], libc::EINVAL);
    let local = report["local"].as_str().expect("local");
    let requested = report["requested"].as_str().expect("requested");
    let transport = if case.args[0] == "rebind-tcp" {
        "tcp"
    } else {
        "udp"
    };
    assert_eq!(kinds(evs), ["bind", "bind", "close"], "{evs:#?}");
    assert_eq!(evs[0]["outcome"], "success");
    assert_net(&evs[0], transport, local, None);
    let fail = &evs[1];
    assert_eq!(fail["outcome"], "failure", "{fail}");
    assert_eq!(fail["error"], "EINVAL");
    assert_eq!(fail["errno"], libc::EINVAL);
    assert_eq!(fail["port"]["requested"], false, "{fail}");
    // Before 5.15 (no bpf_task_pt_regs) the tracepoint strategy cannot read the arguments back
    // at the syscall's exit, so it parks every bind, and the pre-bind hook's record fails.
    let op = if ctx.strategy == Strategy::Tracepoint && ctx.kernel < (5, 15) {
        Op::BindFail { v6: is_v6(local) }
    } else {
        Op::BindFailPortZero { v6: is_v6(local) }
    };
    assert_eq!(fail["probe"], probe(ctx.strategy, op), "{fail}");
    assert_process(ctx, fail, pid_of(report), case.args);
    assert_net(fail, transport, requested, None);
    assert_eq!(fail["network"]["netns"], evs[0]["network"]["netns"]);
    assert_net(&evs[2], transport, local, None);
}

/// listen(2) refused on a connected socket: a listen failure with the socket's own address.
fn check_listen_connected(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["errno"], libc::EINVAL);
    let local = report["local"].as_str().expect("local");
    let fail = find(evs, "listen", "failure");
    assert_eq!(fail["error"], "EINVAL");
    assert_eq!(fail["errno"], libc::EINVAL);
    assert_eq!(fail["probe"], probe(ctx.strategy, Op::Listen));
    assert_process(ctx, fail, pid_of(report), case.args);
    assert_net(fail, "tcp", local, None);
    let listens: Vec<&Value> = evs.iter().filter(|e| e["event"] == "listen").collect();
    assert_eq!(
        listens.len(),
        2,
        "the listener's listen and the refused one: {evs:#?}"
    );
}

fn check_connect_refused(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["errno"], libc::ECONNREFUSED);
    let peer = report["peer"].as_str().expect("peer");
    // the probe listener that picked a free port, then the refused client and its release
    assert_eq!(
        kinds(evs),
        ["bind", "listen", "close", "connect", "close"],
        "{evs:#?}"
    );
    let fail = find(evs, "connect", "failure");
    assert_eq!(fail["error"], "ECONNREFUSED");
    assert_eq!(fail["errno"], libc::ECONNREFUSED);
    assert_eq!(
        fail["network"]["peer"],
        json!({"address": "::1", "port": split_addr(peer).1})
    );
    assert_eq!(fail["network"]["transport"], "tcp");
    assert_eq!(fail["network"]["type"], "ipv6");
    assert_eq!(
        fail["probe"],
        probe(ctx.strategy, Op::TcpConnect { v6: true })
    );
    assert_process(ctx, fail, pid_of(report), case.args);
}

/// An event loop's connect: the call returns EINPROGRESS and the refusal comes after it. The
/// connect event says the handshake was still going on, never that it succeeded.
fn check_connect_nonblocking(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    assert_eq!(report["call_errno"], libc::EINPROGRESS, "{report}");
    assert_eq!(report["so_error"], libc::ECONNREFUSED, "{report}");
    let peer = report["peer"].as_str().expect("peer");
    assert_eq!(
        kinds(evs),
        [
            "bind",
            "listen",
            "close",
            "connect",
            "connect_result",
            "close"
        ],
        "{evs:#?}"
    );
    let c = evs
        .iter()
        .find(|e| e["event"] == "connect")
        .expect("connect");
    assert_eq!(c["outcome"], "in_progress", "{c}");
    let r = assert_connect_result(evs, c);
    assert_eq!(r["outcome"], "failure", "{r}");
    assert_eq!(r["error"], "ECONNREFUSED", "{r}");
    assert_eq!(r["errno"], libc::ECONNREFUSED, "{r}");
    assert!(c.get("error").is_none() && c.get("errno").is_none(), "{c}");
    assert_eq!(
        c["network"]["peer"],
        json!({"address": "127.0.0.1", "port": split_addr(peer).1})
    );
    assert_ne!(
        c["network"]["local"]["port"], 0,
        "the kernel picked a port: {c}"
    );
    assert_eq!(
        c["probe"],
        probe(ctx.strategy, Op::TcpConnect { v6: false })
    );
    assert_process(ctx, c, pid_of(report), case.args);
}

/// A process that binds and exits at once: by the time the daemon reads its records, /proc has
/// nothing left, and the exec captured in the kernel still names what it was.
fn check_exit_fast(ctx: &Ctx, case: &Case, report: &Value, evs: &[Value]) {
    let local = report["local"].as_str().expect("local");
    assert_eq!(kinds(evs), ["bind", "listen", "close"], "{evs:#?}");
    for ev in evs {
        let p = &ev["process"];
        assert_eq!(p["pid"], pid_of(report));
        assert_eq!(p["comm"], SCENARIO_COMM);
        assert_eq!(p["user"]["id"], 0);
        assert_eq!(p["ppid"], ctx.parent_pid, "{ev}");
        let exe = p["executable"]
            .as_str()
            .unwrap_or_else(|| panic!("no executable: {ev}"));
        assert!(exe.ends_with("/portwatch-scenario"), "{ev}");
        let argv: Vec<&str> = p["command_line"]
            .as_array()
            .unwrap_or_else(|| panic!("no command_line: {ev}"))
            .iter()
            .map(|a| a.as_str().unwrap_or(""))
            .collect();
        assert!(argv[0].ends_with("portwatch-scenario"), "{ev}");
        assert_eq!(&argv[1..], case.args, "{ev}");
        assert_net(ev, "tcp", local, None);
        // Released during exit, when the task's namespaces are gone: read from the socket.
        assert_eq!(ev["network"]["netns"], ctx.netns, "{ev}");
    }
    assert_eq!(
        evs[0]["probe"],
        probe(ctx.strategy, Op::BindOk { v6: false })
    );
}

/// The strategy-independent shape of a scenario's events: what happened, on which transport and
/// address family, to which addresses and with which error — without probes, pids, timestamps and
/// the ephemeral port numbers. Strategies must agree on it exactly.
pub fn shape(evs: &[Value]) -> Vec<Value> {
    evs.iter()
        .map(|e| {
            // A connect refused in its handshake: the strategies that read the socket when the
            // call returns find the address the call chose already reset (tcp_disconnect);
            // `sock_ops` records it while the SYN goes out (docs/schema.md).
            // A UDP connect of a socket bound to a wildcard: the same, the other way round, as
            // the call picks the route's source address after the connect hook.
            let local = if e["event"] == "connect"
                && (e["outcome"] == "failure" || e["network"]["transport"] == "udp")
            {
                Value::Null
            } else {
                e["network"]["local"]["address"].clone()
            };
            json!({
                "event": e["event"], "outcome": e["outcome"], "error": e.get("error"),
                "transport": e["network"]["transport"], "type": e["network"]["type"],
                "local": local,
                "peer": e["network"].get("peer").map(|p| p["address"].clone()),
                "comm": e["process"]["comm"], "user": e["process"]["user"],
                "requested": e["port"].get("requested"),
            })
        })
        .collect()
}
