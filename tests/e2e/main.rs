//! End-to-end tests: each starts the real `trainyard` binary on a free port and talks HTTP.

mod harness;

mod hostile;
mod isolation;

mod access;
mod api;
mod charts;
mod cli;
mod envelope;
mod events;
mod inputs;
mod lifecycle;
mod live;
mod metrics;
mod queue;
mod registry;
mod schedules;
mod selection;
mod sweeps;
mod telegram;
mod text;
mod training;
mod transport;
mod vision;
mod webhooks;
