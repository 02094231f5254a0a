//! Output: the only stage that writes. It stamps every line with the schema version, a sequence
//! number, the host and a timestamp, serializes it (`schema`, serde types only) and hands it to
//! the sink (stdout, the log file, rotation). It counts what it wrote and what it could not.
pub mod ecs;
pub mod errno;
pub mod line;
pub mod otel;
pub mod schema;
pub mod sink;
pub mod text;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::{
    schema::{
        AlertRecord, DaemonInfo, Header, Host, KernelInfo, Line, Loss, LossRecord, PortRecord,
        SCHEMA_VERSION, StatusRecord,
    },
    sink::Sink,
};
use crate::{
    clock,
    facts::{Alert, AlertKind, Kind, Origin, PortFacts, ProcessFacts},
    output::text::printable,
};

/// How lines are written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The portwatch schema (docs/schema.md).
    #[default]
    Portwatch,
    /// Elastic Common Schema 8.x (`ecs.rs`).
    Ecs,
    /// OpenTelemetry logs, one OTLP/JSON request per line (`otel.rs`).
    Otel,
}

/// Events written, by kind, and those the start-up scan wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    pub bind: u64,
    pub listen: u64,
    pub connect: u64,
    pub close: u64,
    /// Ends of non-blocking connects' handshakes.
    #[serde(default)]
    pub connect_result: u64,
    pub total: u64,
    pub snapshot: u64,
}

impl EventCounts {
    fn of(counts: [u64; Kind::ALL.len()], snapshot: u64) -> Self {
        EventCounts {
            bind: counts[Kind::Bind.index()],
            listen: counts[Kind::Listen.index()],
            connect: counts[Kind::Connect.index()],
            close: counts[Kind::Close.index()],
            connect_result: counts[Kind::ConnectResult.index()],
            total: counts.iter().sum(),
            snapshot,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFigures {
    /// None: stdout only.
    pub path: Option<std::path::PathBuf>,
    pub bytes: u64,
    pub rotations: u64,
    pub lines_written: u64,
}

/// What every line is stamped with: the host and a sequence number.
struct Stamp {
    host: String,
    boot_id: Option<String>,
    /// The `host` object as serde writes it, for `line::write_port`.
    host_json: String,
    seq: u64,
    clock: clock::StampClock,
}

impl Stamp {
    fn new(host: String, boot_id: Option<String>) -> Self {
        let host_json = serde_json::to_string(&Host {
            name: &host,
            boot_id: boot_id.as_deref(),
        })
        .unwrap_or_else(|_| "null".into());
        Stamp {
            host,
            boot_id,
            host_json,
            seq: 0,
            clock: clock::StampClock::default(),
        }
    }

    fn header<'a>(&'a mut self, event: &'static str, timestamp: &'a str) -> Header<'a> {
        self.seq += 1;
        Header {
            schema: SCHEMA_VERSION,
            timestamp,
            seq: self.seq,
            host: Host {
                name: &self.host,
                boot_id: self.boot_id.as_deref(),
            },
            event,
        }
    }
}

/// Each process's `process` object, serialized once and written again while the facts stay the
/// same: a storm from one process, or a server's stream of events, escapes its command line once
/// rather than per line (string escaping was the event loop's largest cost). Attribution shares
/// one `ProcessFacts` among the events it found the same facts for (`Attributor::process`), so
/// the cache is keyed by that allocation: an entry holds its `Arc`, so no other facts can take
/// its address while it is cached, and changed facts are a new allocation, serialized afresh.
pub struct ProcessJson {
    cache: crate::hashing::Lru<usize, (Arc<ProcessFacts>, Box<serde_json::value::RawValue>)>,
    evictions: u64,
}

impl ProcessJson {
    const MAX: usize = 1024;

    fn new() -> Self {
        Self {
            cache: crate::hashing::lru(Self::MAX),
            evictions: 0,
        }
    }

    /// `p` as JSON, from the cache when these facts were written before (`null` should
    /// serializing fail, which plain strings and numbers cannot).
    fn get(&mut self, p: &Arc<ProcessFacts>) -> &serde_json::value::RawValue {
        let key = Arc::as_ptr(p) as usize;
        if !self.cache.contains(&key) {
            match serde_json::value::to_raw_value(&**p) {
                Ok(json) => {
                    if self.cache.push(key, (p.clone(), json)).is_some() {
                        self.evictions += 1;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "serializing a process failed");
                    return serde_json::value::RawValue::NULL;
                }
            }
        }
        self.cache
            .get(&key)
            .map_or(serde_json::value::RawValue::NULL, |(_, json)| &**json)
    }

    pub fn figures(&self) -> crate::attribution::CacheFigures {
        crate::attribution::CacheFigures {
            size: self.cache.len(),
            max: Self::MAX,
            evictions: self.evictions,
        }
    }
}

pub struct Output {
    format: Format,
    stamp: Stamp,
    pub sink: Sink,
    pub process_json: ProcessJson,
    /// Live events written, by `Kind::index`.
    counts: [u64; Kind::ALL.len()],
    snapshot: u64,
    /// Alert lines written, by `AlertKind::index`.
    alerts: [u64; AlertKind::ALL.len()],
    /// `holding` lines written.
    holdings: u64,
}

impl Output {
    pub fn new(sink: Sink, format: Format) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            format,
            stamp: Stamp::new(
                host,
                std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .ok()
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty()),
            ),
            sink,
            process_json: ProcessJson::new(),
            counts: [0; Kind::ALL.len()],
            snapshot: 0,
            alerts: [0; AlertKind::ALL.len()],
            holdings: 0,
        }
    }

    fn write<T: Serialize>(sink: &mut Sink, format: Format, rec: &T) {
        let pushed = match format {
            Format::Portwatch => sink.push_json(rec),
            // The portwatch record, its fields then put where ECS has them.
            Format::Ecs => serde_json::to_value(rec).and_then(|v| sink.push_json(&ecs::line(&v))),
            Format::Otel => serde_json::to_value(rec).and_then(|v| sink.push_json(&otel::line(&v))),
        };
        if let Err(e) = pushed {
            tracing::error!(error = %e, "serializing an event failed");
        }
    }

    /// A bind, listen, connect or close line, stamped with the time it happened.
    pub fn port(&mut self, f: &PortFacts) {
        match f.origin {
            Origin::Snapshot => self.snapshot += 1,
            _ => self.counts[f.event.kind.index()] += 1,
        }
        let ts = self.stamp.clock.format(f.wall_ns);
        let process = self.process_json.get(&f.process);
        let body = PortRecord::new(f, process);
        match self.format {
            Format::Portwatch => {
                let stamp = &mut self.stamp;
                stamp.seq += 1;
                let header = Header {
                    schema: SCHEMA_VERSION,
                    timestamp: ts.as_str(),
                    seq: stamp.seq,
                    host: Host {
                        name: &stamp.host,
                        boot_id: stamp.boot_id.as_deref(),
                    },
                    event: f.event.kind.as_str(),
                };
                self.sink
                    .push_with(|buf| line::write_port(buf, &header, &stamp.host_json, &body));
            }
            format => {
                let header = self.stamp.header(f.event.kind.as_str(), ts.as_str());
                Self::write(&mut self.sink, format, &Line { header, body });
            }
        }
    }

    /// An `alert` line and a WARN diagnostic (journald priority warning under systemd). Returns
    /// the line, for the exec hook.
    pub fn alert(&mut self, a: &Alert) -> Option<String> {
        let ts = clock::now_rfc3339();
        let header = self.stamp.header("alert", &ts);
        let body = AlertRecord::new(a);
        let line = match serde_json::to_string(&Line { header, body }) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "serializing an alert failed");
                return None;
            }
        };
        let p = a.subject.process.as_ref();
        tracing::warn!(
            kind = a.body.kind.as_str(),
            severity = a.body.severity.as_str(),
            count = a.body.count,
            summary = a.body.summary,
            pid = p.map(|p| p.pid),
            executable = p
                .and_then(|p| p.executable.as_deref())
                .map(printable)
                .as_deref(),
            local = a
                .subject
                .network
                .as_ref()
                .map(|n| format!("{}:{}", n.local.address, n.local.port))
                .as_deref(),
            origin = a.origin.as_str(),
            "ALERT: {}",
            printable(&a.body.rule)
        );
        match self.format {
            Format::Portwatch => self.sink.push(line.as_bytes()),
            format => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => Self::write(&mut self.sink, format, &v),
                Err(e) => {
                    tracing::error!(error = %e, "re-reading an alert failed");
                    return Some(line);
                }
            },
        }
        self.alerts[a.body.kind.index()] += 1;
        // The exec hook gets the portwatch record (docs/policy.md), whatever the log's format.
        Some(line)
    }

    /// A `holding` line: one holding of a port that has just ended (`[log] holdings`), stamped
    /// with the time it ended.
    pub fn holding(&mut self, i: &crate::history::store::Interval) {
        let Some(closed_ns) = i.closed_ns else { return };
        let at = |ns: i64| clock::rfc3339(chrono::DateTime::from_timestamp_nanos(ns));
        let closed = at(closed_ns);
        let header = self.stamp.header("holding", &closed);
        let ipv4 = i.local.address.is_ipv4();
        let body = schema::HoldingRecord {
            role: i.role,
            network: crate::facts::Network {
                transport: i.transport,
                ip_type: if ipv4 {
                    crate::facts::IpType::Ipv4
                } else {
                    crate::facts::IpType::Ipv6
                },
                local: i.local,
                peer: i.peer,
                netns: i.netns,
            },
            process: &i.process,
            opened: at(i.opened_ns),
            closed: closed.clone(),
            duration_ns: closed_ns.saturating_sub(i.opened_ns).max(0) as u64,
            close_note: i.close_note.as_deref(),
            cookie: (i.cookie != 0).then_some(i.cookie),
        };
        self.holdings += 1;
        Self::write(&mut self.sink, self.format, &Line { header, body });
    }

    /// A `status` line: at start (`reason` "start"), periodically and at shutdown ("stop").
    pub fn status<A: Serialize, C: Serialize>(
        &mut self,
        attach: A,
        ring_buffer_bytes: u32,
        reason: &'static str,
        counters: C,
    ) {
        let ts = clock::now_rfc3339();
        let header = self.stamp.header("status", &ts);
        let body = StatusRecord {
            daemon: DaemonInfo {
                version: env!("CARGO_PKG_VERSION"),
                pid: std::process::id(),
            },
            kernel: KernelInfo {
                release: kernel_release(),
            },
            attach,
            ring_buffer_bytes,
            reason,
            counters,
        };
        Self::write(&mut self.sink, self.format, &Line { header, body });
    }

    /// A `loss` line (ring-buffer losses are logged at once; log-write losses by `flush`, once
    /// the notice actually lands).
    pub fn loss(&mut self, count: u64, total: u64, reason: &'static str) {
        tracing::warn!(count, total, reason, "events lost");
        self.push_loss(count, total, reason);
    }

    fn push_loss(&mut self, count: u64, total: u64, reason: &'static str) {
        let ts = clock::now_rfc3339();
        let header = self.stamp.header("loss", &ts);
        let body = LossRecord {
            loss: Loss {
                count,
                total,
                reason,
            },
        };
        Self::write(&mut self.sink, self.format, &Line { header, body });
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

    pub fn events(&self) -> EventCounts {
        EventCounts::of(self.counts, self.snapshot)
    }

    /// `holding` lines written.
    pub fn holdings_written(&self) -> u64 {
        self.holdings
    }

    /// Alert lines written, by `AlertKind::index`.
    pub fn alerts_written(&self) -> [u64; AlertKind::ALL.len()] {
        self.alerts
    }

    /// Live events by `Kind::index`, for rates.
    pub fn counts(&self) -> [u64; Kind::ALL.len()] {
        self.counts
    }

    pub fn log(&self) -> LogFigures {
        LogFigures {
            path: self.sink.log_path().map(std::path::Path::to_path_buf),
            bytes: self.sink.log_bytes(),
            rotations: self.sink.stats.rotations,
            lines_written: self.sink.stats.lines_written,
        }
    }

    /// Lines the log file could not take.
    pub fn lines_failed(&self) -> u64 {
        self.sink.stats.lines_failed
    }

    /// Lines stdout could not take.
    pub fn stdout_failed(&self) -> u64 {
        self.sink.stats.stdout_failed
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_serialized_once_per_set_of_facts() {
        let mut cache = ProcessJson::new();
        let p = Arc::new(ProcessFacts {
            pid: 7,
            comm: "nginx".into(),
            command_line: Some(vec!["nginx".into(), "-g".into()]),
            ..ProcessFacts::default()
        });
        let first = cache.get(&p).get().to_string();
        assert!(
            first.contains("\"command_line\":[\"nginx\",\"-g\"]"),
            "{first}"
        );
        assert_eq!(cache.get(&p.clone()).get(), first);
        // Other facts (another thread of it, then another image) are other allocations: each
        // written as it is.
        let thread = Arc::new(ProcessFacts {
            tid: 8,
            ..ProcessFacts::clone(&p)
        });
        assert!(cache.get(&thread).get().contains("\"tid\":8"));
        let image = Arc::new(ProcessFacts {
            command_line: Some(vec!["sh".into()]),
            ..ProcessFacts::clone(&p)
        });
        let after = cache.get(&image).get().to_string();
        assert!(
            after.contains("[\"sh\"]") && !after.contains("-g"),
            "{after}"
        );
        assert_eq!(cache.get(&p).get(), first);
        assert_eq!(cache.figures().size, 3);
        // Bounded: the least recently written are forgotten, and counted.
        let many: Vec<_> = (0..ProcessJson::MAX as u32)
            .map(|pid| {
                Arc::new(ProcessFacts {
                    pid,
                    ..ProcessFacts::default()
                })
            })
            .collect();
        for q in &many {
            cache.get(q);
        }
        let f = cache.figures();
        assert_eq!(
            (f.size, f.max, f.evictions),
            (ProcessJson::MAX, ProcessJson::MAX, 3)
        );
    }
}
