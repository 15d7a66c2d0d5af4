//! Telegram notifications on the shared worker: the Telegram store as an [`Outbox`], and one
//! Bot API call (`sendMessage`, or `sendPhoto` with a multipart body) per attempt.
//!
//! The bot token is part of every Bot API URL, so no URL is ever logged or stored, and every
//! error text passes through [`BotToken::scrub`] first.

use std::{fmt, io, sync::Arc, time::Duration};

use time::OffsetDateTime;
use trainyard_domain::{
    events::{Event, EventBus},
    ports::{Clock, StoreError},
    telegram::{parts, ChatId, DueMessage, Outgoing, Part, TelegramSettings, TelegramStore},
    webhooks::{AttemptOutcome, AttemptRecord, DeliveryId, RetrySchedule},
};

use crate::{
    send::describe,
    worker::{Outbox, Worker},
};

/// Writes the message or photo of one part of an event's notification (the app gives the
/// domain's `TelegramComposer`), or says why it cannot.
pub type Compose = Arc<dyn Fn(&Event, Part) -> Result<Outgoing, String> + Send + Sync>;

/// The `User-Agent` of Bot API calls.
const USER_AGENT: &str = concat!("trainyard-telegram/", env!("CARGO_PKG_VERSION"));
/// The most of an error answer's body read for its `description`.
const MAX_ERROR_BODY: u64 = 64 * 1024;

struct Telegram {
    store: Arc<dyn TelegramStore>,
    settings: TelegramSettings,
    compose: Compose,
    agent: ureq::Agent,
    timeout: Duration,
}

impl Outbox for Telegram {
    type Due = DueMessage;
    const NAME: &'static str = "telegram";

    fn enqueue(&self, at: OffsetDateTime, limit: u32) -> Result<u32, StoreError> {
        let every = self.settings.every_epochs;
        self.store.enqueue_new_events(at, limit, &|event| parts(event, every))
    }

    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueMessage>, StoreError> {
        self.store.due(now, limit)
    }

    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        self.store.next_due_after(now)
    }

    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.store.prune(before)
    }

    fn record(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError> {
        self.store.record_attempt(id, record)
    }

    fn ticket(due: &DueMessage) -> (&DeliveryId, String, u32) {
        (&due.id, due.chat.to_string(), due.attempts)
    }

    fn attempt(&self, due: &DueMessage) -> AttemptOutcome {
        let outgoing = match (self.compose)(&due.event, due.part) {
            Ok(outgoing) => outgoing,
            Err(why) => return AttemptOutcome::NoAnswer(format!("cannot write the message: {why}")),
        };
        let token = &self.settings.token;
        let outcome = send(&self.agent, self.timeout, &self.settings, &due.chat, &due.id, outgoing);
        match outcome {
            AttemptOutcome::NoAnswer(reason) => AttemptOutcome::NoAnswer(token.scrub(&reason)),
            AttemptOutcome::Refused { status, reason, retry_after } => {
                AttemptOutcome::Refused { status, reason: token.scrub(&reason), retry_after }
            }
            status => status,
        }
    }
}

/// Makes one Bot API call.
fn send(
    agent: &ureq::Agent,
    timeout: Duration,
    settings: &TelegramSettings,
    chat: &ChatId,
    id: &DeliveryId,
    outgoing: Outgoing,
) -> AttemptOutcome {
    let (api_url, token) = (&settings.api_url, &settings.token);
    let method = |name: &str| format!("{api_url}/bot{}/{name}", token.expose());
    let sent = match outgoing {
        Outgoing::Text(text) => {
            let body = serde_json::json!({ "chat_id": chat.as_str(), "text": text, "disable_web_page_preview": true });
            agent.post(&method("sendMessage")).set("Content-Type", "application/json").send_bytes(body.to_string().as_bytes())
        }
        Outgoing::Photo { png, caption } => {
            let form =
                Multipart::new(id).field("chat_id", chat.as_str()).field("caption", &caption).file("photo", "chart.png", "image/png", &png);
            agent.post(&method("sendPhoto")).set("Content-Type", &form.content_type()).send_bytes(&form.finish())
        }
    };
    match sent {
        Ok(response) => AttemptOutcome::Status(response.status()),
        Err(ureq::Error::Status(status, response)) => refusal(status, response),
        Err(ureq::Error::Transport(t)) => AttemptOutcome::NoAnswer(describe(&t, timeout)),
    }
}

/// What a Bot API error answer says: `{"ok": false, "error_code": 400, "description": "Bad
/// Request: chat not found", "parameters": {"retry_after": 35}}`.
fn refusal(status: u16, response: ureq::Response) -> AttemptOutcome {
    use std::io::Read;
    let mut body = Vec::new();
    let _ = response.into_reader().take(MAX_ERROR_BODY).read_to_end(&mut body);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let reason = answer["description"].as_str().map_or_else(|| "no description".to_owned(), |d| d.chars().take(300).collect());
    let retry_after =
        answer["parameters"]["retry_after"].as_u64().map(|s| time::Duration::seconds(i64::try_from(s.min(86_400)).unwrap_or(0)));
    AttemptOutcome::Refused { status, reason, retry_after }
}

/// A `multipart/form-data` body.
struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Multipart {
    /// A body whose boundary holds the delivery's random id, so no field can contain it by
    /// chance.
    fn new(id: &DeliveryId) -> Self {
        Self { boundary: format!("trainyard-{id}"), body: Vec::new() }
    }

    fn part_head(&mut self, disposition: &str, content_type: Option<&str>) {
        self.body.extend_from_slice(format!("--{}\r\nContent-Disposition: form-data; {disposition}\r\n", self.boundary).as_bytes());
        if let Some(ct) = content_type {
            self.body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        self.body.extend_from_slice(b"\r\n");
    }

    fn field(mut self, name: &str, value: &str) -> Self {
        self.part_head(&format!("name=\"{name}\""), Some("text/plain; charset=utf-8"));
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn file(mut self, name: &str, file_name: &str, content_type: &str, bytes: &[u8]) -> Self {
        self.part_head(&format!("name=\"{name}\"; filename=\"{file_name}\""), Some(content_type));
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    fn finish(mut self) -> Vec<u8> {
        self.body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        self.body
    }
}

/// How Telegram messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelegramConfig {
    /// How long one Bot API call may take, the photo's upload included.
    pub timeout: Duration,
    pub schedule: RetrySchedule,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), schedule: RetrySchedule::default() }
    }
}

/// The Telegram notification worker. Started once, when Telegram is configured; stopped by
/// [`TelegramNotifier::stop`] or on drop.
pub struct TelegramNotifier {
    worker: Worker,
}

impl fmt::Debug for TelegramNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramNotifier").field("in_flight", &self.worker.in_flight()).finish_non_exhaustive()
    }
}

impl TelegramNotifier {
    /// Makes `settings.chats` the chats notified (a new chat is sent events from now on; a
    /// chat no longer configured is forgotten with its pending messages), subscribes to
    /// `bus`, and starts the dispatcher, which sends the messages left pending by the last run.
    ///
    /// # Errors
    /// The store's error on the chats, or the error of spawning the dispatcher thread.
    pub fn start(
        store: Arc<dyn TelegramStore>,
        bus: &EventBus,
        clock: Arc<dyn Clock>,
        settings: TelegramSettings,
        compose: Compose,
        config: TelegramConfig,
    ) -> io::Result<Self> {
        store.set_chats(&settings.chats, clock.now()).map_err(io::Error::other)?;
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).redirects(0).user_agent(USER_AGENT).build();
        let worker = Worker::start(Telegram { store, settings, compose, agent, timeout: config.timeout }, bus, clock, config.schedule)?;
        Ok(Self { worker })
    }

    /// Stops the dispatcher; pending messages wait for the next start.
    pub fn stop(mut self) {
        self.worker.halt();
    }
}

#[cfg(test)]
mod tests;
