//! Wire DTOs of the webhook endpoints. A webhook's secret is shown once, in the answer that
//! creates it; listings show its fingerprint.

use serde::{Deserialize, Serialize};
use trainyard_domain::{
    telegram::{TelegramDelivery, TelegramSettings},
    time_fmt::iso8601,
    webhooks::{DeliveryRecord, NewWebhook, Webhook},
};
use utoipa::ToSchema;

/// `POST /api/v1/webhooks` body. Unknown fields are rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: `http` or `https`, with a host, without credentials, at
    /// most 2048 bytes. The host must resolve to public addresses only, unless the server
    /// runs with `--webhooks-allow-private`.
    #[schema(example = "https://hooks.example.com/trainyard")]
    pub url: String,
    /// Event kinds to deliver (`session.queued`, `session.started`, `epoch`, `log`,
    /// `session.completed`, `session.failed`, `session.stopped`), or `["*"]` for all.
    #[schema(example = json!(["session.completed", "session.failed"]))]
    pub events: Vec<String>,
    /// The key deliveries are signed with, 16 to 256 characters; generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

impl From<CreateWebhook> for NewWebhook {
    fn from(body: CreateWebhook) -> Self {
        Self { url: body.url, events: body.events, secret: body.secret }
    }
}

/// A webhook as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookInfo {
    /// `wh_` and 32 hex digits.
    pub id: String,
    pub url: String,
    /// The event kinds it gets, or `["*"]`.
    pub events: Vec<&'static str>,
    /// `sha256:` and 12 hex digits of a hash of the secret, to tell secrets apart.
    pub secret_fingerprint: String,
    pub created_at: String,
}

impl From<&Webhook> for WebhookInfo {
    fn from(w: &Webhook) -> Self {
        Self {
            id: w.id.to_string(),
            url: w.url.to_string(),
            events: w.events.names(),
            secret_fingerprint: w.secret.fingerprint(),
            created_at: iso8601(w.created_at),
        }
    }
}

/// A webhook just created, with its secret: shown in this answer only.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The HMAC-SHA256 key of `X-Trainyard-Signature`; the server never shows it again.
    pub secret: String,
    #[serde(flatten)]
    pub info: WebhookInfo,
}

impl From<&Webhook> for CreatedWebhook {
    fn from(w: &Webhook) -> Self {
        Self { secret: w.secret.expose().to_owned(), info: WebhookInfo::from(w) }
    }
}

/// One event on its way to one webhook (or Telegram chat).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryInfo {
    /// `dlv_` and 32 hex digits: the `X-Trainyard-Delivery` header, the same on every attempt.
    pub id: String,
    /// The event's kind.
    pub event: &'static str,
    /// The event's id, as the event streams number it.
    pub event_id: u64,
    pub session_id: String,
    /// `pending`, `delivered` or `failed` (every attempt of the schedule failed).
    pub state: &'static str,
    /// Attempts made so far.
    pub attempts: u32,
    /// The status of the last answer; null before the first attempt or when it got none.
    pub last_status: Option<u16>,
    /// Why the last attempt failed: the status, a timeout, a refused connection or address.
    pub last_error: Option<String>,
    pub created_at: String,
    pub last_attempt_at: Option<String>,
    /// When the next attempt is due; null once delivered or failed.
    pub next_attempt_at: Option<String>,
}

impl From<&DeliveryRecord> for DeliveryInfo {
    fn from(d: &DeliveryRecord) -> Self {
        Self {
            id: d.id.to_string(),
            event: d.event.as_str(),
            event_id: d.event_id,
            session_id: d.session_id.to_string(),
            state: d.state.as_str(),
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            created_at: iso8601(d.created_at),
            last_attempt_at: d.last_attempt_at.map(iso8601),
            next_attempt_at: d.next_attempt_at.map(iso8601),
        }
    }
}

/// `GET /api/v1/telegram`: the Telegram configuration in effect (never the token) and the
/// newest messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelegramInfo {
    /// Whether a bot token and chats are configured.
    pub enabled: bool,
    /// The Bot API's base URL; null when off.
    pub api_url: Option<String>,
    /// The chats notified.
    pub chats: Vec<String>,
    /// A progress message after every this many epochs; null for none.
    pub every_epochs: Option<u32>,
    /// The newest messages, newest first.
    pub deliveries: Vec<TelegramDeliveryInfo>,
}

impl TelegramInfo {
    #[must_use]
    pub fn new(settings: Option<&TelegramSettings>, deliveries: &[TelegramDelivery]) -> Self {
        Self {
            enabled: settings.is_some(),
            api_url: settings.map(|s| s.api_url.clone()),
            chats: settings.map(|s| s.chats.iter().map(ToString::to_string).collect()).unwrap_or_default(),
            every_epochs: settings.and_then(|s| s.every_epochs).map(std::num::NonZeroU32::get),
            deliveries: deliveries.iter().map(TelegramDeliveryInfo::from).collect(),
        }
    }
}

/// One part of one event's notification on its way to one chat.
#[derive(Debug, Serialize, ToSchema)]
pub struct TelegramDeliveryInfo {
    pub chat: String,
    /// `message` (sendMessage) or `photo` (sendPhoto with the session's chart).
    pub part: &'static str,
    #[serde(flatten)]
    pub delivery: DeliveryInfo,
}

impl From<&TelegramDelivery> for TelegramDeliveryInfo {
    fn from(d: &TelegramDelivery) -> Self {
        Self { chat: d.chat.to_string(), part: d.part.as_str(), delivery: DeliveryInfo::from(&d.record) }
    }
}
