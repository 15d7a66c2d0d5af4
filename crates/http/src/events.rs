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
//! waits for a subscriber. A stream writes an event as soon as it comes, and what comes within
//! [`COALESCE`] of its last write in one chunk when that has passed, so that a burst of events
//! costs each of a thousand streams a few writes, not one per event. A subscriber that falls more than [`LIVE_BUFFER`] events behind (its
//! client reads too slowly) is dropped with a log line; it may reconnect with the last id it
//! got and catch up from the database.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use actix_web::{
    http::header::{self, HeaderValue},
    web::{self, Bytes, BytesMut},
    HttpRequest, HttpResponse,
};
use serde::Serialize;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
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

/// The shortest time between two writes of live events to one stream: events that come
/// sooner after a write are gathered and written together when it has passed.
const COALESCE: Duration = Duration::from_millis(50);

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
        Self::on(Arc::clone(manager.events()), heartbeat.max(Duration::from_millis(100)), LIVE_BUFFER)
    }

    /// A hub fed by `bus`, letting streams fall `buffer` events behind.
    fn on(bus: Arc<EventBus>, heartbeat: Duration, buffer: usize) -> Self {
        let (live, _) = broadcast::channel(buffer);
        bus.subscribe(Arc::new(Relay(live.clone())));
        Self { live, bus, heartbeat }
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
    /// When events were last written; a burst within [`COALESCE`] of it waits to go out together.
    flushed: Option<tokio::time::Instant>,
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
            flushed: None,
            opened: false,
            ended: false,
            done: false,
        }
    }

    /// Ends the stream of a client that fell more than [`LIVE_BUFFER`] events behind.
    fn drop_lagging(&mut self, missed: u64) -> Bytes {
        tracing::warn!(
            missed,
            last_event_id = self.last,
            "an event stream's client fell too far behind; dropping it (it may reconnect with its Last-Event-ID)"
        );
        self.done = true;
        Bytes::from_static(b": dropped: too far behind; reconnect with Last-Event-ID\n\n")
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
            if !self.backlog.is_empty() {
                // Everything waiting goes out as one chunk: one write for many events.
                let mut chunk = BytesMut::new();
                while let Some(frame) = self.backlog.pop_front() {
                    if !self.wanted(&frame) {
                        continue;
                    }
                    self.last = frame.id;
                    chunk.extend_from_slice(&frame.bytes);
                    if self.session.is_some() && frame.last {
                        self.done = true;
                        break;
                    }
                }
                if chunk.is_empty() {
                    continue;
                }
                self.flushed = Some(tokio::time::Instant::now());
                return Some(chunk.freeze());
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
                        // Under a burst, gather what else comes within COALESCE of the last
                        // write, so a thousand streams make a few writes a second each, not
                        // one per event; a lone event goes out at once.
                        if let Some(at) = self.flushed {
                            tokio::time::sleep_until(at + COALESCE).await;
                        }
                        loop {
                            match self.live.try_recv() {
                                Ok(frame) => {
                                    if self.wanted(&frame) {
                                        self.backlog.push_back(frame);
                                    }
                                }
                                Err(TryRecvError::Lagged(missed)) => return Some(self.drop_lagging(missed)),
                                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => return Some(self.drop_lagging(missed)),
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};
    use time::OffsetDateTime;
    use trainyard_domain::{
        events::{EventKind, NewEvent},
        metrics::{LogEntry, LogLevel},
        testing::MemoryEvents,
    };

    use super::*;

    const BUFFER: usize = 8;

    fn hub() -> EventHub {
        EventHub::on(Arc::new(EventBus::new(Arc::new(MemoryEvents::default()))), Duration::from_millis(5), BUFFER)
    }

    fn publish(hub: &EventHub, session: &SessionId, kind: EventKind) -> u64 {
        let entry =
            LogEntry { session_id: session.clone(), timestamp: OffsetDateTime::UNIX_EPOCH, level: LogLevel::Info, message: "line".into() };
        let event = NewEvent { session_id: session.clone(), kind, created_at: entry.timestamp, payload: EventPayload::Log(entry) };
        hub.bus.publish(event).unwrap().id
    }

    /// What a stream sent: event ids, and whether it said it dropped the client.
    #[derive(Debug, Default, PartialEq)]
    struct Sent {
        ids: Vec<u64>,
        dropped: bool,
        ended: bool,
    }

    impl Sent {
        fn take(&mut self, bytes: Option<Bytes>) {
            let Some(bytes) = bytes else {
                self.ended = true;
                return;
            };
            // A chunk holds one or more whole events, or a comment.
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    self.ids.push(id.parse().unwrap());
                } else if line.starts_with(": dropped") {
                    self.dropped = true;
                }
            }
        }
    }

    fn open(hub: &EventHub, session: Option<SessionId>, after: u64) -> Feed {
        Feed::new(hub, hub.live.subscribe(), session, after)
    }

    // Property 71: whatever the order of publishing and reading, and from whatever id a stream
    // starts, it sends exactly the stored events after that id (of its session, for a session
    // stream), in order and once each, except that a client more than the buffer behind on live
    // events is told it is dropped and the stream ends: then what it got is still such a prefix.
    #[test]
    fn prop71_a_stream_sends_the_stored_events_after_its_start_in_order_once_or_says_it_dropped() {
        fn prop(plan: Vec<(u8, u8)>, start: u8, per_session: bool) -> bool {
            let sessions = [SessionId::generate(), SessionId::generate()];
            let rt = actix_web::rt::System::new();
            rt.block_on(async {
                let hub = hub();
                let mut all = Vec::new();
                for i in 0..u64::from(start % 6) {
                    all.push((publish(&hub, &sessions[(i % 2) as usize], EventKind::Log), (i % 2) as usize));
                }
                let after = all.get(usize::from(start % 4)).map_or(0, |e| e.0);
                let mut feed = open(&hub, per_session.then(|| sessions[0].clone()), after);
                let mut sent = Sent::default();
                sent.take(feed.next().await);
                for (publishes, reads) in plan.into_iter().take(12) {
                    for _ in 0..publishes % 12 {
                        let owner = usize::from(publishes % 3 == 0);
                        all.push((publish(&hub, &sessions[owner], EventKind::Log), owner));
                    }
                    for _ in 0..reads % 4 {
                        if !sent.ended {
                            sent.take(feed.next().await);
                        }
                    }
                }
                let wanted: Vec<u64> = all.iter().filter(|(id, owner)| *id > after && (!per_session || *owner == 0)).map(|e| e.0).collect();
                // Read the rest: every wanted event, or to the drop.
                while !sent.ended && sent.ids.len() < wanted.len() {
                    sent.take(feed.next().await);
                }
                let prefix = wanted.starts_with(&sent.ids);
                prefix && (sent.ids == wanted || sent.dropped)
            })
        }
        QuickCheck::new().tests(60).rng(Gen::new(20)).quickcheck(prop as fn(Vec<(u8, u8)>, u8, bool) -> bool);
    }

    #[actix_web::test]
    async fn a_client_too_far_behind_is_dropped_and_a_session_stream_ends_with_its_final_event() {
        let hub = hub();
        let (s, other) = (SessionId::generate(), SessionId::generate());
        let mut slow = open(&hub, None, 0);
        let mut one = open(&hub, Some(s.clone()), 0);
        let (mut slow_sent, mut one_sent) = (Sent::default(), Sent::default());
        slow_sent.take(slow.next().await);
        slow_sent.take(slow.next().await);
        for _ in 0..2 * BUFFER {
            publish(&hub, &other, EventKind::Log);
        }
        let last = publish(&hub, &s, EventKind::SessionCompleted);
        while !slow_sent.ended {
            slow_sent.take(slow.next().await);
        }
        assert!(slow_sent.dropped, "{slow_sent:?}");
        while !one_sent.ended {
            one_sent.take(one.next().await);
        }
        assert_eq!(one_sent, Sent { ids: vec![last], dropped: false, ended: true });
    }
}
