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
    positions: Option<RingPositions>,
    /// The most bytes found queued at the start of a drain since `take_peak`.
    peak_queued: u64,
}

impl EventReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReadError> {
        let ring: RingBuf<MapData> = take_map(ebpf, "EVENTS")?;
        use std::os::fd::AsRawFd as _;
        let positions = RingPositions::map(ring.as_raw_fd())
            .inspect_err(|e| tracing::warn!(error = %e, "ring-buffer fill cannot be measured"))
            .ok();
        Ok(Self {
            ring: register(ring)?,
            positions,
            peak_queued: 0,
        })
    }

    /// The most bytes the ring held when a drain began, since the last call; None when the
    /// ring's positions could not be mapped.
    pub fn take_peak(&mut self) -> Option<u64> {
        self.positions.as_ref()?;
        Some(std::mem::take(&mut self.peak_queued))
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
        if let Some(p) = &self.positions {
            self.peak_queued = self.peak_queued.max(p.queued());
        }
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

/// The ring buffer's consumer and producer positions, mapped read-only a second time (aya keeps
/// its own mapping private): their difference is what the kernel has queued and the daemon not
/// yet read, the ring's fill.
struct RingPositions {
    base: std::ptr::NonNull<libc::c_void>,
    page: usize,
}

impl RingPositions {
    fn map(fd: std::os::fd::RawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new shared read-only mapping of the ring map's first two pages (consumer
        // position, producer position), which the kernel allows for any ring buffer; nothing
        // else is touched, and `Drop` unmaps it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(base).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { base, page })
    }

    /// Bytes queued now (records with their headers).
    fn queued(&self) -> u64 {
        // SAFETY: both positions are the kernel's `unsigned long`s, aligned at the start of a
        // mapped page, written atomically by the kernel (producer) and by aya (consumer); they
        // are only read here, with relaxed loads, which read-only memory allows.
        let load = |offset: usize| unsafe {
            (*(self.base.as_ptr().cast::<u8>().add(offset)
                as *const std::sync::atomic::AtomicUsize))
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let consumer = load(0);
        let producer = load(self.page);
        producer.saturating_sub(consumer) as u64
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made.
        unsafe { libc::munmap(self.base.as_ptr(), 2 * self.page) };
    }
}

// SAFETY: the mapping is only read, through atomics.
unsafe impl Send for RingPositions {}

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
