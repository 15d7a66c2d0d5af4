//! Server-sent events: `GET /api/v1/events` (every session) and
//! `GET /api/v1/training/{id}/events` (one session).
//!
//! Each event goes out as `id:`, `event:` (its kind) and `data:` (one line of JSON: the status
//! object for `session.*`, the epoch's metrics for `epoch`, the log line for `log`, as the REST
//! routes answer them). A client that reconnects with `Last-Event-ID` first gets what it missed,
//! read back from the database, then live events; a session stream with no `Last-Event-ID`
//! starts from the session's first event, so one opened after the session ended replays it and
//! closes. A comment line every heartbeat interval keeps proxies from closing an idle stream.
//!
//! Live events reach every stream through one bounded broadcast channel: publishing never
//! waits for a subscriber. A subscriber that falls more than [`LIVE_BUFFER`] events behind (its
//! client reads too slowly) is dropped with a log line; it may reconnect with the last id it
//! got and catch up from the database.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use actix_web::{
    http::header::{self, HeaderValue},
    web::{self, Bytes},
    HttpRequest, HttpResponse,
};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use trainyard_domain::{
    events::{Event, EventBus, EventListener, EventPayload},
    manager::{SessionManager, SessionView},
    time_fmt::iso8601,
    SessionId,
};

use crate::{
    dto::{LogLine, Metrics, SessionStatus},
    error::{ApiError, ErrorCode},
    routes::blocking,
    AppState,
};

/// Live events a subscriber may fall behind by before it is dropped.
pub const LIVE_BUFFER: usize = 1024;

/// Events read from the database in one go while replaying.
const REPLAY_PAGE: u32 = 256;

/// The live side of the event streams: told of each event by the manager's bus, it hands it to
/// every open stream.
#[derive(Clone)]
pub struct EventHub {
    live: broadcast::Sender<Arc<Frame>>,
    bus: Arc<EventBus>,
    heartbeat: Duration,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").field("subscribers", &self.live.receiver_count()).field("heartbeat", &self.heartbeat).finish()
    }
}

/// Passes the bus's events to the broadcast channel, each written out once for every stream.
struct Relay(broadcast::Sender<Arc<Frame>>);

impl EventListener for Relay {
    fn on_event(&self, event: &Event) {
        // No receiver is not an error: nobody is listening now.
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(Arc::new(Frame::of(event)));
        }
    }
}

/// An event as a stream sends it, with what a stream needs to pick it.
#[derive(Debug)]
struct Frame {
    id: u64,
    session_id: SessionId,
    /// It ends its session's stream.
    last: bool,
    bytes: Bytes,
}

impl Frame {
    /// `event` in the `text/event-stream` format.
    fn of(event: &Event) -> Self {
        let data = serde_json::to_string(&event_data(event)).unwrap_or_else(|_| "null".to_owned());
        Self {
            id: event.id,
            session_id: event.session_id.clone(),
            last: event.kind.is_final(),
            bytes: Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.kind)),
        }
    }
}

impl EventHub {
    /// A hub fed by `manager`'s events, with a comment line every `heartbeat` on idle streams.
    #[must_use]
    pub fn attach(manager: &SessionManager, heartbeat: Duration) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        manager.events().subscribe(Arc::new(Relay(live.clone())));
        Self { live, bus: Arc::clone(manager.events()), heartbeat: heartbeat.max(Duration::from_millis(100)) }
    }

    /// Open streams now.
    #[must_use]
    pub fn subscribers(&self) -> usize {
        self.live.receiver_count()
    }
}

/// An event's `data` as the REST routes show the same object.
#[must_use]
pub fn event_data(event: &Event) -> serde_json::Value {
    let value = match &event.payload {
        EventPayload::Session(session) => {
            let view = SessionView { session: (**session).clone(), queue_position: None, queue_reason: None, usage: None };
            serde_json::to_value(SessionStatus::from(&view))
        }
        EventPayload::Epoch(m) => serde_json::to_value(Metrics::of(&event.session_id, m)),
        EventPayload::Log(entry) => serde_json::to_value(LogLine::from(entry)),
    };
    value.unwrap_or(serde_json::Value::Null)
}

/// An event as webhooks deliver it: `{"id", "event", "created_at", "data"}`.
#[derive(Debug, Serialize)]
pub struct EventEnvelope {
    pub id: String,
    pub event: &'static str,
    pub created_at: String,
    pub data: serde_json::Value,
}

impl From<&Event> for EventEnvelope {
    fn from(event: &Event) -> Self {
        Self { id: event.id.to_string(), event: event.kind.as_str(), created_at: iso8601(event.created_at), data: event_data(event) }
    }
}

/// The `Last-Event-ID` a reconnecting client sends (an `EventSource` does so by itself).
fn last_event_id(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.headers().get("last-event-id") else { return Ok(None) };
    let text = raw.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "Last-Event-ID must be the id of an event this server sent (a whole number)"))
}

/// Every session's events: live ones, after those missed since `Last-Event-ID` when given.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<u64>, Header, description = "resume after this event: the missed ones come first")),
    responses((status = 200, content_type = "text/event-stream", description = "`session.queued`, `session.started`, `epoch`, `log`, `session.completed`, `session.failed` and `session.stopped` events"))
)]
pub(crate) async fn all_events(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let hub = state.events.clone();
    let rx = hub.live.subscribe();
    let after = match last_event_id(&req)? {
        Some(id) => id,
        None => {
            let bus = Arc::clone(&hub.bus);
            blocking(move || bus.last_id()).await?
        }
    };
    Ok(stream(Feed::new(&hub, rx, None, after)))
}

/// One session's events from its first (or after `Last-Event-ID`), then live until it ends.
#[utoipa::path(
    get, path = "/api/v1/training/{session_id}/events", tag = "events",
    params(("Last-Event-ID" = Option<u64>, Header, description = "resume after this event")),
    responses(
        (status = 200, content_type = "text/event-stream", description = "the session's events; the stream closes after its final `session.completed`, `session.failed` or `session.stopped`"),
        (status = 404),
    )
)]
pub(crate) async fn session_events(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::routes::session_id(&path)?;
    let hub = state.events.clone();
    // Subscribe before reading back: an event published in between is in both, and the ids
    // sort it out; none can fall between the two.
    let rx = hub.live.subscribe();
    let manager = state.manager.clone();
    let lookup = id.clone();
    let view = blocking(move || manager.view(&lookup)).await?;
    let after = last_event_id(&req)?.unwrap_or(0);
    let mut feed = Feed::new(&hub, rx, Some(id), after);
    // An ended session has nothing more to say once its events are read back (also when it
    // ended before this server recorded events).
    feed.ended = view.session.state.is_terminal();
    Ok(stream(feed))
}

fn stream(feed: Feed) -> HttpResponse {
    let body = futures_util::stream::unfold(feed, |mut feed| async move {
        let bytes = feed.next().await?;
        Some((Ok::<_, std::convert::Infallible>(bytes), feed))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        // The compression middleware would hold events back to fill its blocks.
        .insert_header((header::CONTENT_ENCODING, HeaderValue::from_static("identity")))
        // nginx buffers responses unless told not to.
        .insert_header(("x-accel-buffering", HeaderValue::from_static("no")))
        .streaming(body)
}

/// One open stream: what it has sent, what it still has to read back, and the live feed.
struct Feed {
    bus: Arc<EventBus>,
    live: broadcast::Receiver<Arc<Frame>>,
    session: Option<SessionId>,
    /// The id of the last event sent (or skipped as already seen by the client).
    last: u64,
    backlog: VecDeque<Arc<Frame>>,
    /// Whether the database may still hold events after `last` that the backlog lacks.
    replaying: bool,
    heartbeat: tokio::time::Interval,
    opened: bool,
    /// The session had ended when the stream opened: close once the read-back is done.
    ended: bool,
    done: bool,
}

impl Feed {
    fn new(hub: &EventHub, live: broadcast::Receiver<Arc<Frame>>, session: Option<SessionId>, after: u64) -> Self {
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + hub.heartbeat, hub.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            bus: Arc::clone(&hub.bus),
            live,
            session,
            last: after,
            backlog: VecDeque::new(),
            replaying: true,
            heartbeat,
            opened: false,
            ended: false,
            done: false,
        }
    }

    fn wanted(&self, frame: &Frame) -> bool {
        frame.id > self.last && self.session.as_ref().is_none_or(|s| *s == frame.session_id)
    }

    /// The next bytes to send, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            // Sent at once, so the client (and any proxy) sees the stream open; also sets the
            // reconnection delay.
            return Some(Bytes::from_static(b"retry: 3000\n: trainyard event stream\n\n"));
        }
        loop {
            if self.done {
                return None;
            }
            if let Some(frame) = self.backlog.pop_front() {
                if !self.wanted(&frame) {
                    continue;
                }
                self.last = frame.id;
                self.done = self.session.is_some() && frame.last;
                return Some(frame.bytes.clone());
            }
            if self.replaying {
                let (bus, after, session) = (Arc::clone(&self.bus), self.last, self.session.clone());
                match web::block(move || bus.after(after, session.as_ref(), REPLAY_PAGE)).await {
                    Ok(Ok(page)) => {
                        self.replaying = page.len() == REPLAY_PAGE as usize;
                        self.backlog.extend(page.iter().map(|e| Arc::new(Frame::of(e))));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(detail = %e, "an event stream could not read back its events; closing it");
                        return None;
                    }
                    Err(_) => return None,
                }
                continue;
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(frame) => {
                        if self.wanted(&frame) {
                            self.backlog.push_back(frame);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            last_event_id = self.last,
                            "an event stream's client fell too far behind; dropping it (it may reconnect with its Last-Event-ID)"
                        );
                        self.done = true;
                        return Some(Bytes::from_static(b": dropped: too far behind; reconnect with Last-Event-ID\n\n"));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}
