//! Tests of the webhook store against a temporary SQLite file, with a model of the queue as the
//! oracle of property 65.

use quickcheck::{Gen, QuickCheck};
use time::Duration;
use trainyard_domain::{
    events::{EventPayload, EventStore, NewEvent},
    metrics::{LogEntry, LogLevel},
    ports::SessionRepository,
    webhooks::{AttemptOutcome, DeliveryState, RetrySchedule},
    Session,
};

use super::*;
use crate::test_support::{session, temp_dir_db, temp_store, time_from};

fn t0() -> OffsetDateTime {
    time_from(1_700_000_000, 0)
}

fn hook(events: EventFilter, at: OffsetDateTime) -> Webhook {
    Webhook {
        id: WebhookId::generate(),
        url: WebhookUrl::parse("https://hooks.example.com/in").unwrap(),
        events,
        secret: WebhookSecret::generate(),
        created_at: at,
    }
}

fn record(store: &SqliteStore, s: &Session, kind: EventKind, at: OffsetDateTime) -> u64 {
    let entry = LogEntry { session_id: s.id.clone(), timestamp: at, level: LogLevel::Info, message: format!("{kind}") };
    store.append(NewEvent { session_id: s.id.clone(), kind, created_at: at, payload: EventPayload::Log(entry) }).unwrap().id
}

#[test]
fn webhooks_round_trip_and_go_with_their_deliveries() {
    let (_dir, store) = temp_store();
    let s = session(0);
    store.insert(&s).unwrap();
    let a = hook(EventFilter::All, t0());
    let b = hook(EventFilter::parse(&["session.completed"]).unwrap(), t0());
    store.insert_webhook(&a).unwrap();
    store.insert_webhook(&b).unwrap();
    assert!(matches!(store.insert_webhook(&a), Err(StoreError::Conflict(_))));
    assert_eq!(store.webhooks().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.webhook(&b.id).unwrap(), Some(b.clone()));

    let done = record(&store, &s, EventKind::SessionCompleted, t0());
    assert_eq!(store.enqueue_new_events(t0(), 100).unwrap(), 1);
    let listed = store.deliveries(&a.id, 10).unwrap();
    assert_eq!(listed.len(), 1);
    let d = &listed[0];
    assert_eq!(
        (d.record.event_id, d.record.event, &d.record.session_id, d.record.state, d.record.attempts),
        (done, EventKind::SessionCompleted, &s.id, DeliveryState::Pending, 0)
    );
    assert_eq!((d.record.created_at, d.record.next_attempt_at, d.record.last_attempt_at), (t0(), Some(t0()), None));

    let due = store.due(t0(), 10).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!((due[0].event.id, due[0].event.kind, &due[0].url, &due[0].secret), (done, EventKind::SessionCompleted, &a.url, &a.secret));

    assert!(store.delete_webhook(&a.id).unwrap());
    assert!(!store.delete_webhook(&a.id).unwrap());
    assert!(store.deliveries(&a.id, 10).unwrap().is_empty());
    assert!(!store
        .record_attempt(&d.record.id, &AttemptRecord::after(0, t0(), AttemptOutcome::Status(200), &RetrySchedule::default()))
        .unwrap());
    assert_eq!(store.due(t0(), 10).unwrap().len(), 1);
}

#[test]
fn events_before_the_migration_or_the_webhook_are_not_delivered() {
    let (_dir, db) = temp_dir_db();
    let store = SqliteStore::new(db.clone());
    let s = session(0);
    store.insert(&s).unwrap();
    // As if these were recorded before the webhook tables existed: the cursor starts after them.
    record(&store, &s, EventKind::SessionQueued, t0());
    db.write(|tx| tx.execute("UPDATE webhook_cursor SET last_event_id = (SELECT MAX(id) FROM events)", [])).unwrap();
    let early = record(&store, &s, EventKind::SessionStarted, t0());
    let h = hook(EventFilter::All, t0());
    store.insert_webhook(&h).unwrap();
    let late = record(&store, &s, EventKind::Log, t0());
    assert_eq!(store.enqueue_new_events(t0(), 100).unwrap(), 2);
    let got: Vec<u64> = store.deliveries(&h.id, 10).unwrap().iter().map(|d| d.record.event_id).collect();
    assert_eq!(got, [late]);
    assert!(early < late);
}

#[test]
fn attempts_are_recorded_and_finished_deliveries_are_no_longer_due() {
    let (_dir, store) = temp_store();
    let s = session(0);
    store.insert(&s).unwrap();
    let h = hook(EventFilter::All, t0());
    store.insert_webhook(&h).unwrap();
    record(&store, &s, EventKind::SessionCompleted, t0());
    store.enqueue_new_events(t0(), 10).unwrap();
    let schedule = RetrySchedule::default();
    let due = store.due(t0(), 10).unwrap().remove(0);
    let failed = AttemptRecord::after(0, t0(), AttemptOutcome::NoAnswer("timed out".into()), &schedule);
    assert!(store.record_attempt(&due.id, &failed).unwrap());
    assert!(store.due(t0(), 10).unwrap().is_empty());
    let next = t0() + Duration::seconds(10);
    assert_eq!(store.next_due_after(t0()).unwrap(), Some(next));
    let again = store.due(next, 10).unwrap().remove(0);
    assert_eq!((again.id.clone(), again.attempts), (due.id.clone(), 1));
    let ok = AttemptRecord::after(1, next, AttemptOutcome::Status(204), &schedule);
    assert!(store.record_attempt(&due.id, &ok).unwrap());
    assert!(!store.record_attempt(&due.id, &ok).unwrap(), "a delivered delivery takes no more attempts");
    let listed = store.deliveries(&h.id, 10).unwrap().remove(0);
    assert_eq!(
        (listed.record.state, listed.record.attempts, listed.record.last_status, listed.record.last_error, listed.record.next_attempt_at),
        (DeliveryState::Delivered, 2, Some(204), None, None)
    );
    assert_eq!(listed.record.last_attempt_at, Some(next));
    assert_eq!(store.next_due_after(t0()).unwrap(), None);
    assert_eq!(store.prune(next).unwrap(), 0, "only deliveries finished before the cut go");
    assert_eq!(store.prune(next + Duration::seconds(1)).unwrap(), 1);
    assert!(store.deliveries(&h.id, 10).unwrap().is_empty());
}

/// What the model keeps of a delivery.
#[derive(Debug, Clone)]
struct Expected {
    hook: usize,
    event_id: u64,
    state: DeliveryState,
    attempts: u32,
    next: Option<OffsetDateTime>,
}

/// The model of the queue that property 65 holds the store to.
struct Model {
    now: OffsetDateTime,
    /// Each webhook added, with the last event recorded before it; `None` once deleted.
    hooks: Vec<Option<(Webhook, u64)>>,
    events: Vec<(u64, EventKind)>,
    /// How many of `events` were enqueued.
    cursor: usize,
    /// The deliveries, in enqueue order.
    expected: Vec<Expected>,
}

impl Model {
    /// One step, decoded from three random bytes, done to the store and to the model.
    fn step(&mut self, store: &SqliteStore, s: &Session, (op, a, b): (u8, u8, u8)) {
        let schedule = RetrySchedule::default();
        match op % 5 {
            0 => {
                let filter = if a % 4 == 0 {
                    EventFilter::All
                } else {
                    let bits = b % 127 + 1;
                    let names: Vec<&str> =
                        EventKind::ALL.iter().enumerate().filter(|(i, _)| (bits >> i) & 1 == 1).map(|(_, k)| k.as_str()).collect();
                    EventFilter::parse(&names).unwrap()
                };
                let h = hook(filter, self.now);
                store.insert_webhook(&h).unwrap();
                self.hooks.push(Some((h, self.events.last().map_or(0, |e| e.0))));
            }
            1 => {
                let kind = EventKind::ALL[usize::from(a) % EventKind::ALL.len()];
                self.events.push((record(store, s, kind, self.now), kind));
                let limit = u32::from(b % 3) + 1;
                let taken = store.enqueue_new_events(self.now, limit).unwrap();
                let batch: Vec<(u64, EventKind)> = self.events[self.cursor..].iter().take(limit as usize).copied().collect();
                assert_eq!(taken as usize, batch.len());
                for (event_id, kind) in batch {
                    for (i, h) in self.hooks.iter().enumerate() {
                        if let Some((h, since)) = h {
                            if event_id > *since && h.events.matches(kind) {
                                let next = Some(self.now);
                                self.expected.push(Expected { hook: i, event_id, state: DeliveryState::Pending, attempts: 0, next });
                            }
                        }
                    }
                    self.cursor += 1;
                }
            }
            2 => {
                let due = store.due(self.now, 1000).unwrap();
                if let Some(d) = due.get(usize::from(a) % due.len().max(1)) {
                    let outcome = if b % 3 == 0 { AttemptOutcome::Status(200) } else { AttemptOutcome::Status(500 + u16::from(b % 4)) };
                    let record = AttemptRecord::after(d.attempts, self.now, outcome, &schedule);
                    assert!(store.record_attempt(&d.id, &record).unwrap());
                    let hook = self.hooks.iter().position(|h| h.as_ref().is_some_and(|(h, _)| h.id == d.webhook_id)).unwrap();
                    let e = self.expected.iter_mut().find(|e| e.hook == hook && e.event_id == d.event.id).unwrap();
                    assert_eq!(e.state, DeliveryState::Pending, "only pending deliveries are due");
                    (e.state, e.attempts, e.next) = (record.state, record.attempts, record.next_attempt_at);
                }
            }
            3 => {
                let live: Vec<usize> = self.hooks.iter().enumerate().filter(|(_, h)| h.is_some()).map(|(i, _)| i).collect();
                if let Some(&i) = live.get(usize::from(a) % live.len().max(1)) {
                    let (h, _) = self.hooks[i].take().unwrap();
                    assert!(store.delete_webhook(&h.id).unwrap());
                    self.expected.retain(|e| e.hook != i);
                }
            }
            _ => self.now += Duration::seconds(i64::from(a)),
        }
    }

    /// Whether the store holds what the model holds, and serves what is due as the model would.
    fn agrees(&self, store: &SqliteStore) -> bool {
        for (i, h) in self.hooks.iter().enumerate() {
            let Some((h, _)) = h else { continue };
            let got: Vec<(u64, DeliveryState, u32, Option<OffsetDateTime>)> = store
                .deliveries(&h.id, 10_000)
                .unwrap()
                .iter()
                .map(|d| (d.record.event_id, d.record.state, d.record.attempts, d.record.next_attempt_at))
                .collect();
            let want: Vec<_> =
                self.expected.iter().rev().filter(|e| e.hook == i).map(|e| (e.event_id, e.state, e.attempts, e.next)).collect();
            if got != want {
                return false;
            }
        }
        let pending = || self.expected.iter().enumerate().filter(|(_, e)| e.state == DeliveryState::Pending);
        let mut first: Vec<(usize, &Expected)> = Vec::new();
        for (seq, e) in pending().filter(|(_, e)| e.next.is_some_and(|n| n <= self.now)) {
            match first.iter_mut().find(|(_, f)| f.hook == e.hook) {
                Some(f) if (e.next, seq) < (f.1.next, f.0) => *f = (seq, e),
                Some(_) => {}
                None => first.push((seq, e)),
            }
        }
        first.sort_by_key(|(seq, e)| (e.next, *seq));
        let want_due: Vec<(WebhookId, u64)> =
            first.iter().filter_map(|(_, e)| Some((self.hooks[e.hook].as_ref()?.0.id.clone(), e.event_id))).collect();
        let got_due: Vec<(WebhookId, u64)> = store.due(self.now, 1000).unwrap().into_iter().map(|d| (d.webhook_id, d.event.id)).collect();
        let want_next = pending().filter_map(|(_, e)| e.next).filter(|n| *n > self.now).min();
        got_due == want_due && store.next_due_after(self.now).unwrap() == want_next
    }
}

// Property 65: whatever the sequence of webhooks added and deleted, events recorded and
// enqueued in batches, attempts that succeed or fail, and time passing, the store keeps
// exactly the deliveries a model of the queue keeps (each event once to each webhook that
// wants it and existed before it; a delivery pending until a 2xx or the schedule's end), none
// pending is lost, `due` returns of each webhook its pending delivery due first (earliest
// first), and `next_due_after` is the earliest pending time still to come.
#[test]
fn prop65_the_delivery_queue_loses_nothing_and_serves_what_is_due() {
    fn prop(steps: Vec<(u8, u8, u8)>) -> bool {
        let (_dir, store) = temp_store();
        let s = session(0);
        store.insert(&s).unwrap();
        let mut model = Model { now: t0(), hooks: Vec::new(), events: Vec::new(), cursor: 0, expected: Vec::new() };
        steps.into_iter().all(|step| {
            model.step(&store, &s, step);
            model.agrees(&store)
        })
    }
    QuickCheck::new().tests(25).rng(Gen::new(30)).quickcheck(prop as fn(Vec<(u8, u8, u8)>) -> bool);
}
