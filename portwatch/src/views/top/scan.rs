//! One look at every network namespace: its ephemeral range, which of those ports are held (and
//! by whom), and its listeners with their holders. Each namespace is read from a short-lived
//! thread that enters it (setns), since sock_diag and the `net.ipv4` sysctls answer for the
//! caller's own namespace only.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    path::Path,
};

use crate::{
    attribution::{Attributor, ports::EphemeralRange, procfs, raw_scan_of},
    facts::{Origin, PortFacts},
    judgement::policy::is_listener,
    kernel::sockets::{self, KernelSocket},
};

/// Namespaces looked into per round at most: a user can make many (`unshare -n`); the rest are
/// counted, not scanned.
pub const MAX_NAMESPACES: usize = 64;
/// Holders of ephemeral ports named per namespace.
pub const TOP_HOLDERS: usize = 3;

/// What one namespace showed.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub netns: u32,
    /// This process's own (the host's, when run from it).
    pub own: bool,
    pub range: EphemeralRange,
    /// Ephemeral-range ports held by a socket, TIME_WAIT ones included.
    pub in_use: HashSet<u16>,
    /// Of those, held only by TIME_WAIT sockets.
    pub time_wait: usize,
    /// The processes holding the most of them: (ports, facts of one of its sockets).
    pub holders: Vec<(usize, PortFacts)>,
    /// Ports held by no process this /proc shows (kernel sockets, TIME_WAIT, other PID
    /// namespaces).
    pub unowned: usize,
    pub listeners: Vec<PortFacts>,
}

#[derive(Debug, Default)]
pub struct Round {
    pub namespaces: Vec<Namespace>,
    /// Namespaces over `MAX_NAMESPACES`, not scanned.
    pub skipped: usize,
    /// Namespaces that could not be entered or read, with why.
    pub failed: Vec<(u32, String)>,
}

/// Every network namespace some process is in: its inode and a pid to enter it through.
pub fn namespaces(proc_root: &Path) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path().join("ns/net")) else {
            continue;
        };
        if let Some(ino) = link
            .to_str()
            .and_then(|l| l.strip_prefix("net:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse().ok())
        {
            out.entry(ino).or_insert(pid);
        }
    }
    out
}

/// Scans every namespace (the caller's first).
pub fn round(proc_root: &Path) -> Round {
    let own = sockets::own_netns();
    let owners = procfs::socket_owners(proc_root);
    let mut all: Vec<(u32, u32)> = namespaces(proc_root).into_iter().collect();
    all.sort_by_key(|(ns, _)| Some(*ns) != own);
    let mut round = Round {
        skipped: all.len().saturating_sub(MAX_NAMESPACES),
        ..Round::default()
    };
    for (netns, pid) in all.into_iter().take(MAX_NAMESPACES) {
        let result = if Some(netns) == own {
            Ok(look(netns, true, owners.clone()))
        } else {
            enter_and_look(proc_root, netns, pid, owners.clone())
        };
        match result {
            Ok(ns) => round.namespaces.push(ns),
            Err(e) => round.failed.push((netns, e)),
        }
    }
    round
}

fn enter_and_look(
    proc_root: &Path,
    netns: u32,
    pid: u32,
    owners: HashMap<u32, u32>,
) -> Result<Namespace, String> {
    let path = proc_root.join(pid.to_string()).join("ns/net");
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread alone enters the namespace, and ends there.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering network namespace {netns}: {e}"))?;
            if sockets::own_netns() != Some(netns) {
                return Err(format!(
                    "network namespace {netns} changed while entering it"
                ));
            }
            Ok(look(netns, false, owners))
        })
        .join()
        .unwrap_or_else(|_| Err(format!("scanning network namespace {netns} failed")))
    })
}

/// Reads the calling thread's namespace.
fn look(netns: u32, own: bool, owners: HashMap<u32, u32>) -> Namespace {
    let range = EphemeralRange::read();
    let all = sockets::dump_with_time_wait().unwrap_or_default();
    let mut in_use = HashSet::new();
    let mut live_ports = HashSet::new();
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    let mut unowned = 0;
    for s in &all {
        let port = s.local.port();
        if !range.contains(port) || s.is_tcp_listener() {
            continue;
        }
        in_use.insert(port);
        if !s.is_time_wait() {
            live_ports.insert(port);
        }
        match owners.get(&s.inode).copied().filter(|p| *p != 0) {
            Some(pid) => *per_pid.entry(pid).or_default() += 1,
            None => unowned += 1,
        }
    }
    let time_wait = in_use.len() - live_ports.len();
    let mut top: Vec<(u32, usize)> = per_pid.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(TOP_HOLDERS);
    let wanted_pids: HashSet<u32> = top.iter().map(|(p, _)| *p).collect();
    let live: Vec<KernelSocket> = all.into_iter().filter(|s| !s.is_time_wait()).collect();
    let first_of: HashMap<u32, u32> = live
        .iter()
        .filter_map(|s| {
            let pid = owners.get(&s.inode).copied()?;
            (wanted_pids.contains(&pid) && range.contains(s.local.port())).then_some((pid, s.inode))
        })
        .collect();
    let sample: HashSet<u32> = first_of.values().copied().collect();
    let raw = raw_scan_of(live, owners, Some(netns));
    let scan = Attributor::oneshot().attribute(raw, Origin::Snapshot, |s| {
        s.is_tcp_listener()
            || (s.transport == crate::facts::Transport::Udp && s.peer.is_none())
            || sample.contains(&s.inode)
    });
    let mut listeners = Vec::new();
    let mut facts_of: HashMap<u32, PortFacts> = HashMap::new();
    for f in scan.facts {
        if wanted_pids.contains(&f.process.pid) && f.port.ephemeral && !is_listener(&f) {
            facts_of.entry(f.process.pid).or_insert(f);
        } else if is_listener(&f) {
            listeners.push(f);
        }
    }
    let holders = top
        .into_iter()
        .filter_map(|(pid, n)| facts_of.remove(&pid).map(|f| (n, f)))
        .collect();
    Namespace {
        netns,
        own,
        range,
        in_use,
        time_wait,
        holders,
        unowned,
        listeners,
    }
}
