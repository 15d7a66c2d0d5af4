//! Conversions between domain values and their stored form: fixed-width timestamps,
//! unsigned integers, and the error messages of values that cannot be read back.

use std::{fmt, io};

use time::{format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime, UtcOffset};
use trainyard_domain::{ports::StoreError, time_fmt};

/// RFC 3339 in UTC with exactly nine fractional digits, so that every stored timestamp has the
/// same width and text order is time order.
const STORED: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// A timestamp as stored.
///
/// # Errors
/// [`StoreError::Corrupt`] for a time outside the years 0000 to 9999, which RFC 3339 cannot write.
pub(crate) fn ts(t: OffsetDateTime) -> Result<String, StoreError> {
    let utc = t.to_offset(UtcOffset::UTC);
    if !(0..=9999).contains(&utc.year()) {
        return Err(StoreError::Corrupt(format!("timestamp {utc} is outside the years 0000 to 9999 and cannot be stored")));
    }
    utc.format(STORED).map_err(|e| corrupt("timestamp", e))
}

/// An optional timestamp as stored.
pub(crate) fn ts_opt(t: Option<OffsetDateTime>) -> Result<Option<String>, StoreError> {
    t.map(ts).transpose()
}

/// Reads a stored timestamp (any RFC 3339 text).
pub(crate) fn parse_ts(raw: &str) -> Result<OffsetDateTime, StoreError> {
    time_fmt::parse_iso8601(raw).map_err(|e| corrupt(&format!("timestamp {raw:?}"), e))
}

/// Reads an optional stored timestamp.
pub(crate) fn parse_ts_opt(raw: Option<&str>) -> Result<Option<OffsetDateTime>, StoreError> {
    raw.map(parse_ts).transpose()
}

/// A count or size as SQLite's signed integer.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is too large to store")))
}

/// A stored integer as an unsigned count or size.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("stored {what} {value} is negative")))
}

/// A stored integer as an epoch number.
pub(crate) fn to_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("stored {what} {value} is out of range")))
}

/// A stored value that cannot be read back.
pub(crate) fn corrupt(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A failed file operation, saying what was attempted.
pub(crate) fn io_error(what: &str, e: &io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use time::{Duration, OffsetDateTime, UtcOffset};

    use super::*;

    #[test]
    fn stored_timestamps_have_one_width_and_sort_in_time_order() {
        let base = OffsetDateTime::UNIX_EPOCH + Duration::days(19_737);
        let times = [
            base,
            base + Duration::nanoseconds(1),
            base + Duration::milliseconds(500),
            base + Duration::seconds(1),
            base + Duration::days(3650),
        ];
        let stored: Vec<String> = times.iter().map(|t| ts(*t).unwrap()).collect();
        assert_eq!(stored[0], "2024-01-15T00:00:00.000000000Z");
        assert!(stored.iter().all(|s| s.len() == stored[0].len()));
        assert!(stored.windows(2).all(|w| w[0] < w[1]));
        for (t, s) in times.iter().zip(&stored) {
            assert_eq!(parse_ts(s).unwrap(), *t);
        }
    }

    #[test]
    fn offsets_are_stored_as_utc() {
        let t = OffsetDateTime::UNIX_EPOCH.to_offset(UtcOffset::from_hms(5, 30, 0).unwrap());
        assert_eq!(ts(t).unwrap(), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn unwritable_years_are_refused() {
        let t = OffsetDateTime::UNIX_EPOCH - Duration::days(800_000);
        assert!(matches!(ts(t), Err(StoreError::Corrupt(_))));
    }
}
