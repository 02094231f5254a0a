//! Every numeric setting has bounds: a value outside them is an error naming the setting's line
//! and column (serde's position), never a value that panics or wraps in arithmetic later.
use serde::{Deserialize, Deserializer, de};

/// A whole number from `MIN` to `MAX` inclusive, as `T`.
pub fn within<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let v = u64::deserialize(d)?;
    let out_of_range = || {
        de::Error::custom(format!(
            "{v} is out of range: give a whole number from {MIN} to {MAX}{}",
            if MIN == 1 {
                " (must be at least 1)"
            } else {
                ""
            }
        ))
    };
    if !(MIN..=MAX).contains(&v) {
        return Err(out_of_range());
    }
    T::try_from(v).map_err(|_| out_of_range())
}

/// The same bounds for a command-line flag.
pub fn flag_within<const MIN: u64, const MAX: u64>(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if (MIN..=MAX).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is out of range: give a whole number from {MIN} to {MAX}"
        ))
    }
}

/// One day, in seconds.
pub const DAY: u64 = 86_400;
