//! Telegram notifications: when a session completes, fails or stops, every configured chat is
//! sent a readable summary and the session's chart; optionally a progress line every N epochs.
//!
//! The server's operator configures a bot token and chat ids ([`TelegramSettings`]). Which
//! events become messages is decided here ([`parts`]), and so is what they say
//! ([`TelegramComposer`], from [`crate::summary`] and [`Charts`]). Like webhook deliveries,
//! each message is kept by a [`TelegramStore`] until the Bot API takes it or the
//! [`RetrySchedule`](crate::webhooks::RetrySchedule) runs out, so a restart or a Telegram
//! outage loses none. The token is a secret: nothing here shows it, and
//! [`BotToken::scrub`] takes it out of any text that might hold it.

use std::{fmt, num::NonZeroU32, sync::Arc};

use time::OffsetDateTime;

use crate::{
    charts::{ChartFormat, ChartQuery, Charts},
    events::{Event, EventKind, EventPayload},
    manager::SessionManager,
    ports::StoreError,
    summary,
    webhooks::{AttemptRecord, DeliveryId, DeliveryRecord},
};

/// The public Bot API.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
/// The longest message text Telegram takes, in characters (it counts UTF-16 units; staying
/// below 4,096 characters leaves room for that).
pub const MAX_TEXT_CHARS: usize = 4000;
/// The longest photo caption Telegram takes, in characters.
pub const MAX_CAPTION_CHARS: usize = 1000;
/// The most chats one server notifies.
pub const MAX_CHATS: usize = 50;
/// What a token is shown as wherever it would have appeared.
pub const TOKEN_PLACEHOLDER: &str = "<bot-token>";

/// A bot's token (`123456789:AA...`, from @BotFather). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BotToken(String);

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BotToken({TOKEN_PLACEHOLDER})")
    }
}

impl BotToken {
    /// Checks the token's form: the bot's numeric id, a colon, and at least 8 letters, digits,
    /// `-` or `_`.
    ///
    /// # Errors
    /// [`TelegramConfigError::Token`], which does not repeat the token.
    pub fn parse(raw: &str) -> Result<Self, TelegramConfigError> {
        let raw = raw.trim();
        let ok = raw.split_once(':').is_some_and(|(bot, secret)| {
            !bot.is_empty()
                && bot.len() <= 20
                && bot.bytes().all(|b| b.is_ascii_digit())
                && (8..=200).contains(&secret.len())
                && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(TelegramConfigError::Token)
        }
    }

    /// The token itself, for the Bot API's URLs only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the token, and its secret part alone, replaced by [`TOKEN_PLACEHOLDER`]:
    /// for any text that is logged or stored and may hold a Bot API URL.
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        let secret = self.0.split_once(':').map_or(self.0.as_str(), |(_, s)| s);
        text.replace(&self.0, TOKEN_PLACEHOLDER).replace(secret, TOKEN_PLACEHOLDER)
    }
}

/// A chat to notify: a numeric chat id (negative for groups and channels) or a public
/// channel's `@username`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatId(String);

impl ChatId {
    /// Parses one chat id.
    ///
    /// # Errors
    /// [`TelegramConfigError::Chat`] naming what was given.
    pub fn parse(raw: &str) -> Result<Self, TelegramConfigError> {
        let raw = raw.trim();
        let numeric = raw.parse::<i64>().is_ok_and(|n| n != 0);
        let username = raw.strip_prefix('@').is_some_and(|name| {
            (5..=32).contains(&name.len())
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if numeric || username {
            Ok(Self(raw.to_owned()))
        } else {
            Err(TelegramConfigError::Chat(crate::failure::shown(raw)))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the Telegram configuration cannot be used. None of them shows the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelegramConfigError {
    #[error("TELEGRAM_BOT_TOKEN is not a bot token (expected the bot's number, a colon and the secret, as @BotFather gives it)")]
    Token,
    #[error("TELEGRAM_CHAT_IDS: '{0}' is not a chat id (expected a number such as 123456789 or -1001234567890, or @channelname)")]
    Chat(String),
    #[error("TELEGRAM_CHAT_IDS names more than {MAX_CHATS} chats")]
    TooManyChats,
    #[error("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_IDS names no chat to notify")]
    NoChats,
    #[error("TELEGRAM_CHAT_IDS is set but TELEGRAM_BOT_TOKEN is not: messages cannot be sent without the bot's token")]
    NoToken,
    #[error("TELEGRAM_API_URL: {0}")]
    ApiUrl(String),
}

/// Where and what Telegram notifications are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramSettings {
    /// The Bot API's base URL, without a trailing slash.
    pub api_url: String,
    pub token: BotToken,
    /// At least one, each once, in the order given.
    pub chats: Vec<ChatId>,
    /// Send a progress message after every this many epochs; never when `None`.
    pub every_epochs: Option<NonZeroU32>,
}

impl TelegramSettings {
    /// The settings from the operator's configuration; `None` when neither a token nor chats
    /// are given (Telegram is off). `chats` entries may themselves hold comma-separated ids;
    /// `every_epochs` of 0 means no progress messages.
    ///
    /// # Errors
    /// [`TelegramConfigError`] saying what is wrong, without the token.
    pub fn from_config(
        token: Option<&str>,
        chats: &[String],
        api_url: &str,
        every_epochs: Option<u32>,
    ) -> Result<Option<Self>, TelegramConfigError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let mut ids: Vec<ChatId> = Vec::new();
        for raw in chats.iter().flat_map(|c| c.split(',')).map(str::trim).filter(|c| !c.is_empty()) {
            let id = ChatId::parse(raw)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let token = match (token, ids.is_empty()) {
            (None, true) => return Ok(None),
            (None, false) => return Err(TelegramConfigError::NoToken),
            (Some(_), true) => return Err(TelegramConfigError::NoChats),
            (Some(token), false) => BotToken::parse(token)?,
        };
        if ids.len() > MAX_CHATS {
            return Err(TelegramConfigError::TooManyChats);
        }
        let api_url = Self::check_api_url(api_url)?;
        Ok(Some(Self { api_url, token, chats: ids, every_epochs: every_epochs.and_then(NonZeroU32::new) }))
    }

    fn check_api_url(raw: &str) -> Result<String, TelegramConfigError> {
        let bad = |why: &str| Err(TelegramConfigError::ApiUrl(why.to_owned()));
        let url = match url::Url::parse(raw.trim()) {
            Ok(url) => url,
            Err(e) => return Err(TelegramConfigError::ApiUrl(format!("not a URL ({e})"))),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return bad("the scheme must be http or https");
        }
        if url.host().is_none() {
            return bad("must name a host");
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return bad("must be a base URL, without credentials, query or fragment");
        }
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }
}

/// One message of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `sendMessage`: the summary, or a progress line.
    Message,
    /// `sendPhoto`: the session's chart, with a short caption.
    Photo,
}

impl Part {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Photo => "photo",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Message, Self::Photo].into_iter().find(|p| p.as_str() == raw)
    }
}

/// What each chat is sent for `event`, in sending order: the summary then the chart when a
/// session has ended; a progress message after every `every_epochs`-th epoch; nothing else.
#[must_use]
pub fn parts(event: &Event, every_epochs: Option<NonZeroU32>) -> &'static [Part] {
    match (&event.payload, every_epochs) {
        _ if event.kind.is_final() => &[Part::Message, Part::Photo],
        (EventPayload::Epoch(m), Some(n)) if event.kind == EventKind::Epoch && m.epoch.is_multiple_of(n.get()) => &[Part::Message],
        _ => &[],
    }
}

/// What goes to Telegram for one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    /// A PNG and its caption.
    Photo {
        png: Vec<u8>,
        caption: String,
    },
}

/// `text` cut to at most `max` characters, with an ellipsis when it was longer.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Writes the messages: reads the session, its last metrics and its chart through the session
/// manager and [`Charts`]. Cheap to clone.
#[derive(Clone)]
pub struct TelegramComposer {
    manager: SessionManager,
    charts: Charts,
}

impl fmt::Debug for TelegramComposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramComposer").finish_non_exhaustive()
    }
}

impl TelegramComposer {
    #[must_use]
    pub fn new(manager: SessionManager, charts: Charts) -> Self {
        Self { manager, charts }
    }

    /// The message or photo `part` of `event`'s notification.
    ///
    /// # Errors
    /// Why it cannot be written (its session is unknown, the store or the chart failed), in
    /// words for the delivery log.
    pub fn compose(&self, event: &Event, part: Part) -> Result<Outgoing, String> {
        let id = &event.session_id;
        let text = match &event.payload {
            EventPayload::Session(session) => {
                let last = self.manager.latest_metrics(id).map_err(|e| e.to_string())?;
                summary::outcome(session, last.as_ref())
            }
            EventPayload::Epoch(m) => summary::progress(&self.manager.view(id).map_err(|e| e.to_string())?.session, m),
            EventPayload::Log(_) => return Err(format!("a {} event has no Telegram message", event.kind)),
        };
        match part {
            Part::Message => Ok(Outgoing::Text(clip(&text, MAX_TEXT_CHARS))),
            Part::Photo => {
                let png = self.charts.session(id, &ChartQuery::all_metrics(), ChartFormat::Png).map_err(|e| e.to_string())?;
                let caption: Vec<&str> = text.lines().take(2).collect();
                Ok(Outgoing::Photo { png, caption: clip(&caption.join("\n"), MAX_CAPTION_CHARS) })
            }
        }
    }
}

/// One message on its way to one chat, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramDelivery {
    pub chat: ChatId,
    pub part: Part,
    pub record: DeliveryRecord,
}

/// A message whose attempt is due, with its event.
#[derive(Debug, Clone, PartialEq)]
pub struct DueMessage {
    pub id: DeliveryId,
    pub chat: ChatId,
    pub part: Part,
    pub event: Event,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Where the notified chats and their messages are kept.
///
/// # Errors
/// Every method returns [`StoreError::Busy`] when the store stays locked after retries,
/// [`StoreError::Corrupt`] when a stored row cannot be decoded, and [`StoreError::Io`] when
/// the disk fails.
pub trait TelegramStore: Send + Sync + 'static {
    /// Makes `chats` the chats notified: a chat new to the store is sent only events recorded
    /// from now on; a chat no longer named is forgotten with its pending messages. With no
    /// chats, the events recorded so far are passed over for good.
    fn set_chats(&self, chats: &[ChatId], at: OffsetDateTime) -> Result<(), StoreError>;
    /// Takes up to `limit` events recorded since the last call (oldest first) and, in one
    /// transaction, makes a pending message due at `at` for each part `parts` gives the
    /// event, to every chat that was notified before it, and remembers the last event taken.
    /// Returns how many events it took: fewer than `limit` means it caught up.
    fn enqueue_new_events(&self, at: OffsetDateTime, limit: u32, parts: &dyn Fn(&Event) -> &'static [Part]) -> Result<u32, StoreError>;
    /// Of each chat with pending messages due at `now` or before, the one due first (by
    /// enqueue order between equal times), earliest first, at most `limit`.
    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueMessage>, StoreError>;
    /// The earliest time after `now` that a pending message is due.
    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError>;
    /// Writes an attempt on a pending message; `false` when it is gone or no longer pending.
    fn record_attempt(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError>;
    /// The newest messages, newest first, at most `limit`.
    fn deliveries(&self, limit: u32) -> Result<Vec<TelegramDelivery>, StoreError>;
    /// Forgets messages delivered or failed before `before`; returns how many.
    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}

/// The use case behind `GET /api/v1/telegram`: the configuration in effect, never the token,
/// and the newest messages with their attempts.
#[derive(Clone)]
pub struct TelegramStatus {
    settings: Option<TelegramSettings>,
    store: Arc<dyn TelegramStore>,
}

impl fmt::Debug for TelegramStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramStatus").field("enabled", &self.settings.is_some()).finish_non_exhaustive()
    }
}

impl TelegramStatus {
    /// Over `store`, with the settings in effect (`None`: Telegram is off).
    #[must_use]
    pub fn new(settings: Option<TelegramSettings>, store: Arc<dyn TelegramStore>) -> Self {
        Self { settings, store }
    }

    #[must_use]
    pub fn settings(&self) -> Option<&TelegramSettings> {
        self.settings.as_ref()
    }

    /// The newest messages, newest first, at most `limit`; those of an earlier configuration
    /// too, until they are pruned.
    ///
    /// # Errors
    /// The store's error.
    pub fn deliveries(&self, limit: u32) -> Result<Vec<TelegramDelivery>, StoreError> {
        self.store.deliveries(limit)
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::ids::SessionId;

    const TOKEN: &str = "123456789:AAHk-secret_part_42xyz";

    #[test]
    fn the_token_is_checked_and_never_shown() {
        let token = BotToken::parse(TOKEN).unwrap();
        assert!(!format!("{token:?}").contains("secret"));
        let url = format!("https://api.telegram.org/bot{TOKEN}/sendMessage");
        let scrubbed = token.scrub(&format!("POST {url} failed; secret was AAHk-secret_part_42xyz"));
        assert!(!scrubbed.contains("secret_part"), "{scrubbed}");
        assert!(scrubbed.contains("/bot<bot-token>/sendMessage"), "{scrubbed}");
        for bad in ["", "123456789", "abc:AAHk-secret_part", "123:short", "123:has space in it", "123:AAHk/secret_part"] {
            let e = BotToken::parse(bad).unwrap_err();
            assert!(bad.len() < 8 || !e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn chat_ids_are_numbers_or_channel_names() {
        for ok in ["123456789", "-1001234567890", "@my_channel", " 42 "] {
            assert!(ChatId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "abc", "@abc", "@1channel", "@has-dash", "12.5", ""] {
            assert!(matches!(ChatId::parse(bad), Err(TelegramConfigError::Chat(_))), "{bad}");
        }
    }

    #[test]
    fn settings_need_a_token_and_a_chat_together() {
        let chats = vec!["123, -100200".to_owned(), "123".to_owned()];
        assert_eq!(TelegramSettings::from_config(None, &[], DEFAULT_API_URL, None), Ok(None));
        assert_eq!(TelegramSettings::from_config(Some(" "), &[" ".to_owned()], DEFAULT_API_URL, Some(3)), Ok(None));
        assert_eq!(TelegramSettings::from_config(None, &chats, DEFAULT_API_URL, None), Err(TelegramConfigError::NoToken));
        assert_eq!(TelegramSettings::from_config(Some(TOKEN), &[], DEFAULT_API_URL, None), Err(TelegramConfigError::NoChats));
        let s = TelegramSettings::from_config(Some(TOKEN), &chats, "http://127.0.0.1:9/base/", Some(0)).unwrap().unwrap();
        assert_eq!(s.chats.iter().map(ChatId::as_str).collect::<Vec<_>>(), ["123", "-100200"]);
        assert_eq!((s.api_url.as_str(), s.every_epochs), ("http://127.0.0.1:9/base", None));
        for bad in ["ftp://x", "not a url", "https://h/?q=1", "https://u:p@h/"] {
            assert!(matches!(TelegramSettings::from_config(Some(TOKEN), &chats, bad, None), Err(TelegramConfigError::ApiUrl(_))), "{bad}");
        }
        let many: Vec<String> = (1..=51).map(|n| n.to_string()).collect();
        assert_eq!(TelegramSettings::from_config(Some(TOKEN), &many, DEFAULT_API_URL, None), Err(TelegramConfigError::TooManyChats));
    }

    fn event(kind: EventKind, payload: EventPayload) -> Event {
        Event { id: 7, session_id: SessionId::generate(), kind, created_at: OffsetDateTime::UNIX_EPOCH, payload }
    }

    fn epoch(n: u32) -> EventPayload {
        EventPayload::Epoch(crate::testing::epoch_metrics(n, 0.5, None))
    }

    #[test]
    fn endings_send_a_summary_and_a_chart_and_epochs_only_when_asked() {
        let three = NonZeroU32::new(3);
        assert_eq!(parts(&event(EventKind::Epoch, epoch(6)), three), [Part::Message]);
        assert!(parts(&event(EventKind::Epoch, epoch(7)), three).is_empty());
        assert!(parts(&event(EventKind::Epoch, epoch(6)), None).is_empty());
        let log = EventPayload::Log(crate::metrics::LogEntry {
            session_id: SessionId::generate(),
            timestamp: OffsetDateTime::UNIX_EPOCH,
            level: crate::metrics::LogLevel::Info,
            message: "hi".into(),
        });
        assert!(parts(&event(EventKind::Log, log), NonZeroU32::new(1)).is_empty());
        assert!(clip(&"x".repeat(5000), MAX_TEXT_CHARS).chars().count() == MAX_TEXT_CHARS);
        assert_eq!(clip("short", 10), "short");
    }
}
