//! Kernel timestamps are CLOCK_MONOTONIC; the log wants wall-clock UTC.
use chrono::{DateTime, SecondsFormat, Utc};
use nix::time::{ClockId, clock_gettime};

/// Converts monotonic nanoseconds to wall time using an offset sampled from both clocks. The
/// offset is refreshed periodically so that an NTP step is followed.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

fn now_ns(clock: ClockId) -> i128 {
    clock_gettime(clock)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

/// Wall-clock time as Unix nanoseconds (the store's and the alert state's unit).
pub fn unix_ns(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// `unix_ns` of now.
pub fn now_unix_ns() -> i64 {
    unix_ns(Utc::now())
}

/// CLOCK_MONOTONIC now, in the kernel records' unit.
pub fn monotonic_now() -> u64 {
    now_ns(ClockId::CLOCK_MONOTONIC).max(0) as u64
}

impl WallClock {
    pub fn sample() -> Self {
        let mono = now_ns(ClockId::CLOCK_MONOTONIC);
        let real = now_ns(ClockId::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    pub fn from_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_utc(&self, monotonic_ns: u64) -> DateTime<Utc> {
        let wall = monotonic_ns as i128 + self.offset_ns;
        let secs = wall.div_euclid(1_000_000_000) as i64;
        let nanos = wall.rem_euclid(1_000_000_000) as u32;
        DateTime::from_timestamp(secs, nanos).unwrap_or_default()
    }
}

/// RFC 3339, UTC, always nine fractional digits: sortable as text and exact.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub fn now_rfc3339() -> String {
    rfc3339(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds_and_z() {
        let c = WallClock::from_offset(1_700_000_000_000_000_000);
        assert_eq!(rfc3339(c.to_utc(5)), "2023-11-14T22:13:20.000000005Z");
    }

    #[test]
    fn sampled_clock_is_close_to_now() {
        let c = WallClock::sample();
        let mono = now_ns(ClockId::CLOCK_MONOTONIC) as u64;
        let diff = (c.to_utc(mono) - Utc::now()).num_milliseconds().abs();
        assert!(diff < 1000, "{diff} ms");
    }
}
