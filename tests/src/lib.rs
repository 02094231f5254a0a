//! Harness for the integration tests: start the real daemon binary, run scenario clients, read the
//! JSON Lines it writes, and check every line against the schema (docs/schema.md).
pub mod ecs;
mod fixtures;
pub mod http;
pub mod identities;
pub mod otel;
pub mod scenarios;
pub mod schema;
pub mod systemd;

pub use fixtures::{
    alerts, free_fixed_port, free_port, json_lines, on_port, portwatch, portwatch_output,
    spawn_copy, stdout_of, write_policy,
};

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The daemon under test: `PORTWATCH_BIN`, else the workspace's release build, else debug.
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTWATCH_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    for profile in ["release", "debug"] {
        let p = root.join(profile).join("portwatch");
        if p.exists() {
            return p;
        }
    }
    panic!("no portwatch binary: run `cargo xtask test`, or build it and set PORTWATCH_BIN");
}

/// Timeouts scale with `PORTWATCH_TIMEOUT_SCALE` (the VM runs under software emulation).
pub fn scaled(base: Duration) -> Duration {
    let scale = std::env::var("PORTWATCH_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    base * scale
}

/// These tests load eBPF programs: they need root. Failing loudly beats skipping silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load eBPF programs and must run as root"
    );
}

pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    pub stderr: PathBuf,
    /// Each test daemon has its own status socket (it is also the single-instance lock).
    pub socket: PathBuf,
    /// ... and its own tenancy store.
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `portwatch run` writing to a fresh log file and waits for its `status` line, which
    /// the daemon writes only once every program is attached.
    pub fn start(extra_args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("events.jsonl");
        Self::start_with_log(dir, log, extra_args)
    }

    /// A daemon on an existing state directory (a restart).
    pub fn start_with_state(state_dir: &Path) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("events.jsonl");
        Self::spawn(dir, log, state_dir.to_path_buf(), &[])
    }

    /// A daemon on an existing state directory, with more flags.
    pub fn start_with_state_args(state_dir: &Path, extra_args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("events.jsonl");
        Self::spawn(dir, log, state_dir.to_path_buf(), extra_args)
    }

    /// A daemon judging listeners by the policy `text`, written to `dir/policy.toml` (which a test
    /// may rewrite, then SIGHUP), with more flags.
    pub fn start_with_policy(dir: &Path, text: &str, extra_args: &[&str]) -> Daemon {
        let policy = write_policy(dir, text);
        let mut args = vec!["--policy", policy.to_str().unwrap()];
        args.extend_from_slice(extra_args);
        Self::start(&args)
    }

    /// Like `start`, with a log file the caller prepared (in `dir`, which the daemon keeps).
    pub fn start_with_log(dir: tempfile::TempDir, log: PathBuf, extra_args: &[&str]) -> Daemon {
        let state_dir = dir.path().join("state");
        Self::spawn(dir, log, state_dir, extra_args)
    }

    /// A daemon that believes it runs on host `name`: its own UTS namespace, the rest shared
    /// (one "host" of a simulated fleet).
    pub fn start_as_host(name: &str, extra_args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("events.jsonl");
        let state_dir = dir.path().join("state");
        let mut wrapper = Command::new("unshare");
        wrapper
            .args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", name])
            .arg(daemon_binary());
        Self::spawn_with(wrapper, dir, log, state_dir, extra_args)
    }

    fn spawn(
        dir: tempfile::TempDir,
        log: PathBuf,
        state_dir: PathBuf,
        extra_args: &[&str],
    ) -> Daemon {
        Self::spawn_with(
            Command::new(daemon_binary()),
            dir,
            log,
            state_dir,
            extra_args,
        )
    }

    /// `command` runs the daemon (with or without a wrapper that execs it, keeping its pid).
    fn spawn_with(
        mut command: Command,
        dir: tempfile::TempDir,
        log: PathBuf,
        state_dir: PathBuf,
        extra_args: &[&str],
    ) -> Daemon {
        require_root();
        let socket = dir.path().join("status.sock");
        let stderr = dir.path().join("stderr.log");
        let child = command
            .arg("run")
            .arg("--no-stdout")
            .arg("--log-file")
            .arg(&log)
            .arg("--status-socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            // The tests check every failure's errno, which the tracepoint strategy learns only
            // from syscall tracepoints; the default without them has its own test
            // (pipeline.rs).
            .args(
                (!extra_args.contains(&"--syscall-tracepoints"))
                    .then_some(["--syscall-tracepoints", "true"])
                    .into_iter()
                    .flatten(),
            )
            // Each daemon's metrics beside its log, never in the host's node_exporter directory.
            .args(
                (!extra_args.contains(&"--metrics-textfile"))
                    .then(|| {
                        [
                            "--metrics-textfile".into(),
                            dir.path().join("metrics.prom").into_os_string(),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn portwatch");
        let mut d = Daemon {
            child: Some(child),
            log,
            stderr,
            socket,
            state_dir,
            _dir: dir,
        };
        let limit = scaled(Duration::from_secs(30));
        let pid = d.pid();
        // A reused log holds earlier runs' status lines: wait for this daemon's (in the `ecs`
        // format, its fields are under `event.action` and `portwatch`).
        d.wait_for(limit, |lines| {
            lines.iter().any(|l| {
                (l["event"] == "status" && l["daemon"]["pid"] == pid)
                    || (l["event"]["action"] == "status" && l["portwatch"]["daemon"]["pid"] == pid)
                    || (otel::attribute(l, "event.name")["stringValue"] == "portwatch.status"
                        && otel::attribute(l, "portwatch.daemon.pid")["intValue"]
                            == pid.to_string().as_str())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "daemon wrote no status line within {limit:?}; stderr:\n{}",
                d.stderr_text()
            )
        });
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every complete line so far, parsed. Panics on a line that is not JSON: that is a bug.
    pub fn lines(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        json_lines(complete)
    }

    /// Polls the log until `done` holds, or the timeout passes (then None).
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Option<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if done(&lines) {
                return Some(lines);
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "daemon exited early ({status}); stderr:\n{}",
                    self.stderr_text()
                );
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the events of `pid` satisfy `done`; returns them in log order.
    pub fn events_of(&mut self, pid: u32, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let got = self.wait_for(scaled(Duration::from_secs(10)), |lines| {
            done(&of_pid(lines, pid))
        });
        match got {
            Some(lines) => of_pid(&lines, pid),
            None => panic!(
                "timed out waiting for the events of pid {pid}; got:\n{:#?}\nstderr:\n{}",
                of_pid(&self.lines(), pid),
                self.stderr_text()
            ),
        }
    }

    /// Waits (15 s, scaled) for an alert satisfying `ok` and returns the first such alert; panics
    /// naming `what`, with every alert so far and the daemon's stderr.
    pub fn wait_alert(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let lines = self
            .wait_for(scaled(Duration::from_secs(15)), |l| {
                alerts(l).iter().any(&ok)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {what} alert; alerts: {:#?}\nstderr:\n{}",
                    alerts(&self.lines()),
                    self.stderr_text()
                )
            });
        alerts(&lines).into_iter().find(|a| ok(a)).unwrap()
    }

    /// `portwatch status --json` against this daemon.
    pub fn status(&self) -> Value {
        let out = stdout_of(
            Command::new(daemon_binary())
                .args(["status", "--json", "--socket"])
                .arg(&self.socket),
            "portwatch status",
        );
        serde_json::from_slice(&out).expect("status JSON")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the daemon we started.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM, wait, and return the exit status with every line of the log.
    pub fn stop(mut self) -> (ExitStatus, Vec<Value>) {
        let mut child = self.child.take().expect("running daemon");
        // SAFETY: kill(2) on the daemon we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait for portwatch");
        let lines = self.lines();
        (status, lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn of_pid(lines: &[Value], pid: u32) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["process"]["pid"] == pid)
        .cloned()
        .collect()
}

/// `PORTWATCH_SCENARIO`, else the `portwatch-scenario` built beside the running test binary
/// (test binaries live in `target/<profile>/deps/`).
pub fn scenario_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTWATCH_SCENARIO") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = profile_dir.join("portwatch-scenario");
    assert!(
        p.exists(),
        "{} is missing: build the portwatch-tests package",
        p.display()
    );
    p
}

/// A scenario client that has done its socket calls and reported them. It stays alive (and in
/// /proc) until dropped, so attribution is deterministic; `exit-fast` is the exception.
#[derive(Debug)]
pub struct Scenario {
    pub pid: u32,
    pub report: Value,
    child: Option<Child>,
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// Runs `portwatch-scenario` with the given arguments and returns its report.
pub fn scenario<I, S>(args: I) -> Scenario
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let child = Command::new(scenario_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portwatch-scenario");
    read_report(child)
}

/// Reads the first line a started scenario client prints: its report.
pub fn read_report(mut child: Child) -> Scenario {
    use std::io::BufRead as _;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read scenario report");
    if line.trim().is_empty() {
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("scenario output");
        panic!("scenario failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: Value = serde_json::from_str(&line).expect("scenario report is JSON");
    let pid = report["pid"].as_u64().expect("scenario pid") as u32;
    Scenario {
        pid,
        report,
        child: Some(child),
    }
}

/// Polls `ok` every 50 ms until it holds; after `limit` (scaled) panics naming `what`, with
/// `detail()` for the diagnosis.
pub fn wait_until(
    what: &str,
    limit: Duration,
    ok: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    poll_until(what, scaled(limit), Duration::from_millis(50), ok, detail);
}

/// `wait_until` with `limit` as given and polls `every` apart, for a wait that only ever runs on
/// the host and whose `ok` is itself slow (it starts processes).
pub fn poll_until(
    what: &str,
    limit: Duration,
    every: Duration,
    mut ok: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            detail()
        );
        thread::sleep(every);
    }
}

/// The last `n` bytes of `s` (at a character boundary), for quoting long diagnostics.
pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Splits "127.0.0.1:80" / "[::1]:80" into the address text and port the log uses.
pub fn split_addr(s: &str) -> (String, u16) {
    let a: std::net::SocketAddr = s.parse().unwrap_or_else(|_| panic!("bad address {s}"));
    (a.ip().to_string(), a.port())
}

/// The first event of `kind` with that outcome.
pub fn find<'a>(events: &'a [Value], kind: &str, outcome: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == kind && e["outcome"] == outcome)
        .unwrap_or_else(|| panic!("no {kind}/{outcome} event in {events:#?}"))
}

pub fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}
