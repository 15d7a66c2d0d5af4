//! [`SqliteStore`]: the session, metrics, log, event, webhook and auth ports over one
//! [`Database`].

mod auth;
mod events;
mod logs;
mod metrics;
mod outbox;
mod sessions;
mod sweeps;
mod telegram;
mod webhooks;

use crate::Database;

/// Sessions, metrics, logs, events, webhooks and their deliveries, API keys and the auth audit
/// log, in SQLite. Implements
/// [`SessionRepository`](trainyard_domain::ports::SessionRepository),
/// [`MetricsStore`](trainyard_domain::ports::MetricsStore),
/// [`LogStore`](trainyard_domain::ports::LogStore),
/// [`EventStore`](trainyard_domain::events::EventStore),
/// [`WebhookStore`](trainyard_domain::webhooks::WebhookStore) and
/// [`AuthStore`](trainyard_domain::ports::AuthStore).
///
/// Metrics and log lines belong to a session: recording them for a session that does not
/// exist fails with [`StoreError::NotFound`](trainyard_domain::ports::StoreError::NotFound).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Database,
}

impl SqliteStore {
    /// A store over `db`.
    #[must_use]
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}
