//! `portwatch run`: attach, then read → decode → enrich → sink until SIGINT/SIGTERM, and drain
//! what the kernel already queued before exiting.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context as _;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attach::{self, AttachMode, AttachOptions, Attached},
    clock::{self, WallClock},
    decode,
    enrich::Enricher,
    event::{
        DaemonInfo, Header, Host, KernelInfo, Loss, LossRecord, PortRecord, SCHEMA_VERSION,
        StatusRecord,
    },
    privileges,
    read::{EventReader, LossCounter},
    sink::Sink,
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub attach: AttachMode,
    pub log_file: Option<PathBuf>,
    pub stdout: bool,
    pub ring_buffer_bytes: u32,
}

/// decode → enrich → serialize → sink, with the run's sequence numbers.
pub struct Pipeline {
    host: String,
    clock: WallClock,
    enricher: Enricher,
    pub sink: Sink,
    seq: u64,
    pub events: u64,
    pub decode_errors: u64,
}

impl Pipeline {
    pub fn new(sink: Sink) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            host,
            clock: WallClock::sample(),
            enricher: Enricher::default(),
            sink,
            seq: 0,
            events: 0,
            decode_errors: 0,
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
        let ev = match decode::decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.decode_errors += 1;
                tracing::warn!(error = %e, total = self.decode_errors, "undecodable record dropped");
                return;
            }
        };
        self.events += 1;
        let attr = self.enricher.attribute(&ev);
        let ts = clock::rfc3339(self.clock.to_utc(ev.monotonic_ns));
        let header = Self::header(&mut self.seq, &self.host, ev.kind.as_str(), ts);
        let rec = PortRecord::new(header, &ev, attr);
        Self::push(&mut self.sink, &rec);
    }

    pub fn write_status(&mut self, attached: &Attached) {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
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
            kernel: KernelInfo { release },
            attach,
            ring_buffer_bytes: attached.ring_buffer_bytes,
        };
        Self::push(&mut self.sink, &rec);
    }

    pub fn write_loss(&mut self, count: u64, total: u64) {
        tracing::warn!(count, total, "ring buffer full: kernel records lost");
        let header = Self::header(&mut self.seq, &self.host, "loss", clock::now_rfc3339());
        let rec = LossRecord {
            header,
            loss: Loss {
                count,
                total,
                reason: "ring_buffer_full",
            },
        };
        Self::push(&mut self.sink, &rec);
    }

    pub fn refresh_clock(&mut self) {
        self.clock = WallClock::sample();
    }
}

/// Longest a record waits in the ring buffer before the daemon reads it.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    privileges::check()?;
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
    let sink = Sink::new(opts.stdout, opts.log_file.as_deref()).with_context(|| {
        format!(
            "opening the event log {}",
            opts.log_file
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        )
    })?;
    let mut pipeline = Pipeline::new(sink);
    pipeline.write_status(&attached);
    pipeline.sink.flush();
    // Parsing kernel BTF at start-up takes tens of MiB that are free now; give them back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // The kernel side wakes us only when the ring fills up; this bounds the delay otherwise.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut clock_refresh = tokio::time::interval(Duration::from_secs(60));

    loop {
        tokio::select! {
            r = reader.wait() => {
                r.context("waiting on the ring buffer")?;
                reader.drain(&mut |b| pipeline.handle(b));
                pipeline.sink.flush();
            }
            _ = drain_tick.tick() => {
                if reader.drain(&mut |b| pipeline.handle(b)) > 0 {
                    pipeline.sink.flush();
                }
            }
            _ = tick.tick() => report_losses(&mut losses, &mut pipeline),
            _ = clock_refresh.tick() => pipeline.refresh_clock(),
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reopening the event log");
                pipeline.sink.reopen();
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining and exiting"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining and exiting"); break; }
        }
    }
    let drained = reader.drain(&mut |b| pipeline.handle(b));
    report_losses(&mut losses, &mut pipeline);
    pipeline.sink.flush();
    tracing::info!(
        drained,
        events = pipeline.events,
        lines_failed = pipeline.sink.stats.lines_failed,
        vanished = pipeline.enricher_vanished(),
        "stopped"
    );
    Ok(())
}

impl Pipeline {
    pub fn enricher_vanished(&self) -> u64 {
        self.enricher.vanished
    }
}

fn report_losses(losses: &mut LossCounter, pipeline: &mut Pipeline) {
    match losses.poll() {
        Ok(Some((count, total))) => {
            pipeline.write_loss(count, total);
            pipeline.sink.flush();
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
