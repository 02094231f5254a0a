//! `portwatch status`: the running daemon answers one JSON object on a unix socket that only root
//! can open (mode 0600 in a 0700 directory). The socket doubles as the single-instance lock: a
//! second daemon finds it answering and refuses to start.
use std::{
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt as _;

use crate::{
    attribution::{AttributionCounters, CacheCounters, CacheFigures},
    facts::Kind,
    history::tenancy::HistoryCounters,
    judgement::JudgementCounters,
    output::{EventCounts, LogFigures, text::printable},
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("another portwatch is already running: its status socket {0} answers")]
    AlreadyRunning(String),
    #[error("status socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no portwatch daemon answers on {path} ({source}); is it running? (`systemctl status portwatch`)"
    )]
    NoDaemon {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("permission denied on {0}: the status socket is root-only")]
    Denied(String),
    #[error("the daemon on {path} sent an unreadable answer: {source}")]
    BadAnswer {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub struct StatusServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl StatusServer {
    pub fn bind(path: &Path) -> Result<Self, StatusError> {
        let io = |source| StatusError::Socket {
            path: path.display().to_string(),
            source,
        };
        // The directory first: nothing in a directory others can write is removed or trusted.
        crate::files::ensure_parent(path).map_err(io)?;
        crate::files::check_parent(path, "status socket").map_err(io)?;
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StatusError::AlreadyRunning(path.display().to_string()));
            }
            // Left behind by a daemon that died: nobody answers on it.
            std::fs::remove_file(path).map_err(io)?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next client.
    pub async fn accept(&self) -> std::io::Result<tokio::net::UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends the answer without holding up the event loop.
pub fn answer(mut stream: tokio::net::UnixStream, mut body: Vec<u8>) {
    body.push(b'\n');
    tokio::spawn(async move {
        let write = async {
            stream.write_all(&body).await?;
            stream.shutdown().await
        };
        if tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .is_err()
        {
            tracing::debug!("status client too slow; dropped");
        }
    });
}

/// Client side: asks the daemon.
pub fn query(path: &Path) -> Result<StatusAnswer, StatusError> {
    let p = || path.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => StatusError::Denied(p()),
        _ => StatusError::NoDaemon {
            path: p(),
            source: e,
        },
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| StatusError::BadAnswer {
            path: p(),
            source: Box::new(e),
        })?;
    serde_json::from_str(&text).map_err(|e| StatusError::BadAnswer {
        path: p(),
        source: Box::new(e),
    })
}

/// What every stage did and could not do: the `counters` of `status` lines and of the status
/// socket's answer. Each part is its stage's own type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events: EventCounts,
    pub lost: Lost,
    pub attribution: AttributionCounters,
    pub caches: CacheCounters,
    pub log: LogFigures,
    /// None: the daemon runs without a history store.
    pub store: Option<HistoryCounters>,
    #[serde(flatten)]
    pub judgement: JudgementCounters,
}

/// What was lost, by where: the kernel's ring buffer, the log file, the decoder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    pub ring_buffer: u64,
    /// Calls not recorded: the kernel's pending table was full.
    #[serde(default)]
    pub pending_table_full: u64,
    /// Calls parked in the kernel whose return never came (a skipped kretprobe, a connect made
    /// by io_uring or the kernel itself).
    #[serde(default)]
    pub pending_stale: u64,
    /// Sockets the kernel's per-socket table could not hold.
    #[serde(default)]
    pub socket_table_full: u64,
    pub log_write_failed: u64,
    /// Lines stdout did not take (a closed or broken pipe).
    #[serde(default)]
    pub stdout_write_failed: u64,
    pub undecodable: u64,
    /// History intervals the store could not commit.
    #[serde(default)]
    pub history_commit_failed: u64,
}

/// Live events per second over the rate window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub bind: f64,
    pub listen: f64,
    pub connect: f64,
    pub close: f64,
    pub total: f64,
}

impl Rates {
    /// From per-kind counts now and `window_seconds` ago.
    pub fn between(
        now: [u64; Kind::ALL.len()],
        then: [u64; Kind::ALL.len()],
        window_seconds: f64,
    ) -> Self {
        let rate = |n: u64, o: u64| {
            if window_seconds > 0.0 {
                n.saturating_sub(o) as f64 / window_seconds
            } else {
                0.0
            }
        };
        let k = |kind: Kind| rate(now[kind.index()], then[kind.index()]);
        Rates {
            bind: k(Kind::Bind),
            listen: k(Kind::Listen),
            connect: k(Kind::Connect),
            close: k(Kind::Close),
            total: rate(now.iter().sum(), then.iter().sum()),
        }
    }
}

/// The status socket's answer (`portwatch status --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusAnswer {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub kernel: String,
    /// Strategy per hook family.
    pub attach: BTreeMap<String, String>,
    pub events_per_second: Rates,
    pub rate_window_seconds: u64,
    pub ring_buffer_bytes: u32,
    #[serde(flatten)]
    pub counters: Counters,
}

/// The human-readable form of a status answer. Paths are escaped: a log path is the operator's,
/// but nothing a person reads passes control characters through.
pub fn render(v: &StatusAnswer) -> String {
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<18} {val}\n"));
    let c = &v.counters;
    line("version", printable(&v.version).into_owned());
    line("pid", v.pid.to_string());
    line("uptime", format!("{} s", v.uptime_seconds));
    line("kernel", printable(&v.kernel).into_owned());
    let attach: Vec<String> = v.attach.iter().map(|(f, s)| format!("{f}={s}")).collect();
    line("attach", attach.join(" "));
    let e = &c.events;
    let r = &v.events_per_second;
    for (kind, n, rate) in [
        ("bind", e.bind, r.bind),
        ("listen", e.listen, r.listen),
        ("connect", e.connect, r.connect),
        ("close", e.close, r.close),
        ("total", e.total, r.total),
    ] {
        line(
            &format!("events {kind}"),
            format!(
                "{n} ({rate:.1}/s over the last {} s)",
                v.rate_window_seconds
            ),
        );
    }
    line("lost (kernel)", c.lost.ring_buffer.to_string());
    line("pending table full", c.lost.pending_table_full.to_string());
    line("pending stale", c.lost.pending_stale.to_string());
    line("socket table full", c.lost.socket_table_full.to_string());
    line("log lines failed", c.lost.log_write_failed.to_string());
    line("stdout failed", c.lost.stdout_write_failed.to_string());
    line("history failed", c.lost.history_commit_failed.to_string());
    line("undecodable", c.lost.undecodable.to_string());
    line("process gone", c.attribution.process_gone.to_string());
    let cache = |f: &CacheFigures| format!("{}/{} ({} evicted)", f.size, f.max, f.evictions);
    line(
        "caches",
        format!(
            "processes {}, users {}, process table {}",
            cache(&c.caches.processes),
            cache(&c.caches.users),
            cache(&c.caches.process_table)
        ),
    );
    line("snapshot events", e.snapshot.to_string());
    if let Some(s) = &c.store {
        line(
            "history",
            format!(
                "{} open sockets, {} intervals not recorded, {} closed after lost releases",
                s.open_sockets, s.writes_dropped, s.swept
            ),
        );
    }
    let canary = &c.judgement.canary;
    line(
        "canary",
        if canary.blind.is_empty() {
            format!(
                "every hook family seen ({} of {} rounds complete)",
                canary.rounds.complete, canary.rounds.rounds
            )
        } else {
            format!(
                "BLIND: {} deliver no events",
                printable(&canary.blind.join(", "))
            )
        },
    );
    match &c.judgement.alerts {
        None => line("alerts", "no policy".into()),
        Some(a) => {
            let c = &a.counters;
            line(
                "alerts",
                format!(
                    "{} rules from {}; {} raised, {} repeats, {} rate-limited, {} listeners known",
                    a.rules,
                    printable(&a.policy.to_string_lossy()),
                    c.raised,
                    c.repeats,
                    c.rate_limited,
                    a.listeners
                ),
            );
            line(
                "alert state",
                format!(
                    "{} remembered, {} forgotten, {} listeners forgotten, {} state writes failed, {} reloads ({} failed)",
                    a.remembered,
                    c.forgotten,
                    c.listeners_forgotten,
                    c.state_write_failed,
                    a.reloads,
                    a.reload_failures
                ),
            );
            let h = &a.hook;
            line(
                "alert hook",
                format!(
                    "{} started, {} failed, {} timed out, {} skipped",
                    h.started, h.failed, h.timed_out, h.skipped
                ),
            );
        }
    }
    line(
        "log",
        match &c.log.path {
            Some(p) => format!(
                "{} ({} bytes)",
                printable(&p.to_string_lossy()),
                c.log.bytes
            ),
            None => "stdout only".into(),
        },
    );
    out
}
