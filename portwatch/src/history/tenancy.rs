//! The live port table: which sockets hold which local ports right now, built from bind, listen,
//! connect and close events, and written to the store as intervals (opened, upgraded to
//! listening, closed).
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    facts::{Endpoint, Kind, PortFacts, ProcessFacts, SocketRole, Transport},
    hashing::{HashMap, Lru},
    history::store::{Interval, StoreHandle},
};

/// A socket's identity as the events show it: the peer tells a connected socket from the
/// listener it was accepted on, which shares its local address and port; the cookie (0 when the
/// event had none) tells apart sockets that share an address (SO_REUSEPORT, SO_REUSEADDR on UDP),
/// so that one's release never ends another's holding.
/// Plain values, no strings: built for every event, so it must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    netns: Option<u32>,
    transport: Transport,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    cookie: u64,
}

impl std::hash::Hash for Key {
    /// Three words instead of every field's parts (this is hashed several times per event):
    /// the cookie, which the kernel makes unique per socket, and the ports, namespace and the
    /// address's last bytes for keys without one. Equal keys hash equally, as `Eq` needs.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let tail = match self.local.ip() {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            IpAddr::V6(a) => a.to_bits() as u64,
        };
        let peer_port = self.peer.map_or(0, |p| u64::from(p.port()) + 1);
        h.write_u64(self.cookie);
        h.write_u64(
            u64::from(self.local.port())
                | peer_port << 16
                | u64::from(self.netns.unwrap_or(0)) << 32,
        );
        h.write_u64(tail ^ self.transport as u64);
    }
}

impl Key {
    /// The same socket as the one its event had no cookie for (a fentry or kprobe bind on a
    /// socket that got its cookie later).
    fn without_cookie(self) -> Key {
        Key { cookie: 0, ..self }
    }
}

/// Beyond this many open sockets (releases lost, or a user holding that many), new ones are not
/// followed to their end.
const MAX_OPEN: usize = 200_000;

/// An open interval and whether the store already has it.
struct Open {
    interval: Interval,
    stored: bool,
}

/// Intervals still open after this long are written (so `who` shows them as still open); shorter
/// ones are written once, at their close — most sockets in a storm never cost a second write.
const STORE_OPEN_AFTER_NS: i64 = 1_000_000_000;

pub struct Tenancy {
    open: HashMap<Key, Open>,
    max_open: usize,
    pub store: StoreHandle,
    forgotten: u64,
    /// Intervals closed by a scan because their release event was lost.
    swept: u64,
    /// Whether intervals that close are kept in `closed` for the output (`[log] holdings`).
    keep_closed: bool,
    closed: Vec<Interval>,
    /// The facts kept with open intervals whose command lines were cut, by the facts they were
    /// cut from: one copy per set of facts, so that the store writes one process row for it,
    /// not one per socket. The `Weak` keeps the source's allocation, so its address (the key)
    /// is not reused while remembered, and frees its strings once nothing else holds them.
    cut: Lru<usize, (std::sync::Weak<ProcessFacts>, Arc<ProcessFacts>)>,
    cut_evictions: u64,
}

/// Sets of facts whose cut copy is remembered (`Tenancy::cut`).
const CUT_REMEMBERED: usize = 1024;

/// The history's figures, for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCounters {
    pub open_sockets: usize,
    /// Intervals the store writer could not take (it fell behind).
    pub writes_dropped: u64,
    /// Sockets not followed to their end because the live table was full (their start is
    /// written, ended at once with the note `NOT_FOLLOWED`).
    pub forgotten: u64,
    /// Intervals closed by a scan because their release event was lost.
    pub swept: u64,
    /// Intervals the store writer could not commit (disk full, a broken store).
    #[serde(default)]
    pub commit_failed: u64,
    /// Times the store writer could not delete the rows beyond its bound (tried again).
    #[serde(default)]
    pub bound_failed: u64,
}

impl Tenancy {
    pub fn new(store: StoreHandle) -> Self {
        Self::with_max(store, MAX_OPEN)
    }

    /// A table that follows at most `max_open` open intervals.
    pub fn with_max(store: StoreHandle, max_open: usize) -> Self {
        Self {
            max_open,
            open: HashMap::default(),
            store,
            forgotten: 0,
            swept: 0,
            keep_closed: false,
            closed: Vec::new(),
            cut: crate::hashing::lru(CUT_REMEMBERED),
            cut_evictions: 0,
        }
    }

    /// The cut copies remembered (`cut`).
    pub fn cut_figures(&self) -> crate::attribution::CacheFigures {
        crate::attribution::CacheFigures {
            size: self.cut.len(),
            max: CUT_REMEMBERED,
            evictions: self.cut_evictions,
        }
    }

    /// Keeps every interval that closes from now on for `take_closed` (`holding` lines).
    pub fn keep_closed(mut self, keep: bool) -> Self {
        self.keep_closed = keep;
        self
    }

    /// The intervals closed since the last call, oldest first.
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, Interval> {
        self.closed.drain(..)
    }

    /// An interval has ended: to the store, and to the output when it asked.
    fn ended(&mut self, i: Interval) {
        if self.keep_closed {
            self.closed.push(i.clone());
        }
        self.store.put(i);
    }

    /// `p` as the history keeps it: its command line cut (`cut_process`), one copy per set of
    /// facts.
    fn kept_process(&mut self, p: &Arc<ProcessFacts>) -> Arc<ProcessFacts> {
        let key = Arc::as_ptr(p) as usize;
        if let Some((_, cut)) = self.cut.get(&key) {
            return cut.clone();
        }
        let Some(cut) = cut_process(p) else {
            return p.clone();
        };
        if self
            .cut
            .push(key, (Arc::downgrade(p), cut.clone()))
            .is_some_and(|(old, _)| old != key)
        {
            self.cut_evictions += 1;
        }
        cut
    }

    pub fn counters(&self) -> HistoryCounters {
        HistoryCounters {
            open_sockets: self.open.len(),
            writes_dropped: self.store.dropped,
            forgotten: self.forgotten,
            swept: self.swept,
            commit_failed: self.store.commit_failed(),
            bound_failed: self.store.bound_failed(),
        }
    }

    /// Applies one successful port event, and the failed end of a handshake.
    pub fn observe(&mut self, f: &PortFacts) {
        let ev = &f.event;
        let wall_ns = f.wall_ns;
        let key = |peer: Option<SocketAddr>| Key {
            netns: ev.netns(),
            transport: ev.transport,
            local: ev.local,
            peer,
            cookie: ev.cookie,
        };
        let peer = ev.peer;
        if ev.kind == Kind::ConnectResult {
            // The kernel gave the port back when the handshake failed: the socket, still open,
            // holds none.
            if ev.errno.is_some() || ev.aborted {
                self.close(&key(peer), wall_ns, ev.cookie);
            }
            return;
        }
        if ev.errno.is_some() {
            return;
        }
        match ev.kind {
            Kind::Bind => self.open_interval(key(None), SocketRole::Bound, f),
            Kind::Listen => match self.find(&key(None)) {
                Some(k) => {
                    let k = self.adopt_cookie(k, ev.cookie);
                    if let Some(o) = self.open.get_mut(&k) {
                        o.interval.role = SocketRole::Listening;
                        if o.stored {
                            let i = o.interval.clone();
                            self.store.put(i);
                        }
                    }
                }
                None => self.open_interval(key(None), SocketRole::Listening, f),
            },
            Kind::Connect => self.open_interval(key(peer), SocketRole::Connected, f),
            Kind::ConnectResult => {}
            Kind::Close => {
                self.close(&key(peer), wall_ns, ev.cookie);
                // bind() then connect(): the bound interval ends with the connected one.
                if peer.is_some()
                    && let Some(k) = self.find(&key(None))
                    && self.open.get(&k).is_some_and(|o| {
                        o.interval.role == SocketRole::Bound && o.interval.process.pid == ev.pid
                    })
                {
                    self.close(&k, wall_ns, ev.cookie);
                }
            }
        }
    }

    /// The open interval of the socket `key` names: its own, or one opened by an event without
    /// the cookie.
    fn find(&self, key: &Key) -> Option<Key> {
        if self.open.contains_key(key) {
            return Some(*key);
        }
        let bare = key.without_cookie();
        (key.cookie != 0 && self.open.contains_key(&bare)).then_some(bare)
    }

    /// Files an interval opened without a cookie under `cookie`, now that an event gave it.
    fn adopt_cookie(&mut self, k: Key, cookie: u64) -> Key {
        if k.cookie != 0 || cookie == 0 {
            return k;
        }
        let Some(mut o) = self.open.remove(&k) else {
            return k;
        };
        let new = Key { cookie, ..k };
        o.interval.cookie = cookie;
        self.open.insert(new, o);
        new
    }

    /// `cookie`: the closing event's, for an interval opened by an event that had none (a
    /// kprobe's bind on a socket that got its cookie later).
    fn close(&mut self, key: &Key, wall_ns: i64, cookie: u64) {
        let Some(key) = self.find(key) else { return };
        if let Some(mut o) = self.open.remove(&key) {
            // Never before it opened (a snapshot's time can be later than a queued event's).
            o.interval.closed_ns = Some(wall_ns.max(o.interval.opened_ns));
            if o.interval.cookie == 0 {
                o.interval.cookie = cookie;
            }
            self.ended(o.interval);
        }
    }

    /// After ring-buffer loss some releases were never seen: closes the intervals opened before
    /// `scan` began whose socket it no longer lists. Returns how many it closed.
    pub fn sweep_scan(&mut self, scan: &crate::attribution::RawScan, now_ns: i64) -> usize {
        let mut present = HashSet::new();
        let mut cookies = HashSet::new();
        for s in &scan.sockets {
            present.insert((s.transport, s.local, s.peer));
            present.insert((s.transport, s.local, None));
            cookies.insert(s.cookie);
        }
        self.sweep(scan.window(), &present, &cookies, now_ns)
    }

    /// Closes the intervals in the scan's network namespace whose socket a fresh scan no longer
    /// lists: by its cookie (`cookies`) when the interval has one, else by its address
    /// (`present`: transport, local, peer — and the same with no peer). Returns how many it
    /// closed.
    pub fn sweep(
        &mut self,
        scan: crate::attribution::ScanWindow,
        present: &HashSet<(Transport, SocketAddr, Option<SocketAddr>)>,
        cookies: &HashSet<u64>,
        now_ns: i64,
    ) -> usize {
        let gone = scan.gone(
            self.open
                .iter()
                .map(|(k, o)| (*k, k.netns, o.interval.opened_ns)),
            |k| {
                if k.cookie != 0 {
                    cookies.contains(&k.cookie)
                } else {
                    present.contains(&(k.transport, k.local, k.peer))
                }
            },
        );
        for k in &gone {
            if let Some(mut o) = self.open.remove(k) {
                o.interval.closed_ns = Some(now_ns);
                o.interval.close_note = Some(
                    "its release event was lost; closed when a scan no longer found the socket"
                        .into(),
                );
                self.ended(o.interval);
            }
        }
        // A storm's orphans can have grown the table far beyond what is open now.
        if self.open.capacity() > 4 * self.open.len().max(1024) {
            self.open.shrink_to_fit();
        }
        self.swept += gone.len() as u64;
        gone.len()
    }

    /// Writes intervals open longer than a second that the store does not have yet (called every
    /// second), or all of them (at shutdown, so `who` knows they were open). When the row bound
    /// is due, asks the writer to keep it, sparing the stored intervals still open.
    pub fn store_open(&mut self, now_ns: i64, all: bool) {
        let bound = self.store.bound_due();
        let mut live = Vec::new();
        for o in self.open.values_mut() {
            if !o.stored && (all || o.interval.opened_ns <= now_ns - STORE_OPEN_AFTER_NS) {
                o.stored = true;
                self.store.put(o.interval.clone());
            }
            if let Some(below) = bound
                && o.stored
                && o.interval.id <= below
            {
                live.push(o.interval.id);
            }
        }
        if let Some(below) = bound {
            self.store.bound(below, live);
        }
    }

    fn open_interval(&mut self, key: Key, role: SocketRole, f: &PortFacts) {
        let wall_ns = f.wall_ns;
        // The same socket reported again (by the start-up snapshot and by an event queued while
        // it ran, or a UDP socket connecting to the same peer again): one holding, from the
        // earlier of the two.
        if key.cookie != 0
            && let Some(o) = self.open.get_mut(&key)
        {
            if role == SocketRole::Listening {
                o.interval.role = role;
            }
            if wall_ns < o.interval.opened_ns {
                o.interval.opened_ns = wall_ns;
            }
            if o.stored {
                let i = o.interval.clone();
                self.store.put(i);
            }
            return;
        }
        let full = self.open.len() >= self.max_open && !self.open.contains_key(&key);
        let id = self.store.next_id;
        self.store.next_id += 1;
        let i = Interval {
            id,
            netns: key.netns,
            transport: key.transport,
            local: key.local.into(),
            role,
            peer: key.peer.map(Endpoint::from),
            process: self.kept_process(&f.process),
            opened_ns: wall_ns,
            closed_ns: None,
            close_note: None,
            cookie: f.event.cookie,
        };
        if full {
            // Not followed: its start and holder are written now, its end is unknown. The
            // sockets the table already follows (a host's listeners among them) stay: a user
            // who fills the table only loses the record of the ends of their own new sockets.
            self.forgotten += 1;
            let mut i = i;
            i.closed_ns = Some(wall_ns);
            i.close_note = Some(NOT_FOLLOWED.into());
            self.ended(i);
            return;
        }
        let new = Open {
            interval: i,
            stored: false,
        };
        let old = self.open.remove(&key);
        self.open.insert(key, new);
        if let Some(mut old) = old {
            // The same address again without a release in between (a lost event): the old one
            // ended no later than now.
            old.interval.closed_ns = Some(wall_ns.max(old.interval.opened_ns));
            old.interval.close_note = Some("superseded; its release was not seen".into());
            self.ended(old.interval);
        }
    }
}

/// The close note of a socket the live table was too full to follow.
pub const NOT_FOLLOWED: &str = "not followed: the live table was full; end unknown";

/// Command lines kept with open intervals are cut here: the table holds one per socket, and a
/// user can hold many sockets with megabyte command lines (the event line has the whole 8 KiB).
const KEPT_CMDLINE_BYTES: usize = 1024;

/// What the history keeps of the process: its holder without the bulk. Facts whose command line
/// fits are shared as they are (no copy per socket).
fn cut_process(p: &Arc<ProcessFacts>) -> Option<Arc<ProcessFacts>> {
    let whole: usize = p
        .command_line
        .as_ref()
        .map_or(0, |a| a.iter().map(String::len).sum());
    if whole <= KEPT_CMDLINE_BYTES {
        return None;
    }
    let mut budget = KEPT_CMDLINE_BYTES;
    let command_line = p.command_line.as_ref().map(|argv| {
        argv.iter()
            .map_while(|a| {
                let take = a.len().min(budget);
                (budget > 0).then(|| {
                    budget -= take;
                    let mut cut = take;
                    while !a.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    a[..cut].to_string()
                })
            })
            .collect()
    });
    let kept: usize = command_line
        .as_ref()
        .map_or(0, |a: &Vec<String>| a.iter().map(String::len).sum());
    Some(Arc::new(ProcessFacts {
        command_line,
        command_line_truncated: p.command_line_truncated || kept < whole,
        ..ProcessFacts::clone(p)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::fixture;

    fn bind(port: u16) -> crate::facts::KernelEvent {
        fixture::event(Kind::Bind, Transport::Udp, &format!("127.0.0.1:{port}"))
    }

    /// A table of at most `max` open sockets over a fresh store.
    fn table(max: usize) -> (tempfile::TempDir, Tenancy, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let retention = crate::history::store::Retention {
            max_age: std::time::Duration::from_secs(3600),
            max_rows: 100,
        };
        let (store, path) = crate::history::store::start(dir.path(), retention, 0).unwrap();
        (dir, Tenancy::with_max(store, max), path)
    }

    #[test]
    fn a_sweep_closes_what_a_scan_no_longer_finds_and_keeps_the_rest() {
        let (_dir, mut t, path) = table(MAX_OPEN);
        // Real times: the writer prunes by age against the clock.
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        for port in [1000, 1001, 1002] {
            t.observe(&fixture::facts(bind(port), now));
        }
        let mut other_ns = bind(1003);
        other_ns.netns = 8;
        t.observe(&fixture::facts(other_ns, now));
        let still: HashSet<_> = [(Transport::Udp, "127.0.0.1:1001".parse().unwrap(), None)].into();
        let window = crate::attribution::ScanWindow {
            netns: Some(7),
            started_ns: now + 1,
        };
        assert_eq!(t.sweep(window, &still, &HashSet::new(), now + 9), 2);
        // 1001 (still there) and 1003 (another namespace: the scan cannot see it) stay open.
        let c = t.counters();
        assert_eq!((c.open_sockets, c.swept), (2, 2));
        t.store.finish();
        let c = crate::history::store::open_ro(&path).unwrap();
        let closed = crate::history::store::holdings(&c, (1000, 1000), None, 0, i64::MAX, Some, 10)
            .unwrap()
            .0;
        assert_eq!(closed[0].closed_ns, Some(now + 9));
        assert!(closed[0].close_note.as_deref().unwrap().contains("lost"));
    }

    /// `kind` on 127.0.0.1:`port` by socket `cookie`.
    fn on(kind: Kind, port: u16, cookie: u64) -> crate::facts::KernelEvent {
        let mut ev = bind(port);
        ev.kind = kind;
        ev.cookie = cookie;
        ev
    }

    #[test]
    fn one_socket_reported_twice_is_one_holding_from_its_first_report() {
        let (_dir, t, _) = table(MAX_OPEN);
        let mut t = t.keep_closed(true);
        // The snapshot saw it at 20; the kernel's bind, queued meanwhile, says 10.
        t.observe(&fixture::facts(on(Kind::Bind, 3000, 77), 20));
        t.observe(&fixture::facts(on(Kind::Bind, 3000, 77), 10));
        assert_eq!(t.counters().open_sockets, 1);
        assert_eq!(
            t.take_closed().count(),
            0,
            "no holding for a socket still open"
        );
        t.observe(&fixture::facts(on(Kind::Close, 3000, 77), 30));
        let closed: Vec<_> = t.take_closed().collect();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].opened_ns, closed[0].closed_ns), (10, Some(30)));
        assert_eq!(closed[0].cookie, 77);
        t.store.finish();
    }

    #[test]
    fn sockets_sharing_an_address_end_their_own_holdings() {
        let (_dir, t, _) = table(MAX_OPEN);
        let mut t = t.keep_closed(true);
        // SO_REUSEPORT: two sockets on one address; the second's release ends only its own.
        t.observe(&fixture::facts(on(Kind::Bind, 3001, 5), 10));
        t.observe(&fixture::facts(on(Kind::Bind, 3001, 6), 11));
        t.observe(&fixture::facts(on(Kind::Close, 3001, 6), 12));
        let closed: Vec<_> = t.take_closed().collect();
        assert_eq!(closed.iter().map(|i| i.cookie).collect::<Vec<_>>(), [6]);
        assert_eq!(t.counters().open_sockets, 1);
        // A bind seen without a cookie is closed by its release, which has one.
        t.observe(&fixture::facts(on(Kind::Bind, 3002, 0), 13));
        t.observe(&fixture::facts(on(Kind::Close, 3002, 9), 14));
        let closed: Vec<_> = t.take_closed().collect();
        assert_eq!((closed.len(), closed[0].cookie), (1, 9));
        t.store.finish();
    }

    #[test]
    fn a_full_table_follows_no_new_socket_and_keeps_the_ones_it_has() {
        let (_dir, t, path) = table(3);
        let mut t = t.keep_closed(true);
        // Recent times: the writer's first prune deletes what is older than the retention.
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        for (i, port) in (2000..2005).enumerate() {
            t.observe(&fixture::facts(bind(port), now + i as i64));
        }
        let c = t.counters();
        assert_eq!((c.open_sockets, c.forgotten), (3, 2));
        let mut kept: Vec<u16> = t.open.keys().map(|k| k.local.port()).collect();
        kept.sort();
        assert_eq!(kept, [2000, 2001, 2002]);
        // The two it could not follow are written with their start, ended at once, end unknown.
        let closed: Vec<_> = t.take_closed().collect();
        assert_eq!(
            closed
                .iter()
                .map(|i| (i.local.port, i.closed_ns, i.close_note.as_deref()))
                .collect::<Vec<_>>(),
            [
                (2003, Some(now + 3), Some(NOT_FOLLOWED)),
                (2004, Some(now + 4), Some(NOT_FOLLOWED))
            ]
        );
        // A release still closes a socket it follows; one it does not follow changes nothing.
        for port in [2002, 2004] {
            let mut close = bind(port);
            close.kind = Kind::Close;
            t.observe(&fixture::facts(close, now + 9));
        }
        assert_eq!(t.counters().open_sockets, 2);
        t.store.finish();
        let c = crate::history::store::open_ro(&path).unwrap();
        let (rows, _) =
            crate::history::store::holdings(&c, (2004, 2004), None, 0, i64::MAX, Some, 10).unwrap();
        assert_eq!(
            (rows.len(), rows[0].close_note.as_deref()),
            (1, Some(NOT_FOLLOWED))
        );
    }

    #[test]
    fn the_row_bound_spares_the_stored_sockets_still_open() {
        let (_dir, mut t, path) = table(MAX_OPEN);
        t.store.set_max_rows(2);
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        // A listener stored open (all = true), then closed connections past the bound.
        t.observe(&fixture::facts(bind(80), now));
        t.store_open(now, true);
        for (i, port) in (40000..40000 + crate::history::store::SEGMENT_IDS as u16 + 5).enumerate()
        {
            let at = now + 1 + i as i64;
            t.observe(&fixture::facts(bind(port), at));
            let mut close = bind(port);
            close.kind = Kind::Close;
            t.observe(&fixture::facts(close, at));
            // Faster than the writer: let it catch up, so that no interval is dropped.
            if i % 1024 == 0 {
                t.store.flush();
                while t.store.queue().0 > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        assert_eq!(t.counters().writes_dropped, 0);
        t.store_open(now, false);
        t.store.finish();
        let c = crate::history::store::open_ro(&path).unwrap();
        let ids: Vec<(i64, u16)> = c
            .prepare("SELECT id, port FROM intervals ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // The listener (id 1) and the newest two.
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(ids[0].1, 80);
    }

    #[test]
    fn a_long_command_line_is_cut_once_per_set_of_facts() {
        let (_dir, mut t, _) = table(MAX_OPEN);
        let process = Arc::new(ProcessFacts {
            pid: 7,
            command_line: Some(vec!["java".into(), "x".repeat(5000)]),
            ..ProcessFacts::default()
        });
        let socket = |port: u16| PortFacts {
            process: process.clone(),
            ..fixture::facts(bind(port), 10)
        };
        t.observe(&socket(2200));
        t.observe(&socket(2201));
        let kept: Vec<&Arc<ProcessFacts>> = t.open.values().map(|o| &o.interval.process).collect();
        assert_eq!(kept.len(), 2);
        assert!(Arc::ptr_eq(kept[0], kept[1]), "one copy for both sockets");
        let cut = kept[0];
        assert!(cut.command_line_truncated);
        let bytes: usize = cut.command_line.iter().flatten().map(String::len).sum();
        assert_eq!(bytes, KEPT_CMDLINE_BYTES);
        assert_eq!(t.cut_figures().size, 1);
        // Facts that fit are shared as they are, and not remembered.
        let short = fixture::facts(bind(2202), 10);
        t.observe(&short);
        assert_eq!(t.cut_figures().size, 1);
        t.store.finish();
    }
}
