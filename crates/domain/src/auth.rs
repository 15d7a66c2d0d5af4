//! API keys: hashing, fingerprints, managed keys with expiry and revocation, and the
//! authenticator use case that checks a presented key and audits every attempt.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

use crate::ports::{AuthStore, Clock, StoreError};

/// SHA-256 of an API key. Keys are long random strings, so a fast hash is enough; the key
/// itself is never stored.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ApiKeyHash(pub [u8; 32]);

impl ApiKeyHash {
    /// Hashes a presented key.
    #[must_use]
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Lowercase hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses lowercase hex.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// Constant-time equality.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({}…)", &self.to_hex()[..8])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short, non-reversible name for a key, safe to log and show: `fp_` and 12 hex digits of a
/// hash domain-separated from the stored one.
#[must_use]
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(format!("trainyard-fingerprint:{key}").as_bytes());
    format!("fp_{}", &hex(&digest)[..12])
}

/// A new random API key: `ty_` followed by 43 URL-safe characters (256 bits).
#[must_use]
pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = Vec::with_capacity(32);
    bits.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bits.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    // Each v4 UUID carries 122 random bits; two hashed together give 256 uniformly mixed bits.
    let digest: [u8; 32] = Sha256::digest(&bits).into();
    let mut out = String::from("ty_");
    let mut acc = 0u32;
    let mut nbits = 0;
    for byte in digest {
        acc = (acc << 8) | u32::from(byte);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(char::from(ALPHABET[((acc >> nbits) & 63) as usize]));
        }
    }
    if nbits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - nbits)) & 63) as usize]));
    }
    out
}

/// A managed key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// `key_` and 8 hex digits.
    pub id: String,
    pub label: String,
    pub hash: ApiKeyHash,
    pub fingerprint: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKeyRecord {
    /// A record for a freshly generated `key`.
    #[must_use]
    pub fn new(key: &str, label: &str, now: OffsetDateTime, expires_in: Option<Duration>) -> Self {
        Self {
            id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            label: label.to_owned(),
            hash: ApiKeyHash::of(key),
            fingerprint: fingerprint(key),
            created_at: now,
            expires_at: expires_in.map(|d| now + d),
            revoked_at: None,
        }
    }
}

/// What happened to one authentication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthOutcome {
    Success,
    Missing,
    Invalid,
    Expired,
    Revoked,
}

impl AuthOutcome {
    /// The stored spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the stored spelling.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Success, Self::Missing, Self::Invalid, Self::Expired, Self::Revoked].into_iter().find(|o| o.as_str() == raw)
    }
}

/// One line of the authentication audit log. Holds a fingerprint, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub timestamp: OffsetDateTime,
    pub outcome: AuthOutcome,
    pub fingerprint: Option<String>,
    pub key_id: Option<String>,
    pub method: String,
    pub endpoint: String,
    pub client_addr: Option<String>,
}

/// The request an attempt belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptContext {
    pub method: String,
    pub endpoint: String,
    pub client_addr: Option<String>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("API key expired")]
    Expired,
    #[error("API key revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks presented keys against configured keys (held as hashes in memory) and managed keys
/// (in the auth store), and audits every attempt.
pub struct Authenticator {
    configured: Vec<(ApiKeyHash, String)>,
    store: Arc<dyn AuthStore>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("configured_keys", &self.configured.len()).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator accepting `configured_keys` plus the store's managed keys.
    #[must_use]
    pub fn new(configured_keys: &[String], store: Arc<dyn AuthStore>, clock: Arc<dyn Clock>) -> Self {
        let configured = configured_keys.iter().map(|k| (ApiKeyHash::of(k), fingerprint(k))).collect();
        Self { configured, store, clock }
    }

    /// Whether any key, configured or managed and still usable, can authenticate.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub fn has_usable_key(&self) -> Result<bool, StoreError> {
        if !self.configured.is_empty() {
            return Ok(true);
        }
        let now = self.clock.now();
        Ok(self.store.list_keys()?.iter().any(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now)))
    }

    /// Checks `presented` and writes the attempt to the audit log, whatever the outcome.
    ///
    /// # Errors
    /// [`AuthError`] saying why the key was refused; [`AuthError::Store`] when the audit
    /// log cannot be written (the request is then refused too).
    pub fn authenticate(&self, presented: Option<&str>, ctx: &AttemptContext) -> Result<(), AuthError> {
        let now = self.clock.now();
        let (outcome, fp, key_id) = self.check(presented, now)?;
        self.store.append_audit(&AuditEntry {
            timestamp: now,
            outcome,
            fingerprint: fp,
            key_id,
            method: ctx.method.clone(),
            endpoint: ctx.endpoint.clone(),
            client_addr: ctx.client_addr.clone(),
        })?;
        match outcome {
            AuthOutcome::Success => Ok(()),
            AuthOutcome::Missing => Err(AuthError::Missing),
            AuthOutcome::Invalid => Err(AuthError::Invalid),
            AuthOutcome::Expired => Err(AuthError::Expired),
            AuthOutcome::Revoked => Err(AuthError::Revoked),
        }
    }

    fn check(&self, presented: Option<&str>, now: OffsetDateTime) -> Result<(AuthOutcome, Option<String>, Option<String>), StoreError> {
        let Some(key) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok((AuthOutcome::Missing, None, None));
        };
        let hash = ApiKeyHash::of(key);
        // Compare against every configured key without stopping early.
        let matched = self.configured.iter().fold(None, |found, (h, fp)| if h.ct_eq(&hash) { Some(fp.clone()) } else { found });
        if let Some(fp) = matched {
            return Ok((AuthOutcome::Success, Some(fp), None));
        }
        let fp = Some(fingerprint(key));
        Ok(match self.store.find_key(&hash)? {
            None => (AuthOutcome::Invalid, fp, None),
            Some(rec) if rec.revoked_at.is_some_and(|r| r <= now) => (AuthOutcome::Revoked, fp, Some(rec.id)),
            Some(rec) if rec.expires_at.is_some_and(|e| e <= now) => (AuthOutcome::Expired, fp, Some(rec.id)),
            Some(rec) => (AuthOutcome::Success, fp, Some(rec.id)),
        })
    }
}

/// Parses a duration such as `30d`, `12h`, `90m`, `45s` or `2w`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let err = || format!("invalid duration {raw:?}: use a number followed by s, m, h, d or w (e.g. 30d)");
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = raw.split_at(split);
    let n: i64 = num.parse().map_err(|_| err())?;
    let d = match unit {
        "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        "w" => Duration::weeks(n),
        _ => return Err(err()),
    };
    if n <= 0 {
        return Err(err());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use quickcheck::quickcheck;

    use super::*;
    use crate::testing::{FixedClock, MemoryAuthStore};

    fn ctx() -> AttemptContext {
        AttemptContext { method: "GET".into(), endpoint: "/api/v1/models".into(), client_addr: Some("127.0.0.1".into()) }
    }

    fn setup(configured: &[&str]) -> (Authenticator, Arc<MemoryAuthStore>, Arc<FixedClock>) {
        let store = Arc::new(MemoryAuthStore::default());
        let clock = Arc::new(FixedClock::new(OffsetDateTime::UNIX_EPOCH + Duration::days(1000)));
        let keys: Vec<String> = configured.iter().map(|s| (*s).to_owned()).collect();
        (Authenticator::new(&keys, store.clone(), clock.clone()), store, clock)
    }

    #[test]
    fn expired_and_revoked_keys_say_so() {
        let (auth, store, clock) = setup(&[]);
        let now = clock.now();
        let expiring = ApiKeyRecord::new("k-exp", "bot", now, Some(Duration::days(1)));
        store.insert_key(&expiring).unwrap();
        store.insert_key(&ApiKeyRecord::new("k-rev", "old", now, None)).unwrap();
        store.revoke_key(&fingerprint("k-rev"), now).unwrap();
        assert_eq!(auth.authenticate(Some("k-exp"), &ctx()), Ok(()));
        clock.advance(Duration::days(2));
        assert_eq!(auth.authenticate(Some("k-exp"), &ctx()), Err(AuthError::Expired));
        assert_eq!(auth.authenticate(Some("k-rev"), &ctx()), Err(AuthError::Revoked));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::days(30)));
        assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3y").is_err());
    }

    quickcheck! {
        // Property 8: exactly the configured keys authenticate; everything else is refused.
        fn prop08_only_configured_keys_authenticate(keys: Vec<String>, probe: String) -> bool {
            let keys: Vec<String> = keys.into_iter().filter(|k| !k.trim().is_empty() && k.trim() == k).collect();
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let (auth, _, _) = setup(&refs);
            let expected = !probe.trim().is_empty() && keys.iter().any(|k| k == probe.trim());
            keys.iter().all(|k| auth.authenticate(Some(k), &ctx()).is_ok())
                && auth.authenticate(Some(&probe), &ctx()).is_ok() == expected
        }

        // Property 9: every attempt is audited once, and no audit entry contains the key.
        fn prop09_every_attempt_audited_without_the_key(attempts: Vec<Option<String>>) -> bool {
            let (auth, store, _) = setup(&["the-real-key-123456"]);
            for a in &attempts {
                let _ = auth.authenticate(a.as_deref(), &ctx());
            }
            let log = store.list_audit(u32::MAX).unwrap();
            log.len() == attempts.len()
                && log.iter().zip(attempts.iter().rev()).all(|(entry, a)| {
                    let text = format!("{entry:?}");
                    a.as_deref().is_none_or(|k| k.trim().len() < 4 || !text.contains(k.trim()))
                        && (entry.outcome == AuthOutcome::Success) == (a.as_deref().map(str::trim) == Some("the-real-key-123456"))
                })
        }

        // Property 10: stored hashes never equal or contain the key, and fingerprints are stable.
        fn prop10_keys_are_stored_hashed(key: String) -> bool {
            let rec = ApiKeyRecord::new(&key, "x", OffsetDateTime::UNIX_EPOCH, None);
            let stored = format!("{} {}", rec.hash.to_hex(), rec.fingerprint);
            (key.len() < 6 || !stored.contains(&key))
                && rec.fingerprint == fingerprint(&key)
                && ApiKeyHash::from_hex(&rec.hash.to_hex()) == Some(rec.hash.clone())
        }
    }

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
    }
}
