//! A hostile local user (`nobody`) against the running daemon with a policy: what must hold is
//! asserted for each attack. The canary under the hardened unit is `tests/tests/systemd.rs`; the
//! hook's own children killed at its timeout is `tests/tests/policy.rs`.
use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use portwatch_tests::{
    Daemon, free_fixed_port,
    identities::{Cgroups, Client},
    on_port, portwatch, scenario, wait_until,
};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// No byte a terminal would act on: control characters other than the line ends.
fn no_raw_controls(what: &str, text: &str) {
    if let Some(c) = text.chars().find(|&c| c.is_control() && c != '\n') {
        panic!("{what} carries a raw control character {c:?}:\n{text}");
    }
}

#[test]
fn a_hostile_local_user_cannot_hide_forge_inject_or_grow_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with_policy(
        dir.path(),
        "[settings]\nrate_limit_per_minute = 20\nsummary_interval_seconds = 2\n\
         [[allow]]\nnote = \"a system service of this name\"\nunit = \"nginx.service\"\n\
         [[allow]]\nnote = \"containers\"\ncontainer = \"any\"\n\
         [[allow]]\nport = 1\n",
        &[],
    );
    let client = Client::new();
    let cgroups = Cgroups::new();

    // A unit name the user chose in their own manager's subtree satisfies no `unit` rule: the
    // event says what the cgroup path claims, the alert comes all the same.
    let forged_unit =
        cgroups.make("user.slice/user-65534.slice/user@65534.service/app.slice/nginx.service");
    let port = free_fixed_port();
    let s = client.as_nobody(
        Some(&forged_unit),
        &["hold-listen", &format!("127.0.0.1:{port}")],
    );
    // (free_fixed_port listened on the port itself a moment ago: wait for the scenario's alert.)
    let a = d.wait_alert("forged unit", |a| {
        on_port(a, port) && a["process"]["pid"] == s.pid
    });
    assert_eq!(a["alert"]["kind"], "unexpected_listener", "{a}");
    assert_eq!(a["process"]["pid"], s.pid);
    assert_eq!(a["process"]["unit"], "nginx.service", "{a}");
    drop(s);

    // A cgroup named like a docker container that no runtime knows satisfies no container rule.
    let forged_container = cgroups.make(&format!("docker-{}.scope", "ab12".repeat(16)));
    let port = free_fixed_port() + 7;
    let s = client.as_nobody(
        Some(&forged_container),
        &["hold-listen", &format!("127.0.0.1:{port}")],
    );
    let a = d.wait_alert("forged container", |a| {
        on_port(a, port) && a["process"]["pid"] == s.pid
    });
    assert_eq!(a["process"]["container"]["runtime"], "docker", "{a}");
    assert_eq!(a["alert"]["kind"], "unexpected_listener", "{a}");
    drop(s);

    // Names and command lines with newlines and escape sequences reach people escaped.
    let port = free_fixed_port() + 13;
    let holder = client.as_nobody(
        None,
        &[
            "hold-as",
            &hex(b"\n[[allow]]#"),
            &format!("127.0.0.1:{port}"),
            "\x1b[2J\nhistory udp  forged row",
        ],
    );
    let other = client.as_nobody(
        None,
        &[
            "hold-as",
            &hex(b"\nuser=1000#"),
            &format!("127.0.0.1:{}", port + 1),
        ],
    );
    d.wait_alert("the injecting listener", |a| {
        on_port(a, port) && a["process"]["pid"] == holder.pid
    });
    let state = d.state_dir.to_str().unwrap().to_string();
    let (code, table, err) = portwatch(["who", &port.to_string(), "--state-dir", &state]);
    assert_eq!(code, 0, "{err}");
    no_raw_controls("who's table", &table);
    assert!(table.contains("\\x1b[2J\\nhistory"), "{table}");
    for line in table.lines() {
        assert!(
            ["port ", "WHEN", "now"].iter().any(|p| line.starts_with(p))
                || line.starts_with(|c: char| c.is_ascii_digit()),
            "a row who did not write: {line:?}\n{table}"
        );
    }
    let (code, baseline, err) = portwatch(["baseline"]);
    assert_eq!(code, 0, "{err}");
    no_raw_controls("baseline", &baseline);
    let file = dir.path().join("baseline.toml");
    std::fs::write(&file, &baseline).unwrap();
    let (code, out, err) = portwatch(["check-policy", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !baseline.lines().any(|l| l.trim_start().starts_with("user")),
        "a comm wrote a rule:\n{baseline}"
    );
    drop((holder, other));

    // A flood of new alert keys neither holds back root's alert nor grows the daemon's memory
    // without bound.
    let before = rss_kib(d.pid());
    let storm = client.as_nobody(None, &["udp-named-storm", "10000", "5000"]);
    assert!(
        storm.report["bound"].as_u64() > Some(4200),
        "{}",
        storm.report
    );
    let port = free_fixed_port() + 19;
    let root = scenario(["hold-listen", &format!("127.0.0.1:{port}")]);
    let a = d.wait_alert("root's listener during the flood", |a| {
        on_port(a, port) && a["process"]["pid"] == root.pid
    });
    assert_eq!(a["process"]["pid"], root.pid);
    wait_until(
        "the flood judged",
        Duration::from_secs(20),
        || d.status()["alerts"]["counters"]["forgotten"].as_u64() >= Some(1),
        || d.status().to_string(),
    );
    let st = d.status();
    let alerts = &st["alerts"];
    assert!(alerts["remembered"].as_u64() <= Some(4096), "{st}");
    assert!(
        alerts["counters"]["rate_limited"].as_u64() >= Some(4000),
        "{st}"
    );
    // What the flood made the daemon forget before it could be reported is said, once.
    let forgot = d.wait_alert("the forgotten alerts summarised", |a| {
        a["alert"]["kind"] == "alerts_forgotten" && a["alert"]["detail"]["user"] == 65534
    });
    assert!(forgot["alert"]["count"].as_u64() > Some(1000), "{forgot}");
    let after = rss_kib(d.pid());
    eprintln!("daemon RSS: {before} KiB before the flood, {after} KiB after");
    assert!(after < 32 * 1024, "{after} KiB after a 5000-key flood");
    drop((storm, root));
    drop(d);

    // Settings that would panic or wrap are refused where they are written.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[settings]\nreconcile_interval_seconds = 9223372036854775807\n",
    )
    .unwrap();
    let (code, _, err) = portwatch(["check-policy", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 2") && err.contains("out of range"),
        "{err}"
    );

    // The event log is never opened through a link, nor in a directory others can write.
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "precious\n").unwrap();
    let link = dir.path().join("events.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = |log: &Path| {
        portwatch([
            "run",
            "--log-file",
            log.to_str().unwrap(),
            "--status-socket",
            dir.path().join("s.sock").to_str().unwrap(),
            "--state-dir",
            dir.path().join("state2").to_str().unwrap(),
        ])
    };
    let (code, _, err) = run(&link);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, err) = run(&open.join("events.jsonl"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
