//! The systemd unit under a real systemd: systemd 252 as PID 1 of a private PID+mount namespace
//! (tmpfs over /tmp, /var/tmp, /run and /var/log/journal — here over all of /var/log and /var/lib,
//! so LogsDirectory= and StateDirectory= never touch the host — and a minimal target that wants
//! only journald, never the default target). A unit file (the repository's, or the one a package
//! installed) goes into that systemd's /run, with a drop-in that only points it at a test config,
//! a copy of the daemon binary, and a shorter watchdog. `exercise` is what the unit must do there.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{daemon_binary, json_lines, on_port, poll_until, require_root, scenario, split_addr};

const TARGET: &str = "portwatch-test.target";
const LOG: &str = "/var/log/portwatch/events.jsonl";
/// Where Debian's prometheus-node-exporter reads textfiles, and the unit's default.
const TEXTFILE: &str = "/var/lib/prometheus/node-exporter/portwatch.prom";

/// The repository's unit, as `cargo xtask install` writes it, for a binary in the test's bin
/// directory; and that binary.
pub fn repository_unit() -> (String, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = fs::read_to_string(root.join("packaging/systemd/portwatch.service"))
        .expect("unit file")
        .replace("@BINDIR@", "/run/portwatch-test/bin");
    (unit, daemon_binary())
}

pub struct Systemd {
    unshare: Child,
    pid1: u32,
    /// The daemon's `/metrics` endpoint (the namespaces share the host's network).
    metrics: String,
}

impl Systemd {
    /// Boots systemd with `unit` as portwatch.service and `bin` as the daemon it runs.
    pub fn boot(unit: &str, bin: &Path) -> Systemd {
        require_root();
        let staging = tempfile::tempdir().expect("tempdir");
        let stage = |name: &str, text: &str| {
            let p = staging.path().join(name);
            fs::write(&p, text).expect("stage file");
            p
        };
        let unit_file = stage("portwatch.service", unit);
        let dropin = stage(
            "test.conf",
            "[Service]\nExecStart=\nExecStart=/run/portwatch-test/bin/portwatch run --config \
             /run/portwatch-test/portwatch.toml\nConfigurationDirectory=\nWatchdogSec=3s\nTimeoutAbortSec=2s\nRestartSec=1\n",
        );
        let metrics = format!("127.0.0.1:{}", crate::free_port());
        let config = stage(
            "portwatch.toml",
            &format!(
                "[log]\nfile = \"{LOG}\"\nstdout = false\n[status]\nsocket = \"/run/portwatch/status.sock\"\ncanary_interval_seconds = 1\n[policy]\nfile = \"/run/portwatch-test/policy.toml\"\n[metrics]\ninterval_seconds = 1\nlisten = \"{metrics}\"\n"
            ),
        );
        // Allows nothing the tests open: every listener of theirs alerts.
        let policy = stage("policy.toml", "[[allow]]\nport = 1\n");
        let target = stage(
            "target",
            "[Unit]\nDescription=portwatch test target\nDefaultDependencies=no\nWants=systemd-journald.service\n",
        );
        // Runs as PID 1 of the new namespaces, then becomes systemd. The staged files are read from
        // the host's /tmp before our own tmpfs hides it.
        let script = format!(
            r#"set -e
mkdir -p /run/portwatch-stage
mount -t tmpfs tmpfs /run/portwatch-stage
cp {unit} {dropin} {config} {policy} {target} {bin} /run/portwatch-stage/
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mount --move /run/portwatch-stage /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system/portwatch.service.d /run/portwatch-test/bin
cp /tmp/portwatch.service /run/systemd/system/portwatch.service
cp /tmp/test.conf /run/systemd/system/portwatch.service.d/test.conf
cp /tmp/target /run/systemd/system/{TARGET}
cp /tmp/portwatch.toml /run/portwatch-test/portwatch.toml
cp /tmp/policy.toml /run/portwatch-test/policy.toml
cp /tmp/portwatch /run/portwatch-test/bin/portwatch
umount /tmp
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/log
mount -t tmpfs tmpfs /var/lib
mkdir -p /var/log/journal
# What installing prometheus-node-exporter leaves: its textfile directory.
mkdir -p /var/lib/prometheus/node-exporter
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
exec /lib/systemd/systemd --system --unit={TARGET}
"#,
            unit = unit_file.display(),
            dropin = dropin.display(),
            config = config.display(),
            policy = policy.display(),
            target = target.display(),
            bin = bin.display(),
        );
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        // PID 1 of the namespace is unshare's child.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid1 = loop {
            if let Some(pid) = fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "unshare started no child");
            thread::sleep(Duration::from_millis(20));
        };
        let s = Systemd {
            unshare,
            pid1,
            metrics,
        };
        s.wait("systemd to come up", Duration::from_secs(60), || {
            s.ctl(&["is-active", TARGET]).stdout.starts_with(b"active")
        });
        drop(staging);
        s
    }

    /// Runs a command inside the namespaces.
    pub fn enter(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-p", "-m", "--"])
            .args(args)
            .output()
            .expect("nsenter")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut a = vec!["systemctl", "--no-pager"];
        a.extend_from_slice(args);
        self.enter(&a)
    }

    pub fn show(&self, prop: &str) -> String {
        let o = self.ctl(&["show", "-p", prop, "--value", "portwatch"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn log_lines(&self, path: &str) -> Vec<Value> {
        let o = self.enter(&["cat", path]);
        json_lines(&String::from_utf8_lossy(&o.stdout))
    }

    pub fn journal(&self) -> String {
        let o = self.enter(&["journalctl", "--no-pager", "-u", "portwatch", "-o", "json"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Each `ok` starts processes in the namespace: polled every 100 ms, not faster.
    pub fn wait(&self, what: &str, limit: Duration, ok: impl FnMut() -> bool) {
        poll_until(what, limit, Duration::from_millis(100), ok, || {
            let status = self.ctl(&["status", "portwatch"]);
            format!(
                "{}\njournal:\n{}",
                String::from_utf8_lossy(&status.stdout),
                self.journal()
            )
        });
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // Killing PID 1 of the namespace takes everything in it down.
        // SAFETY: kill(2) on the namespace's init, which this test started.
        unsafe { libc::kill(self.pid1 as i32, libc::SIGKILL) };
        let _ = self.unshare.wait();
    }
}

fn has_port(lines: &[Value], kind: &str, port: u16) -> bool {
    lines.iter().any(|l| l["event"] == kind && on_port(l, port))
}

/// Runs a scenario client to its end; the local port it used.
fn port_used_by(args: [&str; 2]) -> u16 {
    let s = scenario(args);
    split_addr(s.report["local"].as_str().unwrap()).1
}

/// What the unit must do under systemd: start (Type=notify), log events and alerts to its file
/// and the journal, answer `status` on its root-only socket, pass its canary rounds inside the
/// sandbox, reopen its log on reload, be restarted by the watchdog when hung, and drain on stop.
pub fn exercise(sd: &Systemd) {
    // Type=notify: `start` returns once READY=1 came, which is after every program attached.
    let start = sd.ctl(&["start", "portwatch"]);
    assert!(
        start.status.success(),
        "start failed: {}\n{}",
        String::from_utf8_lossy(&start.stderr),
        sd.journal()
    );
    assert_eq!(sd.show("ActiveState"), "active");
    let lines = sd.log_lines(LOG);
    assert_eq!(
        lines.first().map(|l| l["event"].clone()),
        Some("status".into()),
        "status line first"
    );

    // The start-up snapshot works inside the sandbox (sock_diag needs AF_NETLINK).
    assert!(
        lines.iter().any(|l| l["origin"] == "snapshot"),
        "no snapshot events; journal:\n{}",
        sd.journal()
    );

    // Events reach the log file; an unexpected listener alerts in the log and in the journal at
    // priority warning.
    let port = port_used_by(["tcp-listen", "127.0.0.1:0"]);
    sd.wait(
        "the listen event and its alert in the log",
        Duration::from_secs(10),
        || {
            has_port(&sd.log_lines(LOG), "listen", port)
                && has_port(&sd.log_lines(LOG), "alert", port)
        },
    );
    sd.wait("the alert in the journal", Duration::from_secs(10), || {
        sd.journal()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                e["PRIORITY"] == "4"
                    && e["MESSAGE"].as_str().is_some_and(|m| {
                        m.starts_with("ALERT:") && m.contains(&format!("port {port} "))
                    })
            })
    });

    // Diagnostics are in the journal, with structured fields.
    let journal = sd.journal();
    let attached = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["MESSAGE"] == "attached")
        .unwrap_or_else(|| panic!("no 'attached' message in the journal:\n{journal}"));
    // tracing-journald prefixes custom fields with F_ so they never collide with journald's own.
    assert!(
        attached["F_FAMILY"].is_string() && attached["F_STRATEGY"].is_string(),
        "{attached}"
    );
    assert_eq!(attached["SYSLOG_IDENTIFIER"], "portwatch");

    // `portwatch status` answers over the root-only socket.
    let status = sd.enter(&[
        "/run/portwatch-test/bin/portwatch",
        "status",
        "--json",
        "--socket",
        "/run/portwatch/status.sock",
    ]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let st: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(st["log"]["path"], LOG);
    assert!(st["events"]["listen"].as_u64().unwrap() >= 1, "{st}");

    // Blinding detection works inside the sandbox: the canary's loopback sockets are allowed
    // (AF_INET, IPAddressAllow=localhost) and every round comes back whole.
    let canary = || {
        let out = sd.enter(&[
            "/run/portwatch-test/bin/portwatch",
            "status",
            "--json",
            "--socket",
            "/run/portwatch/status.sock",
        ]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()["canary"].clone()
    };
    sd.wait("complete canary rounds", Duration::from_secs(15), || {
        canary()["rounds"]["complete"].as_u64() >= Some(2)
    });
    let c = canary();
    assert_eq!(c["rounds"]["failed"], 0, "{c}");
    assert_eq!(c["blind"], serde_json::json!([]), "{c}");
    let mode = sd.enter(&["stat", "-c", "%a", "/run/portwatch/status.sock"]);
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "600");

    // Prometheus metrics under the hardened unit: the textfile in node_exporter's directory
    // (ProtectSystem=strict allows it by ReadWritePaths=), and the loopback endpoint.
    sd.wait("the metrics textfile", Duration::from_secs(10), || {
        let cat = sd.enter(&["cat", TEXTFILE]);
        String::from_utf8_lossy(&cat.stdout).contains("# TYPE portwatch_events_total counter")
    });
    // Readable by node_exporter's user despite the unit's UMask=0027.
    let mode = sd.enter(&["stat", "-c", "%a", TEXTFILE]);
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "644");
    let (code, body) = crate::http::get(&sd.metrics, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("portwatch_build_info{version="), "{body}");

    // reload = SIGHUP: the log is reopened (logrotate moved it away).
    assert!(
        sd.enter(&["mv", LOG, "/var/log/portwatch/events.jsonl.rotated"])
            .status
            .success()
    );
    assert!(sd.ctl(&["reload", "portwatch"]).status.success());
    thread::sleep(Duration::from_millis(300));
    let port = port_used_by(["udp-bind", "127.0.0.1:0"]);
    sd.wait(
        "events in the reopened log",
        Duration::from_secs(10),
        || has_port(&sd.log_lines(LOG), "bind", port),
    );

    // A hung daemon stops pinging the watchdog and is restarted.
    let main_pid = sd.show("MainPID");
    assert!(sd.enter(&["kill", "-STOP", &main_pid]).status.success());
    sd.wait("the watchdog restart", Duration::from_secs(40), || {
        sd.show("NRestarts") == "1"
            && sd.show("ActiveState") == "active"
            && sd.show("MainPID") != main_pid
    });
    let journal = sd.journal();
    assert!(
        journal.contains("Watchdog timeout"),
        "no watchdog message in the journal:\n{journal}"
    );

    // stop drains and flushes: events made just before it are in the file afterwards.
    let port = port_used_by(["udp-bind", "127.0.0.1:0"]);
    let stop = sd.ctl(&["stop", "portwatch"]);
    assert!(stop.status.success());
    assert_eq!(sd.show("ActiveState"), "inactive");
    assert_eq!(sd.show("Result"), "success", "clean exit after SIGTERM");
    assert!(
        has_port(&sd.log_lines(LOG), "close", port),
        "events right before stop were flushed"
    );
    assert!(
        !sd.enter(&["test", "-e", TEXTFILE]).status.success(),
        "the metrics textfile outlived the daemon"
    );
}
