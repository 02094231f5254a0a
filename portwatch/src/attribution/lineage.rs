//! The process table: what each process runs, from `exec` records captured in the kernel (and a
//! /proc scan at start), inherited across `fork`, kept a while after `exit`. Attribution falls
//! back to it when a process is already gone from /proc. Bounded; guarded against pid reuse by
//! start time.
use std::{collections::HashMap, path::Path};

use crate::{attribution::procfs, facts::ProcessFacts, kernel::decode::ExecRecord};

/// How long after its exit a process's entry still attributes events (its releases during exit
/// can arrive after the exit record).
const EXIT_GRACE_NS: u64 = 5_000_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Monotonic time of the exec or fork that started this image; 0 for processes found at start.
    pub started_ns: u64,
    pub exited_ns: Option<u64>,
    /// What it runs: ppid, comm (the executable's base name cut to 15 bytes, as the kernel sets
    /// it at exec), executable and command line.
    pub image: ProcessFacts,
}

pub struct ProcessTable {
    entries: HashMap<u32, Entry>,
    max: usize,
    pub evictions: u64,
    /// Children of a fork that have not exec'd, with the image they inherited. Apart from
    /// `entries`: a thread is a fork child too, and threads come and go by the thousand without an
    /// exec or an exit record; their churn must never push out a process's exec record.
    forks: lru::LruCache<u32, Entry>,
    /// Fork children forgotten to stay within bounds.
    pub fork_evictions: u64,
}

impl ProcessTable {
    pub fn new(max: usize) -> Self {
        let max = max.max(16);
        Self {
            entries: HashMap::new(),
            max,
            evictions: 0,
            forks: lru::LruCache::new(
                std::num::NonZeroUsize::new(max / 4).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            fork_evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// (fork children held, their bound).
    pub fn forks(&self) -> (usize, usize) {
        (self.forks.len(), self.forks.cap().get())
    }

    fn insert(&mut self, pid: u32, e: Entry) {
        if self.entries.len() >= self.max && !self.entries.contains_key(&pid) {
            self.evict();
        }
        self.entries.insert(pid, e);
    }

    /// Makes room: exited processes first, then the oldest eighth.
    fn evict(&mut self) {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.exited_ns.is_none());
        if self.entries.len() >= self.max {
            let mut starts: Vec<u64> = self.entries.values().map(|e| e.started_ns).collect();
            starts.sort_unstable();
            let cut = starts[starts.len() / 8];
            self.entries.retain(|_, e| e.started_ns > cut);
        }
        self.evictions += (before - self.entries.len()) as u64;
    }

    pub fn exec(&mut self, r: &ExecRecord) {
        self.forks.pop(&r.pid);
        let executable =
            (!r.filename.is_empty()).then(|| String::from_utf8_lossy(&r.filename).into_owned());
        self.insert(
            r.pid,
            Entry {
                started_ns: r.monotonic_ns,
                exited_ns: None,
                image: ProcessFacts {
                    pid: r.pid,
                    ppid: (r.ppid != 0).then_some(r.ppid),
                    comm: comm_of(&r.filename),
                    executable,
                    executable_truncated: r.filename_truncated,
                    command_line: procfs::split_cmdline(&r.args),
                    command_line_truncated: r.args_truncated,
                    ..ProcessFacts::default()
                },
            },
        );
    }

    /// A fork copies the parent's image. For a new thread `child` is a thread id that no event
    /// will ask about; it ages out like any entry.
    pub fn fork(&mut self, child: u32, parent: u32, at_ns: u64) {
        if child == parent {
            return;
        }
        let inherited = self
            .entries
            .get(&parent)
            .or_else(|| self.forks.peek(&parent))
            .map(|p| ProcessFacts {
                pid: child,
                ppid: Some(parent),
                ..p.image.clone()
            });
        if let Some(image) = inherited {
            let e = Entry {
                started_ns: at_ns,
                exited_ns: None,
                image,
            };
            if let Some((old, _)) = self.forks.push(child, e)
                && old != child
            {
                self.fork_evictions += 1;
            }
        }
    }

    pub fn exit(&mut self, pid: u32, at_ns: u64) {
        if let Some(e) = self.entries.get_mut(&pid) {
            e.exited_ns = Some(at_ns);
        }
        if let Some(e) = self.forks.peek_mut(&pid) {
            e.exited_ns = Some(at_ns);
        }
    }

    /// The process `pid` was at monotonic time `at_ns`: not one that started later (pid reuse),
    /// nor one that had exited well before.
    pub fn lookup(&self, pid: u32, at_ns: u64) -> Option<&Entry> {
        let live = |e: &&Entry| {
            e.started_ns <= at_ns && e.exited_ns.is_none_or(|x| at_ns <= x + EXIT_GRACE_NS)
        };
        // A fork child newer than the process's own exec record is what ran at `at_ns`.
        let forked = self.forks.peek(&pid).filter(live);
        let execd = self.entries.get(&pid).filter(live);
        match (forked, execd) {
            (Some(f), Some(e)) if f.started_ns < e.started_ns => Some(e),
            (Some(f), _) => Some(f),
            (None, e) => e,
        }
    }

    /// Every process running now, from /proc.
    pub fn seed_from_proc(&mut self, proc_root: &Path) {
        for (pid, dir) in procfs::pids(proc_root) {
            if let Some(image) = procfs::read(&dir) {
                self.insert(
                    pid,
                    Entry {
                        started_ns: 0,
                        exited_ns: None,
                        image,
                    },
                );
            }
        }
    }
}

/// What the kernel sets comm to at exec: the file's base name, at most 15 bytes.
fn comm_of(filename: &[u8]) -> String {
    let base = filename.rsplit(|&b| b == b'/').next().unwrap_or(filename);
    String::from_utf8_lossy(&base[..base.len().min(15)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(pid: u32, at: u64, exe: &str) -> ExecRecord {
        ExecRecord {
            monotonic_ns: at,
            pid,
            ppid: 1,
            uid: 0,
            filename: exe.as_bytes().to_vec(),
            args: b"prog\0-x\0".to_vec(),
            args_truncated: false,
            filename_truncated: false,
        }
    }

    #[test]
    fn exec_fork_exit_and_pid_reuse() {
        let mut t = ProcessTable::new(100);
        t.exec(&exec(10, 100, "/bin/a"));
        assert_eq!(
            t.lookup(10, 150).unwrap().image.executable.as_deref(),
            Some("/bin/a")
        );
        assert_eq!(
            t.lookup(10, 150).unwrap().image.command_line,
            Some(vec!["prog".into(), "-x".into()])
        );
        assert!(
            t.lookup(10, 50).is_none(),
            "an event before the exec belongs to an older process"
        );
        t.fork(11, 10, 200);
        assert_eq!(t.lookup(11, 250).unwrap().image.ppid, Some(10));
        assert_eq!(
            t.lookup(11, 250).unwrap().image.executable.as_deref(),
            Some("/bin/a")
        );
        t.exit(10, 300);
        assert!(t.lookup(10, 300 + EXIT_GRACE_NS).is_some());
        assert!(t.lookup(10, 301 + EXIT_GRACE_NS).is_none());
        // The pid comes back as another program.
        t.exec(&exec(10, 400, "/bin/b"));
        assert_eq!(
            t.lookup(10, 450).unwrap().image.executable.as_deref(),
            Some("/bin/b")
        );
    }

    #[test]
    fn stays_bounded() {
        let mut t = ProcessTable::new(64);
        for pid in 0..10_000 {
            t.exec(&exec(pid, u64::from(pid), "/bin/x"));
        }
        assert!(t.len() <= 64);
        assert!(t.evictions > 0);
        assert!(t.lookup(9_999, 10_000).is_some(), "the newest survive");
    }

    #[test]
    fn seeds_from_proc() {
        let mut t = ProcessTable::new(100_000);
        t.seed_from_proc(Path::new("/proc"));
        let me = t.lookup(std::process::id(), 1).expect("this process");
        assert!(me.image.executable.is_some());
    }

    #[test]
    fn thread_churn_never_pushes_out_a_process() {
        let mut t = ProcessTable::new(64);
        t.exec(&exec(10, 100, "/bin/server"));
        // A server making threads by the thousand: each a fork record, none an exec or an exit.
        for tid in 1000..50_000 {
            t.fork(tid, 10, 200 + u64::from(tid));
        }
        assert_eq!(
            t.lookup(10, 60_000).unwrap().image.executable.as_deref(),
            Some("/bin/server")
        );
        assert!(t.fork_evictions > 0);
        assert!(t.forks.len() <= 16);
        // A forked child is still attributed while it lives among the churn.
        t.fork(77, 10, 60_000);
        assert_eq!(
            t.lookup(77, 60_001).unwrap().image.executable.as_deref(),
            Some("/bin/server")
        );
    }
}
