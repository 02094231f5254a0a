//! Attribution: a kernel record (or a socket a scan found) becomes `PortFacts` — the process behind
//! it (executable, command line, parent, user, unit, container), the port's class, and the time as
//! wall-clock time. Facts come from /proc while the process lives and from the process table (exec
//! records captured in the kernel) once it is gone; what cannot be learned stays None, nothing is
//! guessed.
pub mod cgroup;
pub mod containers;
pub mod lineage;
pub mod ports;
pub mod procfs;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use nix::unistd::{Uid, User};
use serde::{Deserialize, Serialize};

use self::{lineage::ProcessTable, ports::EphemeralRange};
use crate::{
    clock::{self, WallClock},
    facts::{Group, KernelEvent, Kind, Network, Origin, PortFacts, ProcessFacts},
    hashing::{self, Lru},
    kernel::{
        decode::Record,
        sockets::{self, KernelSocket},
    },
};

/// Default bounds (the config's `[cache]` section sets them). User names change rarely; a small
/// cache keeps the user database off the hot path.
const USER_CACHE_MAX: usize = 4096;
/// A storm of events from one process should not re-read /proc for each: facts are reused for
/// the same pid and comm for this long (an exec changes comm, so it is seen at once).
const PROC_CACHE_TTL: Duration = Duration::from_secs(2);
const PROC_CACHE_MAX: usize = 4096;
/// Calling threads whose attributed facts are kept, at most (`Attributor::threads`): the threads
/// making events now, so fewer than the processes whose /proc facts are kept.
const THREAD_CACHE_MAX: usize = 1024;

/// A bounded cache's fill, for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFigures {
    pub size: usize,
    pub max: usize,
    pub evictions: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounters {
    pub processes: CacheFigures,
    pub users: CacheFigures,
    pub process_table: CacheFigures,
    /// Fork children that have not exec'd (threads among them), kept apart from the table.
    #[serde(default)]
    pub forks: CacheFigures,
    /// The output's serialized `process` objects (`output::ProcessJson`).
    #[serde(default)]
    pub process_json: CacheFigures,
    /// Each calling thread's facts as its events get them (pid, thread, comm, user and group
    /// merged with the process's), shared by its events while they last.
    #[serde(default)]
    pub threads: CacheFigures,
    /// The history's copies of facts whose command line it cuts (`history::tenancy`).
    #[serde(default)]
    pub history_cut_processes: CacheFigures,
    /// The history writer's memory of the process rows it wrote (`history::store::Rows`).
    #[serde(default)]
    pub history_process_rows: CacheFigures,
}

/// What attribution could not do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributionCounters {
    /// Records whose process was already gone from /proc.
    pub process_gone: u64,
    /// Of those, the ones the process table still attributed.
    pub from_process_table: u64,
    /// Events whose process ran another image (or renamed itself) by the time it was attributed:
    /// attributed from the process table, not from /proc's later image.
    #[serde(default)]
    pub image_changed: u64,
}

/// The kernel's sockets at one moment and which process holds each: the slow part of a scan (a
/// sock_diag dump and a walk of every /proc/PID/fd), done off the event loop where it can be.
pub struct RawScan {
    pub sockets: Vec<KernelSocket>,
    /// Socket inode → the pid holding it.
    owners: HashMap<u32, u32>,
    /// The network namespace the scan saw (the caller's own).
    pub netns: Option<u32>,
    /// When the scan began (Unix ns): what opened later may be missing from it.
    pub started_ns: i64,
    monotonic_ns: u64,
}

/// Scans the kernel's sockets (in the caller's network namespace) and their holders under
/// `proc_root`. Blocking; touches no daemon state.
pub fn raw_scan(proc_root: &Path) -> Result<RawScan, sockets::SockDiagError> {
    let (started_ns, monotonic_ns) = (clock::now_unix_ns(), clock::monotonic_now());
    Ok(RawScan {
        started_ns,
        monotonic_ns,
        sockets: sockets::dump_all()?,
        owners: procfs::socket_owners(proc_root),
        netns: sockets::own_netns(),
    })
}

/// A scan of sockets the caller dumped itself (in another network namespace, say, from a thread
/// that entered it), with holders from a /proc walk the caller made (one walk serves every
/// namespace: socket inodes are unique across them).
pub fn raw_scan_of(
    sockets: Vec<KernelSocket>,
    owners: HashMap<u32, u32>,
    netns: Option<u32>,
) -> RawScan {
    RawScan {
        started_ns: clock::now_unix_ns(),
        monotonic_ns: clock::monotonic_now(),
        sockets,
        owners,
        netns,
    }
}

/// What a scan can say is gone: a socket of the namespace it saw, known since before it began,
/// that it does not list. (One opened after it began may be missing from it: not gone.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanWindow {
    pub netns: Option<u32>,
    /// When the scan began (Unix ns).
    pub started_ns: i64,
}

impl ScanWindow {
    /// Of `known` — each a key, its namespace and since when it is known — those this scan
    /// shows gone (`listed` says whether the scan lists a key).
    pub fn gone<K: Copy>(
        &self,
        known: impl Iterator<Item = (K, Option<u32>, i64)>,
        listed: impl Fn(&K) -> bool,
    ) -> Vec<K> {
        known
            .filter(|(k, netns, since_ns)| {
                *netns == self.netns && *since_ns < self.started_ns && !listed(k)
            })
            .map(|(k, _, _)| k)
            .collect()
    }
}

impl RawScan {
    pub fn window(&self) -> ScanWindow {
        ScanWindow {
            netns: self.netns,
            started_ns: self.started_ns,
        }
    }
}

/// A scan with its sockets attributed: `facts` for the sockets the caller asked about.
pub struct Scan {
    pub sockets: Vec<KernelSocket>,
    pub facts: Vec<PortFacts>,
    pub netns: Option<u32>,
    pub started_ns: i64,
}

/// A calling thread as its events name it: pid, thread id, comm (NUL-padded), uid, gid.
type ThreadKey = (u32, u32, [u8; 16], u32, u32);

/// How attribution found a thread's facts, so that each event they serve is counted as the first
/// one was (`AttributionCounters` counts events).
#[derive(Debug, Default, Clone, Copy)]
struct Found {
    gone: bool,
    from_table: bool,
    image_changed: bool,
}

/// One thread's facts, found at `at`.
struct Attributed {
    at: Instant,
    facts: Arc<ProcessFacts>,
    found: Found,
}

pub struct Attributor {
    proc_root: PathBuf,
    users: Lru<u32, Option<String>>,
    /// /proc's facts per process (pid and the calling thread's comm).
    procs: Lru<(u32, Vec<u8>), (Instant, Arc<ProcessFacts>)>,
    /// What each calling thread's events get: built once from `procs`, the process table and the
    /// user database, then shared (an `Arc` per event instead of a copy of every string).
    threads: Lru<ThreadKey, Attributed>,
    process_evictions: u64,
    user_evictions: u64,
    thread_evictions: u64,
    /// What each process runs, from exec records.
    pub processes: ProcessTable,
    clock: WallClock,
    ephemeral: EphemeralRange,
    counters: AttributionCounters,
}

impl Attributor {
    /// `procs_max`/`users_max` bound the caches, `table_max` the process table.
    pub fn new(
        proc_root: impl Into<PathBuf>,
        procs_max: usize,
        users_max: usize,
        table_max: usize,
    ) -> Self {
        Self {
            proc_root: proc_root.into(),
            users: hashing::lru(users_max),
            procs: hashing::lru(procs_max),
            threads: hashing::lru(procs_max.min(THREAD_CACHE_MAX)),
            process_evictions: 0,
            user_evictions: 0,
            thread_evictions: 0,
            processes: ProcessTable::new(table_max),
            clock: WallClock::sample(),
            ephemeral: EphemeralRange::read(),
            counters: AttributionCounters::default(),
        }
    }

    /// For one-shot commands (`who`, `baseline`): /proc only, default bounds.
    pub fn oneshot() -> Self {
        Self::new("/proc", PROC_CACHE_MAX, USER_CACHE_MAX, 16)
    }

    /// A lineage record updates the process table; a port record is returned for attribution.
    pub fn lineage(&mut self, record: Record) -> Option<KernelEvent> {
        match record {
            Record::Port(ev) => return Some(ev),
            Record::Exec(r) => self.processes.exec(&r),
            Record::Fork {
                child,
                parent,
                monotonic_ns,
            } => self.processes.fork(child, parent, monotonic_ns),
            Record::Exit { pid, monotonic_ns } => self.processes.exit(pid, monotonic_ns),
        }
        None
    }

    /// Everything known about a port event.
    pub fn port(&mut self, event: KernelEvent, origin: Origin) -> PortFacts {
        let process = self.process(&event);
        let mut port = self.ephemeral.info(event.local.port());
        if event.kind == Kind::Bind && origin == Origin::Kernel {
            port.requested = Some(event.port_requested);
        }
        let wall_ns = self.clock.to_unix_ns(event.monotonic_ns);
        PortFacts {
            network: Network::of(&event),
            port,
            process,
            origin,
            wall_ns,
            event,
        }
    }

    /// Every socket the kernel has now (in the caller's network namespace), with its holder.
    pub fn scan(&mut self, origin: Origin) -> Result<Scan, sockets::SockDiagError> {
        let raw = raw_scan(&self.proc_root)?;
        Ok(self.attribute(raw, origin, |_| true))
    }

    /// Attributes the sockets of `raw` that `wanted` picks (each costs /proc reads).
    pub fn attribute(
        &mut self,
        raw: RawScan,
        origin: Origin,
        wanted: impl Fn(&KernelSocket) -> bool,
    ) -> Scan {
        // comm and group once per process, however many sockets it holds.
        let mut seen: HashMap<u32, (Vec<u8>, u32)> = HashMap::new();
        let facts = raw
            .sockets
            .iter()
            .filter(|s| wanted(s))
            .map(|s| {
                let pid = raw.owners.get(&s.inode).copied().unwrap_or(0);
                let mut ev = s.to_event(pid, raw.netns, raw.monotonic_ns);
                if pid != 0 {
                    let (comm, gid) = seen.entry(pid).or_insert_with(|| {
                        let dir = self.proc_root.join(pid.to_string());
                        (
                            procfs::comm_bytes(&dir).unwrap_or_default(),
                            procfs::gid(&dir).unwrap_or(0),
                        )
                    });
                    (ev.comm, ev.gid) = (comm.clone(), *gid);
                }
                self.port(ev, origin)
            })
            .collect();
        Scan {
            sockets: raw.sockets,
            facts,
            netns: raw.netns,
            started_ns: raw.started_ns,
        }
    }

    /// The process behind an event: from /proc while it lives, from the process table once it is
    /// gone. pid 0: a socket no process holds (a kernel socket); /proc has nothing to say. The
    /// calling thread's facts are found once and shared by its events for `PROC_CACHE_TTL`.
    pub fn process(&mut self, ev: &KernelEvent) -> Arc<ProcessFacts> {
        let key = thread_key(ev);
        let now = Instant::now();
        if let Some(k) = &key
            && let Some(a) = self.threads.get(k)
            && now.duration_since(a.at) < PROC_CACHE_TTL
        {
            let (facts, found) = (a.facts.clone(), a.found);
            self.count(found);
            return facts;
        }
        let (facts, found) = self.find_process(ev, now);
        self.count(found);
        let facts = Arc::new(facts);
        if let Some(k) = key {
            let entry = Attributed {
                at: now,
                facts: facts.clone(),
                found,
            };
            if let Some((old, _)) = self.threads.push(k, entry)
                && old != k
            {
                self.thread_evictions += 1;
            }
        }
        facts
    }

    fn count(&mut self, found: Found) {
        let c = &mut self.counters;
        c.process_gone += u64::from(found.gone);
        c.from_process_table += u64::from(found.from_table);
        c.image_changed += u64::from(found.image_changed);
    }

    /// `process` without the thread cache: /proc (through `procs`), the process table, the user
    /// database.
    fn find_process(&mut self, ev: &KernelEvent, now: Instant) -> (ProcessFacts, Found) {
        let mut found = Found::default();
        let mut facts = if ev.pid == 0 {
            ProcessFacts::default()
        } else {
            match self.read_cached(ev, now) {
                Some(facts) => ProcessFacts::clone(&facts),
                None => {
                    found.gone = true;
                    ProcessFacts::default()
                }
            }
        };
        if self.exec_since(ev, &facts) {
            // /proc shows a later image than the one that made the call: what that one ran comes
            // from the process table (its exec record), or stays unknown; never the new image's.
            found.image_changed = true;
            facts.executable = None;
            facts.command_line = None;
            facts.command_line_truncated = false;
        }
        // Gone, or a zombie whose exe and cmdline are already empty: the exec record says what it
        // ran.
        if ev.pid != 0
            && (facts.executable.is_none() || facts.command_line.is_none())
            && let Some(e) = self.processes.lookup(ev.pid, ev.monotonic_ns)
        {
            found.from_table = true;
            facts.ppid = facts.ppid.or(e.image.ppid);
            if facts.executable.is_none() {
                facts.executable = e.image.executable.clone();
                facts.executable_truncated = e.image.executable_truncated;
            }
            if facts.command_line.is_none() {
                facts.command_line = e.image.command_line.clone();
                facts.command_line_truncated = e.image.command_line_truncated;
            }
        }
        if facts.parent_comm.is_none()
            && let Some(ppid) = facts.ppid
        {
            facts.parent_comm = self
                .processes
                .lookup(ppid, ev.monotonic_ns)
                .map(|p| p.image.comm.clone())
                .filter(|c| !c.is_empty());
        }
        facts.pid = ev.pid;
        facts.tid = ev.tid;
        // The kernel's comm at the moment of the call, not /proc's now.
        facts.comm = String::from_utf8_lossy(&ev.comm).into_owned();
        facts.user.id = ev.uid;
        facts.user.name = if ev.pid == 0 {
            None
        } else {
            self.user_name(ev.uid)
        };
        facts.group = Group { id: ev.gid };
        (facts, found)
    }

    /// The calling thread's comm then is not its comm now: the process exec'd (or renamed
    /// itself) between the call and its attribution. Threads name themselves, so the calling
    /// thread's own comm is what is compared, read only when the main thread's differs.
    fn exec_since(&self, ev: &KernelEvent, facts: &ProcessFacts) -> bool {
        if ev.pid == 0 || ev.comm.is_empty() || facts.comm.as_bytes() == ev.comm.as_slice() {
            return false;
        }
        let task = self
            .proc_root
            .join(ev.pid.to_string())
            .join("task")
            .join(ev.tid.to_string());
        procfs::comm_bytes(&task).is_some_and(|now| now != ev.comm)
    }

    /// /proc's facts of the event's process (None: gone), read at most once per
    /// `PROC_CACHE_TTL` for the same pid and comm.
    fn read_cached(&mut self, ev: &KernelEvent, now: Instant) -> Option<Arc<ProcessFacts>> {
        let key = (ev.pid, ev.comm.clone());
        if let Some((at, facts)) = self.procs.get(&key)
            && now.duration_since(*at) < PROC_CACHE_TTL
        {
            return Some(facts.clone());
        }
        let facts = Arc::new(procfs::read(&self.proc_root.join(ev.pid.to_string()))?);
        if let Some((old, _)) = self.procs.push(key.clone(), (now, facts.clone()))
            && old != key
        {
            self.process_evictions += 1;
        }
        Some(facts)
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
            self.user_evictions += 1;
        }
        name
    }

    /// The host's ephemeral port range, as last read.
    pub fn ephemeral(&self) -> &EphemeralRange {
        &self.ephemeral
    }

    /// Re-samples what can change under a long-running daemon: the clock offset (NTP steps) and
    /// the ephemeral port range (sysctl).
    pub fn refresh(&mut self) {
        self.clock = WallClock::sample();
        self.ephemeral = EphemeralRange::read();
    }

    pub fn counters(&self) -> AttributionCounters {
        self.counters
    }

    pub fn caches(&self) -> CacheCounters {
        CacheCounters {
            processes: CacheFigures {
                size: self.procs.len(),
                max: self.procs.cap().get(),
                evictions: self.process_evictions,
            },
            users: CacheFigures {
                size: self.users.len(),
                max: self.users.cap().get(),
                evictions: self.user_evictions,
            },
            process_table: CacheFigures {
                size: self.processes.len(),
                max: self.processes.max(),
                evictions: self.processes.evictions,
            },
            forks: {
                let (size, max) = self.processes.forks();
                CacheFigures {
                    size,
                    max,
                    evictions: self.processes.fork_evictions,
                }
            },
            // The output's: the daemon fills it in.
            process_json: CacheFigures::default(),
            threads: CacheFigures {
                size: self.threads.len(),
                max: self.threads.cap().get(),
                evictions: self.thread_evictions,
            },
            // The history's: the daemon fills them in.
            history_cut_processes: CacheFigures::default(),
            history_process_rows: CacheFigures::default(),
        }
    }

    /// The root /proc is read from.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }
}

/// The thread cache's key of an event; None for a comm longer than the kernel's (never from the
/// kernel side), which is then attributed afresh.
fn thread_key(ev: &KernelEvent) -> Option<ThreadKey> {
    let mut comm = [0u8; 16];
    comm.get_mut(..ev.comm.len())?.copy_from_slice(&ev.comm);
    Some((ev.pid, ev.tid, comm, ev.uid, ev.gid))
}

/// Sockets holding an ephemeral port, per (transport, destination): how close one destination
/// comes to exhausting the range.
pub fn ephemeral_per_destination(
    sockets: &[KernelSocket],
    range: &EphemeralRange,
) -> HashMap<(crate::facts::Transport, std::net::SocketAddr), u64> {
    let mut per: HashMap<_, u64> = HashMap::new();
    for s in sockets {
        if let Some(peer) = s.peer
            && range.contains(s.local.port())
        {
            *per.entry((s.transport, peer)).or_default() += 1;
        }
    }
    per
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_attributed_and_root_is_named() {
        let mut a = Attributor::oneshot();
        let me = std::process::id();
        let mut ev = crate::facts::fixture::event_of(me, Kind::Bind);
        let comm = procfs::comm_bytes(Path::new("/proc/self")).unwrap();
        ev.comm = comm.clone();
        ev.monotonic_ns = clock::monotonic_now();
        ev.port_requested = true;
        let f = a.port(ev.clone(), Origin::Kernel);
        assert_eq!(f.process.pid, me);
        assert_eq!(f.process.comm.as_bytes(), comm.as_slice());
        assert!(f.process.executable.is_some() && f.process.command_line.is_some());
        // A comm the calling thread no longer has: /proc's image is not the caller's, and no
        // exec record says what was: nothing is guessed.
        let renamed = a.process(&KernelEvent {
            comm: b"before-exec".to_vec(),
            ..ev.clone()
        });
        assert_eq!(renamed.executable, None);
        assert_eq!(a.counters().image_changed, 1);
        assert_eq!(f.process.user.name.as_deref(), Some("root"));
        assert_eq!(f.port.requested, Some(true));
        let gone = a.process(&KernelEvent {
            pid: 999_999_999,
            ..ev
        });
        assert_eq!(gone.executable, None);
        assert_eq!(a.counters().process_gone, 1);
    }
}
