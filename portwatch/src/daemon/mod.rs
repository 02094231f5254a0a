//! `portwatch run`: attach, then read → decode → enrich → sink until SIGINT/SIGTERM, and drain
//! what the kernel already queued before exiting. Under systemd it reports readiness only after
//! every program is attached, and pings the watchdog from the event loop itself.
mod alerting;
mod status_view;

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use self::{alerting::judge_event, status_view::StatusView};
use crate::{
    attribution::lineage::ProcessTable,
    attribution::ports::EphemeralRange,
    attribution::{Attribution, Enricher},
    clock::{self, WallClock},
    history::tenancy::Tenancy,
    judgement::alert::AlertEngine,
    judgement::canary::Canary,
    judgement::hook::HookCounters,
    kernel::attach::{self, AttachMode, AttachOptions, Attached},
    kernel::decode::{self, KernelEvent, Kind, Record},
    kernel::read::{EventReader, LossCounter},
    kernel::sockets,
    ops::privileges,
    ops::status::{self, StatusServer},
    output::schema::{
        DaemonInfo, Header, Host, KernelInfo, Loss, LossRecord, PortRecord, SCHEMA_VERSION,
        StatusRecord,
    },
    output::sink::{Rotation, Sink},
};

#[derive(Debug)]
pub struct RunOptions {
    pub attach: AttachMode,
    pub log_file: Option<PathBuf>,
    pub stdout: bool,
    pub rotation: Option<Rotation>,
    pub ring_buffer_bytes: u32,
    pub status_socket: PathBuf,
    pub cache: crate::ops::config::CacheConfig,
    pub state_dir: PathBuf,
    pub retention: crate::history::store::Retention,
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
    pub fn new(sink: Sink, cache: crate::ops::config::CacheConfig) -> Self {
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

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    privileges::check()?;
    // Before anything that can be waited for (the status line, READY=1): a SIGTERM sent the
    // moment the daemon looks up must drain and exit 0, not kill it with the default action.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // A bad policy is a clear error before anything is attached.
    let policy = match &opts.policy {
        Some(path) => Some(crate::judgement::policy::Policy::load(path)?),
        None => {
            tracing::info!("no policy file; listeners are logged but not judged (no alerts)");
            None
        }
    };
    // First: the status socket is also the lock that keeps a second daemon from starting.
    let status_server = StatusServer::bind(&opts.status_socket)?;
    // Before attaching: a store that cannot be opened (corrupt, unwritable) is a clear error now.
    let now_ns = clock::now_unix_ns();
    let (store, store_path) =
        crate::history::store::start(&opts.state_dir, opts.retention, now_ns)?;
    tracing::info!(path = %store_path.display(), "tenancy store open");
    let mut attached = attach::attach(&AttachOptions {
        mode: opts.attach,
        ring_buffer_bytes: opts.ring_buffer_bytes,
    })
    .context("attaching the eBPF programs")?;
    // The kernel's BTF, parsed to attach, is freed now: give it back before anything else
    // allocates on top of it (it was the start-up peak).
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
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
    let watchdog = systemd_ready(&attached);
    tracing::info!(socket = %status_server.path().display(), "ready");

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
                // A daemon started without a policy takes up the default file once it exists.
                let policy = opts.policy.clone().or_else(|| {
                    let default = Path::new(crate::judgement::policy::DEFAULT_PATH);
                    default.exists().then(|| default.to_path_buf())
                });
                if pipeline.reload_policy(policy.as_deref()) {
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
    let mut fd = match crate::kernel::read::register(logger) {
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
