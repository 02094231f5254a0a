//! Running commands and waiting on them, shared by every task.
use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` with its output on the terminal; a non-zero exit is an error. The long steps
/// (apt-get, cargo, rustup) report their own progress, so it stays visible.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// `run` for the cargo that started xtask (`CARGO`), so a pinned toolchain stays the one in use.
pub fn cargo(root: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> Result<()> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root).args(args).envs(env.iter().copied());
    run(&mut cmd)
}

/// Whether `cmd` ran and exited 0, its output hidden: for probes where a missing tool is an answer
/// ("not installed yet"), not an error.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cmd`'s stdout; a non-zero exit is an error quoting its stderr, which is otherwise hidden.
pub fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// `output` for a command whose stdout says nothing worth keeping (auditctl).
pub fn quiet(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

/// `cmd`'s stdout as text, whatever its exit status: the probes read an answer from it even when
/// they exit non-zero (dpkg-query on a package never installed, ldd on a static binary).
pub fn stdout_text(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

/// Calls `f` every 50 ms until it gives a value; None once `limit` has passed.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `ok`; an error once `limit` has passed.
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    poll(limit, || Ok(ok().then_some(())))?.with_context(|| format!("timed out after {limit:?}"))
}

/// `child`'s exit status, or None if it still runs after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    poll(limit, || Ok(child.try_wait()?))
}

/// SIGTERM first, so a tracer can flush what it saw; SIGKILL if it is still there after `grace`.
pub fn terminate(mut child: Child, grace: Duration) {
    // SAFETY: kill(2) on a child we started and have not reaped, so its pid is still ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = wait_exit(&mut child, grace);
    let _ = child.kill();
    let _ = child.wait();
}
