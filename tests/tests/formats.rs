//! `[log] format = "ecs"`: the daemon's lines in Elastic Common Schema, each checked against the
//! ECS field definitions in `tests/src/ecs.rs` (names, types, allowed values) — what an index
//! with the ECS template would reject as a mapping conflict — for TCP and UDP, IPv4 and IPv6,
//! success and failure, alerts and status lines.
use std::time::Duration;

use portwatch_tests::{Daemon, ecs, free_fixed_port, portwatch, scaled, scenario, write_policy};
use serde_json::Value;

fn of_pid(lines: &[Value], pid: u32) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l.pointer("/process/pid").and_then(Value::as_u64) == Some(u64::from(pid)))
        .collect()
}

#[test]
fn ecs_lines_use_only_ecs_fields_of_their_types() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing allowed: every listener is an alert, in ECS too.
    let policy = write_policy(dir.path(), "[[allow]]\nport = 1\n");
    let mut d = Daemon::start(&[
        "--format",
        "ecs",
        "--policy",
        policy.to_str().unwrap(),
        "--holdings",
        "true",
    ]);
    let p = free_fixed_port();
    let listen = scenario(["hold-listen", &format!("[::1]:{p}")]);
    let connect = scenario(["tcp-connect", "127.0.0.1:0"]);
    let refused = scenario(["connect-refused", "[::1]:0"]);
    let udp = scenario(["udp-bind", "127.0.0.1:0"]);
    let lines = d
        .wait_for(scaled(Duration::from_secs(15)), |lines| {
            let closes = of_pid(lines, connect.pid)
                .iter()
                .filter(|l| l["event"]["action"] == "close")
                .count();
            closes >= 2
                && of_pid(lines, connect.pid).iter().any(|l| {
                    l["event"]["action"] == "holding" && l["portwatch"]["role"] == "connected"
                })
                && !of_pid(lines, refused.pid).is_empty()
                && !of_pid(lines, udp.pid).is_empty()
                && lines
                    .iter()
                    .any(|l| l["event"]["kind"] == "alert" && l["source"]["port"] == p)
        })
        .unwrap_or_else(|| panic!("no ECS events; log:\n{:#?}", d.lines()));
    for l in &lines {
        ecs::check_line(l).unwrap();
    }
    // Every kind of line came out: status first, then events and the alert.
    assert_eq!(lines[0]["event"]["kind"], "metric");
    assert_eq!(lines[0]["portwatch"]["reason"], "start");
    let c = of_pid(&lines, connect.pid);
    let conn = c
        .iter()
        .find(|l| l["event"]["action"] == "connect" && l["event"]["outcome"] == "success")
        .unwrap_or_else(|| panic!("{c:#?}"));
    let local: std::net::SocketAddr = connect.report["local"].as_str().unwrap().parse().unwrap();
    assert_eq!(conn["source"]["port"], local.port());
    assert_eq!(conn["source"]["ip"], "127.0.0.1");
    assert_eq!(conn["network"]["transport"], "tcp");
    assert_eq!(conn["process"]["args"][1], "tcp-connect");
    assert!(conn["user"]["id"].is_string(), "{conn}");
    // The connect's holding: its span as ECS's event.start/end, the rest under portwatch.
    let held = c
        .iter()
        .find(|l| l["event"]["action"] == "holding" && l["portwatch"]["role"] == "connected")
        .unwrap();
    assert_eq!(held["source"]["port"], local.port());
    assert_eq!(held["event"]["start"], held["portwatch"]["opened"]);
    assert_eq!(held["event"]["end"], held["@timestamp"]);
    assert_eq!(
        held["portwatch"]["cookie"], conn["portwatch"]["cookie"],
        "{held}\n{conn}"
    );
    let r = of_pid(&lines, refused.pid);
    let failed = r
        .iter()
        .find(|l| l["event"]["outcome"] == "failure")
        .unwrap_or_else(|| panic!("{r:#?}"));
    assert_eq!(failed["error"]["code"], "ECONNREFUSED");
    assert_eq!(failed["network"]["type"], "ipv6");
    assert_eq!(failed["portwatch"]["errno"], 111);
    let u = of_pid(&lines, udp.pid);
    assert!(
        u.iter()
            .any(|l| l["network"]["transport"] == "udp" && l["event"]["action"] == "bind"),
        "{u:#?}"
    );
    let alert = lines
        .iter()
        .find(|l| l["event"]["kind"] == "alert" && l["process"]["pid"] == listen.pid)
        .unwrap();
    assert_eq!(alert["rule"]["name"], "unexpected_listener");
    assert_eq!(
        (&alert["source"]["ip"], &alert["source"]["port"]),
        (&"::1".into(), &p.into())
    );
    // `tail` reads the portwatch format, and says what it skipped.
    let (code, out, err) = portwatch(["tail", d.log.to_str().unwrap(), "--no-follow"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("not portwatch events"), "{err}");
    let (exit, lines) = d.stop();
    assert!(exit.success());
    for l in &lines {
        ecs::check_line(l).unwrap();
    }
    drop((listen, connect, refused, udp));
}

#[test]
fn otel_lines_are_otlp_records_with_semantic_attributes() {
    use portwatch_tests::otel::{attribute, check_line, record};
    let mut d = Daemon::start(&["--format", "otel", "--holdings", "true"]);
    let connect = scenario(["tcp-connect", "[::1]:0"]);
    let refused = scenario(["connect-refused", "127.0.0.1:0"]);
    let udp = scenario(["udp-bind", "[::1]:0"]);
    let pid_of = |l: &Value| {
        attribute(l, "process.pid")["intValue"]
            .as_str()
            .and_then(|p| p.parse::<u32>().ok())
    };
    let lines = d
        .wait_for(scaled(Duration::from_secs(15)), |lines| {
            [connect.pid, refused.pid, udp.pid]
                .iter()
                .all(|p| lines.iter().any(|l| pid_of(l) == Some(*p)))
                && lines.iter().any(|l| {
                    pid_of(l) == Some(connect.pid)
                        && attribute(l, "event.name")["stringValue"] == "portwatch.holding"
                })
        })
        .unwrap_or_else(|| panic!("no OTel events; log:\n{:#?}", d.lines()));
    for l in &lines {
        check_line(l).unwrap();
    }
    let conn = lines
        .iter()
        .find(|l| {
            pid_of(l) == Some(connect.pid)
                && attribute(l, "event.name")["stringValue"] == "portwatch.connect"
        })
        .unwrap();
    let local: std::net::SocketAddr = connect.report["local"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        attribute(conn, "client.port")["intValue"],
        local.port().to_string().as_str()
    );
    assert_eq!(attribute(conn, "network.type")["stringValue"], "ipv6");
    assert_eq!(attribute(conn, "server.address")["stringValue"], "::1");
    let failed = lines
        .iter()
        .find(|l| {
            pid_of(l) == Some(refused.pid)
                && attribute(l, "error.type")["stringValue"] == "ECONNREFUSED"
        })
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(record(failed)["severityText"], "WARN");
    let bind = lines.iter().find(|l| pid_of(l) == Some(udp.pid)).unwrap();
    assert_eq!(attribute(bind, "network.transport")["stringValue"], "udp");
    let (exit, lines) = d.stop();
    assert!(exit.success());
    for l in &lines {
        check_line(l).unwrap();
    }
    drop((connect, refused, udp));
}
