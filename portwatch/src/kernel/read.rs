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

/// Sums the kernel's per-CPU loss counters and reports increases.
pub struct LossCounter {
    counters: PerCpuArray<MapData, CpuCounters>,
    reported: u64,
}

impl LossCounter {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        Ok(Self {
            counters: take_map(ebpf, "COUNTERS")?,
            reported: 0,
        })
    }

    /// Totals across CPUs: (records attempted, records lost).
    pub fn totals(&self) -> Result<(u64, u64), ReadError> {
        let per_cpu = self.counters.get(&0, 0).map_err(|source| ReadError::Map {
            name: "COUNTERS",
            source,
        })?;
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(a, l), c| (a + c.next_seq, l + c.lost)))
    }

    /// Losses reported so far.
    pub fn reported(&self) -> u64 {
        self.reported
    }

    /// Losses not yet reported: `Some((new, total))` when the total grew.
    pub fn poll(&mut self) -> Result<Option<(u64, u64)>, ReadError> {
        let (_, lost) = self.totals()?;
        if lost > self.reported {
            let new = lost - self.reported;
            self.reported = lost;
            return Ok(Some((new, lost)));
        }
        Ok(None)
    }
}
