//! ISO 8601 UTC timestamps as the wire contract writes them: `2024-01-15T10:30:00Z`.

use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

/// Formats `t` in UTC as RFC 3339 with a `Z` suffix and whole seconds or finer.
#[must_use]
pub fn iso8601(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses an RFC 3339 timestamp.
///
/// # Errors
/// The parse error when `s` is not RFC 3339.
pub fn parse_iso8601(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &Rfc3339)
}
