//! The kernel side of the pipeline: attach the eBPF programs (the attach ladder), read the ring
//! buffer and loss counters, decode records, and list the kernel's sockets (sock_diag). The
//! `Kernel` stage hands the next one typed `Record`s.
pub mod attach;
pub mod decode;
pub mod read;
pub mod sockets;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::{
    attach::{Attached, FamilyAttachment},
    decode::Record,
    read::{EventReader, KernelLosses, LossCounter, NewLoss, ReadError},
};

/// Records the kernel side could not deliver, or the daemon could not read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// Records dropped because the ring buffer was full (the kernel's per-CPU counters).
    pub ring_buffer_lost: u64,
    /// Calls not recorded because the pending table was full.
    pub pending_full: u64,
    /// Parked calls whose return never came.
    pub pending_stale: u64,
    /// Sockets the per-socket table had no room for.
    pub sockets_full: u64,
    /// Records that did not decode (a mismatch between the programs and the daemon).
    pub undecodable: u64,
}

pub struct Kernel {
    pub attached: Attached,
    reader: EventReader,
    losses: LossCounter,
    undecodable: u64,
    /// The latest handshake ends, as (socket cookie, when its SYN went out): when the handshake's
    /// end and the connect's return race on two CPUs, both may write the record, and the second
    /// is dropped here. A socket may connect again after a failure: another start, kept.
    recent_results: RecentResults,
}

/// The last `RECENT_RESULTS` handshake ends, oldest first, and the same as a set (a third of a
/// web client's records are handshake ends: a scan of the whole queue for each was measurable).
#[derive(Default)]
struct RecentResults {
    order: std::collections::VecDeque<(u64, u64)>,
    set: std::collections::HashSet<(u64, u64), crate::hashing::RandomState>,
}

impl RecentResults {
    /// Remembers `key`; false when it was already there (a second copy of a raced record).
    fn insert(&mut self, key: (u64, u64)) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        if self.order.len() == RECENT_RESULTS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(key);
        true
    }
}

/// How many handshake ends `recent_results` remembers: the two copies of a raced record are
/// written microseconds apart.
const RECENT_RESULTS: usize = 256;

impl Kernel {
    pub fn new(mut attached: Attached) -> Result<Self, ReadError> {
        let reader = EventReader::new(&mut attached.ebpf)?;
        let losses = LossCounter::new(&mut attached.ebpf)?;
        Ok(Self {
            attached,
            reader,
            losses,
            undecodable: 0,
            recent_results: RecentResults::default(),
        })
    }

    /// Waits until the kernel signals new records.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        self.reader.wait().await
    }

    /// Hands at most `max` queued records, decoded, to `f`; returns how many there were. An
    /// undecodable record is counted and said, never fatal.
    pub fn drain(&mut self, max: usize, f: &mut impl FnMut(Record)) -> usize {
        let undecodable = &mut self.undecodable;
        let recent = &mut self.recent_results;
        self.reader
            .drain(max, &mut |bytes| match decode::decode_any(bytes) {
                Ok(Record::Port(ev)) if ev.kind == decode::Kind::ConnectResult => {
                    let key = (
                        ev.cookie,
                        ev.monotonic_ns.saturating_sub(ev.duration_ns.unwrap_or(0)),
                    );
                    if ev.cookie != 0 && !recent.insert(key) {
                        return;
                    }
                    f(Record::Port(ev))
                }
                Ok(r) => f(r),
                Err(e) => {
                    *undecodable += 1;
                    tracing::warn!(error = %e, total = *undecodable, "undecodable record dropped");
                }
            })
    }

    /// The most bytes the ring held when a drain began, since the last call (None: unmeasured).
    pub fn take_ring_peak(&mut self) -> Option<u64> {
        self.reader.take_peak()
    }

    /// Kernel-side losses not yet reported, by cause.
    pub fn poll_losses(&mut self) -> Vec<NewLoss> {
        self.losses.poll().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the loss counters failed");
            Vec::new()
        })
    }

    /// Ring-buffer losses reported so far: records of releases among them, which a history
    /// sweep makes up for.
    pub fn lost(&self) -> u64 {
        self.losses.reported().ring_buffer
    }

    pub fn counters(&self) -> KernelCounters {
        let KernelLosses {
            ring_buffer,
            pending_full,
            pending_stale,
            sockets_full,
        } = self.losses.reported();
        KernelCounters {
            ring_buffer_lost: ring_buffer,
            pending_full,
            pending_stale,
            sockets_full,
            undecodable: self.undecodable,
        }
    }

    /// Each hook family's strategy, hooks and what was passed over, for `status` lines.
    pub fn families(&self) -> BTreeMap<String, &FamilyAttachment> {
        self.attached
            .families
            .iter()
            .map(|f| (f.family.to_string(), f))
            .collect()
    }

    /// Each hook family's strategy, by name.
    pub fn strategies(&self) -> BTreeMap<String, String> {
        self.attached
            .families
            .iter()
            .map(|f| (f.family.to_string(), f.strategy.to_string()))
            .collect()
    }

    pub fn ring_buffer_bytes(&self) -> u32 {
        self.attached.ring_buffer_bytes
    }
}

/// eBPF-side diagnostics (aya-log) go to the daemon's tracing output.
pub fn spawn_ebpf_logger(attached: &mut Attached) {
    let logger = match aya_log::EbpfLogger::init(&mut attached.ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log channel unavailable");
            return;
        }
    };
    let mut fd = match read::register(logger) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log channel unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raced_handshake_end_is_taken_once_and_old_ones_are_forgotten() {
        let mut r = RecentResults::default();
        assert!(r.insert((7, 100)));
        assert!(!r.insert((7, 100)), "the second copy");
        // The same socket connecting again: another start.
        assert!(r.insert((7, 200)));
        for i in 0..RECENT_RESULTS as u64 {
            assert!(r.insert((1000 + i, 0)));
        }
        assert_eq!(
            (r.order.len(), r.set.len()),
            (RECENT_RESULTS, RECENT_RESULTS)
        );
        assert!(r.insert((7, 100)), "forgotten once pushed out");
    }
}
