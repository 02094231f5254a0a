//! The fleet store (docs/fleet.md): three hosts' event logs in the real ClickHouse engine, and the
//! fleet who-query naming the right process on each. The hosts are the real daemon run three
//! times, one after another, each in its own UTS namespace (its own host name), while a different
//! real program holds the same port: python's http.server, a python UDP socket, and a TCP
//! listener on ::1 that is still open when its host's daemon stops.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use portwatch_tests::{Daemon, free_fixed_port, of_pid, on_port, scaled, scenario, schema};
use serde_json::{Value, json};

/// chdb, pinned, in a virtualenv under target/ (made once; CI makes it on its fresh machine).
fn chdb_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fleet-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import chdb"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "chdb==4.4.0"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok && ready(&python), "installing chdb into {venv:?} failed");
    }
    python
}

/// A program holding the port, stopped by pid at the end.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python(args: &[&str]) -> Holder {
    Holder(
        Command::new("python3")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    )
}

/// One host's run: its log, the event that opened the holder's socket, and its holding line
/// if the holder let go while the daemon ran.
struct Run {
    host: &'static str,
    log: Vec<Value>,
    log_path: PathBuf,
    opened: Value,
    holding: Option<Value>,
    _dir: tempfile::TempDir,
}

/// Runs the daemon as host `host` while `hold` holds `port`; `release` says whether the holder
/// goes before the daemon stops (its holding line is then in the log).
fn run_host(
    host: &'static str,
    port: u16,
    kind: &str,
    release: bool,
    hold: impl FnOnce() -> (u32, Box<dyn std::any::Any>),
) -> Run {
    let mut d = Daemon::start_as_host(host, &["--holdings", "true"]);
    let (pid, holder) = hold();
    let seen = |lines: &[Value]| {
        of_pid(lines, pid)
            .iter()
            .any(|l| l["event"] == kind && on_port(l, port))
    };
    d.wait_for(scaled(Duration::from_secs(15)), seen)
        .unwrap_or_else(|| panic!("{host}: no {kind} on {port} by {pid}: {:#?}", d.lines()));
    let mut holder = Some(holder);
    if release {
        drop(holder.take());
        d.wait_for(scaled(Duration::from_secs(15)), |lines| {
            lines
                .iter()
                .any(|l| l["event"] == "holding" && on_port(l, port))
        })
        .unwrap_or_else(|| panic!("{host}: no holding line for {port}"));
    }
    let (exit, log) = d.stop();
    assert!(exit.success());
    // Still open when the daemon stopped, if it was not released above.
    drop(holder);
    // The log as a shipper would read it (the daemon's directory goes with it).
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join(format!("{host}.jsonl"));
    let text: String = log.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&log_path, text).unwrap();
    for l in &log {
        schema::check(l).unwrap_or_else(|e| panic!("{host}: {e}\n{l}"));
        assert_eq!(l["host"]["name"], host, "{l}");
    }
    // The holding opened with the socket's first event: a listener's bind, before its listen.
    let opened = of_pid(&log, pid)
        .into_iter()
        .find(|l| {
            ["bind", "listen", "connect"].contains(&l["event"].as_str().unwrap())
                && on_port(l, port)
        })
        .unwrap();
    assert!(
        of_pid(&log, pid)
            .iter()
            .any(|l| l["event"] == kind && l["cookie"] == opened["cookie"]),
        "{host}: the {kind} is the same socket's"
    );
    let holding = log
        .iter()
        .find(|l| l["event"] == "holding" && on_port(l, port))
        .cloned();
    Run {
        host,
        log,
        log_path,
        opened,
        holding,
        _dir: dir,
    }
}

#[test]
fn the_fleet_query_names_the_right_process_on_each_of_three_hosts() {
    let chdb = chdb_python();
    let port = free_fixed_port();
    let server = run_host("fleet-a", port, "listen", true, || {
        let h = python(&[
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]);
        (h.0.id(), Box::new(h))
    });
    let udp = run_host("fleet-b", port, "bind", true, || {
        let code = format!(
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('127.0.0.1', {port}))\ntime.sleep(120)"
        );
        let h = python(&["-c", &code]);
        (h.0.id(), Box::new(h))
    });
    let open = run_host("fleet-c", port, "listen", false, || {
        let s = scenario(["hold-listen", &format!("[::1]:{port}")]);
        (s.pid, Box::new(s))
    });
    let runs = [&server, &udp, &open];
    // What the holdings say, checked against the log before the store is asked.
    for r in &runs[..2] {
        let h = r.holding.as_ref().unwrap();
        assert_eq!(h["opened"], r.opened["timestamp"], "{h}");
        assert_eq!(h["cookie"], r.opened["cookie"], "{h}");
        assert_eq!(h["process"]["pid"], r.opened["process"]["pid"]);
    }
    assert!(open.holding.is_none(), "fleet-c's listener was still open");

    let queries = json!([
        // Each host's holding at the moment it opened: that host only.
        {"port": port, "at": server.opened["timestamp"]},
        {"port": port, "at": udp.opened["timestamp"]},
        {"port": port, "at": open.opened["timestamp"]},
        // At the moment it closed, a holding no longer counts.
        {"port": port, "at": server.holding.as_ref().unwrap()["closed"]},
        // Before any of them: nobody.
        {"port": port, "at": "2000-01-01T00:00:00.000000000Z"},
    ]);
    let fleet_md = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fleet.md");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet/clickhouse.py");
    let out = Command::new(&chdb)
        .arg(&script)
        .arg(&fleet_md)
        .arg(queries.to_string())
        .args(runs.iter().map(|r| &r.log_path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let holding_lines: usize = runs
        .iter()
        .map(|r| r.log.iter().filter(|l| l["event"] == "holding").count())
        .sum();
    assert_eq!(answer["holdings"], holding_lines, "{answer}");

    let results = answer["results"].as_array().unwrap();
    for (i, (r, state, role, transport, address)) in [
        (&server, "ended", "listening", "tcp", "127.0.0.1"),
        (&udp, "ended", "bound", "udp", "127.0.0.1"),
        (&open, "open", "listening", "tcp", "::1"),
    ]
    .into_iter()
    .enumerate()
    {
        let rows = results[i].as_array().unwrap();
        assert_eq!(
            rows.len(),
            1,
            "{}: {rows:#?}\nits log on the port: {:#?}",
            r.host,
            r.log
                .iter()
                .filter(|l| on_port(l, port))
                .collect::<Vec<_>>()
        );
        let row = &rows[0];
        let p = &r.opened["process"];
        assert_eq!(row["host"], r.host, "{row}");
        assert_eq!(row["state"], state, "{row}");
        assert_eq!(row["role"], role, "{row}");
        assert_eq!(row["transport"], transport, "{row}");
        assert_eq!(row["address"], address, "{row}");
        assert_eq!(row["pid"], p["pid"], "{row}");
        assert_eq!(row["executable"], p["executable"], "{row}");
        assert_eq!(row["command_line"], p["command_line"], "{row}");
        assert_eq!(row["user_name"], p["user"]["name"], "{row}");
    }
    assert_eq!(
        results[0][0]["command_line"][2], "http.server",
        "{}",
        results[0][0]
    );
    assert!(results[2][0]["closed"].is_null());
    assert_eq!(results[3], json!([]), "closed at that moment");
    assert_eq!(results[4], json!([]), "before any holding");
}
