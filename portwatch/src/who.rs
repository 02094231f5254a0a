//! `portwatch who PORT`: who holds the port now (from the kernel's socket tables, no daemon
//! needed) and who held it before (from the tenancy store).
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{clock, enrich, store};

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
    if q.include_now {
        out.extend(now(q.port, q.transport));
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
    for i in store::holdings(&c, q.port, q.transport, from, to, 200)? {
        let ts = |ns: i64| clock::rfc3339(DateTime::from_timestamp_nanos(ns));
        out.push(json!({
            "source": "history",
            "port": i.port, "transport": i.transport,
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
    Ok((out, None))
}

/// Current sockets on `port` from /proc/net/{tcp,tcp6,udp,udp6}, with their processes.
fn now(port: u16, transport: Option<&str>) -> Vec<Value> {
    let mut found = Vec::new();
    for (file, proto, v6) in [
        ("tcp", "tcp", false),
        ("tcp6", "tcp", true),
        ("udp", "udp", false),
        ("udp6", "udp", true),
    ] {
        if transport.is_some_and(|t| t != proto) {
            continue;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(s) = parse_socket_line(line, v6)
                && s.local.1 == port
            {
                found.push((proto, s));
            }
        }
    }
    if found.is_empty() {
        return Vec::new();
    }
    let owners = socket_owners();
    found
        .into_iter()
        .map(|(proto, s)| {
            let pid = owners.get(&s.inode).copied();
            let facts = pid.and_then(|p| enrich::read_process_facts(&Path::new("/proc").join(p.to_string())));
            let role = match (proto, s.state) {
                ("tcp", 0x0A) => "listening",
                ("tcp", _) => "connected",
                (_, 0x01) => "connected",
                _ => "bound",
            };
            json!({
                "source": "now",
                "port": port, "transport": proto,
                "local": {"address": s.local.0.to_string(), "port": s.local.1},
                "role": role,
                "peer": (s.remote.1 != 0).then(|| json!({"address": s.remote.0.to_string(), "port": s.remote.1})),
                "process": {"pid": pid, "executable": facts.as_ref().and_then(|f| f.executable.clone()),
                            "command_line": facts.as_ref().and_then(|f| f.command_line.clone()),
                            "user": {"id": s.uid, "name": nix::unistd::User::from_uid(s.uid.into()).ok().flatten().map(|u| u.name)}},
                "from": Value::Null, "to": Value::Null,
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub struct SocketLine {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

/// One line of /proc/net/tcp (or tcp6, udp, udp6).
pub fn parse_socket_line(line: &str, v6: bool) -> Option<SocketLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let addr = |s: &str| -> Option<(IpAddr, u16)> {
        let (a, p) = s.split_once(':')?;
        let port = u16::from_str_radix(p, 16).ok()?;
        let ip = if v6 {
            if a.len() != 32 {
                return None;
            }
            let mut bytes = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&a[w * 8..w * 8 + 8], 16).ok()?;
                bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::from(
                u32::from_str_radix(a, 16).ok()?.to_le_bytes(),
            ))
        };
        Some((ip, port))
    };
    Some(SocketLine {
        local: addr(f.get(1)?)?,
        remote: addr(f.get(2)?)?,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        uid: f.get(7)?.parse().ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// Socket inode → pid, from /proc/*/fd.
fn socket_owners() -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse().ok())
            {
                owners.entry(inode).or_insert(pid);
            }
        }
    }
    owners
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
    fn parses_proc_net_lines() {
        let l = "   0: 0100007F:EC41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        let s = parse_socket_line(l, false).unwrap();
        assert_eq!(s.local, ("127.0.0.1".parse().unwrap(), 60481));
        assert_eq!((s.state, s.uid, s.inode), (0x0A, 0, 123456));
        let l6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1";
        let s = parse_socket_line(l6, true).unwrap();
        assert_eq!(s.local, ("::1".parse().unwrap(), 8080));
        assert_eq!(s.uid, 1000);
        assert!(parse_socket_line("garbage", false).is_none());
    }

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
