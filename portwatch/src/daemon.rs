//! `portwatch run`: builds the stages (kernel → attribution → history and judgement → output),
//! then runs the loop that wires them to the ring buffer, timers, signals and the status socket.
//! Every step of the work belongs to a stage; this file only passes one stage's value to the next.
//! Under systemd it reports readiness only after every program is attached, and pings the
//! watchdog from the loop itself.
use std::{
    collections::VecDeque,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval, interval_at},
};

use crate::{
    attribution::{Attributor, RawScan, raw_scan},
    clock,
    facts::{Alert, Origin, PortFacts},
    history::{store, tenancy::Tenancy},
    judgement::{
        Judgement,
        policy::{self, Policy, Settings},
    },
    kernel::{
        Kernel,
        attach::{self, AttachOptions},
        decode::Record,
        sockets::SockDiagError,
    },
    ops::{
        config::RunOptions,
        metrics::{self, MetricsInput, Textfile},
        metrics_http::{self, Render},
        privileges,
        status::{self, Counters, Lost, Rates, StatusAnswer, StatusServer},
    },
    output::{Output, kernel_release, sink::Sink},
};

/// Longest a record waits in the ring buffer before the daemon reads it.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);
/// `status` reports event rates over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Records handled per turn of the loop.
const DRAIN_BATCH: usize = 4096;
/// No ring-buffer record is smaller (a fork/exit record and the ring's own header).
const MIN_RECORD_BYTES: usize = 32;
/// After losses, the history is checked against a socket scan at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The ring's fill is reported as its peak over this many seconds.
const RING_PEAK_SECONDS: usize = 10;

/// The stages after the kernel's: a kernel record in, lines out.
struct Stages {
    attribution: Attributor,
    history: Tenancy,
    judgement: Judgement,
    output: Output,
}

impl Stages {
    fn record(&mut self, r: Record) {
        let Some(ev) = self.attribution.lineage(r) else {
            return;
        };
        if self.judgement.absorb_canary(&ev) {
            return;
        }
        let facts = self.attribution.port(ev, Origin::Kernel);
        self.port(&facts);
    }

    fn port(&mut self, f: &PortFacts) {
        self.history.observe(f);
        let alerts = self.judgement.judge(f);
        self.output.port(f);
        self.holdings();
        self.alerts(alerts);
    }

    /// `holding` lines for the intervals the history closed (none unless `[log] holdings`).
    fn holdings(&mut self) {
        for i in self.history.take_closed() {
            self.output.holding(&i);
        }
    }

    fn alerts(&mut self, alerts: Vec<Alert>) {
        for a in alerts {
            if let Some(line) = self.output.alert(&a) {
                self.judgement.hook(line);
            }
        }
    }

    /// Every socket the kernel already had, as `snapshot` events: listeners started before the
    /// daemon are known. Runs after attaching, so a socket opened meanwhile is in the ring
    /// buffer, the scan, or both.
    fn snapshot(&mut self) {
        match self.attribution.scan(Origin::Snapshot) {
            Ok(scan) => {
                let unowned = scan.facts.iter().filter(|f| f.event.pid == 0).count();
                tracing::info!(
                    sockets = scan.facts.len(),
                    unowned,
                    "start-up socket snapshot"
                );
                for f in &scan.facts {
                    self.port(f);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "start-up socket snapshot failed; sockets opened before the daemon are unknown")
            }
        }
        let alerts = self.judgement.check_required();
        self.alerts(alerts);
    }

    /// A scan done off the loop comes back.
    fn scanned(&mut self, why: ScanFor, raw: Result<RawScan, SockDiagError>) {
        match (why, raw) {
            // The policy against a fresh scan, so a listener whose events were lost still alerts.
            // Only unconnected sockets can be listeners: only they are attributed.
            (ScanFor::Reconcile, Ok(raw)) => {
                let scan = self
                    .attribution
                    .attribute(raw, Origin::Reconcile, |s| s.peer.is_none());
                let alerts = self
                    .judgement
                    .reconcile(&scan, self.attribution.ephemeral());
                self.alerts(alerts);
                self.output.flush();
            }
            (ScanFor::Reconcile, Err(e)) => self.judgement.reconcile_failed(&e),
            // After losses: closes history intervals whose socket is gone (their release was
            // among the lost records), so `who` does not show them open forever.
            (ScanFor::Sweep, Ok(raw)) => {
                // Releases the kernel queued while the scan ran were handled first (the caller
                // drained), so no interval is closed as lost whose release was only queued.
                let closed = self.history.sweep_scan(&raw, clock::now_unix_ns());
                self.holdings();
                if closed > 0 {
                    tracing::info!(closed, "history intervals closed after lost release events");
                }
            }
            (ScanFor::Sweep, Err(e)) => {
                tracing::warn!(error = %e, "socket scan for the history failed");
            }
        }
    }
}

/// What a socket scan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanFor {
    Reconcile = 0,
    Sweep = 1,
}

type ScanResult = (ScanFor, Result<RawScan, SockDiagError>);

/// Socket scans (a sock_diag dump and a walk of every /proc/PID/fd) run on a blocking thread: on
/// a host with many sockets, or while a user churns them, they must not stall the event loop.
struct Scans {
    tx: tokio::sync::mpsc::Sender<ScanResult>,
    rx: tokio::sync::mpsc::Receiver<ScanResult>,
    in_flight: [bool; 2],
}

impl Scans {
    fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        Scans {
            tx,
            rx,
            in_flight: [false; 2],
        }
    }

    /// Starts a scan unless one for the same purpose is still running.
    fn request(&mut self, why: ScanFor) {
        if std::mem::replace(&mut self.in_flight[why as usize], true) {
            return;
        }
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.blocking_send((why, raw_scan(Path::new("/proc"))));
        });
    }

    fn done(&mut self, why: ScanFor) {
        self.in_flight[why as usize] = false;
    }
}

/// The kernel stage, the others, and what the loop keeps between turns.
struct Daemon {
    kernel: Kernel,
    stages: Stages,
    status_server: StatusServer,
    scans: Scans,
    started: Instant,
    /// Live event counts once a second over the rate window.
    rates: VecDeque<(Instant, [u64; crate::facts::Kind::ALL.len()])>,
    /// Losses when the history was last swept, and when.
    swept_at_loss: u64,
    last_sweep: Instant,
    /// The last drain stopped at its batch bound with records still queued.
    backlog: bool,
    /// The ring's fullest moment in each of the last seconds (None: not measurable).
    ring_peaks: VecDeque<Option<u64>>,
    textfile: Option<Textfile>,
    /// Scrapes of the `/metrics` endpoint waiting for a render; None: no endpoint.
    scrapes: Option<tokio::sync::mpsc::Receiver<Render>>,
    /// The last render for scrapes, and when: scrapers get at most one render a second out of
    /// the loop, however many ask.
    scraped: Option<(Instant, std::sync::Arc<str>)>,
}

impl Daemon {
    /// Everything before the loop, in the order that makes failures clear and nothing missed.
    fn start(opts: &RunOptions) -> anyhow::Result<Self> {
        // Large allocations (the BTF parsed to attach, ~20 MB) always get their own mapping,
        // given back when freed. glibc otherwise raises this threshold after the first such
        // free, and the next large buffers come from the heap, where what was freed around
        // them stays resident: the start-up peak moved by 4 MiB with unrelated changes to the
        // eBPF object (29 -> 33 MiB).
        // SAFETY: mallopt only tunes the allocator.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        // A bad policy is a clear error before anything is attached.
        let policy = match &opts.policy {
            Some(path) => Some(Policy::load_trusted(path)?),
            None => {
                tracing::info!("no policy file; listeners are logged but not judged (no alerts)");
                None
            }
        };
        // First: the status socket is also the lock that keeps a second daemon from starting.
        let status_server = StatusServer::bind(&opts.status_socket)?;
        // A metrics port that is taken or not loopback is a start-up error, not a silent gap.
        let scrapes = opts.metrics.listen.map(metrics_http::start).transpose()?;
        // Before attaching: a store that cannot be opened (corrupt, unwritable) is a clear error.
        let (store, store_path) =
            store::start(&opts.state_dir, opts.retention, clock::now_unix_ns())?;
        tracing::info!(path = %store_path.display(), "tenancy store open");
        let mut attached = attach::attach(&AttachOptions {
            mode: opts.attach,
            ring_buffer_bytes: opts.ring_buffer_bytes,
            tables: opts.tables,
        })
        .context("attaching the eBPF programs")?;
        // The kernel's BTF, parsed to attach, is freed now: give it back before anything else
        // allocates on top of it (it was the start-up peak).
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        for f in &attached.families {
            tracing::info!(family = %f.family, strategy = %f.strategy, hooks = ?f.hooks, "attached");
        }
        crate::kernel::spawn_ebpf_logger(&mut attached);
        let kernel = Kernel::new(attached)?;
        let sink =
            Sink::new(opts.stdout, opts.log_file.as_deref(), opts.rotation).with_context(|| {
                let log = opts.log_file.as_deref().unwrap_or(Path::new("-"));
                format!("opening the event log {}", log.display())
            })?;
        let mut attribution = Attributor::new(
            "/proc",
            opts.cache.processes,
            opts.cache.users,
            opts.cache.process_table,
        );
        // After attaching: a process started since is in the ring buffer's exec records.
        attribution.processes.seed_from_proc(Path::new("/proc"));
        let mut d = Daemon {
            kernel,
            stages: Stages {
                attribution,
                history: Tenancy::new(store).keep_closed(opts.holdings),
                judgement: Judgement::new(policy, &opts.state_dir),
                output: Output::new(sink, opts.format),
            },
            status_server,
            scans: Scans::new(),
            started: Instant::now(),
            rates: VecDeque::new(),
            swept_at_loss: 0,
            last_sweep: Instant::now(),
            backlog: false,
            ring_peaks: VecDeque::with_capacity(RING_PEAK_SECONDS),
            textfile: opts.metrics.textfile.clone().map(Textfile::new),
            scrapes,
            scraped: None,
        };
        // The status line comes first, the snapshot's events after it: whoever waits for that
        // line knows the scan is over once the snapshot lines follow.
        d.status_line("start");
        d.stages.snapshot();
        d.stages.output.flush();
        Ok(d)
    }

    /// One batch of what the kernel queued. A batch is bounded so that under any load the loop
    /// gets back to its timers (watchdog, loss reports, status) between batches; `backlog` says
    /// more is waiting, and the loop drains it again as soon as nothing else is due.
    fn drain(&mut self) -> usize {
        let stages = &mut self.stages;
        let n = self.kernel.drain(DRAIN_BATCH, &mut |r| stages.record(r));
        self.backlog = n == DRAIN_BATCH;
        if n > 0 {
            self.stages.output.flush();
            self.stages.history.store.flush();
        }
        n
    }

    /// What the kernel queued (at shutdown, and before a history sweep is applied): at most a
    /// full ring's worth, so producers that keep up cannot hold the loop here.
    fn drain_all(&mut self) -> usize {
        let ring_records = self.kernel.ring_buffer_bytes() as usize / MIN_RECORD_BYTES;
        let mut total = 0;
        while total < ring_records {
            let n = self.drain();
            total += n;
            if n < DRAIN_BATCH {
                break;
            }
        }
        total
    }

    fn report_losses(&mut self) {
        let losses = self.kernel.poll_losses();
        for l in &losses {
            self.stages.output.loss(l.count, l.total, l.reason);
        }
        if !losses.is_empty() {
            self.stages.output.flush();
        }
    }

    fn every_second(&mut self) {
        self.stages.output.flush();
        self.stages.judgement.save();
        if self.kernel.lost() > self.swept_at_loss && self.last_sweep.elapsed() >= SWEEP_EVERY {
            // What the kernel still queued first, so the sweep sees every release it can.
            self.drain_all();
            self.scans.request(ScanFor::Sweep);
            (self.swept_at_loss, self.last_sweep) = (self.kernel.lost(), Instant::now());
        }
        self.stages.history.store_open(clock::now_unix_ns(), false);
        // Whatever a scan, the snapshot or a reload closed since the last drain.
        self.stages.history.store.flush();
        self.rates
            .push_back((Instant::now(), self.stages.output.counts()));
        while self
            .rates
            .front()
            .is_some_and(|(at, _)| at.elapsed() > RATE_WINDOW)
        {
            self.rates.pop_front();
        }
        if self.ring_peaks.len() == RING_PEAK_SECONDS {
            self.ring_peaks.pop_front();
        }
        self.ring_peaks.push_back(self.kernel.take_ring_peak());
    }

    /// The Prometheus metrics of this moment; empty when they could not be rendered (said).
    fn metrics(&self) -> String {
        let counters = self.counters();
        let input = MetricsInput {
            counters: &counters,
            families: &self.kernel.attached.families,
            ring_buffer_bytes: self.kernel.ring_buffer_bytes(),
            ring_peak_bytes: self.ring_peaks.iter().flatten().copied().max(),
            history_queue: self.stages.history.store.queue(),
            alerts_written: self.stages.output.alerts_written(),
            textfile_write_failed: self.textfile.as_ref().map_or(0, Textfile::failed),
            holding_lines: self.stages.output.holdings_written(),
        };
        metrics::render(&input).unwrap_or_else(|e| {
            tracing::error!(error = %e, "rendering the metrics failed");
            String::new()
        })
    }

    /// A scrape's answer: the last render if it is under a second old.
    fn scrape(&mut self, back: Render) {
        let text = match &self.scraped {
            Some((at, text)) if at.elapsed() < Duration::from_secs(1) => text.clone(),
            _ => {
                let text: std::sync::Arc<str> = self.metrics().into();
                self.scraped = Some((Instant::now(), text.clone()));
                text
            }
        };
        let _ = back.send(text);
    }

    fn write_textfile(&mut self) {
        if self.textfile.is_none() {
            return;
        }
        let text = self.metrics();
        if let Some(t) = &mut self.textfile
            && !text.is_empty()
        {
            t.write(&text);
        }
    }

    fn canary_round(&mut self) {
        self.report_losses();
        let alerts = self.stages.judgement.canary_round(self.kernel.lost());
        self.stages.alerts(alerts);
        self.stages.output.flush();
    }

    fn summarise(&mut self) {
        let alerts = self.stages.judgement.summarise();
        self.stages.alerts(alerts);
        self.stages.output.flush();
    }

    /// SIGHUP: reopen the log, reload the policy (a daemon started without one takes up the
    /// default file once it exists). True when a new policy is in force.
    fn reload(&mut self, opts: &RunOptions) -> bool {
        tracing::info!("SIGHUP: reopening the event log");
        self.stages.output.sink.reopen();
        let path = opts.policy.clone().or_else(|| {
            let default = Path::new(policy::DEFAULT_PATH);
            default.exists().then(|| default.to_path_buf())
        });
        let installed = self.stages.judgement.reload(path.as_deref());
        if installed {
            self.scans.request(ScanFor::Reconcile);
        }
        installed
    }

    fn counters(&self) -> Counters {
        let s = &self.stages;
        let kernel = self.kernel.counters();
        Counters {
            events: s.output.events(),
            lost: Lost {
                ring_buffer: kernel.ring_buffer_lost,
                pending_table_full: kernel.pending_full,
                pending_stale: kernel.pending_stale,
                socket_table_full: kernel.sockets_full,
                log_write_failed: s.output.lines_failed(),
                stdout_write_failed: s.output.stdout_failed(),
                undecodable: kernel.undecodable,
                history_commit_failed: s.history.store.commit_failed(),
            },
            attribution: s.attribution.counters(),
            caches: crate::attribution::CacheCounters {
                process_json: s.output.process_json.figures(),
                history_cut_processes: s.history.cut_figures(),
                history_process_rows: s.history.store.process_rows(),
                ..s.attribution.caches()
            },
            log: s.output.log(),
            store: Some(s.history.counters()),
            judgement: s.judgement.counters(),
        }
    }

    fn status_line(&mut self, reason: &'static str) {
        let counters = self.counters();
        self.stages.output.status(
            self.kernel.families(),
            self.kernel.ring_buffer_bytes(),
            reason,
            counters,
        );
    }

    fn answer_status(&self, conn: std::io::Result<tokio::net::UnixStream>) {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "status socket accept failed"),
        };
        let now = self.stages.output.counts();
        let (window, then) = match self.rates.front() {
            Some((at, counts)) => (at.elapsed().as_secs_f64(), *counts),
            None => (0.0, now),
        };
        let answer = StatusAnswer {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            kernel: kernel_release(),
            attach: self.kernel.strategies(),
            events_per_second: Rates::between(now, then, window),
            rate_window_seconds: window.round() as u64,
            ring_buffer_bytes: self.kernel.ring_buffer_bytes(),
            counters: self.counters(),
        };
        match serde_json::to_vec(&answer) {
            Ok(body) => status::answer(stream, body),
            Err(e) => tracing::error!(error = %e, "serializing the status answer failed"),
        }
    }

    /// SIGINT/SIGTERM: what the kernel already queued is written, then the last status line.
    fn stop(mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let drained = self.drain_all();
        self.report_losses();
        self.status_line("stop");
        self.stages.output.flush();
        self.stages.judgement.finish();
        self.stages.history.store_open(0, true);
        self.stages.history.store.finish();
        // The metrics textfile goes with `self` (Textfile's Drop), on this path and any other.
        tracing::info!(
            drained,
            events = self.stages.output.events().total,
            lost = self.kernel.lost(),
            lines_failed = self.stages.output.lines_failed(),
            process_gone = self.stages.attribution.counters().process_gone,
            "stopped"
        );
    }
}

/// The loop's clocks.
struct Timers {
    drain: Interval,
    losses: Interval,
    second: Interval,
    clock: Interval,
    status: Interval,
    watchdog: Interval,
    canary: Interval,
    reconcile: Interval,
    summary: Interval,
    metrics: Interval,
}

impl Timers {
    fn new(opts: &RunOptions, watchdog: Option<Duration>, policy: Settings) -> Self {
        let status_every = Duration::from_secs(opts.status_interval_seconds.max(1));
        let (reconcile, summary) = policy_timers(policy);
        Timers {
            // The kernel side wakes us only when the ring fills up; this bounds the delay.
            drain: interval(DRAIN_INTERVAL),
            losses: interval(Duration::from_millis(250)),
            second: interval(Duration::from_secs(1)),
            clock: interval(Duration::from_secs(60)),
            status: interval_at(tokio::time::Instant::now() + status_every, status_every),
            // Pinged from the loop, so a daemon whose loop hangs stops pinging and is restarted.
            watchdog: interval(watchdog.unwrap_or(Duration::from_secs(3600))),
            canary: interval(Duration::from_secs(opts.canary_interval_seconds.max(1))),
            reconcile,
            summary,
            metrics: interval(Duration::from_secs(opts.metrics.interval_seconds.max(1))),
        }
    }
}

/// Reconciliation and summary intervals from the policy (first tick one interval from now).
fn policy_timers(s: Settings) -> (Interval, Interval) {
    let every = |secs: u64| {
        let d = Duration::from_secs(secs.max(1));
        let mut i = interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    };
    (
        every(s.reconcile_interval_seconds),
        every(s.summary_interval_seconds),
    )
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    privileges::check()?;
    // Before anything that can be waited for (the status line, READY=1): a SIGTERM sent the
    // moment the daemon looks up must drain and exit 0, not kill it with the default action.
    let mut signals = Signals::install()?;
    let mut d = Daemon::start(&opts)?;
    let watchdog = systemd_ready(&d.kernel);
    tracing::info!(socket = %d.status_server.path().display(), "ready");
    let mut t = Timers::new(&opts, watchdog, d.stages.judgement.settings());
    loop {
        tokio::select! {
            r = d.kernel.wait() => {
                r.context("waiting on the ring buffer")?;
                d.drain();
            }
            _ = t.drain.tick() => { d.drain(); }
            // Ready at once while a backlog waits; select! picks fairly among what is ready, so
            // timers and signals still get their turns under a sustained storm.
            _ = std::future::ready(()), if d.backlog => { d.drain(); }
            _ = t.losses.tick() => d.report_losses(),
            _ = t.second.tick() => d.every_second(),
            _ = t.watchdog.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            conn = d.status_server.accept() => d.answer_status(conn),
            _ = t.clock.tick() => d.stages.attribution.refresh(),
            _ = t.canary.tick(), if opts.canary_interval_seconds > 0 => d.canary_round(),
            _ = t.reconcile.tick(), if d.stages.judgement.has_policy() => {
                d.scans.request(ScanFor::Reconcile);
            }
            Some((why, raw)) = d.scans.rx.recv() => {
                d.scans.done(why);
                d.drain_all();
                d.stages.scanned(why, raw);
            }
            _ = t.summary.tick(), if d.stages.judgement.has_policy() => d.summarise(),
            _ = t.metrics.tick(), if d.textfile.is_some() => d.write_textfile(),
            Some(back) = metrics_http::next(&mut d.scrapes) => d.scrape(back),
            _ = t.status.tick(), if opts.status_interval_seconds > 0 => {
                d.status_line("periodic");
                d.stages.output.flush();
            }
            _ = signals.hup.recv() => {
                if d.reload(&opts) {
                    (t.reconcile, t.summary) = policy_timers(d.stages.judgement.settings());
                }
            }
            _ = signals.term.recv() => { tracing::info!("SIGTERM: draining and exiting"); break; }
            _ = signals.int.recv() => { tracing::info!("SIGINT: draining and exiting"); break; }
        }
    }
    d.stop();
    Ok(())
}

/// Tells systemd (when it started us with Type=notify) that every program is attached, and
/// returns the watchdog ping interval if it asked for one.
fn systemd_ready(kernel: &Kernel) -> Option<Duration> {
    let strategies: Vec<String> = kernel
        .strategies()
        .iter()
        .map(|(f, s)| format!("{f}={s}"))
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
