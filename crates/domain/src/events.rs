//! What happens to sessions, as a numbered stream of events: queued, started, each epoch, each
//! log line, and how the session ended.
//!
//! The manager records every event in an [`EventStore`] (which numbers them: the ids only grow)
//! and then hands it to every subscribed [`EventListener`] (the server-sent event streams,
//! webhooks, Telegram), in id order. A client that missed some reads them back from the store by
//! id, so a stream can resume where it broke off.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    ids::SessionId,
    metrics::{EpochMetrics, LogEntry},
    ports::StoreError,
    session::{Session, SessionState},
};

/// The kind of an event, with its wire name (the SSE `event:` field, the webhook's
/// `X-Trainyard-Event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "session.queued")]
    SessionQueued,
    #[serde(rename = "session.started")]
    SessionStarted,
    #[serde(rename = "epoch")]
    Epoch,
    #[serde(rename = "log")]
    Log,
    #[serde(rename = "session.completed")]
    SessionCompleted,
    #[serde(rename = "session.failed")]
    SessionFailed,
    #[serde(rename = "session.stopped")]
    SessionStopped,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::SessionQueued,
        Self::SessionStarted,
        Self::Epoch,
        Self::Log,
        Self::SessionCompleted,
        Self::SessionFailed,
        Self::SessionStopped,
    ];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionQueued => "session.queued",
            Self::SessionStarted => "session.started",
            Self::Epoch => "epoch",
            Self::Log => "log",
            Self::SessionCompleted => "session.completed",
            Self::SessionFailed => "session.failed",
            Self::SessionStopped => "session.stopped",
        }
    }

    /// Parses the wire name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The event that says a session is now in `state`.
    #[must_use]
    pub fn of_state(state: SessionState) -> Self {
        match state {
            SessionState::Queued => Self::SessionQueued,
            SessionState::Running => Self::SessionStarted,
            SessionState::Completed => Self::SessionCompleted,
            SessionState::Failed => Self::SessionFailed,
            SessionState::Stopped => Self::SessionStopped,
        }
    }

    /// Whether it ends its session's stream: nothing follows it for that session.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::SessionCompleted | Self::SessionFailed | Self::SessionStopped)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event carries: the session as it was (state events), the epoch's metrics, or the
/// log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum EventPayload {
    Session(Box<Session>),
    Epoch(EpochMetrics),
    Log(LogEntry),
}

/// An event before the store has numbered it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub session_id: SessionId,
    pub kind: EventKind,
    pub created_at: OffsetDateTime,
    pub payload: EventPayload,
}

impl NewEvent {
    /// The event saying `session` is now in its state.
    #[must_use]
    pub fn state(session: &Session, at: OffsetDateTime) -> Self {
        Self {
            session_id: session.id.clone(),
            kind: EventKind::of_state(session.state),
            created_at: at,
            payload: EventPayload::Session(Box::new(session.clone())),
        }
    }
}

/// A recorded event. `id` is positive and larger than every earlier event's.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    pub session_id: SessionId,
    pub kind: EventKind,
    pub created_at: OffsetDateTime,
    pub payload: EventPayload,
}

/// Where events are kept, numbered in the order they were appended.
pub trait EventStore: Send + Sync + 'static {
    /// Records `event` and returns it with its id, larger than any earlier one.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when its session does not exist, or a storage failure.
    fn append(&self, event: NewEvent) -> Result<Event, StoreError>;

    /// Up to `limit` events with ids above `after`, oldest first; of one session when
    /// `session` is given.
    ///
    /// # Errors
    /// A storage failure.
    fn after(&self, after: u64, session: Option<&SessionId>, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// The id of the newest event (0 when there is none).
    ///
    /// # Errors
    /// A storage failure.
    fn last_id(&self) -> Result<u64, StoreError>;
}

/// Told of every event as it is recorded, in id order. It must return at once: queue the work
/// (a bounded channel, a table of deliveries) rather than doing it on the caller's thread,
/// which may be a training run's.
pub trait EventListener: Send + Sync + 'static {
    fn on_event(&self, event: &Event);
}

/// Records events and passes them on to the listeners, one event at a time so that listeners
/// see ids in increasing order.
pub struct EventBus {
    store: Arc<dyn EventStore>,
    listeners: RwLock<Vec<Arc<dyn EventListener>>>,
    /// Held from an event's append until every listener has it.
    order: Mutex<()>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listeners = self.listeners.read().map_or(0, |l| l.len());
        f.debug_struct("EventBus").field("listeners", &listeners).finish_non_exhaustive()
    }
}

impl EventBus {
    /// A bus over `store` with no listeners yet.
    #[must_use]
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, listeners: RwLock::new(Vec::new()), order: Mutex::new(()) }
    }

    /// Adds a listener: it is told of every event recorded from now on.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) {
        self.listeners.write().unwrap_or_else(PoisonError::into_inner).push(listener);
    }

    /// Records `event` and tells the listeners.
    ///
    /// # Errors
    /// The store's error; the listeners are then not told.
    pub fn publish(&self, event: NewEvent) -> Result<Event, StoreError> {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let event = self.store.append(event)?;
        for listener in self.listeners.read().unwrap_or_else(PoisonError::into_inner).iter() {
            listener.on_event(&event);
        }
        Ok(event)
    }

    /// The recorded events after `after` (see [`EventStore::after`]).
    ///
    /// # Errors
    /// A storage failure.
    pub fn after(&self, after: u64, session: Option<&SessionId>, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.store.after(after, session, limit)
    }

    /// The id of the newest recorded event.
    ///
    /// # Errors
    /// A storage failure.
    pub fn last_id(&self) -> Result<u64, StoreError> {
        self.store.last_id()
    }
}
