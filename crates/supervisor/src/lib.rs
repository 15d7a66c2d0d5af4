//! Each training session runs in a process of its own, so that nothing a run does (an
//! out-of-memory kill, a panic, a crash in a native library) can take the server down.
//!
//! - [`ProcessTrainer`] is the supervisor side: a [`trainyard_domain::ports::Trainer`] that
//!   starts a run process, hands it the job, relays its progress to the session manager, measures
//!   its memory, enforces the memory limit and the stall timeout, and says in plain words why a
//!   run process died.
//! - [`worker::serve`] is the run side: the body of the internal `trainyard run-session`
//!   command, which trains one job with an in-process trainer and reports back.
//!
//! The two talk over the run process's standard input and output, one JSON message a line
//! ([`protocol`]); the run needs nothing else from its supervisor but the files the job names,
//! so it does not care where the supervisor runs.

mod procfs;
pub mod protocol;
mod supervise;
pub mod worker;

pub use supervise::{ProcessTrainer, RunCommand, SupervisionLimits};

pub use trainyard_domain::system::human_mb;

#[cfg(test)]
mod tests;
