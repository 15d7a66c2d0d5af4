//! The messages between a supervisor and its run process: one JSON object a line, on the
//! run's standard input (to the run) and standard output (from the run).
//!
//! The first line the run reads is [`ToRun::Start`]; afterwards come the commands of the
//! session's [`trainyard_domain::ports::RunControl`]: [`ToRun::Stop`], [`ToRun::LearningRate`]
//! and [`ToRun::Snapshot`] (answered by [`FromRun::Snapshot`]).
//! End of input means the supervisor is gone: the run exits at once, and the session resumes
//! from its last checkpoint when a supervisor runs it again. The run's last message is
//! [`FromRun::Finished`], [`FromRun::Failed`] or [`FromRun::Crashed`]; a run that dies
//! without one is described from its exit status.

use serde::{Deserialize, Serialize};
use trainyard_domain::{
    metrics::{EpochMetrics, LogLevel},
    ports::{SnapshotId, TrainError, TrainedModel, TrainingJob},
};

/// What a supervisor sends its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToRun {
    /// Train this job under these limits.
    Start { job: Box<TrainingJob>, limits: RunLimits },
    /// Finish the current batch, save the weights and report them (`stopped`).
    Stop,
    /// Train at this learning rate from the next batch on, in place of the schedule.
    LearningRate { rate: f64 },
    /// Save the current weights before the next batch, as a model file, and report it.
    Snapshot { id: SnapshotId },
}

/// Limits the run process applies to itself before it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunLimits {
    /// The most memory the process may hold, in MB (`RLIMIT_DATA`); none when absent.
    pub memory_limit_mb: Option<u64>,
}

/// What a run reports to its supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromRun {
    Epoch {
        metrics: EpochMetrics,
    },
    Log {
        level: LogLevel,
        message: String,
    },
    Resumed {
        epoch: u32,
    },
    /// Batches finished so far; sent at most about once a second.
    Progress {
        batches: u64,
    },
    Finished {
        model: TrainedModel,
    },
    Failed {
        error: TrainError,
    },
    /// The snapshot asked for as `id` was written (or could not be).
    Snapshot {
        id: SnapshotId,
        result: Result<TrainedModel, TrainError>,
    },
    /// The trainer panicked; the message is the panic's.
    Crashed {
        message: String,
    },
}

impl ToRun {
    /// The message as one line, newline included.
    #[must_use]
    pub fn to_line(&self) -> String {
        line(self)
    }
}

impl FromRun {
    /// The message as one line, newline included.
    #[must_use]
    pub fn to_line(&self) -> String {
        line(self)
    }
}

fn line<T: Serialize>(message: &T) -> String {
    // Serializing these types cannot fail: every map key is a string and no value is a
    // non-finite float that serde_json refuses (it writes those as null).
    let mut text = serde_json::to_string(message).unwrap_or_default();
    text.push('\n');
    text
}
