//! The delivery worker both notifiers run on: a dispatcher thread that turns recorded events
//! into deliveries through an [`Outbox`] and starts the due ones, each on a thread of its own,
//! at most one per lane (a webhook, a chat) at a time; and the pruning of finished deliveries.

use std::{
    collections::HashSet,
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use trainyard_domain::{
    events::{Event, EventBus, EventListener},
    ports::{Clock, StoreError},
    webhooks::{AttemptOutcome, AttemptRecord, DeliveryId, DeliveryState, RetrySchedule},
};

/// Events turned into deliveries per store transaction.
const ENQUEUE_PAGE: u32 = 256;
/// Due deliveries looked at per round: one per lane, so more than there can be lanes.
const DUE_PAGE: u32 = 1000;
/// The longest the dispatcher sleeps with nothing due, in case a wake-up was missed.
const IDLE: Duration = Duration::from_secs(60);
/// The first pause after a storage failure; it doubles up to [`MAX_ERROR_PAUSE`].
const ERROR_PAUSE: Duration = Duration::from_millis(500);
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(30);
/// How long a delivered or failed delivery stays listed.
pub const KEEP_FINISHED: time::Duration = time::Duration::days(7);
/// How often finished deliveries older than [`KEEP_FINISHED`] are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A kind of delivery: where its queue is kept and how one attempt is made.
pub(crate) trait Outbox: Send + Sync + 'static {
    type Due: Send + 'static;
    /// What the worker's threads and log lines call it.
    const NAME: &'static str;

    /// Turns up to `limit` newly recorded events into deliveries due at `at`; returns how
    /// many events it took.
    fn enqueue(&self, at: OffsetDateTime, limit: u32) -> Result<u32, StoreError>;
    /// Of each lane, its delivery due first at `now`, earliest first, at most `limit`.
    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Self::Due>, StoreError>;
    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError>;
    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
    fn record(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError>;

    /// The delivery's id, its lane (at most one delivery per lane is in flight), and the
    /// attempts made before this one.
    fn ticket(due: &Self::Due) -> (&DeliveryId, String, u32);
    /// Makes one attempt.
    fn attempt(&self, due: &Self::Due) -> AttemptOutcome;
}

/// What the dispatcher waits for, shared with the bus listener and the senders.
#[derive(Debug, Default)]
struct Wake {
    /// Events were recorded since the dispatcher last looked.
    new_events: bool,
    /// A sender finished: its lane may have another delivery due.
    finished: bool,
    stop: bool,
    /// Lanes with a delivery in flight.
    busy: HashSet<String>,
}

#[derive(Debug, Default)]
struct Shared {
    wake: Mutex<Wake>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Wake> {
        self.wake.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poke(&self, f: impl FnOnce(&mut Wake)) {
        f(&mut self.lock());
        self.cond.notify_all();
    }
}

/// Wakes the dispatcher on each event; never waits on anything but a short lock.
struct Relay(Arc<Shared>);

impl EventListener for Relay {
    fn on_event(&self, _event: &Event) {
        self.0.poke(|w| w.new_events = true);
    }
}

/// A running worker; stopped by [`Worker::halt`] or on drop.
#[derive(Debug)]
pub(crate) struct Worker {
    shared: Arc<Shared>,
    dispatcher: Option<thread::JoinHandle<()>>,
    name: &'static str,
}

impl Worker {
    /// Subscribes to `bus` and starts the dispatcher, which first catches up with events
    /// recorded while no worker ran and sends the deliveries left pending by the last run.
    pub(crate) fn start<O: Outbox>(outbox: O, bus: &EventBus, clock: Arc<dyn Clock>, schedule: RetrySchedule) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        shared.lock().new_events = true;
        bus.subscribe(Arc::new(Relay(shared.clone())));
        let sender = Sender { outbox: Arc::new(outbox), clock, schedule, shared: shared.clone() };
        let handle = thread::Builder::new().name(format!("{}-dispatch", O::NAME)).spawn(move || Dispatcher { sender }.run())?;
        Ok(Self { shared, dispatcher: Some(handle), name: O::NAME })
    }

    /// How many deliveries are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.lock().busy.len()
    }

    /// Stops the dispatcher. Attempts in flight end on their own threads within the timeout;
    /// pending deliveries wait for the next start.
    pub(crate) fn halt(&mut self) {
        self.shared.poke(|w| w.stop = true);
        if let Some(handle) = self.dispatcher.take() {
            if handle.join().is_err() {
                tracing::error!(channel = self.name, "the delivery dispatcher panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What sending needs; cloned into each sender thread.
struct Sender<O> {
    outbox: Arc<O>,
    clock: Arc<dyn Clock>,
    schedule: RetrySchedule,
    shared: Arc<Shared>,
}

impl<O> Clone for Sender<O> {
    fn clone(&self) -> Self {
        Self { outbox: self.outbox.clone(), clock: self.clock.clone(), schedule: self.schedule, shared: self.shared.clone() }
    }
}

struct Dispatcher<O> {
    sender: Sender<O>,
}

impl<O: Outbox> Dispatcher<O> {
    fn run(self) {
        let shared = self.sender.shared.clone();
        let mut wait = Duration::ZERO;
        let mut enqueue_again = false;
        let mut failures = 0u32;
        let mut pruned_at: Option<Instant> = None;
        loop {
            let new_events = {
                let mut w = shared.lock();
                let deadline = Instant::now() + wait;
                loop {
                    if w.stop {
                        return;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if w.new_events || w.finished || left.is_zero() {
                        break;
                    }
                    w = shared.cond.wait_timeout(w, left).unwrap_or_else(PoisonError::into_inner).0;
                }
                w.finished = false;
                std::mem::take(&mut w.new_events) || enqueue_again
            };
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(Instant::now());
                self.prune();
            }
            match self.round(new_events) {
                Ok(next) => {
                    (wait, enqueue_again, failures) = (next, false, 0);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    wait = ERROR_PAUSE.saturating_mul(1 << failures.min(6)).min(MAX_ERROR_PAUSE);
                    enqueue_again = new_events;
                    tracing::warn!(channel = O::NAME, error = %e, retry_in = ?wait, "deliveries: the store failed");
                }
            }
        }
    }

    fn prune(&self) {
        let s = &self.sender;
        match s.outbox.prune(s.clock.now() - KEEP_FINISHED) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(channel = O::NAME, pruned = n, "forgot deliveries finished over a week ago"),
            Err(e) => tracing::warn!(channel = O::NAME, error = %e, "cannot prune finished deliveries"),
        }
    }

    /// Queues deliveries for new events, starts every due delivery whose lane is free, and
    /// says how long to wait before the next one is due.
    fn round(&self, new_events: bool) -> Result<Duration, StoreError> {
        let s = &self.sender;
        if new_events {
            while s.outbox.enqueue(s.clock.now(), ENQUEUE_PAGE)? == ENQUEUE_PAGE {}
        }
        let now = s.clock.now();
        // A lane busy before the query may have finished its attempt during it, so the query
        // may still show that delivery pending: leave such lanes to the round its sender's
        // end wakes. Only this thread makes lanes busy, so a lane free before the query is
        // read fresh.
        let busy_before = s.shared.lock().busy.clone();
        for due in s.outbox.due(now, DUE_PAGE)? {
            let lane = O::ticket(&due).1;
            if !busy_before.contains(&lane) && s.shared.lock().busy.insert(lane.clone()) {
                s.clone().spawn(due, lane);
            }
        }
        Ok(match s.outbox.next_due_after(now)? {
            Some(at) => Duration::try_from(at - s.clock.now()).unwrap_or(Duration::ZERO).min(IDLE),
            None => IDLE,
        })
    }
}

/// Frees its lane for the next delivery when the attempt ends, however it ends.
struct Claim {
    shared: Arc<Shared>,
    lane: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared.poke(|w| {
            w.busy.remove(&self.lane);
            w.finished = true;
        });
    }
}

impl<O: Outbox> Sender<O> {
    fn spawn(self, due: O::Due, lane: String) {
        let claim = Claim { shared: self.shared.clone(), lane };
        let spawned = thread::Builder::new().name(format!("{}-send", O::NAME)).spawn(move || {
            let claim = claim;
            self.deliver(&due, &claim.lane);
        });
        if let Err(e) = spawned {
            // The closure, and the claim with it, was dropped: the lane is free again.
            tracing::error!(channel = O::NAME, error = %e, "cannot start a delivery thread");
        }
    }

    /// Makes one attempt and records it.
    fn deliver(&self, due: &O::Due, lane: &str) {
        let (id, _, made) = O::ticket(due);
        let outcome = self.outbox.attempt(due);
        let shown = match &outcome {
            AttemptOutcome::Status(code) => code.to_string(),
            AttemptOutcome::NoAnswer(reason) => reason.clone(),
            AttemptOutcome::Refused { status, reason, .. } => format!("{status}: {reason}"),
        };
        let record = AttemptRecord::after(made, self.clock.now(), outcome, &self.schedule);
        let channel = O::NAME;
        match self.outbox.record(id, &record) {
            Ok(true) => match record.state {
                DeliveryState::Delivered => {
                    tracing::debug!(channel, delivery = %id, to = lane, attempt = record.attempts, "delivered");
                }
                DeliveryState::Pending => tracing::info!(
                    channel, delivery = %id, to = lane, attempt = record.attempts, outcome = %shown,
                    next_attempt_at = ?record.next_attempt_at, "delivery failed; it will be tried again"
                ),
                DeliveryState::Failed => tracing::warn!(
                    channel, delivery = %id, to = lane, attempts = record.attempts, outcome = %shown,
                    "delivery failed on its last attempt; it will not be tried again"
                ),
            },
            Ok(false) => tracing::debug!(channel, delivery = %id, to = lane, "the delivery was removed while it was being made"),
            // The delivery stays pending as it was and is tried again: a receiver may get it twice.
            Err(e) => tracing::warn!(channel, delivery = %id, error = %e, "cannot record a delivery attempt"),
        }
    }
}
