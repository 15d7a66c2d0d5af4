//! The training session and its state machine:
//! `queued -> running -> completed | failed | stopped`, and `queued -> stopped` (cancelled).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{config::TrainingConfig, ids::ModelName, ids::SessionId, ports::MemoryEstimate, selection::BestEpoch};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Queued,
    Running,
    Completed,
    Failed,
    Stopped,
}

impl SessionState {
    /// Every state.
    pub const ALL: [Self; 5] = [Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Stopped];

    /// The wire spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    /// Parses the wire spelling.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether the session can no longer change.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Stopped)
    }

    /// Whether `self -> next` is a legal transition.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use SessionState::{Completed, Failed, Queued, Running, Stopped};
        matches!((self, next), (Queued, Running | Stopped | Failed) | (Running, Completed | Failed | Stopped))
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attempted transition the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} session cannot become {to}")]
pub struct TransitionError {
    pub from: SessionState,
    pub to: SessionState,
}

/// A training session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub config: TrainingConfig,
    pub state: SessionState,
    /// The last epoch that finished (0 before the first one).
    pub current_epoch: u32,
    pub created_at: OffsetDateTime,
    pub start_time: Option<OffsetDateTime>,
    pub end_time: Option<OffsetDateTime>,
    pub error_message: Option<String>,
    /// The registry name of the model this session produced, once it has one.
    pub model_name: Option<ModelName>,
    /// Its memory: the estimate it was admitted on, and the peak its run reached.
    pub resources: SessionResources,
    /// Its best epoch so far and whether it stopped early.
    pub outcome: SessionOutcome,
    /// What was changed while it ran.
    pub live: SessionLive,
}

/// What was changed while the session ran: by a client (`PATCH /api/v1/training/{id}`) or by
/// a sweep's pruner.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionLive {
    /// The learning rate set last, which replaced the schedule from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Why the run was told to stop, when something other than a client stopped it (a sweep's
    /// pruner): kept so that a stop decided before a restart is carried out after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// How a session's run went: how its epochs were judged (see [`crate::selection`]) and how
/// many times its run was retried.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionOutcome {
    /// Its best epoch so far by its selection metric, and the metric's value there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestEpoch>,
    /// It ended because its early-stopping patience ran out.
    #[serde(default)]
    pub stopped_early: bool,
    /// Times its run's process failed and was started again from the last checkpoint
    /// (`max_retries`); the attempt under way is this plus one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SessionOutcome {
    /// The attempt at the run under way (or the last one), from 1.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.retries + 1
    }
}

/// A session's memory: estimated before admission, measured while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionResources {
    /// The estimate made when the session was created, with the device it trains on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<MemoryEstimate>,
    /// The largest resident memory its run process reached, in MB, as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mb: Option<u64>,
}

impl Session {
    /// A new session waiting in the queue.
    #[must_use]
    pub fn queued(id: SessionId, config: TrainingConfig, now: OffsetDateTime) -> Self {
        Self {
            id,
            config,
            state: SessionState::Queued,
            current_epoch: 0,
            created_at: now,
            start_time: None,
            end_time: None,
            error_message: None,
            model_name: None,
            resources: SessionResources::default(),
            outcome: SessionOutcome::default(),
            live: SessionLive::default(),
        }
    }

    /// The number of epochs the session will run.
    #[must_use]
    pub fn total_epochs(&self) -> u32 {
        self.config.epochs
    }

    /// Moves to `next`, stamping start or end time.
    ///
    /// # Errors
    /// [`TransitionError`] when the state machine forbids the move; the session is unchanged.
    pub fn transition(&mut self, next: SessionState, now: OffsetDateTime) -> Result<(), TransitionError> {
        if !self.state.can_become(next) {
            return Err(TransitionError { from: self.state, to: next });
        }
        self.state = next;
        if next == SessionState::Running {
            self.start_time = Some(now);
        } else {
            self.end_time = Some(now);
        }
        Ok(())
    }

    /// Ends the session as failed with `message`.
    ///
    /// # Errors
    /// [`TransitionError`] unless the session is running.
    pub fn fail(&mut self, message: impl Into<String>, now: OffsetDateTime) -> Result<(), TransitionError> {
        self.transition(SessionState::Failed, now)?;
        self.error_message = Some(message.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{quickcheck, Arbitrary, Gen};

    use super::*;
    use crate::config::TrainingRequest;

    impl Arbitrary for SessionState {
        fn arbitrary(g: &mut Gen) -> Self {
            *g.choose(&Self::ALL).unwrap_or(&Self::Queued)
        }
    }

    pub(crate) fn sample_session() -> Session {
        let req = TrainingRequest { model_architecture: Some("mlp".into()), dataset_name: Some("iris".into()), ..Default::default() };
        Session::queued(SessionId::generate(), TrainingConfig::validate(&req).unwrap(), OffsetDateTime::UNIX_EPOCH)
    }

    quickcheck! {
        // Property 6: only the designed transitions succeed; a refused one changes nothing.
        fn prop06_state_machine_allows_only_designed_transitions(path: Vec<SessionState>) -> bool {
            let mut s = sample_session();
            for next in path {
                let before = s.clone();
                let legal = matches!(
                    (s.state, next),
                    (SessionState::Queued, SessionState::Running | SessionState::Stopped | SessionState::Failed)
                        | (SessionState::Running, SessionState::Completed | SessionState::Failed | SessionState::Stopped)
                );
                match s.transition(next, OffsetDateTime::UNIX_EPOCH) {
                    Ok(()) if legal => {}
                    Err(_) if !legal => if s != before { return false; },
                    _ => return false,
                }
            }
            true
        }

        // Property 7: terminal states are absorbing, and an ended session has an end time.
        fn prop07_terminal_states_absorb(path: Vec<SessionState>) -> bool {
            let mut s = sample_session();
            for next in path {
                let _ = s.transition(next, OffsetDateTime::UNIX_EPOCH);
                if s.state.is_terminal() {
                    if s.end_time.is_none() { return false; }
                    if SessionState::ALL.iter().any(|n| s.state.can_become(*n)) { return false; }
                }
            }
            true
        }
    }
}
