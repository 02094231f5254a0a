//! The hasher of the tables and caches every event passes through. Their keys come from events,
//! which local users partly choose (addresses, ports, pids, comms): foldhash with a random seed
//! per process, several times cheaper than std's SipHash (a tenth of the event loop's time) and
//! not predictable from outside the process.
use std::{hash::Hash, num::NonZeroUsize};

pub type RandomState = foldhash::fast::RandomState;

pub type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

pub type Lru<K, V> = lru::LruCache<K, V, RandomState>;

/// An LRU cache of at most `cap` entries (at least one).
pub fn lru<K: Hash + Eq, V>(cap: usize) -> Lru<K, V> {
    lru::LruCache::with_hasher(
        NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN),
        RandomState::default(),
    )
}
