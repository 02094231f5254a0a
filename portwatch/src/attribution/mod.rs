//! Attribute a kernel record to a process: executable, command line and parent from /proc, and
//! the user name from the user database. What cannot be read (the process is gone) stays None;
//! nothing is guessed.
use std::{
    fs,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub mod cgroup;
pub mod containers;
pub mod lineage;
pub mod ports;

use lru::LruCache;

use nix::unistd::{Uid, User};

use self::lineage::ProcessTable;
use crate::kernel::decode::KernelEvent;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub ppid: Option<u32>,
    /// The parent's comm (from /proc, or the process table once the parent is gone).
    pub parent_comm: Option<String>,
    pub executable: Option<String>,
    pub command_line: Option<Vec<String>>,
    /// The command line was longer than `MAX_CMDLINE_BYTES` and is cut there.
    pub command_line_truncated: bool,
    /// cgroup v2 path, and the systemd unit and container it names.
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container: Option<cgroup::Container>,
    pub user_name: Option<String>,
}

/// Longest command line written into an event (bytes of /proc/PID/cmdline); longer ones are cut
/// and marked, so one process cannot make a multi-megabyte log line.
pub const MAX_CMDLINE_BYTES: usize = 8192;

/// Default bounds (the config's `[cache]` section sets them). User names change rarely; a small
/// cache keeps the user database off the hot path.
const USER_CACHE_MAX: usize = 4096;
/// A storm of events from one process should not re-read /proc for each: facts are reused for
/// the same pid and comm for this long (an exec changes comm, so it is seen at once).
const PROC_CACHE_TTL: Duration = Duration::from_secs(2);
const PROC_CACHE_MAX: usize = 4096;

#[derive(Debug, Default, Clone, Copy)]
pub struct CacheEvictions {
    pub processes: u64,
    pub users: u64,
}

pub struct Enricher {
    proc_root: PathBuf,
    users: LruCache<u32, Option<String>>,
    procs: LruCache<(u32, Vec<u8>), (Instant, ProcFacts)>,
    /// Entries pushed out of each cache by newer ones.
    pub evictions: CacheEvictions,
    /// Records whose process was already gone from /proc.
    pub vanished: u64,
    /// Of those, the ones the process table still attributed.
    pub from_table: u64,
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new("/proc", PROC_CACHE_MAX, USER_CACHE_MAX)
    }
}

impl Enricher {
    pub fn new(proc_root: impl Into<PathBuf>, procs_max: usize, users_max: usize) -> Self {
        Self {
            proc_root: proc_root.into(),
            users: LruCache::new(NonZeroUsize::new(users_max).unwrap_or(NonZeroUsize::MIN)),
            procs: LruCache::new(NonZeroUsize::new(procs_max).unwrap_or(NonZeroUsize::MIN)),
            evictions: CacheEvictions::default(),
            vanished: 0,
            from_table: 0,
        }
    }

    /// Facts from /proc while the process lives; from the process table (exec records) once it
    /// is gone.
    pub fn attribute(&mut self, ev: &KernelEvent, table: &ProcessTable) -> Attribution {
        let key = (ev.pid, ev.comm.clone());
        let now = Instant::now();
        let facts = match self.procs.get(&key) {
            Some((at, facts)) if now.duration_since(*at) < PROC_CACHE_TTL => facts.clone(),
            _ => match read_process(&self.proc_root.join(ev.pid.to_string())) {
                Some(facts) => {
                    if let Some((old, _)) = self.procs.push(key.clone(), (now, facts.clone()))
                        && old != key
                    {
                        self.evictions.processes += 1;
                    }
                    facts
                }
                None => {
                    self.vanished += 1;
                    ProcFacts::default()
                }
            },
        };
        // Gone, or a zombie whose exe and cmdline are already empty: the exec record says what it
        // ran.
        let mut facts = facts;
        if (facts.executable.is_none() || facts.command_line.is_none())
            && let Some(e) = table.lookup(ev.pid, ev.monotonic_ns)
        {
            self.from_table += 1;
            facts.ppid = facts.ppid.or(e.ppid);
            if facts.executable.is_none() {
                facts.executable = e.executable.clone();
            }
            if facts.command_line.is_none() {
                facts.command_line = e.command_line.clone();
                facts.command_line_truncated = e.command_line_truncated;
            }
        }
        if facts.parent_comm.is_none()
            && let Some(ppid) = facts.ppid
        {
            facts.parent_comm = table
                .lookup(ppid, ev.monotonic_ns)
                .and_then(|p| p.comm.clone());
        }
        let cg = facts
            .cgroup
            .as_deref()
            .map(cgroup::parse)
            .unwrap_or_default();
        Attribution {
            ppid: facts.ppid,
            parent_comm: facts.parent_comm,
            executable: facts.executable,
            command_line: facts.command_line,
            command_line_truncated: facts.command_line_truncated,
            cgroup: facts.cgroup,
            unit: cg.unit,
            container: cg.container,
            user_name: self.user_name(ev.uid),
        }
    }

    /// (process cache entries, its bound, user cache entries, its bound), for `status`.
    pub fn cache_sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.procs.len(),
            self.procs.cap().get(),
            self.users.len(),
            self.users.cap().get(),
        )
    }

    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.users.get(&uid) {
            return name.clone();
        }
        let name = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        if self.users.push(uid, name.clone()).is_some() {
            self.evictions.users += 1;
        }
        name
    }
}

/// What /proc tells about a process at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFacts {
    pub ppid: Option<u32>,
    pub comm: Option<String>,
    pub parent_comm: Option<String>,
    pub executable: Option<String>,
    pub command_line: Option<Vec<String>>,
    pub command_line_truncated: bool,
    pub cgroup: Option<String>,
}

/// /proc/PID's facts, for the process table's start-up scan.
pub fn read_process_facts(dir: &Path) -> Option<ProcFacts> {
    read_process(dir)
}

/// Reads what /proc still has of a process; `None` when its directory is gone.
fn read_process(dir: &Path) -> Option<ProcFacts> {
    let stat = fs::read(dir.join("stat")).ok()?;
    let ppid = parse_stat_ppid(&stat);
    let comm = read_comm(dir);
    let parent_comm = ppid.and_then(|p| {
        dir.parent()
            .and_then(|root| read_comm(&root.join(p.to_string())))
    });
    let executable = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let (command_line, truncated) = match fs::read(dir.join("cmdline")) {
        Ok(mut b) => {
            let truncated = b.len() > MAX_CMDLINE_BYTES;
            b.truncate(MAX_CMDLINE_BYTES);
            (split_cmdline(&b), truncated)
        }
        Err(_) => (None, false),
    };
    let cgroup = fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|t| cgroup::v2_path(&t));
    Some(ProcFacts {
        ppid,
        comm,
        parent_comm,
        executable,
        command_line,
        command_line_truncated: truncated,
        cgroup,
    })
}

fn read_comm(dir: &Path) -> Option<String> {
    let c = fs::read(dir.join("comm")).ok()?;
    let c = c.strip_suffix(b"\n").unwrap_or(&c);
    Some(String::from_utf8_lossy(c).into_owned())
}

/// The parent pid from /proc/PID/stat. comm (field 2) may hold spaces and parentheses, so parse
/// from the last ')'.
pub fn parse_stat_ppid(stat: &[u8]) -> Option<u32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// NUL-separated argv; an empty cmdline (kernel thread, zombie) is None.
pub fn split_cmdline(bytes: &[u8]) -> Option<Vec<String>> {
    if bytes.is_empty() {
        return None;
    }
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    Some(
        trimmed
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_hostile_comm() {
        assert_eq!(parse_stat_ppid(b"123 (a) b) (c) S 77 123 123 0"), Some(77));
        assert_eq!(parse_stat_ppid(b"garbage"), None);
    }

    #[test]
    fn cmdline_splits_on_nul_and_keeps_empty_args() {
        assert_eq!(
            split_cmdline(b"nc\0-l\0\0x\xff\0"),
            Some(vec![
                "nc".into(),
                "-l".into(),
                "".into(),
                "x\u{fffd}".into()
            ])
        );
        assert_eq!(split_cmdline(b""), None);
    }

    #[test]
    fn own_process_is_attributed_and_a_gone_one_is_not() {
        let mut e = Enricher::default();
        let me = std::process::id();
        let f = read_process(&PathBuf::from(format!("/proc/{me}"))).unwrap();
        let (ppid, exe, argv, cut) = (
            f.ppid,
            f.executable,
            f.command_line,
            f.command_line_truncated,
        );
        assert!(f.cgroup.is_some());
        assert!(ppid.is_some() && exe.is_some() && argv.is_some() && !cut);
        assert!(read_process(Path::new("/proc/999999999")).is_none());
        assert_eq!(e.user_name(0).as_deref(), Some("root"));
    }
}
