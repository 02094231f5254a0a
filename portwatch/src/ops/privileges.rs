//! A clear message, before anything is loaded, when the daemon lacks what the kernel will demand.
use std::fs;

/// Capabilities the tracepoint + cgroup strategy needs: loading programs (CAP_BPF), tracepoints
/// and reading kernel memory (CAP_PERFMON), cgroup socket hooks (CAP_NET_ADMIN).
const REQUIRED: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];

#[derive(Debug, thiserror::Error)]
#[error(
    "missing capabilities: {missing}. portwatch loads eBPF programs into the kernel: run it as root \
     or grant {missing}"
)]
pub struct MissingCapabilities {
    pub missing: String,
}

pub fn check() -> Result<(), MissingCapabilities> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = effective_caps(&status);
    let missing: Vec<&str> = REQUIRED
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCapabilities {
            missing: missing.join(", "),
        })
    }
}

/// CapEff from /proc/self/status; 0 when absent.
pub fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        assert_eq!(
            effective_caps("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            0x1ffffffffff
        );
        assert_eq!(effective_caps("nothing"), 0);
    }
}
