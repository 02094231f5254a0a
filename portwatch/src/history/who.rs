//! `portwatch who PORT`: who holds the port now (from the kernel's socket tables, no daemon
//! needed) and who held it before (from the tenancy store).
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{
    attribution::{self as enrich, cgroup},
    clock,
    history::store,
    kernel::sockets,
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

/// Holdings as JSON objects: the kernel's current sockets first, then history, newest first.
pub fn holdings(q: &Query<'_>, state_dir: &Path) -> Result<(Vec<Value>, Option<String>), WhoError> {
    let mut out = Vec::new();
    let port_info = port_info(q.port);
    if q.include_now {
        out.extend(now(q.port, q.transport, &port_info)?);
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
        out.push(json!({
            "source": "history",
            "port": port_info, "transport": i.transport,
            "local": {"address": i.address, "port": i.port},
            "role": i.role,
            "peer": i.peer_address.as_ref().map(|a| json!({"address": a, "port": i.peer_port})),
            "netns": i.netns,
            "process": {"pid": i.pid, "executable": i.executable, "command_line": i.command_line,
                        "user": {"id": i.user_id, "name": i.user_name}, "unit": i.unit,
                        "container": i.container_id.as_ref().map(|id| json!({"id": id, "runtime": i.container_runtime}))},
            "from": ts(i.opened_ns),
            "to": i.closed_ns.map(ts),
            "note": i.close_note,
        }));
    }
    Ok((out, warning))
}

/// Current sockets on `port`, from the kernel over sock_diag, with their processes. The
/// network namespace is the caller's.
fn now(port: u16, transport: Option<&str>, port_info: &Value) -> Result<Vec<Value>, WhoError> {
    let found: Vec<_> = sockets::dump_all()?
        .into_iter()
        .filter(|s| s.local.port() == port && transport.is_none_or(|t| t == s.transport.as_str()))
        .collect();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let owners = sockets::owners(Path::new("/proc"));
    let netns = sockets::own_netns();
    Ok(found
        .into_iter()
        .map(|s| {
            let pid = owners.get(&s.inode).copied();
            let facts = pid.and_then(|p| enrich::read_process_facts(&Path::new("/proc").join(p.to_string())));
            let cg = facts.as_ref().and_then(|f| f.cgroup.as_deref()).map(cgroup::parse).unwrap_or_default();
            json!({
                "source": "now",
                "port": port_info, "transport": s.transport.as_str(),
                "local": {"address": s.local.ip().to_string(), "port": s.local.port()},
                "role": s.role(),
                "peer": s.peer.map(|p| json!({"address": p.ip().to_string(), "port": p.port()})),
                "netns": netns,
                "process": {"pid": pid, "executable": facts.as_ref().and_then(|f| f.executable.clone()),
                            "command_line": facts.as_ref().and_then(|f| f.command_line.clone()),
                            "user": {"id": s.uid, "name": nix::unistd::User::from_uid(s.uid.into()).ok().flatten().map(|u| u.name)},
                            "unit": cg.unit, "container": cg.container},
                "from": Value::Null, "to": Value::Null,
            })
        })
        .collect())
}

/// The port's IANA class and whether this host's kernel picks it for outbound connections, as
/// events carry it.
pub fn port_info(port: u16) -> Value {
    serde_json::to_value(crate::attribution::ports::EphemeralRange::read().info(port))
        .unwrap_or(Value::Null)
}

/// One line saying what kind of port it is.
pub fn describe_port(port: u16) -> String {
    let info = port_info(port);
    format!(
        "port {port}: {}{}",
        info["class"].as_str().unwrap_or("?"),
        if info["ephemeral"] == true {
            ", inside this host's ephemeral range (the kernel picks it for outbound connections)"
        } else {
            ""
        }
    )
}

/// The readable table.
pub fn render(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<7} {:<5} {:<10} {:<31} {:<31} {:<8} {:<10} {:<22} {}\n",
        "SOURCE", "PROTO", "WHAT", "FROM", "TO", "PID", "USER", "UNIT/CONTAINER", "COMMAND"
    );
    for r in rows {
        let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
        let what = match r["peer"].as_object() {
            Some(p) => format!(
                "{} {}:{}",
                s(&r["role"]),
                p["address"].as_str().unwrap_or("?"),
                p["port"]
            ),
            None => format!("{} {}", s(&r["role"]), s(&r["local"]["address"])),
        };
        let who = match (&r["process"]["unit"], &r["process"]["container"]) {
            (_, c) if c.is_object() => format!(
                "{}:{}",
                s(&c["runtime"]),
                &s(&c["id"]).chars().take(12).collect::<String>()
            ),
            (u, _) => s(u),
        };
        let cmd = r["process"]["command_line"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .or_else(|| r["process"]["executable"].as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into());
        let to = match (&r["source"], &r["to"]) {
            (src, _) if src == "now" => "(now)".to_string(),
            (_, Value::Null) => "(still open)".to_string(),
            (_, t) => s(t),
        };
        out.push_str(&format!(
            "{:<7} {:<5} {:<10} {:<31} {:<31} {:<8} {:<10} {:<22} {}\n",
            s(&r["source"]),
            s(&r["transport"]),
            what.chars().take(10).collect::<String>(),
            s(&r["from"]),
            to,
            r["process"]["pid"],
            s(&r["process"]["user"]["name"]),
            who,
            cmd
        ));
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
