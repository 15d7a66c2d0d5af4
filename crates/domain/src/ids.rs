//! Validated identifiers: session and sweep ids, model names and dataset names.
//!
//! Names are identifiers, never paths: once constructed they contain only `[A-Za-z0-9._-]`,
//! start with a letter or digit, hold no `..`, and are at most 128 bytes long.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name or id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("may contain only letters, digits, '.', '_' and '-' (found {found:?})")]
    BadChar { found: char },
    #[error("must not contain '..'")]
    DotDot,
    #[error("must look like '{prefix}' followed by 32 lowercase hex digits")]
    BadId { prefix: &'static str },
}

/// Longest accepted model or dataset name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

fn check_name(raw: &str) -> Result<(), NameError> {
    let mut chars = raw.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty);
    };
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { max: MAX_NAME_LEN, len: raw.chars().count() });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    if let Some(found) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::BadChar { found });
    }
    if raw.contains("..") {
        return Err(NameError::DotDot);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `raw` against the name allowlist.
            ///
            /// # Errors
            /// [`NameError`] saying which rule `raw` breaks.
            pub fn new(raw: impl Into<String>) -> Result<Self, NameError> {
                let raw = raw.into();
                check_name(&raw)?;
                Ok(Self(raw))
            }

            /// The name as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(raw: String) -> Result<Self, NameError> {
                Self::new(raw)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a model in the model registry.
    ModelName
);
name_type!(
    /// The name of a dataset in the dataset registry.
    DatasetName
);

/// Declares an id type: a prefix and 32 lowercase hex digits, generated from a random UUID.
macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            #[must_use]
            pub fn generate() -> Self {
                Self(format!("{}{}", Self::PREFIX, uuid::Uuid::new_v4().simple()))
            }

            /// Parses an id received from outside.
            ///
            /// # Errors
            /// [`NameError::BadId`](crate::ids::NameError::BadId) unless `raw` is the prefix and
            /// 32 lowercase hex digits.
            pub fn parse(raw: &str) -> Result<Self, $crate::ids::NameError> {
                let bad = || $crate::ids::NameError::BadId { prefix: Self::PREFIX };
                let hex = raw.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
                if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(bad())
                }
            }

            /// The id as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::ids::NameError;
            fn try_from(raw: String) -> Result<Self, $crate::ids::NameError> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use prefixed_id;

prefixed_id!(
    /// A training session's id: `sess_` followed by 32 lowercase hex digits.
    SessionId,
    "sess_"
);
prefixed_id!(
    /// A sweep's id: `swp_` followed by 32 lowercase hex digits.
    SweepId,
    "swp_"
);

#[cfg(test)]
mod tests {
    use quickcheck::{quickcheck, TestResult};

    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["iris", "iris.csv", "model_v2-final", "A", "0abc"] {
            assert!(DatasetName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_paths_and_junk() {
        for bad in ["", "../etc", "a/b", "a\\b", ".hidden", "a..b", "/abs", "a\0b", "a b", "é", "-x"] {
            assert!(ModelName::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ModelName::new("x".repeat(129)).unwrap_err(), NameError::TooLong { max: 128, len: 129 });
    }

    quickcheck! {
        // Property 1: a validated name is never a path: no separator, no parent reference,
        // no control character, and it survives a round trip through its text unchanged.
        fn prop01_valid_names_are_never_paths(raw: String) -> TestResult {
            match DatasetName::new(raw.clone()) {
                Ok(name) => {
                    let s = name.as_str();
                    TestResult::from_bool(
                        !s.contains('/') && !s.contains('\\') && !s.contains("..")
                            && !s.chars().any(char::is_control)
                            && s.len() <= MAX_NAME_LEN
                            && DatasetName::new(s).as_ref() == Ok(&name)
                            && s == raw,
                    )
                }
                Err(_) => TestResult::discard(),
            }
        }

        // Property 2: session ids are unique and parse back to themselves.
        fn prop02_session_ids_round_trip(n: u8) -> bool {
            let ids: Vec<SessionId> = (0..=n).map(|_| SessionId::generate()).collect();
            let unique: std::collections::HashSet<_> = ids.iter().collect();
            unique.len() == ids.len() && ids.iter().all(|id| SessionId::parse(id.as_str()).as_ref() == Ok(id))
        }

        // Property 1 (rejections): any string with a separator or parent reference is refused.
        fn prop01_path_like_strings_are_refused(prefix: String, suffix: String, pick: u8) -> bool {
            let sep = ["/", "\\", "..", "\0", "\n"][usize::from(pick % 5)];
            ModelName::new(format!("a{prefix}{sep}{suffix}")).is_err()
        }
    }
}
