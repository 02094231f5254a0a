//! The alert exec hook: runs the configured argv (no shell) with the alert line on stdin, off the
//! event path, with a cleared environment (a fixed PATH), in a session of its own, and a timeout
//! after which its whole process group is killed. Failures are counted and logged.
use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, process::Command};

use crate::judgement::policy::HookConfig;

#[derive(Debug, Default)]
pub struct HookCounters {
    pub running: AtomicU64,
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    /// Exited non-zero, killed by a signal, or could not be started.
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    /// Not started because `max_running` hooks were still running.
    pub skipped: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookFigures {
    pub running: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub skipped: u64,
}

impl HookCounters {
    pub fn figures(&self) -> HookFigures {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HookFigures {
            running: g(&self.running),
            started: g(&self.started),
            succeeded: g(&self.succeeded),
            failed: g(&self.failed),
            timed_out: g(&self.timed_out),
            skipped: g(&self.skipped),
        }
    }
}

/// Starts the hook for one alert line; returns at once.
pub fn dispatch(cfg: &HookConfig, counters: &Arc<HookCounters>, line: String) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    if counters.running.load(Ordering::Relaxed) >= cfg.max_running {
        let n = counters.skipped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            skipped = n,
            max_running = cfg.max_running,
            "alert hook not run: too many still running"
        );
        return;
    }
    counters.running.fetch_add(1, Ordering::Relaxed);
    counters.started.fetch_add(1, Ordering::Relaxed);
    let argv = cfg.argv.clone();
    let timeout = Duration::from_secs(cfg.timeout_seconds);
    let counters = Arc::clone(counters);
    tokio::spawn(async move {
        let outcome = run(&argv, timeout, line).await;
        counters.running.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                counters.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Err(HookFailure::TimedOut) => {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(hook = %argv[0], timeout_seconds = timeout.as_secs(), "alert hook killed at its timeout");
            }
            Err(HookFailure::Failed(why)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(hook = %argv[0], error = %why, "alert hook failed");
            }
        }
    });
}

enum HookFailure {
    TimedOut,
    Failed(String),
}

/// The hook's whole environment: nothing of the daemon's leaks into it.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

async fn run(argv: &[String], timeout: Duration, line: String) -> Result<(), HookFailure> {
    let failed = |what: &str, e: std::io::Error| HookFailure::Failed(format!("{what}: {e}"));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", HOOK_PATH)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent. The hook leads
    // its own session and process group, so the timeout can kill everything it started.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|e| failed("starting it", e))?;
    let group = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let mut stdin = child.stdin.take();
    let work = async {
        if let Some(s) = &mut stdin {
            // One write: the line arrives whole. A hook that does not read it is not a failure.
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            let _ = s.write_all(&bytes).await;
        }
        drop(stdin);
        child.wait().await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookFailure::Failed(format!("exited with {status}"))),
        Ok(Err(e)) => Err(failed("waiting for it", e)),
        Err(_) => {
            if let Some(g) = group {
                let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.kill().await;
            Err(HookFailure::TimedOut)
        }
    }
}
