//! Small fixtures the integration test files share: ports, one-shot commands, JSON Lines, policies
//! and alerts.
use std::{
    ffi::OsStr,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::atomic::{AtomicU16, Ordering},
};

use serde_json::Value;

use crate::daemon_binary;

/// A free TCP port the kernel picked, so inside the ephemeral range.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port outside the ephemeral range. Tests run in parallel threads: each call gets its
/// own block of 20 ports (callers use a few above the one returned).
pub fn free_fixed_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(20000);
    loop {
        let p = NEXT.fetch_add(20, Ordering::Relaxed);
        assert!(p < 30000, "no free fixed port");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Runs the portwatch binary with `args` to its end (a subcommand, or a daemon that must refuse to
/// start).
pub fn portwatch_output<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    // A table's width follows $COLUMNS: the tests read whole lines.
    Command::new(daemon_binary())
        .args(args)
        .env_remove("COLUMNS")
        .output()
        .unwrap()
}

/// `portwatch_output` as the exit code (-1 when a signal ended it), stdout and stderr.
pub fn portwatch<I, S>(args: I) -> (i32, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = portwatch_output(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Spawns `cmd`, a freshly copied executable: another test thread's fork can hold the copy's
/// write descriptor for a moment (until its own exec closes it), and exec then fails with
/// ETXTBSY. That is the tests' own race: retried, for up to a second.
pub fn spawn_copy(cmd: &mut Command) -> Child {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.expect("spawn the copied executable"),
        }
    }
}

/// Runs `cmd`, asserts it exited 0 (quoting its stderr), and returns its stdout.
pub fn stdout_of(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().expect(what);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every line of `text`, parsed. Panics on a line that is not JSON: every producer of these lines
/// promises JSON Lines, so that is a bug.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON line ({e}): {l:?}"))
        })
        .collect()
}

/// Writes `dir/policy.toml`. Writing it again is how a test changes the policy a daemon reloads on
/// SIGHUP.
pub fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("policy.toml");
    fs::write(&p, text).unwrap();
    p
}

pub fn alerts(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "alert")
        .cloned()
        .collect()
}

/// Whether an event or alert is about the local port `port`.
pub fn on_port(v: &Value, port: u16) -> bool {
    v["network"]["local"]["port"] == port
}
