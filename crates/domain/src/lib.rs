//! Trainyard's pure domain: validated names, training configs, the session state machine,
//! the ports adapters implement, and the use cases that drive them.
//!
//! This crate performs no I/O of its own and depends on no I/O crate: storage, training,
//! monitoring and HTTP live in adapter crates that implement [`ports`].

pub mod auth;
pub mod catalog;
pub mod charts;
pub mod config;
pub mod events;
pub mod failure;
pub mod ids;
pub mod inference;
pub mod lr_schedule;
pub mod manager;
pub mod metrics;
pub mod ports;
pub mod registry;
pub mod selection;
pub mod session;
pub mod summary;
pub mod sweep;
pub mod sweeps;
pub mod system;
pub mod telegram;
pub mod time_fmt;
pub mod webhooks;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{Architecture, ConfigErrors, FieldError, LossFunction, Optimizer, TrainingConfig, TrainingRequest};
pub use ids::{DatasetName, ModelName, NameError, SessionId, SweepId};
pub use session::{Session, SessionLive, SessionOutcome, SessionResources, SessionState, TransitionError};

/// Locks `m`, taking over a lock whose holder panicked: every critical section in this crate
/// leaves its data consistent between statements, so a panic elsewhere must not spread.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
