//! Prometheus metrics: the daemon's counters in the text exposition format (0.0.4), which both
//! node_exporter's textfile collector and a Prometheus scrape read. The default is a textfile
//! (`Textfile`), written atomically every interval, that works under the hardened unit; the
//! loopback `/metrics` endpoint (`metrics_http`) is opt-in. Every label value is one of the
//! daemon's own names (kinds, causes, caches, families, strategies), never text a process chose.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use prometheus::{Encoder as _, Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::{
    facts::{AlertKind, Kind},
    kernel::attach::{FailedCalls, Family, FamilyAttachment},
    ops::status::Counters,
};

/// Everything a render reads, gathered by the daemon's loop.
pub struct MetricsInput<'a> {
    pub counters: &'a Counters,
    pub families: &'a [FamilyAttachment],
    pub ring_buffer_bytes: u32,
    /// The most bytes queued in the ring when a drain began, over the last few seconds; None:
    /// not measurable.
    pub ring_peak_bytes: Option<u64>,
    /// (intervals waiting for the history writer, the queue's size).
    pub history_queue: (u64, u64),
    pub alerts_written: [u64; AlertKind::ALL.len()],
    pub textfile_write_failed: u64,
    /// `holding` lines written (`[log] holdings`).
    pub holding_lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("building metric {name}: {source}")]
    Build {
        name: String,
        #[source]
        source: prometheus::Error,
    },
    #[error("encoding the metrics: {0}")]
    Encode(#[source] prometheus::Error),
}

/// A registry under the `portwatch_` prefix, filled with the values of one moment.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("portwatch".into()), None).map_err(|source| {
            MetricsError::Build {
                name: "registry".into(),
                source,
            }
        })?;
        Ok(Self { registry })
    }

    fn err(name: &str) -> impl FnOnce(prometheus::Error) -> MetricsError + '_ {
        move |source| MetricsError::Build {
            name: name.into(),
            source,
        }
    }

    /// A counter family: one series per row of label values.
    fn counters<'v>(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        rows: impl IntoIterator<Item = (Vec<&'v str>, u64)>,
    ) -> Result<(), MetricsError> {
        let vec = IntCounterVec::new(Opts::new(name, help), labels).map_err(Self::err(name))?;
        for (values, n) in rows {
            vec.get_metric_with_label_values(&values)
                .map_err(Self::err(name))?
                .inc_by(n);
        }
        self.registry
            .register(Box::new(vec))
            .map_err(Self::err(name))
    }

    fn counter(&self, name: &str, help: &str, n: u64) -> Result<(), MetricsError> {
        let c = IntCounter::new(name, help).map_err(Self::err(name))?;
        c.inc_by(n);
        self.registry.register(Box::new(c)).map_err(Self::err(name))
    }

    fn gauges<'v>(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        rows: impl IntoIterator<Item = (Vec<&'v str>, f64)>,
    ) -> Result<(), MetricsError> {
        let vec = GaugeVec::new(Opts::new(name, help), labels).map_err(Self::err(name))?;
        for (values, v) in rows {
            vec.get_metric_with_label_values(&values)
                .map_err(Self::err(name))?
                .set(v);
        }
        self.registry
            .register(Box::new(vec))
            .map_err(Self::err(name))
    }

    fn gauge(&self, name: &str, help: &str, v: f64) -> Result<(), MetricsError> {
        let g = Gauge::new(name, help).map_err(Self::err(name))?;
        g.set(v);
        self.registry.register(Box::new(g)).map_err(Self::err(name))
    }

    fn encode(self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(MetricsError::Encode)?;
        String::from_utf8(out)
            .map_err(|e| MetricsError::Encode(prometheus::Error::Msg(format!("not UTF-8: {e}"))))
    }
}

/// The hook family whose strategy produced events of `kind`.
fn family_of(kind: Kind) -> Family {
    match kind {
        Kind::Bind => Family::Bind,
        Kind::Listen => Family::Listen,
        Kind::Connect => Family::Connect,
        Kind::Close => Family::Release,
        Kind::ConnectResult => Family::Handshake,
    }
}

fn failed_calls(f: Option<FailedCalls>) -> &'static str {
    match f {
        Some(FailedCalls::All) => "all",
        Some(FailedCalls::Handshake) => "handshake",
        Some(FailedCalls::None) => "none",
        None => "",
    }
}

/// The metrics of this moment, in the text exposition format.
pub fn render(m: &MetricsInput<'_>) -> Result<String, MetricsError> {
    let b = Builder::new()?;
    let c = m.counters;
    b.gauges(
        "build_info",
        "Always 1; the running version.",
        &["version"],
        [(vec![env!("CARGO_PKG_VERSION")], 1.0)],
    )?;
    let strategy_names: Vec<(String, String, &str)> = m
        .families
        .iter()
        .map(|f| {
            (
                f.family.to_string(),
                f.strategy.to_string(),
                failed_calls(f.failed_calls),
            )
        })
        .collect();
    b.gauges(
        "attach_info",
        "Always 1 per hook family: the strategy it is attached with, and which failed calls it reports.",
        &["family", "strategy", "failed_calls"],
        strategy_names
            .iter()
            .map(|(f, s, fc)| (vec![f.as_str(), s.as_str(), *fc], 1.0)),
    )?;
    // `strategy_names` is in `m.families`' order.
    let strategy_of = |family: Family| {
        m.families
            .iter()
            .zip(&strategy_names)
            .find(|(f, _)| f.family == family)
            .map_or("none", |(_, (_, s, _))| s.as_str())
    };
    let e = &c.events;
    let by_kind = |k: Kind| match k {
        Kind::Bind => e.bind,
        Kind::Listen => e.listen,
        Kind::Connect => e.connect,
        Kind::Close => e.close,
        Kind::ConnectResult => e.connect_result,
    };
    b.counters(
        "events_total",
        "Port events the kernel reported and the daemon wrote, by kind and by the strategy of the hook family that reports them.",
        &["kind", "strategy"],
        Kind::ALL
            .iter()
            .map(|&k| (vec![k.as_str(), strategy_of(family_of(k))], by_kind(k))),
    )?;
    b.counter(
        "holding_lines_total",
        "holding lines written, one per port holding that ended ([log] holdings).",
        m.holding_lines,
    )?;
    b.counter(
        "snapshot_events_total",
        "Sockets found by a socket scan (start-up snapshot), written as snapshot events.",
        e.snapshot,
    )?;
    let l = &c.lost;
    b.counters(
        "lost_total",
        "What could not be recorded or written, by cause (each is also a loss or status line).",
        &["cause"],
        [
            ("ring_buffer_full", l.ring_buffer),
            ("pending_table_full", l.pending_table_full),
            ("pending_stale", l.pending_stale),
            ("socket_table_full", l.socket_table_full),
            ("log_write_failed", l.log_write_failed),
            ("stdout_write_failed", l.stdout_write_failed),
            ("undecodable", l.undecodable),
            ("history_commit_failed", l.history_commit_failed),
        ]
        .map(|(cause, n)| (vec![cause], n)),
    )?;
    let a = &c.attribution;
    b.counters(
        "attribution_total",
        "Events whose process needed more than a /proc read: gone before it was read (process_gone), of those attributed from the process table (from_process_table), or running another image by then (image_changed).",
        &["case"],
        [
            ("process_gone", a.process_gone),
            ("from_process_table", a.from_process_table),
            ("image_changed", a.image_changed),
        ]
        .map(|(case, n)| (vec![case], n)),
    )?;
    let caches = [
        ("processes", c.caches.processes),
        ("users", c.caches.users),
        ("process_table", c.caches.process_table),
        ("forks", c.caches.forks),
        ("process_json", c.caches.process_json),
        ("threads", c.caches.threads),
        ("history_cut_processes", c.caches.history_cut_processes),
        ("history_process_rows", c.caches.history_process_rows),
    ];
    b.gauges(
        "cache_entries",
        "Entries in each bounded cache.",
        &["cache"],
        caches.map(|(name, f)| (vec![name], f.size as f64)),
    )?;
    b.gauges(
        "cache_capacity_entries",
        "The most entries each cache holds.",
        &["cache"],
        caches.map(|(name, f)| (vec![name], f.max as f64)),
    )?;
    b.counters(
        "cache_evictions_total",
        "Entries each cache forgot to stay within its bound.",
        &["cache"],
        caches.map(|(name, f)| (vec![name], f.evictions)),
    )?;
    b.gauge(
        "ring_buffer_size_bytes",
        "Size of the kernel-to-daemon ring buffer.",
        f64::from(m.ring_buffer_bytes),
    )?;
    if let Some(peak) = m.ring_peak_bytes {
        b.gauge(
            "ring_buffer_fill_ratio",
            "The fullest the ring buffer was when the daemon came to read it, over the last 10 seconds (0 to 1; at 1 records are lost).",
            (peak as f64 / f64::from(m.ring_buffer_bytes.max(1))).min(1.0),
        )?;
    }
    if let Some(h) = &c.store {
        b.gauge(
            "history_open_intervals",
            "Sockets the tenancy history holds open.",
            h.open_sockets as f64,
        )?;
        b.gauge(
            "history_queue_intervals",
            "Intervals queued for the history writer or in the batch it is committing (its lag behind the event log).",
            m.history_queue.0 as f64,
        )?;
        b.gauge(
            "history_queue_capacity_intervals",
            "The most intervals the history writer's queue holds; beyond it they are dropped.",
            m.history_queue.1 as f64,
        )?;
        b.counters(
            "history_intervals_total",
            "History intervals not recorded as they happened: dropped (writer behind), forgotten (open table full: not followed to their end), swept (closed by a scan after a lost release), commit_failed (disk full, broken store).",
            &["outcome"],
            [
                ("dropped", h.writes_dropped),
                ("forgotten", h.forgotten),
                ("swept", h.swept),
                ("commit_failed", h.commit_failed),
            ]
            .map(|(o, n)| (vec![o], n)),
        )?;
        b.counter(
            "history_bound_failures_total",
            "Times the history writer could not delete the rows beyond [store] max_rows (it tries again after its next batch).",
            h.bound_failed,
        )?;
    }
    b.counters(
        "alerts_total",
        "Alert lines written, by kind.",
        &["kind"],
        AlertKind::ALL
            .iter()
            .map(|k| (vec![k.as_str()], m.alerts_written[k.index()])),
    )?;
    if let Some(al) = &c.judgement.alerts {
        let ac = &al.counters;
        b.counters(
            "alert_occurrences_total",
            "Occurrences not written as a new alert line: counted into an earlier alert (repeat) or held back by the rate limit (rate_limited, summarised later).",
            &["outcome"],
            [("repeat", ac.repeats), ("rate_limited", ac.rate_limited)].map(|(o, n)| (vec![o], n)),
        )?;
        b.gauge(
            "policy_rules",
            "Rules in the listener policy in force.",
            al.rules as f64,
        )?;
        b.counters(
            "policy_reloads_total",
            "Policy reloads (SIGHUP), by result.",
            &["result"],
            [
                ("ok", al.reloads.saturating_sub(al.reload_failures)),
                ("failed", al.reload_failures),
            ]
            .map(|(r, n)| (vec![r], n)),
        )?;
        b.gauge(
            "listeners_known",
            "Listeners the policy engine knows of.",
            al.listeners as f64,
        )?;
        let h = &al.hook;
        b.counters(
            "alert_hook_runs_total",
            "Alert hook commands, by outcome.",
            &["outcome"],
            [
                ("succeeded", h.succeeded),
                ("failed", h.failed),
                ("timed_out", h.timed_out),
                ("skipped", h.skipped),
            ]
            .map(|(o, n)| (vec![o], n)),
        )?;
    }
    let canary = &c.judgement.canary;
    let watched = [
        Family::Bind,
        Family::Listen,
        Family::Connect,
        Family::Release,
    ]
    .map(|f| f.to_string());
    b.gauges(
        "canary_blind",
        "1 when the hook family's canary events stopped coming back (the family is blind), else 0.",
        &["family"],
        watched.iter().map(|name| {
            let blind = canary.blind.contains(name);
            (vec![name.as_str()], if blind { 1.0 } else { 0.0 })
        }),
    )?;
    let r = &canary.rounds;
    b.counters(
        "canary_rounds_total",
        "Canary rounds by result: complete (every event came back), unjudged (records were lost meanwhile), failed (its sockets could not be made); the rest are blind or under way.",
        &["result"],
        [
            ("complete", r.complete),
            ("unjudged", r.unjudged),
            ("failed", r.failed),
        ]
        .map(|(o, n)| (vec![o], n)),
    )?;
    b.counter("canary_rounds_sent_total", "Canary rounds sent.", r.rounds)?;
    b.counter(
        "log_lines_total",
        "Lines written to the event log file.",
        c.log.lines_written,
    )?;
    b.counter(
        "log_written_bytes_total",
        "Bytes written to the event log file since it was last rotated or reopened.",
        c.log.bytes,
    )?;
    b.counter(
        "log_rotations_total",
        "Rotations of the event log file.",
        c.log.rotations,
    )?;
    b.counter(
        "metrics_textfile_write_failed_total",
        "Writes of the metrics textfile that failed.",
        m.textfile_write_failed,
    )?;
    #[cfg(target_os = "linux")]
    b.registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(Builder::err("process"))?;
    b.encode()
}

/// The metrics file node_exporter's textfile collector reads. Each write goes to a temporary
/// file in the same directory and is renamed over the old one, so a scrape never reads half a
/// file. A missing directory (node_exporter not installed yet) is not an error: the file appears
/// once it exists. The file is removed when the daemon stops (or its `Textfile` is dropped, on any
/// way out), so its metrics go absent with it.
///
/// The directory is opened without following a link and must be root's (or the daemon's user's)
/// and writable by no one else: Debian's `/var/lib/prometheus` belongs to the prometheus user, who could otherwise put a
/// link in place of `node-exporter` and have root write and remove the file elsewhere. Every file
/// operation is relative to that directory's descriptor.
pub struct Textfile {
    path: PathBuf,
    failed: u64,
    /// The last write failed or found no directory (said once per streak, not every interval).
    said: bool,
}

#[derive(Debug, thiserror::Error)]
enum TextfileError {
    #[error("no such directory")]
    NoDirectory,
    #[error("{0}")]
    Io(#[from] nix::Error),
    #[error(
        "the directory is not root's (or the daemon's user's), or others can write it (mode {mode:o}, owner {uid}): not written"
    )]
    Untrusted { mode: u32, uid: u32 },
    #[error("the path names no file")]
    NoName,
}

impl Textfile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            failed: 0,
            said: false,
        }
    }

    pub fn failed(&self) -> u64 {
        self.failed
    }

    pub fn write(&mut self, text: &str) {
        match self.replace(text.as_bytes()) {
            Ok(()) => {
                if self.said {
                    tracing::info!(path = %self.path.display(), "metrics textfile written");
                }
                self.said = false;
            }
            Err(TextfileError::NoDirectory) => {
                if !self.said {
                    tracing::info!(path = %self.path.display(), "no metrics textfile directory (is prometheus-node-exporter installed?); the file is written once it exists");
                    self.said = true;
                }
            }
            Err(e) => {
                self.failed += 1;
                if !self.said {
                    // Under the unit, a directory made after the daemon started is read-only to
                    // it: ReadWritePaths= binds only what existed at start.
                    let hint = match e {
                        TextfileError::Io(nix::Error::EROFS) => {
                            "; if the directory appeared after portwatch started, restart portwatch"
                        }
                        _ => "",
                    };
                    tracing::warn!(path = %self.path.display(), error = %e, failed = self.failed, "writing the metrics textfile failed{hint}");
                    self.said = true;
                }
            }
        }
    }

    /// The directory, opened without following a link, checked; and the file's name in it.
    fn dir(&self) -> Result<(std::os::fd::OwnedFd, &std::ffi::OsStr), TextfileError> {
        use nix::fcntl::{OFlag, open};
        let name = self.path.file_name().ok_or(TextfileError::NoName)?;
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let fd = match open(
            dir,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Err(TextfileError::NoDirectory),
            Err(e) => return Err(e.into()),
        };
        let st = nix::sys::stat::fstat(&fd)?;
        let own = st.st_uid == 0 || st.st_uid == nix::unistd::geteuid().as_raw();
        if !own || st.st_mode & 0o022 != 0 {
            return Err(TextfileError::Untrusted {
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
            });
        }
        Ok((fd, name))
    }

    /// Writes `.NAME.tmp` (mode 0644: node_exporter reads it as its own user), then renames it
    /// over NAME. The dot keeps the collector from reading the partial file (it reads `*.prom`
    /// only). No fsync: readers need the rename's atomicity, not durability, and the loop must
    /// not wait on the disk.
    fn replace(&self, bytes: &[u8]) -> Result<(), TextfileError> {
        use nix::{
            fcntl::{OFlag, openat, renameat},
            sys::stat::Mode,
            unistd::{UnlinkatFlags, unlinkat},
        };
        let (dir, name) = self.dir()?;
        let tmp = format!(".{}.tmp", name.to_string_lossy());
        // What a crash left behind; a link is removed, not followed.
        let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let fd = openat(
            &dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        // The unit's UMask=0027 would leave it unreadable to node_exporter's user.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o644))?;
        let mut f = std::fs::File::from(fd);
        let written = f
            .write_all(bytes)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|()| renameat(&dir, tmp.as_str(), &dir, name));
        if let Err(e) = written {
            let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e.into());
        }
        Ok(())
    }

    /// A stopped daemon's metrics must not look current.
    fn remove(&self) {
        let Ok((dir, name)) = self.dir() else { return };
        match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "removing the metrics textfile failed")
            }
        }
    }
}

impl Drop for Textfile {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Counters {
        serde_json::from_value(serde_json::json!({
            "events": {"bind": 3, "listen": 2, "connect": 7, "close": 4, "connect_result": 1, "total": 17, "snapshot": 5},
            "lost": {"ring_buffer": 9, "log_write_failed": 0, "undecodable": 0},
            "attribution": {"process_gone": 1, "from_process_table": 1},
            "caches": {
                "processes": {"size": 1, "max": 4096, "evictions": 0},
                "users": {"size": 1, "max": 4096, "evictions": 0},
                "process_table": {"size": 10, "max": 32768, "evictions": 2}
            },
            "log": {"path": null, "bytes": 0, "rotations": 0, "lines_written": 0},
            "store": {"open_sockets": 4, "writes_dropped": 0, "forgotten": 0, "swept": 0},
            "alerts": null,
            "canary": {"blind": ["listen"], "rounds": {"rounds": 3, "complete": 2, "unjudged": 0, "failed": 0}}
        }))
        .unwrap()
    }

    /// The value of the sample whose line starts with `series` (name and labels as written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_are_typed_and_named_by_convention() {
        let c = counters();
        let mut alerts = [0; AlertKind::ALL.len()];
        alerts[AlertKind::UnexpectedListener.index()] = 6;
        let text = render(&MetricsInput {
            counters: &c,
            families: &[],
            ring_buffer_bytes: 1 << 20,
            ring_peak_bytes: Some(1 << 18),
            history_queue: (12, 4096),
            alerts_written: alerts,
            textfile_write_failed: 0,
            holding_lines: 0,
        })
        .unwrap();
        // The 0.0.4 text format names a counter's family with its `_total` (OpenMetrics would
        // not, and node_exporter would read it untyped).
        assert!(
            text.contains("# TYPE portwatch_events_total counter"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "portwatch_events_total{kind=\"connect\",strategy=\"none\"}"
            ),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "portwatch_lost_total{cause=\"ring_buffer_full\"}"),
            Some(9.0)
        );
        assert_eq!(
            sample(
                &text,
                "portwatch_alerts_total{kind=\"unexpected_listener\"}"
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(&text, "portwatch_canary_blind{family=\"listen\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "portwatch_canary_blind{family=\"bind\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "portwatch_ring_buffer_fill_ratio"),
            Some(0.25)
        );
        assert_eq!(
            sample(&text, "portwatch_history_queue_intervals"),
            Some(12.0)
        );
        assert!(text.contains("# TYPE portwatch_cache_evictions_total counter"));
        assert!(text.contains("# TYPE portwatch_process_resident_memory_bytes gauge"));
        assert!(text.contains("# TYPE portwatch_process_cpu_seconds_total counter"));
        // Every sample's family has HELP and TYPE, and every name is a valid metric name.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                name.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
                "{name}"
            );
            assert!(name.starts_with("portwatch_"), "{name}");
        }
    }

    #[test]
    fn textfile_is_replaced_whole_and_removed_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portwatch.prom");
        let mut t = Textfile::new(path.clone());
        t.write("a 1\n");
        t.write("a 2\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by node_exporter's user");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
        drop(t);
        assert!(!path.exists());
        // No directory: nothing written, nothing counted as failed.
        let mut t = Textfile::new(dir.path().join("absent/portwatch.prom"));
        t.write("a 1\n");
        assert_eq!(t.failed(), 0);
        // A link in place of the directory is not followed; a directory others can write is
        // not trusted.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let mut t = Textfile::new(link.join("portwatch.prom"));
        t.write("a 1\n");
        assert_eq!(t.failed(), 1);
        assert!(!path.exists());
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut t = Textfile::new(open.join("portwatch.prom"));
        t.write("a 1\n");
        assert_eq!(t.failed(), 1);
        assert!(!open.join("portwatch.prom").exists());
    }
}
