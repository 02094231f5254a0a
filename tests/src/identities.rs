//! Identities a test gives its clients: a cgroup tree of its own (names a delegated user could
//! pick, or a unit's or a container's), and the unprivileged user `nobody`.
use std::{
    ffi::OsStr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Scenario, read_report, scenario_binary};

/// The cgroup v2 mount point, from /proc/self/mounts.
fn cgroup2() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup tree made for the test (as root: a stand-in for a subtree delegated to a user, where
/// the user picks the names), removed again at the end.
pub struct Cgroups(PathBuf);

impl Default for Cgroups {
    fn default() -> Self {
        Self::new()
    }
}

impl Cgroups {
    pub fn new() -> Self {
        let top = cgroup2().join(format!("portwatch-test-{}", std::process::id()));
        std::fs::create_dir_all(&top).unwrap();
        Cgroups(top)
    }

    pub fn make(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // Deepest first; each is empty once its processes are gone.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A copy of the scenario client that `nobody` can execute wherever the checkout lives.
pub struct Client {
    _dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("portwatch-scenario");
        std::fs::copy(scenario_binary(), &bin).unwrap();
        Client { _dir: dir, bin }
    }

    /// Runs the scenario as uid/gid 65534, first moved into `cgroup` when given.
    pub fn as_nobody<S: AsRef<OsStr>>(&self, cgroup: Option<&Path>, args: &[S]) -> Scenario {
        let mut attempts = 0;
        loop {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(
                    "[ -z \"$1\" ] || echo $$ > \"$1/cgroup.procs\" || exit 9; shift; \
                     exec setpriv --reuid=65534 --regid=65534 --clear-groups -- \"$@\"",
                )
                .arg("sh")
                .arg(cgroup.map(Path::as_os_str).unwrap_or_default())
                .arg(&self.bin)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = cmd.spawn().expect("sh");
            let s = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_report(child)));
            match s {
                Ok(s) => return s,
                // Another test thread's fork can hold the copy's write descriptor for a moment:
                // exec fails with ETXTBSY. That is the test's own race; retry.
                Err(_) if attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }
}
