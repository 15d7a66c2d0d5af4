//! The `Sweeps` use case: creates a sweep's trials as ordinary sessions (through the queue,
//! the concurrency limit and memory admission), prunes weak trials as their epochs come in,
//! and, once every trial has ended, registers the best trial's model as `<name>-best`.
//!
//! Epochs and session endings reach a worker thread through an event listener that only
//! queues them (listeners must return at once, and stopping a session publishes events of its
//! own). The worker keeps every running sweep's observations in memory; they are rebuilt from
//! the stored histories at start-up, so a restart loses nothing.

use std::{
    collections::{HashMap, HashSet},
    sync::{mpsc, Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    config::ConfigErrors,
    events::{Event, EventListener, EventPayload},
    ids::{SessionId, SweepId},
    lock,
    manager::{ManagerError, SessionManager},
    metrics::EpochMetrics,
    ports::{Clock, MetricsStore, ModelRegistry, SessionRepository, StoreError, SweepStore},
    session::{Session, SessionState},
    sweep::{pruned_at, BestTrial, Observations, Sweep, SweepRequest, SweepSpec, SweepState, Trial, TrialOf},
};

/// How long the worker waits for an event before it looks at every followed sweep again.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// The adapters the sweeps use besides the session manager.
#[derive(Clone)]
pub struct SweepPorts {
    pub store: Arc<dyn SweepStore>,
    pub sessions: Arc<dyn SessionRepository>,
    pub metrics: Arc<dyn MetricsStore>,
    pub models: Arc<dyn ModelRegistry>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SweepPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepPorts").finish_non_exhaustive()
    }
}

/// What the sweep operations fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    /// The request is invalid; every failing field is listed.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    #[error("sweep '{0}' not found")]
    NotFound(SweepId),
    #[error("{0}")]
    Conflict(String),
    /// A trial could not be started (the sweep has failed and its other trials are stopped).
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A trial as a client sees it: its point, and where its session stands.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialView {
    pub trial: Trial,
    pub session: Option<Session>,
    /// Its best value of the sweep metric so far, and the epoch.
    pub best: Option<(u32, f64)>,
}

/// A sweep with its trials.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepView {
    pub sweep: Sweep,
    pub trials: Vec<TrialView>,
}

/// Runs sweeps. Cheap to clone.
#[derive(Clone)]
pub struct Sweeps {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sweeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeps").finish_non_exhaustive()
    }
}

struct Inner {
    manager: SessionManager,
    ports: SweepPorts,
    state: Mutex<State>,
    /// Notified, with `State::updates` raised, whenever a sweep's record changes.
    changed: Condvar,
    /// Held across every read-modify-write of a sweep's record (the worker's checks, a stop,
    /// creation), so that none undoes another.
    writes: Mutex<()>,
    work: Mutex<mpsc::Sender<Work>>,
}

#[derive(Default)]
struct State {
    /// Trials of running sweeps: their sweep and epochs.
    trials: HashMap<SessionId, (SweepId, u32)>,
    /// Sessions known not to be trials.
    others: HashSet<SessionId>,
    /// What the worker has seen of each running sweep.
    seen: HashMap<SweepId, Followed>,
    /// Sweep records written so far.
    updates: u64,
}

/// A running sweep as the worker has seen it through events (the store may be ahead: a trial
/// may have ended there while its epochs are still queued here).
#[derive(Default)]
struct Followed {
    seen: Observations,
    pruned: HashSet<SessionId>,
    /// Trials whose end the worker has handled (or that had ended before it started).
    ended: HashSet<SessionId>,
}

enum Work {
    Epoch(SessionId, EpochMetrics),
    Ended(SessionId),
    Check(SweepId),
}

/// Queues the events the worker acts on.
struct Listener(Mutex<mpsc::Sender<Work>>);

impl EventListener for Listener {
    fn on_event(&self, event: &Event) {
        let work = match (&event.payload, event.kind.is_final()) {
            (EventPayload::Epoch(m), _) => Work::Epoch(event.session_id.clone(), m.clone()),
            (EventPayload::Session(_), true) => Work::Ended(event.session_id.clone()),
            _ => return,
        };
        let _ = lock(&self.0).send(work);
    }
}

impl Sweeps {
    /// Starts the sweeps' worker, subscribed to `manager`'s events, and picks up the sweeps a
    /// restart interrupted: their observations are rebuilt from the stored histories, and those
    /// whose trials all ended meanwhile are finished.
    ///
    /// # Errors
    /// A store error while reading the interrupted sweeps.
    pub fn start(manager: SessionManager, ports: SweepPorts) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            manager,
            ports,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            writes: Mutex::new(()),
            work: Mutex::new(tx.clone()),
        });
        inner.manager.events().subscribe(Arc::new(Listener(Mutex::new(tx))));
        for mut sweep in inner.ports.store.list()?.into_iter().filter(|s| s.ended_at.is_none()) {
            inner.complete_trials(&mut sweep)?;
            inner.track(&sweep)?;
            inner.enqueue(Work::Check(sweep.id.clone()));
        }
        let worker = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("sweeps".into())
            .spawn(move || loop {
                // When nothing came for a while, every followed sweep is looked at again: a
                // check that failed on a store error, or an end whose event was not recorded,
                // is caught up with then.
                let work = match rx.recv_timeout(RECHECK_EVERY) {
                    Ok(work) => vec![work],
                    Err(mpsc::RecvTimeoutError::Timeout) => lock(&worker.state).seen.keys().cloned().map(Work::Check).collect(),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                for w in work {
                    // A bug in one sweep's handling must not stop every sweep.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.handle(w))).is_err() {
                        tracing::error!("a sweep's event could not be handled (a panic); the next check tries again");
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("could not start the sweeps' thread: {e}")))?;
        Ok(Self { inner })
    }

    /// Creates a sweep and queues its trials. A trial that cannot start (refused for its
    /// memory, say) fails the sweep: the trials already queued are cancelled.
    ///
    /// # Errors
    /// [`SweepError::Invalid`] naming every failing field (a trial's config as `trial N: field`),
    /// [`SweepError::Conflict`] when the name or `<name>-best` is taken, or the trial's error.
    pub fn create(&self, req: &SweepRequest) -> Result<SweepView, SweepError> {
        let inner = &self.inner;
        let p = &inner.ports;
        let plan = SweepSpec::plan(req)?;
        // Every trial as the start would take it (datasets, device, memory), before anything
        // is created, so that a sweep never stops half queued.
        let mut refused = ConfigErrors::default();
        for (number, (_, config)) in (1..).zip(&plan.trials) {
            match inner.manager.admissible(config) {
                Ok(_) => {}
                Err(ManagerError::Invalid(errors)) => {
                    for e in errors.0 {
                        refused.push(&format!("trial {number}: {}", e.field), e.message);
                    }
                }
                Err(ManagerError::InsufficientMemory(why)) => refused.push(&format!("trial {number}"), why),
                Err(e) => return Err(e.into()),
            }
        }
        if !refused.is_empty() {
            return Err(refused.into());
        }
        let spec = plan.spec;
        if p.store.list()?.iter().any(|s| s.spec.name == spec.name) {
            return Err(SweepError::Conflict(format!("a sweep named '{}' exists; choose another name", spec.name)));
        }
        let best_name = spec.best_model_name();
        if p.models.get(&best_name)?.is_some() {
            return Err(SweepError::Conflict(format!("a model named '{best_name}' exists; the sweep would register its best trial so")));
        }
        let mut sweep = Sweep {
            id: SweepId::generate(),
            spec,
            state: SweepState::Running,
            trials: Vec::new(),
            created_at: p.clock.now(),
            ended_at: None,
            best: None,
            best_model: None,
            message: None,
        };
        p.store.insert(&sweep).map_err(|e| match e {
            StoreError::Conflict(_) => SweepError::Conflict(format!("a sweep named '{}' exists; choose another name", sweep.spec.name)),
            e => e.into(),
        })?;
        lock(&inner.state).seen.insert(sweep.id.clone(), Default::default());
        for (number, (params, mut config)) in (1..).zip(plan.trials) {
            config.sweep = Some(TrialOf { sweep_id: sweep.id.clone(), number });
            let epochs = config.epochs;
            match inner.manager.start_config(config) {
                Ok(started) => {
                    let session_id = started.view.session.id;
                    lock(&inner.state).trials.insert(session_id.clone(), (sweep.id.clone(), epochs));
                    sweep.trials.push(Trial { number, session_id, params });
                    // Kept as it grows, so that a crash here leaves no trial unknown.
                    let _writing = lock(&inner.writes);
                    let best = p.store.get(&sweep.id)?.and_then(|s| s.best);
                    sweep.best = best;
                    inner.write(&sweep)?;
                }
                Err(e) => {
                    for t in &sweep.trials {
                        let _ = inner.manager.stop(&t.session_id);
                    }
                    sweep.state = SweepState::Failed;
                    sweep.message = Some(format!("trial {number} could not start: {e}"));
                    sweep.ended_at = Some(p.clock.now());
                    let _writing = lock(&inner.writes);
                    inner.write(&sweep)?;
                    lock(&inner.state).seen.remove(&sweep.id);
                    return Err(e.into());
                }
            }
        }
        // Trials that ended while the others were being queued are judged now.
        inner.enqueue(Work::Check(sweep.id.clone()));
        self.get(&sweep.id)
    }

    /// Every sweep, newest first.
    ///
    /// # Errors
    /// A store error.
    pub fn list(&self) -> Result<Vec<SweepView>, SweepError> {
        let mut all = self.inner.ports.store.list()?;
        all.reverse();
        all.into_iter().map(|s| self.inner.view(s)).collect()
    }

    /// One sweep with its trials.
    ///
    /// # Errors
    /// [`SweepError::NotFound`] or a store error.
    pub fn get(&self, id: &SweepId) -> Result<SweepView, SweepError> {
        let sweep = self.inner.ports.store.get(id)?.ok_or_else(|| SweepError::NotFound(id.clone()))?;
        self.inner.view(sweep)
    }

    /// One sweep, once it has ended or `timeout` has passed, whichever comes first.
    ///
    /// # Errors
    /// As [`Self::get`].
    pub fn wait_ended(&self, id: &SweepId, timeout: Duration) -> Result<SweepView, SweepError> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = lock(&self.inner.state).updates;
            let view = self.get(id)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if view.sweep.ended_at.is_some() || left.is_zero() {
                return Ok(view);
            }
            let state = lock(&self.inner.state);
            if state.updates == seen {
                drop(self.inner.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner));
            }
        }
    }

    /// Stops a running sweep: its queued trials are cancelled and its running ones stopped
    /// (they save their weights); once they have ended the best trial's model is registered.
    ///
    /// # Errors
    /// [`SweepError::NotFound`], [`SweepError::Conflict`] when it has already ended.
    pub fn stop(&self, id: &SweepId) -> Result<SweepView, SweepError> {
        let p = &self.inner.ports;
        let sweep = {
            let _writing = lock(&self.inner.writes);
            let mut sweep = p.store.get(id)?.ok_or_else(|| SweepError::NotFound(id.clone()))?;
            if sweep.state != SweepState::Running || sweep.ended_at.is_some() {
                return Err(SweepError::Conflict(format!("sweep {id} is {} already", sweep.state.as_str())));
            }
            sweep.state = SweepState::Stopped;
            self.inner.write(&sweep)?;
            sweep
        };
        for t in &sweep.trials {
            match self.inner.manager.stop(&t.session_id) {
                Ok(_) | Err(ManagerError::Conflict(_) | ManagerError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.enqueue(Work::Check(id.clone()));
        self.get(id)
    }
}

impl Inner {
    fn enqueue(&self, work: Work) {
        let _ = lock(&self.work).send(work);
    }

    /// Stores a sweep's record and wakes whoever waits on it; the caller holds `writes`.
    fn write(&self, sweep: &Sweep) -> Result<(), StoreError> {
        self.ports.store.update(sweep)?;
        lock(&self.state).updates += 1;
        self.changed.notify_all();
        Ok(())
    }

    /// A sweep the server stopped while it was queuing its trials: the trials queued then (found
    /// by their sessions, their points drawn again from the spec) are its trials; those never
    /// queued are dropped from it, and its message says so.
    fn complete_trials(&self, sweep: &mut Sweep) -> Result<(), StoreError> {
        let planned = sweep.spec.trials as usize;
        if sweep.trials.len() >= planned {
            return Ok(());
        }
        let points = sweep.spec.points();
        for s in self.ports.sessions.list()? {
            let Some(of) = s.config.sweep.as_ref().filter(|t| t.sweep_id == sweep.id) else { continue };
            if sweep.trials.iter().all(|t| t.session_id != s.id) {
                let params = points.get(of.number as usize - 1).cloned().unwrap_or_default();
                sweep.trials.push(Trial { number: of.number, session_id: s.id.clone(), params });
            }
        }
        sweep.trials.sort_by_key(|t| t.number);
        if sweep.trials.len() < planned {
            sweep.message = Some(format!("the server stopped after queuing {} of its {planned} trials", sweep.trials.len()));
            sweep.spec.trials = u32::try_from(sweep.trials.len()).unwrap_or(0);
        }
        let _writing = lock(&self.writes);
        self.write(sweep)
    }

    /// Starts following a sweep that is not over: its trials and their observations so far.
    fn track(&self, sweep: &Sweep) -> Result<(), StoreError> {
        let mut followed = Followed::default();
        let mut trials = Vec::new();
        for t in &sweep.trials {
            let Some(s) = self.ports.sessions.get(&t.session_id)? else {
                followed.ended.insert(t.session_id.clone());
                continue;
            };
            // A pruned trial counts up to the epoch it was pruned at, as it did live.
            let cut = s.error_message.as_deref().or(s.live.stop_reason.as_deref()).and_then(pruned_at);
            if cut.is_some() {
                followed.pruned.insert(t.session_id.clone());
            }
            if s.state.is_terminal() {
                followed.ended.insert(t.session_id.clone());
            }
            for m in self.ports.metrics.history(&t.session_id)?.iter().filter(|m| cut.is_none_or(|c| m.epoch <= c)) {
                followed.seen.record(sweep.spec.metric, &t.session_id, m);
            }
            trials.push((t.session_id.clone(), s.config.epochs));
        }
        let mut state = lock(&self.state);
        for (id, epochs) in trials {
            state.trials.insert(id, (sweep.id.clone(), epochs));
        }
        state.seen.insert(sweep.id.clone(), followed);
        Ok(())
    }

    fn handle(&self, work: Work) {
        let result = match work {
            Work::Epoch(session, metrics) => self.epoch(&session, &metrics),
            Work::Ended(session) => match self.sweep_of(&session) {
                Ok(Some((sweep, _))) => {
                    if let Some(f) = lock(&self.state).seen.get_mut(&sweep) {
                        f.ended.insert(session);
                    }
                    self.check(&sweep)
                }
                other => other.map(|_| ()),
            },
            Work::Check(sweep) => self.check(&sweep),
        };
        if let Err(e) = result {
            tracing::warn!(detail = %e, "a sweep could not be brought up to date; the next event tries again");
        }
    }

    /// The sweep a session is a trial of, and its epochs; looked up once per session.
    fn sweep_of(&self, session: &SessionId) -> Result<Option<(SweepId, u32)>, StoreError> {
        {
            let state = lock(&self.state);
            if let Some(found) = state.trials.get(session) {
                return Ok(Some(found.clone()));
            }
            if state.others.contains(session) {
                return Ok(None);
            }
        }
        let found = self.ports.sessions.get(session)?.and_then(|s| s.config.sweep.map(|t| (t.sweep_id, s.config.epochs)));
        let mut state = lock(&self.state);
        match found {
            // A trial of a running sweep.
            Some((sweep, epochs)) if state.seen.contains_key(&sweep) => {
                state.trials.insert(session.clone(), (sweep.clone(), epochs));
                Ok(Some((sweep, epochs)))
            }
            // Not a trial, or one of a sweep that is over.
            _ => {
                state.others.insert(session.clone());
                Ok(None)
            }
        }
    }

    /// Records a trial's epoch and stops the trial when the pruner says so.
    fn epoch(&self, session: &SessionId, m: &EpochMetrics) -> Result<(), StoreError> {
        let Some((sweep_id, epochs)) = self.sweep_of(session)? else { return Ok(()) };
        let Some(sweep) = self.ports.store.get(&sweep_id)? else { return Ok(()) };
        let verdict = {
            let mut state = lock(&self.state);
            let Some(f) = state.seen.get_mut(&sweep_id) else { return Ok(()) };
            // A pruned trial's epochs until its stop takes effect judge nobody: the trials that
            // come after it are judged the same however quickly it stopped.
            if f.pruned.contains(session) {
                return Ok(());
            }
            f.seen.record(sweep.spec.metric, session, m);
            if sweep.state == SweepState::Running {
                sweep.spec.prune(&f.seen, session, m.epoch, epochs)
            } else {
                None
            }
        };
        if let Some(reason) = verdict {
            if self.manager.stop_for(session, &reason) {
                if let Some(f) = lock(&self.state).seen.get_mut(&sweep_id) {
                    f.pruned.insert(session.clone());
                }
            }
        }
        Ok(())
    }

    /// Brings a sweep's best trial up to date, and ends the sweep once every trial has ended.
    fn check(&self, id: &SweepId) -> Result<(), StoreError> {
        let p = &self.ports;
        let _writing = lock(&self.writes);
        let Some(mut sweep) = p.store.get(id)? else { return Ok(()) };
        if sweep.ended_at.is_some() {
            lock(&self.state).seen.remove(id);
            return Ok(());
        }
        let sessions: Vec<Option<Session>> = sweep.trials.iter().map(|t| p.sessions.get(&t.session_id)).collect::<Result<_, _>>()?;
        let best = self.best(&sweep, &sessions);
        // Ended as far as the events handled say: the epochs of a trial the store already has
        // ended may still be on their way here.
        let all_ended = sweep.trials.len() == sweep.spec.trials as usize
            && lock(&self.state).seen.get(id).is_some_and(|f| sweep.trials.iter().all(|t| f.ended.contains(&t.session_id)));
        if !all_ended && best == sweep.best {
            return Ok(());
        }
        sweep.best = best;
        if all_ended {
            self.finish(&mut sweep, &sessions);
        }
        self.write(&sweep)?;
        if all_ended {
            lock(&self.state).seen.remove(id);
        }
        Ok(())
    }

    /// The best completed trial by the sweep metric.
    fn best(&self, sweep: &Sweep, sessions: &[Option<Session>]) -> Option<BestTrial> {
        let state = lock(&self.state);
        let followed = state.seen.get(&sweep.id)?;
        let spec = &sweep.spec;
        sweep
            .trials
            .iter()
            .zip(sessions)
            .filter(|(t, s)| followed.ended.contains(&t.session_id) && s.as_ref().is_some_and(|s| s.state == SessionState::Completed))
            .filter_map(|(t, _)| {
                let (epoch, value) = spec.score(followed.seen.0.get(&t.session_id)?)?;
                Some(BestTrial { number: t.number, session_id: t.session_id.clone(), epoch, value })
            })
            .reduce(|a, b| if spec.score_beats(b.value, a.value) { b } else { a })
    }

    /// Ends a sweep whose trials have all ended: registers its best trial's model.
    fn finish(&self, sweep: &mut Sweep, sessions: &[Option<Session>]) {
        let p = &self.ports;
        let count = |state: SessionState| sessions.iter().flatten().filter(|s| s.state == state).count();
        let pruned = sessions.iter().flatten().filter(|s| s.error_message.as_deref().and_then(pruned_at).is_some()).count();
        let mut message = format!(
            "{} trials: {} completed, {pruned} pruned, {} failed",
            sweep.trials.len(),
            count(SessionState::Completed),
            count(SessionState::Failed)
        );
        if let Some(best) = &sweep.best {
            let model = sessions.iter().flatten().find(|s| s.id == best.session_id).and_then(|s| s.model_name.clone());
            let registered = model.ok_or_else(|| "its model is gone".to_owned()).and_then(|name| {
                let source = p.models.get(&name).map_err(|e| e.public_message())?.ok_or_else(|| format!("its model '{name}' is gone"))?;
                let mut metadata = source.metadata.clone();
                if let Some(obj) = metadata.as_object_mut() {
                    obj.insert("sweep_id".into(), sweep.id.as_str().into());
                    obj.insert("trial".into(), best.number.into());
                }
                p.models.copy(&source, sweep.spec.best_model_name(), metadata).map_err(|e| e.public_message())
            });
            match registered {
                Ok(model) => {
                    message.push_str(&format!(
                        "; the best is trial {} ({} {:.4} at epoch {}), registered as '{}'",
                        best.number,
                        sweep.spec.metric.as_str(),
                        best.value,
                        best.epoch,
                        model.name
                    ));
                    sweep.best_model = Some(model.name);
                }
                Err(why) => message.push_str(&format!("; the best is trial {} but it could not be registered: {why}", best.number)),
            }
        } else {
            message.push_str("; no completed trial reported the metric, so there is no best");
        }
        if sweep.state == SweepState::Running {
            sweep.state = SweepState::Completed;
        }
        if let Some(earlier) = sweep.message.take() {
            message = format!("{earlier}; {message}");
        }
        sweep.message = Some(message);
        sweep.ended_at = Some(p.clock.now());
    }

    fn view(&self, sweep: Sweep) -> Result<SweepView, SweepError> {
        let p = &self.ports;
        let mut trials = Vec::new();
        for t in &sweep.trials {
            let session = p.sessions.get(&t.session_id)?;
            let mut values = Observations::default();
            for m in p.metrics.history(&t.session_id)? {
                values.record(sweep.spec.metric, &t.session_id, &m);
            }
            let best = values.0.get(&t.session_id).and_then(|v| sweep.spec.score(v));
            trials.push(TrialView { trial: t.clone(), session, best });
        }
        Ok(SweepView { sweep, trials })
    }
}
