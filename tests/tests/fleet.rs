//! The fleet store (docs/fleet.md): three hosts' event logs in the real ClickHouse engine, and the
//! fleet who-query naming the right process on each. The hosts are the real daemon run one after
//! another, each in its own UTS namespace (its own host name), while a different real program
//! holds the same port: python's http.server, a python UDP socket still open when its host's
//! daemon stops, and a TCP listener on ::1 that outlives a restart of its host's daemon.
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

/// A program holding the port, stopped by pid when dropped.
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

/// Waits until `pid`'s `kind` on `port` is in the log; returns that line.
fn seen(d: &mut Daemon, pid: u32, kind: &str, port: u16) -> Value {
    let lines = d
        .wait_for(scaled(Duration::from_secs(15)), |lines| {
            of_pid(lines, pid)
                .iter()
                .any(|l| l["event"] == kind && on_port(l, port))
        })
        .unwrap_or_else(|| panic!("no {kind} on {port} by {pid}: {:#?}", d.lines()));
    of_pid(&lines, pid)
        .into_iter()
        .find(|l| l["event"] == kind && on_port(l, port))
        .unwrap()
}

/// Waits for the holding line of `port`.
fn holding(d: &mut Daemon, port: u16) -> Value {
    let is = |l: &Value| l["event"] == "holding" && on_port(l, port);
    let lines = d
        .wait_for(scaled(Duration::from_secs(15)), |lines| {
            lines.iter().any(is)
        })
        .unwrap_or_else(|| panic!("no holding line for {port}: {:#?}", d.lines()));
    lines.into_iter().find(is).unwrap()
}

/// One host's log, as a shipper would read it, from all its daemon's runs.
struct Host {
    name: &'static str,
    lines: Vec<Value>,
}

impl Host {
    fn new(name: &'static str) -> Self {
        Host {
            name,
            lines: Vec::new(),
        }
    }

    fn start(&self) -> Daemon {
        Daemon::start_as_host(self.name, &["--holdings", "true"])
    }

    /// Stops the daemon and keeps its log, every line checked against the schema.
    fn stop(&mut self, d: Daemon) {
        let (exit, lines) = d.stop();
        assert!(exit.success());
        for l in &lines {
            schema::check(l).unwrap_or_else(|e| panic!("{}: {e}\n{l}", self.name));
            assert_eq!(l["host"]["name"], self.name, "{l}");
        }
        self.lines.extend(lines);
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.jsonl", self.name));
        let text: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// RFC 3339 as ClickHouse prints a DateTime64(9).
fn ch(t: &Value) -> String {
    t.as_str()
        .unwrap()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

#[test]
fn the_fleet_query_names_the_right_process_on_each_of_three_hosts() {
    let chdb = chdb_python();
    let port = free_fixed_port();

    // fleet-a: python's http.server, stopped while the daemon runs.
    let mut a = Host::new("fleet-a");
    let mut d = a.start();
    let server = python(&[
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    let a_bind = seen(&mut d, server.0.id(), "bind", port);
    seen(&mut d, server.0.id(), "listen", port);
    drop(server);
    let a_held = holding(&mut d, port);
    a.stop(d);

    // fleet-b: a UDP socket still open when its daemon stops: no holding line.
    let mut b = Host::new("fleet-b");
    let mut d = b.start();
    let code = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('127.0.0.1', {port}))\ntime.sleep(120)"
    );
    let udp = python(&["-c", &code]);
    let b_bind = seen(&mut d, udp.0.id(), "bind", port);
    b.stop(d);
    drop(udp);

    // fleet-c: a listener on ::1 that outlives a restart of its daemon, then closes. The second
    // daemon opens its holding from the start-up snapshot, later than the listener's bind.
    let mut c = Host::new("fleet-c");
    let mut d = c.start();
    let listener = scenario(["hold-listen", &format!("[::1]:{port}")]);
    let c_bind = seen(&mut d, listener.pid, "bind", port);
    seen(&mut d, listener.pid, "listen", port);
    c.stop(d);
    let mut d = c.start();
    let c_snapshot = seen(&mut d, listener.pid, "listen", port);
    assert_eq!(c_snapshot["origin"], "snapshot");
    assert_eq!(
        c_snapshot["cookie"], c_bind["cookie"],
        "the scan's cookie is the kernel's"
    );
    drop(listener);
    let c_held = holding(&mut d, port);
    c.stop(d);

    // What the logs say, before the store is asked.
    assert_eq!(a_held["opened"], a_bind["timestamp"], "{a_held}");
    assert_eq!(a_held["cookie"], a_bind["cookie"], "{a_held}");
    assert!(
        c_held["opened"].as_str() > c_bind["timestamp"].as_str(),
        "the restarted daemon's holding opens at its snapshot: {c_held}"
    );
    assert!(
        !b.lines
            .iter()
            .any(|l| l["event"] == "holding" && on_port(l, port))
    );
    for h in [&a, &b, &c] {
        let boots: std::collections::HashSet<_> = h
            .lines
            .iter()
            .map(|l| l["host"]["boot_id"].clone())
            .collect();
        assert_eq!(boots.len(), 1, "one boot: {boots:?}");
    }

    let queries = json!([
        {"port": port, "at": a_bind["timestamp"]},
        {"port": port, "at": b_bind["timestamp"]},
        // Before fleet-c's daemon restarted.
        {"port": port, "at": c_bind["timestamp"]},
        // At the moment it closed, a holding no longer counts.
        {"port": port, "at": a_held["closed"]},
        {"port": port, "at": "2000-01-01T00:00:00.000000000Z"},
    ]);
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<PathBuf> = [&a, &b, &c].iter().map(|h| h.write(dir.path())).collect();
    let fleet_md = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fleet.md");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet/clickhouse.py");
    let out = Command::new(&chdb)
        .arg(&script)
        .arg(&fleet_md)
        .arg(queries.to_string())
        .args(&logs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let holding_lines = [&a, &b, &c]
        .iter()
        .flat_map(|h| h.lines.iter())
        .filter(|l| l["event"] == "holding")
        .count();
    assert_eq!(answer["holdings"], holding_lines, "{answer}");

    let results = answer["results"].as_array().unwrap();
    // Which hosts each query names: fleet-b's socket never closed as far as its log says, so it
    // is still held at fleet-c's time.
    let hosts = |i: usize| -> Vec<&str> {
        results[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["host"].as_str().unwrap())
            .collect()
    };
    assert_eq!(hosts(0), ["fleet-a"], "{}", results[0]);
    assert_eq!(hosts(1), ["fleet-b"], "{}", results[1]);
    assert_eq!(hosts(2), ["fleet-b", "fleet-c"], "{}", results[2]);
    for (i, (h, opened, state, role, transport, address)) in [
        (&a, &a_bind, "ended", "listening", "tcp", "127.0.0.1"),
        (&b, &b_bind, "open", "bound", "udp", "127.0.0.1"),
        (&c, &c_bind, "ended", "listening", "tcp", "::1"),
    ]
    .into_iter()
    .enumerate()
    {
        let row = results[i]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == h.name)
            .unwrap_or_else(|| {
                panic!(
                    "{}: {:#}\nits log on the port: {:#?}",
                    h.name,
                    results[i],
                    h.lines
                        .iter()
                        .filter(|l| on_port(l, port))
                        .collect::<Vec<_>>()
                )
            });
        let p = &opened["process"];
        assert_eq!(row["host"], h.name, "{row}");
        assert_eq!(row["state"], state, "{row}");
        assert_eq!(row["role"], role, "{row}");
        assert_eq!(row["transport"], transport, "{row}");
        assert_eq!(row["address"], address, "{row}");
        assert_eq!(row["opened"], ch(&opened["timestamp"]), "{row}");
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
    assert!(results[1][0]["closed"].is_null());
    assert_eq!(results[2][1]["closed"], ch(&c_held["closed"]));
    assert_eq!(results[3], json!([]), "closed at that moment");
    assert_eq!(results[4], json!([]), "before any holding");
}
