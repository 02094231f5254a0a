//! Which ports an operator means: `80`, `80/tcp`, `http`, `domain/udp`, `8000-8100`,
//! `8000-8100/udp`. Service names come from /etc/services, as `ss`, `netstat` and `getent`
//! read them.
use std::{fmt, path::Path};

use crate::facts::Transport;

pub const SERVICES: &str = "/etc/services";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortSpecError {
    #[error(
        "`{0}` is not a port: use a number (0-65535), a range (8000-8100), or a service name from /etc/services, each optionally /tcp or /udp"
    )]
    Syntax(String),
    #[error("`{0}`: a range must run from low to high")]
    Backwards(String),
    #[error("`{0}` is not a port number (0-65535)")]
    Number(String),
    #[error("`{name}` is not a service name in {path}{hint}")]
    UnknownService {
        name: String,
        path: String,
        hint: String,
    },
}

/// One stretch of ports, optionally of one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
    pub transport: Option<Transport>,
}

impl PortRange {
    pub fn contains(&self, port: u16, transport: Transport) -> bool {
        (self.low..=self.high).contains(&port) && self.transport.is_none_or(|t| t == transport)
    }
}

/// What the operator asked for: one range, or the ports a service name stands for (the same
/// name may name a different port per transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub text: String,
    pub ranges: Vec<PortRange>,
}

impl PortSpec {
    pub fn matches(&self, port: u16, transport: Transport) -> bool {
        self.ranges.iter().any(|r| r.contains(port, transport))
    }

    /// The single port asked for, when it is one.
    pub fn single(&self) -> Option<u16> {
        let first = self.ranges.first()?;
        (first.low == first.high
            && self
                .ranges
                .iter()
                .all(|r| (r.low, r.high) == (first.low, first.high)))
        .then_some(first.low)
    }

    /// Parses `spec`, looking names up in the services file `services`.
    pub fn parse(spec: &str, services: &Path) -> Result<Self, PortSpecError> {
        let text = spec.trim();
        let (what, transport) = match text.rsplit_once('/') {
            Some((w, "tcp")) => (w, Some(Transport::Tcp)),
            Some((w, "udp")) => (w, Some(Transport::Udp)),
            Some(_) => return Err(PortSpecError::Syntax(spec.to_string())),
            None => (text, None),
        };
        let number = |s: &str| -> Result<u16, PortSpecError> {
            s.parse().map_err(|_| PortSpecError::Number(s.to_string()))
        };
        let ranges = if let Some((lo, hi)) = what
            .split_once('-')
            // Digits on both sides: a range. (`802-11-iapp` is a service name; `1-` and `-5` are
            // mistakes, said as such below.)
            .filter(|(lo, hi)| {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                digits(lo) && digits(hi)
            }) {
            let (low, high) = (number(lo)?, number(hi)?);
            if low > high {
                return Err(PortSpecError::Backwards(spec.to_string()));
            }
            vec![PortRange {
                low,
                high,
                transport,
            }]
        } else if !what.is_empty() && what.bytes().all(|b| b.is_ascii_digit()) {
            let p = number(what)?;
            vec![PortRange {
                low: p,
                high: p,
                transport,
            }]
        } else if valid_service_name(what) {
            let text = std::fs::read_to_string(services).unwrap_or_default();
            let found: Vec<PortRange> = lookup(&text, what)
                .into_iter()
                .filter(|(_, t)| transport.is_none_or(|want| want == *t))
                .map(|(p, t)| PortRange {
                    low: p,
                    high: p,
                    transport: Some(t),
                })
                .collect();
            if found.is_empty() {
                let hint = if !services.exists() {
                    " (the file is missing: Debian's `netbase` package installs it)".to_string()
                } else if transport.is_some() && !lookup(&text, what).is_empty() {
                    format!(" for {}", transport.map_or("", |t| t.as_str()))
                } else {
                    String::new()
                };
                return Err(PortSpecError::UnknownService {
                    name: what.to_string(),
                    path: services.display().to_string(),
                    hint,
                });
            }
            merge(found)
        } else {
            return Err(PortSpecError::Syntax(spec.to_string()));
        };
        Ok(PortSpec {
            text: text.to_string(),
            ranges,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A service name as /etc/services spells them: letters, digits, `-`, `_`, `.`, `+`.
fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
        && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `name`'s (port, transport) entries, by its name or any alias.
fn lookup(services: &str, name: &str) -> Vec<(u16, Transport)> {
    let mut out = Vec::new();
    for line in services.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(first), Some(port_proto)) = (words.next(), words.next()) else {
            continue;
        };
        if first != name && !words.any(|alias| alias == name) {
            continue;
        }
        let Some((port, proto)) = port_proto.split_once('/') else {
            continue;
        };
        let transport = match proto {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            _ => continue,
        };
        if let Ok(p) = port.parse() {
            out.push((p, transport));
        }
    }
    out
}

/// The name /etc/services gives `port` for `transport`, if any (for tables).
pub fn service_name(services: &str, port: u16, transport: Transport) -> Option<String> {
    services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let name = words.next()?;
        let (p, proto) = words.next()?.split_once('/')?;
        (p.parse() == Ok(port) && proto == transport.as_str()).then(|| name.to_string())
    })
}

/// One range per port; a port named for both transports becomes one range for either.
fn merge(mut found: Vec<PortRange>) -> Vec<PortRange> {
    found.sort_by_key(|r| (r.low, r.transport.map(|t| t.as_str())));
    found.dedup();
    let mut out: Vec<PortRange> = Vec::new();
    for r in found {
        match out.last_mut() {
            Some(last) if last.low == r.low && last.transport != r.transport => {
                last.transport = None
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES_TEXT: &str = "\
# comment
http\t\t80/tcp\t\twww\t# WorldWideWeb HTTP
domain\t\t53/tcp\t\t\t# Domain Name Server
domain\t\t53/udp
syslog\t\t514/udp
odd\t\t1000/tcp
odd\t\t1001/udp
802-11-iapp\t3517/tcp
";

    fn parse(s: &str) -> Result<PortSpec, PortSpecError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services");
        std::fs::write(&path, SERVICES_TEXT).unwrap();
        PortSpec::parse(s, &path)
    }

    fn r(low: u16, high: u16, transport: Option<Transport>) -> PortRange {
        PortRange {
            low,
            high,
            transport,
        }
    }

    #[test]
    fn numbers_ranges_transports_and_names() {
        assert_eq!(parse("80").unwrap().ranges, [r(80, 80, None)]);
        assert_eq!(parse("80").unwrap().single(), Some(80));
        assert_eq!(
            parse(" 53/udp ").unwrap().ranges,
            [r(53, 53, Some(Transport::Udp))]
        );
        assert_eq!(parse("8000-8100").unwrap().ranges, [r(8000, 8100, None)]);
        assert_eq!(parse("8000-8100").unwrap().single(), None);
        assert_eq!(
            parse("8000-8100/tcp").unwrap().ranges,
            [r(8000, 8100, Some(Transport::Tcp))]
        );
        assert_eq!(
            parse("http").unwrap().ranges,
            [r(80, 80, Some(Transport::Tcp))]
        );
        assert_eq!(parse("www").unwrap().ranges[0].low, 80);
        assert_eq!(parse("domain").unwrap().ranges, [r(53, 53, None)]);
        assert_eq!(parse("domain").unwrap().single(), Some(53));
        assert_eq!(
            parse("domain/udp").unwrap().ranges,
            [r(53, 53, Some(Transport::Udp))]
        );
        assert_eq!(
            parse("odd").unwrap().ranges,
            [
                r(1000, 1000, Some(Transport::Tcp)),
                r(1001, 1001, Some(Transport::Udp))
            ]
        );
        assert_eq!(parse("odd").unwrap().single(), None);
        assert_eq!(parse("802-11-iapp").unwrap().single(), Some(3517));
        assert_eq!(parse("0-65535").unwrap().ranges, [r(0, 65535, None)]);
        let s = parse("8000-8100/udp").unwrap();
        assert!(s.matches(8050, Transport::Udp));
        assert!(!s.matches(8050, Transport::Tcp));
        assert!(!s.matches(8101, Transport::Udp));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = |s: &str| parse(s).unwrap_err().to_string();
        assert!(
            e("70000").contains("`70000` is not a port number"),
            "{}",
            e("70000")
        );
        assert!(e("9000-8000").contains("from low to high"));
        assert!(e("80/sctp").contains("optionally /tcp or /udp"));
        assert!(e("htp").contains("`htp` is not a service name in"));
        assert!(e("syslog/tcp").contains("for tcp"), "{}", e("syslog/tcp"));
        assert!(e("a b").contains("is not a port"));
        assert!(e("").contains("is not a port"));
        assert!(
            e("80-").contains("`80-` is not a port: use a number"),
            "{}",
            e("80-")
        );
        assert!(e("-5").contains("`-5` is not a port"), "{}", e("-5"));
        let missing = PortSpec::parse("http", Path::new("/nonexistent/services"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("netbase"), "{missing}");
    }

    #[test]
    fn names_for_tables() {
        assert_eq!(
            service_name(SERVICES_TEXT, 53, Transport::Udp).as_deref(),
            Some("domain")
        );
        assert_eq!(service_name(SERVICES_TEXT, 514, Transport::Tcp), None);
    }
}
