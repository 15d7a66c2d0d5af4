//! Notifications: every session event a webhook wants is sent to it as a signed JSON POST, and
//! every session's ending (and, if asked, its progress) to the configured Telegram chats, from
//! threads of this crate's own, tried again on the domain's retry schedule until the receiver
//! takes it. Finished deliveries are kept for [`KEEP_FINISHED`].
//!
//! [`Notifier`] (webhooks) and [`TelegramNotifier`] run on the same kind of worker. Each
//! listens to the manager's event bus only to be woken: the deliveries themselves are made
//! from the events the store has recorded, through a cursor the store advances in the same
//! transaction that queues them, so nothing is lost between an event and its deliveries,
//! or across a restart. Each webhook (each chat) has at most one delivery in flight, on a
//! thread of its own, so a slow or dead receiver delays only its own deliveries.

mod notifier;
mod resolve;
mod send;
mod telegram;
mod worker;

pub use notifier::{Notifier, NotifierConfig, RenderBody};
pub use resolve::SystemResolver;
pub use send::{signature, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, USER_AGENT};
pub use telegram::{Compose, TelegramConfig, TelegramNotifier};
pub use worker::KEEP_FINISHED;

#[cfg(test)]
mod tests;
