//! Alerts: the policy applied to listeners as they appear (events), as they are found (start-up
//! snapshot, periodic reconciliation) and as they go; with dedup that survives restarts, a rate
//! limit, and summaries of what was counted instead of alerted.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use lru::LruCache;

use crate::attribution::ScanWindow;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    clock,
    facts::{Alert, AlertBody, AlertKind, Origin, Severity, Subject, Transport},
    judgement::policy::{self, Listener, Policy, Verdict},
};

pub const STATE_FILE: &str = "alerts.json";
/// 2: dedup keys carry the user and network namespace.
const STATE_VERSION: u32 = 2;
const NS: i64 = 1_000_000_000;

/// Alerts remembered for dedup (in memory and in the state file), and of them per user; beyond
/// either the one seen least recently (of that user, or of the user with the most) is forgotten,
/// counted. Any user can make new alert keys by binding named UDP ports: their flood forgets
/// their own alerts, not anyone else's.
pub const MAX_REMEMBERED: usize = 4096;
pub const MAX_PER_USER: usize = 1024;
/// Listeners known from events and scans; beyond it the one seen least recently is forgotten
/// (counted), and the next reconciliation scan finds it again.
pub const MAX_LISTENERS: usize = 16_384;
/// Users with their own rate-limit window; beyond it windows that ended are dropped first.
const MAX_RATE_BUCKETS: usize = 4096;
/// Command lines kept with remembered alerts and listeners are cut here (the line written when
/// the alert was raised has the whole of it); other texts a process chose (executable, cgroup,
/// the rule that names them) at `KEPT_TEXT_BYTES`.
const KEPT_CMDLINE_BYTES: usize = 1024;
const KEPT_TEXT_BYTES: usize = 1024;
/// The state file is written at most this often (and at shutdown), from its own thread.
const SAVE_EVERY_NS: i64 = 10 * NS;

impl Listener {
    /// How messages name the holder.
    fn holder(&self) -> String {
        let p = &self.facts.process;
        match (&p.executable, p.comm.as_str()) {
            (Some(e), _) => e.clone(),
            (None, "") => "no process (a kernel socket, or its holder is out of sight)".into(),
            (None, c) => format!("comm {c:?}"),
        }
    }

    fn key(&self) -> SockKey {
        (
            self.facts.event.netns(),
            self.transport(),
            self.address(),
            self.port(),
        )
    }

    /// Dedup identity: (executable, transport, port, address scope, user, network namespace):
    /// one user's listener never stands for another's.
    fn dedup_key(&self, kind: AlertKind) -> String {
        let p = &self.facts.process;
        format!(
            "{}|{}|{}|{}|{}{}",
            kind.as_str(),
            p.executable.as_deref().unwrap_or(&p.comm),
            self.transport(),
            self.port(),
            policy::scope(self.address()),
            user_scope(&Subject::of(&self.facts)),
        )
    }
}

type SockKey = (Option<u32>, Transport, IpAddr, u16);

/// What reconciliation needs of a scan besides its listeners.
#[derive(Debug, Default)]
pub struct ScanSummary {
    /// The namespace the scan saw and when it began.
    pub window: ScanWindow,
    /// Its unconnected sockets: (transport, local).
    pub present: std::collections::HashSet<(Transport, SocketAddr)>,
    /// Sockets holding ephemeral ports, per (transport, destination).
    pub per_destination: HashMap<(Transport, SocketAddr), u64>,
    /// Ports in the ephemeral range.
    pub ephemeral_size: u64,
}

/// The part of a dedup key that keeps users and network namespaces apart.
fn user_scope(s: &Subject) -> String {
    format!(
        "|uid {}|netns {}",
        s.process.as_ref().map_or(0, |p| p.user.id),
        s.network.as_ref().and_then(|n| n.netns).unwrap_or(0)
    )
}

/// Version 1 keys lacked the user and network namespace (`user_scope`): they are given theirs
/// from the entry's own subject, so an upgrade neither alerts again nor keeps stale keys.
fn migrate_v1(entries: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    entries
        .into_iter()
        .map(|(k, e)| {
            let per_user = matches!(
                e.kind,
                AlertKind::UnexpectedListener
                    | AlertKind::WildcardListener
                    | AlertKind::EphemeralPortListener
            ) || k.starts_with("ephemeral_port_exhaustion|connect|");
            let k = if per_user {
                format!("{k}{}", user_scope(&e.subject))
            } else {
                k
            };
            (k, e)
        })
        .collect()
}

fn cap(n: usize) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN)
}

/// One deduplicated alert, as kept in `alerts.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    kind: AlertKind,
    severity: Severity,
    rule: String,
    first_seen: String,
    last_seen_ns: i64,
    count: u64,
    /// `count` as of the last line written about it.
    reported: u64,
    #[serde(default)]
    detail: Option<Value>,
    subject: Subject,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertCounters {
    /// Alert lines written when first seen.
    pub raised: u64,
    /// Occurrences counted into an existing alert instead of alerting again.
    pub repeats: u64,
    /// Alerts held back by the rate limit (summarised later).
    pub rate_limited: u64,
    pub summaries: u64,
    pub reconciliations: u64,
    pub reconcile_failed: u64,
    pub state_write_failed: u64,
    /// Remembered alerts forgotten to stay within `MAX_REMEMBERED`.
    #[serde(default)]
    pub forgotten: u64,
    /// Known listeners forgotten to stay within `MAX_LISTENERS`.
    #[serde(default)]
    pub listeners_forgotten: u64,
}

pub struct AlertEngine {
    pub policy: Policy,
    entries: Remembered,
    /// Per user: held-back alerts (never written) that were forgotten to stay within the bounds,
    /// reported by the next summary.
    forgotten_unreported: HashMap<Option<u32>, u64>,
    dirty: bool,
    /// Listeners known from events and scans, least recently seen first.
    listeners: LruCache<SockKey, Listener>,
    /// Per user (None: alerts about no process): the start of its minute and alerts written in it.
    rate: HashMap<Option<u32>, (i64, u64)>,
    last_save_ns: i64,
    writer: StateWriter,
    pub counters: AlertCounters,
}

/// A kind's dedup key, severity and rule text, before dedup decides whether it is written.
struct Finding {
    key: String,
    kind: AlertKind,
    severity: Severity,
    rule: String,
    detail: Option<Value>,
    subject: Subject,
}

impl AlertEngine {
    /// Loads the dedup state from `state_dir`; an unreadable state file is moved aside (logged)
    /// and alerting starts afresh rather than not at all.
    pub fn new(policy: Policy, state_dir: &Path) -> Self {
        let state_path = state_dir.join(STATE_FILE);
        let loaded = match fs::read(&state_path) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(s) if s.version == STATE_VERSION => s.entries,
                Ok(s) if s.version == 1 => migrate_v1(s.entries),
                Ok(s) => {
                    tracing::warn!(path = %state_path.display(), version = s.version, "alert state of an unknown version ignored");
                    BTreeMap::new()
                }
                Err(e) => {
                    let aside = state_path.with_extension("json.corrupt");
                    let _ = fs::rename(&state_path, &aside);
                    tracing::error!(path = %state_path.display(), moved_to = %aside.display(), error = %e,
                        "alert state unreadable; starting with no remembered alerts");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::error!(path = %state_path.display(), error = %e, "alert state unreadable; starting with no remembered alerts");
                BTreeMap::new()
            }
        };
        let mut entries = Remembered::default();
        let now = clock::now_unix_ns();
        let mut by_age: Vec<(String, Entry)> = loaded.into_iter().collect();
        by_age.sort_by_key(|(_, e)| e.last_seen_ns);
        for (k, mut e) in by_age {
            // A sighting "in the future" (a clock stepped back) would never expire.
            e.last_seen_ns = e.last_seen_ns.min(now);
            entries.insert(e.user(), k, e);
        }
        Self {
            policy,
            writer: StateWriter::start(state_path),
            entries,
            forgotten_unreported: HashMap::new(),
            dirty: false,
            listeners: LruCache::new(cap(MAX_LISTENERS)),
            rate: HashMap::new(),
            last_save_ns: 0,
            counters: AlertCounters::default(),
        }
    }

    pub fn remembered(&self) -> usize {
        self.entries.len()
    }

    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// A listener appeared (`kernel`) or was found (`snapshot`, `reconcile`).
    pub fn listener(&mut self, l: Listener, origin: Origin, now_ns: i64) -> Vec<Alert> {
        let mut findings = Vec::new();
        let a = self.policy.alerts;
        let subject = || Subject::of(&l.facts);
        match self.policy.judge(&l) {
            Verdict::Allowed(_) => {}
            Verdict::WildcardWhereLoopback(i) if a.wildcard_listener => findings.push(Finding {
                key: l.dedup_key(AlertKind::WildcardListener),
                kind: AlertKind::WildcardListener,
                severity: Severity::High,
                rule: format!(
                    "{} allows this listener on loopback only; it listens on {}",
                    self.policy.rules[i].describe(i),
                    l.address()
                ),
                detail: None,
                subject: subject(),
            }),
            Verdict::WildcardWhereLoopback(_) => {}
            Verdict::Unexpected if a.unexpected_listener => findings.push(Finding {
                key: l.dedup_key(AlertKind::UnexpectedListener),
                kind: AlertKind::UnexpectedListener,
                severity: Severity::High,
                rule: format!(
                    "no rule in {} allows {} port {} on {} by {}",
                    self.policy.path.display(),
                    l.transport(),
                    l.port(),
                    l.address(),
                    l.holder()
                ),
                detail: None,
                subject: subject(),
            }),
            Verdict::Unexpected => {}
        }
        if a.ephemeral_port_listener && l.facts.port.ephemeral {
            findings.push(Finding {
                key: l.dedup_key(AlertKind::EphemeralPortListener),
                kind: AlertKind::EphemeralPortListener,
                severity: Severity::Medium,
                rule: format!(
                    "port {} lies in this host's ephemeral port range, where the kernel picks ports for outbound connections",
                    l.port()
                ),
                detail: None,
                subject: subject(),
            });
        }
        // A required listener that is back ends its "missing" alert, so a next loss alerts anew.
        for (i, r) in self.policy.rules.iter().enumerate() {
            if r.required && self.policy.rule_matches(i, &l) {
                self.dirty |= self.entries.pop(None, &required_key(i, r.line)).is_some();
            }
        }
        self.remember_listener(l);
        let repeat = origin == Origin::Kernel;
        findings
            .into_iter()
            .filter_map(|f| self.raise(f, origin, now_ns, repeat))
            .collect()
    }

    fn remember_listener(&mut self, mut l: Listener) {
        let key = l.key();
        // Matching needs the holder's identity, not its command line.
        if l.facts.process.command_line.is_some() {
            let p = std::sync::Arc::make_mut(&mut l.facts.process);
            (p.command_line, p.command_line_truncated) = (None, false);
        }
        if let Some((old, _)) = self.listeners.push(key, l)
            && old != key
        {
            self.counters.listeners_forgotten += 1;
        }
    }

    /// A socket closed: if it was a listener, forget it, and check the required rules.
    pub fn closed(
        &mut self,
        netns: Option<u32>,
        transport: Transport,
        local: SocketAddr,
        now_ns: i64,
    ) -> Vec<Alert> {
        let Some(gone) = self
            .listeners
            .pop(&(netns, transport, local.ip(), local.port()))
        else {
            return Vec::new();
        };
        // Only a listener a required rule wanted can leave one unsatisfied: any other close
        // costs no pass over the known listeners.
        let required = self
            .policy
            .rules
            .iter()
            .enumerate()
            .any(|(i, r)| r.required && self.policy.rule_matches(i, &gone));
        if !required {
            return Vec::new();
        }
        self.required_missing(Origin::Kernel, now_ns)
    }

    /// A connect failed with EADDRNOTAVAIL: no local port was free for it.
    pub fn connect_exhausted(
        &mut self,
        subject: Subject,
        dest: SocketAddr,
        transport: Transport,
        exe: &str,
        now_ns: i64,
    ) -> Option<Alert> {
        if !self.policy.alerts.ephemeral_port_exhaustion {
            return None;
        }
        let f = Finding {
            key: format!(
                "ephemeral_port_exhaustion|connect|{exe}|{transport}|{dest}{}",
                user_scope(&subject)
            ),
            kind: AlertKind::EphemeralPortExhaustion,
            severity: Severity::High,
            rule: format!(
                "connect to {dest} failed with EADDRNOTAVAIL: no free local port in the ephemeral range"
            ),
            detail: Some(
                json!({"destination": {"address": dest.ip().to_string(), "port": dest.port()}}),
            ),
            subject,
        };
        self.raise(f, Origin::Kernel, now_ns, true)
    }

    /// Compares the policy with a fresh scan: `listeners` are every listener the scan found in
    /// its network namespace.
    pub fn reconcile(
        &mut self,
        scan: &ScanSummary,
        listeners: Vec<Listener>,
        now_ns: i64,
    ) -> Vec<Alert> {
        let ScanSummary {
            window,
            present,
            per_destination,
            ephemeral_size,
        } = scan;
        let ephemeral_size = *ephemeral_size;
        self.counters.reconciliations += 1;
        // The scan is the truth for its namespace; listeners in others are known from events.
        let gone = window.gone(
            self.listeners
                .iter()
                .map(|(k, l)| (*k, k.0, l.facts.wall_ns)),
            |k| present.contains(&(k.1, SocketAddr::new(k.2, k.3))),
        );
        for k in &gone {
            self.listeners.pop(k);
        }
        let mut out = Vec::new();
        for l in listeners {
            out.extend(self.listener(l, Origin::Reconcile, now_ns));
        }
        out.extend(self.required_missing(Origin::Reconcile, now_ns));
        if self.policy.alerts.ephemeral_port_exhaustion {
            let limit = self.policy.settings.exhaustion_share * ephemeral_size as f64;
            for (&(transport, dest), &n) in per_destination {
                if n as f64 > limit {
                    let f = Finding {
                        key: format!("ephemeral_port_exhaustion|share|{transport}|{dest}"),
                        kind: AlertKind::EphemeralPortExhaustion,
                        severity: Severity::Medium,
                        rule: format!(
                            "{n} {transport} sockets to {dest} hold more than {} of the {ephemeral_size} ephemeral ports",
                            self.policy.settings.exhaustion_share
                        ),
                        detail: Some(
                            json!({"destination": {"address": dest.ip().to_string(), "port": dest.port()},
                            "sockets": n, "ephemeral_ports": ephemeral_size,
                            "share": self.policy.settings.exhaustion_share}),
                        ),
                        subject: Subject::default(),
                    };
                    out.extend(self.raise(f, Origin::Reconcile, now_ns, false));
                }
            }
        }
        out
    }

    /// Required rules no known listener satisfies (after the start-up snapshot, a listener's
    /// close, and each reconciliation).
    pub fn required_missing(&mut self, origin: Origin, now_ns: i64) -> Vec<Alert> {
        if !self.policy.alerts.required_listener_missing {
            return Vec::new();
        }
        let mut findings = Vec::new();
        for (i, r) in self.policy.rules.iter().enumerate() {
            if !r.required {
                continue;
            }
            let present = self
                .listeners
                .iter()
                .any(|(_, l)| self.policy.rule_matches(i, l));
            if !present {
                findings.push(Finding {
                    key: required_key(i, r.line),
                    kind: AlertKind::RequiredListenerMissing,
                    severity: Severity::High,
                    rule: format!("{} is required and no listener satisfies it", r.describe(i)),
                    detail: Some(json!({"transport": r.transport.map(|t| t.as_str()),
                        "ports": r.port.as_ref().map(|p| p.0.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect::<Vec<_>>())})),
                    subject: Subject::default(),
                });
            }
        }
        findings
            .into_iter()
            .filter_map(|f| self.raise(f, origin, now_ns, false))
            .collect()
    }

    /// Dedup and rate limit: a first sighting is written (if its user's rate allows); a sighting
    /// within the dedup window is counted (`repeat`) or just keeps the alert alive.
    fn raise(&mut self, f: Finding, origin: Origin, now_ns: i64, repeat: bool) -> Option<Alert> {
        let window = self.policy.settings.dedup_window_ns();
        self.dirty = true;
        let user = f.subject.process.as_ref().map(|p| p.user.id);
        if let Some(e) = self.entries.get_mut(user, &f.key)
            && now_ns.saturating_sub(e.last_seen_ns) <= window
        {
            e.last_seen_ns = now_ns;
            if repeat {
                e.count += 1;
                self.counters.repeats += 1;
            }
            return None;
        }
        let first_seen = clock::rfc3339(chrono::DateTime::from_timestamp_nanos(now_ns));
        let allowed = self.rate_allows(user, now_ns);
        let mut kept = f.subject.clone();
        if let Some(p) = &mut kept.process {
            cut_command_line(p);
            for t in [&mut p.executable, &mut p.cgroup, &mut p.parent_comm]
                .into_iter()
                .flatten()
            {
                cut_text(t, KEPT_TEXT_BYTES);
            }
        }
        let mut rule = f.rule.clone();
        cut_text(&mut rule, KEPT_TEXT_BYTES);
        let entry = Entry {
            kind: f.kind,
            severity: f.severity,
            rule,
            first_seen: first_seen.clone(),
            last_seen_ns: now_ns,
            count: 1,
            reported: u64::from(allowed),
            detail: f.detail.clone(),
            subject: kept,
        };
        if let Some((u, old)) = self.entries.insert(user, f.key.clone(), entry) {
            self.counters.forgotten += 1;
            if old.count > old.reported {
                *self.forgotten_unreported.entry(u).or_default() += old.count - old.reported;
            }
        }
        if !allowed {
            self.counters.rate_limited += 1;
            if self.counters.rate_limited.is_power_of_two() {
                tracing::warn!(
                    held_back = self.counters.rate_limited,
                    "alert rate limit reached; further alerts are counted and summarised"
                );
            }
            return None;
        }
        self.counters.raised += 1;
        Some(Alert {
            body: AlertBody {
                kind: f.kind,
                severity: f.severity,
                rule: f.rule,
                first_seen,
                count: 1,
                summary: false,
                detail: f.detail,
            },
            subject: f.subject,
            origin,
        })
    }

    /// One window a minute per user, so one user's noise never holds back another's alerts
    /// (root's and system units' included).
    fn rate_allows(&mut self, user: Option<u32>, now_ns: i64) -> bool {
        if self.rate.len() >= MAX_RATE_BUCKETS && !self.rate.contains_key(&user) {
            self.rate
                .retain(|_, (start, _)| now_ns.saturating_sub(*start) < 60 * NS);
        }
        let (start, count) = self.rate.entry(user).or_insert((now_ns, 0));
        if now_ns.saturating_sub(*start) >= 60 * NS {
            (*start, *count) = (now_ns, 0);
        }
        *count += 1;
        *count <= self.policy.settings.rate_limit_per_minute
    }

    /// Summaries of counted repeats (and of alerts the rate limit held back), then forgets
    /// alerts not seen for a dedup window. Called every `summary_interval_seconds`.
    pub fn summarise(&mut self, now_ns: i64) -> Vec<Alert> {
        let window = self.policy.settings.dedup_window_ns();
        let mut out = self.forgotten_summaries(now_ns);
        for (_, e) in self.entries.iter_mut() {
            if e.count > e.reported {
                e.reported = e.count;
                self.dirty = true;
                self.counters.summaries += 1;
                out.push(Alert {
                    body: AlertBody {
                        kind: e.kind,
                        severity: e.severity,
                        rule: e.rule.clone(),
                        first_seen: e.first_seen.clone(),
                        count: e.count,
                        summary: true,
                        detail: e.detail.clone(),
                    },
                    subject: e.subject.clone(),
                    origin: Origin::Summary,
                });
            }
        }
        let expired = self
            .entries
            .retain(|e| now_ns.saturating_sub(e.last_seen_ns) <= window);
        self.dirty |= expired > 0;
        out
    }

    /// One line per user whose held-back alerts had to be forgotten before a summary could
    /// report them: what a flood hid is said, not lost silently.
    fn forgotten_summaries(&mut self, now_ns: i64) -> Vec<Alert> {
        let first_seen = clock::rfc3339(chrono::DateTime::from_timestamp_nanos(now_ns));
        std::mem::take(&mut self.forgotten_unreported)
            .into_iter()
            .map(|(user, n)| {
                self.counters.summaries += 1;
                let whose = user.map_or("no process".to_string(), |u| format!("user {u}"));
                Alert {
                    body: AlertBody {
                        kind: AlertKind::AlertsForgotten,
                        severity: Severity::High,
                        rule: format!(
                            "{n} alerts about listeners of {whose} were held back by the rate limit and forgotten before a summary could report them: that user made more than {MAX_PER_USER} alert identities"
                        ),
                        first_seen: first_seen.clone(),
                        count: n,
                        summary: true,
                        detail: Some(json!({"user": user, "alerts": n})),
                    },
                    subject: Subject::default(),
                    origin: Origin::Summary,
                }
            })
            .collect()
    }

    /// Hands the dedup state to its writer thread if it changed and the last save is
    /// `SAVE_EVERY_NS` old: serializing and fsyncing never run on the event loop.
    pub fn save(&mut self, now_ns: i64) {
        self.counters.state_write_failed = self.writer.failed();
        if !self.dirty || now_ns.saturating_sub(self.last_save_ns) < SAVE_EVERY_NS {
            return;
        }
        if self.writer.send(self.snapshot()) {
            self.dirty = false;
            self.last_save_ns = now_ns;
        }
    }

    /// The remembered alerts as the state file keeps them.
    fn snapshot(&self) -> BTreeMap<String, Entry> {
        self.entries
            .iter()
            .map(|(k, e)| (k.to_string(), e.clone()))
            .collect()
    }

    /// Writes what changed and waits for it (at shutdown).
    pub fn finish(&mut self) {
        if self.dirty {
            self.writer.wait_idle();
            self.dirty = !self.writer.send(self.snapshot());
        }
        self.writer.wait_idle();
        self.counters.state_write_failed = self.writer.failed();
    }
}

/// The remembered alerts: per user (None: alerts about no process), each user's least recently
/// seen first.
#[derive(Default)]
struct Remembered {
    by_user: HashMap<Option<u32>, LruCache<String, Entry>>,
    len: usize,
}

impl Entry {
    /// Whose alert it is.
    fn user(&self) -> Option<u32> {
        self.subject.process.as_ref().map(|p| p.user.id)
    }
}

impl Remembered {
    fn len(&self) -> usize {
        self.len
    }

    fn get_mut(&mut self, user: Option<u32>, key: &str) -> Option<&mut Entry> {
        self.by_user.get_mut(&user)?.get_mut(key)
    }

    fn pop(&mut self, user: Option<u32>, key: &str) -> Option<Entry> {
        let e = self.by_user.get_mut(&user)?.pop(key)?;
        self.len -= 1;
        Some(e)
    }

    /// Inserts (or replaces) an entry; when that takes the user past `MAX_PER_USER`, or all past
    /// `MAX_REMEMBERED`, the least recently seen of this user (or of the user with the most) is
    /// forgotten and returned with its user.
    fn insert(&mut self, user: Option<u32>, key: String, e: Entry) -> Option<(Option<u32>, Entry)> {
        let mine = self
            .by_user
            .entry(user)
            .or_insert_with(|| LruCache::new(cap(MAX_PER_USER)));
        if mine.contains(&key) {
            mine.put(key, e);
            return None;
        }
        let evicted = if mine.len() >= MAX_PER_USER {
            mine.pop_lru().map(|(_, old)| (user, old))
        } else if self.len >= MAX_REMEMBERED {
            let busiest = self
                .by_user
                .iter()
                .max_by_key(|(_, c)| c.len())
                .map(|(u, _)| *u);
            busiest.and_then(|u| {
                let old = self.by_user.get_mut(&u)?.pop_lru()?.1;
                Some((u, old))
            })
        } else {
            None
        };
        if evicted.is_some() {
            self.len -= 1;
        }
        self.by_user
            .entry(user)
            .or_insert_with(|| LruCache::new(cap(MAX_PER_USER)))
            .push(key, e);
        self.len += 1;
        evicted
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.by_user
            .values()
            .flat_map(|c| c.iter().map(|(k, e)| (k.as_str(), e)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Entry)> {
        self.by_user
            .values_mut()
            .flat_map(|c| c.iter_mut().map(|(k, e)| (k.as_str(), e)))
    }

    /// Keeps the entries `keep` says to; returns how many went.
    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) -> usize {
        let mut gone = 0;
        for c in self.by_user.values_mut() {
            let drop: Vec<String> = c
                .iter()
                .filter(|(_, e)| !keep(e))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &drop {
                c.pop(k);
            }
            gone += drop.len();
        }
        self.by_user.retain(|_, c| !c.is_empty());
        self.len -= gone;
        gone
    }
}

/// Cuts `t` to at most `max` bytes, on a character boundary.
fn cut_text(t: &mut String, max: usize) {
    if t.len() > max {
        let mut cut = max;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
}

/// Cuts a command line kept in memory for dedup and summaries to `KEPT_CMDLINE_BYTES`.
fn cut_command_line(p: &mut crate::facts::ProcessFacts) {
    let Some(argv) = &mut p.command_line else {
        return;
    };
    let mut budget = KEPT_CMDLINE_BYTES;
    let mut kept = 0;
    for a in argv.iter_mut() {
        if a.len() > budget {
            let mut cut = budget;
            while !a.is_char_boundary(cut) {
                cut -= 1;
            }
            a.truncate(cut);
            p.command_line_truncated = true;
            kept += 1;
            break;
        }
        budget -= a.len();
        kept += 1;
    }
    if kept < argv.len() {
        argv.truncate(kept);
        p.command_line_truncated = true;
    }
}

/// The thread that writes the alert state: one pending state at a time (a newer one waits for
/// the next save), failures counted.
struct StateWriter {
    tx: Option<std::sync::mpsc::SyncSender<BTreeMap<String, Entry>>>,
    busy: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWriter {
    fn start(path: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<BTreeMap<String, Entry>>(1);
        let busy = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (b, f) = (busy.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("alert-state".into())
            .spawn(move || {
                for entries in rx {
                    let state = StateFile {
                        version: STATE_VERSION,
                        entries,
                    };
                    if let Err(e) = write_atomic(&path, &state) {
                        f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(path = %path.display(), error = %e, "saving the alert state failed; will retry");
                    }
                    let (lock, cv) = &*b;
                    if let Ok(mut busy) = lock.lock() {
                        *busy = false;
                    }
                    cv.notify_all();
                }
            })
            .map_err(|e| tracing::error!(error = %e, "alert state writer thread could not start; the state is not saved"))
            .ok();
        StateWriter {
            tx: Some(tx),
            busy,
            failed,
            thread,
        }
    }

    /// Queues a state; false when the previous one is still being written.
    fn send(&self, entries: BTreeMap<String, Entry>) -> bool {
        let Some(tx) = &self.tx else { return false };
        if self.thread.is_none() {
            return false;
        }
        let (lock, _) = &*self.busy;
        let Ok(mut busy) = lock.lock() else {
            return false;
        };
        if *busy {
            return false;
        }
        *busy = tx.try_send(entries).is_ok();
        *busy
    }

    fn wait_idle(&self) {
        let (lock, cv) = &*self.busy;
        if let Ok(guard) = lock.lock() {
            let _ = cv.wait_timeout_while(guard, std::time::Duration::from_secs(10), |b| *b);
        }
    }

    fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn required_key(i: usize, line: usize) -> String {
    format!("required_listener_missing|allow[{i}]|line {line}")
}

fn write_atomic(path: &Path, state: &StateFile) -> std::io::Result<()> {
    use crate::files;
    files::ensure_parent(path)?;
    files::check_parent(path, "alert state")?;
    let tmp = path.with_extension("json.tmp");
    let mut f = files::create_exclusive(&tmp, 0o600)?;
    serde_json::to_writer(&mut f, state)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(text, Path::new("policy.toml")).unwrap()
    }

    fn summary(per: HashMap<(Transport, SocketAddr), u64>, at: i64) -> ScanSummary {
        ScanSummary {
            window: ScanWindow {
                netns: Some(1),
                started_ns: at,
            },
            per_destination: per,
            ephemeral_size: 28232,
            ..ScanSummary::default()
        }
    }

    /// An engine started again on the state in `dir`: it remembers `n` alerts, and the listener
    /// on 8080 that raised one, found again by a scan at `at`, alerts no more.
    fn restarted(dir: &Path, n: usize, at: i64) -> AlertEngine {
        let mut again = AlertEngine::new(policy("[[allow]]\nport = 22\n"), dir);
        assert_eq!(again.remembered(), n);
        assert!(
            again
                .listener(listener("0.0.0.0:8080", "/a"), Origin::Snapshot, at)
                .is_empty()
        );
        again
    }

    /// An engine with this policy text and its state in a fresh directory.
    fn engine(text: &str) -> (tempfile::TempDir, AlertEngine) {
        let dir = tempfile::tempdir().unwrap();
        let e = AlertEngine::new(policy(text), dir.path());
        (dir, e)
    }

    fn listener(addr: &str, exe: &str) -> Listener {
        let mut ev = crate::facts::fixture::event(crate::facts::Kind::Listen, Transport::Tcp, addr);
        ev.netns = 1;
        let mut facts = crate::facts::fixture::facts(ev, 1);
        std::sync::Arc::make_mut(&mut facts.process).executable = Some(exe.into());
        std::sync::Arc::make_mut(&mut facts.process).user.name = Some("root".into());
        Listener {
            facts,
            trusted: Default::default(),
        }
    }

    #[test]
    fn one_alert_per_key_repeats_counted_summarised_and_remembered_across_restarts() {
        let (dir, mut e) = engine("[[allow]]\nport = 22\n");
        assert!(
            e.listener(listener("127.0.0.1:22", "/a"), Origin::Kernel, NS)
                .is_empty()
        );
        let a = e.listener(listener("0.0.0.0:8080", "/a"), Origin::Kernel, NS);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].body.kind.as_str(), a[0].body.count),
            ("unexpected_listener", 1)
        );
        assert!(
            e.listener(listener("0.0.0.0:8080", "/a"), Origin::Kernel, 2 * NS)
                .is_empty()
        );
        // Another executable, or another scope, is another alert.
        assert_eq!(
            e.listener(listener("0.0.0.0:8080", "/b"), Origin::Kernel, 3 * NS)
                .len(),
            1
        );
        assert_eq!(
            e.listener(listener("127.0.0.1:8080", "/a"), Origin::Kernel, 3 * NS)
                .len(),
            1
        );
        let s = e.summarise(4 * NS);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].body.count, s[0].body.summary), (2, true));
        e.finish();
        let mut again = restarted(dir.path(), 3, 5 * NS);
        assert!(
            again.summarise(6 * NS).is_empty(),
            "a snapshot sighting is not a repeat"
        );
    }

    #[test]
    fn rate_limit_holds_back_and_the_summary_reports() {
        let (_dir, mut e) = engine("[settings]\nrate_limit_per_minute = 2\n");
        let written = raise_all(
            &mut e,
            (1000..1005).map(|p| listener(&format!("0.0.0.0:{p}"), "/a")),
        );
        assert_eq!((written, e.counters.rate_limited), (2, 3));
        assert_eq!(e.summarise(2 * NS).len(), 3);
    }

    #[test]
    fn required_rule_alerts_when_its_listener_goes_and_again_after_it_came_back() {
        let (_dir, mut e) = engine("[[allow]]\nport = 22\nrequired = true\n");
        let a = e.reconcile(&summary(HashMap::new(), NS), vec![], NS);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].body.kind, AlertKind::RequiredListenerMissing);
        assert!(
            e.listener(listener("0.0.0.0:22", "/sshd"), Origin::Kernel, 2 * NS)
                .is_empty()
        );
        let gone = e.closed(
            Some(1),
            Transport::Tcp,
            "0.0.0.0:22".parse().unwrap(),
            3 * NS,
        );
        assert_eq!(gone.len(), 1, "missing again after it came back");
    }

    #[test]
    fn wildcard_ephemeral_and_share() {
        let (_dir, mut e) = engine(
            "[settings]\nexhaustion_share = 0.01\n[[allow]]\naddress = \"loopback\"\nport = 60481\n",
        );
        let mut l = listener("[::]:60481", "/a");
        l.facts.port.ephemeral = true;
        let kinds: Vec<_> = e
            .listener(l, Origin::Kernel, NS)
            .iter()
            .map(|a| a.body.kind.as_str())
            .collect();
        assert_eq!(kinds, ["wildcard_listener", "ephemeral_port_listener"]);
        let mut per = HashMap::new();
        per.insert((Transport::Tcp, "127.0.0.1:80".parse().unwrap()), 300);
        per.insert((Transport::Tcp, "127.0.0.1:81".parse().unwrap()), 2);
        let a = e.reconcile(&summary(per, 2 * NS), vec![], 2 * NS);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].body.detail.as_ref().unwrap()["sockets"], 300);
    }

    #[test]
    fn a_corrupt_state_file_is_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let mut e = AlertEngine::new(Policy::default(), dir.path());
        assert_eq!(e.remembered(), 0);
        assert!(dir.path().join("alerts.json.corrupt").exists());
        assert_eq!(
            e.listener(listener("0.0.0.0:1", "/a"), Origin::Kernel, NS)
                .len(),
            1
        );
        e.finish();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the alert state is root's alone");
    }

    /// Alert lines written for these listeners, each seen once by the kernel at 1 s.
    fn raise_all(e: &mut AlertEngine, ls: impl Iterator<Item = Listener>) -> usize {
        ls.map(|l| e.listener(l, Origin::Kernel, NS).len()).sum()
    }

    fn by_user(addr: &str, uid: u32) -> Listener {
        let mut l = listener(addr, "/a");
        std::sync::Arc::make_mut(&mut l.facts.process).user.id = uid;
        l
    }

    #[test]
    fn one_users_flood_never_holds_back_another_users_alert() {
        let (_dir, mut e) = engine("[settings]\nrate_limit_per_minute = 5\n");
        let flood = raise_all(
            &mut e,
            (2000..2100).map(|p| by_user(&format!("0.0.0.0:{p}"), 1000)),
        );
        assert_eq!(flood, 5, "the flooding user is limited");
        let root = e.listener(by_user("0.0.0.0:7000", 0), Origin::Kernel, NS);
        assert_eq!(root.len(), 1, "root's alert goes out at once");
        // The same executable and port by another user is another alert, not a repeat.
        let other = e.listener(by_user("0.0.0.0:2000", 0), Origin::Kernel, NS);
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn remembered_alerts_and_listeners_stay_bounded_and_count_what_they_forget() {
        let (_dir, mut e) = engine("[settings]\nrate_limit_per_minute = 100000\n");
        let mut l = listener("0.0.0.0:1", "/a");
        std::sync::Arc::make_mut(&mut l.facts.process).command_line =
            Some(vec!["x".repeat(64 * 1024)]);
        std::sync::Arc::make_mut(&mut l.facts.process).executable =
            Some(format!("/{}", "y".repeat(8000)));
        e.listener(l, Origin::Kernel, NS);
        // One user's flood forgets only that user's own alerts.
        for i in 0..(MAX_PER_USER as u32 + 100) {
            let mut l = by_user(&format!("0.0.0.0:{}", 1 + i % 60_000), 1000);
            l.facts.event.netns = i;
            e.listener(l, Origin::Kernel, NS + i64::from(i));
        }
        assert_eq!(
            e.remembered(),
            MAX_PER_USER + 1,
            "root's alert is still remembered"
        );
        assert_eq!(e.counters.forgotten, 100, "{:?}", e.counters);
        // Many users fill the whole store, and no more.
        for uid in 2000..2010u32 {
            for i in 0..600u32 {
                let mut l = by_user(&format!("0.0.0.0:{}", 1 + i), uid);
                l.facts.event.netns = i;
                e.listener(l, Origin::Kernel, 2 * NS);
            }
        }
        assert_eq!(e.remembered(), MAX_REMEMBERED);
        assert!(e.listener_count() <= MAX_LISTENERS);
        let longest = |f: fn(&Entry) -> usize| e.entries.iter().map(|(_, en)| f(en)).max();
        let kept = longest(|en| {
            let p = en.subject.process.as_ref();
            p.and_then(|p| p.command_line.as_ref())
                .map_or(0, |a| a.iter().map(String::len).sum())
        });
        assert!(kept <= Some(KEPT_CMDLINE_BYTES), "{kept:?}");
        let exe = longest(|en| {
            let p = en.subject.process.as_ref();
            p.and_then(|p| p.executable.as_ref()).map_or(0, String::len)
        });
        assert!(exe <= Some(KEPT_TEXT_BYTES), "{exe:?}");
        assert!(longest(|en| en.rule.len()) <= Some(KEPT_TEXT_BYTES));
    }

    #[test]
    fn held_back_alerts_a_flood_forgot_are_summarised_not_lost() {
        let (_dir, mut e) = engine("[settings]\nrate_limit_per_minute = 1\n");
        for i in 0..(MAX_PER_USER as u32 + 10) {
            let mut l = by_user(&format!("0.0.0.0:{}", 1 + i), 1000);
            l.facts.event.netns = i;
            e.listener(l, Origin::Kernel, NS);
        }
        let s = e.summarise(2 * NS);
        let forgot: Vec<_> = s
            .iter()
            .filter(|a| a.body.kind == AlertKind::AlertsForgotten)
            .collect();
        assert_eq!(forgot.len(), 1, "{s:?}");
        // Ten were forgotten; the first, written before the limit held the rest back, was not one
        // to report.
        assert_eq!(forgot[0].body.count, 9);
        assert_eq!(forgot[0].body.detail.as_ref().unwrap()["user"], 1000);
        assert!(
            e.summarise(3 * NS)
                .iter()
                .all(|a| a.body.kind != AlertKind::AlertsForgotten)
        );
    }

    #[test]
    fn a_version_1_state_file_is_migrated_not_alerted_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = AlertEngine::new(policy("[[allow]]\nport = 22\n"), dir.path());
        assert_eq!(
            e.listener(listener("0.0.0.0:8080", "/a"), Origin::Kernel, NS)
                .len(),
            1
        );
        e.finish();
        // Rewrite it the way version 1 wrote it: keys without user and namespace.
        let path = dir.path().join(STATE_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let entries = v["entries"].as_object().unwrap().clone();
        let old: serde_json::Map<String, serde_json::Value> = entries
            .into_iter()
            .map(|(k, e)| (k.split("|uid ").next().unwrap().to_string(), e))
            .collect();
        v["entries"] = serde_json::Value::Object(old);
        v["version"] = 1.into();
        fs::write(&path, v.to_string()).unwrap();
        restarted(dir.path(), 1, 2 * NS);
    }
}
