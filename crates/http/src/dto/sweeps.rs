//! The sweep endpoints' bodies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use trainyard_domain::{
    sweep::SweepRequest,
    sweeps::{SweepView, TrialView},
    time_fmt::iso8601,
};
use utoipa::ToSchema;

use super::StartTraining;

/// `POST /api/v1/sweeps` body. Unknown fields are rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSweep {
    /// The sweep's name (letters, digits, `_`, `-`, `.`); its best trial's model is registered
    /// as `<name>-best`.
    #[schema(example = "iris-lr")]
    pub name: Option<String>,
    /// The start config every trial begins from.
    pub base: StartTraining,
    /// Field name to distribution: `{"uniform": [lo, hi]}`, `{"log_uniform": [lo, hi]}`,
    /// `{"int_uniform": [lo, hi]}` or `{"choice": [v, ...]}`. Sweepable: `learning_rate`,
    /// `batch_size`, `epochs`, `optimizer`, `momentum`, `weight_decay`, `clip_grad_norm`,
    /// `label_smoothing`, `dropout`, `hidden_sizes`, `embedding_dim`, `hidden_size`,
    /// `num_layers`, `sequence_length`, `seed`.
    #[schema(value_type = Object, example = json!({"learning_rate": {"log_uniform": [0.0001, 0.1]}, "batch_size": {"choice": [16, 32]}}))]
    pub space: Option<Map<String, Value>>,
    /// `random` (default; needs `trials`) or `grid` (every combination of `choice` dimensions,
    /// at most `trials`).
    pub search: Option<String>,
    /// 1 to 100.
    pub trials: Option<i64>,
    /// `val_accuracy` (default), `val_loss`, `accuracy` or `loss`: what trials are judged and
    /// ranked by.
    pub metric: Option<String>,
    /// `min` or `max`; default: `min` for losses, `max` for accuracies.
    pub mode: Option<String>,
    /// `asha` (default: a trial at a rung of `epochs / 3^k` goes on only in the best third of
    /// the trials there), `median` (stops a trial whose best so far is below the median of the
    /// others at the same epoch) or `none`.
    pub pruner: Option<String>,
    /// The random search's seed: the same seed gives the same trials. Default 42.
    pub seed: Option<u64>,
}

impl From<StartSweep> for SweepRequest {
    fn from(b: StartSweep) -> Self {
        Self {
            name: b.name,
            base: b.base.into(),
            space: b.space,
            search: b.search,
            trials: b.trials,
            metric: b.metric,
            mode: b.mode,
            pruner: b.pruner,
            seed: b.seed,
        }
    }
}

/// A sweep, its trials and its best trial so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct SweepDto {
    pub sweep_id: String,
    pub name: String,
    /// `running`, `completed`, `stopped` or `failed`.
    pub state: &'static str,
    pub search: &'static str,
    pub pruner: &'static str,
    pub metric: &'static str,
    pub mode: &'static str,
    pub seed: u64,
    /// How many trials it runs.
    pub trial_count: u32,
    /// The search space as validated.
    #[schema(value_type = Object)]
    pub space: Value,
    pub created_at: String,
    pub ended_at: Option<String>,
    /// The best completed trial so far by the metric.
    pub best: Option<BestTrialDto>,
    /// The model registered for the best trial when the sweep ended (`<name>-best`).
    pub best_model: Option<String>,
    /// What happened at its end.
    pub message: Option<String>,
    pub trials: Vec<TrialDto>,
}

/// The best trial so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct BestTrialDto {
    pub trial: u32,
    pub session_id: String,
    /// The epoch of its best value.
    pub epoch: u32,
    pub value: f64,
}

/// One trial: an ordinary session.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrialDto {
    pub trial: u32,
    pub session_id: String,
    /// Its session's state; a pruned trial is `stopped` with `error_message` saying why.
    pub state: Option<String>,
    pub current_epoch: Option<u32>,
    /// Its point of the space.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Its best value of the sweep metric so far, and at which epoch.
    pub best_metric: Option<f64>,
    pub best_epoch: Option<u32>,
    pub error_message: Option<String>,
}

impl From<&TrialView> for TrialDto {
    fn from(t: &TrialView) -> Self {
        Self {
            trial: t.trial.number,
            session_id: t.trial.session_id.to_string(),
            state: t.session.as_ref().map(|s| s.state.to_string()),
            current_epoch: t.session.as_ref().map(|s| s.current_epoch),
            params: t.trial.params.clone(),
            best_metric: t.best.map(|b| b.1),
            best_epoch: t.best.map(|b| b.0),
            error_message: t.session.as_ref().and_then(|s| s.error_message.clone()),
        }
    }
}

impl From<&SweepView> for SweepDto {
    fn from(v: &SweepView) -> Self {
        let s = &v.sweep;
        let spec = &s.spec;
        Self {
            sweep_id: s.id.to_string(),
            name: spec.name.to_string(),
            state: s.state.as_str(),
            search: spec.search.as_str(),
            pruner: spec.pruner.as_str(),
            metric: spec.metric.as_str(),
            mode: spec.mode.as_str(),
            seed: spec.seed,
            trial_count: spec.trials,
            space: spec.space.iter().map(|d| (d.field.clone(), serde_json::to_value(&d.dist).unwrap_or_default())).collect(),
            created_at: iso8601(s.created_at),
            ended_at: s.ended_at.map(iso8601),
            best: s.best.as_ref().map(|b| BestTrialDto {
                trial: b.number,
                session_id: b.session_id.to_string(),
                epoch: b.epoch,
                value: b.value,
            }),
            best_model: s.best_model.as_ref().map(ToString::to_string),
            message: s.message.clone(),
            trials: v.trials.iter().map(TrialDto::from).collect(),
        }
    }
}
