//! Webhook delivery on the shared worker: the webhook store as an [`Outbox`], and one signed
//! POST per attempt.

use std::{fmt, io, sync::Arc, time::Duration};

use time::OffsetDateTime;
use trainyard_domain::{
    events::{Event, EventBus},
    ports::{Clock, StoreError},
    webhooks::{AttemptOutcome, AttemptRecord, DeliveryId, DueDelivery, HostResolver, RetrySchedule, WebhookStore},
};

use crate::{
    send,
    worker::{Outbox, Worker},
};

/// Renders an event as the body of its deliveries (the app gives the HTTP layer's envelope).
pub type RenderBody = Arc<dyn Fn(&Event) -> Vec<u8> + Send + Sync>;

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

struct Webhooks {
    store: Arc<dyn WebhookStore>,
    resolver: Arc<dyn HostResolver>,
    render: RenderBody,
    config: NotifierConfig,
}

impl Outbox for Webhooks {
    type Due = DueDelivery;
    const NAME: &'static str = "webhook";

    fn enqueue(&self, at: OffsetDateTime, limit: u32) -> Result<u32, StoreError> {
        self.store.enqueue_new_events(at, limit)
    }

    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
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

    fn ticket(due: &DueDelivery) -> (&DeliveryId, String, u32) {
        (&due.id, due.webhook_id.to_string(), due.attempts)
    }

    fn attempt(&self, due: &DueDelivery) -> AttemptOutcome {
        let body = (self.render)(&due.event);
        send::attempt(due, &body, self.resolver.as_ref(), self.config.allow_private, self.config.timeout)
    }
}

/// The webhook delivery worker. Started once; stopped by [`Notifier::stop`] or on drop.
pub struct Notifier {
    worker: Worker,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier").field("in_flight", &self.worker.in_flight()).finish_non_exhaustive()
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
        let worker = Worker::start(Webhooks { store, resolver, render, config }, bus, clock, config.schedule)?;
        Ok(Self { worker })
    }

    /// Stops the dispatcher. Attempts in flight end on their own threads within the timeout;
    /// pending deliveries wait for the next start.
    pub fn stop(mut self) {
        self.worker.halt();
    }
}
