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

    /// `monotonic_ns` as Unix nanoseconds (saturating far outside the years chrono knows).
    pub fn to_unix_ns(&self, monotonic_ns: u64) -> i64 {
        (monotonic_ns as i128 + self.offset_ns).clamp(i64::MIN as i128, i64::MAX as i128) as i64
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

/// An RFC 3339 time as `rfc3339` writes it, held without allocating.
#[derive(Clone, Copy)]
pub struct Timestamp {
    buf: [u8; 40],
    len: u8,
}

impl Timestamp {
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..usize::from(self.len)];
        // SAFETY: only ASCII is ever written into `buf` (digits, `Z`, and a prefix or a whole
        // text of `rfc3339`'s, which is ASCII); validating it for every line was measurable.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn of(text: &str) -> Self {
        let mut t = Timestamp {
            buf: [0; 40],
            len: 0,
        };
        if text.is_ascii()
            && let Some(dst) = t.buf.get_mut(..text.len())
        {
            dst.copy_from_slice(text.as_bytes());
            t.len = text.len() as u8;
        }
        t
    }
}

/// Formats Unix nanoseconds exactly as `rfc3339` does, reusing the date and time of day while
/// the second stays the same: every line of the event log is stamped, and a calendar
/// computation per line was a measurable part of writing it.
#[derive(Debug, Default)]
pub struct StampClock {
    /// The second `prefix` is for, and `YYYY-MM-DDTHH:MM:SS.` of it.
    second: Option<i64>,
    prefix: [u8; 20],
}

impl StampClock {
    pub fn format(&mut self, unix_ns: i64) -> Timestamp {
        let (second, nanos) = (
            unix_ns.div_euclid(1_000_000_000),
            unix_ns.rem_euclid(1_000_000_000) as u32,
        );
        if self.second != Some(second) {
            let whole = rfc3339(DateTime::from_timestamp_nanos(unix_ns));
            // Four-digit years only (every time an i64 of nanoseconds holds): anything else is
            // written by chrono each time.
            if whole.len() != 30 || !whole.is_ascii() {
                return Timestamp::of(&whole);
            }
            self.prefix.copy_from_slice(&whole.as_bytes()[..20]);
            self.second = Some(second);
        }
        let mut t = Timestamp {
            buf: [0; 40],
            len: 30,
        };
        t.buf[..20].copy_from_slice(&self.prefix);
        let mut n = nanos;
        for i in (20..29).rev() {
            t.buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        t.buf[29] = b'Z';
        t
    }
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
    fn the_stamp_clock_writes_what_rfc3339_writes() {
        let mut c = StampClock::default();
        let times = [
            0,
            5,
            999_999_999,
            1_000_000_000,
            1_764_960_000_123_456_789,
            1_764_960_000_999_999_999,
            1_764_960_001_000_000_000,
            -1,
            -1_000_000_001,
            i64::MAX,
            i64::MIN,
        ];
        for ns in times.into_iter().chain(times.into_iter().rev()) {
            assert_eq!(
                c.format(ns).as_str(),
                rfc3339(DateTime::from_timestamp_nanos(ns)),
                "{ns}"
            );
        }
    }

    #[test]
    fn unix_nanoseconds_agree_with_the_calendar_conversion() {
        let c = WallClock::from_offset(1_700_000_000_000_000_000);
        for mono in [0, 5, 123_456_789_012] {
            assert_eq!(c.to_unix_ns(mono), unix_ns(c.to_utc(mono)));
        }
    }

    #[test]
    fn sampled_clock_is_close_to_now() {
        let c = WallClock::sample();
        let mono = now_ns(ClockId::CLOCK_MONOTONIC) as u64;
        let diff = (c.to_utc(mono) - Utc::now()).num_milliseconds().abs();
        assert!(diff < 1000, "{diff} ms");
    }
}
