//! `portwatch baseline`: a commented policy that allows exactly what listens now, one rule per
//! unit (or executable, outside systemd) and transport, to review and install as policy.toml.
use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    attribution::Attributor,
    facts::{Origin, PortFacts, Transport},
    judgement::policy::is_listener,
    kernel::sockets,
    output::text::printable,
};

/// Who holds a listener, as the rule will name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
    unit: Option<String>,
    executable: Option<String>,
    transport: Transport,
}

#[derive(Debug, Default)]
struct Group {
    ports: std::collections::BTreeSet<u16>,
    addresses: std::collections::BTreeSet<String>,
    comms: std::collections::BTreeSet<String>,
}

/// Every listener now, with its holder (the same test the daemon applies).
pub fn listeners() -> Result<Vec<PortFacts>, sockets::SockDiagError> {
    let scan = Attributor::oneshot().scan(Origin::Snapshot)?;
    Ok(scan.facts.into_iter().filter(is_listener).collect())
}

/// The policy text for `found`.
pub fn render(found: &[PortFacts], host: &str, now: &str) -> String {
    let mut groups: BTreeMap<Holder, Group> = BTreeMap::new();
    for f in found {
        // Only what a rule can match on: a unit inside a user's own manager is not trusted.
        let trusted = crate::judgement::listener(f.clone()).trusted;
        let holder = Holder {
            unit: trusted.unit,
            executable: f.process.executable.clone(),
            transport: f.event.transport,
        };
        let g = groups.entry(holder).or_default();
        g.ports.insert(f.event.local.port());
        let ip = f.event.local.ip().to_canonical();
        g.addresses.insert(if ip.is_unspecified() {
            "wildcard".to_string()
        } else if ip.is_loopback() {
            "loopback".to_string()
        } else {
            ip.to_string()
        });
        if !f.process.comm.is_empty() {
            g.comms.insert(f.process.comm.clone());
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
        // Comments carry names a process chose: escaped, so none can end the comment line.
        let _ = writeln!(
            out,
            "\n# {}: {} ({})",
            printable(&who),
            h.transport,
            printable(&comms.join(", "))
        );
        let _ = writeln!(out, "[[allow]]");
        let _ = writeln!(out, "note = {}", q(&format!("baseline: {who}")));
        let _ = writeln!(out, "transport = {}", q(h.transport.as_str()));
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
    use crate::judgement::policy::{Policy, Verdict};

    #[test]
    fn the_baseline_parses_and_allows_what_listens_now() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listeners().unwrap();
        let text = render(&found, "h\"ost", "2026-11-27T00:00:00Z");
        let p = Policy::parse(&text, std::path::Path::new("baseline.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mine = found
            .iter()
            .find(|f| f.event.local.port() == port)
            .expect("this test's listener")
            .clone();
        let view = crate::judgement::listener(mine);
        assert!(matches!(p.judge(&view), Verdict::Allowed(_)), "{text}");
        let mut other = view;
        other.facts.event.local.set_ip("0.0.0.0".parse().unwrap());
        assert!(!matches!(p.judge(&other), Verdict::Allowed(_)));
    }

    #[test]
    fn names_a_process_chose_cannot_write_rules() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut found: Vec<PortFacts> = listeners()
            .unwrap()
            .into_iter()
            .filter(|f| f.event.local.port() == port)
            .collect();
        std::sync::Arc::make_mut(&mut found[0].process).comm = "\n[[allow]]#".into();
        let mut second = found[0].clone();
        std::sync::Arc::make_mut(&mut second.process).comm = "\nuser=1000#".into();
        found.push(second);
        let text = render(&found, "h", "2026-11-27T00:00:00Z");
        let p = Policy::parse(&text, std::path::Path::new("baseline.toml")).unwrap();
        assert_eq!(p.rules.len(), 1, "{text}");
        assert!(p.rules[0].user.is_none(), "{text}");
    }
}
