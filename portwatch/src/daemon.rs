//! `portwatch run`: attach, then read → decode → enrich → sink until SIGINT/SIGTERM, and drain
//! what the kernel already queued before exiting. Under systemd it reports readiness only after
//! every program is attached, and pings the watchdog from the event loop itself.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    alert::{Alert, AlertBody, AlertEngine, ListenerFacts, Subject},
    attach::{self, AttachMode, AttachOptions, Attached},
    canary::{self, Canary},
    clock::{self, WallClock},
    decode::{self, KernelEvent, Kind, Record, Transport},
    enrich::{Attribution, Enricher},
    event::{
        AlertRecord, DaemonInfo, Header, Host, KernelInfo, Loss, LossRecord, Network, PortRecord,
        Process, SCHEMA_VERSION, StatusRecord,
    },
    hook::{self, HookCounters},
    lineage::ProcessTable,
    ports::EphemeralRange,
    privileges,
    read::{EventReader, LossCounter},
    sink::{Rotation, Sink},
    sockets,
    status::{self, StatusServer},
    tenancy::Tenancy,
};

#[derive(Debug)]
pub struct RunOptions {
    pub attach: AttachMode,
    pub log_file: Option<PathBuf>,
    pub stdout: bool,
    pub rotation: Option<Rotation>,
    pub ring_buffer_bytes: u32,
    pub status_socket: PathBuf,
    pub cache: crate::config::CacheConfig,
    pub state_dir: PathBuf,
    pub retention: crate::store::Retention,
    /// The listener policy; None: no alerts.
    pub policy: Option<PathBuf>,
    /// Seconds between canary rounds (blinding detection); 0: off.
    pub canary_interval_seconds: u64,
    /// Seconds between periodic `status` lines; 0: only at start and stop.
    pub status_interval_seconds: u64,
}

/// Longest a record waits in the ring buffer before the daemon reads it.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);
/// `status` reports event rates over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// decode → enrich → serialize → sink, with the run's sequence numbers and counters.
pub struct Pipeline {
    host: String,
    clock: WallClock,
    enricher: Enricher,
    pub processes: ProcessTable,
    pub tenancy: Option<Tenancy>,
    ephemeral: EphemeralRange,
    pub sink: Sink,
    seq: u64,
    /// Events written, by kind: bind, listen, connect, close.
    pub counts: [u64; 4],
    pub decode_errors: u64,
    /// Events written by the start-up socket scan.
    pub snapshot_events: u64,
    /// The policy and its alert state; None: no policy, no alerts.
    pub alerts: Option<AlertEngine>,
    pub hook: Arc<HookCounters>,
    /// Where the alert dedup state lives.
    pub state_dir: PathBuf,
    pub policy_reloads: u64,
    pub policy_reload_failures: u64,
    pub canary: Canary,
}

fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Bind => 0,
        Kind::Listen => 1,
        Kind::Connect => 2,
        Kind::Close => 3,
    }
}

const KIND_NAMES: [&str; 4] = ["bind", "listen", "connect", "close"];

impl Pipeline {
    pub fn new(sink: Sink, cache: crate::config::CacheConfig) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            host,
            clock: WallClock::sample(),
            enricher: Enricher::new("/proc", cache.processes, cache.users),
            processes: ProcessTable::new(cache.process_table),
            tenancy: None,
            ephemeral: EphemeralRange::read(),
            sink,
            seq: 0,
            counts: [0; 4],
            decode_errors: 0,
            snapshot_events: 0,
            alerts: None,
            hook: Arc::default(),
            state_dir: PathBuf::new(),
            policy_reloads: 0,
            policy_reload_failures: 0,
            canary: Canary::new(),
        }
    }

    /// The next line's header; takes fields rather than `self` so the sink stays borrowable.
    fn header<'h>(
        seq: &mut u64,
        host: &'h str,
        event: &'static str,
        timestamp: String,
    ) -> Header<'h> {
        *seq += 1;
        Header {
            schema: SCHEMA_VERSION,
            timestamp,
            seq: *seq,
            host: Host { name: host },
            event,
        }
    }

    fn push<T: Serialize>(sink: &mut Sink, rec: &T) {
        if let Err(e) = sink.push_json(rec) {
            tracing::error!(error = %e, "serializing an event failed");
        }
    }

    /// One ring-buffer record.
    pub fn handle(&mut self, bytes: &[u8]) {
        let ev = match decode::decode_any(bytes) {
            Ok(Record::Port(ev)) => ev,
            Ok(Record::Exec(r)) => return self.processes.exec(&r),
            Ok(Record::Fork {
                child,
                parent,
                monotonic_ns,
            }) => return self.processes.fork(child, parent, monotonic_ns),
            Ok(Record::Exit { pid, monotonic_ns }) => {
                return self.processes.exit(pid, monotonic_ns);
            }
            Err(e) => {
                self.decode_errors += 1;
                tracing::warn!(error = %e, total = self.decode_errors, "undecodable record dropped");
                return;
            }
        };
        if self.canary.absorb(ev.pid, ev.kind) {
            return;
        }
        self.counts[kind_index(ev.kind)] += 1;
        self.emit_port(&ev, "kernel");
    }

    /// Attributes, records in the live table and writes one port event.
    fn emit_port(&mut self, ev: &KernelEvent, origin: &'static str) {
        // pid 0: a socket no process holds (a kernel socket); /proc has nothing to say.
        let attr = if ev.pid == 0 {
            Attribution::default()
        } else {
            self.enricher.attribute(ev, &self.processes)
        };
        let wall = self.clock.to_utc(ev.monotonic_ns);
        if let Some(t) = &mut self.tenancy {
            t.observe(ev, &attr, clock::unix_ns(wall));
        }
        let wall_ns = clock::unix_ns(wall);
        let ts = clock::rfc3339(wall);
        let header = Self::header(&mut self.seq, &self.host, ev.kind.as_str(), ts);
        let mut port = self.ephemeral.info(ev.local.port());
        if ev.kind == Kind::Bind && origin == "kernel" {
            port.requested = Some(ev.port_requested);
        }
        let rec = PortRecord::new(header, ev, attr, port, origin);
        let alerts = match &mut self.alerts {
            Some(engine) => judge_event(engine, ev, &rec, origin, wall_ns),
            None => Vec::new(),
        };
        Self::push(&mut self.sink, &rec);
        for a in alerts {
            self.write_alert(&a);
        }
    }

    /// An `alert` line, a WARN diagnostic (journald priority warning under systemd), and the
    /// exec hook.
    pub fn write_alert(&mut self, a: &Alert) {
        let header = Self::header(&mut self.seq, &self.host, "alert", clock::now_rfc3339());
        let rec = AlertRecord {
            header,
            alert: &a.body,
            network: &a.subject.network,
            port: &a.subject.port,
            process: &a.subject.process,
            origin: a.origin,
        };
        let line = match serde_json::to_string(&rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "serializing an alert failed");
                return;
            }
        };
        tracing::warn!(
            kind = a.body.kind,
            severity = a.body.severity,
            count = a.body.count,
            summary = a.body.summary,
            pid = %a.subject.process["pid"],
            executable = %a.subject.process["executable"],
            local = %a.subject.network["local"],
            origin = a.origin,
            "ALERT: {}",
            a.body.rule
        );
        self.sink.push(line.as_bytes());
        if let Some(hook) = self.alerts.as_ref().and_then(|e| e.policy.hook.as_ref()) {
            hook::dispatch(hook, &self.hook, line);
        }
    }

    /// Compares the policy with a fresh scan of the kernel's sockets (every
    /// `reconcile_interval_seconds`, and after a policy reload), so a listener whose events were
    /// lost still alerts.
    pub fn reconcile(&mut self) {
        if self.alerts.is_none() {
            return;
        }
        let found = match sockets::dump_all() {
            Ok(f) => f,
            Err(e) => {
                if let Some(engine) = &mut self.alerts {
                    engine.counters.reconcile_failed += 1;
                }
                tracing::error!(error = %e, "reconciliation scan failed; listeners whose events were lost go unnoticed until the next one");
                return;
            }
        };
        let owners = sockets::owners(Path::new("/proc"));
        let netns = sockets::own_netns();
        let mono = clock::monotonic_now();
        let wall_ns = clock::now_unix_ns();
        let mut listeners = Vec::new();
        let mut per_destination: HashMap<(&'static str, SocketAddr), u64> = HashMap::new();
        // Unconnected sockets still there: a UDP listener known from its bind event stays known
        // even where a scan alone could not call it one.
        let present: std::collections::HashSet<(&'static str, SocketAddr)> = found
            .iter()
            .filter(|s| s.peer.is_none())
            .map(|s| (s.transport.as_str(), s.local))
            .collect();
        for s in &found {
            let ephemeral = self.ephemeral.info(s.local.port()).ephemeral;
            if let Some(peer) = s.peer {
                if ephemeral {
                    *per_destination
                        .entry((s.transport.as_str(), peer))
                        .or_default() += 1;
                }
                continue;
            }
            if !(s.is_tcp_listener() || (s.transport == Transport::Udp && !ephemeral)) {
                continue;
            }
            let pid = owners.get(&s.inode).copied().unwrap_or(0);
            let ev = sockets::to_event(s, pid, netns, Path::new("/proc"), mono);
            let attr = if pid == 0 {
                Attribution::default()
            } else {
                self.enricher.attribute(&ev, &self.processes)
            };
            let network = Network::of(&ev);
            let process = Process::of(&ev, attr);
            listeners.push(listener_facts(
                s.local,
                &network,
                self.ephemeral.info(s.local.port()),
                &process,
            ));
        }
        let size = self.ephemeral.size();
        let alerts = match &mut self.alerts {
            Some(engine) => {
                engine.reconcile(netns, listeners, &present, &per_destination, size, wall_ns)
            }
            None => Vec::new(),
        };
        for a in alerts {
            self.write_alert(&a);
        }
    }

    /// After losses: closes history intervals whose socket is gone (their release was among the
    /// lost records), so `who` does not show them open forever.
    pub fn sweep_tenancy(&mut self) {
        let Some(t) = &mut self.tenancy else { return };
        let found = match sockets::dump_all() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "socket scan for the history failed");
                return;
            }
        };
        let mut present = std::collections::HashSet::new();
        for s in &found {
            present.insert((s.transport.as_str(), s.local, s.peer));
            present.insert((s.transport.as_str(), s.local, None));
        }
        let now = clock::now_unix_ns();
        let closed = t.sweep(sockets::own_netns(), &present, now);
        if closed > 0 {
            tracing::info!(closed, "history intervals closed after lost release events");
        }
    }

    /// Summaries of counted repeats; then the dedup state goes to disk.
    pub fn summarise_alerts(&mut self) {
        let now = clock::now_unix_ns();
        let alerts = match &mut self.alerts {
            Some(engine) => engine.summarise(now),
            None => Vec::new(),
        };
        for a in alerts {
            self.write_alert(&a);
        }
        self.save_alerts();
    }

    pub fn save_alerts(&mut self) {
        if let Some(engine) = &mut self.alerts {
            engine.save();
        }
    }

    /// SIGHUP: re-reads the policy file. A file that does not parse leaves the running policy in
    /// place (logged at error level). True when a new policy was installed.
    pub fn reload_policy(&mut self, path: Option<&Path>) -> bool {
        let Some(path) = path else { return false };
        match crate::policy::Policy::load(path) {
            Ok(p) => {
                tracing::info!(path = %path.display(), rules = p.rules.len(), "policy reloaded");
                match &mut self.alerts {
                    Some(engine) => engine.policy = p,
                    None => self.alerts = Some(AlertEngine::new(p, &self.state_dir)),
                }
                self.policy_reloads += 1;
                true
            }
            Err(e) => {
                self.policy_reload_failures += 1;
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
                false
            }
        }
    }

    /// Judges the last canary round and sends the next; a family gone blind is an error and a
    /// `monitoring_blind` alert line (with or without a policy).
    pub fn canary_round(&mut self, ring_buffer_lost: u64) {
        for v in self.canary.round(ring_buffer_lost) {
            match v {
                canary::Verdict::Blind(families) => {
                    tracing::error!(
                        ?families,
                        "hook families delivered no event for the daemon's own test sockets: their programs were detached or their events are filtered; events of these kinds are being missed"
                    );
                    let now = clock::now_rfc3339();
                    let a = Alert {
                        body: AlertBody {
                            kind: "monitoring_blind".into(),
                            severity: "high".into(),
                            rule: format!(
                                "no {} event came back for the daemon's own loopback test sockets: the programs were detached or their events are filtered",
                                families.join(", ")
                            ),
                            first_seen: now,
                            count: 1,
                            summary: false,
                            detail: Some(json!({"families": families})),
                        },
                        subject: Subject::default(),
                        origin: "canary",
                    };
                    self.write_alert(&a);
                }
                canary::Verdict::Recovered(families) => {
                    tracing::info!(?families, "hook families deliver events again");
                }
            }
        }
    }

    /// Required listeners missing right after the start-up snapshot.
    pub fn check_required(&mut self) {
        let now = clock::now_unix_ns();
        let alerts = match &mut self.alerts {
            Some(engine) => engine.check_required("snapshot", now),
            None => Vec::new(),
        };
        for a in alerts {
            self.write_alert(&a);
        }
    }

    /// The start-up seed: one `origin: snapshot` event per socket the kernel already had, so
    /// listeners started before the daemon are known.
    pub fn write_snapshot(&mut self, events: &[KernelEvent]) {
        for ev in events {
            self.snapshot_events += 1;
            self.emit_port(ev, "snapshot");
        }
    }

    /// A `status` line: at start (`reason` "start"), every `[status] event_interval_seconds`
    /// ("periodic") and at shutdown ("stop"), with the counters `portwatch status` shows.
    pub fn write_status(
        &mut self,
        attached: &Attached,
        reason: &'static str,
        ring_buffer_lost: u64,
    ) {
        let attach: BTreeMap<String, _> = attached
            .families
            .iter()
            .map(|f| (f.family.to_string(), f))
            .collect();
        let header = Self::header(&mut self.seq, &self.host, "status", clock::now_rfc3339());
        let rec = StatusRecord {
            header,
            daemon: DaemonInfo {
                version: env!("CARGO_PKG_VERSION"),
                pid: std::process::id(),
            },
            kernel: KernelInfo {
                release: kernel_release(),
            },
            attach,
            ring_buffer_bytes: attached.ring_buffer_bytes,
            reason,
            counters: self.counters(ring_buffer_lost),
        };
        Self::push(&mut self.sink, &rec);
    }

    /// Queues a `loss` line (ring-buffer losses are logged at once; log-write losses are logged
    /// by `flush` once the notice actually lands).
    fn push_loss(&mut self, count: u64, total: u64, reason: &'static str) {
        let header = Self::header(&mut self.seq, &self.host, "loss", clock::now_rfc3339());
        let rec = LossRecord {
            header,
            loss: Loss {
                count,
                total,
                reason,
            },
        };
        Self::push(&mut self.sink, &rec);
    }

    pub fn write_loss(&mut self, count: u64, total: u64, reason: &'static str) {
        tracing::warn!(count, total, reason, "events lost");
        self.push_loss(count, total, reason);
    }

    /// Writes the queued lines; once writing works again after failures, says in the log itself
    /// how many lines it could not write (tried on every flush and every second until it lands).
    pub fn flush(&mut self) {
        // One stat per batch: a log whose path no longer names it must not swallow lines.
        self.sink.check_path();
        self.sink.flush();
        let count = self.sink.unreported_failed();
        if count > 0 {
            let total = self.sink.stats.lines_failed;
            self.push_loss(count, total, "log_write_failed");
            if self.sink.flush_notice(count) {
                tracing::warn!(
                    count,
                    total,
                    "event log writable again; lost lines reported in it"
                );
            }
        }
    }

    /// Re-samples what can change under a long-running daemon: the clock offset (NTP steps) and
    /// the ephemeral port range (sysctl).
    pub fn refresh(&mut self) {
        self.clock = WallClock::sample();
        self.ephemeral = EphemeralRange::read();
    }

    pub fn process_gone(&self) -> u64 {
        self.enricher.vanished
    }

    /// What the daemon did and could not do, for `portwatch status` and the periodic `status`
    /// event; `ring_buffer_lost` comes from the kernel's loss counters.
    pub fn counters(&self, ring_buffer_lost: u64) -> Value {
        let mut events = serde_json::Map::new();
        for (i, name) in KIND_NAMES.iter().enumerate() {
            events.insert((*name).into(), json!(self.counts[i]));
        }
        events.insert("total".into(), json!(self.counts.iter().sum::<u64>()));
        events.insert("snapshot".into(), json!(self.snapshot_events));
        let (procs, procs_max, users, users_max) = self.enricher.cache_sizes();
        let ev = self.enricher.evictions;
        json!({
            "events": events,
            "lost": {"ring_buffer": ring_buffer_lost, "log_write_failed": self.sink.stats.lines_failed,
                     "undecodable": self.decode_errors},
            "attribution": {"process_gone": self.process_gone(), "from_process_table": self.enricher.from_table},
            "caches": {"processes": {"size": procs, "max": procs_max, "evictions": ev.processes},
                       "users": {"size": users, "max": users_max, "evictions": ev.users},
                       "process_table": {"size": self.processes.len(), "max": self.processes.max(),
                                         "evictions": self.processes.evictions}},
            "log": {"path": self.sink.log_path(), "bytes": self.sink.log_bytes(),
                    "rotations": self.sink.stats.rotations, "lines_written": self.sink.stats.lines_written},
            "store": self.tenancy.as_ref().map(|t| json!({"open_sockets": t.open_count(),
                "writes_dropped": t.store.dropped, "forgotten": t.forgotten, "swept": t.swept})),
            "alerts": self.alerts.as_ref().map(|e| json!({
                "policy": e.policy.path, "rules": e.policy.rules.len(),
                "reloads": self.policy_reloads, "reload_failures": self.policy_reload_failures,
                "listeners": e.listener_count(), "remembered": e.remembered(),
                "counters": e.counters, "hook": self.hook.figures()})),
            "canary": {"blind": self.canary.blind_families(), "rounds": self.canary.figures},
        })
    }
}

/// A listener is a TCP socket in LISTEN, or a UDP socket bound to a port its caller named. A
/// kernel bind event says whether the port was named; a scan does not, so there a UDP socket
/// counts when its port lies outside the ephemeral range, where the kernel never picks one.
fn is_listener(ev: &KernelEvent, port: crate::ports::PortInfo) -> bool {
    ev.errno.is_none()
        && ev.local.port() != 0
        && match ev.kind {
            Kind::Listen => true,
            Kind::Bind => {
                ev.transport == Transport::Udp && port.requested.unwrap_or(!port.ephemeral)
            }
            _ => false,
        }
}

/// `local` is the socket's address as the kernel gave it (`network` holds it as text).
fn listener_facts(
    local: SocketAddr,
    network: &Network,
    port: crate::ports::PortInfo,
    process: &Process,
) -> ListenerFacts {
    ListenerFacts {
        netns: network.netns,
        transport: network.transport,
        local,
        executable: process.executable.clone(),
        comm: process.comm.clone(),
        user_id: process.user.id,
        user_name: process.user.name.clone(),
        unit: process.unit.clone(),
        container_id: process.container.as_ref().map(|c| c.id.clone()),
        // Listeners are rare: a state-file read each is cheap enough.
        container_name: process.container.as_ref().and_then(|c| {
            let home = nix::unistd::User::from_uid(process.user.id.into())
                .ok()
                .flatten()
                .map(|u| u.dir);
            let roots = crate::containers::Roots {
                home: home.as_deref(),
                ..crate::containers::Roots::system()
            };
            crate::containers::name(c, &roots)
        }),
        ephemeral_port: port.ephemeral,
        subject: Subject {
            network: serde_json::to_value(network).unwrap_or(Value::Null),
            port: serde_json::to_value(port).unwrap_or(Value::Null),
            process: serde_json::to_value(process).unwrap_or(Value::Null),
        },
    }
}

/// What one port event means to the policy.
fn judge_event(
    engine: &mut AlertEngine,
    ev: &KernelEvent,
    rec: &PortRecord<'_>,
    origin: &'static str,
    wall_ns: i64,
) -> Vec<Alert> {
    const EADDRNOTAVAIL: i32 = 99;
    if ev.kind == Kind::Connect && ev.errno == Some(EADDRNOTAVAIL) {
        let subject = Subject {
            network: serde_json::to_value(&rec.network).unwrap_or(Value::Null),
            port: serde_json::to_value(rec.port).unwrap_or(Value::Null),
            process: serde_json::to_value(&rec.process).unwrap_or(Value::Null),
        };
        let exe = rec
            .process
            .executable
            .as_deref()
            .unwrap_or(&rec.process.comm);
        let dest = ev.peer.unwrap_or(ev.local);
        return engine
            .connect_exhausted(subject, dest, ev.transport.as_str(), exe, wall_ns)
            .into_iter()
            .collect();
    }
    if is_listener(ev, rec.port) {
        return engine.listener(
            listener_facts(ev.local, &rec.network, rec.port, &rec.process),
            origin,
            wall_ns,
        );
    }
    if ev.kind == Kind::Close && ev.errno.is_none() && ev.peer.is_none() {
        let netns = (ev.netns != 0).then_some(ev.netns);
        return engine.closed(netns, ev.transport.as_str(), ev.local, wall_ns);
    }
    Vec::new()
}

/// Every socket the kernel has now, as port events of their holders.
fn scan_sockets() -> Vec<KernelEvent> {
    let found = match sockets::dump_all() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "start-up socket snapshot failed; sockets opened before the daemon are unknown");
            return Vec::new();
        }
    };
    let owners = sockets::owners(Path::new("/proc"));
    let netns = sockets::own_netns();
    let now = clock::monotonic_now();
    let events: Vec<KernelEvent> = found
        .iter()
        .map(|s| {
            let pid = owners.get(&s.inode).copied().unwrap_or(0);
            sockets::to_event(s, pid, netns, Path::new("/proc"), now)
        })
        .collect();
    let unowned = events.iter().filter(|e| e.pid == 0).count();
    tracing::info!(sockets = events.len(), unowned, "start-up socket snapshot");
    events
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What `portwatch status` is told.
struct StatusView<'a> {
    started: Instant,
    attached: &'a Attached,
    rates: &'a VecDeque<(Instant, [u64; 4])>,
    lost: u64,
}

impl StatusView<'_> {
    fn render(&self, p: &Pipeline) -> Value {
        let total: u64 = p.counts.iter().sum();
        let mut per_second = serde_json::Map::new();
        let (window, oldest) = match self.rates.front() {
            Some((at, counts)) => (at.elapsed().as_secs_f64(), *counts),
            None => (0.0, p.counts),
        };
        for (i, name) in KIND_NAMES.iter().enumerate() {
            let rate = if window > 0.0 {
                (p.counts[i] - oldest[i]) as f64 / window
            } else {
                0.0
            };
            per_second.insert((*name).into(), json!(rate));
        }
        let oldest_total: u64 = oldest.iter().sum();
        per_second.insert(
            "total".into(),
            json!(if window > 0.0 {
                (total - oldest_total) as f64 / window
            } else {
                0.0
            }),
        );
        let attach: BTreeMap<String, String> = self
            .attached
            .families
            .iter()
            .map(|f| (f.family.to_string(), f.strategy.to_string()))
            .collect();
        let mut v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "kernel": kernel_release(),
            "attach": attach,
            "events_per_second": per_second,
            "rate_window_seconds": window.round() as u64,
            "ring_buffer_bytes": self.attached.ring_buffer_bytes,
        });
        if let (Some(m), Value::Object(c)) = (v.as_object_mut(), p.counters(self.lost)) {
            m.extend(c);
        }
        v
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    privileges::check()?;
    // A bad policy is a clear error before anything is attached.
    let policy = match &opts.policy {
        Some(path) => Some(crate::policy::Policy::load(path)?),
        None => {
            tracing::info!("no policy file; listeners are logged but not judged (no alerts)");
            None
        }
    };
    // First: the status socket is also the lock that keeps a second daemon from starting.
    let status_server = StatusServer::bind(&opts.status_socket)?;
    // Before attaching: a store that cannot be opened (corrupt, unwritable) is a clear error now.
    let now_ns = clock::now_unix_ns();
    let (store, store_path) = crate::store::start(&opts.state_dir, opts.retention, now_ns)?;
    tracing::info!(path = %store_path.display(), "tenancy store open");
    let mut attached = attach::attach(&AttachOptions {
        mode: opts.attach,
        ring_buffer_bytes: opts.ring_buffer_bytes,
    })
    .context("attaching the eBPF programs")?;
    for f in &attached.families {
        tracing::info!(family = %f.family, strategy = %f.strategy, hooks = ?f.hooks, "attached");
    }
    spawn_ebpf_logger(&mut attached);
    let mut reader = EventReader::new(&mut attached.ebpf)?;
    let mut losses = LossCounter::new(&mut attached.ebpf)?;
    let sink =
        Sink::new(opts.stdout, opts.log_file.as_deref(), opts.rotation).with_context(|| {
            format!(
                "opening the event log {}",
                opts.log_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-"))
                    .display()
            )
        })?;
    let mut pipeline = Pipeline::new(sink, opts.cache);
    pipeline.tenancy = Some(Tenancy::new(store));
    pipeline.state_dir = opts.state_dir.clone();
    if let Some(p) = policy {
        tracing::info!(path = %p.path.display(), rules = p.rules.len(), "policy loaded");
        pipeline.alerts = Some(AlertEngine::new(p, &opts.state_dir));
    }
    // After attaching: a process started since is in the ring buffer's exec records.
    pipeline
        .processes
        .seed_from_proc(std::path::Path::new("/proc"));
    // After attaching, so a socket opened meanwhile is in the ring buffer, the scan, or both;
    // before the status line, so whoever waits for that line knows the scan is over.
    let snapshot = scan_sockets();
    pipeline.write_status(&attached, "start", 0);
    pipeline.write_snapshot(&snapshot);
    pipeline.check_required();
    pipeline.flush();
    // Parsing kernel BTF at start-up takes tens of MiB that are free now; give them back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let watchdog = systemd_ready(&attached);
    tracing::info!(socket = %status_server.path().display(), "ready");

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // The kernel side wakes us only when the ring fills up; this bounds the delay otherwise.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut clock_refresh = tokio::time::interval(Duration::from_secs(60));
    let status_every = Duration::from_secs(opts.status_interval_seconds.max(1));
    let mut status_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + status_every, status_every);
    // Pinged from this loop, so a daemon whose loop hangs stops pinging and is restarted.
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let (mut reconcile_tick, mut summary_tick) = policy_ticks(&pipeline);
    let canary_every = Duration::from_secs(opts.canary_interval_seconds.max(1));
    let mut canary_tick = tokio::time::interval(canary_every);
    // Losses since the last history sweep, and when it ran.
    let (mut swept_at_loss, mut last_sweep) = (0u64, Instant::now());
    let started = Instant::now();
    let mut rates: VecDeque<(Instant, [u64; 4])> = VecDeque::new();

    loop {
        tokio::select! {
            r = reader.wait() => {
                r.context("waiting on the ring buffer")?;
                reader.drain(&mut |b| pipeline.handle(b));
                pipeline.flush();
            }
            _ = drain_tick.tick() => {
                if reader.drain(&mut |b| pipeline.handle(b)) > 0 {
                    pipeline.flush();
                }
            }
            _ = tick.tick() => report_losses(&mut losses, &mut pipeline),
            _ = second.tick() => {
                pipeline.flush();
                pipeline.save_alerts();
                if losses.reported() > swept_at_loss && last_sweep.elapsed() >= Duration::from_secs(10) {
                    // What the kernel still queued first, so the sweep sees every release it can.
                    reader.drain(&mut |b| pipeline.handle(b));
                    pipeline.sweep_tenancy();
                    (swept_at_loss, last_sweep) = (losses.reported(), Instant::now());
                }
                if let Some(t) = &mut pipeline.tenancy {
                    t.store_open(clock::now_unix_ns(), false);
                }
                rates.push_back((Instant::now(), pipeline.counts));
                while rates.front().is_some_and(|(at, _)| at.elapsed() > RATE_WINDOW) {
                    rates.pop_front();
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            conn = status_server.accept() => match conn {
                Ok(stream) => {
                    let view = StatusView { started, attached: &attached, rates: &rates, lost: losses.reported() };
                    status::answer(stream, view.render(&pipeline).to_string().into_bytes());
                }
                Err(e) => tracing::warn!(error = %e, "status socket accept failed"),
            },
            _ = clock_refresh.tick() => pipeline.refresh(),
            _ = canary_tick.tick(), if opts.canary_interval_seconds > 0 => {
                report_losses(&mut losses, &mut pipeline);
                pipeline.canary_round(losses.reported());
                pipeline.flush();
            }
            _ = reconcile_tick.tick(), if pipeline.alerts.is_some() => {
                pipeline.reconcile();
                pipeline.flush();
            }
            _ = summary_tick.tick(), if pipeline.alerts.is_some() => {
                pipeline.summarise_alerts();
                pipeline.flush();
            }
            _ = status_tick.tick(), if opts.status_interval_seconds > 0 => {
                pipeline.write_status(&attached, "periodic", losses.reported());
                pipeline.flush();
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reopening the event log");
                pipeline.sink.reopen();
                if pipeline.reload_policy(opts.policy.as_deref()) {
                    (reconcile_tick, summary_tick) = policy_ticks(&pipeline);
                    pipeline.reconcile();
                    pipeline.flush();
                }
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining and exiting"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining and exiting"); break; }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let drained = reader.drain(&mut |b| pipeline.handle(b));
    report_losses(&mut losses, &mut pipeline);
    pipeline.write_status(&attached, "stop", losses.reported());
    pipeline.flush();
    pipeline.save_alerts();
    if let Some(t) = &mut pipeline.tenancy {
        t.store_open(0, true);
        t.store.finish();
    }
    tracing::info!(
        drained,
        events = pipeline.counts.iter().sum::<u64>(),
        lost = losses.reported(),
        lines_failed = pipeline.sink.stats.lines_failed,
        process_gone = pipeline.process_gone(),
        "stopped"
    );
    Ok(())
}

/// Reconciliation and summary intervals from the policy (first tick one interval from now).
fn policy_ticks(p: &Pipeline) -> (tokio::time::Interval, tokio::time::Interval) {
    let s = p
        .alerts
        .as_ref()
        .map(|e| e.policy.settings)
        .unwrap_or_default();
    let every = |secs: u64| {
        let d = Duration::from_secs(secs.max(1));
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    (
        every(s.reconcile_interval_seconds),
        every(s.summary_interval_seconds),
    )
}

/// Tells systemd (when it started us with Type=notify) that every program is attached, and
/// returns the watchdog ping interval if it asked for one.
fn systemd_ready(attached: &Attached) -> Option<Duration> {
    let strategies: Vec<String> = attached
        .families
        .iter()
        .map(|f| format!("{}={}", f.family, f.strategy))
        .collect();
    let status = format!("attached: {}", strategies.join(" "));
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    ) {
        tracing::warn!(error = %e, "telling systemd we are ready failed");
    }
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

fn report_losses(losses: &mut LossCounter, pipeline: &mut Pipeline) {
    match losses.poll() {
        Ok(Some((count, total))) => {
            pipeline.write_loss(count, total, "ring_buffer_full");
            pipeline.flush();
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "reading the loss counters failed"),
    }
}

/// eBPF-side diagnostics (aya-log) go to the daemon's tracing output.
fn spawn_ebpf_logger(attached: &mut Attached) {
    let logger = match aya_log::EbpfLogger::init(&mut attached.ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log channel unavailable");
            return;
        }
    };
    let mut fd = match crate::read::register(logger) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log channel unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
