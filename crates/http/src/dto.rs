//! Wire DTOs: the JSON shapes of the contract, converted from domain types at this edge.

use serde::{Deserialize, Serialize};
use trainyard_domain::{
    auth::{ApiKeyRecord, Scope},
    config::{EarlyStoppingRequest, LrScheduleRequest, TrainingConfig},
    manager::SessionView,
    metrics::{EpochMetrics, LogEntry},
    registry::{size_mb, DatasetRecord, ModelRecord},
    system::SystemSnapshot,
    time_fmt::iso8601,
    SessionId, TrainingRequest,
};
use utoipa::ToSchema;

mod sweeps;
pub use sweeps::*;

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `healthy` while the server answers.
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
    /// ISO 8601 UTC.
    pub timestamp: String,
}

/// `GET /`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Root {
    pub service: &'static str,
    pub version: &'static str,
    pub docs: &'static str,
    pub openapi: &'static str,
    pub health: &'static str,
}

/// One dataset name, or a list of names trained on together (text architectures).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DatasetNames {
    One(String),
    Many(Vec<String>),
}

/// `POST /api/v1/training/start` body. Unknown fields are rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTraining {
    /// One of the architectures listed by `GET /api/v1/architectures` (`mlp`, `custom_ai_model`).
    #[schema(example = "mlp")]
    pub model_architecture: Option<String>,
    /// A dataset name, or a list of text datasets trained on together.
    #[schema(example = "iris")]
    pub dataset_name: Option<DatasetNames>,
    /// 0.0001 to 1.0; default 0.001.
    pub learning_rate: Option<f64>,
    /// 1 to 1024; default 32.
    pub batch_size: Option<i64>,
    /// 1 to 1000; default 10.
    pub epochs: Option<i64>,
    /// `adam` (default), `adamw`, `sgd`, `rmsprop`.
    pub optimizer: Option<String>,
    /// `cross_entropy` (default), `mse`, `mae`, `bce`.
    pub loss_function: Option<String>,
    /// Fraction held out for validation, 0 to 0.9; default 0.2.
    pub validation_split: Option<f64>,
    /// Seed for initialisation, shuffling and the split; default 42.
    pub seed: Option<u64>,
    /// Momentum for `sgd` and `rmsprop`, 0 to below 1; default 0.
    pub momentum: Option<f64>,
    /// Char-LSTM embedding size; default 128.
    pub embedding_dim: Option<i64>,
    /// Char-LSTM hidden size; default 256.
    pub hidden_size: Option<i64>,
    /// Char-LSTM layers; default 2.
    pub num_layers: Option<i64>,
    /// Char-LSTM training sequence length in characters; default 100.
    pub sequence_length: Option<i64>,
    /// MLP hidden layer widths, 1 to 8 layers of 1 to 8192; default `[128, 64]`.
    pub hidden_sizes: Option<Vec<i64>>,
    /// Dropout probability while training, 0 to below 0.9; default 0 (not for the char-LSTM).
    pub dropout: Option<f64>,
    /// A registry model to start from (a Trainyard model or the owner's PyTorch `.pth`).
    pub base_model: Option<String>,
    /// `auto` (default), `cpu` or `cuda:N`.
    pub device: Option<String>,
    /// Stop when a metric has stopped improving; absent: train every epoch.
    pub early_stopping: Option<EarlyStoppingBody>,
    /// `best` (the default when validation_split is above 0): the model file holds the best
    /// epoch's weights by the early-stopping metric, else `val_loss`; `last`: the last epoch's.
    #[schema(example = "best")]
    pub keep: Option<String>,
    /// How the learning rate changes over the run; absent: constant.
    pub lr_schedule: Option<LrScheduleBody>,
    /// 0 to 1: an L2 penalty for `adam`, `sgd` and `rmsprop`, decoupled decay for `adamw`;
    /// default 0 (0.01 for `adamw`).
    pub weight_decay: Option<f64>,
    /// Above 0: gradients are scaled so that their global L2 norm is at most this.
    pub clip_grad_norm: Option<f64>,
    /// 0 to below 1, `cross_entropy` only: the training loss's label smoothing; default 0.
    pub label_smoothing: Option<f64>,
    /// -1000 to 1000; queued sessions of higher priority start first; default 0.
    pub priority: Option<i64>,
    /// Up to 20 session ids: this session waits until they have completed, and fails if one
    /// of them fails or is stopped.
    pub depends_on: Option<Vec<String>>,
    /// 0 to 10, default 0: how many times a run whose process crashes, runs out of memory or
    /// stalls is started again from its last checkpoint (configuration and data errors are
    /// never retried); the status's `attempt` counts them.
    pub max_retries: Option<i64>,
}

/// `PATCH /api/v1/training/queue/{session_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reorder {
    /// -1000 to 1000: higher starts first, first in first out within a priority.
    #[schema(example = 10)]
    pub priority: i64,
}

/// `PATCH /api/v1/training/{session_id}` body: what to change in a running session.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveChange {
    /// The learning rate from the next batch on (0.0001 to 1), in place of the schedule.
    #[schema(example = 0.0005)]
    pub learning_rate: f64,
}

/// `POST /api/v1/training/{session_id}/checkpoint` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// The registry name the current weights are saved under (letters, digits, `_`, `-`, `.`).
    #[schema(example = "resnet-halfway")]
    pub model_name: String,
}

/// `lr_schedule`: PyTorch's schedulers of the same names, after an optional linear warm-up
/// (epoch k of `warmup_epochs` trains at `lr * k / warmup_epochs`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LrScheduleBody {
    /// `step`, `exponential`, `cosine`, `onecycle` or `plateau`.
    #[serde(rename = "type")]
    #[schema(example = "cosine")]
    pub kind: Option<String>,
    /// `step`: epochs between cuts (required).
    pub step_size: Option<i64>,
    /// `step` (default 0.1) and `exponential` (required): the factor per cut or epoch, above 0
    /// and at most 1.
    pub gamma: Option<f64>,
    /// `cosine`: the rate at the end, below the learning_rate; default 0.
    pub min_lr: Option<f64>,
    /// `onecycle` (required): the peak rate; the run starts at max_lr/25.
    pub max_lr: Option<f64>,
    /// `plateau`: the factor per cut, above 0 and below 1; default 0.1.
    pub factor: Option<f64>,
    /// `plateau`: epochs without improvement of the validation loss before a cut; default 10.
    pub patience: Option<i64>,
    /// Epochs of linear warm-up before the schedule; default 0.
    pub warmup_epochs: Option<i64>,
}

impl From<LrScheduleBody> for LrScheduleRequest {
    fn from(b: LrScheduleBody) -> Self {
        Self {
            kind: b.kind,
            step_size: b.step_size,
            gamma: b.gamma,
            min_lr: b.min_lr,
            max_lr: b.max_lr,
            factor: b.factor,
            patience: b.patience,
            warmup_epochs: b.warmup_epochs,
        }
    }
}

/// `early_stopping`: the run ends (`completed`, `stopped_early: true`) once `metric` has not
/// improved by more than `min_delta` for `patience` epochs in a row.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingBody {
    /// `loss`, `accuracy`, `val_loss` (the default with validation data) or `val_accuracy`.
    #[schema(example = "val_loss")]
    pub metric: Option<String>,
    /// `min` or `max`; default `min` for losses, `max` for accuracies.
    pub mode: Option<String>,
    /// 1 to 1000 epochs; default 5.
    #[schema(example = 5)]
    pub patience: Option<i64>,
    /// The least change that counts as an improvement, at least 0; default 0.
    pub min_delta: Option<f64>,
}

impl From<EarlyStoppingBody> for EarlyStoppingRequest {
    fn from(b: EarlyStoppingBody) -> Self {
        Self { metric: b.metric, mode: b.mode, patience: b.patience, min_delta: b.min_delta }
    }
}

impl From<StartTraining> for TrainingRequest {
    fn from(b: StartTraining) -> Self {
        let (dataset_name, extra_datasets) = match b.dataset_name {
            None => (None, Vec::new()),
            Some(DatasetNames::One(name)) => (Some(name), Vec::new()),
            Some(DatasetNames::Many(names)) => {
                let mut names = names.into_iter();
                (names.next(), names.collect())
            }
        };
        Self {
            model_architecture: b.model_architecture,
            dataset_name,
            extra_datasets,
            learning_rate: b.learning_rate,
            batch_size: b.batch_size,
            epochs: b.epochs,
            optimizer: b.optimizer,
            loss_function: b.loss_function,
            validation_split: b.validation_split,
            seed: b.seed,
            momentum: b.momentum,
            embedding_dim: b.embedding_dim,
            hidden_size: b.hidden_size,
            num_layers: b.num_layers,
            sequence_length: b.sequence_length,
            hidden_sizes: b.hidden_sizes,
            dropout: b.dropout,
            base_model: b.base_model,
            device: b.device,
            early_stopping: b.early_stopping.map(Into::into),
            keep: b.keep,
            lr_schedule: b.lr_schedule.map(Into::into),
            weight_decay: b.weight_decay,
            clip_grad_norm: b.clip_grad_norm,
            label_smoothing: b.label_smoothing,
            priority: b.priority,
            depends_on: b.depends_on,
            max_retries: b.max_retries,
        }
    }
}

/// A validated training configuration, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigDto {
    pub model_architecture: String,
    /// The first (or only) dataset.
    pub dataset_name: String,
    /// Every dataset trained on, the first one first.
    pub dataset_names: Vec<String>,
    pub learning_rate: f64,
    pub batch_size: u32,
    pub epochs: u32,
    pub optimizer: String,
    pub loss_function: String,
    pub validation_split: f64,
    pub seed: u64,
    pub momentum: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_sizes: Option<Vec<u32>>,
    pub dropout: f64,
    pub base_model: Option<String>,
    pub device: String,
    /// Early stopping as resolved (every default filled in); null when off.
    pub early_stopping: Option<EarlyStoppingDto>,
    /// `best` or `last`.
    pub keep: String,
    /// The schedule with its defaults filled in (`{"type": "cosine", "min_lr": 0.0,
    /// "warmup_epochs": 0}`); null for a constant rate.
    #[schema(value_type = Option<Object>)]
    pub lr_schedule: Option<serde_json::Value>,
    /// The weight decay in effect.
    pub weight_decay: f64,
    pub clip_grad_norm: Option<f64>,
    pub label_smoothing: f64,
    /// Queued sessions of higher priority start first.
    pub priority: i32,
    /// Sessions that must complete before it starts.
    pub depends_on: Vec<String>,
    /// Retries of a crashed run from its last checkpoint.
    pub max_retries: u32,
}

/// `early_stopping` with its defaults filled in.
#[derive(Debug, Serialize, ToSchema)]
pub struct EarlyStoppingDto {
    pub metric: &'static str,
    pub mode: &'static str,
    pub patience: u32,
    pub min_delta: f64,
}

impl From<&TrainingConfig> for ConfigDto {
    fn from(c: &TrainingConfig) -> Self {
        let lstm = c.char_lstm;
        Self {
            model_architecture: c.model_architecture.to_string(),
            dataset_name: c.dataset_name.to_string(),
            dataset_names: c.datasets().map(ToString::to_string).collect(),
            learning_rate: c.learning_rate,
            batch_size: c.batch_size,
            epochs: c.epochs,
            optimizer: c.optimizer.to_string(),
            loss_function: c.loss_function.to_string(),
            validation_split: c.validation_split,
            seed: c.seed,
            momentum: c.momentum,
            embedding_dim: lstm.map(|l| l.embedding_dim),
            hidden_size: lstm.map(|l| l.hidden_size),
            num_layers: lstm.map(|l| l.num_layers),
            sequence_length: lstm.map(|l| l.sequence_length),
            hidden_sizes: c.hidden_sizes.clone(),
            dropout: c.dropout,
            base_model: c.base_model.as_ref().map(ToString::to_string),
            device: c.device.to_string(),
            early_stopping: c.early_stopping.map(|e| EarlyStoppingDto {
                metric: e.metric.as_str(),
                mode: e.mode.as_str(),
                patience: e.patience,
                min_delta: e.min_delta,
            }),
            keep: c.keep.as_str().to_owned(),
            lr_schedule: c.lr_schedule.and_then(|s| serde_json::to_value(s).ok()),
            weight_decay: c.effective_weight_decay(),
            clip_grad_norm: c.clip_grad_norm,
            label_smoothing: c.label_smoothing,
            priority: c.priority,
            depends_on: c.depends_on.iter().map(ToString::to_string).collect(),
            max_retries: c.max_retries,
        }
    }
}

/// Answer to a start request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    pub session_id: String,
    /// `running` or `queued`.
    pub status: String,
    pub message: String,
    /// 1-based place in the queue when queued.
    pub queue_position: Option<usize>,
    /// Why it waits, when queued.
    pub queue_reason: Option<String>,
    /// The peak memory the session is expected to need, in MB (host memory; on a GPU, the GPU's).
    pub estimated_memory_mb: Option<u64>,
    /// Where it trains: `cpu` or `cuda:N`.
    pub device: Option<String>,
    pub config: ConfigDto,
}

/// A plain acknowledgement.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

/// `GET /api/v1/training/{id}/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionStatus {
    pub session_id: String,
    /// `queued`, `running`, `completed`, `failed` or `stopped`.
    pub state: String,
    pub current_epoch: u32,
    pub total_epochs: u32,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub error_message: Option<String>,
    pub queue_position: Option<usize>,
    /// The registry name of the model the session produced.
    pub model_name: Option<String>,
    pub created_at: String,
    /// Why it waits, when queued ("waiting for 6.1 GB of memory; 3.2 GB free").
    pub queue_reason: Option<String>,
    /// Where it trains: `cpu` or `cuda:N`.
    pub device: Option<String>,
    /// The peak memory it was estimated to need before admission, in MB (host memory; on a
    /// GPU, the GPU's).
    pub estimated_memory_mb: Option<u64>,
    /// The run process's resident memory now, in MB, while it runs.
    pub memory_mb: Option<u64>,
    /// The largest resident memory its run process reached, in MB.
    pub peak_memory_mb: Option<u64>,
    /// The run process's id, while it runs.
    pub pid: Option<u32>,
    /// The best epoch so far by the session's selection metric (its early-stopping metric, else
    /// `val_loss`, else `loss`); with `keep: best` its weights are the model's.
    pub best_epoch: Option<u32>,
    /// That metric's value at the best epoch.
    pub best_metric: Option<f64>,
    /// The session ended because its early-stopping patience ran out.
    pub stopped_early: bool,
    /// The attempt at its run under way (or the last one), from 1: above 1 after its process
    /// crashed and it was retried from its last checkpoint (`max_retries`).
    pub attempt: u32,
    /// The sweep this session is a trial of, and its trial number.
    pub sweep_id: Option<String>,
    pub trial: Option<u32>,
    pub config: ConfigDto,
}

/// The estimate a client sees: the GPU's memory for GPU runs, else the host's.
fn estimated_mb(s: &trainyard_domain::Session) -> Option<u64> {
    s.resources.estimate.map(|e| if e.gpu_mb > 0 { e.gpu_mb } else { e.host_mb })
}

impl From<&SessionView> for SessionStatus {
    fn from(v: &SessionView) -> Self {
        let s = &v.session;
        Self {
            session_id: s.id.to_string(),
            state: s.state.to_string(),
            current_epoch: s.current_epoch,
            total_epochs: s.total_epochs(),
            start_time: s.start_time.map(iso8601),
            end_time: s.end_time.map(iso8601),
            error_message: s.error_message.clone(),
            queue_position: v.queue_position,
            model_name: s.model_name.as_ref().map(ToString::to_string),
            created_at: iso8601(s.created_at),
            queue_reason: v.queue_reason.clone(),
            device: s.resources.estimate.map(|e| e.device.to_string()),
            estimated_memory_mb: estimated_mb(s),
            memory_mb: v.usage.map(|u| u.memory_mb),
            peak_memory_mb: v.usage.map(|u| u.peak_memory_mb).or(s.resources.peak_memory_mb),
            pid: v.usage.and_then(|u| u.pid),
            best_epoch: s.outcome.best.map(|b| b.epoch),
            best_metric: s.outcome.best.map(|b| b.value),
            stopped_early: s.outcome.stopped_early,
            attempt: s.outcome.attempt(),
            sweep_id: s.config.sweep.as_ref().map(|t| t.sweep_id.to_string()),
            trial: s.config.sweep.as_ref().map(|t| t.number),
            config: (&s.config).into(),
        }
    }
}

impl Started {
    /// The answer for a session just created.
    #[must_use]
    pub fn of(v: &SessionView, message: String) -> Self {
        let s = &v.session;
        Self {
            session_id: s.id.to_string(),
            status: s.state.to_string(),
            message,
            queue_position: v.queue_position,
            queue_reason: v.queue_reason.clone(),
            estimated_memory_mb: estimated_mb(s),
            device: s.resources.estimate.map(|e| e.device.to_string()),
            config: (&s.config).into(),
        }
    }
}

/// The `status` object inside a session listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusSummary {
    pub state: String,
    pub current_epoch: u32,
    pub total_epochs: u32,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub error_message: Option<String>,
    pub queue_position: Option<usize>,
    pub queue_reason: Option<String>,
    pub memory_mb: Option<u64>,
    pub peak_memory_mb: Option<u64>,
    pub estimated_memory_mb: Option<u64>,
}

/// One entry of `GET /api/v1/training/sessions` and `/queue`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionSummary {
    pub session_id: String,
    pub config: ConfigDto,
    pub status: StatusSummary,
    pub created_at: String,
    pub model_name: Option<String>,
}

impl From<&SessionView> for SessionSummary {
    fn from(v: &SessionView) -> Self {
        let full = SessionStatus::from(v);
        Self {
            session_id: full.session_id,
            config: full.config,
            status: StatusSummary {
                state: full.state,
                current_epoch: full.current_epoch,
                total_epochs: full.total_epochs,
                start_time: full.start_time,
                end_time: full.end_time,
                error_message: full.error_message,
                queue_position: full.queue_position,
                queue_reason: full.queue_reason,
                memory_mb: full.memory_mb,
                peak_memory_mb: full.peak_memory_mb,
                estimated_memory_mb: full.estimated_memory_mb,
            },
            created_at: full.created_at,
            model_name: full.model_name,
        }
    }
}

/// One epoch's metrics. Before the first epoch finishes, `epoch` is 0 and the values are null.
#[derive(Debug, Serialize, ToSchema)]
pub struct Metrics {
    pub session_id: String,
    pub epoch: u32,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub samples_per_second: Option<f64>,
    pub epoch_seconds: Option<f64>,
    /// The learning rate of the epoch's last batch (the schedule's rate).
    pub learning_rate: Option<f64>,
    pub timestamp: Option<String>,
}

impl Metrics {
    /// The metrics of one finished epoch.
    #[must_use]
    pub fn of(id: &SessionId, m: &EpochMetrics) -> Self {
        Self {
            session_id: id.to_string(),
            epoch: m.epoch,
            loss: Some(m.loss),
            accuracy: Some(m.accuracy),
            val_loss: m.val_loss,
            val_accuracy: m.val_accuracy,
            samples_per_second: Some(m.samples_per_second),
            epoch_seconds: Some(m.epoch_seconds),
            learning_rate: m.learning_rate,
            timestamp: Some(iso8601(m.timestamp)),
        }
    }

    /// The answer before any epoch has finished.
    #[must_use]
    pub fn none_yet(id: &SessionId) -> Self {
        Self {
            session_id: id.to_string(),
            epoch: 0,
            loss: None,
            accuracy: None,
            val_loss: None,
            val_accuracy: None,
            samples_per_second: None,
            epoch_seconds: None,
            learning_rate: None,
            timestamp: None,
        }
    }
}

/// One log line.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLine {
    pub session_id: String,
    pub timestamp: String,
    /// `DEBUG`, `INFO`, `WARNING` or `ERROR`.
    pub level: String,
    pub message: String,
}

impl From<&LogEntry> for LogLine {
    fn from(e: &LogEntry) -> Self {
        Self {
            session_id: e.session_id.to_string(),
            timestamp: iso8601(e.timestamp),
            level: e.level.to_string(),
            message: e.message.clone(),
        }
    }
}

/// One GPU in `system/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub usage_percent: f64,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
}

/// `GET /api/v1/system/info`. The flat `gpu_*` fields describe the first GPU.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemInfo {
    pub cpu_usage_percent: f64,
    pub cpu_count: usize,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub memory_available_mb: u64,
    pub memory_percent: f64,
    /// The server process's own resident memory, in MB.
    pub server_memory_mb: u64,
    /// The resident memory of the running sessions' training processes together, in MB.
    pub training_memory_mb: u64,
    pub disk_free_gb: f64,
    pub disk_total_gb: f64,
    pub gpu_available: bool,
    pub gpu_usage_percent: Option<f64>,
    pub gpu_memory_used_mb: Option<u64>,
    pub gpu_memory_total_mb: Option<u64>,
    pub gpus: Vec<Gpu>,
    /// Why no GPU is reported, when none is.
    pub gpu_error: Option<String>,
    pub running_sessions: usize,
    pub max_concurrent_sessions: usize,
    /// When the monitor took this snapshot (ISO 8601 UTC).
    pub timestamp: String,
}

impl SystemInfo {
    /// The wire form of a monitor snapshot.
    #[must_use]
    pub fn of(s: &SystemSnapshot, running_sessions: usize, training_memory_mb: u64, max_concurrent_sessions: usize) -> Self {
        let first = s.gpus.first();
        Self {
            cpu_usage_percent: (s.cpu_usage_percent * 10.0).round() / 10.0,
            cpu_count: s.cpu_count,
            memory_used_mb: s.memory_used_mb,
            memory_total_mb: s.memory_total_mb,
            memory_available_mb: s.memory_available_mb,
            memory_percent: s.memory_percent(),
            server_memory_mb: s.server_memory_mb,
            training_memory_mb,
            disk_free_gb: s.disk_free_gb,
            disk_total_gb: s.disk_total_gb,
            gpu_available: first.is_some(),
            gpu_usage_percent: first.map(|g| g.usage_percent),
            gpu_memory_used_mb: first.map(|g| g.memory_used_mb),
            gpu_memory_total_mb: first.map(|g| g.memory_total_mb),
            gpus: s
                .gpus
                .iter()
                .map(|g| Gpu {
                    index: g.index,
                    name: g.name.clone(),
                    usage_percent: g.usage_percent,
                    memory_used_mb: g.memory_used_mb,
                    memory_total_mb: g.memory_total_mb,
                })
                .collect(),
            gpu_error: s.gpu_error.clone(),
            running_sessions,
            max_concurrent_sessions,
            timestamp: iso8601(s.timestamp),
        }
    }
}

/// One model in the registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub name: String,
    pub size_mb: f64,
    pub size_bytes: u64,
    pub created_at: String,
    pub file_path: String,
    /// `safetensors`, `pytorch` or `onnx` (`binary` for files stored by older versions).
    pub format: String,
    /// Parameters (tensor elements) in the file, as inspection counted them.
    pub parameter_count: Option<u64>,
    /// For Trainyard-trained models: the architecture and the producing session.
    pub architecture: Option<String>,
    pub session_id: Option<String>,
    /// SHA-256 of the file in hex; downloads send it as the ETag `"sha256-<hex>"`.
    pub content_hash: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl From<&ModelRecord> for Model {
    fn from(m: &ModelRecord) -> Self {
        Self {
            name: m.name.to_string(),
            size_mb: size_mb(m.size_bytes),
            size_bytes: m.size_bytes,
            created_at: iso8601(m.created_at),
            file_path: m.file_path.display().to_string(),
            format: m.format.to_string(),
            parameter_count: m.metadata.get("parameter_count").and_then(serde_json::Value::as_u64),
            architecture: m.metadata.get("architecture").and_then(|a| a.as_str()).map(str::to_owned),
            session_id: m.session_id.as_ref().map(ToString::to_string),
            content_hash: m.content_hash.as_ref().map(ToString::to_string),
            metadata: m.metadata.clone(),
        }
    }
}

/// One dataset in the registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dataset {
    pub name: String,
    pub size_mb: f64,
    pub size_bytes: u64,
    pub sample_count: Option<u64>,
    /// `csv`, `tsv`, `text`, `npy`, `npz`, `images`, `idx` or `cifar10`.
    pub format: String,
    /// Such as `13` (features), `8x8`, or `vocab=65`.
    pub dimensions: Option<String>,
    pub created_at: String,
    pub file_path: String,
    /// SHA-256 of the file in hex.
    pub content_hash: Option<String>,
    /// Present on `GET /api/v1/datasets/{name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub statistics: Option<serde_json::Value>,
}

impl Dataset {
    /// The wire form, with or without statistics.
    #[must_use]
    pub fn of(d: &DatasetRecord, with_statistics: bool) -> Self {
        Self {
            name: d.name.to_string(),
            size_mb: size_mb(d.size_bytes),
            size_bytes: d.size_bytes,
            sample_count: d.info.sample_count,
            format: d.info.format.to_string(),
            dimensions: d.info.dimensions.clone(),
            created_at: iso8601(d.created_at),
            file_path: d.file_path.display().to_string(),
            content_hash: d.content_hash.as_ref().map(ToString::to_string),
            statistics: with_statistics.then(|| d.info.statistics.clone()),
        }
    }
}

/// Answer to an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    pub message: String,
    pub name: String,
    pub size_mb: f64,
    pub size_bytes: u64,
    pub format: String,
    pub sample_count: Option<u64>,
    pub dimensions: Option<String>,
    /// SHA-256 of the stored file in hex, computed while it was received.
    pub content_hash: Option<String>,
}

/// `POST /api/v1/models/{name}/generate` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// Text to continue; characters the model does not know are skipped.
    #[serde(default)]
    pub prompt: String,
    /// Characters to generate, 1 to 10000; default 200.
    pub max_length: Option<u32>,
    /// Sampling temperature, above 0 and at most 10; default 0.8.
    pub temperature: Option<f64>,
    /// Makes the output reproducible; random when absent.
    pub seed: Option<u64>,
}

/// Generated text.
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedDto {
    pub model: String,
    pub prompt: String,
    /// Only the generated characters.
    pub generated_text: String,
    /// The prompt followed by the generated characters.
    pub text: String,
    /// Prompt characters outside the model's vocabulary (skipped).
    pub unknown_characters: Vec<String>,
    /// The seed used, to reproduce this answer.
    pub seed: u64,
}

/// A prediction request: `inputs` (a list of samples) or `input` (one sample).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictBody {
    /// Samples: rows of numbers in the model's feature order, objects of feature name to
    /// number, or images as nested lists (`[H][W]`, `[H][W][C]` or `[C][H][W]`).
    #[schema(value_type = Vec<Object>, example = json!([[5.1, 3.5, 1.4, 0.2]]))]
    pub inputs: Option<Vec<serde_json::Value>>,
    /// One sample.
    #[schema(value_type = Object)]
    pub input: Option<serde_json::Value>,
}

/// A class and its probability.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassProbability {
    pub class: String,
    pub probability: f64,
}

/// One sample's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictionDto {
    /// The most probable class.
    pub class: String,
    pub class_index: u32,
    /// The most probable class's probability.
    pub confidence: f64,
    /// Every class, most probable first.
    pub probabilities: Vec<ClassProbability>,
}

/// Answer to a prediction request, one entry per sample in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictedDto {
    pub model: String,
    pub predictions: Vec<PredictionDto>,
}

/// One architecture the trainer can build.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArchitectureDto {
    pub name: String,
    /// Other names accepted for it.
    pub aliases: Vec<String>,
    /// Optional config fields that tune it.
    pub tunable_fields: Vec<String>,
    pub description: String,
    /// Dataset kinds it trains on.
    pub data_kinds: Vec<String>,
    /// Dataset formats it accepts.
    pub dataset_formats: Vec<String>,
    pub optimizers: Vec<String>,
    pub loss_functions: Vec<String>,
    /// Config fields every architecture takes.
    pub training_fields: Vec<String>,
    /// What `early_stopping.metric` may name.
    pub early_stopping_metrics: Vec<String>,
    /// What `keep` may be.
    pub keep: Vec<String>,
}

/// One authentication attempt from the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLine {
    pub timestamp: String,
    /// `success`, `missing`, `invalid`, `expired`, `revoked`, `throttled` (a failed attempt past
    /// the failure limit), `rate_limited` (a valid key past its request rate) or
    /// `insufficient_scope` (a valid key below the scope the route needs).
    pub outcome: String,
    /// A non-reversible fingerprint of the presented key, never the key.
    pub key_fingerprint: Option<String>,
    pub key_id: Option<String>,
    pub method: String,
    pub endpoint: String,
    /// The effective client address: behind a trusted proxy, the forwarded one.
    pub client_addr: Option<String>,
}

/// What an API key may do: `read` (every `GET` outside `/api/v1/admin`), `train` (`read`,
/// plus training, dataset uploads, prediction and generation) or `admin` (everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    Read,
    Train,
    Admin,
}

impl From<KeyScope> for Scope {
    fn from(s: KeyScope) -> Self {
        match s {
            KeyScope::Read => Self::Read,
            KeyScope::Train => Self::Train,
            KeyScope::Admin => Self::Admin,
        }
    }
}

impl From<Scope> for KeyScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Read => Self::Read,
            Scope::Train => Self::Train,
            Scope::Admin => Self::Admin,
        }
    }
}

/// `POST /api/v1/admin/keys` body. Unknown fields are rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Who uses the key: 1 to 64 printable characters.
    #[schema(example = "telegram-bot")]
    pub label: String,
    pub scope: KeyScope,
    /// Lifetime such as `30d`, `12h`, `90m`, `45s` or `2w` (at most 36500d); the key never
    /// expires when absent.
    #[serde(default)]
    #[schema(example = "30d")]
    pub expires_in: Option<String>,
}

/// A managed API key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    /// `key_` and 8 hex digits; `DELETE /api/v1/admin/keys/{id}` revokes the key.
    pub id: String,
    /// A non-reversible fingerprint of the key, as the audit log shows it.
    pub fingerprint: String,
    pub label: String,
    pub scope: KeyScope,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
}

impl KeyInfo {
    /// The listing of `record` at `now`.
    #[must_use]
    pub fn of(record: &ApiKeyRecord, now: time::OffsetDateTime) -> Self {
        Self {
            id: record.id.clone(),
            fingerprint: record.fingerprint.clone(),
            label: record.label.clone(),
            scope: record.scope.into(),
            created_at: iso8601(record.created_at),
            expires_at: record.expires_at.map(iso8601),
            revoked_at: record.revoked_at.map(iso8601),
            status: record.status(now).as_str(),
        }
    }
}

/// A key just created: the key itself, shown only in this answer (only its hash is stored),
/// and its listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The API key: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

pub mod webhooks;

#[cfg(test)]
mod tests;
