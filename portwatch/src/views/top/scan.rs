//! One look at every network namespace: its ephemeral range, which of those ports are held (and
//! by whom), and its listeners with their holders. sock_diag and the `net.ipv4` sysctls answer
//! for the caller's own namespace only, so a short-lived thread enters each other namespace
//! (setns) to dump its sockets and read its range — and does nothing else there: attribution
//! (/proc, the user database) happens back in the caller's namespace.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    path::Path,
};

use crate::{
    attribution::{Attributor, ports::EphemeralRange, procfs, raw_scan_of},
    facts::{Origin, PortFacts, Transport},
    judgement::policy::is_listener,
    kernel::sockets::{self, KernelSocket},
};

/// Namespaces looked into per round at most: a user can make many (`unshare -n`). Beyond it,
/// each round takes the next ones in turn, so none stays hidden behind decoys for long.
pub const MAX_NAMESPACES: usize = 64;
/// Holders of ephemeral ports named per namespace.
pub const TOP_HOLDERS: usize = 3;

/// A set of ports: 8 KiB, whatever a namespace holds.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64]>,
    len: usize,
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            bits: vec![0; 1024].into_boxed_slice(),
            len: 0,
        }
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortSet({} ports)", self.len)
    }
}

impl PortSet {
    pub fn insert(&mut self, port: u16) {
        let (w, b) = (usize::from(port) / 64, port % 64);
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    pub fn remove(&mut self, port: u16) {
        let (w, b) = (usize::from(port) / 64, port % 64);
        if self.bits[w] & (1 << b) != 0 {
            self.bits[w] &= !(1 << b);
            self.len -= 1;
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ports in `self` that `before` lacks.
    pub fn new_since(&self, before: &PortSet) -> usize {
        self.bits
            .iter()
            .zip(before.bits.iter())
            .map(|(a, b)| (a & !b).count_ones() as usize)
            .sum()
    }

    /// The ports the kernel may pick from: the range minus its reserved ports, in time linear in
    /// the range and the reserved list (a namespace's root may reserve thousands).
    pub fn ephemeral(range: &EphemeralRange) -> Self {
        let mut s = PortSet::default();
        for p in range.low..=range.high {
            s.insert(p);
        }
        for &(lo, hi) in &range.reserved {
            for p in lo..=hi {
                s.remove(p);
            }
        }
        s
    }
}

/// What one namespace showed.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub netns: u32,
    /// This process's own (the host's, when run from it).
    pub own: bool,
    pub range: EphemeralRange,
    /// Ephemeral-range ports held by a socket, TIME_WAIT ones included.
    pub in_use: PortSet,
    /// Of those, held only by TIME_WAIT sockets.
    pub time_wait: usize,
    /// The processes holding the most of them: (ports, facts of one of its sockets).
    pub holders: Vec<(usize, PortFacts)>,
    /// Sockets holding such ports that no process this /proc shows holds (kernel sockets,
    /// TIME_WAIT, other PID namespaces).
    pub unowned: usize,
    pub listeners: Vec<PortFacts>,
}

#[derive(Debug, Default)]
pub struct Round {
    pub namespaces: Vec<Namespace>,
    /// Every namespace that exists, scanned this round or not: what is known of one not
    /// scanned is kept until its turn comes again.
    pub present: HashSet<u32>,
    /// Namespaces not scanned this round (over `MAX_NAMESPACES`).
    pub skipped: usize,
    /// Namespaces that could not be entered or read, with why.
    pub failed: Vec<(u32, String)>,
}

/// Every network namespace some thread is in: its inode and the `ns/net` path to enter it by (a
/// thread can have entered a namespace its process's main thread is not in).
pub fn namespaces(proc_root: &Path) -> BTreeMap<u32, std::path::PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return out;
    };
    for e in dir.flatten() {
        if e.file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let main = e.path().join("ns/net");
        let main_ns = sockets::netns_of(&main);
        if let Some(ns) = main_ns {
            out.entry(ns).or_insert(main);
        }
        for t in std::fs::read_dir(e.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let link = t.path().join("ns/net");
            if let Some(ns) = sockets::netns_of(&link).filter(|ns| Some(*ns) != main_ns) {
                out.entry(ns).or_insert(link);
            }
        }
    }
    out
}

/// Scans the caller's namespace and up to `MAX_NAMESPACES - 1` others, starting at the
/// `round`-th window of them.
pub fn round(proc_root: &Path, round_number: usize) -> Round {
    let own = sockets::own_netns();
    let owners = procfs::socket_owners(proc_root);
    let all = namespaces(proc_root);
    let others: Vec<(&u32, &std::path::PathBuf)> =
        all.iter().filter(|(ns, _)| Some(**ns) != own).collect();
    let per_round = MAX_NAMESPACES - 1;
    let start = if others.len() > per_round {
        (round_number * per_round) % others.len()
    } else {
        0
    };
    let chosen = others
        .iter()
        .cycle()
        .skip(start)
        .take(others.len().min(per_round));
    let mut out = Round {
        skipped: others.len().saturating_sub(per_round),
        present: all.keys().copied().chain(own).collect(),
        ..Round::default()
    };
    if let Some(ns) = own {
        let range = EphemeralRange::read();
        let dumped = sockets::dump_with_time_wait().unwrap_or_default();
        out.namespaces.push(look(ns, true, range, dumped, &owners));
    }
    for (ns, path) in chosen {
        match enter_and_dump(**ns, path) {
            Ok((range, dumped)) => out
                .namespaces
                .push(look(**ns, false, range, dumped, &owners)),
            Err(e) => out.failed.push((**ns, e)),
        }
    }
    out
}

/// In a thread of its own that enters the namespace: its range and its sockets.
fn enter_and_dump(netns: u32, path: &Path) -> Result<(EphemeralRange, Vec<KernelSocket>), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering network namespace {netns}: {e}"))?;
            // The path was a name for a namespace that may have gone since; the thread is in
            // whatever it named at open time.
            if sockets::own_netns() != Some(netns) {
                return Err(format!(
                    "network namespace {netns} changed while entering it"
                ));
            }
            let dumped = sockets::dump_with_time_wait()
                .map_err(|e| format!("network namespace {netns}: {e}"))?;
            Ok((EphemeralRange::read(), dumped))
        })
        .join()
        .unwrap_or_else(|_| Err(format!("scanning network namespace {netns} failed")))
    })
}

/// Sorts one namespace's sockets into its range figures, holders and listeners.
fn look(
    netns: u32,
    own: bool,
    range: EphemeralRange,
    all: Vec<KernelSocket>,
    owners: &HashMap<u32, u32>,
) -> Namespace {
    let ephemeral = PortSet::ephemeral(&range);
    let mut in_use = PortSet::default();
    let mut live_ports = PortSet::default();
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    let mut unowned = 0;
    for s in &all {
        let port = s.local.port();
        if !ephemeral.contains(port) || s.is_tcp_listener() {
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
    // One socket of each top holder stands for it; listeners are every TCP listener and every
    // unconnected UDP socket outside the range (the scan's rule, docs/policy.md).
    let mut sample: HashMap<u32, u32> = HashMap::new();
    for s in &live {
        if let Some(pid) = owners.get(&s.inode).filter(|p| wanted_pids.contains(p))
            && ephemeral.contains(s.local.port())
        {
            sample.entry(*pid).or_insert(s.inode);
        }
    }
    let samples: HashSet<u32> = sample.values().copied().collect();
    let is_candidate = |s: &KernelSocket| {
        s.is_tcp_listener()
            || (s.transport == Transport::Udp
                && s.peer.is_none()
                && !ephemeral.contains(s.local.port()))
            || samples.contains(&s.inode)
    };
    let live: Vec<KernelSocket> = live.into_iter().filter(is_candidate).collect();
    // Only the holders of these sockets: not the whole host's table per namespace.
    let owners_here: HashMap<u32, u32> = live
        .iter()
        .filter_map(|s| owners.get(&s.inode).map(|p| (s.inode, *p)))
        .collect();
    let raw = raw_scan_of(live, owners_here, Some(netns));
    let scan = Attributor::oneshot().attribute(raw, Origin::Snapshot, |_| true);
    let mut listeners = Vec::new();
    let mut facts_of: HashMap<u32, PortFacts> = HashMap::new();
    for mut f in scan.facts {
        // The port's class as this namespace's range has it, not the caller's.
        let port = f.event.local.port();
        f.port = crate::facts::PortInfo {
            class: crate::attribution::ports::class(port),
            ephemeral: ephemeral.contains(port),
            requested: None,
        };
        if is_listener(&f) {
            listeners.push(f);
        } else if wanted_pids.contains(&f.process.pid) {
            facts_of.entry(f.process.pid).or_insert(f);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_sets_count_and_compare() {
        let mut a = PortSet::default();
        a.insert(1);
        a.insert(1);
        a.insert(65535);
        assert_eq!(a.len(), 2);
        let mut b = a.clone();
        b.insert(40000);
        b.remove(1);
        assert_eq!((b.len(), b.new_since(&a)), (2, 1));
        assert!(b.contains(65535) && !b.contains(1));
        let r = EphemeralRange {
            low: 40000,
            high: 40099,
            reserved: vec![(40010, 40019), (40050, 40050)],
        };
        let e = PortSet::ephemeral(&r);
        assert_eq!(e.len(), 89);
        assert!(e.contains(40000) && !e.contains(40015) && !e.contains(40050));
    }
}
