//! Tests of the Telegram store against a temporary SQLite file, with a model of the chats and
//! their messages as the oracle of property 72.

use quickcheck::{Gen, QuickCheck};
use time::Duration;
use trainyard_domain::{
    events::{EventKind, EventPayload, EventStore, NewEvent},
    metrics::{LogEntry, LogLevel},
    ports::SessionRepository,
    webhooks::{AttemptOutcome, DeliveryState, RetrySchedule},
    Session,
};

use super::*;
use crate::test_support::{session, temp_store, time_from};

fn t0() -> OffsetDateTime {
    time_from(1_700_000_000, 0)
}

fn chats(ids: &[&str]) -> Vec<ChatId> {
    ids.iter().map(|c| ChatId::parse(c).unwrap()).collect()
}

fn record(store: &SqliteStore, s: &Session, kind: EventKind) -> u64 {
    let entry = LogEntry { session_id: s.id.clone(), timestamp: t0(), level: LogLevel::Info, message: kind.to_string() };
    store.append(NewEvent { session_id: s.id.clone(), kind, created_at: t0(), payload: EventPayload::Log(entry) }).unwrap().id
}

/// The test's policy: a summary and a chart for an ending, a message for a start, nothing else.
fn policy(event: &Event) -> &'static [Part] {
    match event.kind {
        k if k.is_final() => &[Part::Message, Part::Photo],
        EventKind::SessionStarted => &[Part::Message],
        _ => &[],
    }
}

#[test]
fn chats_get_events_from_when_they_were_added_in_order_and_go_with_their_messages() {
    let (_dir, store) = temp_store();
    let s = session(0);
    store.insert(&s).unwrap();
    record(&store, &s, EventKind::SessionCompleted);
    store.set_chats(&chats(&["111"]), t0()).unwrap();
    assert_eq!(store.enqueue_new_events(t0(), 100, &policy).unwrap(), 0, "events before the first chat are passed over");
    let started = record(&store, &s, EventKind::SessionStarted);
    store.set_chats(&chats(&["111", "@news_channel"]), t0()).unwrap();
    let done = record(&store, &s, EventKind::SessionFailed);
    record(&store, &s, EventKind::Log);
    assert_eq!(store.enqueue_new_events(t0(), 2, &policy).unwrap(), 2);
    assert_eq!(store.enqueue_new_events(t0(), 2, &policy).unwrap(), 1);

    let listed: Vec<(String, Part, u64)> =
        store.deliveries(100).unwrap().into_iter().rev().map(|d| (d.chat.to_string(), d.part, d.record.event_id)).collect();
    assert_eq!(
        listed,
        [
            ("111".to_owned(), Part::Message, started),
            ("111".to_owned(), Part::Message, done),
            ("@news_channel".to_owned(), Part::Message, done),
            ("111".to_owned(), Part::Photo, done),
            ("@news_channel".to_owned(), Part::Photo, done),
        ]
    );
    let due: Vec<(String, u64, Part)> =
        store.due(t0(), 10).unwrap().into_iter().map(|d| (d.chat.to_string(), d.event.id, d.part)).collect();
    assert_eq!(due, [("111".to_owned(), started, Part::Message), ("@news_channel".to_owned(), done, Part::Message)]);

    store.set_chats(&chats(&["@news_channel"]), t0()).unwrap();
    assert!(store.deliveries(100).unwrap().iter().all(|d| d.chat.as_str() == "@news_channel"), "a removed chat's messages go");
    assert_eq!(store.deliveries(100).unwrap().len(), 2);
}

#[test]
fn attempts_are_recorded_and_finished_messages_are_pruned_by_age() {
    let (_dir, store) = temp_store();
    let s = session(0);
    store.insert(&s).unwrap();
    store.set_chats(&chats(&["111", "222"]), t0()).unwrap();
    record(&store, &s, EventKind::SessionCompleted);
    store.enqueue_new_events(t0(), 10, &policy).unwrap();
    let schedule = RetrySchedule::default();
    let due = store.due(t0(), 10).unwrap();
    assert_eq!(due.len(), 2);
    let ok = AttemptRecord::after(0, t0(), AttemptOutcome::Status(200), &schedule);
    assert!(store.record_attempt(&due[0].id, &ok).unwrap());
    let limited = AttemptOutcome::Refused {
        status: 429,
        reason: "Too Many Requests: retry after 40".into(),
        retry_after: Some(Duration::seconds(40)),
    };
    let failed = AttemptRecord::after(0, t0(), limited, &schedule);
    assert!(store.record_attempt(&due[1].id, &failed).unwrap());
    assert_eq!(store.next_due_after(t0()).unwrap(), Some(t0() + Duration::seconds(40)));
    let listed = store.deliveries(10).unwrap();
    let retried = listed.iter().find(|d| d.record.id == due[1].id).unwrap();
    assert_eq!((retried.record.state, retried.record.last_status, retried.record.attempts), (DeliveryState::Pending, Some(429), 1));
    assert_eq!(retried.record.last_error.as_deref(), Some("the receiver answered 429: Too Many Requests: retry after 40"));

    assert_eq!(store.prune(t0()).unwrap(), 0, "only messages finished before the cut go");
    assert_eq!(store.prune(t0() + Duration::days(7)).unwrap(), 1);
    let left = store.deliveries(10).unwrap();
    assert_eq!(left.len(), 3, "the two photos and the retried message are left");
    assert!(left.iter().all(|d| d.record.state == DeliveryState::Pending && d.record.id != due[0].id), "pending messages are never pruned");
}

/// The model of chats and messages that property 72 holds the store to.
#[derive(Default)]
struct Model {
    /// The chats configured, each with the last event recorded before it was added.
    chats: Vec<(ChatId, u64)>,
    events: Vec<(u64, EventKind)>,
    /// How many of `events` were enqueued (or passed over).
    cursor: usize,
    /// (chat, event, part), in enqueue order.
    expected: Vec<(ChatId, u64, Part)>,
}

const CHATS: [&str; 4] = ["111", "-100222", "@first_channel", "333"];

impl Model {
    fn step(&mut self, store: &SqliteStore, s: &Session, (op, a, b): (u8, u8, u8)) {
        match op % 3 {
            0 => {
                let kind = EventKind::ALL[usize::from(a) % EventKind::ALL.len()];
                self.events.push((record(store, s, kind), kind));
            }
            1 => {
                let limit = u32::from(a % 3) + 1;
                let taken = store.enqueue_new_events(t0(), limit, &policy).unwrap();
                let batch: Vec<(u64, EventKind)> = self.events[self.cursor..].iter().take(limit as usize).copied().collect();
                assert_eq!(taken as usize, batch.len());
                for (event_id, kind) in batch {
                    let event = Event {
                        id: event_id,
                        session_id: s.id.clone(),
                        kind,
                        created_at: t0(),
                        payload: EventPayload::Log(LogEntry {
                            session_id: s.id.clone(),
                            timestamp: t0(),
                            level: LogLevel::Info,
                            message: String::new(),
                        }),
                    };
                    for part in policy(&event) {
                        for (chat, since) in &self.chats {
                            if event_id > *since {
                                self.expected.push((chat.clone(), event_id, *part));
                            }
                        }
                    }
                    self.cursor += 1;
                }
            }
            _ => {
                let wanted: Vec<ChatId> =
                    CHATS.iter().enumerate().filter(|(i, _)| (b >> i) & 1 == 1).map(|(_, c)| ChatId::parse(c).unwrap()).collect();
                store.set_chats(&wanted, t0()).unwrap();
                self.chats.retain(|(c, _)| wanted.contains(c));
                self.expected.retain(|(c, _, _)| wanted.contains(c));
                if self.chats.is_empty() {
                    self.cursor = self.events.len();
                }
                let last = self.events.last().map_or(0, |e| e.0);
                for c in wanted {
                    if !self.chats.iter().any(|(k, _)| *k == c) {
                        self.chats.push((c, last));
                    }
                }
            }
        }
    }

    fn agrees(&self, store: &SqliteStore) -> bool {
        let got: Vec<(ChatId, u64, Part)> =
            store.deliveries(10_000).unwrap().into_iter().rev().map(|d| (d.chat, d.record.event_id, d.part)).collect();
        got == self.expected
    }
}

// Property 72: whatever the sequence of events recorded, enqueues in batches of any size, and
// changes to the configured chats, the store holds exactly one message per part the policy
// gives each event, for each chat configured before that event and still configured, in
// enqueue order; events recorded while no chat was configured are never sent.
#[test]
fn prop72_each_chat_gets_each_later_event_once() {
    fn prop(steps: Vec<(u8, u8, u8)>) -> bool {
        let (_dir, store) = temp_store();
        let s = session(0);
        store.insert(&s).unwrap();
        let mut model = Model::default();
        for step in steps.into_iter().take(40) {
            model.step(&store, &s, step);
            if !model.agrees(&store) {
                return false;
            }
        }
        true
    }
    QuickCheck::new().tests(40).rng(Gen::new(30)).quickcheck(prop as fn(Vec<(u8, u8, u8)>) -> bool);
}
