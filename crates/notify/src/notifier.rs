//! The delivery worker: a dispatcher thread that turns recorded events into deliveries and
//! starts the due ones, each on a thread of its own, at most one per webhook at a time.

use std::{
    collections::HashSet,
    fmt, io,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use trainyard_domain::{
    events::{Event, EventBus, EventListener},
    ports::{Clock, StoreError},
    webhooks::{AttemptOutcome, AttemptRecord, DeliveryState, DueDelivery, HostResolver, RetrySchedule, WebhookId, WebhookStore},
};

use crate::send;

/// Renders an event as the body of its deliveries (the app gives the HTTP layer's envelope).
pub type RenderBody = Arc<dyn Fn(&Event) -> Vec<u8> + Send + Sync>;

/// Events turned into deliveries per store transaction.
const ENQUEUE_PAGE: u32 = 256;
/// Due deliveries looked at per round: one per webhook, so more than there can be webhooks.
const DUE_PAGE: u32 = 1000;
/// The longest the dispatcher sleeps with nothing due, in case a wake-up was missed.
const IDLE: Duration = Duration::from_secs(60);
/// The first pause after a storage failure; it doubles up to [`MAX_ERROR_PAUSE`].
const ERROR_PAUSE: Duration = Duration::from_millis(500);
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(30);

/// How deliveries are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifierConfig {
    /// Deliver to any address, private and loopback ones included (for tests and closed
    /// networks).
    pub allow_private: bool,
    /// How long one attempt may take, connecting and reading the answer's head included.
    pub timeout: Duration,
    pub schedule: RetrySchedule,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self { allow_private: false, timeout: Duration::from_secs(10), schedule: RetrySchedule::default() }
    }
}

/// What the dispatcher waits for, shared with the bus listener and the senders.
#[derive(Debug, Default)]
struct Wake {
    /// Events were recorded since the dispatcher last looked.
    new_events: bool,
    /// A sender finished: its webhook may have another delivery due.
    finished: bool,
    stop: bool,
    /// Webhooks with a delivery in flight.
    busy: HashSet<WebhookId>,
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

/// The webhook delivery worker. Started once; stopped by [`Notifier::stop`] or on drop.
pub struct Notifier {
    shared: Arc<Shared>,
    dispatcher: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier").field("in_flight", &self.shared.lock().busy.len()).finish_non_exhaustive()
    }
}

impl Notifier {
    /// Subscribes to `bus` and starts the dispatcher, which first catches up with events
    /// recorded while no notifier ran and sends the deliveries left pending by the last run.
    ///
    /// # Errors
    /// The error of spawning the dispatcher thread.
    pub fn start(
        store: Arc<dyn WebhookStore>,
        bus: &EventBus,
        clock: Arc<dyn Clock>,
        resolver: Arc<dyn HostResolver>,
        render: RenderBody,
        config: NotifierConfig,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        shared.lock().new_events = true;
        bus.subscribe(Arc::new(Relay(shared.clone())));
        let dispatcher = Dispatcher { sender: Sender { store, clock, resolver, render, config, shared: shared.clone() } };
        let handle = thread::Builder::new().name("webhooks".into()).spawn(move || dispatcher.run())?;
        Ok(Self { shared, dispatcher: Some(handle) })
    }

    /// Stops the dispatcher. Attempts in flight end on their own threads within the timeout;
    /// pending deliveries wait for the next start.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.poke(|w| w.stop = true);
        if let Some(handle) = self.dispatcher.take() {
            if handle.join().is_err() {
                tracing::error!("the webhook dispatcher panicked");
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What sending needs; cloned into each sender thread.
#[derive(Clone)]
struct Sender {
    store: Arc<dyn WebhookStore>,
    clock: Arc<dyn Clock>,
    resolver: Arc<dyn HostResolver>,
    render: RenderBody,
    config: NotifierConfig,
    shared: Arc<Shared>,
}

struct Dispatcher {
    sender: Sender,
}

impl Dispatcher {
    fn run(self) {
        let shared = self.sender.shared.clone();
        let mut wait = Duration::ZERO;
        let mut enqueue_again = false;
        let mut failures = 0u32;
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
            match self.round(new_events) {
                Ok(next) => {
                    (wait, enqueue_again, failures) = (next, false, 0);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    wait = ERROR_PAUSE.saturating_mul(1 << failures.min(6)).min(MAX_ERROR_PAUSE);
                    enqueue_again = new_events;
                    tracing::warn!(error = %e, retry_in = ?wait, "webhook deliveries: the store failed");
                }
            }
        }
    }

    /// Queues deliveries for new events, starts every due delivery whose webhook is free, and
    /// says how long to wait before the next one is due.
    fn round(&self, new_events: bool) -> Result<Duration, StoreError> {
        let s = &self.sender;
        if new_events {
            while s.store.enqueue_new_events(s.clock.now(), ENQUEUE_PAGE)? == ENQUEUE_PAGE {}
        }
        let now = s.clock.now();
        for due in s.store.due(now, DUE_PAGE)? {
            if s.claim(&due.webhook_id) {
                s.clone().spawn(due);
            }
        }
        Ok(match s.store.next_due_after(now)? {
            Some(at) => Duration::try_from(at - s.clock.now()).unwrap_or(Duration::ZERO).min(IDLE),
            None => IDLE,
        })
    }
}

/// Frees its webhook for the next delivery when the attempt ends, however it ends.
struct Claim {
    shared: Arc<Shared>,
    webhook: WebhookId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared.poke(|w| {
            w.busy.remove(&self.webhook);
            w.finished = true;
        });
    }
}

impl Sender {
    /// Marks the webhook busy; `false` when it already has a delivery in flight.
    fn claim(&self, webhook: &WebhookId) -> bool {
        self.shared.lock().busy.insert(webhook.clone())
    }

    fn spawn(self, due: DueDelivery) {
        let claim = Claim { shared: self.shared.clone(), webhook: due.webhook_id.clone() };
        let spawned = thread::Builder::new().name("webhook-send".into()).spawn(move || {
            let _claim = claim;
            self.deliver(&due);
        });
        if let Err(e) = spawned {
            // The closure, and the claim with it, was dropped: the webhook is free again.
            tracing::error!(error = %e, "cannot start a webhook delivery thread");
        }
    }

    /// Makes one attempt and records it.
    fn deliver(&self, due: &DueDelivery) {
        let body = (self.render)(&due.event);
        let outcome = send::attempt(due, &body, self.resolver.as_ref(), self.config.allow_private, self.config.timeout);
        let record = AttemptRecord::after(due.attempts, self.clock.now(), outcome.clone(), &self.config.schedule);
        let shown = match &outcome {
            AttemptOutcome::Status(code) => code.to_string(),
            AttemptOutcome::NoAnswer(reason) => reason.clone(),
        };
        match self.store.record_attempt(&due.id, &record) {
            Ok(true) => match record.state {
                DeliveryState::Delivered => {
                    tracing::debug!(delivery = %due.id, webhook = %due.webhook_id, event = %due.event.kind, attempt = record.attempts, "webhook delivered");
                }
                DeliveryState::Pending => tracing::info!(
                    delivery = %due.id, webhook = %due.webhook_id, attempt = record.attempts, outcome = %shown,
                    next_attempt_at = ?record.next_attempt_at, "webhook delivery failed; it will be tried again"
                ),
                DeliveryState::Failed => tracing::warn!(
                    delivery = %due.id, webhook = %due.webhook_id, attempts = record.attempts, outcome = %shown,
                    "webhook delivery failed on its last attempt; it will not be tried again"
                ),
            },
            Ok(false) => tracing::debug!(delivery = %due.id, webhook = %due.webhook_id, "webhook deleted during its delivery"),
            // The delivery stays pending as it was and is tried again: a receiver may get it twice.
            Err(e) => tracing::warn!(delivery = %due.id, error = %e, "cannot record a webhook delivery attempt"),
        }
    }
}
