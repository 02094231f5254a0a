//! Port classes: IANA's ranges, and whether a port lies in this host's ephemeral range (where the
//! kernel picks ports for outbound connections and `bind(…, 0)`). A listener there collides with
//! outbound traffic sooner or later.
use std::fs;

pub use crate::facts::{PortClass, PortInfo};

const RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

pub fn class(port: u16) -> PortClass {
    match port {
        0..=1023 => PortClass::WellKnown,
        1024..=49151 => PortClass::Registered,
        _ => PortClass::Dynamic,
    }
}

/// The host's ephemeral range minus its reserved ports (sysctls of the daemon's network
/// namespace, re-read periodically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralRange {
    pub low: u16,
    pub high: u16,
    pub reserved: Vec<(u16, u16)>,
}

impl Default for EphemeralRange {
    /// The kernel's defaults, used when the sysctls cannot be read.
    fn default() -> Self {
        Self {
            low: 32768,
            high: 60999,
            reserved: Vec::new(),
        }
    }
}

impl EphemeralRange {
    pub fn read() -> Self {
        let range = fs::read_to_string(RANGE_PATH).ok();
        let reserved = fs::read_to_string(RESERVED_PATH).unwrap_or_default();
        match range.as_deref().and_then(|r| Self::parse(r, &reserved)) {
            Some(r) => r,
            None => {
                tracing::warn!(
                    path = RANGE_PATH,
                    "unreadable; assuming the kernel's default ephemeral range"
                );
                Self::default()
            }
        }
    }

    /// Ports the kernel may pick from.
    pub fn size(&self) -> u64 {
        let all = u64::from(self.high.saturating_sub(self.low)) + 1;
        let reserved: u64 = self
            .reserved
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(self.low), b.min(self.high));
                if a <= b { u64::from(b - a) + 1 } else { 0 }
            })
            .sum();
        all.saturating_sub(reserved).max(1)
    }

    /// `range`: "32768\t60999"; `reserved`: "" or "8080,9000-9010".
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let mut it = range.split_whitespace().map(|v| v.parse::<u16>().ok());
        let (low, high) = (it.next()??, it.next()??);
        let reserved = reserved
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => {
                    let p = s.trim().parse().ok()?;
                    Some((p, p))
                }
            })
            .collect();
        Some(Self {
            low,
            high,
            reserved,
        })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
            && !self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    pub fn info(&self, port: u16) -> PortInfo {
        PortInfo {
            class: class(port),
            ephemeral: self.contains(port),
            requested: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iana_classes() {
        assert_eq!(class(22), PortClass::WellKnown);
        assert_eq!(class(1023), PortClass::WellKnown);
        assert_eq!(class(1024), PortClass::Registered);
        assert_eq!(class(49151), PortClass::Registered);
        assert_eq!(class(49152), PortClass::Dynamic);
        assert_eq!(class(60481), PortClass::Dynamic);
    }

    #[test]
    fn ephemeral_range_excludes_reserved_ports() {
        let r = EphemeralRange::parse("32768\t60999\n", "40000,50000-50010\n").unwrap();
        assert!(r.contains(32768) && r.contains(60999) && r.contains(45000));
        assert!(!r.contains(32767) && !r.contains(61000));
        assert!(!r.contains(40000) && !r.contains(50005));
        assert!(r.contains(50011));
        assert_eq!(
            r.info(60481),
            PortInfo {
                class: PortClass::Dynamic,
                ephemeral: true,
                requested: None,
            }
        );
    }

    #[test]
    fn unreadable_values_are_rejected() {
        assert_eq!(EphemeralRange::parse("", ""), None);
        assert_eq!(EphemeralRange::parse("1 x", ""), None);
        assert_eq!(
            EphemeralRange::parse("1024 2048", "x,5").unwrap().reserved,
            vec![(5, 5)]
        );
    }

    #[test]
    fn serializes_as_the_schema_says() {
        let v = serde_json::to_value(EphemeralRange::default().info(8080)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"class": "registered", "ephemeral": false})
        );
    }
}
