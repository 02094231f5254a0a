//! `portwatch who PORT`: who holds the port now (from the kernel's socket tables, no daemon
//! needed) and who held it before (from the tenancy store).
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    attribution::{Attributor, ports::EphemeralRange, raw_scan},
    clock,
    facts::{Container, Endpoint, Origin, PortInfo, ProcessFacts, SocketRole, Transport, User},
    history::store,
    kernel::sockets,
    output::text::printable,
};

#[derive(Debug, thiserror::Error)]
pub enum WhoError {
    #[error("`{0}` is not a port number (0-65535)")]
    Port(String),
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

pub fn parse_port(s: &str) -> Result<u16, WhoError> {
    s.trim().parse().map_err(|_| WhoError::Port(s.to_string()))
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

pub struct Query<'a> {
    pub port: u16,
    pub transport: Option<&'a str>,
    /// Unix ns window; `None` = all history.
    pub window: Option<(i64, i64)>,
    pub include_now: bool,
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

/// One holding of the port: one JSON object of `who --json`, one row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub source: Source,
    pub port: PortInfo,
    pub transport: Transport,
    pub local: Endpoint,
    pub role: SocketRole,
    pub peer: Option<Endpoint>,
    pub netns: Option<u32>,
    pub process: Holder,
    /// RFC 3339; unknown for sockets found now.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Why `to` is what it is, when not a release the kernel reported.
    pub note: Option<String>,
}

/// The holder as `who` shows it: what the history keeps of a process, nothing it does not know.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    /// None: no process holds the socket (a kernel socket, or its holder is out of sight).
    pub pid: Option<u32>,
    pub executable: Option<String>,
    pub command_line: Option<Vec<String>>,
    pub user: User,
    pub unit: Option<String>,
    pub container: Option<Container>,
}

impl Holder {
    fn of(p: ProcessFacts) -> Self {
        Holder {
            pid: (p.pid != 0).then_some(p.pid),
            executable: p.executable,
            command_line: p.command_line,
            user: p.user,
            unit: p.unit,
            container: p.container,
        }
    }
}

/// Holdings: the kernel's current sockets first, then history, newest first; and a warning when
/// the history is incomplete or missing.
pub fn holdings(
    q: &Query<'_>,
    state_dir: &Path,
) -> Result<(Vec<Holding>, Option<String>), WhoError> {
    let mut out = Vec::new();
    let port = port_info(q.port);
    if q.include_now {
        out.extend(now(q.port, q.transport, port)?);
    }
    let path = state_dir.join(store::FILE_NAME);
    if !path.exists() {
        return Ok((
            out,
            Some(format!(
                "no tenancy history at {} (is the daemon running with this state directory?)",
                path.display()
            )),
        ));
    }
    let c = store::open_ro(&path)?;
    let (from, to) = q.window.unwrap_or((0, i64::MAX));
    let ts = |ns: i64| clock::rfc3339(DateTime::from_timestamp_nanos(ns));
    let gaps = store::gaps(&c, from, to)?;
    let warning = (!gaps.is_empty()).then(|| {
        let lost: u64 = gaps.iter().map(|g| g.2).sum();
        format!(
            "warning: this history is incomplete: {lost} socket intervals between {} and {} were not recorded (the daemon's store writer fell behind)",
            ts(gaps[0].0),
            ts(gaps.iter().map(|g| g.1).max().unwrap_or(gaps[0].1))
        )
    });
    for i in store::holdings(&c, q.port, q.transport, from, to, 200)? {
        out.push(Holding {
            source: Source::History,
            port,
            transport: i.transport,
            local: i.local,
            role: i.role,
            peer: i.peer,
            netns: i.netns,
            process: Holder::of(i.process),
            from: Some(ts(i.opened_ns)),
            to: i.closed_ns.map(ts),
            note: i.close_note,
        });
    }
    Ok((out, warning))
}

/// Current sockets on `port`, from the kernel over sock_diag, with their processes. The
/// network namespace is the caller's.
fn now(port: u16, transport: Option<&str>, info: PortInfo) -> Result<Vec<Holding>, WhoError> {
    let raw = raw_scan(Path::new("/proc"))?;
    let scan = Attributor::oneshot().attribute(raw, Origin::Snapshot, |s| {
        s.local.port() == port && transport.is_none_or(|t| t == s.transport.as_str())
    });
    Ok(scan
        .facts
        .into_iter()
        .map(|f| Holding {
            source: Source::Now,
            port: info,
            transport: f.event.transport,
            local: f.event.local.into(),
            role: SocketRole::of(f.event.kind),
            peer: f.event.peer.map(Endpoint::from),
            netns: scan.netns,
            process: Holder::of(f.process),
            from: None,
            to: None,
            note: None,
        })
        .collect())
}

/// The port's IANA class and whether this host's kernel picks it for outbound connections, as
/// events carry it.
pub fn port_info(port: u16) -> PortInfo {
    EphemeralRange::read().info(port)
}

/// One line saying what kind of port it is.
pub fn describe_port(port: u16) -> String {
    let info = port_info(port);
    let class = serde_json::to_value(info.class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "port {port}: {class}{}",
        if info.ephemeral {
            ", inside this host's ephemeral range (the kernel picks it for outbound connections)"
        } else {
            ""
        }
    )
}

/// The readable table. Every text a process controls is escaped.
pub fn render(rows: &[Holding]) -> String {
    let row = |c: [&str; 9]| {
        format!(
            "{:<7} {:<5} {:<10} {:<31} {:<31} {:<8} {:<10} {:<22} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        )
    };
    let mut out = row([
        "SOURCE",
        "PROTO",
        "WHAT",
        "FROM",
        "TO",
        "PID",
        "USER",
        "UNIT/CONTAINER",
        "COMMAND",
    ]);
    for r in rows {
        let what = match &r.peer {
            Some(p) => format!("{} {}:{}", r.role.as_str(), p.address, p.port),
            None => format!("{} {}", r.role.as_str(), r.local.address),
        };
        let p = &r.process;
        let who = match &p.container {
            Some(c) => format!(
                "{}:{}",
                c.runtime.as_str(),
                c.id.chars().take(12).collect::<String>()
            ),
            None => p.unit.clone().unwrap_or_else(|| "-".into()),
        };
        let cmd = p
            .command_line
            .as_ref()
            .map(|a| a.join(" "))
            .or_else(|| p.executable.clone())
            .unwrap_or_else(|| "-".into());
        let to = match (r.source, &r.to) {
            (Source::Now, _) => "(now)".to_string(),
            (_, None) => "(still open)".to_string(),
            (_, Some(t)) => t.clone(),
        };
        let pid = p.pid.map_or("-".to_string(), |p| p.to_string());
        let user = p.user.name.clone().unwrap_or_else(|| "-".into());
        let source = match r.source {
            Source::Now => "now",
            Source::History => "history",
        };
        out.push_str(&row([
            source,
            r.transport.as_str(),
            &printable(&what.chars().take(10).collect::<String>()),
            r.from.as_deref().unwrap_or("-"),
            &to,
            &pid,
            &printable(&user),
            &printable(&who),
            &printable(&cmd),
        ]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_times() {
        assert_eq!(parse_port("60481").unwrap(), 60481);
        assert!(
            parse_port("http")
                .unwrap_err()
                .to_string()
                .contains("`http` is not a port")
        );
        assert!(parse_port("70000").is_err());
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
