//! `portwatch who PORTS`: who holds the ports now (from the kernel's socket tables, no daemon
//! needed) and who held them before (from the tenancy store), narrowed by process filters.
use std::{path::Path, sync::Arc};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    attribution::{Attributor, ports::EphemeralRange, raw_scan},
    clock,
    facts::{Container, Endpoint, Origin, PortInfo, ProcessFacts, SocketRole, Transport, User},
    history::store,
    kernel::sockets,
    views::{
        filter::{ProcessFilter, Subject},
        identity::{self, Identity, Judge},
        ports::{self, PortSpec},
        table::Table,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum WhoError {
    #[error(transparent)]
    Port(#[from] ports::PortSpecError),
    #[error(
        "`{0}` is not a time: use RFC 3339 (2026-11-27T04:51:23Z) or an age like 10m, 2h30m, 3d"
    )]
    Time(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("reading the tenancy store: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("reading the kernel's socket table: {0}")]
    Sockets(#[from] sockets::SockDiagError),
}

/// RFC 3339, or an age before `now` ("10m", "10m ago", "1h30m").
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, WhoError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = s.trim().trim_end_matches("ago").trim();
    let d = humantime::parse_duration(age).map_err(|_| WhoError::Time(s.to_string()))?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| WhoError::Time(s.to_string()))
}

pub struct Query {
    pub ports: PortSpec,
    /// Unix ns window; `None` = all history.
    pub window: Option<(i64, i64)>,
    pub include_now: bool,
    pub filter: ProcessFilter,
    /// Only listening sockets.
    pub listening: bool,
    /// History rows at most.
    pub limit: usize,
}

impl Query {
    fn wants(&self, port: u16, transport: Transport, role: SocketRole, holder: &Holder) -> bool {
        self.ports.matches(port, transport)
            && (!self.listening || role == SocketRole::Listening)
            && (self.filter.is_empty() || self.filter.matches(&holder.subject()))
    }
}

/// Where a holding was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The kernel's socket table, now.
    Now,
    /// The tenancy store.
    History,
}

/// One holding of a port: one JSON object of `who -o json`, one row of the table. What is not
/// known is left out, never written as null or 0.
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub source: Source,
    pub port: PortInfo,
    pub transport: Transport,
    pub local: Endpoint,
    pub role: SocketRole,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    pub process: Holder,
    /// RFC 3339; absent for sockets found now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Absent while the socket is still open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why `to` is what it is, when not a release the kernel reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip)]
    from_ns: Option<i64>,
    #[serde(skip)]
    to_ns: Option<i64>,
}

/// The holder as `who` shows it: what the history keeps of a process, nothing it does not know.
/// `known: false` (and nothing else) when no process holds the socket: a kernel socket, or a
/// holder out of sight (another PID namespace's /proc, a descriptor passed away and closed).
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    pub known: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The cgroup path, which tells a unit the system manager set from one a user named (absent
    /// in rows an older daemon wrote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// What of the unit and container can be trusted.
    #[serde(skip)]
    pub identity: Identity,
}

impl Holder {
    fn of(p: ProcessFacts, judge: &Judge) -> Self {
        if p.pid == 0 {
            return Holder {
                known: false,
                pid: None,
                executable: None,
                command_line: None,
                user: None,
                unit: None,
                container: None,
                cgroup: None,
                identity: Identity::default(),
            };
        }
        let identity = judge.identity(p.cgroup.as_deref(), p.unit.as_deref(), p.container.as_ref());
        Holder {
            known: true,
            pid: Some(p.pid),
            executable: p.executable,
            command_line: p.command_line,
            user: Some(p.user),
            unit: p.unit,
            container: p.container,
            cgroup: p.cgroup,
            identity,
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            pid: self.pid,
            executable: self.executable.as_deref(),
            uid: self.user.as_ref().map(|u| u.id),
            user: self.user.as_ref().and_then(|u| u.name.as_deref()),
            unit: self.identity.unit.clone(),
            container: self.identity.container.as_ref().map(|c| c.id.clone()),
        }
    }
}

pub struct Answer {
    pub rows: Vec<Holding>,
    /// What the reader should know: no history, gaps in it, rows left out.
    pub warnings: Vec<String>,
}

/// Holdings: the kernel's current sockets first, then history, newest first.
pub fn holdings(q: &Query, state_dir: &Path) -> Result<Answer, WhoError> {
    let ephemeral = EphemeralRange::read();
    let judge = Judge::default();
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    if q.include_now {
        rows.extend(now(q, &ephemeral, &judge)?);
    }
    let path = state_dir.join(store::FILE_NAME);
    if !path.exists() {
        warnings.push(format!(
            "no tenancy history at {} (is the daemon running with this state directory?)",
            path.display()
        ));
        return Ok(Answer { rows, warnings });
    }
    let c = store::open_ro(&path)?;
    let (from, to) = q.window.unwrap_or((0, i64::MAX));
    let ts = |ns: i64| clock::rfc3339(DateTime::from_timestamp_nanos(ns));
    let gaps = store::gaps(&c, from, to)?;
    if !gaps.is_empty() {
        let lost: u64 = gaps.iter().map(|g| g.2).sum();
        warnings.push(format!(
            "warning: this history is incomplete: {lost} socket intervals between {} and {} were not recorded (the daemon's store writer fell behind)",
            ts(gaps[0].0),
            ts(gaps.iter().map(|g| g.1).max().unwrap_or(gaps[0].1))
        ));
    }
    let low = q.ports.ranges.iter().map(|r| r.low).min().unwrap_or(0);
    let high = q
        .ports
        .ranges
        .iter()
        .map(|r| r.high)
        .max()
        .unwrap_or(u16::MAX);
    let transport = match q.ports.ranges.as_slice() {
        [one] => one.transport.map(Transport::as_str),
        _ => None,
    };
    // Rows an older daemon wrote keep no cgroup path: a unit or container filter cannot match
    // them, which the reader is told.
    let vouching = q.filter.unit.is_some() || q.filter.container.is_some();
    let mut unvouched = 0u64;
    let loose = ProcessFilter {
        unit: None,
        container: None,
        ..q.filter.clone()
    };
    let (found, more) = store::holdings(
        &c,
        (low, high),
        transport,
        from,
        to,
        |i| {
            let h = Holding {
                source: Source::History,
                port: ephemeral.info(i.local.port),
                transport: i.transport,
                local: i.local,
                role: i.role,
                peer: i.peer,
                netns: i.netns,
                process: Holder::of(Arc::unwrap_or_clone(i.process), &judge),
                from: Some(ts(i.opened_ns)),
                to: i.closed_ns.map(ts),
                note: i.close_note,
                from_ns: Some(i.opened_ns),
                to_ns: i.closed_ns,
            };
            if q.wants(h.local.port, h.transport, h.role, &h.process) {
                return Some(h);
            }
            if vouching
                && h.process.known
                && h.process.cgroup.is_none()
                && q.ports.matches(h.local.port, h.transport)
                && (!q.listening || h.role == SocketRole::Listening)
                && loose.matches(&h.process.subject())
            {
                unvouched += 1;
            }
            None
        },
        q.limit,
    )?;
    if unvouched > 0 {
        warnings.push(format!(
            "{unvouched} history rows were left out that --unit or --container cannot vouch for: an older portwatch wrote them without the cgroup path"
        ));
    }
    if more {
        warnings.push(format!(
            "showing the newest {} holdings in the history; more match (narrow with --since, --at or a filter, or raise --limit)",
            q.limit
        ));
    }
    rows.extend(found);
    Ok(Answer { rows, warnings })
}

/// Current sockets on the ports, from the kernel over sock_diag, with their processes. The
/// network namespace is the caller's.
fn now(q: &Query, ephemeral: &EphemeralRange, judge: &Judge) -> Result<Vec<Holding>, WhoError> {
    let raw = raw_scan(Path::new("/proc"))?;
    let scan = Attributor::oneshot().attribute(raw, Origin::Snapshot, |s| {
        q.ports.matches(s.local.port(), s.transport)
    });
    Ok(scan
        .facts
        .into_iter()
        .map(|f| Holding {
            source: Source::Now,
            port: ephemeral.info(f.event.local.port()),
            transport: f.event.transport,
            local: f.event.local.into(),
            role: SocketRole::of(f.event.kind),
            peer: f.event.peer.map(Endpoint::from),
            netns: scan.netns,
            process: Holder::of(Arc::unwrap_or_clone(f.process), judge),
            from: None,
            to: None,
            note: None,
            from_ns: None,
            to_ns: None,
        })
        .filter(|h| q.wants(h.local.port, h.transport, h.role, &h.process))
        .collect())
}

/// One line saying what the ports asked for are: their service name, IANA class, and whether
/// the kernel picks them for outbound connections.
pub fn describe(spec: &PortSpec) -> String {
    let ephemeral = EphemeralRange::read();
    let services = std::fs::read_to_string(ports::SERVICES).unwrap_or_default();
    if let Some(port) = spec.single() {
        let info = ephemeral.info(port);
        let class = serde_json::to_value(info.class)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let names: Vec<String> = [Transport::Tcp, Transport::Udp]
            .into_iter()
            .filter(|t| spec.matches(port, *t))
            .filter_map(|t| {
                ports::service_name(&services, port, t).map(|n| format!("{n}/{}", t.as_str()))
            })
            .collect();
        let name = if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        };
        return format!(
            "port {port}{name}: {class}{}",
            if info.ephemeral {
                ", inside this host's ephemeral range (the kernel picks it for outbound connections)"
            } else {
                ""
            }
        );
    }
    let in_range: u64 = spec
        .ranges
        .iter()
        .flat_map(|r| r.low..=r.high)
        .filter(|p| ephemeral.contains(*p))
        .count() as u64;
    let all: u64 = spec
        .ranges
        .iter()
        .map(|r| u64::from(r.high - r.low) + 1)
        .sum();
    format!(
        "ports {}: {all} port(s), {in_range} inside this host's ephemeral range",
        spec.text
    )
}

/// How `who` prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Short times, the command cut to `width`.
    Table { width: Option<usize> },
    /// Every column, whole.
    Wide,
}

/// A time as the table shows it: the clock time when it is today (UTC), else the date too.
fn short_time(ns: i64, today: chrono::NaiveDate) -> String {
    let t = DateTime::from_timestamp_nanos(ns);
    if t.date_naive() == today {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

fn endpoint(e: &Endpoint) -> String {
    crate::views::table::address_port(&e.address.to_string(), e.port)
}

/// Said in place of a command when no process holds the socket.
pub const UNKNOWN_HOLDER: &str = "(no process: a kernel socket, or its holder is out of sight)";

/// The readable table (times in UTC). Every text a process controls is escaped.
pub fn render(rows: &[Holding], layout: Layout, now: DateTime<Utc>) -> String {
    let wide = layout == Layout::Wide;
    let mut header = vec!["WHEN (UTC)", "PROTO", "LOCAL", "STATE", "PEER"];
    if wide {
        header = vec![
            "SOURCE", "FROM", "TO", "PROTO", "LOCAL", "STATE", "PEER", "NETNS",
        ];
    }
    header.extend(["PID", "USER", "UNIT/CONTAINER"]);
    if wide {
        header.extend(["NOTE", "EXECUTABLE"]);
    }
    header.push("COMMAND");
    let mut t = Table::new(&header);
    let today = now.date_naive();
    for r in rows {
        let p = &r.process;
        let mut cells: Vec<String> = Vec::new();
        let (from, to) = match r.source {
            Source::Now => ("now".to_string(), String::new()),
            Source::History => {
                let from = r.from_ns.map_or("-".to_string(), |ns| {
                    if wide {
                        r.from.clone().unwrap_or_default()
                    } else {
                        short_time(ns, today)
                    }
                });
                let to = match r.to_ns {
                    None => "open".to_string(),
                    Some(ns) if wide => r.to.clone().unwrap_or_else(|| ns.to_string()),
                    Some(ns) => short_time(ns, today),
                };
                (from, to)
            }
        };
        if wide {
            let source = match r.source {
                Source::Now => "now",
                Source::History => "history",
            };
            cells.extend([
                source.to_string(),
                from,
                if to.is_empty() { "-".into() } else { to },
            ]);
        } else if to.is_empty() {
            cells.push(from);
        } else {
            cells.push(format!("{from} → {to}"));
        }
        cells.extend([
            r.transport.as_str().to_string(),
            endpoint(&r.local),
            r.role.as_str().to_string(),
            r.peer.as_ref().map_or("-".to_string(), endpoint),
        ]);
        if wide {
            cells.push(r.netns.map_or("-".to_string(), |n| n.to_string()));
        }
        let user = p.user.as_ref().map_or("-".to_string(), |u| {
            u.name.clone().unwrap_or_else(|| u.id.to_string())
        });
        cells.extend([
            p.pid.map_or("-".to_string(), |p| p.to_string()),
            user,
            if p.known {
                p.identity.label.clone()
            } else {
                "-".to_string()
            },
        ]);
        if wide {
            cells.push(r.note.clone().unwrap_or_else(|| "-".into()));
            cells.push(p.executable.clone().unwrap_or_else(|| "-".into()));
        }
        let cmd = if !p.known {
            UNKNOWN_HOLDER.to_string()
        } else {
            identity::command(p.command_line.as_deref(), p.executable.as_deref(), false)
        };
        cells.push(cmd);
        t.push(&cells);
    }
    t.render(match layout {
        Layout::Table { width } => width,
        Layout::Wide => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("10m", now).unwrap().to_rfc3339(),
            "2026-11-27T11:50:00+00:00"
        );
        assert_eq!(
            parse_time("1h30m ago", now).unwrap().to_rfc3339(),
            "2026-11-27T10:30:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-27T04:51:23Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-27T04:51:23+00:00"
        );
        assert!(
            parse_time("yesterday-ish", now)
                .unwrap_err()
                .to_string()
                .contains("is not a time")
        );
    }
}
