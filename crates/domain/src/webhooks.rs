//! Webhooks: URLs that are sent session events as signed JSON POSTs, retried until a receiver
//! takes them.
//!
//! A webhook is a validated URL, the event kinds it wants and the secret its deliveries are
//! signed with. Each event it wants becomes a [`Delivery`], kept by the [`WebhookStore`] until a
//! receiver answers 2xx or the [`RetrySchedule`] runs out, so a restart loses none. Where a
//! delivery may go is decided by [`address::refused_class`], at creation and again at each
//! attempt, on the addresses the host resolves to at that moment.

pub mod address;
pub mod schedule;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use self::{
    address::{address_allowed, refused_class, RefusedClass},
    schedule::{AttemptOutcome, AttemptRecord, DeliveryRecord, DeliveryState, RetrySchedule},
};
use crate::{
    events::{Event, EventKind},
    ports::{Clock, StoreError},
};

/// The most webhooks a server keeps: each can have a delivery in flight at any moment.
pub const MAX_WEBHOOKS: usize = 100;
/// The longest accepted URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The shortest and longest accepted secret, in characters.
pub const SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
/// The event filter that matches every kind.
pub const ALL_EVENTS: &str = "*";

crate::ids::prefixed_id!(
    /// A webhook's id: `wh_` and 32 lowercase hex digits.
    WebhookId,
    "wh_"
);
crate::ids::prefixed_id!(
    /// A delivery's id: `dlv_` and 32 lowercase hex digits; sent as `X-Trainyard-Delivery`,
    /// the same on every attempt, so a receiver can tell a retry from a new event.
    DeliveryId,
    "dlv_"
);

/// A webhook id received from outside; anything else is a webhook that does not exist.
fn webhook_id(raw: &str) -> Result<WebhookId, WebhookError> {
    WebhookId::parse(raw).map_err(|_| WebhookError::NotFound(crate::failure::shown(raw)))
}

/// The host of a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlHost {
    /// An address literal (`http://192.0.2.1/`, `http://[2001:db8::1]/`, and the numeric
    /// forms URL parsing turns into addresses, such as `http://3221225985/`).
    Ip(IpAddr),
    /// A name, resolved at each attempt.
    Name(String),
}

/// A webhook's URL: `http` or `https`, with a host, without credentials or fragment, at most
/// [`MAX_URL_LEN`] bytes. Kept in the normalised form URL parsing gives it, which is the form
/// the HTTP client reads too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: url::Url,
    host: UrlHost,
    port: u16,
}

impl WebhookUrl {
    /// Validates `raw`.
    ///
    /// # Errors
    /// [`WebhookError::InvalidUrl`] saying which rule `raw` breaks.
    pub fn parse(raw: &str) -> Result<Self, WebhookError> {
        let invalid = |why: String| Err(WebhookError::InvalidUrl(why));
        if raw.len() > MAX_URL_LEN {
            return invalid(format!("must be at most {MAX_URL_LEN} bytes, got {}", raw.len()));
        }
        let url = match url::Url::parse(raw.trim()) {
            Ok(url) => url,
            Err(e) => return invalid(format!("not a URL ({e})")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return invalid(format!("the scheme must be http or https, not {:?}", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return invalid("must not hold credentials (user:password@); sign with the secret instead".to_owned());
        }
        if url.fragment().is_some() {
            return invalid("must not have a fragment (#...)".to_owned());
        }
        let host = match url.host() {
            Some(url::Host::Ipv4(v4)) => UrlHost::Ip(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => UrlHost::Ip(IpAddr::V6(v6)),
            Some(url::Host::Domain(name)) if !name.is_empty() => UrlHost::Name(name.to_owned()),
            _ => return invalid("must name a host".to_owned()),
        };
        let Some(port) = url.port_or_known_default() else {
            return invalid("must name a port".to_owned());
        };
        if url.as_str().len() > MAX_URL_LEN {
            return invalid(format!("must be at most {MAX_URL_LEN} bytes once normalised"));
        }
        Ok(Self { url, host, port })
    }

    /// The URL as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    #[must_use]
    pub fn host(&self) -> &UrlHost {
        &self.host
    }

    /// The port, explicit or the scheme's.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The events a webhook wants: every kind (`*`), or some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    All,
    /// At least one kind, each once, in [`EventKind::ALL`]'s order.
    Kinds(Vec<EventKind>),
}

impl EventFilter {
    /// Parses wire names (`session.completed`, ...) or `*`.
    ///
    /// # Errors
    /// [`WebhookError::InvalidEvents`] for an empty list or an unknown name.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, WebhookError> {
        if names.is_empty() {
            return Err(WebhookError::InvalidEvents(format!("name at least one event kind, or \"{ALL_EVENTS}\" for all")));
        }
        let mut kinds = Vec::new();
        for name in names {
            let name = name.as_ref();
            if name == ALL_EVENTS {
                return Ok(Self::All);
            }
            let Some(kind) = EventKind::parse(name) else {
                let shown = crate::failure::shown(name);
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(WebhookError::InvalidEvents(format!(
                    "unknown event kind \"{shown}\"; known kinds: {}, or \"{ALL_EVENTS}\" for all",
                    known.join(", ")
                )));
            };
            kinds.push(kind);
        }
        Ok(Self::Kinds(EventKind::ALL.into_iter().filter(|k| kinds.contains(k)).collect()))
    }

    /// Whether an event of `kind` goes to the webhook.
    #[must_use]
    pub fn matches(&self, kind: EventKind) -> bool {
        match self {
            Self::All => true,
            Self::Kinds(kinds) => kinds.contains(&kind),
        }
    }

    /// The wire names: `["*"]` or the kinds.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        match self {
            Self::All => vec![ALL_EVENTS],
            Self::Kinds(kinds) => kinds.iter().map(|k| k.as_str()).collect(),
        }
    }

    /// The stored form: the names joined by commas.
    #[must_use]
    pub fn to_stored(&self) -> String {
        self.names().join(",")
    }

    /// Reads the stored form back.
    ///
    /// # Errors
    /// [`WebhookError::InvalidEvents`] when it is not one.
    pub fn from_stored(raw: &str) -> Result<Self, WebhookError> {
        Self::parse(&raw.split(',').collect::<Vec<_>>())
    }
}

/// The key a webhook's deliveries are signed with (HMAC-SHA256). Its `Debug` shows only its
/// fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecret({})", self.fingerprint())
    }
}

impl WebhookSecret {
    /// A secret chosen by a client: 16 to 256 characters, none of them a control character.
    ///
    /// # Errors
    /// [`WebhookError::InvalidSecret`] otherwise.
    pub fn new(raw: impl Into<String>) -> Result<Self, WebhookError> {
        let raw = raw.into();
        let chars = raw.chars().count();
        if !SECRET_CHARS.contains(&chars) {
            return Err(WebhookError::InvalidSecret(format!(
                "must be {} to {} characters, got {chars}",
                SECRET_CHARS.start(),
                SECRET_CHARS.end()
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(WebhookError::InvalidSecret("must not contain control characters".to_owned()));
        }
        Ok(Self(raw))
    }

    /// A fresh random secret: `whsec_` and 64 hex digits (256 bits mixed from two random UUIDs).
    #[must_use]
    pub fn generate() -> Self {
        let mut bits = Vec::with_capacity(32);
        bits.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        bits.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self(format!("whsec_{}", hex(&Sha256::digest(&bits))))
    }

    /// The secret itself, for signing and for the one answer that shows it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible name for the secret, safe to show: `sha256:` and 12 hex
    /// digits, so that an operator can tell which secret a webhook has.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(format!("trainyard-webhook-secret:{}", self.0).as_bytes());
        format!("sha256:{}", &hex(&digest)[..12])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: WebhookId,
    pub url: WebhookUrl,
    pub events: EventFilter,
    pub secret: WebhookSecret,
    pub created_at: OffsetDateTime,
}

/// One event on its way to one webhook, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub webhook_id: WebhookId,
    pub record: DeliveryRecord,
}

/// A delivery whose attempt is due, with what sending it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub url: WebhookUrl,
    pub secret: WebhookSecret,
    pub event: Event,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Where webhooks and their deliveries are kept.
///
/// # Errors
/// Every method returns [`StoreError::Busy`] when the store stays locked after retries,
/// [`StoreError::Corrupt`] when a stored row cannot be decoded, and [`StoreError::Io`] when
/// the disk fails.
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores a new webhook; it is sent only events recorded from now on.
    /// [`StoreError::Conflict`] when the id exists.
    fn insert_webhook(&self, webhook: &Webhook) -> Result<(), StoreError>;
    /// Every webhook, oldest first.
    fn webhooks(&self) -> Result<Vec<Webhook>, StoreError>;
    fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError>;
    /// Removes a webhook and all its deliveries, pending ones included; `false` when it did not
    /// exist.
    fn delete_webhook(&self, id: &WebhookId) -> Result<bool, StoreError>;
    /// Takes up to `limit` events recorded since the last call (oldest first) and, in one
    /// transaction, makes a pending delivery due at `at` of each to every webhook that wants
    /// its kind and existed before it, and remembers the last event taken. Returns how many
    /// events it took: fewer than `limit` means it caught up.
    fn enqueue_new_events(&self, at: OffsetDateTime, limit: u32) -> Result<u32, StoreError>;
    /// Of each webhook with pending deliveries due at `now` or before, the one due first (by
    /// enqueue order between equal times), earliest first, at most `limit`.
    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueDelivery>, StoreError>;
    /// The earliest time after `now` that a pending delivery is due.
    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError>;
    /// Writes an attempt on a pending delivery; `false` when it is gone (its webhook was
    /// deleted) or no longer pending.
    fn record_attempt(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError>;
    /// A webhook's deliveries, newest first, at most `limit`.
    fn deliveries(&self, webhook: &WebhookId, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    /// Forgets deliveries delivered or failed before `before`; returns how many.
    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}

/// Resolves host names, so that the addresses a URL leads to can be checked.
pub trait HostResolver: Send + Sync + 'static {
    /// The addresses of `host`.
    ///
    /// # Errors
    /// A message saying why it does not resolve.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, String>;
}

/// Why a URL's addresses may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the host {host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error(
        "{}; webhooks may only be sent to public addresses (a server started with --webhooks-allow-private sends to any)",
        refusal(.host, .address, .class)
    )]
    Refused { host: String, address: IpAddr, class: RefusedClass },
}

/// Which address was refused, and why, naming the host when it is a name.
fn refusal(host: &str, address: &IpAddr, class: &RefusedClass) -> String {
    if host == address.to_string() {
        format!("{address} is a {class} address")
    } else {
        format!("{host} resolves to {address}, a {class} address")
    }
}

/// The addresses to connect to for `url`: resolved once, each checked against the address
/// policy unless `allow_private`. A host with any refused address is refused whole.
///
/// # Errors
/// [`AddressError`] when the host does not resolve, resolves to nothing, or to a refused address.
pub fn checked_addresses(url: &WebhookUrl, resolver: &dyn HostResolver, allow_private: bool) -> Result<Vec<SocketAddr>, AddressError> {
    let (host, ips) = match url.host() {
        UrlHost::Ip(ip) => (ip.to_string(), vec![*ip]),
        UrlHost::Name(name) => {
            let ips = resolver.resolve(name, url.port()).map_err(|reason| AddressError::Unresolvable { host: name.clone(), reason })?;
            (name.clone(), ips)
        }
    };
    if ips.is_empty() {
        return Err(AddressError::Unresolvable { host, reason: "no address".to_owned() });
    }
    if !allow_private {
        if let Some((address, class)) = ips.iter().find_map(|ip| refused_class(*ip).map(|c| (*ip, c))) {
            return Err(AddressError::Refused { host, address, class });
        }
    }
    Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, url.port())).collect())
}

/// Why a webhook operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    #[error("invalid url: {0}")]
    Address(#[from] AddressError),
    #[error("invalid events: {0}")]
    InvalidEvents(String),
    #[error("invalid secret: {0}")]
    InvalidSecret(String),
    #[error("webhook '{0}' not found")]
    NotFound(String),
    #[error("this server already has {MAX_WEBHOOKS} webhooks, the most it keeps; delete one first")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a client asks for when it creates a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    /// Generated when absent.
    pub secret: Option<String>,
}

/// The use case behind the webhook endpoints.
#[derive(Clone)]
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    resolver: Arc<dyn HostResolver>,
    clock: Arc<dyn Clock>,
    allow_private: bool,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks").field("allow_private", &self.allow_private).finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The use case over `store`; URLs are checked through `resolver`, and refused when they
    /// lead to a refused address unless `allow_private`.
    #[must_use]
    pub fn new(store: Arc<dyn WebhookStore>, resolver: Arc<dyn HostResolver>, clock: Arc<dyn Clock>, allow_private: bool) -> Self {
        Self { store, resolver, clock, allow_private }
    }

    /// Validates and stores a webhook. Every problem with the request is found before the
    /// host is resolved; the host must resolve, and only to allowed addresses. The answer
    /// holds the secret: show it to the client this once.
    ///
    /// # Errors
    /// [`WebhookError::InvalidUrl`], [`WebhookError::InvalidEvents`],
    /// [`WebhookError::InvalidSecret`], [`WebhookError::Address`], [`WebhookError::TooMany`], or
    /// the store's error.
    pub fn create(&self, request: NewWebhook) -> Result<Webhook, WebhookError> {
        let url = WebhookUrl::parse(&request.url)?;
        let events = EventFilter::parse(&request.events)?;
        let secret = match request.secret {
            Some(raw) => WebhookSecret::new(raw)?,
            None => WebhookSecret::generate(),
        };
        if self.store.webhooks()?.len() >= MAX_WEBHOOKS {
            return Err(WebhookError::TooMany);
        }
        checked_addresses(&url, self.resolver.as_ref(), self.allow_private)?;
        let webhook = Webhook { id: WebhookId::generate(), url, events, secret, created_at: self.clock.now() };
        self.store.insert_webhook(&webhook)?;
        Ok(webhook)
    }

    /// Every webhook, oldest first.
    ///
    /// # Errors
    /// The store's error.
    pub fn list(&self) -> Result<Vec<Webhook>, WebhookError> {
        Ok(self.store.webhooks()?)
    }

    /// Removes a webhook and returns it; its pending deliveries are not sent.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`], or the store's error.
    pub fn delete(&self, id: &str) -> Result<Webhook, WebhookError> {
        let id = webhook_id(id)?;
        let found = self.store.webhook(&id)?;
        match found {
            Some(webhook) if self.store.delete_webhook(&id)? => Ok(webhook),
            _ => Err(WebhookError::NotFound(id.to_string())),
        }
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`WebhookError::NotFound`], or the store's error.
    pub fn deliveries(&self, id: &str, limit: u32) -> Result<Vec<Delivery>, WebhookError> {
        let id = webhook_id(id)?;
        if self.store.webhook(&id)?.is_none() {
            return Err(WebhookError::NotFound(id.to_string()));
        }
        Ok(self.store.deliveries(&id, limit)?)
    }
}

#[cfg(test)]
mod tests;
