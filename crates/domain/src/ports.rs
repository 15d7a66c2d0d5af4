//! Ports: the traits adapters implement. All are synchronous (SQLite and candle block);
//! callers on async runtimes reach them through a blocking pool or a dedicated thread.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use time::OffsetDateTime;

use crate::{
    auth::{ApiKeyHash, ApiKeyRecord, AuditEntry},
    config::{Device, TrainingConfig},
    ids::{DatasetName, ModelName, SessionId},
    metrics::{EpochMetrics, LogEntry, LogLevel},
    registry::{DatasetInfo, DatasetRecord, ModelFormat, ModelInfo, ModelRecord, NewDataset, NewModel},
    session::{Session, SessionState},
    system::SystemSnapshot,
};

/// What a storage adapter may fail with. Driver errors never cross the port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store stayed busy after retries; the caller may retry later.
    #[error("storage is busy, try again")]
    Busy,
    /// A record with the same unique key exists.
    #[error("{0}")]
    Conflict(String),
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Stored data could not be read back (corrupt row, unreadable file).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The disk refused a write (full, read-only, permissions).
    #[error("disk error: {0}")]
    Io(String),
}

/// Persistence of sessions and their state changes.
///
/// # Errors
/// Every method returns [`StoreError::Busy`] when the store stays locked after retries,
/// [`StoreError::Corrupt`] when a stored row cannot be decoded, and [`StoreError::Io`]
/// when the disk fails.
pub trait SessionRepository: Send + Sync + 'static {
    /// Stores a new session. [`StoreError::Conflict`] when the id exists.
    fn insert(&self, session: &Session) -> Result<(), StoreError>;
    /// Writes a session's state, times, error, model and epoch in one transaction; never what
    /// was changed live ([`Self::set_live`]). [`StoreError::NotFound`] when it does not exist.
    fn update(&self, session: &Session) -> Result<(), StoreError>;
    /// Writes what was changed in a session while it runs, and nothing else, if it is still
    /// running; answers whether it was.
    fn set_live(&self, id: &SessionId, live: &crate::session::SessionLive) -> Result<bool, StoreError>;
    fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;
    /// All sessions, oldest first.
    fn list(&self) -> Result<Vec<Session>, StoreError>;
    /// Sessions in `state`, in the order they were created (FIFO for the queue).
    fn list_in_state(&self, state: SessionState) -> Result<Vec<Session>, StoreError>;
    /// Terminal sessions that ended before `cutoff`.
    fn list_ended_before(&self, cutoff: OffsetDateTime) -> Result<Vec<Session>, StoreError>;
}

/// Per-epoch metrics history.
///
/// # Errors
/// As [`SessionRepository`].
pub trait MetricsStore: Send + Sync + 'static {
    /// Records an epoch's metrics; recording the same epoch again replaces it.
    fn record(&self, session: &SessionId, metrics: &EpochMetrics) -> Result<(), StoreError>;
    /// The latest epoch's metrics.
    fn latest(&self, session: &SessionId) -> Result<Option<EpochMetrics>, StoreError>;
    /// Every epoch's metrics, oldest epoch first.
    fn history(&self, session: &SessionId) -> Result<Vec<EpochMetrics>, StoreError>;
    /// Forgets the metrics of epochs after `epoch` (a resumed run redoes them).
    fn discard_after(&self, session: &SessionId, epoch: u32) -> Result<(), StoreError>;
}

/// Timestamped session logs.
///
/// # Errors
/// As [`SessionRepository`].
pub trait LogStore: Send + Sync + 'static {
    fn append(&self, entry: &LogEntry) -> Result<(), StoreError>;
    /// The newest `limit` lines, oldest first.
    fn tail(&self, session: &SessionId, limit: u32) -> Result<Vec<LogEntry>, StoreError>;
}

/// The model registry: rows in the database, files on local disk, kept in agreement.
///
/// # Errors
/// As [`SessionRepository`]; [`StoreError::Conflict`] when importing a name that exists,
/// also when two imports of one name race: exactly one of them commits.
pub trait ModelRegistry: Send + Sync + 'static {
    /// All models, newest first.
    fn list(&self) -> Result<Vec<ModelRecord>, StoreError>;
    fn get(&self, name: &ModelName) -> Result<Option<ModelRecord>, StoreError>;
    /// A directory on the registry's filesystem where callers stage files before import.
    fn staging_dir(&self) -> PathBuf;
    /// Moves the staged file into the registry under a server-generated file name and
    /// commits its row, with the file's content hash (computed here when the caller did not).
    /// On any error the staged file is removed and no row exists.
    fn import(&self, model: NewModel) -> Result<ModelRecord, StoreError>;
    /// As [`Self::import`], but an entry of the same name is replaced: the new file is moved
    /// into place and the row rewritten in one transaction, and the old file is removed only
    /// after the commit. With no such entry it inserts.
    fn replace(&self, model: NewModel) -> Result<ModelRecord, StoreError>;
    /// Registers a copy of `source`'s file as a new model `name` (with `metadata`), as
    /// [`Self::import`] does a staged file; `source` is left as it is.
    fn copy(&self, source: &ModelRecord, name: ModelName, metadata: serde_json::Value) -> Result<ModelRecord, StoreError>;
    /// Removes the row and the file. [`StoreError::NotFound`] when there is no such model.
    fn delete(&self, name: &ModelName) -> Result<(), StoreError>;
}

/// Sweeps, each one record with its spec, trials and outcome.
///
/// # Errors
/// As [`SessionRepository`].
pub trait SweepStore: Send + Sync + 'static {
    /// Stores a new sweep. [`StoreError::Conflict`] when a sweep of that name exists.
    fn insert(&self, sweep: &crate::sweep::Sweep) -> Result<(), StoreError>;
    /// Rewrites a sweep. [`StoreError::NotFound`] when it does not exist.
    fn update(&self, sweep: &crate::sweep::Sweep) -> Result<(), StoreError>;
    fn get(&self, id: &crate::ids::SweepId) -> Result<Option<crate::sweep::Sweep>, StoreError>;
    /// Every sweep, oldest first.
    fn list(&self) -> Result<Vec<crate::sweep::Sweep>, StoreError>;
}

/// The dataset registry, the twin of [`ModelRegistry`].
///
/// # Errors
/// As [`ModelRegistry`].
pub trait DatasetRegistry: Send + Sync + 'static {
    /// All datasets, oldest first (the bot trains on the first one).
    fn list(&self) -> Result<Vec<DatasetRecord>, StoreError>;
    fn get(&self, name: &DatasetName) -> Result<Option<DatasetRecord>, StoreError>;
    fn staging_dir(&self) -> PathBuf;
    fn import(&self, dataset: NewDataset) -> Result<DatasetRecord, StoreError>;
    /// As [`ModelRegistry::replace`].
    fn replace(&self, dataset: NewDataset) -> Result<DatasetRecord, StoreError>;
    fn delete(&self, name: &DatasetName) -> Result<(), StoreError>;
}

/// Why a dataset file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The content is malformed or unsupported; the message says why.
    #[error("{0}")]
    Invalid(String),
    #[error("could not read the file: {0}")]
    Io(String),
}

/// Reads a dataset file and describes it: format by content, sample count, dimensions, statistics.
pub trait DatasetInspector: Send + Sync + 'static {
    /// Inspects the file at `path`; `file_name` is the client's name, a hint only.
    ///
    /// # Errors
    /// [`InspectError::Invalid`] for malformed content, [`InspectError::Io`] when reading fails.
    fn inspect(&self, path: &Path, file_name: Option<&str>) -> Result<DatasetInfo, InspectError>;
}

/// Reads a model file and checks that it is what its format says, before the registry takes it.
pub trait ModelInspector: Send + Sync + 'static {
    /// Checks the file at `path`, detected as `format` (never [`ModelFormat::Binary`]), without
    /// executing anything in it or loading its weights, and describes it.
    ///
    /// # Errors
    /// [`InspectError::Invalid`] saying why the file is refused (malformed structure, tensors
    /// outside the data, a forbidden pickle global, external data references, ...),
    /// [`InspectError::Io`] when reading fails.
    fn inspect(&self, path: &Path, format: ModelFormat) -> Result<ModelInfo, InspectError>;
}

/// API keys and the authentication audit log.
///
/// # Errors
/// As [`SessionRepository`]; [`StoreError::NotFound`] when revoking an unknown key.
pub trait AuthStore: Send + Sync + 'static {
    /// Stores a managed key (its hash, never the key).
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The managed key with this hash, revoked or expired ones included.
    fn find_key(&self, hash: &ApiKeyHash) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// All managed keys, oldest first.
    fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks the key with this id or fingerprint revoked at `at` (a key already revoked keeps
    /// its first revocation time); returns it.
    fn revoke_key(&self, id_or_fingerprint: &str, at: OffsetDateTime) -> Result<ApiKeyRecord, StoreError>;
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest `limit` audit entries, newest first.
    fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Limits on authentication attempts: failed ones per client address and per key, and
/// authenticated requests per key. Implementations keep bounded state and never block.
///
/// # Errors
/// `Err(wait)`: the attempt is over a limit, and `wait` is how long until it would pass.
pub trait AttemptLimiter: Send + Sync + 'static {
    /// Counts a failed attempt from `client` with the key whose fingerprint is `fingerprint`
    /// (absent when no key was sent).
    fn failure(&self, client: Option<IpAddr>, fingerprint: Option<&str>) -> Result<(), std::time::Duration>;
    /// Counts a request authenticated with the key whose fingerprint is `fingerprint`.
    fn request(&self, fingerprint: &str) -> Result<(), std::time::Duration>;
}

/// Per-session scratch space: checkpoints and temporary files of a run.
pub trait ScratchSpace: Send + Sync + 'static {
    /// The session's scratch directory, created if missing.
    ///
    /// # Errors
    /// [`StoreError::Io`] when it cannot be created.
    fn dir_for(&self, session: &SessionId) -> Result<PathBuf, StoreError>;
    /// Removes the session's scratch directory; succeeds when there is none.
    ///
    /// # Errors
    /// [`StoreError::Io`] when it exists and cannot be removed.
    fn remove(&self, session: &SessionId) -> Result<(), StoreError>;
}

/// Current resource usage, served from a cache refreshed in the background.
pub trait SystemMonitor: Send + Sync + 'static {
    fn snapshot(&self) -> SystemSnapshot;
}

/// The time, so that tests can fix it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// What a running session is told, read by the training loop between batches: stop, train at
/// another learning rate from now on, save a snapshot of the current weights. Cloned handles
/// share one state.
#[derive(Debug, Clone, Default)]
pub struct RunControl(Arc<ControlState>);

#[derive(Default)]
struct ControlState {
    stop: AtomicBool,
    /// Raised with every command but a stop, for relays to notice.
    pending: AtomicBool,
    learning_rate: Mutex<Option<f64>>,
    snapshots: Mutex<Vec<SnapshotId>>,
    /// Called after every command, so that a relay passes it on at once.
    waker: Mutex<Option<Waker>>,
}

type Waker = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("stop", &self.stop)
            .field("learning_rate", &self.learning_rate)
            .field("snapshots", &self.snapshots)
            .finish_non_exhaustive()
    }
}

/// One request for a snapshot of a running session's weights, answered through
/// [`TrainingEvents::snapshot`] with the same id.
pub type SnapshotId = u64;

impl RunControl {
    /// Asks the run to stop.
    pub fn request_stop(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether a stop was requested.
    #[must_use]
    pub fn stop_requested(&self) -> bool {
        self.0.stop.load(Ordering::SeqCst)
    }

    /// Makes the run train at `rate` from its next batch on, whatever its schedule says.
    pub fn set_learning_rate(&self, rate: f64) {
        *crate::lock(&self.0.learning_rate) = Some(rate);
        self.0.pending.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// The learning rate set while the run was under way, if any.
    #[must_use]
    pub fn learning_rate(&self) -> Option<f64> {
        *crate::lock(&self.0.learning_rate)
    }

    /// Asks the run to save its current weights before its next batch.
    pub fn request_snapshot(&self, id: SnapshotId) {
        crate::lock(&self.0.snapshots).push(id);
        self.0.pending.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// The snapshots asked for since the last call, oldest first.
    #[must_use]
    pub fn take_snapshots(&self) -> Vec<SnapshotId> {
        std::mem::take(&mut *crate::lock(&self.0.snapshots))
    }

    /// Whether a command came since the last call (for relays, such as the supervisor's pipe
    /// to a run process).
    #[must_use]
    pub fn take_pending(&self) -> bool {
        self.0.pending.swap(false, Ordering::SeqCst)
    }

    /// Has `waker` called after every command from now on (a relay's wake-up), until
    /// [`Self::clear_waker`].
    pub fn set_waker(&self, waker: impl Fn() + Send + Sync + 'static) {
        *crate::lock(&self.0.waker) = Some(Box::new(waker));
    }

    /// Calls no waker any more.
    pub fn clear_waker(&self) {
        *crate::lock(&self.0.waker) = None;
    }

    fn wake(&self) {
        if let Some(waker) = crate::lock(&self.0.waker).as_ref() {
            waker();
        }
    }
}

/// Everything a trainer needs to run one session. Serializable, so that a supervisor can
/// hand it to a run in another process.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingJob {
    pub session_id: SessionId,
    pub config: TrainingConfig,
    pub dataset: DatasetRecord,
    /// Further datasets trained on together with `dataset`.
    pub extra_datasets: Vec<DatasetRecord>,
    /// The registry model to start from, when fine-tuning.
    pub base_model: Option<ModelRecord>,
    /// Where the run writes checkpoints and its output model. A checkpoint found here on start
    /// belongs to an earlier, interrupted run of the same session: the trainer resumes from it.
    pub scratch_dir: PathBuf,
    /// A learning rate set while an earlier attempt of the session ran: it replaces the
    /// schedule from this run's first batch, until [`RunControl::set_learning_rate`] changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
}

/// What the trainer reports while it runs. `Send`, so that a trainer may run the session on a
/// thread of its own (the candle trainer runs it on a worker of its thread pool).
pub trait TrainingEvents: Send {
    /// An epoch finished with these metrics.
    fn epoch_finished(&mut self, metrics: EpochMetrics);
    /// A line for the session's log.
    fn log(&mut self, level: LogLevel, message: String);
    /// The snapshot asked for as `id` ([`RunControl::request_snapshot`]) was written (a model
    /// file in the scratch directory, which the receiver takes away), or could not be.
    fn snapshot(&mut self, id: SnapshotId, result: Result<TrainedModel, TrainError>);
    /// The run resumed from a checkpoint taken after `epoch` (0: it starts over); metrics of
    /// later epochs are about to be recomputed.
    fn resumed(&mut self, epoch: u32);
    /// A training batch finished: the heartbeat a supervisor's stall detection watches.
    /// Called after every batch, so implementations must be cheap.
    fn batch_finished(&mut self) {}
    /// The resources the run uses now, as its supervisor measures them (a separate process's
    /// resident memory); trainers that run in the caller's process never report it.
    fn usage(&mut self, usage: RunUsage) {
        let _ = usage;
    }
}

/// What a run uses while it lasts, measured by its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RunUsage {
    /// The run's process id, when it runs in a process of its own.
    pub pid: Option<u32>,
    /// Resident memory now, in MB.
    pub memory_mb: u64,
    /// The largest resident memory so far, in MB.
    pub peak_memory_mb: u64,
}

/// The memory a session is expected to need at its peak, before it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryEstimate {
    /// Where it will train: `auto` resolved to `cpu` or `cuda:N`.
    pub device: Device,
    /// Host memory of the run's process, in MB: the runtime, the dataset, and on the CPU the
    /// weights, gradients, optimizer state and one batch's activations.
    pub host_mb: u64,
    /// Memory on the GPU, in MB (0 on the CPU): weights, gradients, optimizer state, activations.
    pub gpu_mb: u64,
}

/// A finished (completed or stopped) run's model, written into the scratch directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainedModel {
    pub file: PathBuf,
    pub format: ModelFormat,
    /// Architecture, hyperparameters, labels, normalisation, final metrics.
    pub metadata: serde_json::Value,
    /// Epochs fully completed.
    pub epochs_completed: u32,
    /// Whether the run ended because a stop was requested.
    pub stopped: bool,
    /// Whether the run ended because its early-stopping patience ran out.
    #[serde(default)]
    pub stopped_early: bool,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum TrainError {
    /// The dataset cannot be trained on with this config; the message says why.
    #[error("{0}")]
    Data(String),
    /// Training diverged (NaN or infinite loss) or the backend failed.
    #[error("{0}")]
    Failed(String),
    #[error("i/o error: {0}")]
    Io(String),
    /// The run's process crashed, ran out of memory, was killed or stalled: a failure of the
    /// process, not of the config or the data, so starting it again from its last checkpoint
    /// may get further (`max_retries`).
    #[error("{0}")]
    Crashed(String),
}

impl TrainError {
    /// Whether starting the run again from its last checkpoint may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Crashed(_))
    }
}

/// Trains one session to completion, failure or stop.
pub trait Trainer: Send + Sync + 'static {
    /// Runs `job` on the calling thread, reporting through `events` and checking `stop`
    /// between batches. A stop saves the current weights and returns them with `stopped`.
    ///
    /// # Errors
    /// [`TrainError`] when the run cannot finish.
    fn train(&self, job: &TrainingJob, events: &mut dyn TrainingEvents, stop: &RunControl) -> Result<TrainedModel, TrainError>;

    /// Estimates the session's peak memory from its architecture, input shape, batch size,
    /// optimizer and parameter count, without building the model.
    ///
    /// # Errors
    /// A message when the datasets cannot be described well enough to estimate.
    fn estimate_memory(&self, config: &TrainingConfig, datasets: &[DatasetRecord]) -> Result<MemoryEstimate, String>;

    /// Whether this build can train on `device`.
    ///
    /// # Errors
    /// A message saying why not (for example, a build without CUDA asked for `cuda:0`).
    fn check_device(&self, device: Device) -> Result<(), String>;

    /// Whether `model` can be the starting point of a session with `config`.
    ///
    /// # Errors
    /// A message saying what differs (architecture, layer sizes) or why the file is unusable.
    fn check_base_model(&self, config: &TrainingConfig, model: &ModelRecord) -> Result<(), String>;
}

/// A text-generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Characters to generate after the prompt.
    pub max_length: u32,
    /// Sampling temperature; lower is more conservative.
    pub temperature: f64,
    /// Makes sampling reproducible; random when absent.
    pub seed: Option<u64>,
}

/// Generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The characters generated after the prompt.
    pub text: String,
    /// Prompt characters the model's vocabulary lacks; they were skipped.
    pub unknown_characters: Vec<char>,
    pub seed: u64,
}

/// Why generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// The model cannot generate text (not a text model, or not a Trainyard/PyTorch char model).
    #[error("{0}")]
    Unsupported(String),
    /// The model's output for this request is not a finite number (its weights overflow), so
    /// there is nothing to sample from; the message says so.
    #[error("{0}")]
    Invalid(String),
    /// The model file could not be read or evaluated.
    #[error("{0}")]
    Failed(String),
}

/// Runs a text model on a prompt.
pub trait Generator: Send + Sync + 'static {
    /// Generates up to `req.max_length` characters after `req.prompt` with `model`.
    ///
    /// # Errors
    /// [`GenerateError::Unsupported`] for models that do not generate text.
    fn generate(&self, model: &ModelRecord, req: &GenerateRequest) -> Result<Generated, GenerateError>;
}

/// A numeric array: `values` in row-major order of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// What a classifier is asked to classify.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictInput {
    /// Tabular rows, each the feature values in the model's feature order.
    Rows(Vec<Vec<f64>>),
    /// Tabular rows given as feature name and value; every feature of the model must be named.
    NamedRows(Vec<Vec<(String, f64)>>),
    /// Images as arrays, each `[H, W]`, `[H, W, C]` or `[C, H, W]`, pixels in 0..=255 or 0..=1
    /// as the model was trained (see the model's metadata).
    Arrays(Vec<NdArray>),
    /// One encoded image file (PNG or JPEG).
    Encoded(Vec<u8>),
}

impl PredictInput {
    /// How many samples the input holds.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Rows(r) => r.len(),
            Self::NamedRows(r) => r.len(),
            Self::Arrays(a) => a.len(),
            Self::Encoded(_) => 1,
        }
    }

    /// Whether the input holds no sample.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first sample (counted from 0) holding a value that is not a finite number.
    #[must_use]
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            Self::Rows(rows) => rows.iter().position(|r| !r.iter().all(|v| v.is_finite())),
            Self::NamedRows(rows) => rows.iter().position(|r| !r.iter().all(|(_, v)| v.is_finite())),
            Self::Arrays(arrays) => arrays.iter().position(|a| !a.values.iter().all(|v| v.is_finite())),
            Self::Encoded(_) => None,
        }
    }
}

/// One sample's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrediction {
    /// The most probable class.
    pub class: String,
    pub class_index: u32,
    /// Its probability.
    pub confidence: f64,
    /// Every class with its probability, most probable first.
    pub probabilities: Vec<(String, f64)>,
}

impl ClassPrediction {
    /// Whether every number of the answer is a probability: finite and in 0..=1.
    #[must_use]
    pub fn is_probability(&self) -> bool {
        let p = |v: f64| (0.0..=1.0).contains(&v);
        p(self.confidence) && self.probabilities.iter().all(|(_, v)| p(*v))
    }
}

/// Why prediction failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PredictError {
    /// The model is not a classifier this server can run.
    #[error("{0}")]
    Unsupported(String),
    /// The input does not fit the model: wrong kind, shape, channel count or feature names.
    #[error("{0}")]
    Invalid(String),
    /// The model file could not be read or evaluated.
    #[error("{0}")]
    Failed(String),
}

/// Runs a classifier on samples.
pub trait Predictor: Send + Sync + 'static {
    /// Classifies every sample of `input` with `model`.
    ///
    /// # Errors
    /// [`PredictError::Unsupported`] for models that are not Trainyard classifiers,
    /// [`PredictError::Invalid`] saying what the model expects when the input does not fit.
    fn predict(&self, model: &ModelRecord, input: &PredictInput) -> Result<Vec<ClassPrediction>, PredictError>;
}
