//! API keys: hashing, fingerprints, scopes, managed keys with expiry and revocation, and the
//! authenticator use case that checks a presented key against the scope an operation needs,
//! applies the attempt limits, and audits every attempt.

use std::{fmt, net::IpAddr, str::FromStr, sync::Arc, time::Duration as StdDuration};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

use crate::ports::{AttemptLimiter, AuthStore, Clock, StoreError};

/// What a key may do. Scopes are ranked: each includes everything the ones below it allow.
///
/// - `read`: every `GET` except the administration routes;
/// - `train`: `read`, plus starting, stopping and cancelling sessions, uploading datasets,
///   prediction and generation;
/// - `admin`: everything, including model uploads, deletions, keys and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Train,
    Admin,
}

impl Scope {
    /// Every scope, lowest rank first.
    pub const ALL: [Self; 3] = [Self::Read, Self::Train, Self::Admin];

    /// The rank: a scope allows an operation iff its rank is at least the operation's.
    #[must_use]
    pub fn rank(self) -> u8 {
        match self {
            Self::Read => 0,
            Self::Train => 1,
            Self::Admin => 2,
        }
    }

    /// Whether a key of this scope may perform an operation that needs `required`.
    #[must_use]
    pub fn permits(self, required: Self) -> bool {
        self.rank() >= required.rank()
    }

    /// The stored and wire spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Train => "train",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw).ok_or_else(|| format!("invalid scope {raw:?}: use read, train or admin"))
    }
}

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
    pub scope: Scope,
}

impl ApiKeyRecord {
    /// A record for a freshly generated `key`, of scope `admin` (see [`Self::with_scope`]).
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
            scope: Scope::Admin,
        }
    }

    /// The same record with another scope.
    #[must_use]
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Whether the key is revoked or expired at `now`.
    #[must_use]
    pub fn status(&self, now: OffsetDateTime) -> KeyStatus {
        match (self.revoked_at, self.expires_at) {
            (Some(r), _) if r <= now => KeyStatus::Revoked,
            (_, Some(e)) if e <= now => KeyStatus::Expired,
            _ => KeyStatus::Active,
        }
    }
}

/// Whether a managed key can authenticate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    /// The listed spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// A key just issued: the key itself (shown once, never stored) and its stored record.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedKey {
    pub key: String,
    pub record: ApiKeyRecord,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey").field("record", &self.record).finish_non_exhaustive()
    }
}

/// Why a key could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid label: {0}")]
    InvalidLabel(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest accepted key label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// Generates a key of `scope` labelled `label`, stores its hash and returns it once.
///
/// # Errors
/// [`KeyError::InvalidLabel`] for an empty label, one longer than [`MAX_LABEL_CHARS`] or one
/// with control characters; [`KeyError::Store`] when the store fails.
pub fn issue_key(
    store: &dyn AuthStore,
    label: &str,
    scope: Scope,
    now: OffsetDateTime,
    lifetime: Option<Duration>,
) -> Result<IssuedKey, KeyError> {
    let label = label.trim();
    if label.is_empty() || label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(KeyError::InvalidLabel(format!("use 1 to {MAX_LABEL_CHARS} printable characters")));
    }
    let key = generate_key();
    let record = ApiKeyRecord::new(&key, label, now, lifetime).with_scope(scope);
    store.insert_key(&record)?;
    Ok(IssuedKey { key, record })
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
    /// A failed attempt past the failure limit of its client address or key.
    Throttled,
    /// A valid key past its request rate.
    RateLimited,
    /// A valid key whose scope is below the one the operation needs.
    InsufficientScope,
}

impl AuthOutcome {
    /// Every outcome.
    pub const ALL: [Self; 8] = [
        Self::Success,
        Self::Missing,
        Self::Invalid,
        Self::Expired,
        Self::Revoked,
        Self::Throttled,
        Self::RateLimited,
        Self::InsufficientScope,
    ];

    /// The stored spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Throttled => "throttled",
            Self::RateLimited => "rate_limited",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// Parses the stored spelling.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == raw)
    }

    /// Whether the presented key itself was refused (as opposed to a valid key held back).
    #[must_use]
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Missing | Self::Invalid | Self::Expired | Self::Revoked)
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
    /// The effective client address (behind a trusted proxy, the forwarded one).
    pub client_addr: Option<IpAddr>,
    /// The scope the operation needs.
    pub required: Scope,
}

/// Who an authenticated request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub fingerprint: String,
    /// The managed key's id; `None` for a key configured with `API_KEYS`.
    pub key_id: Option<String>,
    pub scope: Scope,
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
    #[error("too many failed authentications from this client or with this key; retry in {} s", retry_secs(*retry_after))]
    Throttled { retry_after: StdDuration },
    #[error("this API key's request rate is exceeded; retry in {} s", retry_secs(*retry_after))]
    RateLimited { retry_after: StdDuration },
    #[error("this operation needs an API key of scope '{required}' or higher; this key's scope is '{held}'")]
    InsufficientScope { required: Scope, held: Scope },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The audited outcome this refusal is; `None` for a store failure, which is no outcome
    /// of the attempt.
    #[must_use]
    pub fn outcome(&self) -> Option<AuthOutcome> {
        match self {
            Self::Missing => Some(AuthOutcome::Missing),
            Self::Invalid => Some(AuthOutcome::Invalid),
            Self::Expired => Some(AuthOutcome::Expired),
            Self::Revoked => Some(AuthOutcome::Revoked),
            Self::Throttled { .. } => Some(AuthOutcome::Throttled),
            Self::RateLimited { .. } => Some(AuthOutcome::RateLimited),
            Self::InsufficientScope { .. } => Some(AuthOutcome::InsufficientScope),
            Self::Store(_) => None,
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1: the value of a `Retry-After` header.
#[must_use]
pub fn retry_secs(wait: StdDuration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// No limits: every attempt passes. The default of an [`Authenticator`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLimits;

impl AttemptLimiter for NoLimits {
    fn failure(&self, _client: Option<IpAddr>, _fingerprint: Option<&str>) -> Result<(), StdDuration> {
        Ok(())
    }

    fn request(&self, _fingerprint: &str) -> Result<(), StdDuration> {
        Ok(())
    }
}

/// Checks presented keys against configured keys (held as hashes in memory, scope `admin`) and
/// managed keys (in the auth store, each with its scope), applies the attempt limits, and
/// audits every attempt.
pub struct Authenticator {
    configured: Vec<(ApiKeyHash, String)>,
    store: Arc<dyn AuthStore>,
    clock: Arc<dyn Clock>,
    limiter: Arc<dyn AttemptLimiter>,
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
        Self { configured, store, clock, limiter: Arc::new(NoLimits) }
    }

    /// The same authenticator with attempt limits.
    #[must_use]
    pub fn with_limiter(mut self, limiter: Arc<dyn AttemptLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Issues a managed key (see [`issue_key`]).
    ///
    /// # Errors
    /// As [`issue_key`].
    pub fn issue_key(&self, label: &str, scope: Scope, lifetime: Option<Duration>) -> Result<IssuedKey, KeyError> {
        issue_key(self.store.as_ref(), label, scope, self.clock.now(), lifetime)
    }

    /// Every managed key, oldest first (hashes and fingerprints, never keys).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.store.list_keys()
    }

    /// Revokes the managed key with this id or fingerprint, now; a key already revoked keeps
    /// its revocation time.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown key.
    pub fn revoke_key(&self, id_or_fingerprint: &str) -> Result<ApiKeyRecord, StoreError> {
        self.store.revoke_key(id_or_fingerprint, self.clock.now())
    }

    /// The current time of this authenticator's clock.
    #[must_use]
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
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
        Ok(self.store.list_keys()?.iter().any(|k| k.status(now) == KeyStatus::Active))
    }

    /// Checks `presented` against the scope `ctx` needs and the attempt limits, and writes the
    /// attempt to the audit log, whatever the outcome.
    ///
    /// A refused key counts against the failure limits of its client address and of its
    /// fingerprint, and past them is [`AuthError::Throttled`]; a valid key is never held back
    /// by failure limits, only by its own request rate.
    ///
    /// # Errors
    /// [`AuthError`] saying why the request was refused; [`AuthError::Store`] when the audit
    /// log cannot be written (the request is then refused too).
    pub fn authenticate(&self, presented: Option<&str>, ctx: &AttemptContext) -> Result<Principal, AuthError> {
        let now = self.clock.now();
        let checked = self.check(presented, now)?;
        let refusal = if checked.outcome.is_failure() {
            match self.limiter.failure(ctx.client_addr, checked.fingerprint.as_deref()) {
                Ok(()) => None,
                Err(retry_after) => Some(AuthError::Throttled { retry_after }),
            }
        } else {
            let fp = checked.fingerprint.as_deref().unwrap_or_default();
            match self.limiter.request(fp) {
                Err(retry_after) => Some(AuthError::RateLimited { retry_after }),
                Ok(()) if !checked.scope.permits(ctx.required) => {
                    Some(AuthError::InsufficientScope { required: ctx.required, held: checked.scope })
                }
                Ok(()) => None,
            }
        };
        let outcome = refusal.as_ref().and_then(AuthError::outcome).unwrap_or(checked.outcome);
        self.store.append_audit(&AuditEntry {
            timestamp: now,
            outcome,
            fingerprint: checked.fingerprint.clone(),
            key_id: checked.key_id.clone(),
            method: ctx.method.clone(),
            endpoint: ctx.endpoint.clone(),
            client_addr: ctx.client_addr.map(|a| a.to_string()),
        })?;
        if let Some(e) = refusal {
            return Err(e);
        }
        match checked.outcome {
            AuthOutcome::Missing => Err(AuthError::Missing),
            AuthOutcome::Invalid => Err(AuthError::Invalid),
            AuthOutcome::Expired => Err(AuthError::Expired),
            AuthOutcome::Revoked => Err(AuthError::Revoked),
            _ => Ok(Principal { fingerprint: checked.fingerprint.unwrap_or_default(), key_id: checked.key_id, scope: checked.scope }),
        }
    }

    fn check(&self, presented: Option<&str>, now: OffsetDateTime) -> Result<Checked, StoreError> {
        let checked = |outcome, fingerprint, key_id, scope| Checked { outcome, fingerprint, key_id, scope };
        let Some(key) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(checked(AuthOutcome::Missing, None, None, Scope::Read));
        };
        let hash = ApiKeyHash::of(key);
        // Compare against every configured key without stopping early.
        let matched = self.configured.iter().fold(None, |found, (h, fp)| if h.ct_eq(&hash) { Some(fp.clone()) } else { found });
        if let Some(fp) = matched {
            return Ok(checked(AuthOutcome::Success, Some(fp), None, Scope::Admin));
        }
        let fp = Some(fingerprint(key));
        Ok(match self.store.find_key(&hash)? {
            None => checked(AuthOutcome::Invalid, fp, None, Scope::Read),
            Some(rec) => {
                let outcome = match rec.status(now) {
                    KeyStatus::Active => AuthOutcome::Success,
                    KeyStatus::Expired => AuthOutcome::Expired,
                    KeyStatus::Revoked => AuthOutcome::Revoked,
                };
                checked(outcome, fp, Some(rec.id), rec.scope)
            }
        })
    }
}

/// What checking a presented key found, before limits and scope.
struct Checked {
    outcome: AuthOutcome,
    fingerprint: Option<String>,
    key_id: Option<String>,
    scope: Scope,
}

/// The longest key lifetime [`parse_duration`] accepts: 100 years.
pub const MAX_LIFETIME_DAYS: i64 = 36_500;

/// Parses a duration such as `30d`, `12h`, `90m`, `45s` or `2w`, from 1 second to
/// [`MAX_LIFETIME_DAYS`].
///
/// # Errors
/// A message saying what is accepted (quoting at most 32 characters of the input).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let shown: String = raw.chars().take(32).collect();
    let err = || format!("invalid duration {shown:?}: use a number followed by s, m, h, d or w (e.g. 30d), at most {MAX_LIFETIME_DAYS}d");
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = raw.split_at(split);
    let n: i64 = num.parse().map_err(|_| err())?;
    let unit_secs: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    match n.checked_mul(unit_secs) {
        Some(secs) if n > 0 && secs <= MAX_LIFETIME_DAYS * 86_400 => Ok(Duration::seconds(secs)),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::quickcheck;

    use super::*;
    use crate::testing::{FixedClock, MemoryAuthStore};

    fn ctx() -> AttemptContext {
        AttemptContext {
            method: "GET".into(),
            endpoint: "/api/v1/models".into(),
            client_addr: Some(IpAddr::from([127, 0, 0, 1])),
            required: Scope::Read,
        }
    }

    /// A limiter that lets `failures` failed attempts and `requests` requests through, then
    /// refuses, counting what it saw.
    #[derive(Debug, Default)]
    struct CountingLimiter {
        failures: u32,
        requests: u32,
        seen: std::sync::Mutex<(u32, u32)>,
    }

    impl AttemptLimiter for CountingLimiter {
        fn failure(&self, _client: Option<IpAddr>, _fingerprint: Option<&str>) -> Result<(), StdDuration> {
            let mut seen = self.seen.lock().unwrap();
            seen.0 += 1;
            if seen.0 > self.failures {
                Err(StdDuration::from_millis(5_500))
            } else {
                Ok(())
            }
        }

        fn request(&self, _fingerprint: &str) -> Result<(), StdDuration> {
            let mut seen = self.seen.lock().unwrap();
            seen.1 += 1;
            if seen.1 > self.requests {
                Err(StdDuration::from_secs(3))
            } else {
                Ok(())
            }
        }
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
        assert!(auth.authenticate(Some("k-exp"), &ctx()).is_ok());
        clock.advance(Duration::days(2));
        assert_eq!(auth.authenticate(Some("k-exp"), &ctx()), Err(AuthError::Expired));
        assert_eq!(auth.authenticate(Some("k-rev"), &ctx()), Err(AuthError::Revoked));
    }

    #[test]
    fn failures_past_the_limit_are_throttled_but_valid_keys_pass_and_everything_is_audited() {
        let (auth, store, _) = setup(&["good-key-0123"]);
        let auth = auth.with_limiter(Arc::new(CountingLimiter { failures: 2, requests: 100, ..CountingLimiter::default() }));
        assert_eq!(auth.authenticate(Some("bad"), &ctx()), Err(AuthError::Invalid));
        assert_eq!(auth.authenticate(None, &ctx()), Err(AuthError::Missing));
        let throttled = auth.authenticate(Some("bad"), &ctx());
        assert_eq!(throttled, Err(AuthError::Throttled { retry_after: StdDuration::from_millis(5_500) }));
        assert!(throttled.unwrap_err().to_string().contains("retry in 6 s"));
        let who = auth.authenticate(Some("good-key-0123"), &ctx()).unwrap();
        assert_eq!((who.scope, who.key_id, who.fingerprint), (Scope::Admin, None, fingerprint("good-key-0123")));
        let outcomes: Vec<AuthOutcome> = store.list_audit(10).unwrap().into_iter().rev().map(|e| e.outcome).collect();
        assert_eq!(outcomes, [AuthOutcome::Invalid, AuthOutcome::Missing, AuthOutcome::Throttled, AuthOutcome::Success]);
    }

    #[test]
    fn a_valid_key_past_its_rate_is_rate_limited() {
        let (auth, store, _) = setup(&["good-key-0123"]);
        let auth = auth.with_limiter(Arc::new(CountingLimiter { failures: 0, requests: 1, ..CountingLimiter::default() }));
        assert!(auth.authenticate(Some("good-key-0123"), &ctx()).is_ok());
        assert_eq!(
            auth.authenticate(Some("good-key-0123"), &ctx()),
            Err(AuthError::RateLimited { retry_after: StdDuration::from_secs(3) })
        );
        assert_eq!(store.list_audit(1).unwrap()[0].outcome, AuthOutcome::RateLimited);
    }

    #[test]
    fn every_refusal_names_the_outcome_it_was_audited_with() {
        let (auth, store, clock) = setup(&["good-key-0123"]);
        let auth = auth.with_limiter(Arc::new(CountingLimiter { failures: 3, requests: 2, ..CountingLimiter::default() }));
        let now = clock.now();
        store.insert_key(&ApiKeyRecord::new("k-exp", "bot", now - Duration::days(2), Some(Duration::days(1)))).unwrap();
        store.insert_key(&ApiKeyRecord::new("k-read", "ro", now, None).with_scope(Scope::Read)).unwrap();
        let admin = AttemptContext { required: Scope::Admin, ..ctx() };
        let attempts = [
            auth.authenticate(None, &ctx()),
            auth.authenticate(Some("bad"), &ctx()),
            auth.authenticate(Some("k-exp"), &ctx()),
            auth.authenticate(Some("bad"), &ctx()),
            auth.authenticate(Some("k-read"), &admin),
            auth.authenticate(Some("good-key-0123"), &ctx()),
            auth.authenticate(Some("good-key-0123"), &ctx()),
        ];
        let refused: Vec<Option<AuthOutcome>> = attempts.iter().map(|a| a.as_ref().err().and_then(AuthError::outcome)).collect();
        let audited: Vec<AuthOutcome> = store.list_audit(10).unwrap().into_iter().rev().map(|e| e.outcome).collect();
        let expected = [
            AuthOutcome::Missing,
            AuthOutcome::Invalid,
            AuthOutcome::Expired,
            AuthOutcome::Throttled,
            AuthOutcome::InsufficientScope,
            AuthOutcome::Success,
            AuthOutcome::RateLimited,
        ];
        assert_eq!(audited, expected);
        for (refusal, outcome) in refused.iter().zip(expected) {
            assert_eq!(*refusal, (outcome != AuthOutcome::Success).then_some(outcome));
        }
        assert_eq!(AuthError::Store(StoreError::Busy).outcome(), None, "a store failure is no outcome of the attempt");
    }

    #[test]
    fn issued_keys_authenticate_with_their_scope_and_labels_are_checked() {
        let (auth, _, _) = setup(&[]);
        let issued = auth.issue_key(" bot ", Scope::Train, Some(Duration::days(30))).unwrap();
        assert_eq!((issued.record.label.as_str(), issued.record.scope), ("bot", Scope::Train));
        assert!(!format!("{issued:?}").contains(&issued.key), "Debug never shows the key");
        let who = auth.authenticate(Some(&issued.key), &AttemptContext { required: Scope::Train, ..ctx() }).unwrap();
        assert_eq!((who.scope, who.key_id), (Scope::Train, Some(issued.record.id.clone())));
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_LABEL_CHARS + 1)] {
            assert!(matches!(auth.issue_key(bad, Scope::Read, None), Err(KeyError::InvalidLabel(_))), "{bad:?}");
        }
        let revoked = auth.revoke_key(&issued.record.id).unwrap();
        assert_eq!(auth.revoke_key(&issued.record.id).unwrap().revoked_at, revoked.revoked_at, "a second revocation keeps the first time");
        assert_eq!(auth.authenticate(Some(&issued.key), &ctx()), Err(AuthError::Revoked));
        assert_eq!(auth.list_keys().unwrap()[0].status(auth.now()), KeyStatus::Revoked);
    }

    #[test]
    fn scopes_parse_and_rank() {
        assert_eq!("train".parse::<Scope>(), Ok(Scope::Train));
        assert!("root".parse::<Scope>().unwrap_err().contains("read, train or admin"));
        assert!(Scope::Read < Scope::Train && Scope::Train < Scope::Admin);
        assert_eq!(retry_secs(StdDuration::from_millis(1)), 1);
        assert_eq!(retry_secs(StdDuration::from_secs(6)), 6);
        assert_eq!(retry_secs(StdDuration::ZERO), 1);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::days(30)));
        assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3y").is_err());
        assert_eq!(parse_duration("2w"), Ok(Duration::weeks(2)));
        assert_eq!(parse_duration("36500d"), Ok(Duration::days(36_500)));
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("9223372036854775807w").is_err(), "no overflow");
        assert!(parse_duration(&"9".repeat(10_000)).unwrap_err().len() < 200, "the message quotes a bounded prefix");
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

        // Property 45: a key of scope S is admitted to an operation (any method and endpoint)
        // that needs scope R iff rank(S) >= rank(R); configured keys are admin; a refusal is
        // InsufficientScope naming both scopes, and the attempt is audited once either way.
        fn prop45_scope_admits_iff_its_rank_is_high_enough(method: String, endpoint: String, held: u8, required: u8, configured: bool) -> bool {
            let (auth, store, clock) = setup(&["configured-key-42"]);
            let held = if configured { Scope::Admin } else { Scope::ALL[usize::from(held) % 3] };
            let required = Scope::ALL[usize::from(required) % 3];
            let key = if configured {
                "configured-key-42".to_owned()
            } else {
                issue_key(store.as_ref(), "k", held, clock.now(), None).unwrap().key
            };
            let ctx = AttemptContext { method, endpoint, client_addr: None, required };
            let result = auth.authenticate(Some(&key), &ctx);
            let audit = store.list_audit(u32::MAX).unwrap();
            let admitted = held.rank() >= required.rank();
            audit.len() == 1
                && match result {
                    Ok(who) => admitted && who.scope == held && audit[0].outcome == AuthOutcome::Success,
                    Err(AuthError::InsufficientScope { required: r, held: h }) => {
                        !admitted && (r, h) == (required, held) && audit[0].outcome == AuthOutcome::InsufficientScope
                    }
                    Err(_) => false,
                }
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
