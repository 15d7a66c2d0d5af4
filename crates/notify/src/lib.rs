//! Webhook delivery: every session event a webhook wants is sent to it as a signed JSON POST
//! from threads of this crate's own, and tried again on the domain's retry schedule until the
//! receiver answers 2xx.
//!
//! [`Notifier`] listens to the manager's event bus only to be woken: the deliveries themselves
//! are made from the events the store has recorded, through a cursor the store advances in the
//! same transaction that queues them, so nothing is lost between an event and its deliveries,
//! or across a restart. Each webhook has at most one delivery in flight, on a thread of its
//! own, so a slow or dead receiver delays only its own deliveries.

mod notifier;
mod resolve;
mod send;

pub use notifier::{Notifier, NotifierConfig, RenderBody};
pub use resolve::SystemResolver;
pub use send::{signature, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, USER_AGENT};

#[cfg(test)]
mod tests;
