//! What `top` shows, kept between refreshes: the listeners (and when each first appeared), each
//! process's connect and bind churn from the event log, and each namespace's ephemeral range
//! over time. Pure state: the scans and log lines are fed in, the screen reads it out.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    facts::{PortFacts, Transport},
    judgement::{
        self,
        policy::{Policy, Verdict},
    },
    views::{
        identity,
        top::scan::{Namespace, PortSet, Round},
    },
};

/// Rates are over this window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A listener is shown as new for this long after it appeared.
pub const NEW_FOR: Duration = Duration::from_secs(60);
/// The shortest stretch of samples a growth rate is computed over.
pub const MIN_TREND: Duration = Duration::from_secs(5);
/// Processes whose churn is remembered at most (a flood of short-lived pids is bounded).
pub const MAX_PROCESSES: usize = 4096;
/// Events kept for the rate window at most.
pub const MAX_EVENTS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Connects,
    Binds,
    Failures,
}

impl SortBy {
    pub fn next(self) -> Self {
        match self {
            SortBy::Connects => SortBy::Binds,
            SortBy::Binds => SortBy::Failures,
            SortBy::Failures => SortBy::Connects,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Connects => "connects",
            SortBy::Binds => "binds",
            SortBy::Failures => "failures",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerRow {
    pub key: (u32, Transport, String, u16),
    pub facts: PortFacts,
    pub new: bool,
    /// Some(true) when a loaded policy finds it unexpected.
    pub unexpected: Option<bool>,
    pub host: bool,
}

/// One process's calls in the window.
#[derive(Debug, Clone, Default)]
pub struct Churn {
    pub pid: u32,
    pub connects: u32,
    pub binds: u32,
    pub failures: u32,
    pub user: String,
    pub command: String,
}

#[derive(Debug, Clone)]
pub struct RangeRow {
    pub netns: u32,
    pub own: bool,
    pub low: u16,
    pub high: u16,
    pub size: u64,
    pub in_use: usize,
    pub time_wait: usize,
    /// New local ports per second: from the log's events in this namespace when there is a
    /// log, else from ports that appeared between scans.
    pub new_per_second: f64,
    /// How fast the held count grows (ports/s) over the window.
    pub growth_per_second: f64,
    /// At the current growth, when the range is full.
    pub full_in: Option<Duration>,
    pub holders: Vec<(usize, u32, String)>,
    pub unowned: usize,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    pid: u32,
    netns: Option<u32>,
    connect: bool,
    failed: bool,
    /// A call that took a local port of the kernel's choosing.
    new_port: bool,
}

pub struct Model {
    /// When each listener appeared; `None` for those already there at the first scan.
    first_seen: HashMap<(u32, Transport, String, u16), Option<Instant>>,
    initial_done: bool,
    listeners: Vec<ListenerRow>,
    calls: VecDeque<Call>,
    /// pid → (user, command), of the latest event.
    who: lru::LruCache<u32, (String, String)>,
    /// netns → recent (time, held count, ports new since the sample before) samples.
    samples: HashMap<u32, VecDeque<(Instant, usize, usize)>>,
    /// netns → the ports its last scan found held.
    last_ports: HashMap<u32, PortSet>,
    ranges: Vec<Namespace>,
    pub skipped_namespaces: usize,
    pub failed_namespaces: Vec<(u32, String)>,
    /// Events not kept (the window's cap).
    pub events_dropped: u64,
    pub log_lines: VecDeque<Instant>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            first_seen: HashMap::new(),
            initial_done: false,
            listeners: Vec::new(),
            calls: VecDeque::new(),
            who: lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_PROCESSES).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            samples: HashMap::new(),
            last_ports: HashMap::new(),
            ranges: Vec::new(),
            skipped_namespaces: 0,
            failed_namespaces: Vec::new(),
            events_dropped: 0,
            log_lines: VecDeque::new(),
        }
    }
}

fn key(f: &PortFacts) -> (u32, Transport, String, u16) {
    (
        f.event.netns,
        f.event.transport,
        f.event.local.ip().to_string(),
        f.event.local.port(),
    )
}

/// The command a person recognises: argv, else the executable, else comm.
pub fn command_of(f: &PortFacts) -> String {
    let p = &f.process;
    if p.pid == 0 {
        return crate::history::who::UNKNOWN_HOLDER.to_string();
    }
    if p.command_line.is_none() && p.executable.is_none() {
        return p.comm.clone();
    }
    identity::command(p.command_line.as_deref(), p.executable.as_deref(), true)
}

pub fn user_of(f: &PortFacts) -> String {
    if f.process.pid == 0 {
        return "-".into();
    }
    f.process
        .user
        .name
        .clone()
        .unwrap_or_else(|| f.process.user.id.to_string())
}

impl Model {
    /// Takes a scan round.
    pub fn scan(&mut self, round: Round, policy: Option<&Policy>, now: Instant) {
        let mut rows = Vec::new();
        for ns in &round.namespaces {
            for f in &ns.listeners {
                let k = key(f);
                let initial = !self.initial_done;
                let first = *self
                    .first_seen
                    .entry(k.clone())
                    .or_insert((!initial).then_some(now));
                let new = first.is_some_and(|t| now.duration_since(t) < NEW_FOR);
                let unexpected =
                    policy.map(|p| p.judge(&judgement::listener(f.clone())) == Verdict::Unexpected);
                rows.push(ListenerRow {
                    key: k,
                    facts: f.clone(),
                    new,
                    unexpected,
                    host: ns.own,
                });
            }
            let appeared = self
                .last_ports
                .get(&ns.netns)
                .map_or(0, |before| ns.in_use.new_since(before));
            self.last_ports.insert(ns.netns, ns.in_use.clone());
            let q = self.samples.entry(ns.netns).or_default();
            q.push_back((now, ns.in_use.len(), appeared));
            while q
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > WINDOW)
                && q.len() > 2
            {
                q.pop_front();
            }
        }
        // A namespace that exists but waits for its turn keeps what was last seen of it.
        let scanned: std::collections::HashSet<u32> =
            round.namespaces.iter().map(|n| n.netns).collect();
        let waiting = |ns: u32| !scanned.contains(&ns) && round.present.contains(&ns);
        rows.extend(
            self.listeners
                .drain(..)
                .filter(|r| waiting(r.key.0))
                .map(|r| ListenerRow {
                    new: r.new
                        && self
                            .first_seen
                            .get(&r.key)
                            .copied()
                            .flatten()
                            .is_some_and(|t| now.duration_since(t) < NEW_FOR),
                    ..r
                }),
        );
        let mut namespaces = round.namespaces;
        namespaces.extend(self.ranges.drain(..).filter(|n| waiting(n.netns)));
        // Forget listeners and namespaces gone for good, so these tables stay bounded.
        let live: std::collections::HashSet<_> = rows.iter().map(|r| r.key.clone()).collect();
        self.first_seen.retain(|k, _| live.contains(k));
        self.samples.retain(|k, _| round.present.contains(k));
        self.last_ports.retain(|k, _| round.present.contains(k));
        rows.sort_by(|a, b| {
            (b.unexpected == Some(true), b.new, b.host)
                .cmp(&(a.unexpected == Some(true), a.new, a.host))
                .then(a.key.3.cmp(&b.key.3))
                .then(a.key.cmp(&b.key))
        });
        self.listeners = rows;
        self.ranges = namespaces;
        self.skipped_namespaces = round.skipped;
        self.failed_namespaces = round.failed;
        self.initial_done = true;
    }

    /// Takes one event line of the log.
    pub fn event(&mut self, v: &Value, now: Instant) {
        self.log_lines.push_back(now);
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
        let event = s("/event");
        let (connect, bind) = (event == "connect", event == "bind");
        if !connect && !bind {
            return;
        }
        let Some(pid) = v
            .pointer("/process/pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            return;
        };
        if self.calls.len() >= MAX_EVENTS {
            self.calls.pop_front();
            self.events_dropped += 1;
        }
        let failed = s("/outcome") == "failure";
        let requested = v.pointer("/port/requested").and_then(Value::as_bool);
        self.calls.push_back(Call {
            at: now,
            pid,
            netns: v
                .pointer("/network/netns")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            connect,
            failed,
            new_port: !failed && (connect || requested == Some(false) || v["implicit"] == true),
        });
        let p = &v["process"];
        let user = identity::user_of_event(p);
        let command = identity::command_of_event(p, true);
        // The least recently active process is forgotten first.
        self.who.put(pid, (user, command));
    }

    /// Drops what fell out of the window.
    pub fn expire(&mut self, now: Instant) {
        while self
            .calls
            .front()
            .is_some_and(|c| now.duration_since(c.at) > WINDOW)
        {
            self.calls.pop_front();
        }
        while self
            .log_lines
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.log_lines.pop_front();
        }
    }

    pub fn listeners(&self) -> &[ListenerRow] {
        &self.listeners
    }

    /// Processes by churn in the window, highest first.
    pub fn churn(&self, sort: SortBy) -> Vec<Churn> {
        let mut per: HashMap<u32, Churn> = HashMap::new();
        for c in &self.calls {
            let e = per.entry(c.pid).or_insert_with(|| Churn {
                pid: c.pid,
                ..Churn::default()
            });
            if c.connect {
                e.connects += 1;
            } else {
                e.binds += 1;
            }
            if c.failed {
                e.failures += 1;
            }
        }
        let mut out: Vec<Churn> = per
            .into_values()
            .map(|mut c| {
                if let Some((u, cmd)) = self.who.peek(&c.pid) {
                    (c.user, c.command) = (u.clone(), cmd.clone());
                }
                c
            })
            .collect();
        out.sort_by(|a, b| {
            let k = |c: &Churn| match sort {
                SortBy::Connects => (c.connects, c.binds),
                SortBy::Binds => (c.binds, c.connects),
                SortBy::Failures => (c.failures, c.connects + c.binds),
            };
            k(b).cmp(&k(a)).then(a.pid.cmp(&b.pid))
        });
        out
    }

    /// Each namespace's range: fullest first (the own namespace first among equals).
    pub fn ranges(&self, have_log: bool) -> Vec<RangeRow> {
        let window = WINDOW.as_secs_f64();
        let mut out: Vec<RangeRow> = self
            .ranges
            .iter()
            .map(|ns| {
                let size = ns.range.size();
                let samples = self.samples.get(&ns.netns);
                let (growth, appeared) = match samples.map(|q| (q.front(), q.back(), q)) {
                    // Fewer than 5 s of samples say nothing about a trend yet.
                    Some((Some(a), Some(b), q)) if b.0.duration_since(a.0) >= MIN_TREND => {
                        let dt = b.0.duration_since(a.0).as_secs_f64();
                        let appeared: usize = q.iter().skip(1).map(|s| s.2).sum();
                        ((b.1 as f64 - a.1 as f64) / dt, appeared as f64 / dt)
                    }
                    _ => (0.0, 0.0),
                };
                let new_per_second = if have_log {
                    self.calls
                        .iter()
                        .filter(|c| c.new_port && c.netns == Some(ns.netns))
                        .count() as f64
                        / window
                } else {
                    appeared
                };
                let free = size.saturating_sub(ns.in_use.len() as u64) as f64;
                let full_in = (growth > 0.0).then(|| Duration::from_secs_f64(free / growth));
                RangeRow {
                    netns: ns.netns,
                    own: ns.own,
                    low: ns.range.low,
                    high: ns.range.high,
                    size,
                    in_use: ns.in_use.len(),
                    time_wait: ns.time_wait,
                    new_per_second,
                    growth_per_second: growth,
                    full_in,
                    holders: ns
                        .holders
                        .iter()
                        .map(|(n, f)| (*n, f.process.pid, command_of(f)))
                        .collect(),
                    unowned: ns.unowned,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            let fill = |r: &RangeRow| r.in_use as f64 / r.size.max(1) as f64;
            fill(b)
                .total_cmp(&fill(a))
                .then(b.own.cmp(&a.own))
                .then(a.netns.cmp(&b.netns))
        });
        out
    }

    pub fn events_per_second(&self) -> f64 {
        self.log_lines.len() as f64 / WINDOW.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::ports::EphemeralRange,
        facts::{Kind, fixture as test_support},
        views::top::scan::Namespace,
    };
    use serde_json::json;

    fn ns(netns: u32, in_use: std::ops::Range<u16>, listeners: &[u32]) -> Namespace {
        Namespace {
            netns,
            own: netns == 1,
            range: EphemeralRange {
                low: 40000,
                high: 40099,
                reserved: Vec::new(),
            },
            in_use: {
                let mut set = PortSet::default();
                in_use.for_each(|p| set.insert(p));
                set
            },
            time_wait: 0,
            holders: Vec::new(),
            unowned: 0,
            listeners: listeners
                .iter()
                .map(|pid| {
                    let mut e = test_support::event_of(*pid, Kind::Listen);
                    e.netns = netns;
                    test_support::facts(e, 0)
                })
                .collect(),
        }
    }

    fn round(namespaces: Vec<Namespace>) -> Round {
        Round {
            present: namespaces.iter().map(|n| n.netns).collect(),
            namespaces,
            ..Round::default()
        }
    }

    #[test]
    fn listeners_there_at_start_are_not_new_later_ones_are_for_a_minute() {
        let mut m = Model::default();
        let t0 = Instant::now();
        m.scan(round(vec![ns(1, 0..0, &[10])]), None, t0);
        m.scan(
            round(vec![ns(1, 0..0, &[10])]),
            None,
            t0 + Duration::from_secs(1),
        );
        assert!(!m.listeners()[0].new);
        let mut other = ns(1, 0..0, &[10]);
        let mut e = test_support::event_of(11, Kind::Listen);
        e.netns = 1;
        let mut f = test_support::facts(e, 0);
        f.event.local = "127.0.0.1:2".parse().unwrap();
        other.listeners.push(f);
        m.scan(
            round(vec![other.clone()]),
            None,
            t0 + Duration::from_secs(2),
        );
        let new: Vec<u32> = m
            .listeners()
            .iter()
            .filter(|r| r.new)
            .map(|r| r.facts.process.pid)
            .collect();
        assert_eq!(new, [11]);
        // New ones sort first.
        assert_eq!(m.listeners()[0].facts.process.pid, 11);
        // A namespace that waits for its turn keeps its listeners (and their first sighting).
        let mut waiting = round(vec![]);
        waiting.present.insert(1);
        m.scan(waiting, None, t0 + Duration::from_secs(3));
        assert_eq!(m.listeners().len(), 2);
        assert!(m.listeners().iter().any(|r| r.new));
        m.scan(round(vec![other]), None, t0 + Duration::from_secs(70));
        assert!(m.listeners().iter().all(|r| !r.new));
        // Gone for good: forgotten.
        m.scan(round(vec![]), None, t0 + Duration::from_secs(71));
        assert!(m.listeners().is_empty());
        assert!(m.listeners().iter().all(|r| r.unexpected.is_none()));
    }

    #[test]
    fn churn_counts_calls_per_process_in_the_window() {
        let mut m = Model::default();
        let t0 = Instant::now();
        let ev = |pid: u32, event: &str, outcome: &str| {
            json!({"event": event, "outcome": outcome, "network": {"netns": 7},
                "port": {"requested": false},
                "process": {"pid": pid, "command_line": ["churn", "x"], "user": {"id": 0, "name": "root"}}})
        };
        for _ in 0..30 {
            m.event(&ev(5, "connect", "success"), t0);
        }
        for _ in 0..3 {
            m.event(&ev(6, "bind", "success"), t0);
            m.event(&ev(6, "connect", "failure"), t0);
        }
        m.event(&json!({"event": "status"}), t0);
        let c = m.churn(SortBy::Connects);
        assert_eq!(
            (c[0].pid, c[0].connects, c[0].command.as_str()),
            (5, 30, "churn x")
        );
        assert_eq!(m.churn(SortBy::Binds)[0].pid, 6);
        assert_eq!(m.churn(SortBy::Failures)[0].failures, 3);
        // New ports per second in namespace 7: 30 connects and 3 binds of port 0.
        m.scan(round(vec![ns(7, 40000..40010, &[])]), None, t0);
        let r = &m.ranges(true)[0];
        assert_eq!((r.in_use, r.size), (10, 100));
        assert!(
            (r.new_per_second - 3.3).abs() < 0.01,
            "{}",
            r.new_per_second
        );
        m.expire(t0 + WINDOW + Duration::from_secs(1));
        assert!(m.churn(SortBy::Connects).is_empty());
    }

    #[test]
    fn a_filling_range_says_when_it_is_full() {
        let mut m = Model::default();
        let t0 = Instant::now();
        for s in 0..=6u16 {
            m.scan(
                round(vec![ns(7, 40000..40000 + 10 * s, &[])]),
                None,
                t0 + Duration::from_secs(s.into()),
            );
        }
        let r = &m.ranges(false)[0];
        assert_eq!(r.in_use, 60);
        assert!((r.growth_per_second - 10.0).abs() < 0.01);
        assert!((r.new_per_second - 10.0).abs() < 0.01);
        assert_eq!(r.full_in, Some(Duration::from_secs(4)));
    }
}
