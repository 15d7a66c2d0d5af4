//! The session manager: validates and admits training requests, keeps the FIFO queue,
//! runs sessions on dedicated threads, records their progress, and recovers after restarts.
//!
//! Policy: every session's peak memory is estimated when it is created; one that can never fit
//! (above the machine's memory, the run memory limit, or its GPU's memory) is refused. At most
//! `max_concurrent` sessions run at once; the rest wait in creation order. The first in the
//! queue also waits until its estimate fits in the memory available now, less what running
//! sessions are still expected to take and the configured reserve (and likewise on its GPU);
//! its `queue_reason` says what it waits for. When a run ends, for whatever reason, the next
//! queued session starts.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration as StdDuration, Instant},
};

use time::Duration;

use crate::{
    config::{ConfigErrors, TrainingConfig, TrainingRequest},
    events::{EventBus, EventKind, EventPayload, EventStore, NewEvent},
    failure,
    ids::{ModelName, SessionId},
    lock,
    metrics::{EpochMetrics, LogEntry, LogLevel},
    ports::{
        Clock, DatasetRegistry, LogStore, MemoryEstimate, MetricsStore, ModelInspector, ModelRegistry, RunControl, RunUsage, ScratchSpace,
        SessionRepository, SnapshotId, StoreError, SystemMonitor, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob,
    },
    registry::{DatasetRecord, ModelRecord, NewModel},
    selection::{Selection, Tracker},
    session::{Session, SessionState},
    system::{human_mb, SystemSnapshot},
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
    /// Where session events are recorded for streams, webhooks and notifications.
    pub events: Arc<dyn EventStore>,
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
    /// Memory kept free beyond the estimates, in MB: queued sessions wait while admitting one
    /// would leave less than this available (0: no floor).
    pub memory_reserve_mb: u64,
    /// The most memory one run may use, in MB (0: no limit but the machine's); a session whose
    /// estimate is above it is refused.
    pub run_memory_limit_mb: u64,
    /// Finished sessions' scratch files (checkpoints) are removed after this long.
    pub retention: Duration,
}

impl Default for SchedulerPolicy {
    fn default() -> Self {
        Self { max_concurrent: 1, memory_reserve_mb: 0, run_memory_limit_mb: 0, retention: Duration::days(7) }
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
    /// The session can never fit in memory; the message names the estimate, the limit and what
    /// to change.
    #[error("{0}")]
    InsufficientMemory(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A session with its place in the queue (1-based) and what it waits for, when queued, and
/// what its run uses, when running.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub session: Session,
    pub queue_position: Option<usize>,
    /// Why a queued session has not started yet.
    pub queue_reason: Option<String>,
    /// The run's process and memory, while it runs in a process of its own.
    pub usage: Option<RunUsage>,
}

/// The answer to a start request.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub view: SessionView,
    pub message: String,
}

/// A run in progress.
struct Running {
    control: RunControl,
    /// Why the run was stopped when something other than a client stopped it (a sweep's
    /// pruner): the stopped session's `error_message`.
    stop_reason: Option<String>,
    handle: Option<JoinHandle<()>>,
    estimate: Option<MemoryEstimate>,
    usage: Option<RunUsage>,
}

impl Running {
    /// Host memory this run is still expected to take beyond what it holds now, in MB.
    fn host_to_come(&self) -> u64 {
        let held = self.usage.map_or(0, |u| u.memory_mb);
        self.estimate.map_or(0, |e| e.host_mb.saturating_sub(held))
    }
}

#[derive(Default)]
struct Sched {
    running: HashMap<SessionId, Running>,
    /// Queued sessions whose wait was logged (once per session).
    wait_logged: HashSet<SessionId>,
    /// Why the first queued session is still waiting.
    head_reason: Option<(SessionId, String)>,
    /// Queued sessions waiting for the sessions they depend on, and for which.
    dependency_waits: HashMap<SessionId, String>,
    /// Snapshots asked for and not yet handed to whoever asked.
    snapshots: HashMap<SnapshotId, live::Snapshot>,
    next_snapshot: SnapshotId,
    shutting_down: bool,
    last_sweep: Option<Instant>,
}

struct Inner {
    ports: Ports,
    policy: SchedulerPolicy,
    sched: Mutex<Sched>,
    idle: Condvar,
    events: Arc<EventBus>,
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

impl SessionManager {
    /// A manager over `ports` with `policy`. Call [`Self::recover`] once before serving.
    #[must_use]
    pub fn new(ports: Ports, mut policy: SchedulerPolicy) -> Self {
        policy.max_concurrent = policy.max_concurrent.max(1);
        let events = Arc::new(EventBus::new(Arc::clone(&ports.events)));
        Self { inner: Arc::new(Inner { ports, policy, sched: Mutex::new(Sched::default()), idle: Condvar::new(), events }) }
    }

    /// The sessions' events: subscribe to them, or read back those recorded.
    #[must_use]
    pub fn events(&self) -> &Arc<EventBus> {
        &self.inner.events
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
        self.start_config(TrainingConfig::validate(req)?)
    }

    /// [`Self::start`] for a config validated already (a sweep's trial).
    ///
    /// # Errors
    /// As [`Self::start`], but for the config's own validation.
    pub fn start_config(&self, config: TrainingConfig) -> Result<Started, ManagerError> {
        let p = &self.inner.ports;
        let estimate = self.admissible(&config)?;
        let mut session = Session::queued(SessionId::generate(), config, p.clock.now());
        session.resources.estimate = estimate.as_ref().ok().copied();
        p.sessions.insert(&session)?;
        self.inner.announce(&session);
        self.inner.log(&session.id, LogLevel::Info, format!("session created: {}", describe(&session.config)));
        match &estimate {
            Ok(e) => self.inner.log(&session.id, LogLevel::Info, format!("estimated peak memory: {}", describe_estimate(e))),
            Err(why) => self.inner.log(&session.id, LogLevel::Warning, format!("its memory could not be estimated: {why}")),
        }
        self.inner.pump();
        let view = self.view(&session.id)?;
        let message = match (view.session.state, view.queue_position) {
            (SessionState::Running, _) => "Training started".to_owned(),
            (SessionState::Queued, Some(pos)) => format!("Training queued at position {pos}"),
            (state, _) => format!("Training session is {state}"),
        };
        Ok(Started { view, message })
    }

    /// Whether a session of `config` would be accepted now (what it names exists and fits, it
    /// can ever fit in memory, the server is not shutting down), without creating it; answers
    /// its memory estimate, or why there is none.
    ///
    /// # Errors
    /// As [`Self::start_config`].
    pub fn admissible(&self, config: &TrainingConfig) -> Result<Result<MemoryEstimate, String>, ManagerError> {
        let datasets = self.check_references(config)?;
        if lock(&self.inner.sched).shutting_down {
            return Err(ManagerError::ShuttingDown);
        }
        let estimate = self.inner.ports.trainer.estimate_memory(config, &datasets);
        if let Ok(estimate) = &estimate {
            self.inner.check_fits_at_all(config, estimate)?;
        }
        Ok(estimate)
    }

    /// Checks what the config names outside itself: datasets (present, of a kind the
    /// architecture trains on), the base model, and the device. Returns the datasets.
    fn check_references(&self, config: &TrainingConfig) -> Result<Vec<DatasetRecord>, ManagerError> {
        let p = &self.inner.ports;
        let mut errors = ConfigErrors::default();
        let mut found = Vec::new();
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
                    found.push(ds);
                }
            }
        }
        if let Some(base) = &config.base_model {
            match p.models.get(base)? {
                None => errors.push("base_model", format!("model '{base}' not found; list models with GET /api/v1/models")),
                Some(model) => {
                    if let Err(why) = p.trainer.check_base_model(config, &model) {
                        errors.push("base_model", format!("model '{base}' cannot start this session: {}", failure::scrub(&why)));
                    }
                }
            }
        }
        if let Err(why) = p.trainer.check_device(config.device) {
            errors.push("device", why);
        }
        for dep in &config.depends_on {
            if p.sessions.get(dep)?.is_none() {
                errors.push("depends_on", format!("training session '{dep}' not found"));
            }
        }
        if errors.is_empty() {
            Ok(found)
        } else {
            Err(errors.into())
        }
    }

    /// One session with its queue position.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] or a store error.
    pub fn view(&self, id: &SessionId) -> Result<SessionView, ManagerError> {
        let sched = lock(&self.inner.sched);
        self.view_in(&sched, id)
    }

    /// As [`Self::view`], with the scheduler already locked by the caller.
    fn view_in(&self, sched: &Sched, id: &SessionId) -> Result<SessionView, ManagerError> {
        let p = &self.inner.ports;
        let session = p.sessions.get(id)?.ok_or_else(|| ManagerError::NotFound(id.clone()))?;
        let queue_position =
            if session.state == SessionState::Queued { self.inner.queued()?.iter().position(|s| s.id == *id).map(|i| i + 1) } else { None };
        Ok(self.inner.annotate(sched, session, queue_position))
    }

    /// Every session, oldest first, with queue positions.
    ///
    /// # Errors
    /// A store error.
    pub fn list(&self) -> Result<Vec<SessionView>, ManagerError> {
        let sessions = self.inner.ports.sessions.list()?;
        let order: HashMap<SessionId, usize> = self.inner.queued()?.into_iter().enumerate().map(|(i, s)| (s.id, i + 1)).collect();
        let sched = lock(&self.inner.sched);
        Ok(sessions
            .into_iter()
            .map(|session| {
                let queue_position = order.get(&session.id).copied();
                self.inner.annotate(&sched, session, queue_position)
            })
            .collect())
    }

    /// The queued sessions in the order they will start.
    ///
    /// # Errors
    /// A store error.
    pub fn queue(&self) -> Result<Vec<SessionView>, ManagerError> {
        let queued = self.inner.queued()?;
        let sched = lock(&self.inner.sched);
        Ok(queued.into_iter().enumerate().map(|(i, session)| self.inner.annotate(&sched, session, Some(i + 1))).collect())
    }

    /// Stops a session: a running one finishes its current batch, saves its weights and ends
    /// `stopped`; a queued one is cancelled. Returns a message for the client.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`] when it has already ended.
    pub fn stop(&self, id: &SessionId) -> Result<String, ManagerError> {
        // Twice at most: a queued session admitted between the two looks is running the
        // second time.
        for _ in 0..2 {
            {
                let sched = lock(&self.inner.sched);
                if let Some(run) = sched.running.get(id) {
                    run.control.request_stop();
                    drop(sched);
                    self.inner.log(id, LogLevel::Info, "stop requested; saving the current weights".to_owned());
                    return Ok(format!("Training session {id} is stopping; its current weights will be saved"));
                }
            }
            match self.cancel(id) {
                Err(ManagerError::Conflict(_)) => {
                    let state = self.view(id)?.session.state;
                    if state != SessionState::Running {
                        return Err(ManagerError::Conflict(format!("training session {id} has already ended ({state})")));
                    }
                }
                other => return other,
            }
        }
        Err(ManagerError::Conflict(format!("training session {id} is between runs; try again in a moment")))
    }

    /// Moves a queued session in the queue by giving it another priority: higher starts
    /// first, first in first out within a priority. Answers the session as it now stands.
    ///
    /// # Errors
    /// [`ManagerError::Invalid`] for a priority out of range, [`ManagerError::NotFound`],
    /// [`ManagerError::Conflict`] when it is not queued.
    pub fn set_priority(&self, id: &SessionId, priority: i64) -> Result<SessionView, ManagerError> {
        let priority = crate::config::check_priority(priority)?;
        let p = &self.inner.ports;
        {
            // Held so that the session cannot be admitted meanwhile.
            let _sched = lock(&self.inner.sched);
            let mut s = p.sessions.get(id)?.ok_or_else(|| ManagerError::NotFound(id.clone()))?;
            if s.state != SessionState::Queued {
                return Err(ManagerError::Conflict(format!("training session {id} is {} and not in the queue", s.state)));
            }
            let before = s.config.priority;
            s.config.priority = priority;
            p.sessions.update(&s)?;
            self.inner.log(id, LogLevel::Info, format!("priority changed from {before} to {priority}"));
        }
        self.inner.pump();
        self.view(id)
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
        sched.wait_logged.remove(id);
        drop(sched);
        self.inner.idle.notify_all();
        self.inner.log(id, LogLevel::Info, "cancelled while queued".to_owned());
        self.inner.announce(&s);
        // Sessions that depended on it fail now rather than at the next tick.
        self.inner.pump();
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
            let view = self.view_in(&sched, id)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let reached = min_epoch.is_some_and(|e| view.session.current_epoch >= e);
            if view.session.state.is_terminal() || reached || left.is_zero() {
                return Ok(view);
            }
            sched = self.inner.idle.wait_timeout(sched, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// What the running sessions' processes use now, as last measured.
    #[must_use]
    pub fn running_usage(&self) -> Vec<(SessionId, Option<RunUsage>)> {
        lock(&self.inner.sched).running.iter().map(|(id, r)| (id.clone(), r.usage)).collect()
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
            for run in sched.running.values() {
                run.control.request_stop();
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

fn describe_estimate(e: &MemoryEstimate) -> String {
    if e.gpu_mb > 0 {
        format!("{} on {} and {} of host memory", human_mb(e.gpu_mb), e.device, human_mb(e.host_mb))
    } else {
        format!("{} on {}", human_mb(e.host_mb), e.device)
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
    /// Appends a session log line, which clients read: server paths and internal error text
    /// are taken out of it (see [`failure::scrub`]); the server's log keeps the line whole.
    fn log(&self, id: &SessionId, level: LogLevel, message: String) {
        let public = failure::scrub(&message);
        if public != message {
            tracing::warn!(session = %id, detail = %message, "session log line shown without its server detail");
        }
        let entry = LogEntry { session_id: id.clone(), timestamp: self.ports.clock.now(), level, message: public };
        // A log line that cannot be written must not break the operation that produced it.
        if self.ports.logs.append(&entry).is_ok() {
            self.publish(NewEvent {
                session_id: id.clone(),
                kind: EventKind::Log,
                created_at: entry.timestamp,
                payload: EventPayload::Log(entry),
            });
        }
    }

    /// Publishes that `session` is now in its state.
    fn announce(&self, session: &Session) {
        self.publish(NewEvent::state(session, self.ports.clock.now()));
    }

    /// Records and passes on an event; one that cannot be recorded is logged on the server and
    /// does not break what produced it.
    fn publish(&self, event: NewEvent) {
        let (id, kind) = (event.session_id.clone(), event.kind);
        if let Err(e) = self.events.publish(event) {
            tracing::warn!(session = %id, event = %kind, detail = %e, "a session event could not be recorded");
        }
    }

    /// The queued sessions in the order they start: higher priority first, first in first out
    /// within a priority.
    fn queued(&self) -> Result<Vec<Session>, StoreError> {
        let mut queued = self.ports.sessions.list_in_state(SessionState::Queued)?;
        queued.sort_by_key(|s| std::cmp::Reverse(s.config.priority));
        Ok(queued)
    }

    /// A view of `session` with what the scheduler knows of it now.
    fn annotate(&self, sched: &Sched, session: Session, queue_position: Option<usize>) -> SessionView {
        let usage = sched.running.get(&session.id).and_then(|r| r.usage);
        let queue_reason = queue_position.map(|pos| match (&sched.head_reason, sched.dependency_waits.get(&session.id)) {
            (_, Some(why)) => why.clone(),
            (Some((id, why)), None) if *id == session.id => why.clone(),
            _ if pos > 1 => format!("waiting behind {} earlier session{} in the queue", pos - 1, if pos == 2 { "" } else { "s" }),
            _ if sched.running.len() >= self.policy.max_concurrent => self.slots_reason(sched.running.len()),
            _ => "about to start".to_owned(),
        });
        SessionView { session, queue_position, queue_reason, usage }
    }

    fn slots_reason(&self, running: usize) -> String {
        format!("waiting for a running session to finish ({running} of {} allowed at once)", self.policy.max_concurrent)
    }

    /// Refuses a session that can never fit: its estimate is above the machine's memory, the
    /// run memory limit, or its GPU's memory.
    fn check_fits_at_all(&self, config: &TrainingConfig, e: &MemoryEstimate) -> Result<(), ManagerError> {
        let snap = self.ports.monitor.snapshot();
        let machine = snap.memory_total_mb;
        let limit = self.policy.run_memory_limit_mb;
        let (cap, what) = if limit > 0 && (machine == 0 || limit < machine) {
            (limit, format!("the {} a run may use (the run memory limit; the machine has {})", human_mb(limit), human_mb(machine)))
        } else {
            (machine, format!("the machine's {}", human_mb(machine)))
        };
        let advice = |device: &str| format!("lower batch_size (now {}), train on smaller images, or choose {device}", config.batch_size);
        if cap > 0 && e.host_mb > cap {
            let other = if e.gpu_mb == 0 { "a GPU (\"device\": \"cuda:0\") where one is available" } else { "another device" };
            return Err(ManagerError::InsufficientMemory(format!(
                "this session needs about {} of memory at its peak ({} with batch size {}), more than {what}; {}",
                human_mb(e.host_mb),
                config.model_architecture,
                config.batch_size,
                advice(other)
            )));
        }
        if let (crate::config::Device::Cuda(n), Some(gpu)) = (e.device, gpu_of(&snap, e.device)) {
            if e.gpu_mb > gpu.memory_total_mb {
                return Err(ManagerError::InsufficientMemory(format!(
                    "this session needs about {} on cuda:{n} at its peak ({} with batch size {}), more than its {} in all; {}",
                    human_mb(e.gpu_mb),
                    config.model_architecture,
                    config.batch_size,
                    human_mb(gpu.memory_total_mb),
                    advice("another device (\"device\": \"cpu\" or another cuda:N)")
                )));
            }
        }
        Ok(())
    }

    /// Why `session` cannot start now for lack of memory, if it cannot.
    fn memory_wait(&self, sched: &Sched, session: &Session) -> Option<String> {
        let snap = self.ports.monitor.snapshot();
        let reserve = self.policy.memory_reserve_mb;
        let to_come: u64 = sched.running.values().map(Running::host_to_come).sum();
        let free = snap.memory_available_mb.saturating_sub(to_come);
        let Some(e) = session.resources.estimate else {
            return (reserve > 0 && free < reserve)
                .then(|| format!("waiting for memory: {} free, {} must stay free", human_mb(free), human_mb(reserve)));
        };
        if e.host_mb.saturating_add(reserve) > free {
            let reserve_note = if reserve > 0 { format!(", {} kept in reserve", human_mb(reserve)) } else { String::new() };
            return Some(format!("waiting for {} of memory; {} free{reserve_note}", human_mb(e.host_mb), human_mb(free)));
        }
        if let Some(gpu) = gpu_of(&snap, e.device) {
            let committed: u64 = sched.running.values().filter_map(|r| r.estimate).filter(|r| r.device == e.device).map(|r| r.gpu_mb).sum();
            let free = gpu.memory_total_mb.saturating_sub(gpu.memory_used_mb.max(committed));
            if e.gpu_mb > free {
                return Some(format!("waiting for {} on {}; {} free", human_mb(e.gpu_mb), e.device, human_mb(free)));
            }
        }
        None
    }

    /// Admits queued sessions while capacity and memory allow.
    fn pump(self: &Arc<Self>) {
        let mut sched = lock(&self.sched);
        sched.head_reason = None;
        while !sched.shutting_down {
            let Ok(queued) = self.queued() else { return };
            sched.dependency_waits.clear();
            let mut next = None;
            // Every queued session is looked at, so that each one waiting says for which.
            for s in queued {
                match self.dependencies(&s) {
                    Ok(Dependencies::Done) => {
                        if next.is_none() {
                            next = Some(s);
                        }
                    }
                    Ok(Dependencies::Waiting(why)) => {
                        sched.dependency_waits.insert(s.id.clone(), why);
                    }
                    Ok(Dependencies::Broken(why)) => self.fail_queued(s, &why),
                    Err(_) => return,
                }
            }
            let Some(mut session) = next else { return };
            if sched.running.len() >= self.policy.max_concurrent {
                let why = self.slots_reason(sched.running.len());
                sched.head_reason = Some((session.id, why));
                return;
            }
            if let Some(why) = self.memory_wait(&sched, &session) {
                if sched.wait_logged.insert(session.id.clone()) {
                    self.log(&session.id, LogLevel::Warning, format!("{why}; it starts when memory frees"));
                }
                sched.head_reason = Some((session.id, why));
                return;
            }
            sched.wait_logged.remove(&session.id);
            if session.transition(SessionState::Running, self.ports.clock.now()).is_err() || self.ports.sessions.update(&session).is_err() {
                return;
            }
            self.announce(&session);
            self.log(&session.id, LogLevel::Info, "training started".to_owned());
            self.spawn_run(&mut sched, session, false);
        }
    }

    /// Where the sessions `session` depends on stand.
    fn dependencies(&self, session: &Session) -> Result<Dependencies, StoreError> {
        let mut waiting = Vec::new();
        for dep in &session.config.depends_on {
            match self.ports.sessions.get(dep)?.map(|d| d.state) {
                Some(SessionState::Completed) => {}
                Some(state @ (SessionState::Failed | SessionState::Stopped)) => {
                    return Ok(Dependencies::Broken(format!("it depends on training session {dep}, which {state}")));
                }
                Some(_) => waiting.push(dep.to_string()),
                None => return Ok(Dependencies::Broken(format!("it depends on training session {dep}, which no longer exists"))),
            }
        }
        Ok(if waiting.is_empty() {
            Dependencies::Done
        } else {
            Dependencies::Waiting(format!("waiting for {} to complete", waiting.join(", ")))
        })
    }

    /// Ends a queued session `failed` without running it.
    fn fail_queued(&self, mut session: Session, why: &str) {
        if session.fail(why, self.ports.clock.now()).is_ok() && self.ports.sessions.update(&session).is_ok() {
            self.log(&session.id, LogLevel::Error, format!("training failed: {why}"));
            self.announce(&session);
            self.idle.notify_all();
        }
    }

    /// Starts the run of a session that is `running` on its own thread.
    fn spawn_run(self: &Arc<Self>, sched: &mut Sched, session: Session, resuming: bool) {
        let control = RunControl::default();
        let id = session.id.clone();
        let estimate = session.resources.estimate;
        // A stop decided before a restart (a sweep's pruning) is carried out now.
        let stop_reason = session.live.stop_reason.clone();
        if stop_reason.is_some() {
            control.request_stop();
        }
        let me = Arc::clone(self);
        let run_control = control.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("train-{}", &id.as_str()[..13]))
            .stack_size(TRAINING_THREAD_STACK)
            .spawn(move || me.run(session, run_control, resuming));
        match spawned {
            Ok(handle) => {
                sched.running.insert(id, Running { control, stop_reason, handle: Some(handle), estimate, usage: None });
            }
            Err(e) => self.finish_with(&id, Err(format!("could not start a training thread: {e}")), None, None),
        }
    }

    fn run(self: Arc<Self>, session: Session, control: RunControl, resuming: bool) {
        let id = session.id.clone();
        let selection = session.config.selection();
        let mut recorder = Recorder {
            inner: &self,
            session,
            store_errors: Vec::new(),
            resuming,
            resume_reported: false,
            selection,
            tracker: Tracker::default(),
            judged_through: None,
            control,
        };
        let outcome = loop {
            match self.execute(&mut recorder) {
                Err(failure)
                    if failure.retryable
                        && recorder.session.outcome.retries < recorder.session.config.max_retries
                        && !recorder.control.stop_requested() =>
                {
                    recorder.retry(&failure.message);
                }
                Err(failure) if resuming && recorder.session.outcome.retries == 0 => {
                    break Err(format!("interrupted by server restart; resuming failed: {}", failure.message));
                }
                other => break other.map_err(|failure| failure.message),
            }
        };
        if !recorder.store_errors.is_empty() {
            let n = recorder.store_errors.len();
            self.log(&id, LogLevel::Warning, format!("{n} progress records could not be stored: {}", recorder.store_errors[0]));
        }
        let peak = recorder.session.resources.peak_memory_mb;
        let stop_reason = lock(&self.sched).running.get(&id).and_then(|r| r.stop_reason.clone());
        self.finish_with(&id, outcome, peak, stop_reason);
        {
            let mut sched = lock(&self.sched);
            if let Some(run) = sched.running.remove(&id) {
                // This thread is the handle's own thread: detach it.
                drop(run.handle);
            }
        }
        self.idle.notify_all();
        self.pump();
    }

    /// One attempt at the session's run: its job assembled from the registries, trained.
    fn execute(&self, recorder: &mut Recorder<'_>) -> Result<TrainedModel, RunFailure> {
        let p = &self.ports;
        let session = recorder.session.clone();
        let store = |e: StoreError| RunFailure::fatal(store_failure(&session.id, &e));
        let dataset =
            p.datasets.get(&session.config.dataset_name).map_err(store)?.ok_or_else(|| {
                RunFailure::fatal(format!("dataset '{}' was deleted before training started", session.config.dataset_name))
            })?;
        let mut extra_datasets = Vec::new();
        for name in &session.config.extra_datasets {
            extra_datasets.push(
                p.datasets
                    .get(name)
                    .map_err(store)?
                    .ok_or_else(|| RunFailure::fatal(format!("dataset '{name}' was deleted before training started")))?,
            );
        }
        let base_model = match &session.config.base_model {
            None => None,
            Some(name) => {
                Some(p.models.get(name).map_err(store)?.ok_or_else(|| RunFailure::fatal(format!("base model '{name}' was deleted")))?)
            }
        };
        let scratch_dir = p.scratch.dir_for(&session.id).map_err(store)?;
        let job = TrainingJob {
            session_id: session.id.clone(),
            config: session.config.clone(),
            dataset,
            extra_datasets,
            base_model,
            scratch_dir,
            learning_rate: recorder.control.learning_rate().or(session.live.learning_rate),
        };
        let control = recorder.control.clone();
        let trainer = Arc::clone(&p.trainer);
        match catch_unwind(AssertUnwindSafe(|| trainer.train(&job, recorder, &control))) {
            Ok(Ok(model)) => Ok(model),
            Ok(Err(e)) => {
                let public = e.public_message();
                if public != e.to_string() {
                    tracing::warn!(session = %session.id, detail = %e, "training failed; the session shows the failure without its server detail");
                }
                Err(RunFailure { message: public, retryable: e.is_retryable() })
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(RunFailure { message: format!("training crashed: {what}"), retryable: true })
            }
        }
    }

    /// Ends a running session: registers its model, or marks it failed; records the peak
    /// memory its run reached.
    fn finish_with(&self, id: &SessionId, outcome: Result<TrainedModel, String>, peak_memory_mb: Option<u64>, stop_reason: Option<String>) {
        let p = &self.ports;
        let Ok(Some(mut s)) = p.sessions.get(id) else { return };
        if peak_memory_mb.is_some() {
            s.resources.peak_memory_mb = peak_memory_mb;
        }
        let now = p.clock.now();
        let result = match outcome {
            Ok(model) => match self.register_model(&s, &model, None) {
                Ok(record) => {
                    let name = record.name;
                    s.model_name = Some(name.clone());
                    s.current_epoch = model.epochs_completed.max(s.current_epoch);
                    s.outcome.stopped_early = model.stopped_early;
                    // A run stopped for a reason (a sweep's pruner) ends stopped with it, even
                    // when it finished its last epoch before the stop reached it.
                    let stopped = model.stopped || stop_reason.is_some();
                    let (state, what) = if stopped { (SessionState::Stopped, "stopped") } else { (SessionState::Completed, "completed") };
                    if stopped {
                        s.error_message = stop_reason;
                    }
                    self.log(id, LogLevel::Info, format!("training {what} after {} epochs; model saved as '{name}'", s.current_epoch));
                    s.transition(state, now)
                }
                Err(e) => {
                    tracing::error!(session = %id, detail = %e, "could not save the trained model");
                    let msg = format!("could not save the trained model: {}", e.public_message());
                    self.log(id, LogLevel::Error, msg.clone());
                    s.fail(msg, now)
                }
            },
            Err(msg) => {
                let msg = failure::scrub(&msg);
                self.log(id, LogLevel::Error, format!("training failed: {msg}"));
                s.fail(msg, now)
            }
        };
        if result.is_ok() && p.sessions.update(&s).is_ok() {
            self.announce(&s);
        }
    }

    /// Registers a model a run of `s` wrote: its final model under the session's id, or a
    /// snapshot under the name asked for.
    fn register_model(&self, s: &Session, model: &TrainedModel, snapshot: Option<&ModelName>) -> Result<ModelRecord, StoreError> {
        let name = match snapshot {
            Some(name) => name.clone(),
            None => ModelName::new(s.id.as_str()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        };
        let mut metadata = model.metadata.clone();
        if let Some(obj) = metadata.as_object_mut() {
            if snapshot.is_some() {
                // Taken while the run went on: the weights of the batch it had reached.
                obj.insert("snapshot".into(), true.into());
            }
            obj.insert("session_id".into(), s.id.as_str().into());
            obj.insert("epochs_completed".into(), model.epochs_completed.into());
            obj.insert("stopped".into(), model.stopped.into());
            obj.insert("stopped_early".into(), model.stopped_early.into());
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
        })
    }
}

/// Why an attempt at a run failed, and whether another attempt from the last checkpoint may
/// get further ([`TrainError::is_retryable`]).
struct RunFailure {
    message: String,
    retryable: bool,
}

impl RunFailure {
    /// A failure no retry can help: the run could not even be assembled.
    fn fatal(message: String) -> Self {
        Self { message, retryable: false }
    }
}

/// Where a queued session's dependencies stand.
enum Dependencies {
    /// All completed (or it has none).
    Done,
    /// Some still queued or running: the reason it waits.
    Waiting(String),
    /// One failed, was stopped or is gone: why the session fails.
    Broken(String),
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
    /// How the session's epochs are judged, and where the judging stands.
    selection: Selection,
    tracker: Tracker,
    /// The last epoch the tracker has seen; `None` when it must be rebuilt from the history.
    judged_through: Option<u32>,
    /// What the run is told; the learning rate set live is kept in the session from it.
    control: RunControl,
}

impl Recorder<'_> {
    /// Judges the epoch just recorded: incrementally when it follows the last one judged,
    /// else (a resumed run, a replayed epoch) by judging the stored history again.
    fn judge(&mut self, metrics: &EpochMetrics) {
        if self.judged_through.is_some_and(|e| e + 1 == metrics.epoch) || (self.judged_through.is_none() && metrics.epoch == 1) {
            self.selection.observe(&mut self.tracker, metrics);
        } else {
            match self.inner.ports.metrics.history(&self.session.id) {
                Ok(history) => {
                    self.tracker = Tracker::default();
                    for m in history.iter().filter(|m| m.epoch <= metrics.epoch) {
                        self.selection.observe(&mut self.tracker, m);
                    }
                }
                Err(e) => self.store_errors.push(e.to_string()),
            }
        }
        self.judged_through = Some(metrics.epoch);
        self.session.outcome.best = self.tracker.best;
    }
}

impl Recorder<'_> {
    /// Writes the session as the run has it (what was changed live is the manager's to write).
    fn save_session(&mut self) {
        if let Err(e) = self.inner.ports.sessions.update(&self.session) {
            self.store_errors.push(e.to_string());
        }
    }

    /// Prepares the next attempt after the run failed with `why`: counts the retry, says so
    /// in the log, and expects the trainer to resume from the last checkpoint.
    fn retry(&mut self, why: &str) {
        let outcome = &mut self.session.outcome;
        outcome.retries += 1;
        let (retry, of) = (outcome.retries, self.session.config.max_retries);
        let why = failure::scrub(why);
        self.inner.log(
            &self.session.id,
            LogLevel::Warning,
            format!("the run failed: {why}; retry {retry} of {of} (attempt {}) from the last checkpoint", retry + 1),
        );
        self.save_session();
        self.resuming = true;
        self.resume_reported = false;
        self.snapshots_lost();
    }
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
        self.judge(&metrics);
        self.save_session();
        self.inner.publish(NewEvent {
            session_id: self.session.id.clone(),
            kind: EventKind::Epoch,
            created_at: metrics.timestamp,
            payload: EventPayload::Epoch(metrics),
        });
        // Wake long-polling clients; taking the lock orders this after their state read.
        drop(lock(&self.inner.sched));
        self.inner.idle.notify_all();
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.inner.log(&self.session.id, level, message);
    }

    fn resumed(&mut self, epoch: u32) {
        self.resume_reported = true;
        self.judged_through = None;
        let p = &self.inner.ports;
        if let Err(e) = p.metrics.discard_after(&self.session.id, epoch) {
            self.store_errors.push(e.to_string());
        }
        self.session.current_epoch = epoch;
        self.save_session();
        let what = if epoch == 0 {
            "no checkpoint yet: starting over from epoch 1".to_owned()
        } else {
            format!("resumed from the checkpoint after epoch {epoch}")
        };
        self.inner.log(&self.session.id, LogLevel::Info, what);
    }

    fn snapshot(&mut self, id: SnapshotId, result: Result<TrainedModel, TrainError>) {
        self.snapshot_taken(id, result);
    }

    fn usage(&mut self, usage: RunUsage) {
        let peak = self.session.resources.peak_memory_mb.unwrap_or(0).max(usage.peak_memory_mb);
        self.session.resources.peak_memory_mb = Some(peak);
        if let Some(run) = lock(&self.inner.sched).running.get_mut(&self.session.id) {
            run.usage = Some(RunUsage { peak_memory_mb: peak, ..usage });
        }
    }
}

/// The monitor's entry for a CUDA device, if it reports one.
fn gpu_of(snap: &SystemSnapshot, device: crate::config::Device) -> Option<&crate::system::GpuInfo> {
    match device {
        crate::config::Device::Cuda(n) => snap.gpus.iter().find(|g| g.index == n),
        _ => None,
    }
}

/// A storage failure while preparing a run, as the session shows it; the log keeps the detail.
fn store_failure(id: &SessionId, e: &StoreError) -> String {
    tracing::error!(session = %id, detail = %e, "storage failed while preparing a training run");
    e.public_message()
}

mod live;
#[cfg(test)]
mod tests;
