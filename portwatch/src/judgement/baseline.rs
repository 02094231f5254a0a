//! `portwatch baseline`: a commented policy that allows exactly what listens now, one rule per
//! unit (or executable, outside systemd) and transport, to review and install as policy.toml.
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use crate::{
    attribution as enrich,
    attribution::cgroup,
    attribution::ports::EphemeralRange,
    kernel::decode::Transport,
    kernel::sockets::{self, KernelSocket},
};

/// Who holds a listener, as the rule will name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
    unit: Option<String>,
    executable: Option<String>,
    transport: &'static str,
}

#[derive(Debug, Default)]
struct Group {
    ports: std::collections::BTreeSet<u16>,
    addresses: std::collections::BTreeSet<String>,
    comms: std::collections::BTreeSet<String>,
}

/// Every listener now: TCP sockets in LISTEN, and UDP sockets bound to a port outside the
/// ephemeral range (the same test the daemon applies).
pub fn listeners(range: &EphemeralRange) -> Result<Vec<KernelSocket>, sockets::SockDiagError> {
    Ok(sockets::dump_all()?
        .into_iter()
        .filter(|s| {
            s.is_tcp_listener()
                || (s.transport == Transport::Udp
                    && s.peer.is_none()
                    && !range.info(s.local.port()).ephemeral)
        })
        .collect())
}

/// The policy text for `found`, holders looked up under `proc_root`.
pub fn render(found: &[KernelSocket], proc_root: &Path, host: &str, now: &str) -> String {
    let owners = sockets::owners(proc_root);
    let mut groups: BTreeMap<Holder, Group> = BTreeMap::new();
    for s in found {
        let pid = owners.get(&s.inode).copied();
        let facts = pid.and_then(|p| enrich::read_process_facts(&proc_root.join(p.to_string())));
        let unit = facts
            .as_ref()
            .and_then(|f| f.cgroup.as_deref())
            .and_then(|c| cgroup::parse(c).unit);
        let holder = Holder {
            unit,
            executable: facts.as_ref().and_then(|f| f.executable.clone()),
            transport: s.transport.as_str(),
        };
        let g = groups.entry(holder).or_default();
        g.ports.insert(s.local.port());
        let ip = s.local.ip().to_canonical();
        g.addresses.insert(if ip.is_unspecified() {
            "wildcard".to_string()
        } else if ip.is_loopback() {
            "loopback".to_string()
        } else {
            ip.to_string()
        });
        if let Some(c) = facts.and_then(|f| f.comm) {
            g.comms.insert(c);
        }
    }
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# portwatch policy: a baseline of what listened on {host} at {now}.\n\
         # Review every rule before installing this as /etc/portwatch/policy.toml:\n\
         # anything listening now is allowed by it, wanted or not.\n\
         # `portwatch check-policy FILE` validates it; docs/policy.md explains each key.\n\
         \n\
         [alerts]\n\
         unexpected_listener = true\n\
         wildcard_listener = true\n\
         ephemeral_port_listener = true\n\
         required_listener_missing = true\n\
         ephemeral_port_exhaustion = true\n\
         \n\
         [settings]\n\
         reconcile_interval_seconds = 60\n\
         exhaustion_share = 0.5\n\
         dedup_window_seconds = 86400\n\
         summary_interval_seconds = 3600\n\
         rate_limit_per_minute = 60\n\
         \n\
         # [hook]\n\
         # argv = [\"/usr/local/bin/portwatch-notify\", \"--to\", \"oncall\"]\n\
         # timeout_seconds = 10"
    );
    for (h, g) in &groups {
        let comms: Vec<&str> = g.comms.iter().map(String::as_str).collect();
        let who = h
            .unit
            .clone()
            .or_else(|| h.executable.clone())
            .unwrap_or_else(|| "no process holds it (kernel socket)".into());
        let _ = writeln!(out, "\n# {who}: {} ({})", h.transport, comms.join(", "));
        let _ = writeln!(out, "[[allow]]");
        let _ = writeln!(out, "note = {}", q(&format!("baseline: {who}")));
        let _ = writeln!(out, "transport = {}", q(h.transport));
        let ports: Vec<String> = g.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(out, "port = [{}]", ports.join(", "));
        let addrs: Vec<String> = g.addresses.iter().map(|a| q(a)).collect();
        let _ = writeln!(out, "address = [{}]", addrs.join(", "));
        if let Some(e) = &h.executable {
            let _ = writeln!(out, "executable = {}", q(e));
        }
        if let Some(u) = &h.unit {
            let _ = writeln!(out, "unit = {}", q(u));
        }
        let _ = writeln!(out, "# required = true  # alert when it stops listening");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judgement::policy::{Listener, Policy, Verdict};

    #[test]
    fn the_baseline_parses_and_allows_what_listens_now() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let range = EphemeralRange::read();
        let found = listeners(&range).unwrap();
        let text = render(&found, Path::new("/proc"), "h\"ost", "2026-11-27T00:00:00Z");
        let p = Policy::parse(&text, Path::new("baseline.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let me = enrich::read_process_facts(Path::new("/proc/self")).unwrap();
        let unit = me.cgroup.as_deref().and_then(|c| cgroup::parse(c).unit);
        let view = Listener {
            transport: "tcp",
            address: "127.0.0.1".parse().unwrap(),
            port,
            executable: me.executable.as_deref(),
            comm: me.comm.as_deref().unwrap_or(""),
            user_id: 0,
            user_name: Some("root"),
            unit: unit.as_deref(),
            container_id: None,
            container_name: None,
        };
        assert!(matches!(p.judge(&view), Verdict::Allowed(_)), "{text}");
        let mut other = view;
        other.address = "0.0.0.0".parse().unwrap();
        assert!(!matches!(p.judge(&other), Verdict::Allowed(_)));
    }
}
