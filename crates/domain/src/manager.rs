//! The session manager: validates and admits training requests, keeps the FIFO queue,
//! runs sessions on dedicated threads, records their progress, and recovers after restarts.
//!
//! Policy: at most `max_concurrent` sessions run at once; the rest wait in creation order.
//! A queued session also waits while the monitor reports less available memory than the
//! configured reserve. When a run ends, for whatever reason, the next queued session starts.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration as StdDuration, Instant},
};

use time::Duration;

use crate::{
    config::{ConfigErrors, TrainingConfig, TrainingRequest},
    ids::{ModelName, SessionId},
    metrics::{EpochMetrics, LogEntry, LogLevel},
    ports::{
        Clock, DatasetRegistry, LogStore, MetricsStore, ModelInspector, ModelRegistry, ScratchSpace, SessionRepository, StopSignal,
        StoreError, SystemMonitor, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob,
    },
    registry::NewModel,
    session::{Session, SessionState},
};

/// Stack size of training threads: deep recursion in long sequences must not overflow.
pub const TRAINING_THREAD_STACK: usize = 64 * 1024 * 1024;

/// The adapters the manager drives.
#[derive(Clone)]
pub struct Ports {
    pub sessions: Arc<dyn SessionRepository>,
    pub metrics: Arc<dyn MetricsStore>,
    pub logs: Arc<dyn LogStore>,
    pub datasets: Arc<dyn DatasetRegistry>,
    pub models: Arc<dyn ModelRegistry>,
    /// Describes trained models (tensor and parameter counts) before they are registered.
    pub model_inspector: Arc<dyn ModelInspector>,
    pub scratch: Arc<dyn ScratchSpace>,
    pub trainer: Arc<dyn Trainer>,
    pub monitor: Arc<dyn SystemMonitor>,
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

/// Scheduling and retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerPolicy {
    /// Sessions running at once (at least 1).
    pub max_concurrent: usize,
    /// Queued sessions wait while less memory than this is available, in MB (0: never wait).
    pub memory_reserve_mb: u64,
    /// Finished sessions' scratch files (checkpoints) are removed after this long.
    pub retention: Duration,
}

impl Default for SchedulerPolicy {
    fn default() -> Self {
        Self { max_concurrent: 1, memory_reserve_mb: 0, retention: Duration::days(7) }
    }
}

/// What the manager's operations fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManagerError {
    /// The request is invalid; every failing field is listed.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    #[error("training session '{0}' not found")]
    NotFound(SessionId),
    /// The session is in a state where the operation makes no sense.
    #[error("{0}")]
    Conflict(String),
    #[error("the server is shutting down and accepts no new sessions")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A session with its place in the queue (1-based), when queued.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub session: Session,
    pub queue_position: Option<usize>,
}

/// The answer to a start request.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub view: SessionView,
    pub message: String,
}

#[derive(Default)]
struct Sched {
    running: HashMap<SessionId, (StopSignal, Option<JoinHandle<()>>)>,
    waiting_for_memory: HashSet<SessionId>,
    shutting_down: bool,
    last_sweep: Option<Instant>,
}

struct Inner {
    ports: Ports,
    policy: SchedulerPolicy,
    sched: Mutex<Sched>,
    idle: Condvar,
}

/// The session manager. Cheap to clone; all clones share one scheduler.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager").field("policy", &self.inner.policy).finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Sched>) -> MutexGuard<'_, Sched> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SessionManager {
    /// A manager over `ports` with `policy`. Call [`Self::recover`] once before serving.
    #[must_use]
    pub fn new(ports: Ports, mut policy: SchedulerPolicy) -> Self {
        policy.max_concurrent = policy.max_concurrent.max(1);
        Self { inner: Arc::new(Inner { ports, policy, sched: Mutex::new(Sched::default()), idle: Condvar::new() }) }
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> SchedulerPolicy {
        self.inner.policy
    }

    /// Start-up recovery: sessions left `running` by a previous process resume from their last
    /// checkpoint (or start over when they have none) before queued sessions are admitted;
    /// a session that cannot resume fails "interrupted by server restart". Returns the ids of
    /// the resumed sessions.
    ///
    /// # Errors
    /// [`StoreError`] when the repository cannot be read.
    pub fn recover(&self) -> Result<Vec<SessionId>, StoreError> {
        let p = &self.inner.ports;
        let mut resumed = Vec::new();
        {
            let mut sched = lock(&self.inner.sched);
            for s in p.sessions.list_in_state(SessionState::Running)? {
                self.inner.log(&s.id, LogLevel::Warning, "the server restarted during training; resuming".to_owned());
                resumed.push(s.id.clone());
                self.inner.spawn_run(&mut sched, s, true);
            }
        }
        self.inner.pump();
        Ok(resumed)
    }

    /// Validates `req`, stores a queued session and starts it at once when capacity allows.
    ///
    /// # Errors
    /// [`ManagerError::Invalid`] listing every failing field (including an unknown dataset or
    /// one the architecture cannot train on), [`ManagerError::ShuttingDown`], or a store error.
    pub fn start(&self, req: &TrainingRequest) -> Result<Started, ManagerError> {
        let p = &self.inner.ports;
        let config = TrainingConfig::validate(req)?;
        self.check_references(&config)?;
        if lock(&self.inner.sched).shutting_down {
            return Err(ManagerError::ShuttingDown);
        }
        let session = Session::queued(SessionId::generate(), config, p.clock.now());
        p.sessions.insert(&session)?;
        self.inner.log(&session.id, LogLevel::Info, format!("session created: {}", describe(&session.config)));
        self.inner.pump();
        let view = self.view(&session.id)?;
        let message = match (view.session.state, view.queue_position) {
            (SessionState::Running, _) => "Training started".to_owned(),
            (SessionState::Queued, Some(pos)) => format!("Training queued at position {pos}"),
            (state, _) => format!("Training session is {state}"),
        };
        Ok(Started { view, message })
    }

    /// Checks what the config names outside itself: datasets (present, of a kind the
    /// architecture trains on), the base model, and the device.
    fn check_references(&self, config: &TrainingConfig) -> Result<(), ManagerError> {
        let p = &self.inner.ports;
        let mut errors = ConfigErrors::default();
        for name in config.datasets() {
            match p.datasets.get(name)? {
                None => errors.push("dataset_name", format!("dataset '{name}' not found; list datasets with GET /api/v1/datasets")),
                Some(ds) => {
                    let wanted = config.model_architecture.data_kind();
                    if ds.info.data_kind() != Some(wanted) {
                        errors.push(
                            "dataset_name",
                            format!(
                                "architecture '{}' trains on {wanted} datasets, but dataset '{}' is {}",
                                config.model_architecture, ds.name, ds.info.format
                            ),
                        );
                    }
                }
            }
        }
        if let Some(base) = &config.base_model {
            match p.models.get(base)? {
                None => errors.push("base_model", format!("model '{base}' not found; list models with GET /api/v1/models")),
                Some(model) => {
                    if let Err(why) = p.trainer.check_base_model(config, &model) {
                        errors.push("base_model", format!("model '{base}' cannot start this session: {why}"));
                    }
                }
            }
        }
        if let Err(why) = p.trainer.check_device(config.device) {
            errors.push("device", why);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.into())
        }
    }

    /// One session with its queue position.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] or a store error.
    pub fn view(&self, id: &SessionId) -> Result<SessionView, ManagerError> {
        let p = &self.inner.ports;
        let session = p.sessions.get(id)?.ok_or_else(|| ManagerError::NotFound(id.clone()))?;
        let queue_position = if session.state == SessionState::Queued {
            p.sessions.list_in_state(SessionState::Queued)?.iter().position(|s| s.id == *id).map(|i| i + 1)
        } else {
            None
        };
        Ok(SessionView { session, queue_position })
    }

    /// Every session, oldest first, with queue positions.
    ///
    /// # Errors
    /// A store error.
    pub fn list(&self) -> Result<Vec<SessionView>, ManagerError> {
        let sessions = self.inner.ports.sessions.list()?;
        let mut pos = 0;
        Ok(sessions
            .into_iter()
            .map(|session| {
                let queue_position = (session.state == SessionState::Queued).then(|| {
                    pos += 1;
                    pos
                });
                SessionView { session, queue_position }
            })
            .collect())
    }

    /// The queued sessions in the order they will start.
    ///
    /// # Errors
    /// A store error.
    pub fn queue(&self) -> Result<Vec<SessionView>, ManagerError> {
        let queued = self.inner.ports.sessions.list_in_state(SessionState::Queued)?;
        Ok(queued.into_iter().enumerate().map(|(i, session)| SessionView { session, queue_position: Some(i + 1) }).collect())
    }

    /// Stops a session: a running one finishes its current batch, saves its weights and ends
    /// `stopped`; a queued one is cancelled. Returns a message for the client.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`] when it has already ended.
    pub fn stop(&self, id: &SessionId) -> Result<String, ManagerError> {
        {
            let sched = lock(&self.inner.sched);
            if let Some((signal, _)) = sched.running.get(id) {
                signal.request();
                drop(sched);
                self.inner.log(id, LogLevel::Info, "stop requested; saving the current weights".to_owned());
                return Ok(format!("Training session {id} is stopping; its current weights will be saved"));
            }
        }
        match self.cancel(id) {
            Err(ManagerError::Conflict(_)) => {
                let state = self.view(id)?.session.state;
                Err(ManagerError::Conflict(format!("training session {id} has already ended ({state})")))
            }
            other => other,
        }
    }

    /// Cancels a queued session: it ends `stopped` without running.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`] when it is not queued.
    pub fn cancel(&self, id: &SessionId) -> Result<String, ManagerError> {
        let p = &self.inner.ports;
        // Hold the scheduler lock so the session cannot be admitted while we cancel it.
        let mut sched = lock(&self.inner.sched);
        let mut s = p.sessions.get(id)?.ok_or_else(|| ManagerError::NotFound(id.clone()))?;
        if s.state != SessionState::Queued {
            return Err(ManagerError::Conflict(format!("training session {id} is {} and not in the queue", s.state)));
        }
        s.transition(SessionState::Stopped, p.clock.now()).map_err(|e| ManagerError::Conflict(e.to_string()))?;
        p.sessions.update(&s)?;
        sched.waiting_for_memory.remove(id);
        drop(sched);
        self.inner.idle.notify_all();
        self.inner.log(id, LogLevel::Info, "cancelled while queued".to_owned());
        Ok(format!("Training session {id} removed from the queue"))
    }

    /// The latest epoch's metrics.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] for an unknown session, or a store error.
    pub fn latest_metrics(&self, id: &SessionId) -> Result<Option<EpochMetrics>, ManagerError> {
        self.ensure_exists(id)?;
        Ok(self.inner.ports.metrics.latest(id)?)
    }

    /// Every epoch's metrics, oldest first.
    ///
    /// # Errors
    /// As [`Self::latest_metrics`].
    pub fn history(&self, id: &SessionId) -> Result<Vec<EpochMetrics>, ManagerError> {
        self.ensure_exists(id)?;
        Ok(self.inner.ports.metrics.history(id)?)
    }

    /// The newest `limit` log lines, oldest first.
    ///
    /// # Errors
    /// As [`Self::latest_metrics`].
    pub fn logs(&self, id: &SessionId, limit: u32) -> Result<Vec<LogEntry>, ManagerError> {
        self.ensure_exists(id)?;
        Ok(self.inner.ports.logs.tail(id, limit)?)
    }

    fn ensure_exists(&self, id: &SessionId) -> Result<(), ManagerError> {
        match self.inner.ports.sessions.get(id)? {
            Some(_) => Ok(()),
            None => Err(ManagerError::NotFound(id.clone())),
        }
    }

    /// Periodic work: admits queued sessions whose memory wait is over, and at most once an
    /// hour removes the scratch files of sessions that ended longer ago than the retention.
    pub fn tick(&self) {
        self.inner.pump();
        let due = {
            let mut sched = lock(&self.inner.sched);
            let due = sched.last_sweep.is_none_or(|t| t.elapsed() >= StdDuration::from_secs(3600));
            if due {
                sched.last_sweep = Some(Instant::now());
            }
            due
        };
        if due {
            let _ = self.sweep_retention();
        }
    }

    /// Removes the scratch files of sessions that ended before now minus the retention
    /// period; their rows, metrics and logs stay. Returns how many were swept.
    ///
    /// # Errors
    /// A store error.
    pub fn sweep_retention(&self) -> Result<usize, StoreError> {
        let p = &self.inner.ports;
        let cutoff = p.clock.now() - self.inner.policy.retention;
        let ended = p.sessions.list_ended_before(cutoff)?;
        for s in &ended {
            p.scratch.remove(&s.id)?;
        }
        Ok(ended.len())
    }

    /// Waits until the session has ended (completed, failed or stopped), or has finished epoch
    /// `min_epoch` when one is given, or `timeout` passes; then returns it as it is. Lets
    /// clients long-poll instead of polling.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] or a store error.
    pub fn wait_for(&self, id: &SessionId, timeout: StdDuration, min_epoch: Option<u32>) -> Result<SessionView, ManagerError> {
        let deadline = Instant::now() + timeout;
        // Read the state under the scheduler lock: runs notify under it when an epoch or the
        // run ends, so nothing can slip between the read and the wait.
        let mut sched = lock(&self.inner.sched);
        loop {
            let view = self.view(id)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let reached = min_epoch.is_some_and(|e| view.session.current_epoch >= e);
            if view.session.state.is_terminal() || reached || left.is_zero() {
                return Ok(view);
            }
            sched = self.inner.idle.wait_timeout(sched, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Ids of the sessions running right now.
    #[must_use]
    pub fn running_ids(&self) -> Vec<SessionId> {
        lock(&self.inner.sched).running.keys().cloned().collect()
    }

    /// Graceful shutdown: admits nothing more, asks every running session to stop (each saves
    /// its weights and ends `stopped`), and waits up to `timeout` for them. Returns whether
    /// every run ended in time.
    pub fn shutdown(&self, timeout: StdDuration) -> bool {
        {
            let mut sched = lock(&self.inner.sched);
            sched.shutting_down = true;
            for (signal, _) in sched.running.values() {
                signal.request();
            }
        }
        self.wait_idle(timeout)
    }

    /// Waits until no session is running or `timeout` passes; for tests and shutdown.
    pub fn wait_idle(&self, timeout: StdDuration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut sched = lock(&self.inner.sched);
        while !sched.running.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            sched = self.inner.idle.wait_timeout(sched, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

fn describe(c: &TrainingConfig) -> String {
    format!(
        "{} on '{}', {} epochs, batch {}, lr {}, {} / {}, validation split {}, seed {}",
        c.model_architecture,
        c.dataset_name,
        c.epochs,
        c.batch_size,
        c.learning_rate,
        c.optimizer,
        c.loss_function,
        c.validation_split,
        c.seed
    )
}

impl Inner {
    fn log(&self, id: &SessionId, level: LogLevel, message: String) {
        let entry = LogEntry { session_id: id.clone(), timestamp: self.ports.clock.now(), level, message };
        // A log line that cannot be written must not break the operation that produced it.
        let _ = self.ports.logs.append(&entry);
    }

    /// Admits queued sessions while capacity and memory allow.
    fn pump(self: &Arc<Self>) {
        let mut sched = lock(&self.sched);
        while !sched.shutting_down && sched.running.len() < self.policy.max_concurrent {
            let Ok(queued) = self.ports.sessions.list_in_state(SessionState::Queued) else { return };
            let Some(mut session) = queued.into_iter().next() else { return };
            if self.policy.memory_reserve_mb > 0 {
                let available = self.ports.monitor.snapshot().memory_available_mb;
                if available < self.policy.memory_reserve_mb {
                    if sched.waiting_for_memory.insert(session.id.clone()) {
                        self.log(
                            &session.id,
                            LogLevel::Warning,
                            format!(
                                "waiting in the queue: {available} MB of memory available, {} MB reserve required",
                                self.policy.memory_reserve_mb
                            ),
                        );
                    }
                    return;
                }
            }
            sched.waiting_for_memory.remove(&session.id);
            if session.transition(SessionState::Running, self.ports.clock.now()).is_err() || self.ports.sessions.update(&session).is_err() {
                return;
            }
            self.log(&session.id, LogLevel::Info, "training started".to_owned());
            self.spawn_run(&mut sched, session, false);
        }
    }

    /// Starts the run of a session that is `running` on its own thread.
    fn spawn_run(self: &Arc<Self>, sched: &mut Sched, session: Session, resuming: bool) {
        let stop = StopSignal::default();
        let id = session.id.clone();
        let me = Arc::clone(self);
        let run_stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("train-{}", &id.as_str()[..13]))
            .stack_size(TRAINING_THREAD_STACK)
            .spawn(move || me.run(session, &run_stop, resuming));
        match spawned {
            Ok(handle) => {
                sched.running.insert(id, (stop, Some(handle)));
            }
            Err(e) => self.finish_with(&id, Err(format!("could not start a training thread: {e}"))),
        }
    }

    fn run(self: Arc<Self>, session: Session, stop: &StopSignal, resuming: bool) {
        let id = session.id.clone();
        let mut recorder = Recorder { inner: &self, session, store_errors: Vec::new(), resuming, resume_reported: false };
        let outcome = self.execute(&mut recorder, stop).map_err(|e| {
            if resuming {
                format!("interrupted by server restart; resuming failed: {e}")
            } else {
                e
            }
        });
        if !recorder.store_errors.is_empty() {
            let n = recorder.store_errors.len();
            self.log(&id, LogLevel::Warning, format!("{n} progress records could not be stored: {}", recorder.store_errors[0]));
        }
        self.finish_with(&id, outcome);
        {
            let mut sched = lock(&self.sched);
            if let Some((_, handle)) = sched.running.remove(&id) {
                // This thread is the handle's own thread: detach it.
                drop(handle);
            }
        }
        self.idle.notify_all();
        self.pump();
    }

    fn execute(&self, recorder: &mut Recorder<'_>, stop: &StopSignal) -> Result<TrainedModel, String> {
        let p = &self.ports;
        let session = recorder.session.clone();
        let dataset = p
            .datasets
            .get(&session.config.dataset_name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("dataset '{}' was deleted before training started", session.config.dataset_name))?;
        let mut extra_datasets = Vec::new();
        for name in &session.config.extra_datasets {
            extra_datasets.push(
                p.datasets
                    .get(name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("dataset '{name}' was deleted before training started"))?,
            );
        }
        let base_model = match &session.config.base_model {
            None => None,
            Some(name) => Some(p.models.get(name).map_err(|e| e.to_string())?.ok_or_else(|| format!("base model '{name}' was deleted"))?),
        };
        let scratch_dir = p.scratch.dir_for(&session.id).map_err(|e| e.to_string())?;
        let job = TrainingJob {
            session_id: session.id.clone(),
            config: session.config.clone(),
            dataset,
            extra_datasets,
            base_model,
            scratch_dir,
        };
        let trainer = Arc::clone(&p.trainer);
        match catch_unwind(AssertUnwindSafe(|| trainer.train(&job, recorder, stop))) {
            Ok(Ok(model)) => Ok(model),
            Ok(Err(TrainError::Data(m) | TrainError::Failed(m))) => Err(m),
            Ok(Err(e @ TrainError::Io(_))) => Err(e.to_string()),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(format!("training crashed: {what}"))
            }
        }
    }

    /// Ends a running session: registers its model, or marks it failed.
    fn finish_with(&self, id: &SessionId, outcome: Result<TrainedModel, String>) {
        let p = &self.ports;
        let Ok(Some(mut s)) = p.sessions.get(id) else { return };
        let now = p.clock.now();
        let result = match outcome {
            Ok(model) => match self.register_model(&s, &model) {
                Ok(name) => {
                    s.model_name = Some(name.clone());
                    s.current_epoch = model.epochs_completed.max(s.current_epoch);
                    let (state, what) =
                        if model.stopped { (SessionState::Stopped, "stopped") } else { (SessionState::Completed, "completed") };
                    self.log(id, LogLevel::Info, format!("training {what} after {} epochs; model saved as '{name}'", s.current_epoch));
                    s.transition(state, now)
                }
                Err(e) => {
                    let msg = format!("could not save the trained model: {e}");
                    self.log(id, LogLevel::Error, msg.clone());
                    s.fail(msg, now)
                }
            },
            Err(msg) => {
                self.log(id, LogLevel::Error, format!("training failed: {msg}"));
                s.fail(msg, now)
            }
        };
        if result.is_ok() {
            let _ = p.sessions.update(&s);
        }
    }

    fn register_model(&self, s: &Session, model: &TrainedModel) -> Result<ModelName, StoreError> {
        let name = ModelName::new(s.id.as_str()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut metadata = model.metadata.clone();
        if let Some(obj) = metadata.as_object_mut() {
            obj.insert("session_id".into(), s.id.as_str().into());
            obj.insert("epochs_completed".into(), model.epochs_completed.into());
            obj.insert("stopped_early".into(), model.stopped.into());
            match self.ports.model_inspector.inspect(&model.file, model.format) {
                Ok(info) => {
                    for key in ["tensor_count", "parameter_count", "dtypes"] {
                        if let Some(value) = info.metadata.get(key) {
                            obj.entry(key).or_insert_with(|| value.clone());
                        }
                    }
                }
                Err(e) => self.log(&s.id, LogLevel::Warning, format!("the trained model could not be described: {e}")),
            }
        }
        self.ports.models.import(NewModel {
            name: name.clone(),
            staged_file: model.file.clone(),
            format: model.format,
            session_id: Some(s.id.clone()),
            metadata,
            content_hash: None,
        })?;
        Ok(name)
    }
}

/// Receives a run's progress and writes it through the ports.
struct Recorder<'a> {
    inner: &'a Inner,
    session: Session,
    store_errors: Vec<String>,
    /// This run continues one interrupted by a restart.
    resuming: bool,
    /// The trainer said where it resumed from.
    resume_reported: bool,
}

impl TrainingEvents for Recorder<'_> {
    fn epoch_finished(&mut self, metrics: EpochMetrics) {
        if self.resuming && !self.resume_reported {
            // The trainer found no checkpoint: the epochs the interrupted run recorded from
            // here on are being redone.
            self.resumed(metrics.epoch.saturating_sub(1));
        }
        let p = &self.inner.ports;
        if let Err(e) = p.metrics.record(&self.session.id, &metrics) {
            self.store_errors.push(e.to_string());
        }
        self.session.current_epoch = metrics.epoch;
        if let Err(e) = p.sessions.update(&self.session) {
            self.store_errors.push(e.to_string());
        }
        // Wake long-polling clients; taking the lock orders this after their state read.
        drop(lock(&self.inner.sched));
        self.inner.idle.notify_all();
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.inner.log(&self.session.id, level, message);
    }

    fn resumed(&mut self, epoch: u32) {
        self.resume_reported = true;
        let p = &self.inner.ports;
        if let Err(e) = p.metrics.discard_after(&self.session.id, epoch) {
            self.store_errors.push(e.to_string());
        }
        self.session.current_epoch = epoch;
        if let Err(e) = p.sessions.update(&self.session) {
            self.store_errors.push(e.to_string());
        }
        let what = if epoch == 0 {
            "no checkpoint yet: starting over from epoch 1".to_owned()
        } else {
            format!("resumed from the checkpoint after epoch {epoch}")
        };
        self.inner.log(&self.session.id, LogLevel::Info, what);
    }
}

#[cfg(test)]
mod tests;
