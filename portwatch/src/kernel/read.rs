//! Read the ring buffer and the per-CPU loss counters the kernel side keeps.
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use portwatch_common::CpuCounters;
use tokio::io::unix::AsyncFd;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with the runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// Takes map `name` out of the loaded object as the typed map `T`.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ReadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ReadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ReadError::Map { name, source })
}

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        let ring: RingBuf<MapData> = take_map(ebpf, "EVENTS")?;
        Ok(Self {
            ring: register(ring)?,
        })
    }

    /// Waits until the kernel signals new records. Readiness is cleared before the caller drains,
    /// so a record that arrives during the drain wakes the next wait instead of being missed.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands at most `max` queued records to `f`; returns how many there were.
    pub fn drain(&mut self, max: usize, f: &mut impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        n
    }
}

/// Registers a map fd with the runtime for readability.
pub fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (an aya map), which stays open and unchanged until the AsyncFd
    // drops it.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// What the kernel side could not record, by cause: the per-CPU counters summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelLosses {
    /// Records the ring buffer had no room for.
    pub ring_buffer: u64,
    /// Calls whose record was lost because the pending table was full.
    pub pending_full: u64,
    /// Parked calls whose return never came.
    pub pending_stale: u64,
    /// Sockets the per-socket table had no room for.
    pub sockets_full: u64,
}

impl KernelLosses {
    /// Each cause with its `loss` line reason.
    fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("ring_buffer_full", self.ring_buffer),
            ("pending_table_full", self.pending_full),
            ("pending_stale", self.pending_stale),
            ("socket_table_full", self.sockets_full),
        ]
    }
}

/// Sums the kernel's per-CPU counters and reports increases, cause by cause.
pub struct LossCounter {
    counters: PerCpuArray<MapData, CpuCounters>,
    reported: KernelLosses,
}

/// One cause's losses not yet reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewLoss {
    pub reason: &'static str,
    pub count: u64,
    pub total: u64,
}

impl LossCounter {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        Ok(Self {
            counters: take_map(ebpf, "COUNTERS")?,
            reported: KernelLosses::default(),
        })
    }

    /// Totals across CPUs: (records attempted, losses by cause).
    pub fn totals(&self) -> Result<(u64, KernelLosses), ReadError> {
        let per_cpu = self.counters.get(&0, 0).map_err(|source| ReadError::Map {
            name: "COUNTERS",
            source,
        })?;
        Ok(per_cpu
            .iter()
            .fold((0, KernelLosses::default()), |(a, l), c| {
                (
                    a + c.next_seq,
                    KernelLosses {
                        ring_buffer: l.ring_buffer + c.lost,
                        pending_full: l.pending_full + c.pending_full,
                        pending_stale: l.pending_stale + c.pending_stale,
                        sockets_full: l.sockets_full + c.sockets_full,
                    },
                )
            }))
    }

    /// Losses reported so far.
    pub fn reported(&self) -> KernelLosses {
        self.reported
    }

    /// The causes whose total grew since the last poll.
    pub fn poll(&mut self) -> Result<Vec<NewLoss>, ReadError> {
        let (_, now) = self.totals()?;
        let new = now
            .by_reason()
            .into_iter()
            .zip(self.reported.by_reason())
            .filter(|((_, total), (_, before))| total > before)
            .map(|((reason, total), (_, before))| NewLoss {
                reason,
                count: total - before,
                total,
            })
            .collect();
        self.reported = now;
        Ok(new)
    }
}
